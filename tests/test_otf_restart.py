"""Kill an on-the-fly run with SIGKILL and resume it: nothing learnt is lost, no frame is
labelled twice, and the outputs read as if the run had never stopped.

The run happens in a child process (a driver script written to tmp_path). Its EMT labeller
appends every frame it computes to a log, so the test can tell computed frames from frames
reused from ``dft/``. Training is slowed down (sleep after training, from the third labelled
frame on) so that the kill reliably lands after a frame was labelled and written to ``dft/``
but before the checkpoint recorded it: the hardest case for a resume.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

import otfgp
from otf_helpers import read_log

TESTS_DIR = Path(__file__).resolve().parent
STEPS = 80

DRIVER = textwrap.dedent('''
    """OTF driver for test_otf_restart: python driver.py fresh|resume RUN_DIR STEPS LABEL_LOG"""
    import json, os, sys, time
    import numpy as np
    from ase import units
    from ase.calculators.calculator import all_changes
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet
    import otfgp
    from otf_helpers import CUTOFFS, jittered_al, thermalize

    mode, run_dir, steps, label_log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    slow_after = int(os.environ.get("SLOW_TRAIN_AFTER", "0"))

    class LoggingEMT(EMT):
        """EMT that records every frame it labels (process, positions)."""
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            line = json.dumps({"mode": mode, "pid": os.getpid(),
                               "positions": self.atoms.positions.tolist()})
            with open(label_log, "a") as f:
                f.write(line + "\\n")
                f.flush()
                os.fsync(f.fileno())

    if slow_after:
        _train = otfgp.GaussianProcess.train
        def slow_train(self, *args, **kwargs):
            _train(self, *args, **kwargs)
            if self.n_training_structures >= slow_after:
                time.sleep(1.0)  # frame is in dft/, checkpoint not yet written
        otfgp.GaussianProcess.train = slow_train

    rng = np.random.default_rng(3)
    atoms = jittered_al(rng, jitter=0.01)
    thermalize(atoms, 2500, rng)
    dyn = VelocityVerlet(atoms, 5 * units.fs)
    if mode == "resume":
        otf = otfgp.OTF.resume(run_dir, dyn, LoggingEMT())
        summary = otf.run(steps - otf.step)
    else:
        model = otfgp.GaussianProcess(["Al"], CUTOFFS)
        otf = otfgp.OTF(dyn, model, LoggingEMT(), threshold=0.01, max_atoms_added=1, init_atoms=1,
                        output_dir=run_dir)
        summary = otf.run(steps)
    print("SUMMARY " + json.dumps(summary))
''')


def _env(slow_after: int = 0) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # same arithmetic in every process (chaotic MD)
    env["SLOW_TRAIN_AFTER"] = str(slow_after)
    return env


def _run(driver: Path, mode: str, run_dir: Path, label_log: Path) -> dict:
    proc = subprocess.run([sys.executable, str(driver), mode, str(run_dir), str(STEPS), str(label_log)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")][-1]
    return json.loads(line[len("SUMMARY "):])


def _frame_files(run_dir: Path) -> dict[int, Path]:
    """Completed DFT frame files by step (leftover temporary files excluded)."""
    return {int(p.name[len("frame_"):-len(".extxyz")]): p
            for p in (run_dir / "dft").glob("frame_*.extxyz") if not p.name.endswith(".tmp.extxyz")}


def _read_state(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _labels(label_log: Path) -> list[dict]:
    return [json.loads(ln) for ln in label_log.read_text().splitlines() if ln.strip()]


def _same_frame(a, b) -> bool:
    return np.allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("restart")
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    run_dir, label_log = tmp / "run", tmp / "labels.jsonl"

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(driver), "fresh", str(run_dir), str(STEPS), str(label_log)],
                            env=_env(slow_after=3), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    killed_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        state = _read_state(run_dir)
        if state is not None and len(state["dft_calls"]) >= 2:
            frames = _frame_files(run_dir)
            pending = sorted(set(frames) - set(state["dft_calls"]))
            if pending:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                # what was on disk at the moment of the kill
                killed_at = {"state": _read_state(run_dir),
                             "frames": {s: p.read_bytes() for s, p in _frame_files(run_dir).items()},
                             "labels": _labels(label_log)}
                break
        time.sleep(0.01)
    if killed_at is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the run was not caught between labelling and checkpointing "
                    f"(exit {proc.returncode}): {err[-2000:]}")
    assert proc.returncode == -signal.SIGKILL
    t_kill = time.perf_counter() - t0

    summary = _run(driver, "resume", run_dir, label_log)
    t_resume = time.perf_counter() - t0 - t_kill

    ref_dir, ref_log = tmp / "reference", tmp / "reference_labels.jsonl"
    reference = _run(driver, "fresh", ref_dir, ref_log)
    print(f"\nrestart: killed after {t_kill:.1f} s at checkpoint step {killed_at['state']['step']} "
          f"(calls {killed_at['state']['dft_calls']}, frames on disk {sorted(killed_at['frames'])}); "
          f"resume {t_resume:.1f} s; reference {time.perf_counter() - t0 - t_kill - t_resume:.1f} s\n"
          f"resumed calls   {summary['dft_call_steps']}\nreference calls {reference['dft_call_steps']}")
    return {"run_dir": run_dir, "label_log": label_log, "killed": killed_at, "summary": summary,
            "ref_dir": ref_dir, "reference": reference}


def test_resumed_run_completes(killed_and_resumed):
    summary, run_dir = killed_and_resumed["summary"], killed_and_resumed["run_dir"]
    assert summary["steps"] == STEPS
    calls = summary["dft_call_steps"]
    assert len(calls) == len(set(calls)) == summary["dft_calls"], "every DFT step exactly once"
    assert calls == sorted(calls) and calls[0] == 0
    assert summary["failed_dft_steps"] == []
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["dft_call_steps"] == calls and on_disk["steps"] == STEPS
    # everything learnt before the kill is kept
    state = killed_and_resumed["killed"]["state"]
    assert calls[:len(state["dft_calls"])] == state["dft_calls"]
    assert any(c > state["step"] for c in calls), "the resumed part should learn too"


def test_frames_labelled_before_the_kill_are_reused(killed_and_resumed):
    killed, summary = killed_and_resumed["killed"], killed_and_resumed["summary"]
    run_dir = killed_and_resumed["run_dir"]
    pending = sorted(set(killed["frames"]) - set(killed["state"]["dft_calls"]))
    assert pending, "the kill should leave a labelled, not yet checkpointed frame"
    for step in pending:
        assert step in summary["dft_call_steps"], f"frame of step {step} was not used after resuming"
    # not rewritten: byte-identical to what was on disk at the kill
    for step, content in killed["frames"].items():
        assert _frame_files(run_dir)[step].read_bytes() == content, step

    labels = _labels(killed_and_resumed["label_log"])
    fresh = [e for e in labels if e["mode"] == "fresh"]
    resumed = [e for e in labels if e["mode"] == "resume"]
    assert len(fresh) == len(killed["labels"]), "the killed process labelled nothing after the kill"
    on_disk = {step: read(p).positions for step, p in _frame_files(run_dir).items()}
    for step in killed["frames"]:
        again = [e for e in resumed if _same_frame(e["positions"], on_disk[step])]
        assert not again, f"frame of step {step} was on disk at the kill but was recomputed"
    # No frame computed twice. The only allowed exception is a frame whose labeller call the
    # kill interrupted: its log line was written but its dft/ file was not.
    at_kill = {step: on_disk[step] for step in killed["frames"]}
    interrupted = not any(_same_frame(fresh[-1]["positions"], pos) for pos in at_kill.values())
    duplicates = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]
                  if _same_frame(a["positions"], b["positions"])]
    for a, b in duplicates:
        assert interrupted and a is fresh[-1] and b["mode"] == "resume", "a frame was labelled twice"
    assert len(labels) == summary["dft_calls"] + len(duplicates)
    # every DFT call of the final run has its frame on disk, and every computed frame is one
    assert sorted(on_disk) == summary["dft_call_steps"]
    for e in labels:
        assert any(_same_frame(e["positions"], pos) for pos in on_disk.values()) or \
            (interrupted and e is fresh[-1])


def test_final_model_and_outputs(killed_and_resumed):
    run_dir, summary = killed_and_resumed["run_dir"], killed_and_resumed["summary"]
    calls = summary["dft_call_steps"]
    model = otfgp.GaussianProcess.load(run_dir / "model.otfgp")
    assert model.n_training_structures == len(calls)
    assert model.n_training_environments == len(calls)  # 1 seed atom + 1 per later call
    assert summary["training_environments"] == len(calls)

    entries = read_log(run_dir)
    assert [e["step"] for e in entries] == list(range(STEPS + 1)), "one log entry per step"
    assert [e["step"] for e in entries if e["dft"]] == calls
    traj = read(run_dir / "trajectory.extxyz", index=":")
    assert [f.info["otf_step"] for f in traj] == list(range(STEPS + 1))
    assert len(read(run_dir / "dft_frames.extxyz", index=":")) == len(calls)
    wall = summary["wall_time_s"]
    assert all(v >= 0 for v in wall.values()) and wall["total"] > 0


def test_resume_matches_uninterrupted_run(killed_and_resumed):
    """VelocityVerlet and the retraining are deterministic, the checkpoint stores positions,
    momenta and the model exactly, and a frame labelled before the kill comes back from its
    lossless copy (dft/frame_<step>.traj; the extxyz keeps only 8 decimals, which made the
    chaotic MD drift by up to 1.35 meV): the killed-and-resumed run repeats the
    uninterrupted one bit for bit."""
    run_dir, ref_dir = killed_and_resumed["run_dir"], killed_and_resumed["ref_dir"]
    resumed, reference = read_log(run_dir), read_log(ref_dir)
    assert len(resumed) == len(reference)
    for a, b in zip(resumed, reference):
        assert a["potential_energy_eV"] == b["potential_energy_eV"], a["step"]
        assert a["temperature_K"] == b["temperature_K"], a["step"]
        assert a["hyperparameters"] == b["hyperparameters"], a["step"]
        assert a["dft"] == b["dft"], a["step"]
    assert killed_and_resumed["summary"]["dft_call_steps"] == killed_and_resumed["reference"]["dft_call_steps"]
    ref_model = otfgp.GaussianProcess.load(ref_dir / "model.otfgp")
    res_model = otfgp.GaussianProcess.load(run_dir / "model.otfgp")
    assert res_model.n_training_environments == ref_model.n_training_environments
    # the same labels and the same solution (the files differ in the maps' build times)
    assert np.array_equal(res_model.core.labels, ref_model.core.labels)
    assert np.array_equal(res_model.core.alpha, ref_model.core.alpha)
    assert res_model.hyperparameters == ref_model.hyperparameters


def test_failed_frame_is_retried_on_resume(tmp_path):
    """A labeller failure stops the run with a checkpoint; resuming labels that very step."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet

    from otf_helpers import jittered_al, thermalize

    def dynamics():
        rng = np.random.default_rng(8)
        atoms = jittered_al(rng)
        thermalize(atoms, 300, rng)
        return VelocityVerlet(atoms, timestep=5 * units.fs)

    calls = []

    def failing_after_first(atoms):
        calls.append(len(calls))
        if len(calls) > 1:
            raise RuntimeError("node crashed (simulated)")
        return EMT()

    out = tmp_path / "run"
    otf = otfgp.OTF(dynamics(), otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5}),
                    failing_after_first, threshold=1e-6, output_dir=str(out), progress=False)
    with pytest.raises(otfgp.LabellerError, match="step 1 .*node crashed"):
        otf.run(3)
    resumed = otfgp.OTF.resume(out, dynamics(), lambda atoms: EMT())
    summary = resumed.run(2)
    assert summary["dft_call_steps"][:2] == [0, 1]  # step 1 labelled after the resume
    assert summary["failed_dft_steps"] == [1]
    assert resumed.model.n_training_structures == len(summary["dft_call_steps"])


# --------------------------------------------------------------------------- kills at any moment
# A fast run (twobody only, fixed hyperparameters, no maps; 60 steps, ~10 DFT calls, periodic
# checkpoints every 7 steps) killed at random moments and by torn writes.
FAST_STEPS = 60
FAST_DRIVER = '''"""Fast OTF driver: python driver.py RUN_DIR STEPS  (resumes when RUN_DIR has a checkpoint).
TEAR=log|trajectory and TEAR_AT=step: SIGKILL itself halfway through writing that record."""
import json, os, signal, sys
import numpy as np
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet
import otfgp
from otfgp import atomic_io
from otf_helpers import FIXED_HYPERPARAMETERS, jittered_al, thermalize

run_dir, steps = sys.argv[1], int(sys.argv[2])
tear, tear_at = os.environ.get("TEAR"), int(os.environ.get("TEAR_AT", "-1"))


def torn(write):
    """``write(path, record)`` that writes half of the record of step TEAR_AT, then dies."""
    def wrapper(path, record):
        if not os.path.basename(str(path)).startswith(tear):
            return write(path, record)
        text = record if isinstance(record, str) else None
        step = json.loads(text)["step"] if text is not None else record.info["otf_step"]
        if step == tear_at:
            if text is None:
                import io
                from ase.io import write as ase_write
                buf = io.StringIO()
                ase_write(buf, record, format="extxyz")
                text = buf.getvalue()
            with open(path, "a") as f:
                f.write(text[: len(text) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        write(path, record)
    return wrapper


def killed_before_extxyz(write):
    """``write_atoms`` that dies before the readable copy of the DFT frame of step TEAR_AT
    (its lossless .traj copy is already on disk)."""
    def wrapper(path, atoms, format="extxyz"):
        name = os.path.basename(str(path))
        if format == "extxyz" and name.startswith("frame_") and atoms.info.get("otf_step") == tear_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(path, atoms, format=format)
    return wrapper


if tear == "log":
    atomic_io.append_text = torn(atomic_io.append_text)
elif tear == "dft":
    atomic_io.write_atoms = killed_before_extxyz(atomic_io.write_atoms)
elif tear:
    atomic_io.append_atoms = torn(atomic_io.append_atoms)

def labeller(atoms):
    """A fresh EMT per frame: one EMT object keeps its neighbour list between calls, which
    changes the last bits of its forces, so a resumed process would label differently."""
    return EMT()


rng = np.random.default_rng(5)
atoms = jittered_al(rng, jitter=0.02)
thermalize(atoms, 1500, rng)
dyn = VelocityVerlet(atoms, 5 * units.fs)
if os.path.exists(os.path.join(run_dir, "checkpoint", "state.json")):
    otf = otfgp.OTF.resume(run_dir, dyn, labeller)
else:
    model = otfgp.GaussianProcess(["Al"], {"twobody": 4.5}, hyperparameters=FIXED_HYPERPARAMETERS)
    otf = otfgp.OTF(dyn, model, labeller, threshold=0.012, max_atoms_added=1, init_atoms=2, optimize=False,
                    map=False, checkpoint_every=7, output_dir=run_dir, progress=False)
summary = otf.run(steps - otf.step)
print("SUMMARY " + json.dumps(summary))
'''


def _fast_process(driver: Path, run_dir: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(driver), str(run_dir), str(FAST_STEPS)],
                            env={**_env(), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads([ln for ln in out.splitlines() if ln.startswith("SUMMARY ")][-1][len("SUMMARY "):])


@pytest.fixture(scope="module")
def fast_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast")
    driver = tmp / "driver.py"
    driver.write_text(FAST_DRIVER)
    summary = _finish(_fast_process(driver, tmp / "reference"))
    assert summary["dft_calls"] >= 5 and max(summary["dft_call_steps"]) > 7
    return driver, tmp / "reference"


def _assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """The outputs of a killed-and-resumed run equal an uninterrupted run's, bit for bit."""
    for name in ("log.jsonl", "trajectory.extxyz", "dft_frames.extxyz"):
        assert (run_dir / name).read_bytes() == (ref_dir / name).read_bytes(), name
    frames = sorted(p.name for p in (run_dir / "dft").glob("frame_*"))
    assert frames == sorted(p.name for p in (ref_dir / "dft").glob("frame_*"))
    for name in frames:
        if name.endswith(".extxyz"):
            assert (run_dir / "dft" / name).read_bytes() == (ref_dir / "dft" / name).read_bytes(), name
    ref, res = (otfgp.GaussianProcess.load(d / "model.otfgp") for d in (ref_dir, run_dir))
    assert np.array_equal(res.core.labels, ref.core.labels)
    assert np.array_equal(res.core.alpha, ref.core.alpha)
    assert res.hyperparameters == ref.hyperparameters
    frame = read(ref_dir / "trajectory.extxyz", index=-1)
    assert np.array_equal(res.predict(frame).forces, ref.predict(frame).forces)


def _assert_split_within_wall_time(summary: dict) -> None:
    wall = summary["wall_time_s"]
    parts = sum(wall[k] for k in ("dft", "training", "mapping", "prediction", "md"))
    assert parts <= wall["total"] * (1 + 1e-9), wall


@pytest.mark.parametrize("tear", ["log", "trajectory"])
def test_torn_write_is_cut_on_resume(fast_reference, tmp_path, tear):
    """SIGKILL halfway through writing the record of step 20 (a real kill of the writing
    process; the issue found it with strace fault injection): the resume cuts the torn
    record off and the run ends as if never stopped."""
    driver, ref_dir = fast_reference
    run_dir = tmp_path / "run"
    proc = _fast_process(driver, run_dir, TEAR=tear, TEAR_AT="20")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    torn = run_dir / ("log.jsonl" if tear == "log" else "trajectory.extxyz")
    assert not torn.read_bytes().endswith(b"\n"), "the kill should leave a torn record"
    summary = _finish(_fast_process(driver, run_dir))
    assert summary["steps"] == FAST_STEPS
    _assert_same_run(run_dir, ref_dir)


def test_kill_between_the_two_copies_of_a_dft_frame(fast_reference, tmp_path):
    """SIGKILL after a DFT frame's lossless .traj copy is written and before its extxyz: the
    resume reuses the labels and writes the extxyz as the uninterrupted run did (the .traj
    lacks the pre-update gp_* arrays, which come from the resumed step's own prediction)."""
    driver, ref_dir = fast_reference
    second_call = json.loads((ref_dir / "summary.json").read_text())["dft_call_steps"][1]
    run_dir = tmp_path / "run"
    proc = _fast_process(driver, run_dir, TEAR="dft", TEAR_AT=str(second_call))
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert (run_dir / "dft" / f"frame_{second_call:07d}.traj").exists()
    assert not (run_dir / "dft" / f"frame_{second_call:07d}.extxyz").exists()
    summary = _finish(_fast_process(driver, run_dir))
    assert summary["steps"] == FAST_STEPS
    _assert_same_run(run_dir, ref_dir)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_at_random_moments_resumes_bit_for_bit(fast_reference, tmp_path, seed):
    """Two SIGKILLs at random moments (after a random number of logged steps, plus a random
    fraction of a step: anywhere in labelling, training, checkpointing or writing), then a
    resume to the end: log, trajectory, DFT frames and final model equal an uninterrupted
    run's bit for bit, and the summary's time split stays within the wall time."""
    driver, ref_dir = fast_reference
    rng = np.random.default_rng(seed)
    run_dir = tmp_path / "run"
    logf = run_dir / "log.jsonl"
    kills = []
    for k in sorted(rng.integers(0, FAST_STEPS, size=2)):
        proc = _fast_process(driver, run_dir)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if logf.exists() and logf.read_bytes().count(b"\n") >= k:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(int(k))
        proc.communicate(timeout=300)
    summary = _finish(_fast_process(driver, run_dir))
    print(f"seed {seed}: killed after {kills} logged steps")
    assert summary["steps"] == FAST_STEPS
    _assert_same_run(run_dir, ref_dir)
    _assert_split_within_wall_time(summary)
