"""Writes tests/data/model_v5.otfgp: a small trained Al model on top of an analytic Morse
baseline, with energy and stress labels, in model file format version 5 (the last version
before the external calculator baseline), and model_v5_reference.npz, what that otfgp
predicted for a probe. Run once with a format-5 otfgp (commit 242bd27); kept so that later
versions are tested to load it."""
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from otfgp import _core
from otfgp.baselines import Morse

assert _core.MODEL_FORMAT_VERSION == 5, "run with a format-5 otfgp"
rng = np.random.default_rng(5)
gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.5, "threebody": 3.2},
                           hyperparameters={"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7,
                                            "noise_force": 0.02},
                           baseline=Morse({"Al": (0.3, 2.9, 1.3)}, cutoff=6.0))
for _ in range(2):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
    atoms.positions += rng.uniform(-0.15, 0.15, atoms.positions.shape)
    atoms.calc = EMT()
    gp.add_training_data(atoms, energy=True, stress=True)
gp.train(optimize=False)
gp.save(Path(__file__).with_name("model_v5.otfgp"))

probe = atoms.copy()
probe.positions += np.random.default_rng(6).uniform(-0.05, 0.05, probe.positions.shape)
exact = gp.predict(probe, variance="exact")
np.savez(Path(__file__).with_name("model_v5_reference.npz"), positions=probe.positions, cell=probe.cell.array,
         energy=exact.energy, forces=exact.forces, stress=exact.stress, force_variances=exact.force_variances)
