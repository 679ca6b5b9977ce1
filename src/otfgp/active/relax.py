"""Relaxation as an active-learning task: :class:`RelaxTask`.

Each iteration relaxes the structure on the model's surface (any ASE optimizer), from the
structure the previous iteration ended at; the pool is that relaxation's trajectory and the
special query its end point, the *predicted minimum*. The oracle labels it, and the task
is solved when the oracle's largest force there, over the atoms the constraints leave free,
is below ``fmax`` (the test an ASE optimizer applies, on the oracle's forces). Labelling the
predicted minimum is what makes the loop cheap: each oracle call lands where the model
thinks the answer is, and either confirms it or teaches the model the region that matters.

Two guards keep an early model (one labelled frame) from sending the structure far into
territory it knows nothing about: ``max_step`` (A) stops the model relaxation once any atom
has moved that far from the iteration's start (a trust radius), and ``steps`` caps its
length. The oracle frame there then teaches the model that region.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, Calculator, all_changes

from ..arguments import count, flag, positive_number
from .task import IterationData, bare_frame, check_task_atoms, max_force

log = logging.getLogger(__name__)

OPTIMIZERS = ("bfgs", "lbfgs", "fire", "bfgs_linesearch", "gpmin", "mdmin")
"""Optimizer names :class:`RelaxTask` accepts (ASE's classes of the same names)."""


def optimizer_class(name: str) -> type:
    """The ASE optimizer class of a name of :data:`OPTIMIZERS`."""
    from ase import optimize

    classes = {"bfgs": optimize.BFGS, "lbfgs": optimize.LBFGS, "fire": optimize.FIRE,
               "bfgs_linesearch": optimize.BFGSLineSearch, "gpmin": optimize.GPMin, "mdmin": optimize.MDMin}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    return classes[name]


class AnchoredCalculator(Calculator):
    """The model's surface tilted so that its forces equal the oracle's at an anchor
    structure: F(x) = F_model(x) + (F_oracle(x0) - F_model(x0)), energy
    E_model(x) - sum (F_oracle(x0) - F_model(x0)) . (x - x0) (conservative, so line
    searches see consistent energies). Near a minimum the model's error is a smooth, nearly
    constant force offset that the GP cannot resolve below its noise level; removing it at
    the last labelled structure turns each model relaxation into a quasi-Newton step on the
    oracle's forces with the model's curvature, instead of stopping where the model's own
    forces vanish.
    """

    implemented_properties = ("energy", "forces")

    def __init__(self, base: BaseCalculator, anchor: Atoms, oracle_forces: np.ndarray) -> None:
        super().__init__()
        self.base = base
        self.origin = np.array(anchor.positions)
        probe = anchor.copy()
        probe.set_constraint()
        probe.calc = base
        self.offset = np.asarray(oracle_forces, dtype=float) - probe.get_forces()

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.set_constraint()
        probe.calc = self.base
        tilt = float(np.sum(self.offset * (probe.positions - self.origin)))
        self.results = {"energy": float(probe.get_potential_energy()) - tilt,
                        "forces": probe.get_forces() + self.offset}


class RelaxTask:
    """Relax ``atoms`` (fixed cell; its constraints respected) to ``fmax`` on the oracle.

    Args:
        atoms: the starting structure, with its constraints (e.g. ``FixAtoms`` on the
            bottom layers of a slab). It is updated in place: after each iteration it holds
            the latest labelled predicted minimum (the relaxed structure at the end).
        fmax: convergence criterion on the oracle's forces (eV/A).
        optimizer: the ASE optimizer of the model relaxations (:data:`OPTIMIZERS`).
        steps: the most optimizer steps of one model relaxation.
        model_fmax: the model relaxation stops when the *model's* largest force is below
            this (eV/A; default ``fmax / 2``, so that the model's own residual force does not
            use up the oracle's margin).
        max_step: trust radius (A): the model relaxation also stops once an atom has moved
            this far from where the iteration started (``None``: no limit).
        optimizer_options: keyword arguments of the optimizer (e.g. ``{"maxstep": 0.1}``).
        anchor: relax on the model's surface tilted to match the oracle's forces at the
            last labelled structure (:class:`AnchoredCalculator`); ``False``: on the model's
            own surface.
    """

    name = "relax"

    def __init__(self, atoms: Atoms, fmax: float = 0.05, optimizer: str = "bfgs", steps: int = 200,
                 model_fmax: float | None = None, max_step: float | None = 0.5,
                 optimizer_options: Mapping[str, Any] | None = None, anchor: bool = True) -> None:
        for key, value in (("fmax", fmax), ("model_fmax", model_fmax), ("max_step", max_step)):
            positive_number(key, value)
        count("steps", steps)
        check_task_atoms("atoms", atoms)
        # an unknown name or option fails here, not after the first oracle call
        try:
            optimizer_class(optimizer)(bare_frame(atoms), logfile=None, **dict(optimizer_options or {}))
        except TypeError as exc:
            raise ValueError(f"optimizer_options {dict(optimizer_options or {})} do not fit the {optimizer} "
                             f"optimizer: {exc}") from exc
        self.atoms = atoms
        self.fmax = float(fmax)
        self.optimizer = optimizer
        self.steps = int(steps)
        self.model_fmax = float(model_fmax) if model_fmax is not None else self.fmax / 2
        self.max_step = None if max_step is None else float(max_step)
        self.optimizer_options = dict(optimizer_options or {})
        self.anchor = flag("anchor", anchor)
        self.start_forces: np.ndarray | None = None  # the oracle's forces at the start (anchor)
        self.start = np.array(atoms.positions)  # where the next model relaxation starts
        self.last: dict[str, Any] = {}  # the last model relaxation: steps, why it stopped
        self.history: list[dict[str, Any]] = []  # oracle energy and fmax per labelled minimum
        self.solved = False

    # ----------------------------------------------------------------- protocol
    def initial_frames(self) -> list[Atoms]:
        """The starting structure."""
        return [bare_frame(self.atoms)]

    def simulate(self, calc: BaseCalculator, workdir: Path) -> list[Atoms]:
        """Relax on ``calc`` from :attr:`start`; the pool is every step's frame (first: the
        start), also written to ``workdir/relax.traj``."""
        from ase.io.trajectory import Trajectory

        work = bare_frame(self.atoms)
        work.positions = self.start
        if self.anchor and self.start_forces is not None:
            calc = AnchoredCalculator(calc, work, self.start_forces)
        work.calc = calc
        opt = optimizer_class(self.optimizer)(work, logfile=None, **self.optimizer_options)
        pool: list[Atoms] = []
        why = "steps"
        with Trajectory(str(Path(workdir) / "relax.traj"), "w") as traj:
            for done in opt.irun(fmax=self.model_fmax, steps=self.steps):
                pool.append(bare_frame(work))
                traj.write(work)
                if done:
                    why = "model_fmax"
                    break
                moved = float(np.linalg.norm(work.positions - self.start, axis=1).max())
                if self.max_step is not None and moved > self.max_step:
                    why = "max_step"
                    break
        self.last = {"model_steps": int(opt.nsteps), "stopped_by": why,
                     "model_fmax": max_force(work, work.get_forces()),
                     "displacement": float(np.linalg.norm(work.positions - self.start, axis=1).max())}
        log.info("relax: model relaxation of %d step(s) stopped by %s (model fmax %.4f eV/A, largest "
                 "displacement %.3f A)", opt.nsteps, why, self.last["model_fmax"], self.last["displacement"])
        return pool

    def special(self, pool: Sequence[Atoms]) -> list[Atoms]:
        """The predicted minimum: the model relaxation's last frame."""
        return [pool[-1]]

    def converged(self, data: IterationData) -> tuple[bool, dict[str, Any]]:
        """Solved when the oracle's largest free-atom force at the predicted minimum is below
        ``fmax``; the next model relaxation starts there."""
        frame = data.special[0]
        metrics: dict[str, Any] = dict(self.last) if data.iteration > 0 else {}
        if frame is None:  # its labelling failed and was skipped: nothing learnt about it
            metrics["oracle_fmax"] = None
            return False, metrics
        forces = frame.get_forces(apply_constraint=False)
        fmax = max_force(frame, forces)
        energy = float(frame.get_potential_energy())
        metrics.update(oracle_fmax=fmax, oracle_energy=energy)
        prediction = data.special_predictions[0]
        if prediction is not None:
            metrics.update(predicted_energy=float(prediction.energy),
                           predicted_fmax=max_force(frame, np.asarray(prediction.forces)))
        self.history.append({"iteration": data.iteration, "energy": energy, "fmax": fmax})
        self.start = np.array(frame.positions)
        self.start_forces = np.array(forces)
        self.atoms.positions = frame.positions
        self.solved = fmax < self.fmax
        return self.solved, metrics

    def state(self) -> dict[str, Any]:
        """Where the next relaxation starts and the labelled minima so far."""
        return {"start": self.start.tolist(), "history": self.history, "solved": self.solved,
                "start_forces": None if self.start_forces is None else self.start_forces.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a checkpointed :meth:`state`."""
        start = np.array(state["start"], dtype=float)
        if start.shape != self.atoms.positions.shape:
            raise ValueError(f"the checkpointed relaxation has {len(start)} atoms, this task {len(self.atoms)}")
        self.start = start
        self.atoms.positions = start
        self.start_forces = None if state["start_forces"] is None else np.array(state["start_forces"], dtype=float)
        self.history = list(state["history"])
        self.solved = bool(state["solved"])

    def result(self) -> dict[str, Any]:
        """The oracle energy and largest force of the last labelled minimum."""
        last = self.history[-1] if self.history else {}
        return {"solved": self.solved, "energy": last.get("energy"), "fmax": last.get("fmax")}
