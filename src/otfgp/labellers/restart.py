"""When a DFT calculation may start from the previous frame's electrons: the displacement
rule of the restarting labellers (:class:`otfgp.labellers.espresso.RestartingEspresso`).

Starting the SCF from the previous frame's density and wave functions can pay only when
the atoms moved little (frames 9 liquid steps apart need more iterations than a start
from atomic densities; docs/labellers.md has the measurement). The rule compares the
largest minimum-image displacement of any atom with a threshold.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

CELL_TOLERANCE = 1e-8
"""Cells (A) that differ by more than this are different: the plane-wave basis changes."""


def max_displacement(previous: Atoms, current: Atoms) -> float | None:
    """The largest minimum-image displacement (A) of any atom from ``previous`` to
    ``current``, or ``None`` when the two frames are not the same system (atom count,
    species and their order, cell, periodicity), so no restart is possible."""
    if (len(previous) != len(current) or not np.array_equal(previous.numbers, current.numbers)
            or not np.array_equal(previous.pbc, current.pbc)
            or not np.allclose(previous.cell.array, current.cell.array, rtol=0.0, atol=CELL_TOLERANCE)):
        return None
    if len(current) == 0:
        return 0.0
    _, lengths = find_mic(current.positions - previous.positions, current.cell, current.pbc)
    return float(np.max(lengths))


def should_restart(previous: Atoms | None, current: Atoms, threshold: float) -> tuple[bool, float | None]:
    """``(restart?, max displacement)``: restart when there is a previous frame of the same
    system and no atom moved more than ``threshold`` A from it (``threshold`` 0: never)."""
    if previous is None or threshold <= 0:
        return False, None
    d = max_displacement(previous, current)
    return (d is not None and d <= threshold), d
