"""Writes tests/data/model_v3.otfgp: a small trained, mapped (with variance) model in model
file format version 3, the last version before the stored calibration. Run once with the
otfgp of commit 5e1c7a9 (format 3); kept so that later versions are tested to load it."""
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from otfgp import _core

assert _core.MODEL_FORMAT_VERSION == 3, "run with a format-3 otfgp"
rng = np.random.default_rng(3)
atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
atoms.positions += rng.uniform(-0.15, 0.15, atoms.positions.shape)
atoms.calc = EMT()
gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.5, "threebody": 3.2},
                           hyperparameters={"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7,
                                            "noise_force": 0.02})
gp.add_training_data(atoms, energy=True)
gp.train(optimize=False)
gp.map(variance=True, grid2=24, grid3=8)
gp.save(Path(__file__).with_name("model_v3.otfgp"))

# What format-3 otfgp predicted for a probe (its force_variances were the latent ones), so
# the test can check that the loaded model still predicts exactly that.
probe = atoms.copy()
probe.positions += np.random.default_rng(4).uniform(-0.05, 0.05, probe.positions.shape)
exact = gp.predict(probe, variance="exact")
mapped = gp.predict(probe, variance="mapped")
np.savez(Path(__file__).with_name("model_v3_reference.npz"), positions=probe.positions, cell=probe.cell.array,
         forces=exact.forces, latent_force_variances=exact.force_variances,
         mapped_latent_force_variances=mapped.force_variances)
