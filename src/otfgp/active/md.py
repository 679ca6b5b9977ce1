"""Molecular dynamics as an active-learning task: :class:`MDTask`.

Each iteration runs ``steps`` steps of any ASE dynamics on the model's surface (default:
Langevin NVT), continuing from where the previous iteration stopped (positions and
momenta). The pool is a snapshot every ``pool_every`` steps; MD has no special frame, so
the loop's query (random, uncertainty or greedy) picks the whole batch.

Termination (each test that is set must pass; with none set only ``max_iterations`` stops
the loop):

- ``target_std``: the largest epistemic force std (eV/A; calibrated if the model is,
  :attr:`otfgp.gp.Prediction.epistemic_force_stds`) over the pool's free atoms (the
  constraints' fixed atoms do not move; ``stop_std`` looks at the same), under the model the
  trajectory ran with, is below it;
- ``target_error``: the *audit error*, the RMS force error (eV/A) of that model on the
  free atoms of the labelled batch (the oracle's forces against its predictions made
  before training on them), is below it.

Guard: with ``stop_std`` the trajectory stops at the first snapshot whose largest epistemic
force std exceeds it (that snapshot ends the pool, so it can be queried). The next
iteration continues from the pool's last frame.

A trajectory the model cannot evaluate (e.g. atoms pushed on top of each other by an early
model, closer than the core's minimum distance) stops there: the pool's last frame is then
the last structure the model did evaluate, the step before it broke down (where the model
is most wrong, so the query can label it), and the next iteration continues from the last
regular snapshot (or the window's start) with its momenta. Without that frame a window that
broke down before its first snapshot left the start as the whole pool, and the next window
replayed the same collision from the same state: measured on the CO/Cu(100) benchmark
(seed 1), the 8 iterations up to the 31st each labelled the same start and got no further.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from .. import _core
from ..arguments import count, positive_number
from .task import IterationData, bare_frame, check_task_atoms, free_atoms

log = logging.getLogger(__name__)

DynamicsFactory = Callable[[Atoms, int], Any]
"""``factory(atoms, iteration)`` -> an ASE dynamics object (``ase.md.MolecularDynamics``)
on ``atoms`` (``iteration`` can seed its random numbers)."""


def langevin(temperature: float = 300.0, timestep: float = 1.0, friction: float = 0.02,
             seed: int = 0) -> DynamicsFactory:
    """A factory of ASE's Langevin NVT dynamics (``temperature`` K, ``timestep`` fs,
    ``friction`` 1/fs), seeded by ``[seed, iteration]``."""
    from ase import units
    from ase.md.langevin import Langevin

    def make(atoms: Atoms, iteration: int) -> Any:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ASE's note on its fixcm default
            return Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                            rng=np.random.default_rng([seed, iteration]))

    return make


class MDTask:
    """MD of ``atoms`` with the model, until its uncertainty or audit error is small.

    Args:
        atoms: the starting structure (its constraints respected; its momenta, if any, are
            the initial velocities; otherwise drawn at ``temperature`` with ``seed``).
        steps: MD steps per iteration.
        dynamics: a :data:`DynamicsFactory` (default :func:`langevin` at ``temperature``).
        temperature: K, for the default dynamics and the initial velocities.
        pool_every: a snapshot joins the pool every this many steps.
        target_std, target_error: the termination tests (module docstring), eV/A.
        stop_std: the trajectory's uncertainty guard (module docstring), eV/A.
        seed: seed of the initial velocities and of the default dynamics.
    """

    name = "md"

    def __init__(self, atoms: Atoms, steps: int = 200, dynamics: DynamicsFactory | None = None,
                 temperature: float = 300.0, pool_every: int = 5, target_std: float | None = None,
                 target_error: float | None = None, stop_std: float | None = None, seed: int = 0) -> None:
        check_task_atoms("atoms", atoms)
        self.steps, self.pool_every = count("steps", steps), count("pool_every", pool_every)
        if self.steps % self.pool_every:  # the MD runs in pool_every chunks, one snapshot each
            raise ValueError(f"steps ({steps}) must be a multiple of pool_every ({pool_every})")
        self.temperature = positive_number("temperature", temperature)
        self.target_std = positive_number("target_std", target_std)
        self.target_error = positive_number("target_error", target_error)
        self.stop_std = positive_number("stop_std", stop_std)
        self.dynamics = dynamics or langevin(self.temperature, seed=seed)
        self.template = bare_frame(atoms)
        self.positions = np.array(atoms.positions)
        if atoms.has("momenta") and np.any(atoms.get_momenta()):
            self.momenta = np.array(atoms.get_momenta())
        else:
            from ..builders import maxwell_boltzmann

            probe = atoms.copy()
            maxwell_boltzmann(probe, self.temperature, np.random.default_rng(seed))
            self.momenta = np.array(probe.get_momenta())
        self.iteration = 0
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.solved = False

    def initial_frames(self) -> list[Atoms]:
        """The starting structure."""
        return [self._frame(self.positions)]

    def _frame(self, positions: np.ndarray) -> Atoms:
        frame = bare_frame(self.template)
        frame.positions = positions
        return frame

    def _max_std(self, model: Any, frame: Atoms) -> float:
        # over the atoms that move: a fixed atom's force never enters the dynamics, and a
        # never-trained fixed atom's std stays whatever is labelled (it would stop every
        # trajectory, and block target_std, for good)
        bare = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        stds = np.asarray(model.predict(bare, variance="exact").epistemic_force_stds)
        return float(np.max(stds[free_atoms(frame)]))

    def simulate(self, calc: BaseCalculator, workdir: Path) -> list[Atoms]:
        """``steps`` steps of the dynamics on ``calc`` from the last state; the pool is a
        snapshot every ``pool_every`` steps (also written to ``workdir/md.traj``)."""
        from ase.io import write

        self.iteration += 1
        model = getattr(calc, "model", None)
        atoms = self._frame(self.positions)
        atoms.set_momenta(self.momenta)
        atoms.calc = calc
        dyn = self.dynamics(atoms, self.iteration)
        pool: list[Atoms] = []
        momenta: list[np.ndarray] = []
        stds: list[float] = []
        why = "steps"
        evaluated: dict[str, np.ndarray] = {}  # the last step the model evaluated

        def remember() -> None:
            evaluated["positions"] = np.array(atoms.positions)

        dyn.attach(remember, interval=1)
        try:
            for _ in range(self.steps // self.pool_every):
                dyn.run(self.pool_every)
                pool.append(bare_frame(atoms))
                momenta.append(np.array(atoms.get_momenta()))
                if model is not None and (self.stop_std is not None or self.target_std is not None):
                    stds.append(self._max_std(model, pool[-1]))
                    if self.stop_std is not None and stds[-1] > self.stop_std:
                        why = "stop_std"
                        break
        except _core.InputError as exc:  # the model cannot evaluate the structure it made
            why = f"model error: {exc}"
            log.warning("md: the trajectory stopped after %d snapshot(s): %s; the pool ends with the last structure "
                        "the model evaluated (a label of such a structure can be far from equilibrium and fail "
                        "label_max_force)", len(pool), exc)
            edge = evaluated.get("positions", self.positions)
            if not pool or not np.array_equal(edge, pool[-1].positions):
                pool.append(self._frame(edge))  # the module docstring: queried where the model broke
        # the regular snapshots are the first len(momenta) pool frames (the breakdown's frame
        # has no momenta): the next window starts from the last of them; with none (a
        # breakdown before the first snapshot) where this one did
        if momenta:
            self.positions, self.momenta = np.array(pool[len(momenta) - 1].positions), momenta[-1]
        self.last = {"snapshots": len(pool), "stopped_by": why,
                     "pool_max_std": max(stds) if stds else None}
        write(str(Path(workdir) / "md.traj"), pool)
        log.info("md: %d snapshot(s), stopped by %s, pool max epistemic std %s", len(pool), why,
                 self.last["pool_max_std"])
        return pool

    def special(self, pool: Any) -> list[Atoms]:
        """None: the query picks the batch."""
        return []

    def converged(self, data: IterationData) -> tuple[bool, dict[str, Any]]:
        """The termination tests of the module docstring on the pool and the labelled batch."""
        if data.iteration == 0:
            return False, {}
        metrics: dict[str, Any] = dict(self.last)
        errors = []
        for frame, pred in zip(data.queried, data.queried_predictions):
            if frame is not None and pred is not None:
                # the atoms that move: a fixed atom's error never enters the dynamics (and,
                # not trained by default, would keep the audit up whatever is labelled)
                moving = free_atoms(frame)
                errors.append((np.asarray(pred.forces) - frame.get_forces(apply_constraint=False))[moving])
        audit = float(np.sqrt(np.mean(np.square(np.concatenate(errors))))) if errors else None
        metrics["audit_rmse"] = audit
        checks = []
        if self.target_std is not None:
            checks.append(metrics["pool_max_std"] is not None and metrics["pool_max_std"] < self.target_std)
        if self.target_error is not None:
            checks.append(audit is not None and audit < self.target_error)
        self.solved = bool(checks) and all(checks) and self.last.get("stopped_by") == "steps"
        self.history.append({"iteration": data.iteration, "audit_rmse": audit,
                             "pool_max_std": metrics["pool_max_std"], "stopped_by": self.last.get("stopped_by")})
        return self.solved, metrics

    def state(self) -> dict[str, Any]:
        """Where the next trajectory starts (positions, momenta) and the history."""
        return {"positions": self.positions.tolist(), "momenta": self.momenta.tolist(),
                "iteration": self.iteration, "history": self.history, "solved": self.solved}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a checkpointed :meth:`state`."""
        positions = np.array(state["positions"], dtype=float)
        if positions.shape != self.positions.shape:
            raise ValueError(f"the checkpointed MD has {len(positions)} atoms, this task {len(self.positions)}")
        self.positions = positions
        self.momenta = np.array(state["momenta"], dtype=float)
        self.iteration = int(state["iteration"])
        self.history = list(state["history"])
        self.solved = bool(state["solved"])

    def result(self) -> dict[str, Any]:
        """The last iteration's audit error and pool uncertainty."""
        last = self.history[-1] if self.history else {}
        return {"solved": self.solved, "audit_rmse": last.get("audit_rmse"),
                "pool_max_std": last.get("pool_max_std")}
