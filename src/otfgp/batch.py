"""Label a batch of frames concurrently, one job per frame, through any executor.

:func:`label_batch` runs the reference calculations (DFT) of a batch of frames through a
:class:`concurrent.futures.Executor`: a local process pool by default, or Dask distributed
on a cluster (``dask.distributed.Client(...).get_executor()`` is such an executor; see
``docs/batch.md``). The rules:

- **One job, one directory.** Frame ``i`` runs in ``directory/frame_<iiii>/`` (four digits,
  zero-padded), where a file-based labeller (pw.x) writes its input and output.
- **Labels are validated once, in one place.** Each job calls :func:`otfgp.learning.label`
  (shapes, NaN/inf and, with ``checks``, the label sanity checks of
  :mod:`otfgp.label_checks`), exactly as the on-the-fly learner does.
- **A failed frame never loses the batch.** A frame whose labeller raises is retried up to
  ``retries`` times (resubmitted, so a lost worker is retried too); then it is reported in
  :attr:`BatchResult.failures` (which frame, the error) and skipped, or, with
  ``on_failure="raise"``, a :class:`BatchLabelError` is raised *after* every other frame
  has finished and been stored. Labels rejected by a sanity check are not retried (a rerun
  gives the same labels).
- **No DFT twice.** A labelled frame is written losslessly to ``frame_<iiii>/labelled.traj``
  by the worker as soon as it is done; a rerun over the same directory reuses every stored
  label whose frame matches (species, positions, cell) and whose labeller is the same
  (``labeller_id``), and labels only the rest. Labels a
  sanity check rejected (``directory/quarantine/``) are checked again by a rerun with the
  same labeller instead of being paid for twice.
- Results come back in input order.

Labellers cross a process boundary, and ASE calculators are often not picklable, so the
labeller is given as a *specification* that each worker builds itself:

- a labeller spec as :func:`otfgp.labellers.make_labeller` takes it (``"emt"``,
  ``{"type": "espresso", ...}``, ``"ase:vasp"``, ``"module:function"``), built with the
  job's directory as its working directory; or
- a picklable *factory*, called in the worker as ``factory(directory=job_dir)`` and
  returning a labeller (an ASE calculator or a callable ``f(atoms)``): an ASE calculator
  class (``EMT``), a ``functools.partial`` of one (``partial(Espresso, profile=...,
  input_data=...)``), or a module-level function.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from . import atomic_io
from .arguments import count
from .label_checks import LabelChecks, LabelRejected
from .label_checks import labeller_id as make_labeller_id
from .learning import Labeller, LabellerError, describe, label

log = logging.getLogger(__name__)

LabellerSpec = Union[str, Mapping[str, Any], Callable[..., Labeller]]
"""A labeller specification (:func:`otfgp.labellers.make_labeller`) or a picklable factory
``factory(directory=...) -> Labeller``; see the module docstring."""

LABELLED_FILE = "labelled.traj"
"""The lossless copy of a job's labelled frame inside its directory."""

QUARANTINE_DIR = "quarantine"
"""Where in the batch directory the frames that a sanity check rejected go."""


def job_directory(directory: str | os.PathLike, index: int) -> Path:
    """The job directory of frame ``index`` of a batch stored in ``directory``."""
    return Path(directory) / f"frame_{index:04d}"


@dataclass(frozen=True)
class FrameFailure:
    """A frame of the batch that could not be labelled.

    Attributes:
        index: the frame's position in the input.
        error: the last error (exception type and message).
        attempts: how many times it was tried.
        directory: the job directory (the labeller's files are there).
        rejected: the labels were rejected by a sanity check (quarantined, not retried).
        program_output: the telling lines a file-based labeller left behind, if any.
    """

    index: int
    error: str
    attempts: int
    directory: Path
    rejected: bool = False
    program_output: str = ""

    def __str__(self) -> str:
        tail = f"; program output ends: {self.program_output}" if self.program_output else ""
        return (f"frame {self.index} ({self.directory}) failed after {self.attempts} attempt(s): "
                f"{self.error}{tail}")


@dataclass
class BatchResult:
    """What :func:`label_batch` gives back, in input order.

    Attributes:
        frames: the labelled frame per input frame (an ``Atoms`` with a single-point
            calculator holding energy, forces and, if asked for, stress), ``None`` where
            the frame failed.
        failures: the failed frames, by input index.
        reused: indices whose labels came from a previous run's stored files.
        released: those of ``reused`` whose labels a sanity check had rejected in a
            previous run and which pass the checks now (their call is that run's failed one).
        directory: the batch directory.
        attempts: how many times the labeller ran on each frame labelled in this call (by
            input index; reused frames are not in it), failed attempts included: the
            tries of the batch.
        calls: how many of those attempts ran the labeller (by input index): the oracle
            calls the batch cost. An attempt whose labeller could not be built (a bad
            specification, a missing pseudopotential) made no call.
    """

    frames: list[Atoms | None]
    failures: list[FrameFailure] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    directory: Path = Path(".")
    attempts: dict[int, int] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every frame is labelled."""
        return not self.failures

    @property
    def indices(self) -> list[int]:
        """Input indices of the labelled frames."""
        return [i for i, f in enumerate(self.frames) if f is not None]

    @property
    def labelled(self) -> list[Atoms]:
        """The labelled frames only, in input order."""
        return [f for f in self.frames if f is not None]


class BatchLabelError(LabellerError):
    """Frames of a batch failed with ``on_failure="raise"``; ``result`` holds the rest of
    the batch (already stored, so a rerun does not label them again)."""

    def __init__(self, result: BatchResult) -> None:
        lines = "; ".join(str(f) for f in result.failures)
        super().__init__(f"{len(result.failures)} of {len(result.frames)} frame(s) of the batch in "
                         f"{result.directory} failed: {lines}",
                         result.failures[0].program_output if result.failures else "")
        self.result = result


class JobFailed(Exception):
    """A job's failure as it crosses back from the worker: the error text, whether a sanity
    check rejected the labels, the labeller's program output and whether the labeller ran
    (``ran=False``: it could not be built, no oracle call was made). (otfgp's own exceptions
    take extra constructor arguments and so do not survive pickling intact.)"""

    def __init__(self, message: str, rejected: bool = False, program_output: str = "", ran: bool = True) -> None:
        super().__init__(message)
        self.rejected = rejected
        self.program_output = program_output
        self.ran = ran

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.rejected, self.program_output, self.ran))


# ---------------------------------------------------------------------- the job (runs in a worker)
def _build_labeller(spec: LabellerSpec, job_dir: Path) -> Labeller:
    if isinstance(spec, (str, Mapping)):
        from .labellers import make_labeller

        return make_labeller(spec, directory=job_dir)
    return spec(directory=str(job_dir))


def label_job(frame: Atoms, labeller: LabellerSpec, job_dir: str | os.PathLike,
              stress: bool | None = False, checks: LabelChecks | None = None,
              index: int | None = None, attempt: int = 1, labeller_id: str | None = None) -> Atoms:
    """Label one frame in ``job_dir`` (the function each worker runs): build the labeller
    from its specification, label through :func:`otfgp.learning.label` and store the
    result losslessly in ``job_dir/labelled.traj`` before returning it, with
    ``labeller_id`` (the labeller's fingerprint) in its info.

    ``attempt`` (1, 2, ...) only makes each retry a distinct call: Dask's executor
    identifies a task by a hash of its function and arguments, and would answer a retry
    with the same arguments by the stored failure instead of running it again.

    Raises:
        JobFailed: building the labeller or labelling failed, the labels are unusable, or
            (``rejected``) they fail a sanity check.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        built = _build_labeller(labeller, job_dir)
    except Exception as exc:
        raise JobFailed(f"cannot build the labeller: {type(exc).__name__}: {describe(exc)}", ran=False) from None
    # No chdir into job_dir: jobs may share a process (threaded Dask workers), and the
    # working directory is per process; the labeller is given its directory instead.
    try:
        out = label(frame, built, stress=stress, checks=checks, step=index)
    except LabellerError as exc:
        raise JobFailed(f"{type(exc).__name__}: {exc}", isinstance(exc, LabelRejected),
                        exc.program_output) from None
    if labeller_id is not None:
        out.info["labeller_id"] = labeller_id
    atomic_io.write_atoms(job_dir / LABELLED_FILE, out, format="traj")
    return out


# ---------------------------------------------------------------------- reuse of stored labels
def _same_frame(a: Atoms, b: Atoms) -> bool:
    return (len(a) == len(b) and np.array_equal(a.numbers, b.numbers)
            and np.allclose(a.positions, b.positions, atol=1e-8)
            and np.allclose(a.cell.array, b.cell.array, atol=1e-8) and np.array_equal(a.pbc, b.pbc))


def _stored(frame: Atoms, job_dir: Path, index: int, labeller_id: str) -> Atoms | None:
    """The stored labels of ``frame`` from a previous run, or None if there are none or
    another labeller made them (its file is then kept as ``labelled.traj.labeller_<id>``)."""
    from ase.io import read

    path = job_dir / LABELLED_FILE
    if not path.exists():
        return None
    old = read(path)
    if not _same_frame(old, frame):
        raise ValueError(f"{path} holds the labels of a different structure than frame {index} of this "
                         "batch; label a different batch in a fresh directory (the stored DFT labels "
                         "are not overwritten)")
    made_by = old.info.get("labeller_id")
    if made_by is not None and made_by != labeller_id:  # files from before the ids: reused
        log.info("%s: labelled by another labeller; labelling frame %d again", path, index)
        path.replace(path.with_name(f"{path.name}.labeller_{made_by}"))
        return None
    reused = frame.copy()
    reused.calc = SinglePointCalculator(reused, **old.calc.results)
    return reused


def _recheck_quarantined(frame: Atoms, index: int, checks: LabelChecks, directory: Path,
                         result: BatchResult) -> bool:
    """Check again the labels the same labeller returned for ``frame`` in an earlier run of
    this batch, which a sanity check rejected (:meth:`LabelChecks.quarantined`): the labeller
    would return the same, and the checks may have been loosened since. Accepted, they are
    stored like a fresh label and count as reused; rejected again, the frame fails without
    a call. False: there are no such labels."""
    candidate = checks.quarantined(frame, index)
    if candidate is None:
        return False
    log.info("batch %s: checking the quarantined labels of frame %d again instead of labelling it",
             directory, index)
    try:
        checks.check(candidate, index, frame.arrays.get("gp_forces"), frame.arrays.get("gp_force_stds"))
    except LabelRejected as exc:
        result.failures.append(FrameFailure(index=index, error=f"LabelRejected: {exc}", attempts=0,
                                            directory=job_directory(directory, index), rejected=True))
        return True
    job_dir = job_directory(directory, index)
    job_dir.mkdir(parents=True, exist_ok=True)
    candidate.info["labeller_id"] = checks.labeller_id
    atomic_io.write_atoms(job_dir / LABELLED_FILE, candidate, format="traj")
    checks.release(index)
    result.frames[index] = candidate
    result.reused.append(index)
    result.released.append(index)
    return True


# ---------------------------------------------------------------------- the batch
def _default_executor(n_jobs: int, max_workers: int | None) -> ProcessPoolExecutor:
    # spawn, not fork: the parent may have started OpenMP threads (the GP core), which a
    # forked child can deadlock on; spawned workers also need exactly what Dask's do
    # (picklable arguments), so a batch that runs here runs on a cluster.
    workers = max_workers or min(n_jobs, os.cpu_count() or 1)
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"))


def label_batch(
    frames: Sequence[Atoms],
    labeller: LabellerSpec,
    directory: str | os.PathLike,
    executor: Executor | None = None,
    retries: int = 1,
    on_failure: Literal["skip", "raise"] = "skip",
    stress: bool | None = False,
    checks: LabelChecks | None = None,
    max_workers: int | None = None,
    labeller_id: str | None = None,
) -> BatchResult:
    """Label ``frames`` concurrently, each in its own job directory (see the module docstring).

    Args:
        frames: the structures to label.
        labeller: a labeller specification or a picklable factory (module docstring).
        directory: the batch directory; frame ``i`` runs in ``directory/frame_<iiii>/``
            and its labels are stored there, so a rerun reuses them.
        executor: where the jobs run: any :class:`concurrent.futures.Executor`
            (``dask.distributed.Client.get_executor()`` for a cluster). ``None``: a local
            process pool of ``max_workers`` (default: one per frame up to the CPU count),
            shut down afterwards; a given executor is left open.
        retries: extra attempts for a frame whose labeller fails (0: none).
        on_failure: ``"skip"``: report failed frames in the result; ``"raise"``: raise a
            :class:`BatchLabelError` once every other frame is done and stored.
        stress: as in :func:`otfgp.learning.label` (``True`` required, ``None`` if the
            labeller gives it for a periodic cell, ``False`` not asked for).
        checks: label sanity checks (:class:`otfgp.label_checks.LabelChecks`). Each job
            checks against the energy history as it was before the batch (frames of one
            batch are not compared with each other); the accepted frames, and those
            reused from an interrupted run, then join the history here. Rejected frames
            are quarantined in ``directory/quarantine/frame_<iiii>.traj``; a rerun with
            the same labeller (the checks' ``labeller_id``) checks their labels again
            instead of labelling them (accepted: reused; rejected: failed, no call).
        max_workers: size of the default process pool.
        labeller_id: the labeller's fingerprint, stored with each label
            (default :func:`otfgp.label_checks.labeller_id` of ``labeller``): a stored
            label or a quarantined one of another labeller is not reused, and the frame
            is labelled again.

    Returns:
        A :class:`BatchResult` in input order.

    Raises:
        ValueError: bad arguments, or a stored ``labelled.traj`` belongs to another structure.
        BatchLabelError: a frame failed and ``on_failure="raise"``.
    """
    if on_failure not in ("skip", "raise"):
        raise ValueError(f"on_failure must be 'skip' or 'raise', got {on_failure!r}")
    count("retries", retries, 0)
    if isinstance(labeller, (str, Mapping)):
        from .labellers import check_labeller_spec

        check_labeller_spec(labeller)  # a typo fails here, not once per frame in the workers
    elif not callable(labeller):
        raise ValueError(f"labeller must be a labeller specification or a factory, got {type(labeller).__name__}")
    frames = list(frames)
    for i, frame in enumerate(frames):
        if not isinstance(frame, Atoms):
            raise ValueError(f"frame {i} is a {type(frame).__name__}, not an ase.Atoms")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    made_by = make_labeller_id(labeller) if labeller_id is None else labeller_id

    result = BatchResult(frames=[None] * len(frames), directory=directory)
    # this batch's rejected frames go to its own quarantine/ (another batch's indices repeat)
    job_checks = None if checks is None else checks.quarantining_in(directory / QUARANTINE_DIR, 4, made_by)
    todo: list[int] = []
    for i, frame in enumerate(frames):
        stored = _stored(frame, job_directory(directory, i), i, made_by)
        if stored is not None:
            result.frames[i] = stored
            result.reused.append(i)
        elif job_checks is None or not _recheck_quarantined(frame, i, job_checks, directory, result):
            todo.append(i)
    if result.reused:
        log.info("batch %s: reusing the stored labels of %d frame(s)", directory, len(result.reused))

    if todo:
        own = executor is None
        pool = _default_executor(len(todo), max_workers) if own else executor
        try:
            _run(pool, frames, todo, labeller, directory, int(retries), stress, job_checks, result, made_by)
        finally:
            if own:
                pool.shutdown(wait=True)
    if checks is not None:  # reused ones too: the run that stored them kept its history in memory
        for i in result.indices:
            checks.accept(result.frames[i])
    result.failures.sort(key=lambda f: f.index)
    for failure in result.failures:
        log.warning("batch %s: %s", directory, failure)
    if result.failures and on_failure == "raise":
        raise BatchLabelError(result)
    return result


def _run(pool: Executor, frames: list[Atoms], todo: list[int], labeller: LabellerSpec, directory: Path,
         retries: int, stress: bool | None, checks: LabelChecks | None, result: BatchResult,
         labeller_id: str) -> None:
    """Submit the jobs, resubmit failures while attempts remain, collect into ``result``."""
    attempts, calls = result.attempts, result.calls
    attempts.update({i: 0 for i in todo})
    calls.update({i: 0 for i in todo})

    def submit(i: int) -> Future:
        attempts[i] += 1
        return pool.submit(label_job, frames[i], labeller, str(job_directory(directory, i)), stress, checks, i,
                           attempts[i], labeller_id)

    pending: dict[Future, int] = {submit(i): i for i in todo}
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            i = pending.pop(future)
            exc = future.exception()
            # an exception that is not the job's own (a worker lost mid-run) may have made the call
            calls[i] += int(exc is None or getattr(exc, "ran", True))
            if exc is None:
                result.frames[i] = future.result()
                continue
            rejected = bool(getattr(exc, "rejected", False))
            if not rejected and attempts[i] <= retries:
                log.warning("batch %s: frame %d failed (attempt %d/%d), retrying: %s",
                            directory, i, attempts[i], retries + 1, exc)
                try:
                    pending[submit(i)] = i
                    continue
                except Exception as resubmit:  # e.g. a broken process pool: report, keep the rest
                    exc = resubmit
            result.failures.append(FrameFailure(
                index=i, error=str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}",
                attempts=attempts[i],
                directory=job_directory(directory, i), rejected=rejected,
                program_output=getattr(exc, "program_output", "") or ""))
