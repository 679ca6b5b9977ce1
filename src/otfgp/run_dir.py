"""The run directory of an on-the-fly run: its lock, its checkpoints and their repair.

- :class:`RunLock`: an exclusive ``fcntl.flock`` on ``otfgp.lock`` in the run directory,
  held by :class:`otfgp.OTF` (and ``otfgp otf``) for as long as it may write there, so a
  second process on the same directory stops with a clear error instead of logging every
  step twice.
- Checkpoints: ``checkpoint/state.json`` (the newest) and, for the last
  ``keep_checkpoints`` of them, ``checkpoint/state_<n>.json`` + ``checkpoint/model_<n>.otfgp``;
  every file is written atomically (:mod:`otfgp.atomic_io`) under a new name, so no model
  or state file is ever overwritten in place and an older checkpoint can be resumed from.
- Append-only files (``log.jsonl``, ``trajectory.extxyz``): :func:`cut_records` cuts a
  torn last record (a crash in the middle of a write) and the records a resumed run
  redoes.

Every problem found here is a :class:`RunDirError` naming the file and how to recover.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from . import atomic_io

if TYPE_CHECKING:
    from .gp import GaussianProcess

log = logging.getLogger(__name__)

LOCK_FILE = "otfgp.lock"
LOG_FILE = "log.jsonl"
TRAJECTORY_FILE = "trajectory.extxyz"
APPEND_ONLY_FILES = (LOG_FILE, TRAJECTORY_FILE)
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
_STATE_N = re.compile(r"^state_(\d+)\.json$")


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked: another process holds it, it already holds
    a run, or one of its state files is missing or damaged. The message says which file
    and how to recover."""


# --------------------------------------------------------------------------- lock
class RunLock:
    """Exclusive lock of a run directory (``fcntl.flock`` on ``run_dir/otfgp.lock``).

    The lock is re-entrant within a process: flock locks belong to an open file, so two
    opens in one process would exclude each other; the process therefore keeps one open
    lock file per directory and counts its holders (``otfgp otf`` holds it around the
    whole command, the :class:`otfgp.OTF` it builds holds it too). The kernel releases it
    when the process ends, however it ends; the lock file itself is never removed.

    Raises:
        RunDirError: (on :meth:`acquire`) another process holds the directory.
    """

    _held: ClassVar[dict[tuple[int, int], list[int]]] = {}  # lock file (dev, inode) -> [fd, holders]
    # The guard is re-entrant and a release that re-enters it waits in _pending: a lock is
    # also released by OTF.__del__, and the garbage collector may run that finaliser at any
    # allocation, also inside acquire() or release() on the same thread. With a plain Lock
    # that deadlocked (seen in CI); done at once, it could drop the entry acquire() is
    # counting on. _busy is only set and read by the thread that holds the guard.
    _guard: ClassVar[threading.RLock] = threading.RLock()
    _busy: ClassVar[bool] = False
    _pending: ClassVar[list["RunLock"]] = []

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._key: tuple[int, int] | None = None

    def acquire(self) -> "RunLock":
        """Take the lock (creating the directory); a no-op when this object holds it."""
        if self._key is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK_FILE
        with self._guarded():
            self._take(path)
        return self

    def _take(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self._held:
            os.close(fd)
            self._held[key][1] += 1
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = path.read_text(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirError(
                    f"{self.run_dir} is in use by another otfgp run (process {owner}): two runs in "
                    f"one directory would log every step twice. Wait for it to finish (or stop "
                    f"it), then continue with 'otfgp otf --resume {self.run_dir}', or use another "
                    f"output directory") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
            self._held[key] = [fd, 1]
        self._key = key

    def release(self) -> None:
        """Give the lock back (the file is unlocked when its last holder in the process
        releases it)."""
        if self._key is None:
            return
        with self._guard:
            if RunLock._busy:  # re-entered on this thread by a finaliser: done on the way out
                RunLock._pending.append(self)
                return
            with self._guarded():
                self._give_back()

    def _give_back(self) -> None:
        if self._key is None:
            return
        entry = self._held[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self._key]
            os.close(entry[0])  # closing the last descriptor drops the flock
        self._key = None

    @classmethod
    @contextlib.contextmanager
    def _guarded(cls) -> Iterator[None]:
        """The guard, busy while held; on the way out the releases that re-entered it are
        done (a release queued while these run is done here too)."""
        with cls._guard:
            cls._busy = True
            try:
                yield
            finally:
                try:
                    while cls._pending:
                        cls._pending.pop()._give_back()
                finally:
                    cls._busy = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._key is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------- state files
def read_json_file(path: str | os.PathLike, recover: str) -> Any:
    """The JSON content of a state file; a missing or damaged file is a :class:`RunDirError`
    that names it and says ``recover`` (how to recover)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: {recover}") from None
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path} is damaged (not text: {exc}): {recover}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is damaged ({'empty' if not text else exc}): {recover}") from None


def checkpoint_states(run_dir: str | os.PathLike) -> dict[int, Path]:
    """The kept checkpoints' state files ``checkpoint/state_<n>.json`` by index ``n``."""
    ck = Path(run_dir) / CHECKPOINT_DIR
    found = {}
    for p in ck.glob("state_*.json"):
        m = _STATE_N.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _recovery(run_dir: Path, exclude: int | None = None) -> str:
    """How to go on when the newest checkpoint cannot be used."""
    older = [n for n in checkpoint_states(run_dir) if n != exclude]
    if older:
        return (f"resume from an older checkpoint with 'otfgp otf --resume {run_dir} --checkpoint "
                f"{older[-1]}' (kept: {', '.join(map(str, older))}; Python: OTF.resume(..., "
                f"checkpoint={older[-1]}))")
    return (f"no older checkpoint is kept; start the run afresh in a new output directory (the run's "
            f"config is in {run_dir})")


def read_checkpoint(run_dir: str | os.PathLike, index: int | None = None) -> dict[str, Any]:
    """The state of the newest checkpoint (``index`` None: ``checkpoint/state.json``) or of
    the kept checkpoint ``index``.

    Raises:
        RunDirError: the state file is missing or damaged, or the run directory has
            outputs but no checkpoint (resuming from step 0 would double them).
    """
    run_dir = Path(run_dir)
    if index is None:
        path = run_dir / CHECKPOINT_DIR / STATE_FILE
        if not path.exists():
            outputs = [n for n in APPEND_ONLY_FILES if (run_dir / n).exists()]
            raise RunDirError(
                f"{path} is missing" + (f" although the run wrote {' and '.join(outputs)}" if outputs else "")
                + f" (deleted or lost): a resume cannot know where the run stopped; {_recovery(run_dir)}")
    else:
        states = checkpoint_states(run_dir)
        if index not in states:
            raise RunDirError(f"checkpoint {index} of {run_dir} is not kept (kept: "
                              f"{', '.join(map(str, states)) or 'none'})")
        path = states[index]
    state = read_json_file(path, _recovery(run_dir, exclude=index))
    if not isinstance(state, dict) or not {"step", "model", "checkpoint_index"} <= set(state):
        raise RunDirError(f"{path} is damaged (not a checkpoint state): {_recovery(run_dir, exclude=index)}")
    return state


def load_checkpoint_model(run_dir: str | os.PathLike, state: dict[str, Any]) -> "GaussianProcess":
    """The model a checkpoint state refers to (an exact or a scalable GP, :func:`otfgp.models.load_model`);
    a missing or unloadable one is a RunDirError."""
    from .models import load_model

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_DIR / str(state["model"])
    try:
        return load_model(path)
    except (ValueError, RuntimeError, OSError) as exc:  # ModelFileError is a ValueError
        raise RunDirError(f"{path} cannot be loaded ({exc}): "
                          f"{_recovery(run_dir, exclude=state.get('checkpoint_index'))}") from None


def write_checkpoint(run_dir: str | os.PathLike, model: "GaussianProcess", state: dict[str, Any],
                     keep: int) -> None:
    """Write checkpoint ``state["checkpoint_index"]``: its model under a new name, then
    ``state.json`` (from here on the checkpoint counts), then its ``state_<n>.json`` copy;
    the files of checkpoints older than the last ``keep`` are removed afterwards."""
    ck = Path(run_dir) / CHECKPOINT_DIR
    ck.mkdir(parents=True, exist_ok=True)
    index = int(state["checkpoint_index"])
    for name in APPEND_ONLY_FILES:  # the records this checkpoint refers to survive a power cut
        atomic_io.fsync_file(Path(run_dir) / name)
    atomic_io.write_model(ck / state["model"], model)
    atomic_io.write_json(ck / STATE_FILE, state)
    atomic_io.write_json(ck / f"state_{index:05d}.json", state)
    for n, path in checkpoint_states(run_dir).items():
        if n <= index - keep:
            (ck / f"model_{n:05d}.otfgp").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
    for path in ck.glob("model_*.otfgp"):  # models of no kept state (e.g. pre-1.0 layout)
        m = re.match(r"^model_(\d+)\.otfgp$", path.name)
        if m and int(m.group(1)) <= index - keep:
            path.unlink(missing_ok=True)


def drop_newer_checkpoints(run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Make ``state`` (an older kept checkpoint the user resumes from) the newest: it
    becomes ``state.json`` and the checkpoints after it are removed, so a later resume
    cannot mix the two histories."""
    ck = Path(run_dir) / CHECKPOINT_DIR
    index = int(state["checkpoint_index"])
    atomic_io.write_json(ck / STATE_FILE, state)
    for n, path in checkpoint_states(run_dir).items():
        if n > index:
            (ck / f"model_{n:05d}.otfgp").unlink(missing_ok=True)
            path.unlink(missing_ok=True)


OVERRIDES_FILE = "overrides.json"


def record_overrides(run_dir: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Add ``entry`` (the settings changed on a resume, with its step) to ``overrides.json``,
    a JSON list rewritten atomically, with the time of the change."""
    import datetime

    path = Path(run_dir) / OVERRIDES_FILE
    history = read_json_file(path, "fix or delete it (it only records changed settings)") if path.exists() else []
    history.append({"time": datetime.datetime.now().isoformat(timespec="seconds"), **entry})
    atomic_io.write_json(path, history, indent=2)


def holds_run(run_dir: str | os.PathLike) -> list[str]:
    """The files that show ``run_dir`` already holds an on-the-fly run (empty: it does not)."""
    run_dir = Path(run_dir)
    return [n for n in (f"{CHECKPOINT_DIR}/{STATE_FILE}", *APPEND_ONLY_FILES) if (run_dir / n).exists()]


# --------------------------------------------------------------------------- append-only files
def _jsonl_records(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(offset, end offset, step or None if damaged) of each line of a JSON-lines file."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            end = offset + len(line)
            step = None
            if line.endswith(b"\n"):
                try:
                    step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    step = None
            if line.strip() or step is not None:
                yield offset, end, step
            offset = end


_OTF_STEP = re.compile(rb"\botf_step=(-?\d+)")


def _extxyz_records(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(offset, end offset, step or None if incomplete) of each frame of an extended-XYZ
    file (the step from the ``otf_step`` key of its comment line; -1 without one)."""
    offset = 0
    with open(path, "rb") as f:
        while True:
            start = offset
            head = f.readline()
            if not head:
                return
            offset += len(head)
            try:
                n = int(head)
            except ValueError:
                n = -1
            if n < 0 or not head.endswith(b"\n"):
                yield start, offset + len(f.read()), None  # unreadable from here on
                return
            comment = f.readline()
            offset += len(comment)
            complete = comment.endswith(b"\n")
            for _ in range(n):
                if not complete:
                    break
                line = f.readline()
                offset += len(line)
                complete = line.endswith(b"\n")
            if not complete:
                yield start, offset, None
                return
            m = _OTF_STEP.search(comment)
            yield start, offset, int(m.group(1)) if m else -1


def cut_records(path: str | os.PathLike, before_step: int) -> None:
    """Cut an append-only run file (``log.jsonl`` or ``trajectory.extxyz``) back to its
    records of steps before ``before_step``, dropping a torn last record (a crash in the
    middle of a write) with a warning.

    Raises:
        RunDirError: a damaged record that is not the last one before records to keep
            (damage a crash cannot cause: cutting there would lose them).
    """
    path = Path(path)
    if not path.exists():
        return
    records = list((_jsonl_records if path.suffix == ".jsonl" else _extxyz_records)(path))
    cut = next((i for i, (_, _, step) in enumerate(records) if step is None or step >= before_step),
               len(records))
    later = [i for i in range(cut + 1, len(records))
             if records[i][2] is not None and records[i][2] < before_step]
    if later and records[cut][2] is None:
        raise RunDirError(
            f"{path} is damaged at byte {records[cut][0]} (record {cut + 1}), with intact records of "
            f"steps before the checkpoint (step {before_step}) after it: remove the damaged record by "
            f"hand, then resume")
    torn = [r for r in records[cut:] if r[2] is None]
    if torn:
        log.warning("%s: cutting off a torn last record (%d bytes at byte %d): the run stopped in the "
                    "middle of writing it", path, torn[0][1] - torn[0][0], torn[0][0])
    size = records[cut][0] if cut < len(records) else (records[-1][1] if records else 0)
    if size < path.stat().st_size:
        os.truncate(path, size)
        atomic_io.fsync_file(path)

