"""The Quantum ESPRESSO (pw.x) labeller through ASE.

``espresso_calculator`` builds an ASE ``Espresso`` calculator with settings known to work
on these machines (forces and stress always on); pw.x is started by a launcher template
(:mod:`.launch`: default the bare pw.x on one rank, Debian's OpenMPI ``mpirun`` on more) in
an environment cleaned of any parent MPI/PMI variables (a DFT child started from inside an
MPICH job would otherwise try to join the parent's process manager), and it dies with the
process that started it (a killed run leaves no pw.x behind to write into the resumed
run's directory). A frame close to the
previous one starts its SCF from that frame's density and wave functions
(:class:`RestartingEspresso`, rule in :mod:`.restart`). Registered as labeller type
``"espresso"`` (see :mod:`otfgp.labellers`).
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping, Sequence

from ase import Atoms
from ase.calculators.espresso import Espresso, EspressoProfile

from ..arguments import count, positive_number
from .launch import clean_mpi_environment, dies_with_parent, launch_command
from .restart import should_restart

log = logging.getLogger(__name__)

DEFAULT_PSEUDO_DIR = "/usr/share/espresso/pseudo"
DEFAULT_PSEUDOPOTENTIALS = {"Al": "Al.pz-vbc.UPF"}
DEFAULT_RESTART_DISPLACEMENT = 0.0
"""A; off: on the demo's own DFT frames (32-atom Al, 0.09-1.2 A apart) a start from the
previous frame's files never saved SCF iterations (docs/labellers.md, bench/qe_restart.py)."""

CALLS_LOG = "pw_calls.jsonl"
"""One JSON line per pw.x call in the labeller's directory: restart?, SCF iterations, time."""

RESTART_PREFIX = "otfgp"
"""pw.x ``prefix`` of the files a restart reads (``<directory>/otfgp.save``)."""

_READ_FROM_FILE = "initial density is read from file"
"""What pw.x prints when it did start from the saved density (6.x and 7.x)."""
_CONVERGED = re.compile(r"convergence has been achieved in\s+(\d+)\s+iterations")


def scf_iterations(output: str) -> int | None:
    """The SCF iteration count of the last converged SCF in a pw.x output, or ``None``."""
    found = _CONVERGED.findall(output)
    return int(found[-1]) if found else None


class CleanEnvEspressoProfile(EspressoProfile):
    """EspressoProfile that starts pw.x with the MPI/PMI variables of the parent removed,
    and so that it dies with the process that started it (:func:`.launch.dies_with_parent`)."""

    def run(self, directory: Path, inputfile: str | None, outputfile: str,
            errorfile: str | None = None, append: bool = False) -> None:
        argv = dies_with_parent(self.get_command(inputfile))
        mode = "ab" if append else "wb"
        directory = Path(directory)
        with ExitStack() as stack:
            fd_out = stack.enter_context(open(directory / outputfile, mode))
            fd_err = stack.enter_context(open(directory / errorfile, mode)) if errorfile else None
            subprocess.check_call(argv, cwd=directory, stdout=fd_out, stderr=fd_err,
                                  env=clean_mpi_environment())


class RestartingEspresso(Espresso):
    """ASE's Espresso calculator that starts the SCF of a frame from the previous frame's
    density and wave functions (``startingpot = startingwfc = 'file'``) when no atom moved
    more than ``restart_displacement`` A since (:func:`.restart.should_restart`; 0: never),
    and from atomic densities otherwise. A failed restarted calculation is repeated once
    from scratch. Every call appends ``{"restart", "max_displacement_A", "scf_iterations",
    "wall_s"}`` to :attr:`calls` and to ``<directory>/pw_calls.jsonl``; the last call's
    ``restart`` and ``scf_iterations`` are also in :attr:`results`.
    """

    def __init__(self, *, restart_displacement: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.restart_displacement = float(restart_displacement)
        self._input_data = copy.deepcopy(dict(self.parameters.get("input_data") or {}))
        self._previous: Atoms | None = None
        self.calls: list[dict[str, Any]] = []

    def _set_start(self, restart: bool) -> None:
        data = copy.deepcopy(self._input_data)
        electrons = data.setdefault("electrons", {})
        if restart:
            electrons.update(startingpot="file", startingwfc="file")
        self.parameters["input_data"] = data

    def _run(self, atoms: Atoms, properties: Any, system_changes: Any, restart: bool) -> None:
        self._set_start(restart)
        super().calculate(atoms, properties, system_changes)

    def calculate(self, atoms: Atoms, properties: Any, system_changes: Any) -> None:
        restart, displacement = should_restart(self._previous, atoms, self.restart_displacement)
        self._previous = None  # until this call succeeds, the files on disk are not a frame's
        start = time.perf_counter()
        try:
            self._run(atoms, properties, system_changes, restart)
        except subprocess.CalledProcessError as exc:
            if not restart:
                raise
            log.warning("pw.x failed starting from the previous frame (%s); repeating from scratch", exc)
            restart = False
            self._run(atoms, properties, system_changes, restart)
        wall = time.perf_counter() - start
        self._previous = atoms.copy()
        out = Path(self.directory) / self.template.outputname
        text = out.read_text(errors="replace") if out.is_file() else ""
        if restart and _READ_FROM_FILE not in text:
            # pw.x falls back to atomic densities silently when the files are unreadable
            log.warning("pw.x did not read the previous frame's density (%s); it started from atoms", out)
            restart = False
        iterations = scf_iterations(text)
        call = {"restart": restart,
                "max_displacement_A": None if displacement is None else round(displacement, 6),
                "scf_iterations": iterations, "wall_s": round(wall, 3)}
        self.calls.append(call)
        self.results["restart"] = restart
        self.results["scf_iterations"] = iterations
        log.info("pw.x: %s SCF iterations in %.1f s (%s)", iterations, wall,
                 f"from the previous frame, max displacement {displacement:.3f} A" if restart
                 else "from scratch")
        with open(Path(self.directory) / CALLS_LOG, "a") as f:
            f.write(json.dumps(call) + "\n")


#: Smearing names pw.x knows (its input description, &SYSTEM smearing).
SMEARINGS = ("gaussian", "gauss", "methfessel-paxton", "m-p", "mp", "marzari-vanderbilt", "cold", "m-v", "mv",
             "fermi-dirac", "f-d", "fd")


def _check_settings(kpts: Any, koffset: Any, ecutwfc: Any, ecutrho: Any, smearing: Any, degauss: Any,
                    conv_thr: Any, mixing_beta: Any, electron_maxstep: Any, input_data: Any) -> None:
    """ValueError naming the first pw.x setting that pw.x would misread or reject: ASE
    truncates a k-point count of 2.7 to 2 without a word, pw.x ignores a misspelled namelist
    and stops only at the first DFT call on the other mistakes."""
    from ase.io.espresso_namelist.keys import ALL_KEYS

    for name, grid in (("kpts", kpts), ("koffset", koffset)):
        if isinstance(grid, (str, bytes)) or not hasattr(grid, "__len__") or len(grid) != 3:
            raise ValueError(f"{name} must be three integers, got {grid!r}")
    for k in kpts:
        count("kpts", k)
    if any(isinstance(k, bool) or k not in (0, 1) for k in koffset):
        raise ValueError(f"koffset must be three values 0 or 1 (no shift or a half-step shift), got {koffset!r}")
    for name, value, optional in (("ecutwfc", ecutwfc, False), ("ecutrho", ecutrho, True), ("degauss", degauss, False),
                                  ("conv_thr", conv_thr, False), ("mixing_beta", mixing_beta, True)):
        positive_number(name, value, allow_none=optional)
    count("electron_maxstep", electron_maxstep, allow_none=True)
    if smearing not in SMEARINGS:
        raise ValueError(f"smearing must be one of {', '.join(SMEARINGS)}, got {smearing!r}")
    if input_data is None:
        return
    if not isinstance(input_data, Mapping):
        raise ValueError(f"input_data must be a table of namelists, got {input_data!r}")
    for section, values in input_data.items():
        if str(section).lower() not in ALL_KEYS["pw"]:
            raise ValueError(f"input_data: {section!r} is not a pw.x namelist (pw.x would ignore it); use one of "
                             f"{', '.join(ALL_KEYS['pw'])}")
        if not isinstance(values, Mapping):
            raise ValueError(f"input_data.{section} must be a table of settings, got {values!r}")
        known = {k.lower() for k in ALL_KEYS["pw"][str(section).lower()]}
        for key in values:
            if str(key).split("(")[0].lower() not in known:
                log.warning("input_data.%s.%s is not a pw.x setting ASE knows: pw.x stops at the first DFT call "
                            "if it is misspelled", section, key)


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
    launcher: str | None = None,
    mpirun: str | None = None,
    mpi_args: Sequence[str] = (),
    restart_displacement: float = DEFAULT_RESTART_DISPLACEMENT,
    input_data: Mapping[str, Mapping[str, Any]] | None = None,
) -> RestartingEspresso:
    """An ASE Espresso (pw.x) calculator for energies, forces and stresses.

    Args:
        directory: where pw.x runs (input, output, and with restarts the density and wave
            functions of the last frame in ``otfgp.save``).
        pseudopotentials: ``{symbol: file}`` in ``pseudo_dir``; default Al.pz-vbc.UPF (LDA).
        kpts, koffset: Monkhorst-Pack grid and shift (default 2x2x2 shifted: a 32-atom
            Al cell; use 4x4x4 for a 4-atom cubic cell).
        ecutwfc, ecutrho: plane-wave cutoffs (Ry); ``ecutrho`` defaults to 4 x ecutwfc.
        smearing, degauss: occupation smearing and its width (Ry), default
            Marzari-Vanderbilt 0.1 Ry.
        conv_thr, mixing_beta, electron_maxstep: SCF settings (``None``: pw.x defaults).
        mpi_ranks: run pw.x on this many MPI ranks.
        pseudo_dir: directory of the pseudopotential files.
        pw_command: the pw.x executable.
        launcher: a launch template such as ``"srun -n {ranks}"`` or
            ``"mpiexec -n {ranks} {program} -nk 2"`` (:mod:`.launch`; ``{program}`` is pw.x,
            appended when absent; ASE appends ``-in espresso.pwi``). Default: the bare pw.x on
            one rank, Debian's OpenMPI ``mpirun --allow-run-as-root -np N`` on more.
        mpirun: the OpenMPI launcher of the default (found by :func:`.launch.find_openmpi_mpirun`).
        mpi_args: extra arguments of the default ``mpirun``, e.g.
            ``["--mca", "mpi_yield_when_idle", "1"]``.
        restart_displacement: start a frame's SCF from the previous frame's density and
            wave functions when no atom moved more than this (A) since it (same atoms and
            cell); 0: always from scratch and no files written.
        input_data: extra namelist entries, merged over the settings above.

    pw.x is always started with the parent's MPI/PMI environment variables removed, and it
    gets SIGTERM when the process that started it dies (Linux; :func:`.launch.dies_with_parent`).

    Raises:
        FileNotFoundError: pw.x, the launcher or a pseudopotential is missing (checked
            here, because ASE would notice only when the first calculation runs).
        ValueError: an invalid setting.
    """
    pseudopotentials = dict(DEFAULT_PSEUDOPOTENTIALS if pseudopotentials is None else pseudopotentials)
    if not pseudopotentials:
        raise ValueError("pseudopotentials must name at least one element")
    _check_settings(kpts, koffset, ecutwfc, ecutrho, smearing, degauss, conv_thr, mixing_beta, electron_maxstep,
                    input_data)
    restart_displacement = float(restart_displacement)
    if not restart_displacement >= 0:  # also NaN
        raise ValueError(f"restart_displacement must be >= 0 (A; 0: never restart), got {restart_displacement!r}")
    pw = shutil.which(pw_command)
    if pw is None:
        raise FileNotFoundError(f"Quantum ESPRESSO executable {pw_command!r} not found on PATH "
                                "(Debian: apt-get install quantum-espresso quantum-espresso-data)")
    # pw.x runs in `directory`: relative paths would be taken from there (a relative
    # pseudo_dir then silently falls back to pw.x's own default pseudopotentials)
    pw = os.path.abspath(pw)
    pseudo_dir = Path(pseudo_dir).resolve()
    for symbol, fname in pseudopotentials.items():
        path = Path(pseudo_dir) / fname
        if not path.is_file():
            raise FileNotFoundError(f"pseudopotential for {symbol}: {path} not found "
                                    "(Debian: quantum-espresso-data)")
    argv = launch_command(pw, mpi_ranks, launcher=launcher, mpirun=mpirun, mpi_args=mpi_args)
    program = shutil.which(argv[0])
    if program is None:
        raise FileNotFoundError(f"launcher program {argv[0]!r} (of {' '.join(argv)!r}) not found on PATH")
    if os.sep in argv[0]:
        argv[0] = os.path.abspath(program)
    command = shlex.join(argv)
    profile = CleanEnvEspressoProfile(command=command, pseudo_dir=str(pseudo_dir))
    # restarts need the density and wave functions on disk ('low': written once, at the end)
    control: dict[str, Any] = {"tprnfor": True, "tstress": True,
                               "disk_io": "low" if restart_displacement > 0 else "none"}
    if restart_displacement > 0:
        control.update(outdir=".", prefix=RESTART_PREFIX)
    data: dict[str, dict[str, Any]] = {
        "control": control,
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
    return RestartingEspresso(restart_displacement=restart_displacement, profile=profile,
                              directory=str(directory), input_data=data,
                              pseudopotentials=pseudopotentials, kpts=tuple(int(k) for k in kpts),
                              koffset=tuple(int(k) for k in koffset))


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


ESPRESSO_KEYS = frozenset(inspect.signature(espresso_calculator).parameters)
"""The keys of an ``espresso`` labeller section: the arguments of :func:`espresso_calculator`."""
