"""The mean force field is conservative: forces and stress are exact derivatives of the energy."""
import numpy as np
import pytest
from ase.calculators.emt import EMT

from conftest import random_triclinic, trained_toy_model


def _energy(gp, atoms):
    return gp.predict(atoms, variance=False).energy


@pytest.mark.parametrize("pbc", [True, False, (True, False, True)])
def test_forces_are_minus_energy_gradient(rng, pbc):
    gp = trained_toy_model(rng)
    atoms = random_triclinic(rng, n=7, pbc=pbc)
    pred = gp.predict(atoms, variance=False)
    h = 1e-4
    fd = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, a] += h
            minus.positions[i, a] -= h
            fd[i, a] = -(_energy(gp, plus) - _energy(gp, minus)) / (2 * h)
    assert np.abs(pred.forces).max() > 1e-2  # a non-trivial field
    np.testing.assert_allclose(pred.forces, fd, atol=1e-6 * max(1.0, np.abs(pred.forces).max()))


def test_stress_is_strain_derivative(rng):
    gp = trained_toy_model(rng)
    atoms = random_triclinic(rng, n=6)
    pred = gp.predict(atoms, variance=False)
    volume = atoms.get_volume()
    h = 1e-5
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for k, (a, b) in enumerate(voigt):
        vals = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h / (1 if a == b else 2)
            strain[b, a] += 0 if a == b else sign * h / 2
            s = atoms.copy()
            s.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            vals.append(_energy(gp, s))
        fd = (vals[0] - vals[1]) / (2 * h) / volume
        assert pred.stress[k] == pytest.approx(fd, abs=1e-7)


def test_local_energies_sum_to_energy(toy_model, rng):
    atoms = random_triclinic(rng, n=8)
    pred = toy_model.predict(atoms)
    assert pred.local_energies.sum() == pytest.approx(pred.energy, rel=1e-12, abs=1e-10)


def test_training_forces_reproduced_with_small_noise(rng):
    """Self-images in a tiny cell: the force functional used in training equals -dE/dx.

    With a tiny noise the posterior mean interpolates the training forces, which only
    happens if the training functional and the gradient of the mean energy agree.
    """
    import otfgp

    atoms = random_triclinic(rng, n=3)  # 3 atoms in a ~4 A cell: many self-images
    atoms.calc = EMT()
    gp = otfgp.GaussianProcess(["Al", "Cu"], {"twobody": 5.0, "threebody": 4.0},
                               hyperparameters={"sigma2": 1.0, "sigma3": 1.0, "noise_force": 1e-5})
    gp.add_training_data(atoms, atom_indices=[0])
    gp.train(optimize=False)
    pred = gp.predict(atoms)
    np.testing.assert_allclose(pred.forces[0], atoms.get_forces()[0], atol=1e-6)
