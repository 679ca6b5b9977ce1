"""Thermo output of LAMMPS runs, read from the screen output or a log file.

Every ``run`` (and ``run 0``) prints a header of column names starting with ``Step``, one
row of numbers every ``thermo`` N steps, and ends with the line ``Loop time of T on P procs
for S steps with N atoms``. Only this default one-line format is understood (not
``thermo_style yaml`` or ``multi``). Plain text processing: this module never imports
``lammps``, so it works on saved output and inside LAMMPS's own Python.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

LOOP_RE = re.compile(r"^Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms")


@dataclass(frozen=True)
class LoopTime:
    """The ``Loop time`` line that ends a run."""

    seconds: float  # wall time of the run, setup excluded
    procs: int  # MPI tasks x OpenMP threads
    steps: int
    atoms: int


@dataclass
class ThermoBlock:
    """One run's thermo header, its numeric rows and the ``Loop time`` line ending it."""

    columns: list[str]
    rows: list[list[float]] = field(default_factory=list)
    loop: LoopTime | None = None  # None: the output stops (e.g. an error) before the run ends
    loop_line: int | None = None  # index of the Loop time line in output.splitlines()

    def last(self) -> dict[str, float] | None:
        """The last row as {column: value}, None without rows."""
        return dict(zip(self.columns, self.rows[-1])) if self.rows else None


def thermo_blocks(output: str) -> list[ThermoBlock]:
    """Every thermo block of a LAMMPS output, in order.

    A block starts at a ``Step ...`` header and ends at the next ``Loop time`` line or the
    next header. Lines inside a block that are not as many numbers as there are columns
    (warnings, fix messages) are skipped.
    """
    blocks: list[ThermoBlock] = []
    current: ThermoBlock | None = None
    for i, line in enumerate(output.splitlines()):
        words = line.split()
        if words and words[0] == "Step":
            current = ThermoBlock(words)
            blocks.append(current)
            continue
        if current is None:
            continue
        m = LOOP_RE.match(line)
        if m:
            current.loop = LoopTime(float(m.group(1)), int(m.group(2)), int(m.group(3)),
                                    int(m.group(4)))
            current.loop_line = i
            current = None
        elif len(words) == len(current.columns):
            try:
                current.rows.append([float(w) for w in words])
            except ValueError:
                pass
    return blocks


def thermo_rows(output: str) -> np.ndarray:
    """Numeric rows of the first thermo block (shape (rows, columns); empty without one)."""
    blocks = thermo_blocks(output)
    return np.array(blocks[0].rows if blocks else [])
