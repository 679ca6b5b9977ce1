"""Structures users have (issue 12, point 9): slabs and wires as ASE builds them (zero cell
vectors along non-periodic directions), huge vacuum boxes, and clear limits instead of an
allocation failure or a runaway search for cells far smaller than the cutoff."""
from __future__ import annotations

import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111, nanotube
from ase.calculators.emt import EMT

import otfgp
from conftest import displaced_al


@pytest.fixture(scope="module")
def al_model() -> otfgp.GaussianProcess:
    rng = np.random.default_rng(12)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    for _ in range(2):
        gp.add_training_data(displaced_al(rng), atom_indices=rng.choice(32, 6, replace=False))
    gp.train(optimize=False)
    return gp


def assert_same_prediction(a: otfgp.Prediction, b: otfgp.Prediction) -> None:
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.local_energies, b.local_energies, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.force_variances, b.force_variances, rtol=1e-9, atol=1e-12)


def rattled(atoms: Atoms, seed: int = 0, amplitude: float = 0.08) -> Atoms:
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).uniform(-amplitude, amplitude, atoms.positions.shape)
    return atoms


def test_slab_without_vacuum_predicts_as_with_vacuum(al_model):
    """fcc111 without vacuum has a zero c vector (non-periodic): accepted, and the physics is
    that of the same slab in a vacuum box, periodic or not along the normal."""
    bare = rattled(fcc111("Al", (2, 2, 3), a=4.05))
    assert not bare.pbc[2] and np.allclose(bare.cell[2], 0.0)
    boxed = bare.copy()
    boxed.cell[2] = [0.0, 0.0, 30.0]  # vacuum far wider than the cutoff
    boxed.positions += [0.0, 0.0, 10.0]
    p_bare = al_model.predict(bare, variance="exact")
    assert_same_prediction(p_bare, al_model.predict(boxed, variance="exact"))
    boxed.pbc = True
    assert_same_prediction(p_bare, al_model.predict(boxed, variance="exact"))
    tiny = bare.copy()
    tiny.cell[2] = [0.0, 1e-9, 1e-9]  # "tiny" instead of zero: not used either
    assert_same_prediction(p_bare, al_model.predict(tiny, variance="exact"))
    # the surface is felt: the outer layers differ from the middle one
    z = bare.positions[:, 2]
    assert abs(p_bare.local_energies[z < z.min() + 0.5].mean() - p_bare.local_energies[
        (z > z.min() + 1.0) & (z < z.max() - 1.0)].mean()) > 1e-3


def test_slab_without_vacuum_trains(al_model):
    """Training on such a slab (energy and forces) works and gives the same model as the boxed one."""
    bare = rattled(fcc111("Al", (2, 2, 2), a=4.05), seed=1)
    bare.calc = EMT()
    boxed = bare.copy()
    boxed.cell[2] = [0.0, 0.0, 25.0]
    boxed.calc = EMT()
    models = []
    for atoms in (bare, boxed):
        gp = al_model.copy()
        gp.add_training_data(atoms, energy=True)
        gp.train(optimize=False)
        models.append(gp)
    probe = rattled(fcc111("Al", (2, 2, 3), a=4.05), seed=2)
    assert_same_prediction(models[0].predict(probe, variance="exact"), models[1].predict(probe, variance="exact"))


def test_wire_and_nanotube_cells():
    """Wires: only the axis is periodic, the other two cell vectors are zero (ASE's nanotube)."""
    tube = rattled(nanotube(3, 3, length=2, bond=1.42), amplitude=0.03)
    assert list(tube.pbc) == [False, False, True] and np.allclose(tube.cell[:2], 0.0)
    tube.calc = EMT()
    gp = otfgp.GaussianProcess(["C"], {"twobody": 4.0, "threebody": 3.0})
    gp.add_training_data(tube, energy=True)
    gp.train(optimize=False)
    boxed = tube.copy()
    boxed.cell[:2] = [[30.0, 0.0, 0.0], [0.0, 30.0, 0.0]]
    assert_same_prediction(gp.predict(tube, variance="exact"), gp.predict(boxed, variance="exact"))


def test_zero_or_dependent_periodic_vectors_are_still_refused(al_model):
    slab = fcc111("Al", (2, 2, 3), a=4.05)
    slab.pbc = True  # periodic along a zero vector: no lattice to take images along
    with pytest.raises(otfgp.InputError, match="lattice vector c has zero length but the structure is periodic"):
        al_model.predict(slab)
    flat = Atoms("Al", positions=[[0, 0, 0]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(otfgp.InputError, match="linearly dependent"):
        al_model.predict(flat)


def test_huge_vacuum_box_equals_isolated_cluster(al_model):
    """A molecule in a 1e12 A periodic box (was std::bad_alloc) is the isolated molecule."""
    positions = [[0.0, 0.0, 0.0], [2.6, 0.1, 0.0], [1.2, 2.3, 0.2]]
    free = Atoms("Al3", positions=positions)
    boxed = Atoms("Al3", positions=positions, cell=[1e12] * 3, pbc=True)
    assert_same_prediction(al_model.predict(free, variance="exact"), al_model.predict(boxed, variance="exact"))


def test_cutoff_far_longer_than_the_cell_is_a_clear_error():
    """A 1e4 A cutoff (was std::bad_alloc): an InputError naming the limit, at once."""
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 1e4})
    with pytest.raises(otfgp.InputError, match=r"needs about .* periodic image atoms of the 32 atoms, more than the limit of 1e\+07"):
        gp.add_training_data(displaced_al(np.random.default_rng(0)), atom_indices=[0])
    assert gp.n_labels == 0


def test_tiny_periodic_cell_is_a_clear_error(al_model):
    """One atom in a 0.6 A periodic cube (training ran for minutes): refused, quickly."""
    t0 = time.perf_counter()
    cube = Atoms("Al", positions=[[0, 0, 0]], cell=[0.6] * 3, pbc=True)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    with pytest.raises(otfgp.InputError, match=r"neighbours within 5 Angstrom, denser than 0.5 atoms/A\^3.*0.6 Angstrom apart"):
        gp.add_training_data(cube, forces=np.zeros((1, 3)), energy=1.0)
    with pytest.raises(otfgp.InputError, match="denser than"):
        al_model.predict(cube)
    assert time.perf_counter() - t0 < 5.0
    # a dense but physical one-atom cell (fcc Al primitive cell) is fine
    from ase.build import bulk
    al_model.predict(bulk("Al", "fcc", a=4.05))
