"""The run directory of an on-the-fly run under hostile but realistic use: two processes on
one directory, a new run over an old one, damaged or deleted state files, periodic and
kept checkpoints, MD collisions, and settings changed on resume."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

import otfgp
from otf_helpers import FIXED_HYPERPARAMETERS, jittered_al, read_log, thermalize
from otfgp.run_dir import RunDirError, RunLock, cut_records

OTFGP = str(Path(sys.executable).parent / "otfgp")
TESTS_DIR = Path(__file__).resolve().parent


def _dynamics(seed: int = 4, temperature_K: float = 800.0, dt_fs: float = 5.0) -> VelocityVerlet:
    rng = np.random.default_rng(seed)
    atoms = jittered_al(rng, repeat=(1, 1, 1), jitter=0.02)
    thermalize(atoms, temperature_K, rng)
    return VelocityVerlet(atoms, dt_fs * units.fs)


def _model() -> otfgp.GaussianProcess:
    return otfgp.GaussianProcess(["Al"], {"twobody": 4.0}, hyperparameters=FIXED_HYPERPARAMETERS)


def _emt(atoms):
    return EMT()


FAST = dict(threshold=0.02, init_atoms=1, optimize=False, map=False, progress=False)


def _otf(out: Path, **options) -> otfgp.OTF:
    return otfgp.OTF(_dynamics(), _model(), _emt, output_dir=str(out), **{**FAST, **options})


def _run_cli(args, cwd, timeout=300):
    return subprocess.run([OTFGP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


CONFIG = textwrap.dedent("""
    [structure]
    lattice = "fcc"
    element = "Al"
    a = 4.05
    cubic = true
    repeat = [1, 1, 1]
    jitter = 0.05
    seed = 1

    [md]
    timestep_fs = {dt}
    temperature_K = {temperature}
    seed = 2
    steps = {steps}

    [model]
    twobody = 4.0
    hyperparameters = {{sigma2 = 0.1, ell2 = 1.0, noise_force = 0.01}}

    [labeller]
    type = "emt"

    [otf]
    threshold = {threshold}
    init_atoms = 1
    optimize = false
    map = false
    output_dir = "run"
""")


def _config(tmp_path: Path, steps: int = 20, threshold: float = 0.02, dt: float = 5.0,
            temperature: float = 800.0) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(steps=steps, threshold=threshold, dt=dt, temperature=temperature))
    return path


# --------------------------------------------------------------------------- lock
LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from otfgp.run_dir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_second_process_on_a_locked_run_dir_gets_a_clear_error(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by another otfgp run \\(process {holder.pid} "):
            _otf(out)
        assert not (out / "log.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    _otf(out).run(2)  # the kernel dropped the dead holder's lock


def test_two_otfgp_otf_on_one_run_dir(tmp_path):
    """While ``otfgp otf`` runs, a second one (new run or --resume) on its directory stops
    with exit 2 and writes nothing; after the first is killed, a resume completes with
    every step logged once."""
    # more steps than can run before it is killed: a first run that ended on its own before
    # the second started would make the test a race (it did once in CI, with 400 steps)
    config = _config(tmp_path, steps=4000, threshold=0.005)
    first = subprocess.Popen([OTFGP, "otf", str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    logf = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (logf.exists() and logf.read_text().count("\n") >= 3) and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()[-2000:]
    try:
        for args in (["otf", "--resume", "run"], ["otf", str(config)]):
            second = _run_cli(args, tmp_path)
            assert second.returncode == 2, second.stderr[-2000:]
            assert "otfgp: error:" in second.stderr and "Traceback" not in second.stderr
            assert "in use by another otfgp run" in second.stderr or "already holds a run" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    config.write_text(config.read_text().replace("steps = 4000", "steps = 30"))
    done = _run_cli(["otf", "--resume", "run"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [e["step"] for e in read_log(tmp_path / "run")]
    assert steps == list(range(len(steps))), "every step logged exactly once"


def test_lock_is_reentrant_within_a_process_and_released(tmp_path):
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    with a, b:
        assert a.held and b.held
    code = f"from otfgp.run_dir import RunLock; RunLock({str(tmp_path)!r}).acquire(); print('ok')"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "ok", other.stderr


# A finaliser (OTF.__del__ releases its lock) that the garbage collector runs inside
# acquire() or release() on the same thread: it is simulated by a release of another lock
# from inside os.fstat (called by acquire) or os.close (called by the last release). Run in
# a subprocess, because the old plain-Lock guard deadlocked there (a CI run hung).
FINALISER_INSIDE = textwrap.dedent("""
    import fcntl, os, sys
    from pathlib import Path
    from otfgp import run_dir
    from otfgp.run_dir import RunLock

    root, hook, same_dir = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "same"

    def locked(d):
        fd = os.open(d / run_dir.LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a second open file description
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    run, old_dir = root / "run", root / ("run" if same_dir else "old")
    collected = RunLock(old_dir).acquire()  # the lock of the OTF the collector finalises
    real = getattr(os, hook)
    def with_finaliser(*args):
        collected.release()
        return real(*args)
    new = RunLock(run)
    if hook == "fstat":
        setattr(os, hook, with_finaliser)
        new.acquire()
    else:
        new.acquire()
        other = RunLock(root / "other").acquire()
        setattr(os, hook, with_finaliser)
        other.release()  # its os.close runs the finaliser
        setattr(os, hook, real)
        print("other", other.held, locked(root / "other"))
    setattr(os, hook, real)
    print("collected", collected.held, locked(old_dir) if not same_dir else "-")
    print("new", new.held, locked(run))
    new.release()
    print("released", new.held, locked(run))
""")


@pytest.mark.parametrize("hook, same_dir", [("fstat", "same"), ("fstat", "other"), ("close", "other")])
def test_a_finaliser_releasing_a_lock_inside_another_neither_hangs_nor_drops_a_lock(tmp_path, hook, same_dir):
    out = subprocess.run([sys.executable, "-c", FINALISER_INSIDE, str(tmp_path), hook, same_dir],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["collected"] == ("False -" if same_dir == "same" else "False False")
    assert lines["new"] == "True True", "the new holder keeps the directory locked"
    assert lines["released"] == "False False"
    if hook == "close":
        assert lines["other"] == "False False"


# --------------------------------------------------------------------------- existing runs
def test_new_otf_refuses_a_run_dir_holding_a_run(tmp_path):
    out = tmp_path / "run"
    with _otf(out) as otf:
        otf.run(3)
    log_before = (out / "log.jsonl").read_bytes()
    with pytest.raises(RunDirError, match="already holds an on-the-fly run.*OTF.resume"):
        _otf(out)
    assert (out / "log.jsonl").read_bytes() == log_before, "nothing appended"
    resumed = otfgp.OTF.resume(out, _dynamics(), _emt)  # asking to resume is fine
    resumed.run(2)
    assert [e["step"] for e in read_log(out)] == list(range(6))


def test_deleted_state_json_is_not_a_silent_restart(tmp_path):
    out = tmp_path / "run"
    with _otf(out, keep_checkpoints=2) as otf:
        otf.run(4)
    (out / "checkpoint" / "state.json").unlink()
    log_before = (out / "log.jsonl").read_bytes()
    with pytest.raises(RunDirError, match="state.json is missing although the run wrote log.jsonl.*--checkpoint"):
        otfgp.OTF.resume(out, _dynamics(), _emt)
    assert (out / "log.jsonl").read_bytes() == log_before


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_state_json_is_a_clear_error_naming_recovery(tmp_path, damage):
    out = tmp_path / "run"
    with _otf(out) as otf:
        otf.run(4)
    state = out / "checkpoint" / "state.json"
    text = state.read_bytes()
    state.write_bytes({"truncate": text[: len(text) // 2], "empty": b"", "garbage": b"\xff\x00\x13"}[damage])
    with pytest.raises(RunDirError, match=r"state.json is damaged .*older checkpoint.*--checkpoint \d+"):
        otfgp.OTF.resume(out, _dynamics(), _emt)
    kept = sorted(otfgp.run_dir.checkpoint_states(out))
    resumed = otfgp.OTF.resume(out, _dynamics(), _emt, checkpoint=kept[-2])  # the way out offered
    resumed.run(1)


def test_cli_resume_with_damaged_state_files(tmp_path):
    config = _config(tmp_path, steps=6)
    assert _run_cli(["otf", str(config)], tmp_path).returncode == 0
    run = tmp_path / "run"
    (run / "summary.json").unlink()  # not finished as far as the CLI can tell
    for name in ("checkpoint/state.json", "run_config.json", "stages.json"):
        path = run / name
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 3])
        out = _run_cli(["otf", "--resume", "run"], tmp_path)
        assert out.returncode == 2, (name, out.stderr[-2000:])
        assert "Traceback" not in out.stderr
        assert f"otfgp: error: {path}" in out.stderr or f"otfgp: error: run/{name}" in out.stderr, out.stderr
        assert "is damaged" in out.stderr
        path.write_bytes(good)
    (run / "checkpoint" / "state.json").unlink()
    out = _run_cli(["otf", "--resume", "run"], tmp_path)
    assert out.returncode == 2 and "is missing although the run wrote log.jsonl" in out.stderr, out.stderr
    assert len(read_log(run)) == 7, "the log was not restarted"


# --------------------------------------------------------------------------- torn tails
def test_torn_tails_are_cut_and_mid_file_damage_refused(tmp_path):
    out = tmp_path / "run"
    with _otf(out) as otf:
        otf.run(5)
    ref_log, ref_traj = (out / "log.jsonl").read_bytes(), (out / "trajectory.extxyz").read_bytes()
    last_frame = ref_traj[ref_traj.rindex(b"\n4\n") + 1:]
    with open(out / "log.jsonl", "ab") as f:
        f.write(b'{"step": 6, "time_')
    with open(out / "trajectory.extxyz", "ab") as f:
        f.write(last_frame[: len(last_frame) // 2])
    resumed = otfgp.OTF.resume(out, _dynamics(), _emt)  # from the end-of-run checkpoint, step 5
    assert (out / "log.jsonl").read_bytes() == ref_log
    assert (out / "trajectory.extxyz").read_bytes() == ref_traj
    resumed.close()
    # damage followed by records to keep is not a torn tail: refused, nothing cut
    lines = ref_log.splitlines(keepends=True)
    damaged = b"".join(lines[:2]) + b"{not json\n" + b"".join(lines[2:])
    (out / "log.jsonl").write_bytes(damaged)
    with pytest.raises(RunDirError, match="log.jsonl is damaged at byte"):
        cut_records(out / "log.jsonl", 6)
    assert (out / "log.jsonl").read_bytes() == damaged


# --------------------------------------------------------------------------- checkpoints
def test_periodic_checkpoints_keep_the_last_k(tmp_path):
    """With a confident model (no DFT after the seed), checkpoints come every
    ``checkpoint_every`` steps; only the last ``keep_checkpoints`` stay, each under its own
    name (no model file is ever overwritten)."""
    every = _otf(tmp_path / "all", threshold=1e9, checkpoint_every=4, keep_checkpoints=50)
    every.run(18)
    steps = [json.loads(p.read_text())["step"] for p in otfgp.run_dir.checkpoint_states(tmp_path / "all").values()]
    assert steps == [0, 4, 8, 12, 16, 18]  # the seed, every 4 steps, the end
    out = tmp_path / "run"
    seen = {}
    otf = _otf(out, threshold=1e9, checkpoint_every=4, keep_checkpoints=2)
    for _ in range(5):
        otf.run(4)
        for p in (out / "checkpoint").glob("model_*.otfgp"):
            seen.setdefault(p.name, p.stat().st_ino)
            assert seen[p.name] == p.stat().st_ino, f"{p.name} rewritten"
    states = otfgp.run_dir.checkpoint_states(out)
    assert len(states) == 2
    steps = [json.loads(p.read_text())["step"] for p in states.values()]
    assert steps[-1] == 20
    assert sorted(p.name for p in (out / "checkpoint").glob("model_*.otfgp")) == \
        [f"model_{n:05d}.otfgp" for n in states]
    # every-step checkpoints by time, and none by count
    otf2 = _otf(tmp_path / "timed", threshold=1e9, checkpoint_every=None, checkpoint_minutes=1e-9)
    otf2.run(6)
    assert otf2.checkpoint_index >= 7


@pytest.mark.parametrize("bad", [{"checkpoint_every": 0}, {"keep_checkpoints": 0},
                                 {"checkpoint_minutes": -1.0}, {"keep_checkpoints": None}])
def test_bad_checkpoint_options(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        otfgp.OTFOptions.from_dict(bad)


def test_summary_after_resume_stays_within_the_wall_time(tmp_path):
    """A periodic checkpoint mid-run records the wall time so far: a run resumed from it
    reports a time split within its wall time (it once read 'prediction 118%')."""
    out = tmp_path / "run"
    otf = _otf(out, threshold=1e9, checkpoint_every=3, keep_checkpoints=50)
    otf.run(10)
    states = [json.loads(p.read_text()) for p in otfgp.run_dir.checkpoint_states(out).values()]
    state = next(s for s in states if s["step"] == 6)  # periodic, mid-run
    wall = state["timers"]
    assert sum(wall[k] for k in ("dft", "training", "mapping", "prediction", "md")) <= wall["total"]
    otf.close()
    resumed = otfgp.OTF.resume(out, _dynamics(), _emt, checkpoint=state["checkpoint_index"])
    summary = resumed.run(10 - resumed.step)
    w = summary["wall_time_s"]
    assert sum(w[k] for k in ("dft", "training", "mapping", "prediction", "md")) <= w["total"]
    from otfgp.cli import format_summary
    text = format_summary(summary)
    assert "mapping" in text and "prediction" in text


# --------------------------------------------------------------------------- clean stops
def test_md_collision_is_a_clean_stop_and_resume_takes_new_settings(tmp_path):
    """A model that never calls DFT after its seed drives hot atoms together: otfgp otf
    stops with 'otfgp: error:' naming the atoms, the distance, the step and temperature,
    and what to try; the checkpoint stays, and a resume with a lower threshold (recorded in
    the run directory) goes on."""
    config = _config(tmp_path, steps=200, threshold=1e9, dt=10.0, temperature=20000.0)
    out = _run_cli(["otf", str(config)], tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    err = out.stderr
    assert "otfgp: error: the MD stopped between steps" in err
    for part in ("Angstrom apart", " K at step ", "time step 10 fs", "lower DFT threshold", "smaller time step",
                 "--set otf.threshold="):
        assert part in err, part
    run = tmp_path / "run"
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    bad = _run_cli(["otf", "--resume", "run", "--set", "md.timestep_fs=1"], tmp_path)
    assert bad.returncode == 2 and "[md] settings cannot change on resume" in bad.stderr
    bad = _run_cli(["otf", "--resume", "run", "--set", "otf.threshhold=0.1"], tmp_path)
    assert bad.returncode == 2 and "threshhold" in bad.stderr
    override = tmp_path / "more.toml"
    override.write_text("[labeller]\ntype = \"emt\"\n[otf]\nmax_atoms_added = 2\n")
    again = _run_cli(["otf", "--resume", "run", "--set", "otf.threshold=0.05", "--override", str(override),
                      "--set", "otf.every=1"], tmp_path)
    assert "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "changed settings on resume" in again.stderr
    cfg = json.loads((run / "run_config.json").read_text())
    assert cfg["otf"]["threshold"] == 0.05 and cfg["otf"]["max_atoms_added"] == 2
    history = json.loads((run / "overrides.json").read_text())
    assert history[-1]["step"] == state["step"]
    assert history[-1]["otf"] == {"threshold": 0.05, "max_atoms_added": 2}
    new_state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert new_state["options"]["threshold"] == 0.05
    assert len(new_state["dft_calls"]) > len(state["dft_calls"]), "the lower threshold calls DFT"


def test_python_resume_overrides_are_recorded(tmp_path):
    out = tmp_path / "run"
    with _otf(out) as otf:
        otf.run(3)
    with otfgp.OTF.resume(out, _dynamics(), _emt, relative_threshold=2.0) as resumed:
        assert resumed.options.threshold is None and resumed.options.relative_threshold == 2.0
        resumed.run(1)
    history = json.loads((out / "overrides.json").read_text())
    assert history == [{"time": history[0]["time"], "step": 3, "checkpoint": history[0]["checkpoint"],
                        "otf": {"relative_threshold": 2.0}}]


# --------------------------------------------------------------------------- stored DFT frames on resume
CALLS: list[str] = []


def _emt_twice(atoms):
    """Another labeller than _emt (twice EMT's forces), counting its calls."""
    CALLS.append("twice")
    probe = atoms.copy()
    probe.calc = EMT()
    return {"energy": 2 * probe.get_potential_energy(), "forces": 2 * probe.get_forces()}


def _run_with_checkpoints(out: Path) -> tuple[list[int], int]:
    with _otf(out, threshold=0.005) as otf:
        otf.run(12)
        calls = list(otf.dft_calls)
    kept = sorted(int(p.stem.split("_")[1]) for p in (out / "checkpoint").glob("model_*.otfgp"))
    return calls, kept[0]


def test_a_labeller_changed_on_resume_relabels_the_stored_frames(tmp_path):
    """Going back to a checkpoint with another labeller reused the first labeller's stored
    frames of the later steps (their labels are the old labeller's); now they are labelled
    again, and the old files stay beside the new ones."""
    out = tmp_path / "run"
    calls, oldest = _run_with_checkpoints(out)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    CALLS.clear()
    with otfgp.OTF.resume(out, _dynamics(), _emt_twice, checkpoint=oldest) as otf:
        start = otf.step
        otf.run(12 - start)
    later = [s for s in calls if s > start]
    assert later and state["step"] > start
    # up to the first later DFT step the resumed run repeats the first one exactly, so it
    # calls DFT there, finds the old labeller's frame and labels it again
    from ase.io import read

    assert CALLS
    new = read(out / "dft" / f"frame_{later[0]:07d}.traj")
    kept = list((out / "dft").glob(f"frame_{later[0]:07d}.traj.labeller_*"))
    assert new.info["labeller_id"] == otf.labeller_id and len(kept) == 1
    old = read(kept[0], format="traj")
    assert old.info["labeller_id"] != otf.labeller_id
    np.testing.assert_allclose(new.get_forces(), 2 * old.get_forces(), rtol=1e-8)


def test_a_torn_stored_frame_is_not_a_crash(tmp_path):
    out = tmp_path / "run"
    calls, oldest = _run_with_checkpoints(out)
    with otfgp.OTF.resume(out, _dynamics(), _emt, checkpoint=oldest) as otf:
        later = [s for s in calls if s > otf.step]
        torn = out / "dft" / f"frame_{later[0]:07d}.traj"
        torn.write_bytes(torn.read_bytes()[:100])
        otf.run(12 - otf.step)  # the extxyz copy is reused instead
        assert otf.dft_calls == calls


def test_a_labeller_change_that_fails_is_not_recorded(tmp_path):
    config = _config(tmp_path, steps=4)
    assert _run_cli(["otf", str(config)], tmp_path).returncode == 0
    before = (tmp_path / "run" / "run_config.json").read_bytes()
    bad = _run_cli(["otf", "--resume", "run", "--set", 'labeller.type="espresso"', "--set",
                    'labeller.pseudo_dir="/nonexistent"'], tmp_path)
    assert bad.returncode == 2 and "pseudo" in bad.stderr, bad.stderr[-2000:]
    assert (tmp_path / "run" / "run_config.json").read_bytes() == before  # later resumes still work
    assert _run_cli(["otf", "--resume", "run"], tmp_path).returncode == 0
