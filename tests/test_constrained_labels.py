"""Labels of fixed atoms (ASE constraints) are their real forces wherever otfgp reads
reference forces: ASE's ``get_forces()`` applies the constraints and returns 0 on a fixed
atom, which trained the model on zero forces, inflated the calibration (scale 31 instead
of 1.1 on the same frames) and put zeros into parity plots and pre-update errors."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

import otfgp
from otfgp.learning import calibration_sample, pre_update_record
from otfgp.plots import predict_test_set

CUTOFFS = {"twobody": 4.5, "threebody": 3.2}
FIXED = [0, 1, 2, 3]


def _frame(seed: int, fixed: bool) -> tuple:
    """An EMT-labelled rattled 32-atom Al cell (atoms 0-3 fixed or not) and its raw forces."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
    atoms.calc = EMT()
    forces = atoms.get_forces().copy()
    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=forces)
    if fixed:
        atoms.set_constraint(FixAtoms(FIXED))
        assert np.all(atoms.get_forces()[FIXED] == 0.0)  # what ASE hands out by default
    return atoms, forces


def _model(kind=otfgp.GaussianProcess):
    options = {"lower": 1.8} if kind is otfgp.ScalableGP else {}
    gp = kind(["Al"], CUTOFFS, hyperparameters={"sigma2": 1.0, "sigma3": 0.01, "ell2": 1.0, "ell3": 1.0,
                                                "noise_force": 0.05}, **options)
    gp.add_training_data(_frame(0, fixed=False)[0], atom_indices=[5, 9])
    gp.train(optimize=False)
    return gp


@pytest.mark.parametrize("kind", [otfgp.GaussianProcess, otfgp.ScalableGP])
def test_training_labels_of_fixed_atoms_are_their_forces(kind):
    plain, fixed = _model(kind), _model(kind)
    a, forces = _frame(1, fixed=False)
    b, _ = _frame(1, fixed=True)
    plain.add_training_data(a, atom_indices=FIXED)
    fixed.add_training_data(b, atom_indices=FIXED)
    plain.train(optimize=False)
    fixed.train(optimize=False)
    probe = _frame(2, fixed=False)[0]
    np.testing.assert_array_equal(fixed.predict(probe, variance=False).forces,
                                  plain.predict(probe, variance=False).forces)
    if kind is otfgp.GaussianProcess:
        np.testing.assert_array_equal(fixed.training_structure(1)["forces"], forces[FIXED])


def test_calibration_plots_and_pre_update_errors_read_the_fixed_atoms_forces():
    gp = _model()
    plain = [_frame(10 + i, fixed=False)[0] for i in range(3)]
    fixed = [_frame(10 + i, fixed=True)[0] for i in range(3)]
    a = gp.copy().calibrate(frames=plain, loo=False, form="scale").force.params
    b = gp.copy().calibrate(frames=fixed, loo=False, form="scale").force.params
    assert b == a
    for got, want in zip(predict_test_set(gp, fixed), predict_test_set(gp, plain)):
        np.testing.assert_array_equal(got, want)
    pred = gp.predict(plain[0], variance=True)
    latent = np.sqrt(pred.latent_force_variances)
    assert pre_update_record(pred.forces, latent, fixed[0], 0.05) == \
        pre_update_record(pred.forces, latent, plain[0], 0.05)
    assert calibration_sample(pred.forces, pred.latent_force_variances, fixed[0], 3.2) == \
        calibration_sample(pred.forces, pred.latent_force_variances, plain[0], 3.2)
