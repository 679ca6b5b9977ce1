"""Mapped GP: spline tables against the exact GP, conservation, symmetry, persistence, variance."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import scipy.stats
from ase.build import bulk

import otfgp
from otfgp import _core
from otfgp.calculator import GPCalculator
from otfgp.cli import main as cli_main
from conftest import displaced_al, random_alloy
from lammps_helpers import FIXED_AL_HYPERPARAMETERS

AL_CUTOFFS = {"twobody": 5.0, "threebody": 3.5}


def _al_model(n_cells: int = 10, seed: int = 0) -> otfgp.GaussianProcess:
    """Al model with fixed hyperparameters (a sizeable 3-body part): n_cells x 10 environments."""
    rng = np.random.default_rng(seed)
    gp = otfgp.GaussianProcess(["Al"], AL_CUTOFFS, hyperparameters=FIXED_AL_HYPERPARAMETERS)
    for _ in range(n_cells):
        gp.add_training_data(displaced_al(rng), atom_indices=rng.choice(32, 10, replace=False))
    gp.train(optimize=False)
    return gp


@pytest.fixture(scope="module")
def al():
    gp = _al_model()
    exact = _al_model()  # the same model, never mapped
    report = gp.map()
    return gp, exact, report


def _test_structures(seed: int = 123) -> list:
    """Structures not used in building the map: thermal, strained and hot fcc Al."""
    rng = np.random.default_rng(seed)
    out = [displaced_al(rng, amplitude=0.03), displaced_al(rng, amplitude=0.06)]
    for strain, amp in ((0.98, 0.04), (1.03, 0.05)):
        a = bulk("Al", "fcc", a=4.05 * strain, cubic=True).repeat((2, 2, 2))
        a.positions += rng.uniform(-amp * 4.05, amp * 4.05, a.positions.shape)
        out.append(a)
    return out


def test_mapped_matches_exact_gp(al):
    gp, exact, report = al
    assert gp.mapped and not exact.mapped
    assert report.force_error_max <= report.tolerance
    assert gp.map_report.grid3 == report.grid3 > 0 and report.grid2 > 0
    errors, e_errors = [], []
    for atoms in _test_structures():
        m, e = gp.predict(atoms, variance=False), exact.predict(atoms, variance=False)
        errors.append(np.abs(m.forces - e.forces).ravel())
        e_errors.append(abs(m.energy - e.energy) / len(atoms))
        np.testing.assert_allclose(m.local_energies.sum(), m.energy, rtol=1e-12)
    errors = np.concatenate(errors)
    # Documented tolerance of the default map: below 1 meV/A for every force component.
    assert errors.max() < 1e-3, errors.max()
    assert errors.mean() < 2e-4
    assert max(e_errors) < 1e-4
    # The map is not trivially exact either: it is a different function (splines).
    assert errors.max() > 0


def test_mapped_forces_are_minus_energy_gradient(al):
    gp, _, _ = al
    atoms = _test_structures(7)[1]
    f = gp.predict(atoms, variance=False).forces
    h = 1e-4
    rng = np.random.default_rng(1)
    for i in rng.choice(len(atoms), 6, replace=False):
        for t in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, t] += h
            minus.positions[i, t] -= h
            fd = -(gp.predict(plus, variance=False).energy - gp.predict(minus, variance=False).energy) / (2 * h)
            assert fd == pytest.approx(f[i, t], abs=2e-7), (i, t)


def test_mapped_stress_is_strain_derivative(al):
    gp, _, _ = al
    atoms = _test_structures(8)[0]
    stress = gp.predict(atoms, variance=False).stress
    vol = atoms.get_volume()
    h = 1e-5
    for k, (a, b) in enumerate([(0, 0), (1, 1), (2, 2)]):
        def energy(eps: float) -> float:
            strained = atoms.copy()
            F = np.eye(3)
            F[a, b] += eps
            strained.set_cell(atoms.cell.array @ F.T, scale_atoms=True)
            return gp.predict(strained, variance=False).energy
        fd = (energy(h) - energy(-h)) / (2 * h) / vol
        assert fd == pytest.approx(stress[k], abs=1e-7)


def test_mapped_model_is_rotation_and_permutation_invariant(al):
    gp, _, _ = al
    atoms = _test_structures(9)[1]
    atoms.pbc = False  # a cluster rotates freely
    ref = gp.predict(atoms, variance=False)
    R = scipy.stats.special_ortho_group.rvs(3, random_state=3)
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T
    p = gp.predict(rot, variance=False)
    assert p.energy == pytest.approx(ref.energy, abs=1e-10)
    np.testing.assert_allclose(p.forces, ref.forces @ R.T, atol=1e-9)
    perm = np.random.default_rng(4).permutation(len(atoms))
    q = gp.predict(atoms[perm], variance=False)
    np.testing.assert_allclose(q.forces, ref.forces[perm], atol=1e-10)


def test_two_species_tables_use_like_species_symmetry():
    rng = np.random.default_rng(5)
    gp = otfgp.GaussianProcess(["Cu", "Au"], {"twobody": 4.5, "threebody": 3.6},
                               hyperparameters={"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7,
                                                "noise_force": 0.01})
    for _ in range(4):
        gp.add_training_data(random_alloy(rng), atom_indices=rng.choice(32, 8, replace=False))
    gp.train(optimize=False)
    tests = [random_alloy(rng) for _ in range(2)]
    exact = [gp.predict(a, variance=False) for a in tests]
    report = gp.map(variance=False)
    tables = gp.core.maps["tables"]
    assert sorted((t["dim"], t["type"]) for t in tables) == [(1, 0), (1, 1), (1, 3), (3, 0), (3, 1), (3, 3), (3, 7)]
    # Tabulated triplet functions are symmetric exactly where the species allow it.
    for t in tables:
        if t["dim"] != 3:
            continue
        n = t["n"] + 2
        c = np.asarray(t["mean"]).reshape(n, n, n)
        for perm in gp.core.triplet_permutations(t["type"]):
            # (to rounding: the lower-edge mixed derivatives come from finite differences)
            np.testing.assert_allclose(np.transpose(c, perm), c, rtol=0, atol=1e-9 * np.abs(c).max())
    for atoms, e in zip(tests, exact):
        m = gp.predict(atoms, variance=False)
        assert np.abs(m.forces - e.forces).max() < 1e-3
    assert report.variance_spearman != report.variance_spearman  # NaN: no variance maps asked for
    with pytest.raises(ValueError, match="no variance maps"):
        gp.predict(tests[0], variance="mapped")


def test_save_load_round_trip_is_exact(al, tmp_path):
    gp, _, report = al
    gp.save(tmp_path / "m.otfgp")
    back = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert back.mapped and back.map_report == report
    atoms = _test_structures(10)[2]
    a, b = gp.predict(atoms), back.predict(atoms)
    assert a.energy == b.energy
    assert np.array_equal(a.forces, b.forces) and np.array_equal(a.force_variances, b.force_variances)
    assert gp.core.to_bytes() == back.core.to_bytes()


def _fnv1a(data: bytes) -> int:
    h = 1469598103934665603
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def _without_baseline_flag(payload: bytes) -> bytes:
    """A version-6/7 payload without its "no baseline" flag (after the energy offsets, version
    5) and its empty external-baseline spec (version 6, a u64 length 0): the version-4 layout."""
    ns = struct.unpack_from("<Q", payload, 0)[0]
    offsets_at = 8 + 4 * ns + 16 + 56  # species, cutoffs, hyperparameters
    pos = offsets_at + 8 + 8 * struct.unpack_from("<Q", payload, offsets_at)[0]
    assert payload[pos:pos + 9] == bytes(9)
    return payload[:pos] + payload[pos + 9:]


def test_version_1_files_still_load(al):
    """A version-1 file (exact GP, no maps section) loads as an unmapped model."""
    _, exact, _ = al
    blob = exact.core.to_bytes()
    assert struct.unpack_from("<I", blob, 8)[0] == _core.MODEL_FORMAT_VERSION == 8
    payload = _without_baseline_flag(blob[20:-8])
    # "no maps" and "no calibration" flags, the only additions since version 1 when unmapped
    assert payload[-2:] == b"\0\0"
    v1 = payload[:-2]
    old = b"OTFGPMDL" + struct.pack("<IQ", 1, len(v1)) + v1 + struct.pack("<Q", _fnv1a(v1))
    core = _core.Model.from_bytes(old)
    assert core.maps is None and core.trained
    atoms = _test_structures(11)[0]
    np.testing.assert_array_equal(
        otfgp.GaussianProcess._from_core(core).predict(atoms, variance=False).forces,
        exact.predict(atoms, variance=False).forces)


def _as_version_2(blob: bytes, unmapped: bytes) -> bytes:
    """A version-7 uncalibrated mapped model file without a baseline rewritten as version 2:
    the maps section without the per-table variance degree (version 2 tables are always
    cubic) and the per-table variance-basis mean (version 7, empty here), without the
    calibration flag (version 4), the baseline flag (version 5) and the external-baseline
    spec (version 6)."""
    payload, plain = blob[20:-9], unmapped[20:-9]  # both end in a "no calibration" flag
    payload, plain = _without_baseline_flag(payload), _without_baseline_flag(plain)
    assert blob[-9] == 0 and unmapped[-9] == 0
    head, maps = payload[:len(plain)], bytearray(payload[len(plain):])
    assert head[:-1] == plain[:-1] and head[-1] == 1  # same model, "has maps" flag
    out, pos = bytearray(), 0

    def take(n: int) -> bytes:
        nonlocal pos
        pos += n
        return bytes(maps[pos - n:pos])

    def take_vec(item: int) -> bytes:
        raw = take(8)
        return raw + take(struct.unpack("<Q", raw)[0] * item)

    out += take_vec(1)  # info
    raw = take(8)
    out += raw
    for _ in range(struct.unpack("<Q", raw)[0]):
        out += take(12) + take(16) + take_vec(8) + take(4)  # dim type n, lo hi, mean, nv
        assert struct.unpack("<i", take(4))[0] == 3  # the dropped degree: cubic
        assert take(8) == bytes(8)  # the dropped variance-basis mean: empty
    out += take_vec(8)  # covariance
    assert pos == len(maps)
    v2 = head + bytes(out)
    return b"OTFGPMDL" + struct.pack("<IQ", 2, len(v2)) + v2 + struct.pack("<Q", _fnv1a(v2))


def test_version_2_mapped_files_still_load(monkeypatch):
    """Version-2 files carry cubic variance bases; they load and predict as before."""
    import otfgp.mapping

    monkeypatch.setattr(otfgp.mapping, "TRIPLET_VARIANCE_DEGREE", 3)
    gp = _al_model(n_cells=3, seed=4)
    unmapped = gp.core.to_bytes()
    gp.map()
    assert {t["variance_degree"] for t in gp.core.maps["tables"]} == {3}
    core = _core.Model.from_bytes(_as_version_2(gp.core.to_bytes(), unmapped))
    back = otfgp.GaussianProcess._from_core(core)
    assert back.mapped and back.map_report == gp.map_report
    atoms = _test_structures(13)[1]
    a, b = gp.predict(atoms, variance="mapped"), back.predict(atoms, variance="mapped")
    assert np.array_equal(a.forces, b.forces) and np.array_equal(a.force_variances, b.force_variances)


def test_retraining_drops_stale_maps():
    gp = _al_model(n_cells=2, seed=3)
    gp.map(variance=False)
    assert gp.mapped
    gp.add_training_data(displaced_al(np.random.default_rng(9)), atom_indices=[0, 1])
    gp.train(optimize=False)
    assert not gp.mapped


def test_clusters_below_the_table_fall_back_to_the_exact_gp(al):
    gp, exact, report = al
    atoms = _test_structures(12)[0]
    # Push two atoms closer than the tables' lower end.
    v = atoms.positions[1] - atoms.positions[0]
    atoms.positions[1] = atoms.positions[0] + v / np.linalg.norm(v) * (report.lower2 - 0.1)
    m, e = gp.predict(atoms, variance=False), exact.predict(atoms, variance=False)
    assert np.abs(m.forces - e.forces).max() < 1e-3
    assert np.abs(m.forces[[0, 1]] - e.forces[[0, 1]]).max() < 1e-3


def test_bad_tables_are_rejected(al):
    gp, _, _ = al
    table = dict(gp.core.maps["tables"][0])
    model = _al_model(n_cells=1, seed=4)
    with pytest.raises(ValueError, match="coefficients"):
        model.core.set_maps([{**table, "mean": table["mean"][:-1]}])
    bad = np.array(table["mean"])
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.core.set_maps([{**table, "mean": bad}])
    with pytest.raises(ValueError, match="cutoff"):
        model.core.set_maps([{**table, "hi": table["hi"] - 0.5}])
    with pytest.raises(ValueError, match="type"):
        model.core.set_maps([{**table, "type": 5}])
    assert not model.mapped
    with pytest.raises(ValueError, match="tolerance"):
        model.map(tolerance=-1.0)


def test_mapped_variance_matches_the_exact_variance(al):
    gp, exact, report = al
    assert report.variance_spearman > 0.95 and report.variance_relative_error_median < 0.1
    rng = np.random.default_rng(21)
    structures = [displaced_al(rng, amplitude=a) for a in (0.01, 0.03, 0.06, 0.09)] + _test_structures(22)
    m = np.concatenate([gp.predict(s, variance="mapped").force_stds.ravel() for s in structures])
    e = np.concatenate([exact.predict(s, variance="exact").force_stds.ravel() for s in structures])
    assert np.all(m > 0)
    rho = scipy.stats.spearmanr(m, e)[0]
    rel = np.abs(m - e) / e
    assert rho > 0.95, rho
    assert np.median(rel) < 0.1 and np.percentile(rel, 90) < 0.3, (np.median(rel), np.percentile(rel, 90))
    # Hotter structures: larger uncertainty.
    per = [gp.predict(s, variance="mapped").force_stds.mean() for s in structures[:4]]
    assert per == sorted(per)
    # The exact variance stays available on a mapped model.
    np.testing.assert_allclose(gp.predict(structures[0], variance="exact").force_variances,
                               exact.predict(structures[0], variance="exact").force_variances, rtol=1e-10)


def test_bad_variance_covariance_is_rejected(al):
    gp, _, _ = al
    maps = gp.core.maps
    model = _al_model(n_cells=1, seed=4)
    cov = np.array(maps["covariance"])
    with pytest.raises(ValueError, match="entries"):
        model.core.set_maps(maps["tables"], cov[:-1, :-1])
    cov[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        model.core.set_maps(maps["tables"], cov)
    with pytest.raises(ValueError, match="variance basis"):
        model.core.set_maps([{**t, "nv": 0} for t in maps["tables"]], np.array(maps["covariance"]))
    with pytest.raises(ValueError, match="degree must be 2 or 3"):
        model.core.set_maps([{**t, "variance_degree": 4} for t in maps["tables"]], np.array(maps["covariance"]))
    # The default triplet variance basis is quadratic (the cheap one), pairs stay cubic.
    assert sorted((t["dim"], t["variance_degree"]) for t in maps["tables"]) == [(1, 3), (3, 2)]


def test_calculator_uses_the_maps(al):
    gp, _, _ = al
    atoms = _test_structures(13)[0]
    atoms.calc = GPCalculator(gp)
    forces = atoms.get_forces()
    np.testing.assert_array_equal(forces, gp.predict(atoms, variance=False).forces)
    stds = atoms.calc.results["force_stds"]
    np.testing.assert_allclose(stds, gp.predict(atoms, variance="mapped").force_stds)
    assert "energy_std" not in atoms.calc.results  # the mapped variance covers forces only
    atoms.calc = GPCalculator(gp, uncertainty="exact")
    atoms.get_forces()
    assert "energy_std" in atoms.calc.results
    with pytest.raises(ValueError, match="uncertainty"):
        GPCalculator(gp, uncertainty="sometimes")


def test_cli_map(tmp_path, capsys):
    gp = _al_model(n_cells=2, seed=6)
    gp.save(tmp_path / "exact.otfgp")
    assert cli_main(["map", str(tmp_path / "exact.otfgp"), "-o", str(tmp_path / "mapped.otfgp")]) == 0
    assert "force deviation" in capsys.readouterr().out
    mapped = otfgp.GaussianProcess.load(tmp_path / "mapped.otfgp")
    assert mapped.mapped and mapped.map_report.force_error_max <= 5e-4
    (tmp_path / "junk.otfgp").write_bytes(b"not a model")
    assert cli_main(["map", str(tmp_path / "junk.otfgp"), "-o", str(tmp_path / "x.otfgp")]) == 2
    assert "magic" in capsys.readouterr().err
