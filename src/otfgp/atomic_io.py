"""Crash-safe file writes: the one place otfgp writes run files a crash must never damage.

State files (checkpoints, configs, summaries, models) are *replaced*: each writer fills a
hidden temporary file beside the target (hidden, so that globs such as ``frame_*.extxyz``
never match it), fsyncs it, renames it over the target and fsyncs the directory, so that
a reader sees either the old file or the complete new one, even after a power cut.

Append-only files (``log.jsonl``, ``trajectory.extxyz``) are *appended* to: a crash can
leave a torn last record there, which :mod:`otfgp.run_dir` cuts off on resume;
:func:`fsync_file` makes the records written so far durable before a checkpoint refers
to them.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ase import Atoms

    from .gp import GaussianProcess


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or creation inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush what was written to ``path`` to disk (nothing if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_with(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Write ``path`` atomically through ``fill(tmp)``, which writes a temporary file:
    fsync it, rename it over ``path``, fsync the directory."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        fill(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    replace_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = None) -> None:
    """Replace ``path`` with ``data`` as JSON atomically."""
    write_text(path, json.dumps(data, indent=indent))


def write_atoms(path: str | os.PathLike, atoms: "Atoms | list[Atoms]", format: str = "extxyz") -> None:
    """Replace ``path`` with ``atoms`` (one frame or a list) atomically, as extended XYZ or
    another ASE format (``"traj"``: lossless binary)."""
    from ase.io import write

    replace_with(path, lambda tmp: write(tmp, atoms, format=format))


def write_model(path: str | os.PathLike, model: "GaussianProcess") -> None:
    """Replace ``path`` with ``model`` atomically and durably (never a half-written model)."""
    replace_with(path, model.save)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` in a single write (a crash tears at most this record)."""
    with open(path, "a") as f:
        f.write(text)


def append_atoms(path: str | os.PathLike, atoms: "Atoms") -> None:
    """Append one extended-XYZ frame to ``path``, serialised first and written at once."""
    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    append_text(path, buf.getvalue())
