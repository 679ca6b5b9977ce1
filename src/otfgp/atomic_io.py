"""Atomic file writes: the one way otfgp replaces a file a crash must never leave half-written.

Each writer fills a hidden temporary file beside the target (hidden, so that globs such as
``frame_*.extxyz`` never match it), flushes it to disk and renames it over the target, so a
reader sees either the old file or the complete new one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ase import Atoms


def _replace_with(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Write ``path`` through ``fill(tmp)`` on a temporary file, fsync it, rename it over."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    fill(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    _replace_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = None) -> None:
    """Replace ``path`` with ``data`` as JSON atomically."""
    write_text(path, json.dumps(data, indent=indent))


def write_atoms(path: str | os.PathLike, atoms: "Atoms | list[Atoms]", format: str = "extxyz") -> None:
    """Replace ``path`` with ``atoms`` (one frame or a list) atomically, as extended XYZ or
    another ASE format (``"traj"``: lossless binary)."""
    from ase.io import write

    _replace_with(path, lambda tmp: write(tmp, atoms, format=format))
