"""What the active-learning loop asks of a problem: the :class:`Task` protocol.

A task is one simulation problem (a relaxation, a NEB, an MD run) that
:class:`otfgp.active.ActiveLearner` solves with as few oracle (DFT) calls as it can. Per
iteration the loop

1. runs the task's simulation with the current model as the calculator
   (:meth:`Task.simulate`), which returns the candidate pool (the trajectory's frames);
2. labels the frames the task always wants labelled (:meth:`Task.special`: a relaxation's
   predicted minimum; a NEB's highest image) plus a query of further pool frames;
3. asks the task whether the oracle's labels show it is done (:meth:`Task.converged`);
4. trains on every labelled frame and checkpoints, with the task's :meth:`Task.state`.

Before the first iteration the loop labels :meth:`Task.initial_frames` (the starting
structure of a relaxation, the end points of a NEB), so a run starts from an empty model.

Frames carry their constraints (``ase.constraints.FixAtoms`` and the like): labelled copies
keep them, :func:`free_atoms` reads them, and :func:`max_force` measures forces as ASE's
optimizers do, with the constraints applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from ..gp import Prediction


@dataclass
class IterationData:
    """What one iteration labelled, as :meth:`Task.converged` sees it.

    Attributes:
        iteration: 0 for the initial frames, then 1, 2, ...
        special: the task's special frames, labelled (an ``Atoms`` with a single-point
            calculator holding the oracle's energy and forces), ``None`` where labelling
            failed and was skipped.
        special_predictions: the model's prediction of each special frame made *before*
            training on it (``None`` at iteration 0: no model yet).
        queried: the queried pool frames, labelled (``None`` where skipped).
        queried_predictions: their pre-training predictions.
        pool: the candidate pool of this iteration (empty at iteration 0).
    """

    iteration: int
    special: list[Atoms | None]
    special_predictions: list[Prediction | None]
    queried: list[Atoms | None] = field(default_factory=list)
    queried_predictions: list[Prediction | None] = field(default_factory=list)
    pool: list[Atoms] = field(default_factory=list)


@runtime_checkable
class Task(Protocol):
    """A simulation problem for :class:`otfgp.active.ActiveLearner` (see the module docstring).

    Attributes:
        name: the task's kind in logs and checkpoints (``"relax"``, ``"neb"``, ``"md"``).
    """

    name: str

    def initial_frames(self) -> list[Atoms]:
        """Frames labelled before the first iteration (each costs an oracle call)."""

    def simulate(self, calc: BaseCalculator, workdir: Path) -> list[Atoms]:
        """Run the simulation with ``calc`` (the current model) and return the candidate
        pool: frames of its trajectory, without calculators. ``workdir`` (created by the
        loop) is the iteration's own directory for the task's files."""

    def special(self, pool: Sequence[Atoms]) -> list[Atoms]:
        """The frames always labelled this iteration (problem-specific queries); they may
        be frames of ``pool`` or built from it."""

    def converged(self, data: IterationData) -> tuple[bool, dict[str, Any]]:
        """Whether the oracle's labels show the task is solved, and JSON-ready metrics for
        the iteration's log record. Called once per iteration (0 included), after the
        labelling and before the model trains on the frames; the task may update its state
        here (e.g. where the next simulation starts)."""

    def state(self) -> dict[str, Any]:
        """The task's JSON-ready state after the last :meth:`converged` (checkpointed)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a :meth:`state` (a resumed run; the task was built with the same
        arguments as the interrupted one)."""

    def result(self) -> dict[str, Any]:
        """JSON-ready summary of the solution so far (the loop adds it to its result)."""


# ---------------------------------------------------------------------- constraint helpers
def check_task_atoms(name: str, atoms: Any) -> None:
    """ValueError naming ``name`` unless ``atoms`` is a structure a task can start from: a
    non-empty ``ase.Atoms`` with finite positions and cell and at least one atom its
    constraints leave free. Checked when the task is made: each would otherwise cost oracle
    calls first (a NaN position fails inside the labeller, retries included; with every atom
    fixed nothing is ever trained on)."""
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ValueError(f"{name} must be a non-empty ase.Atoms")
    if not np.isfinite(atoms.positions).all():
        bad = int(np.argwhere(~np.isfinite(atoms.positions))[0][0])
        raise ValueError(f"{name}: the position of atom {bad} is not finite (NaN or inf)")
    if not np.isfinite(atoms.cell.array).all():
        raise ValueError(f"{name}: the cell contains NaN or inf")
    if free_atoms(atoms).size == 0:
        raise ValueError(f"{name}: its constraints fix every atom, so nothing would move or be trained on")


def free_atoms(atoms: Atoms) -> np.ndarray:
    """Indices of the atoms whose forces the constraints leave free (not every component
    zeroed: ``FixAtoms`` removes an atom, ``FixCartesian`` on one axis does not)."""
    probe = np.ones((len(atoms), 3))
    for constraint in atoms.constraints:
        constraint.adjust_forces(atoms, probe)
    return np.flatnonzero(np.any(probe != 0.0, axis=1))


def constrained_forces(atoms: Atoms, forces: np.ndarray) -> np.ndarray:
    """``forces`` (N x 3) with ``atoms``' constraints applied, as an optimizer sees them."""
    out = np.array(forces, dtype=float, copy=True)
    for constraint in atoms.constraints:
        constraint.adjust_forces(atoms, out)
    return out


def max_force(atoms: Atoms, forces: np.ndarray) -> float:
    """The largest force norm with the constraints applied (eV/A; what an ASE optimizer
    compares with ``fmax``)."""
    f = constrained_forces(atoms, forces)
    return float(np.sqrt((f ** 2).sum(axis=1)).max()) if len(f) else 0.0


def same_structure(a: Atoms, b: Atoms, tolerance: float = 1e-6) -> bool:
    """Whether two frames are the same structure (species, cell, positions to ``tolerance`` A)."""
    return (len(a) == len(b) and np.array_equal(a.numbers, b.numbers)
            and np.allclose(a.cell.array, b.cell.array, atol=tolerance)
            and np.allclose(a.positions, b.positions, atol=tolerance))


def bare_frame(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with its constraints and without calculator, momenta or arrays
    other than positions and numbers (a pool frame)."""
    frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc,
                  tags=atoms.get_tags())
    frame.set_constraint([c.copy() for c in atoms.constraints])
    return frame
