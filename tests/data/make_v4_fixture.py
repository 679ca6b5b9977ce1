"""Writes tests/data/model_v4.otfgp: a small trained, mapped and calibrated Al model with
energy and stress labels in model file format version 4, the last version before the
stored baseline, and model_v4_reference.npz, what that otfgp predicted for a probe. Run once
with a format-4 otfgp (commit 307e452); kept so that later versions are tested to load it."""
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from otfgp import _core

assert _core.MODEL_FORMAT_VERSION == 4, "run with a format-4 otfgp"
rng = np.random.default_rng(4)
gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.5, "threebody": 3.2},
                           hyperparameters={"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7,
                                            "noise_force": 0.02})
for _ in range(2):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
    atoms.positions += rng.uniform(-0.15, 0.15, atoms.positions.shape)
    atoms.calc = EMT()
    gp.add_training_data(atoms, energy=True, stress=True)
gp.train(optimize=False)
gp.calibrate(min_samples=5)
gp.map(variance=True, grid2=24, grid3=8)
gp.save(Path(__file__).with_name("model_v4.otfgp"))

probe = atoms.copy()
probe.positions += np.random.default_rng(5).uniform(-0.05, 0.05, probe.positions.shape)
exact = gp.predict(probe, variance="exact")
mapped = gp.predict(probe, variance="mapped")
np.savez(Path(__file__).with_name("model_v4_reference.npz"), positions=probe.positions, cell=probe.cell.array,
         energy=exact.energy, forces=exact.forces, stress=exact.stress, force_variances=exact.force_variances,
         mapped_forces=mapped.forces, mapped_force_variances=mapped.force_variances)
