"""A ScalableGP exported as a mapped-only model file: Python, the file and LAMMPS (serial and
MPI) give the ScalableGP's energies, forces, stress and stds to 1e-9."""
from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT

import otfgp
from otfgp.calibration import Calibration, ModelCalibration
from otfgp.lammps.thermo import thermo_rows
from lammps_helpers import lammps_cell, learn_deck, run_lmp, write_data

SPECIES = ["Al", "Cu"]
CUT = {"twobody": 4.5, "threebody": 3.3}
HYP = {"sigma2": 0.4, "ell2": 0.9, "sigma3": 0.1, "ell3": 0.8, "noise_force": 0.02, "noise_energy": 0.05,
       "noise_stress": 0.005}
# A calibration unlike the identity in every quantity LAMMPS reports (force, local energy).
CALIBRATION = ModelCalibration(force=Calibration("power", {"a": 2.0, "p": 0.8, "b": 1e-5}),
                               local_energy=Calibration("scale", {"s": 1.7}))
BAR = 1.0 / 1.6021765e6  # LAMMPS's metal-units pressure factor (see test_lammps.py)


def _frames(rng, count):
    frames = []
    for _ in range(count):
        atoms = lammps_cell(rng, 12, species=SPECIES)
        atoms.calc = EMT()
        frames.append(atoms)
    return frames


def _scalable(frames) -> otfgp.ScalableGP:
    sg = otfgp.ScalableGP(SPECIES, CUT, HYP, lower=1.5, nodes3=6)
    for atoms in frames:
        sg.add_training_data(atoms, energy=True, stress=True, atom_indices=range(6))
    sg.train(optimize=False)
    return sg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("scalable_lammps")
    rng = np.random.default_rng(5)
    sg = _scalable(_frames(rng, 3))
    sg.save_mapped(d / "model.otfgp")
    sg.save_mapped(d / "calibrated.otfgp", calibration=CALIBRATION)
    test = lammps_cell(rng, 14, species=SPECIES)
    write_data(test, d / "cell.data", SPECIES)
    return d, sg, test


def _assert_same(p, ref, variances=True):
    assert p.energy == pytest.approx(ref.energy, rel=1e-10)
    np.testing.assert_allclose(p.forces, ref.forces, rtol=1e-9, atol=1e-10 * np.abs(ref.forces).max())
    np.testing.assert_allclose(p.stress, ref.stress, rtol=1e-9, atol=1e-10 * np.abs(ref.stress).max())
    np.testing.assert_allclose(p.local_energies, ref.local_energies, rtol=1e-9, atol=1e-10)
    if variances:
        np.testing.assert_allclose(p.force_variances, ref.force_variances, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(p.local_energy_variances, ref.local_energy_variances, rtol=1e-9, atol=1e-14)


def test_exported_file_predicts_as_the_scalable_model(exported):
    d, sg, test = exported
    ref = sg.predict(test)
    direct = sg.to_mapped()
    loaded = otfgp.GaussianProcess.load(d / "model.otfgp")
    assert loaded.trained and loaded.mapped and loaded.has_variance_maps and loaded.n_labels == 0
    for gp in (direct, loaded):
        _assert_same(gp.predict(test), ref)
    assert loaded.energy_offsets == pytest.approx(sg.energy_offsets, abs=0)
    # Calibrated: the stored map applied to the ScalableGP's latent variances.
    cal = otfgp.GaussianProcess.load(d / "calibrated.otfgp").predict(test)
    noise = HYP["noise_force"] ** 2
    np.testing.assert_allclose(cal.force_variances,
                               CALIBRATION.force.apply(ref.latent_force_variances, noise), rtol=1e-9)
    np.testing.assert_allclose(cal.local_energy_variances,
                               CALIBRATION.local_energy.apply(ref.latent_local_energy_variances, 0.0), rtol=1e-9)
    assert not np.allclose(cal.force_variances, ref.force_variances, rtol=1e-3)


def test_file_size_does_not_grow_with_the_labels(exported, tmp_path):
    d, _, _ = exported
    small = _scalable(_frames(np.random.default_rng(9), 1))
    small.save_mapped(tmp_path / "small.otfgp")
    # Equal up to the digits of the label counts in the JSON info (25 vs 75 labels here).
    assert abs((tmp_path / "small.otfgp").stat().st_size - (d / "model.otfgp").stat().st_size) < 16


def test_untrained_and_mapped_only_rules(exported):
    d, _, test = exported
    with pytest.raises(otfgp.NotTrainedError, match="train"):
        otfgp.ScalableGP(SPECIES, CUT, HYP).save_mapped(d / "never.otfgp")
    assert not (d / "never.otfgp").exists()
    gp = otfgp.GaussianProcess.load(d / "model.otfgp")
    with pytest.raises(ValueError, match="exact GP variance"):
        gp.predict(test, variance="exact")
    with pytest.raises(ValueError, match="takes no training data"):
        gp.add_training_data(test, forces=np.zeros((len(test), 3)), energy=False, stress=False)
    with pytest.raises(ValueError, match="already the maps"):
        gp.map()
    assert gp.trained  # the refused data left the model as it was
    _assert_same(gp.predict(test), otfgp.GaussianProcess.load(d / "model.otfgp").predict(test))


def test_lammps_serial_matches_scalable_python(exported):
    import lammps

    d, sg, test = exported
    ref = sg.predict(test)
    for name, expected in (("model.otfgp", ref.force_variances),
                           ("calibrated.otfgp", CALIBRATION.force.apply(ref.latent_force_variances,
                                                                        HYP["noise_force"] ** 2))):
        lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        try:
            lmp.commands_string(f"""
                units metal
                atom_style atomic
                read_data {d / 'cell.data'}
                pair_style otfgp
                pair_coeff * * {d / name} {' '.join(SPECIES)}
                compute pe all pe/atom
                compute std all otfgp/std/atom
                thermo_style custom step pe pxx pyy pzz pyz pxz pxy
                run 0
            """)
            n = lmp.get_natoms()
            order = np.argsort(np.array(lmp.numpy.extract_atom("id")[:n]))
            forces = np.array(lmp.numpy.extract_atom("f")[:n])[order]
            pe_atom = np.array(lmp.numpy.extract_compute("pe", 1, 1)[:n])[order]
            stds = np.array(lmp.numpy.extract_compute("std", 1, 2)[:n])[order]
            energy = lmp.get_thermo("pe")
            press = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
        finally:
            lmp.close()
        assert energy == pytest.approx(ref.energy, rel=1e-9)
        np.testing.assert_allclose(forces, ref.forces, rtol=1e-9, atol=1e-9 * np.abs(ref.forces).max())
        np.testing.assert_allclose(pe_atom, ref.local_energies, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(press, -ref.stress / BAR, rtol=1e-8, atol=1e-9 * np.abs(ref.stress / BAR).max())
        np.testing.assert_allclose(stds[:, :3], np.sqrt(expected), rtol=1e-9, atol=1e-14)


def test_lammps_mpi_matches_scalable_python(exported):
    d, sg, test = exported
    ref = sg.predict(test)
    (d / "in.run0").write_text(f"""
units metal
atom_style atomic
read_data cell.data
pair_style otfgp
pair_coeff * * calibrated.otfgp {' '.join(SPECIES)}
compute std all otfgp/std/atom
dump d all custom 1 out.txt id fx fy fz c_std[1] c_std[2] c_std[3] c_std[5]
dump_modify d format float %.17g sort id
thermo_style custom step pe
thermo_modify format float %.17g
run 0
""")
    out = run_lmp(["-in", "in.run0", "-log", "none"], d, nprocs=2)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = np.loadtxt(d / "out.txt", skiprows=9)
    assert thermo_rows(out.stdout)[0, 1] == pytest.approx(ref.energy, rel=1e-9)
    np.testing.assert_allclose(rows[:, 1:4], ref.forces, rtol=1e-9, atol=1e-9 * np.abs(ref.forces).max())
    force_var = CALIBRATION.force.apply(ref.latent_force_variances, HYP["noise_force"] ** 2)
    local_var = CALIBRATION.local_energy.apply(ref.latent_local_energy_variances, 0.0)
    np.testing.assert_allclose(rows[:, 4:7], np.sqrt(force_var), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(rows[:, 7], np.sqrt(local_var), rtol=1e-9, atol=1e-14)


def test_below_the_basis_same_mean_and_the_prior_variance(exported):
    """A cluster shorter than the basis lower end: the exported model extrapolates the mean
    as the ScalableGP does, and gives that atom the GP prior's variance (documented)."""
    _, sg, test = exported
    atoms = test.copy()
    v = atoms.positions[1] - atoms.positions[0]
    atoms.positions[1] = atoms.positions[0] + v / np.linalg.norm(v) * (sg.lower - 0.2)
    p, q = sg.predict(atoms), sg.to_mapped().predict(atoms)
    np.testing.assert_allclose(q.forces, p.forces, rtol=1e-9, atol=1e-10 * np.abs(p.forces).max())
    assert q.energy == pytest.approx(p.energy, rel=1e-10)
    assert np.all(np.isfinite(q.force_variances))
    far = np.argmax(np.linalg.norm(atoms.get_distances(0, range(len(atoms)), mic=True)[:, None], axis=1))
    np.testing.assert_allclose(q.force_variances[far], p.force_variances[far], rtol=1e-9)
    assert np.all(q.force_variances[[0, 1]] > q.force_variances[far])


def test_the_models_own_calibration_is_carried(exported, tmp_path):
    """A ScalableGP's ``calibration`` attribute (what its calibrate() installs) goes into the
    file when none is given; a relative map (c > 0, scaled by the predicted forces) too."""
    from otfgp.calibration import force_scale_values

    _, sg, test = exported
    relative = ModelCalibration(force=Calibration("relative", {"a": 1.5, "c": 0.01}))
    previous = getattr(sg, "calibration", None)
    sg.calibration = relative
    try:
        sg.save_mapped(tmp_path / "own.otfgp")
    finally:
        sg.calibration = previous
    ref = sg.predict(test)
    got = otfgp.GaussianProcess.load(tmp_path / "own.otfgp")
    assert got.calibration.force == relative.force
    expected = relative.force.apply(ref.latent_force_variances, HYP["noise_force"] ** 2,
                                    force_scale_values(ref.forces))
    np.testing.assert_allclose(got.predict(test).force_variances, expected, rtol=1e-9)
    with pytest.raises(TypeError, match="ModelCalibration"):
        sg.save_mapped(tmp_path / "bad.otfgp", calibration={"force": 1.0})


def test_fix_learn_refuses_an_exported_model_at_the_start(tmp_path):
    """A mapped-only file cannot learn: fix otfgp/learn stops when the run starts, before
    any DFT call (not after the first one, when the data would be refused), naming why."""
    from conftest import displaced_al

    rng = np.random.default_rng(2)
    sg = otfgp.ScalableGP(["Al"], {"twobody": 5.0, "threebody": 3.5}, HYP, lower=1.5, nodes3=6)
    sg.add_training_data(displaced_al(rng), atom_indices=range(4))
    sg.train(optimize=False)
    sg.save_mapped(tmp_path / "model.otfgp")
    write_data(displaced_al(rng, amplitude=0.01), tmp_path / "al.data", ["Al"])
    # The labeller leaves a mark: a refusal at the start must come before any DFT call.
    (tmp_path / "labels.py").write_text("from pathlib import Path\nfrom ase.calculators.emt import EMT\n\n"
                                        "def emt(atoms):\n    Path('called').touch()\n"
                                        "    atoms.calc = EMT()\n    return atoms\n")
    (tmp_path / "in.learn").write_text(learn_deck("5 threshold 0.001 labeller labels:emt output_dir out", steps=5))
    out = run_lmp(["-in", "in.learn", "-log", "none"], tmp_path)
    assert out.returncode != 0
    assert "exported ScalableGP" in out.stdout + out.stderr and "fix otfgp/learn needs" in out.stdout
    assert not (tmp_path / "called").exists()


def test_compute_exact_refuses_an_exported_model_at_init(exported):
    """It used to fail in the force pass, from "pair otfgp", with MPI_Abort."""
    d, _, _ = exported
    (d / "in.exact").write_text(f"""units metal
atom_style atomic
read_data {d / 'cell.data'}
pair_style otfgp
pair_coeff * * {d / 'model.otfgp'} {' '.join(SPECIES)}
compute std all otfgp/std/atom exact
thermo_style custom step pe
run 0
""")
    out = run_lmp(["-in", "in.exact", "-log", "none"], d, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "compute otfgp/std/atom: keyword exact needs a model with training data" in text
    assert "MPI_Abort" not in text
