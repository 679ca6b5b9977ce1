"""Symmetries: rotation, translation and permutation invariance; forces rotate covariantly."""
import numpy as np
from scipy.spatial.transform import Rotation

from conftest import random_triclinic


def test_rotation(toy_model, rng):
    atoms = random_triclinic(rng, n=7)
    ref = toy_model.predict(atoms)
    R = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    rot = atoms.copy()
    rot.set_cell(atoms.cell.array @ R.T)
    rot.positions = atoms.positions @ R.T
    out = toy_model.predict(rot)
    np.testing.assert_allclose(out.energy, ref.energy, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.forces, ref.forces @ R.T, atol=1e-9)
    np.testing.assert_allclose(out.local_energies, ref.local_energies, atol=1e-10)
    # Force covariance rotates too: the total variance per atom (trace) is invariant.
    np.testing.assert_allclose(out.force_variances.sum(1), ref.force_variances.sum(1), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(out.energy_variance, ref.energy_variance, rtol=1e-8)


def test_translation_and_wrapping(toy_model, rng):
    atoms = random_triclinic(rng, n=7)
    ref = toy_model.predict(atoms)
    moved = atoms.copy()
    moved.positions += np.array([0.37, -1.9, 5.3])  # pushes atoms out of the cell
    out = toy_model.predict(moved)
    np.testing.assert_allclose(out.energy, ref.energy, rtol=1e-10)
    np.testing.assert_allclose(out.forces, ref.forces, atol=1e-9)
    np.testing.assert_allclose(out.force_variances, ref.force_variances, rtol=1e-6, atol=1e-12)


def test_permutation(toy_model, rng):
    atoms = random_triclinic(rng, n=7)
    ref = toy_model.predict(atoms)
    perm = rng.permutation(len(atoms))
    out = toy_model.predict(atoms[perm])
    np.testing.assert_allclose(out.energy, ref.energy, rtol=1e-10)
    np.testing.assert_allclose(out.forces, ref.forces[perm], atol=1e-9)
    np.testing.assert_allclose(out.local_energies, ref.local_energies[perm], atol=1e-10)
    np.testing.assert_allclose(out.force_variances, ref.force_variances[perm], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(out.stress, ref.stress, atol=1e-10)
