"""Batch labelling (otfgp.batch): process pool and Dask, per-frame failures, reuse of stored labels."""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from otfgp.batch import LABELLED_FILE, BatchLabelError, job_directory, label_batch
from otfgp.label_checks import LabelChecks
from otfgp.learning import LearningOptions


def frames(n: int = 4, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)  # 4 atoms: EMT in milliseconds
        a.positions += rng.uniform(-0.1, 0.1, a.positions.shape)
        out.append(a)
    return out


def _label(atoms: Atoms, directory: str, fail: str, sleep: float) -> EMT:
    """EMT, recording each call and the worker's pid in the job directory, after ``sleep``
    seconds (a stand-in for DFT time); a frame with info['poison'] fails always
    (``fail="always"``) or only on its first attempt (``"once"``)."""
    job = Path(directory)
    time.sleep(sleep)
    (job / "worker").write_text(str(os.getpid()))
    with open(job / "calls", "a") as f:
        f.write("x\n")
    if atoms.info.get("poison") and (fail == "always" or len((job / "calls").read_text().split()) == 1):
        raise RuntimeError("SCF not converged (injected failure)")
    return EMT()


@dataclass(frozen=True)
class Flaky:
    """A picklable labeller factory (module level, so spawned and Dask workers import it)."""

    fail: str = "always"
    sleep: float = 0.0

    def __call__(self, directory: str):
        return functools.partial(_label, directory=directory, fail=self.fail, sleep=self.sleep)


@dataclass(frozen=True)
class Unbuildable:
    """A labeller factory that fails before any labeller runs (a bad specification)."""

    def __call__(self, directory: str):
        raise FileNotFoundError("no pseudopotential Cu.pbe.UPF (injected)")


def calls(directory: Path, i: int) -> int:
    path = job_directory(directory, i) / "calls"
    return len(path.read_text().split()) if path.exists() else 0


def assert_emt_labels(result_frames, inputs) -> None:
    for got, frame in zip(result_frames, inputs):
        ref = frame.copy()
        ref.calc = EMT()
        np.testing.assert_allclose(got.positions, frame.positions)
        np.testing.assert_allclose(got.get_forces(), ref.get_forces(), atol=1e-10)
        assert got.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)


def test_process_pool_in_order_and_stored(tmp_path):
    batch = frames(4)
    result = label_batch(batch, "emt", tmp_path, max_workers=2)
    assert result.ok and result.indices == [0, 1, 2, 3] and result.reused == []
    assert_emt_labels(result.frames, batch)
    for i, frame in enumerate(batch):
        stored = read(job_directory(tmp_path, i) / LABELLED_FILE)  # lossless copy in the job's directory
        np.testing.assert_array_equal(stored.get_forces(), result.frames[i].get_forces())


def test_one_failure_skipped_rest_kept_and_rerun_reuses(tmp_path):
    batch = frames(4)
    batch[2].info["poison"] = True
    result = label_batch(batch, Flaky("always"), tmp_path, retries=1, max_workers=2)
    assert not result.ok and result.indices == [0, 1, 3] and result.frames[2] is None
    (failure,) = result.failures
    assert failure.index == 2 and failure.attempts == 2 and "injected failure" in failure.error
    assert failure.directory == job_directory(tmp_path, 2)
    assert_emt_labels(result.labelled, [batch[i] for i in (0, 1, 3)])
    assert [calls(tmp_path, i) for i in range(4)] == [1, 1, 2, 1]

    # Rerun with the frame fixed: the three stored labels are reused, only frame 2 is labelled.
    del batch[2].info["poison"]
    again = label_batch(batch, Flaky("always"), tmp_path, max_workers=2)
    assert again.ok and again.reused == [0, 1, 3]
    assert [calls(tmp_path, i) for i in range(4)] == [1, 1, 3, 1]
    assert_emt_labels(again.frames, batch)


def test_failure_retried(tmp_path):
    batch = frames(3)
    batch[1].info["poison"] = True
    result = label_batch(batch, Flaky("once"), tmp_path, retries=1, max_workers=2)
    assert result.ok and calls(tmp_path, 1) == 2
    assert_emt_labels(result.frames, batch)
    # without retries the same failure is reported
    fresh = tmp_path / "no_retry"
    result = label_batch(batch, Flaky("once"), fresh, retries=0, max_workers=2)
    assert [f.index for f in result.failures] == [1] and result.indices == [0, 2]


def test_a_labeller_that_cannot_be_built_made_no_oracle_call(tmp_path):
    batch = frames(3)
    batch[1].info["poison"] = True
    ran = label_batch(batch, Flaky("always"), tmp_path / "ran", retries=1, max_workers=2)
    assert ran.attempts == {0: 1, 1: 2, 2: 1} and ran.calls == ran.attempts  # failed runs are calls
    result = label_batch(batch, Unbuildable(), tmp_path / "unbuilt", retries=1, max_workers=2)
    assert [f.index for f in result.failures] == [0, 1, 2]
    assert all(f.attempts == 2 and "cannot build the labeller" in f.error and "pseudopotential" in f.error
               for f in result.failures)
    assert result.attempts == {0: 2, 1: 2, 2: 2} and result.calls == {0: 0, 1: 0, 2: 0}


def test_failure_raised_after_the_rest_is_stored(tmp_path):
    batch = frames(3)
    batch[0].info["poison"] = True
    with pytest.raises(BatchLabelError, match=r"frame 0 .*injected failure") as info:
        label_batch(batch, Flaky("always"), tmp_path, retries=0, on_failure="raise", max_workers=2)
    assert info.value.result.indices == [1, 2]
    assert all((job_directory(tmp_path, i) / LABELLED_FILE).exists() for i in (1, 2))


def test_stored_labels_of_another_structure_are_an_error(tmp_path):
    batch = frames(2)
    label_batch(batch, "emt", tmp_path, max_workers=1)
    other = frames(2, seed=5)
    with pytest.raises(ValueError, match="different structure than frame 0"):
        label_batch(other, "emt", tmp_path, max_workers=1)


def test_sanity_check_rejection_is_reported_not_retried(tmp_path):
    batch = frames(2)
    checks = LabelChecks(LearningOptions(label_max_force=1e-6), "emt", tmp_path)
    result = label_batch(batch, Flaky("always"), tmp_path / "b", retries=2, checks=checks, max_workers=1)
    assert [f.index for f in result.failures] == [0, 1]
    assert all(f.rejected and f.attempts == 1 for f in result.failures)
    assert (tmp_path / "b" / "quarantine" / "frame_0001.traj").exists()


def test_rejected_labels_are_kept_per_batch_and_checked_again_on_a_rerun(tmp_path):
    """Each batch quarantines in its own directory (frame 0 of a second batch used to
    overwrite the first batch's rejected frame 0). A rerun with the same labeller checks the
    quarantined labels again instead of paying for them: rejected again without a call,
    accepted with the checks loosened."""
    checks = LabelChecks(LearningOptions(label_max_force=1e-6), "flaky", tmp_path)
    first, second = frames(1), frames(1, seed=3)
    for name, batch in (("b1", first), ("b2", second)):
        result = label_batch(batch, Flaky(), tmp_path / name, checks=checks, max_workers=1, labeller_id="flaky-1")
        assert result.failures[0].rejected
    q1, q2 = (read(tmp_path / name / "quarantine" / "frame_0000.traj") for name in ("b1", "b2"))
    assert np.array_equal(q1.positions, first[0].positions) and np.array_equal(q2.positions, second[0].positions)
    again = label_batch(first, Flaky(), tmp_path / "b1", checks=checks, max_workers=1, labeller_id="flaky-1")
    assert again.failures[0].rejected and again.failures[0].attempts == 0 and again.attempts == {}
    assert calls(tmp_path / "b1", 0) == 1
    label_batch(second, Flaky(), tmp_path / "b2", checks=checks, max_workers=1, labeller_id="flaky-2")
    assert calls(tmp_path / "b2", 0) == 2  # another labeller: a call
    assert (tmp_path / "b2" / "quarantine" / "superseded" / "frame_0000.json").exists()  # kept
    loose = LabelChecks(LearningOptions(), "flaky", tmp_path)
    accepted = label_batch(first, Flaky(), tmp_path / "b1", checks=loose, max_workers=1, labeller_id="flaky-1")
    assert accepted.ok and accepted.reused == [0] and calls(tmp_path / "b1", 0) == 1
    assert np.array_equal(accepted.frames[0].get_forces(), q1.get_forces())
    assert (job_directory(tmp_path / "b1", 0) / LABELLED_FILE).exists()
    assert (tmp_path / "b1" / "quarantine" / "released" / "frame_0000.traj").exists()
    assert loose.energy_ranges["Cu"].count == 1  # the accepted label joined the history once


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        label_batch(frames(1), "no-such-labeller", tmp_path)
    with pytest.raises(ValueError, match="on_failure"):
        label_batch(frames(1), "emt", tmp_path, on_failure="ignore")
    with pytest.raises(ValueError, match="frame 0 is a str"):
        label_batch(["Cu"], "emt", tmp_path)


def test_dask_local_cluster_with_injected_failure(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        batch = frames(6)
        batch[4].info["poison"] = True
        result = label_batch(batch, Flaky("always", sleep=0.3), tmp_path, executor=client.get_executor(), retries=1)
        # both workers labelled frames: the batch ran concurrently on the cluster
        hosts = {Path(p).read_text() for p in tmp_path.glob("frame_*/worker")}
    assert result.indices == [0, 1, 2, 3, 5]
    (failure,) = result.failures
    assert failure.index == 4 and failure.attempts == 2 and "injected failure" in failure.error
    assert [calls(tmp_path, i) for i in range(6)] == [1, 1, 1, 1, 2, 1]  # the retry really ran
    assert_emt_labels(result.labelled, [batch[i] for i in result.indices])
    assert len(hosts) == 2


def test_stored_labels_of_another_labeller_are_not_reused(tmp_path):
    """A rerun with another labeller (other DFT settings) labels the frames again; the old
    labels are kept beside the new."""
    batch = frames(1)
    label_batch(batch, Flaky(), tmp_path, max_workers=1, labeller_id="a")
    assert label_batch(batch, Flaky(), tmp_path, max_workers=1, labeller_id="a").reused == [0]
    assert calls(tmp_path, 0) == 1
    again = label_batch(batch, Flaky(), tmp_path, max_workers=1, labeller_id="b")
    assert again.reused == [] and calls(tmp_path, 0) == 2
    job = job_directory(tmp_path, 0)
    assert read(job / LABELLED_FILE).info["labeller_id"] == "b"
    assert read(job / f"{LABELLED_FILE}.labeller_a", format="traj").info["labeller_id"] == "a"
