"""Any ASE calculator as a labeller, by name: VASP, CP2K, GPAW, ABINIT, ... (labeller type
``"vasp"``, ``"cp2k"``, ... or ``"ase:NAME"``; see :mod:`otfgp.labellers`).

The class comes from ASE's own registry (``ase.calculators.calculator.get_calculator_class``),
so every calculator ASE knows by name works, with its keyword arguments as ``parameters``.
How the program starts is the calculator's business: ``command`` (``"srun -n 64 vasp_std"``)
for the classic file-based calculators, the profile (``command`` plus ``profile`` settings
such as ``pseudo_dir``) for ASE's newer ``GenericFileIOCalculator`` ones (Espresso, ABINIT,
Octopus, ...), or ASE's configuration file / environment variables when neither is given.
"""
from __future__ import annotations

import inspect
import os
import shlex
import shutil
from pathlib import Path
from typing import Any, Mapping

from ase.calculators.calculator import BadConfiguration, BaseCalculator, get_calculator_class
from ase.calculators.calculator import names as ase_calculator_names
from ase.calculators.genericfileio import BaseProfile, GenericFileIOCalculator

ASE_PREFIX = "ase:"
"""``type = "ase:NAME"`` names ASE's calculator NAME even where otfgp has its own type of
that name (``"ase:espresso"`` is ASE's plain Espresso, ``"espresso"`` otfgp's)."""


def is_ase_calculator_name(name: str) -> bool:
    """Whether ASE knows ``name`` as a calculator (``ase.calculators.calculator.names``)."""
    return name.lower() in ase_calculator_names


def ase_calculator_class(name: str) -> type:
    """The ASE calculator class called ``name`` (``"vasp"``, ``"cp2k"``, ``"gpaw"``, ...).

    Raises:
        ValueError: ASE knows no such calculator, or it does not import (e.g. GPAW is not
            installed); the message says which.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"labeller.type must name an ASE calculator, got {name!r}")
    key = name.lower()
    if key not in ase_calculator_names:
        raise ValueError(f"{name!r} is not an ASE calculator; "
                         f"known: {', '.join(ase_calculator_names)}")
    try:
        cls = get_calculator_class(key)
    except Exception as exc:  # ImportError of an optional package, or its own failures
        raise ValueError(f"ASE calculator {name!r} does not import ({type(exc).__name__}: {exc}); "
                         "is its Python package installed?") from exc
    return cls


def _profile_class(cls: type) -> type:
    """The profile class of a GenericFileIOCalculator: the BaseProfile subclass of its module."""
    module = inspect.getmodule(cls)
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseProfile)
             and v is not BaseProfile and v.__module__ == module.__name__]
    if len(found) != 1:
        raise ValueError(f"cannot tell the profile class of {cls.__name__} (found {len(found)}); "
                         "configure it in ASE's config file instead of labeller.command/profile")
    return found[0]


def _takes_directory(cls: type) -> bool:
    if issubclass(cls, BaseCalculator):
        return True  # ASE's calculators all take directory=
    try:
        return "directory" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def ase_calculator(calculator: str, parameters: Mapping[str, Any] | None = None,
                   command: str | None = None, profile: Mapping[str, Any] | None = None,
                   directory: str | os.PathLike | None = None) -> Any:
    """An ASE calculator by name, with its keyword arguments.

    Args:
        calculator: ASE's name of it (``"vasp"``, ``"cp2k"``, ``"gpaw"``, ``"abinit"``, ...).
        parameters: its keyword arguments (``{"xc": "PBE", "encut": 400, "kpts": [4, 4, 4]}``).
        command: the command line that runs the program, launcher included (``"srun -n 64
            vasp_std"``); for ASE's profile-based calculators it is the profile's command.
        profile: the other settings of the profile of a profile-based calculator (e.g.
            ``{"pseudo_dir": "..."}`` for Espresso); needs ``command``.
        directory: where the program runs (created); given to calculators that take one.

    Raises:
        ValueError: unknown or not importable calculator, bad settings; ASE's own errors
            of the calculator's constructor are raised as ValueError naming it.
        FileNotFoundError: the program of ``command`` is not on PATH.
    """
    cls = ase_calculator_class(calculator)
    if parameters is not None and not isinstance(parameters, Mapping):
        raise ValueError(f"labeller.parameters must be a table of keyword arguments, got {parameters!r}")
    kwargs = dict(parameters or {})
    generic = isinstance(cls, type) and issubclass(cls, GenericFileIOCalculator)
    if profile is not None and not generic:
        raise ValueError(f"labeller.profile is for ASE's profile-based calculators (Espresso, ABINIT, "
                         f"...); {calculator!r} is not one: give labeller.command alone")
    if profile is not None and command is None:
        raise ValueError("labeller.profile needs labeller.command (the profile's command)")
    for key in ("command", "profile", "directory"):
        if key in kwargs:
            raise ValueError(f"give {key} as labeller.{key}, not in labeller.parameters")
    if command is not None:
        if not isinstance(command, str) or not command.strip():
            raise ValueError(f"labeller.command must be a command line, got {command!r}")
        program = shlex.split(command)[0]
        if shutil.which(program) is None:  # checked here: ASE would notice at the first frame
            raise FileNotFoundError(f"labeller.command: program {program!r} (of {command!r}) not found on PATH")
        if generic:
            kwargs["profile"] = _profile_class(cls)(command=command, **dict(profile or {}))
        else:
            kwargs["command"] = command
    if directory is not None and isinstance(cls, type) and _takes_directory(cls):
        Path(directory).mkdir(parents=True, exist_ok=True)
        kwargs["directory"] = str(directory)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError, BadConfiguration) as exc:
        raise ValueError(f"ASE calculator {calculator!r} rejected its settings: {type(exc).__name__}: {exc}") from exc


ASE_KEYS = frozenset(inspect.signature(ase_calculator).parameters) - {"calculator"}
"""The keys of an ASE-calculator labeller section (the arguments of :func:`ase_calculator`
but the calculator, which is the type)."""
