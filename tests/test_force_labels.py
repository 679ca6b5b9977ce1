"""Force labels go to the right atoms (issue 12, point 5): ``forces`` is always the full
(n_atoms, 3) array of the frame and ``atom_indices`` selects which rows become labels."""
from __future__ import annotations

import numpy as np
import pytest

import otfgp
from conftest import displaced_al


def model() -> otfgp.GaussianProcess:
    return otfgp.GaussianProcess(["Al"], {"twobody": 4.5, "threebody": 3.2})


def test_permuted_indices_give_the_same_model():
    atoms = displaced_al(np.random.default_rng(7))
    forces = atoms.get_forces()
    rng = np.random.default_rng(8)
    some = rng.permutation(32)[:9]
    full, permuted, subset, default = model(), model(), model(), model()
    for gp, idx in ((full, np.arange(32)), (permuted, rng.permutation(32)), (subset, some), (default, None)):
        gp.add_training_data(atoms, forces=forces, atom_indices=idx)
    for gp in (permuted, default):
        np.testing.assert_array_equal(gp.core.labels, full.core.labels)
    # the labels are the forces of the atoms they are stored with
    for gp in (full, permuted, subset):
        s = gp.training_structure(0)
        np.testing.assert_array_equal(s["forces"], forces[s["force_atoms"]])
    np.testing.assert_array_equal(subset.training_structure(0)["force_atoms"], np.sort(some))
    # and with the calculator's forces (forces=True) too
    gp = model()
    gp.add_training_data(atoms, atom_indices=rng.permutation(32))
    np.testing.assert_array_equal(gp.core.labels, full.core.labels)
    for gp in (full, permuted):
        gp.train(optimize=False)
    probe = displaced_al(np.random.default_rng(9))
    np.testing.assert_array_equal(full.predict(probe).forces, permuted.predict(probe).forces)


def test_forces_of_only_the_labelled_atoms_are_refused():
    """A (k, 3) array of the selected rows was accepted; for k = n_atoms the same call
    re-indexed it, so the meaning of ``forces`` depended on its length."""
    atoms = displaced_al(np.random.default_rng(7))
    f = atoms.get_forces()
    gp = model()
    with pytest.raises(otfgp.InputError, match=r"forces must have shape \(32, 3\), one row per atom"):
        gp.add_training_data(atoms, forces=f[[3, 5]], atom_indices=[3, 5])
    assert gp.n_labels == 0


def test_boolean_mask_selects_atoms():
    atoms = displaced_al(np.random.default_rng(7))
    mask = np.zeros(32, dtype=bool)
    mask[[2, 11, 30]] = True
    gp = model()
    gp.add_training_data(atoms, atom_indices=mask)
    np.testing.assert_array_equal(gp.training_structure(0)["force_atoms"], [2, 11, 30])
    with pytest.raises(otfgp.InputError, match=r"boolean atom_indices mask needs one entry per atom, shape \(32,\)"):
        gp.add_training_data(atoms, atom_indices=mask[:8])


@pytest.mark.parametrize("indices, message", [
    ([0.0, 1.7], "atom_indices must be integers, got float64"),
    (np.array([1.0, 2.0]), "atom_indices must be integers"),
    ([-1], r"out of range for 32 atoms: \[-1\].*negative ones do not count from the end"),
    ([3, 40], r"out of range for 32 atoms: \[40\]"),
    ([4, 1, 4], r"lists atoms \[4\] more than once"),
    ([[0, 1], [2, 3]], "one-dimensional"),
    (["a", "b"], "must be integers"),
])
def test_bad_atom_indices(indices, message):
    gp = model()
    with pytest.raises(otfgp.InputError, match=message):
        gp.add_training_data(displaced_al(np.random.default_rng(7)), atom_indices=indices)
    assert gp.n_labels == 0


def test_atom_indices_without_force_labels_is_an_error():
    gp = model()
    atoms = displaced_al(np.random.default_rng(7))
    with pytest.raises(otfgp.InputError, match="atom_indices selects force labels, but forces=False"):
        gp.add_training_data(atoms, forces=False, energy=True, atom_indices=[0])
    gp.add_training_data(atoms, energy=True, atom_indices=[])  # energy only
    assert gp.n_labels == 1
