"""Reading reference (DFT) labels from frames, for every module that compares a model with
them (evaluation, calibration, plots, offline training): which atoms' forces are labels,
the reference forces without constraints applied, and their checks. Imports nothing of
otfgp, so any module may use it."""
from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

FORCE_TRAINED = "force_trained"
"""Per-atom boolean array of exported training frames: the atoms whose forces are labels."""


def labelled_force_atoms(atoms: Atoms) -> np.ndarray:
    """The indices of the atoms of a read frame whose forces are labels: those marked in
    :data:`FORCE_TRAINED` (an export holds NaN forces for the others), else all."""
    return np.flatnonzero(np.asarray(atoms.arrays.get(FORCE_TRAINED, np.ones(len(atoms), dtype=bool)), dtype=bool))


def _calculator_result(atoms: Atoms, get: Any) -> Any:
    """``get(atoms)`` from the attached calculator, or None when there is none or it does
    not have that property (a single-point calculator read without it)."""
    from ase.calculators.calculator import PropertyNotImplementedError

    if atoms.calc is None:
        return None
    try:
        return get(atoms)
    except (PropertyNotImplementedError, RuntimeError, NotImplementedError):
        return None


def reference_forces(atoms: Atoms) -> np.ndarray:
    """The reference forces of a frame (N x 3): its calculator's, else its ``forces``
    array. ``ValueError`` if it has neither."""
    f = _calculator_result(atoms, lambda a: a.get_forces(apply_constraint=False))
    if f is not None:
        return np.asarray(f, dtype=float)
    if "forces" in atoms.arrays:
        return np.asarray(atoms.arrays["forces"], dtype=float)
    raise ValueError("no reference forces (no calculator with forces, no forces array)")


def checked_reference_forces(atoms: Atoms, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference forces of a frame (N x 3) and the atoms whose forces are labels (all,
    or those an otfgp export marks ``force_trained``; its other rows are NaN), or a
    ValueError starting with ``where`` (e.g. "frame 3") and naming the problem: no atoms, no
    forces, forces of the wrong shape, a label that is NaN or inf, no label at all."""
    if len(atoms) == 0:
        raise ValueError(f"{where}: the frame has no atoms")
    try:
        f = reference_forces(atoms)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if f.shape != (len(atoms), 3):
        raise ValueError(f"{where}: reference forces of shape {f.shape} for {len(atoms)} atoms")
    rows = labelled_force_atoms(atoms)
    bad = rows[~np.isfinite(f[rows]).all(axis=1)]
    if bad.size:
        raise ValueError(f"{where}: the reference force of atom {int(bad[0])} is not finite (NaN or inf)"
                         + (f", and {bad.size - 1} more" if bad.size > 1 else ""))
    if rows.size == 0:
        raise ValueError(f"{where}: no atom's force is a label (force_trained is false for every atom)")
    return f, rows


def reference_energy(atoms: Atoms) -> float | None:
    """The reference energy of a frame (its calculator's or ``info['energy']``), or None."""
    e = _calculator_result(atoms, lambda a: a.get_potential_energy())
    if e is not None:
        return float(e)
    e = atoms.info.get("energy")
    return None if e is None else float(e)
