"""The per-centre path used by MD codes (LAMMPS) equals the whole-structure prediction."""
import numpy as np
import pytest

from conftest import random_triclinic, trained_toy_model


@pytest.mark.parametrize("n", [2, 7])  # 2 atoms in a ~4 A cell: many self-images
def test_local_path_matches_structure_prediction(rng, n):
    gp = trained_toy_model(rng)
    atoms = random_triclinic(rng, n=n)
    cell, pbc, pos, species = gp._structure_arrays(atoms)
    ref = gp.predict(atoms)
    loc = gp.core.predict_local(cell, pbc, pos, species, True)
    assert loc["energies"].sum() == pytest.approx(ref.energy, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(loc["energies"], ref.local_energies, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loc["forces"], ref.forces, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(loc["force_variances"], ref.force_variances, rtol=1e-10, atol=1e-14)
    virial = loc["virials"].sum(axis=0)  # LAMMPS order xx yy zz xy xz yz, = -V * stress
    stress = -virial[[0, 1, 2, 5, 4, 3]] / atoms.get_volume()
    np.testing.assert_allclose(stress, ref.stress, rtol=1e-10, atol=1e-12)
