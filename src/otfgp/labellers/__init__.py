"""Reference labellers and the one registry that builds them.

A labeller gives a frame its reference energy, forces and stress (see
:data:`otfgp.learning.Labeller`). The CLI's ``[labeller]`` section, the Python API and
LAMMPS's ``fix otfgp/learn ... labeller X`` all go through :func:`make_labeller`, which
takes either

- a registered type with its settings, ``{"type": "espresso", "kpts": [2, 2, 2]}`` or
  ``{"type": "emt"}`` (one file per backend: :mod:`.espresso`, :mod:`.emt`);
- any calculator ASE knows by name, ``{"type": "vasp", "parameters": {...}, "command":
  "srun vasp_std"}``, also spelt ``"ase:vasp"`` (needed where otfgp has a type of the same
  name: ``"ase:espresso"``); see :mod:`.ase_calculator`; or
- ``"module:function"`` (also as ``{"type": "module:function"}``, optionally with
  ``"parameters"``, keyword arguments it is called with): a user function that is given an
  ``ase.Atoms`` and returns an ASE calculator or a dict of results. The working directory
  is on the import path, so a ``labellers.py`` beside the input is found.

:func:`register` adds a backend.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .ase_calculator import ASE_KEYS, ASE_PREFIX, ase_calculator, ase_calculator_class, is_ase_calculator_name
from .emt import emt_labeller
from .espresso import (
    ESPRESSO_KEYS,
    RestartingEspresso,
    espresso_al_calculator,
    espresso_calculator,
)
from .launch import clean_mpi_environment, find_openmpi_mpirun, launch_command


@dataclass(frozen=True)
class LabellerType:
    """A registered labeller backend: ``build(**settings)`` makes the labeller; ``keys`` are
    the settings it accepts; with ``takes_directory`` it receives a default working
    directory (``directory``) when the settings give none."""

    name: str
    build: Callable[..., Any]
    keys: frozenset[str]
    aliases: tuple[str, ...] = ()
    takes_directory: bool = False


_TYPES: dict[str, LabellerType] = {}


def register(kind: LabellerType) -> None:
    """Make ``kind`` (and its aliases) known to :func:`make_labeller`."""
    for name in (kind.name, *kind.aliases):
        _TYPES[name.lower()] = kind


register(LabellerType("emt", lambda: emt_labeller(), frozenset()))
register(LabellerType("espresso", espresso_calculator, ESPRESSO_KEYS,
                      aliases=("qe", "pw", "quantum_espresso"), takes_directory=True))


FUNCTION_KEYS = frozenset({"parameters"})
"""The keys of a ``module:function`` labeller section besides the type."""


def labeller_types() -> list[str]:
    """The registered type names (without aliases)."""
    return sorted({k.name for k in _TYPES.values()})


def _ase_name(kind: str) -> str | None:
    """The ASE calculator a type names (``"ase:vasp"``, or ``"vasp"`` where otfgp has no
    type of that name), else None."""
    if kind.lower().startswith(ASE_PREFIX):
        return kind[len(ASE_PREFIX):]
    if kind.lower() not in _TYPES and is_ase_calculator_name(kind):
        return kind
    return None


def _is_function_spec(kind: str) -> bool:
    return ":" in kind and _ase_name(kind) is None


def _check_keys(rest: list[str], known: frozenset[str], what: str) -> None:
    bad = [k for k in rest if k not in known]
    if bad:
        raise ValueError(f"unknown key labeller.{bad[0]} for {what}; known: {', '.join(sorted(known))}")


def _types_hint() -> str:
    return (f"give one of {', '.join(labeller_types())}, an ASE calculator name "
            "(vasp, cp2k, gpaw, ... or 'ase:NAME') or 'module:function'")


def check_labeller_spec(spec: Mapping[str, Any] | str) -> str:
    """Validate a labeller specification without building anything (an ASE calculator's
    class is imported); returns the normalised type (a registered name, ``"ase:NAME"``, or
    the ``module:function`` string).

    Raises:
        ValueError: missing or unknown type, an unknown key (the message names it), or an
            ASE calculator that does not import.
    """
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"[labeller] must be a table/mapping, got {type(spec).__name__}")
    if "type" not in spec:
        raise ValueError(f"labeller.type missing: {_types_hint()}")
    kind = str(spec["type"])
    rest = sorted(k for k in spec if k != "type")
    ase_name = _ase_name(kind)
    if ase_name is not None:
        ase_calculator_class(ase_name)
        _check_keys(rest, ASE_KEYS, f"ASE calculator {ase_name!r}")
        _check_parameters(spec)
        return ASE_PREFIX + ase_name.lower()
    if _is_function_spec(kind):
        module_name, _, func_name = kind.partition(":")
        if not module_name or not func_name:
            raise ValueError(f"labeller must be 'module:function', got {kind!r}")
        _check_keys(rest, FUNCTION_KEYS, "a 'module:function' labeller")
        _check_parameters(spec)
        return kind
    entry = _TYPES.get(kind.lower())
    if entry is None:
        raise ValueError(f"labeller.type {kind!r} unknown: {_types_hint()}")
    bad = [k for k in rest if k not in entry.keys]
    if bad:
        if not entry.keys:
            raise ValueError(f"unknown key labeller.{bad[0]}: type {entry.name!r} takes no other keys")
        raise ValueError(f"unknown key labeller.{bad[0]} for type {entry.name!r}; "
                         f"known: {', '.join(sorted(entry.keys))}")
    return entry.name


def _check_parameters(spec: Mapping[str, Any]) -> None:
    params = spec.get("parameters")
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"labeller.parameters must be a table of keyword arguments, got {params!r}")


def resolve_labeller(spec: str) -> Callable[..., Any]:
    """Import the function named by ``module:function`` (the working directory is on the
    import path)."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"labeller must be 'module:function', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportError(f"labeller module {module_name!r} does not import: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise AttributeError(f"labeller module {module_name!r} has no function {func_name!r}") from None


def make_labeller(spec: Mapping[str, Any] | str, directory: str | os.PathLike | None = None) -> Any:
    """Build the labeller a specification names (see the module docstring).

    ``directory`` is the default working directory of file-based backends (pw.x) when the
    settings give none.

    Raises:
        ValueError: missing or unknown type, or an unknown key (the message names it).
        ImportError, AttributeError: a ``module:function`` that cannot be imported.
        FileNotFoundError: a backend's program or data is missing (e.g. pw.x).
    """
    kind = check_labeller_spec(spec)
    settings = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "type"}
    if kind.startswith(ASE_PREFIX):
        settings.setdefault("directory", directory if directory is not None else "dft_work")
        return ase_calculator(kind[len(ASE_PREFIX):], **settings)
    if _is_function_spec(kind):
        function = resolve_labeller(kind)
        params = settings.get("parameters")
        return functools.partial(function, **params) if params else function
    entry = _TYPES[kind]
    if entry.takes_directory and "directory" not in settings:
        settings["directory"] = directory if directory is not None else "dft_work"
    return entry.build(**settings)


__all__ = [
    "FUNCTION_KEYS",
    "LabellerType",
    "RestartingEspresso",
    "ase_calculator",
    "check_labeller_spec",
    "clean_mpi_environment",
    "emt_labeller",
    "espresso_al_calculator",
    "espresso_calculator",
    "find_openmpi_mpirun",
    "labeller_types",
    "launch_command",
    "make_labeller",
    "register",
    "resolve_labeller",
]
