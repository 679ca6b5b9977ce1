"""Nudged elastic band as an active-learning task: :class:`NEBTask`.

Each iteration, on the model's surface:

1. relaxes both end points (they need not be pre-relaxed: the loop learns the minima too),
   from where the previous iteration left them;
2. runs a climbing-image NEB (ASE's ``NEB``, improved tangent, BFGS) between the relaxed end
   points, starting from the previous iteration's band (the first: a linear interpolation).

The pool is every frame of both end-point relaxations and the band every ``pool_every``
optimizer steps (the intermediate paths). The special queries are the *predicted saddle*
(the highest interior image of the final band) and both end points; the task is solved
when the model's band converged (to ``fmax``: a band the trust radius or the step limit
stopped is no saddle of the model) and the oracle's energy at each of them is within
``energy_tol`` of the model's prediction made before training on it (so the barrier is
within ``2 energy_tol``), and, with ``force_tol``, the model's saddle forces within
``force_tol`` of the oracle's.

``skip_std``: an end point whose largest epistemic force std over the free atoms, with the
model's variance already conditioned on the saddle and the other end point, is below
``skip_std`` (eV/A) is not labelled; the batch already determines it (e.g. an end point
equal to the other one up to a lattice translation, as in hollow-to-hollow diffusion, where
its environments are the other's). If it has moved less than ``max_skip_move`` (A) since its
last oracle label, that label stands for it; otherwise, and only when the other end point
is in the batch or has an oracle label where it is, its energy is *inferred*: the
prediction of a copy of the model trained on the labelled batch (which determines it),
corrected by that copy's residual at the other end point's oracle label (exact for an end
point that is the other one translated), and its termination error is the pre-training
prediction's distance from that (an inferred end point is flagged in the metrics; a model
without energy labels never infers, it labels). Iteration 0 then labels only the initial
end point: the final one is labelled at the first iteration whose batch does not determine
it.

Like :class:`otfgp.active.RelaxTask`, ``max_step`` (A) is a trust radius: an end-point
relaxation or the band optimisation stops once an atom has moved that far from where the
iteration started it, so an early model cannot carry the path into regions it knows
nothing about.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from .. import _core
from ..arguments import count, flag, positive_number
from .task import IterationData, bare_frame, check_task_atoms, free_atoms, same_structure

log = logging.getLogger(__name__)


class NEBTask:
    """Climbing-image NEB from ``initial`` to ``final`` until the oracle confirms the saddle.

    Args:
        initial, final: the end points (same atoms in the same order; constraints such as
            ``FixAtoms`` are taken from ``initial``). Not necessarily relaxed.
        n_images: images of the band, end points included (>= 3).
        fmax: the NEB's and the end-point relaxations' convergence on the model (eV/A).
        energy_tol: the termination tolerance on |E_model - E_oracle| at the predicted
            saddle and the labelled end points (eV).
        force_tol: if set, the model's largest force-component error at the saddle must be
            below this too (eV/A).
        steps: the most BFGS steps of the band optimisation per iteration.
        relax_steps: the most BFGS steps of one end-point relaxation per iteration.
        max_step: trust radius (A), see the module docstring; ``None``: none.
        pool_every: the band joins the pool every this many optimizer steps (and at the end).
        skip_std: see the module docstring (``None``: always label both end points).
        max_skip_move: see the module docstring (A).
        climb: climbing image on (the saddle is then an image of the band).
        reuse_band: start each band optimisation from the previous iteration's band;
            ``False``: from a fresh linear interpolation between the relaxed end points
            (a band the trust radius stopped far off the path is then not carried on).
    """

    name = "neb"

    def __init__(self, initial: Atoms, final: Atoms, n_images: int = 5, fmax: float = 0.05,
                 energy_tol: float = 0.01, force_tol: float | None = None, steps: int = 300,
                 relax_steps: int = 200, max_step: float | None = 0.5, pool_every: int = 5,
                 skip_std: float | None = None, max_skip_move: float = 0.01, climb: bool = True,
                 reuse_band: bool = True) -> None:
        for end, label in ((initial, "initial"), (final, "final")):
            check_task_atoms(label, end)
        if len(initial) != len(final) or not np.array_equal(initial.numbers, final.numbers):
            raise ValueError("initial and final must hold the same atoms in the same order")
        if not np.allclose(initial.cell.array, final.cell.array) or not np.array_equal(initial.pbc, final.pbc):
            raise ValueError("initial and final must have the same cell and periodicity")
        if same_structure(initial, final):
            raise ValueError("initial and final are the same structure: there is no path between them")
        self.n_images = count("n_images", n_images, 3)
        self.fmax = positive_number("fmax", fmax, allow_none=False)
        self.energy_tol = positive_number("energy_tol", energy_tol, allow_none=False)
        self.force_tol = positive_number("force_tol", force_tol)
        self.steps = count("steps", steps, 1)
        self.relax_steps = count("relax_steps", relax_steps, 1)
        self.max_step = positive_number("max_step", max_step)
        self.pool_every = count("pool_every", pool_every, 1)
        self.skip_std = positive_number("skip_std", skip_std)
        self.max_skip_move = positive_number("max_skip_move", max_skip_move, allow_none=False)
        self.climb = flag("climb", climb)
        self.reuse_band = flag("reuse_band", reuse_band)
        self.template = bare_frame(initial)
        # the band: n_images position arrays; the end points are where the next relaxation starts
        self.band = self._interpolate(np.array(initial.positions), np.array(final.positions))
        self.labelled_ends: list[dict[str, Any] | None] = [None, None]  # last oracle label per end point
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.solved = False
        self._model: Any = None
        self._special_ends: list[int] = []  # which end points (0, 1) this iteration labels

    # ----------------------------------------------------------------- helpers
    def _frame(self, positions: np.ndarray) -> Atoms:
        frame = bare_frame(self.template)
        frame.positions = positions
        return frame

    def _interpolate(self, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        """Linear interpolation with the minimum-image convention (ASE's ``NEB.interpolate``)."""
        from ase.mep import NEB

        images = [self._frame(a)] + [self._frame(a) for _ in range(self.n_images - 2)] + [self._frame(b)]
        NEB(images, method="improvedtangent").interpolate(mic=True)
        return [np.array(im.positions) for im in images]

    def _moved_too_far(self, frames: Sequence[Atoms], starts: Sequence[np.ndarray]) -> bool:
        if self.max_step is None:
            return False
        return any(float(np.linalg.norm(f.positions - s, axis=1).max()) > self.max_step
                   for f, s in zip(frames, starts))

    def _relax_end(self, index: int, calc: BaseCalculator, pool: list[Atoms]) -> dict[str, Any]:
        from ase.optimize import BFGS

        start = self.band[index]
        work = self._frame(start)
        work.calc = calc
        opt = BFGS(work, logfile=None)
        why = "steps"
        good = np.array(start)
        try:
            for done in opt.irun(fmax=self.fmax, steps=self.relax_steps):
                pool.append(bare_frame(work))
                good = np.array(work.positions)
                if done:
                    why = "fmax"
                    break
                if self._moved_too_far([work], [start]):
                    why = "max_step"
                    break
        except _core.InputError as exc:  # the model cannot evaluate the structure it made
            why = f"model error: {exc}"
            log.warning("neb: end-point relaxation stopped: %s", exc)
        self.band[index] = good
        return {"steps": int(opt.nsteps), "stopped_by": why}

    def _run_band(self, calc: BaseCalculator, pool: list[Atoms]) -> dict[str, Any]:
        from ase.mep import NEB
        from ase.optimize import BFGS

        starts = [np.array(p) for p in self.band]
        images = [self._frame(p) for p in self.band]
        for image in images:
            image.calc = calc
        band = NEB(images, climb=self.climb, method="improvedtangent", allow_shared_calculator=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ASE's notes on the NEB defaults
            opt = BFGS(band, logfile=None)
        why = "steps"
        good = [np.array(im.positions) for im in images]
        try:
            for done in opt.irun(fmax=self.fmax, steps=self.steps):
                good = [np.array(im.positions) for im in images]
                if done:
                    why = "fmax"
                    break
                if opt.nsteps % self.pool_every == 0:
                    pool.extend(bare_frame(im) for im in images[1:-1])
                if self._moved_too_far(images[1:-1], starts[1:-1]):
                    why = "max_step"
                    break
        except _core.InputError as exc:  # back to the last band the model could evaluate
            why = f"model error: {exc}"
            log.warning("neb: band optimisation stopped: %s", exc)
            for image, positions in zip(images, good):
                image.positions = positions
        pool.extend(bare_frame(im) for im in images[1:-1])
        energies = [float(im.get_potential_energy()) for im in images]
        self.band = [np.array(im.positions) for im in images]
        self.saddle_index = 1 + int(np.argmax(energies[1:-1]))
        return {"steps": int(opt.nsteps), "stopped_by": why, "model_energies": energies,
                "model_barrier": energies[self.saddle_index] - energies[0]}

    # ----------------------------------------------------------------- protocol
    def initial_frames(self) -> list[Atoms]:
        """Both end points as given (the oracle's first look at them); with ``skip_std``
        only the initial one (see the module docstring)."""
        self._special_ends = [0] if self.skip_std is not None else [0, 1]
        return [self._frame(self.band[0 if end == 0 else -1]) for end in self._special_ends]

    def simulate(self, calc: BaseCalculator, workdir: Path) -> list[Atoms]:
        """Relax both end points on ``calc``, then run the CI-NEB between them; writes the
        final band to ``workdir/band.traj``. The pool: see the module docstring."""
        from ase.io import write

        self._model = getattr(calc, "model", None)
        pool: list[Atoms] = []
        ends = [self._relax_end(0, calc, pool), self._relax_end(len(self.band) - 1, calc, pool)]
        if not self.reuse_band:
            self.band = self._interpolate(self.band[0], self.band[-1])
        band = self._run_band(calc, pool)
        self.last = {"endpoint_relaxations": ends, "band": band}
        write(str(Path(workdir) / "band.traj"), [self._frame(p) for p in self.band])
        log.info("neb: end points relaxed in %d + %d step(s), band in %d step(s) (%s); model barrier %.4f eV",
                 ends[0]["steps"], ends[1]["steps"], band["steps"], band["stopped_by"], band["model_barrier"])
        return pool

    def _has_moved(self, end: int) -> bool:
        """Whether end point ``end`` moved more than ``max_skip_move`` since its last oracle
        label (or has none)."""
        last = self.labelled_ends[end]
        if last is None or last.get("inferred"):
            return True
        position = self.band[0 if end == 0 else -1]
        return float(np.linalg.norm(position - np.array(last["positions"]), axis=1).max()) > self.max_skip_move

    def _end_is_determined(self, end: int, others: list[Atoms]) -> bool:
        """Whether end point ``end`` (0 or 1) may go unlabelled (``skip_std``)."""
        if self.skip_std is None or self._model is None or not self._model.trained:
            return False
        other_known = (1 - end) in self._special_ends or not self._has_moved(1 - end)
        if self._has_moved(end) and (not self._model.has_energy_labels or not other_known):
            return False  # its energy could not be inferred (module docstring)
        position = self.band[0 if end == 0 else -1]
        fantasy = self._model.copy()
        for frame in others:  # fantasy labels: the GP's variance does not depend on their values
            bare = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
            fantasy.add_training_data(bare, forces=np.zeros((len(bare), 3)), atom_indices=free_atoms(frame))
        fantasy.train(optimize=False)
        frame = self._frame(position)
        bare = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        # the free atoms only: fixed ones have no force labels, so their std stays high
        stds = fantasy.predict(bare, variance="exact").epistemic_force_stds[free_atoms(frame)]
        std = float(np.max(stds))
        self._end_stds[end] = std
        log.info("neb: %s end point: epistemic force std %.4g eV/A given the batch (skip_std %g)",
                 ("initial", "final")[end], std, self.skip_std)
        return std < self.skip_std

    def special(self, pool: Sequence[Atoms]) -> list[Atoms]:
        """The predicted saddle (highest interior image), then the end points that need a
        label (both, unless ``skip_std`` lets one go)."""
        saddle = self._frame(self.band[self.saddle_index])
        frames = [saddle]
        self._special_ends = []
        self._end_stds: dict[int, float] = {}
        ends = {0: self._frame(self.band[0]), 1: self._frame(self.band[-1])}
        for end in (0, 1):
            others = [saddle] + [ends[e] for e in self._special_ends]  # the batch so far
            if not self._end_is_determined(end, others):
                self._special_ends.append(end)
                frames.append(ends[end])
        return frames

    def converged(self, data: IterationData) -> tuple[bool, dict[str, Any]]:
        """Solved when the saddle's and the labelled end points' model energies (before
        training on them) are within ``energy_tol`` of the oracle's (see the module
        docstring). Records the oracle barrier of the labelled frames."""
        if data.iteration == 0:
            for end, frame in zip(self._special_ends, data.special):
                self._remember_end(end, frame, None)
            return False, {}
        metrics: dict[str, Any] = dict(self.last)
        saddle, saddle_pred = data.special[0], data.special_predictions[0]
        errors: dict[str, float | None] = {}
        for end, frame, pred in zip(self._special_ends, data.special[1:], data.special_predictions[1:]):
            self._remember_end(end, frame, pred)
        inferred = [e for e in (0, 1) if e not in self._special_ends and self._has_moved(e)]
        if inferred:
            self._infer_ends(inferred, data)
        metrics["inferred_ends"] = [("initial", "final")[e] for e in inferred]
        metrics["end_point_stds"] = {("initial", "final")[e]: v for e, v in getattr(self, "_end_stds", {}).items()}
        for end, key in ((0, "initial"), (1, "final")):
            errors[key] = self.labelled_ends[end]["error"] if self.labelled_ends[end] else None
        metrics["labelled_ends"] = [("initial", "final")[e] for e in self._special_ends]
        solved = saddle is not None and saddle_pred is not None
        if solved:
            e_saddle = float(saddle.get_potential_energy())
            errors["saddle"] = abs(float(saddle_pred.energy) - e_saddle)
            force_error = float(np.max(np.abs(np.asarray(saddle_pred.forces)
                                              - saddle.get_forces(apply_constraint=False))))
            metrics["saddle_force_error"] = force_error
            metrics["oracle_saddle_energy"] = e_saddle
            ends = [self.labelled_ends[e] for e in (0, 1)]
            metrics["oracle_barrier"] = e_saddle - ends[0]["energy"] if ends[0] else None
            metrics["oracle_reverse_barrier"] = e_saddle - ends[1]["energy"] if ends[1] else None
            # a band the trust radius or the step limit stopped is no saddle of the model
            band_converged = self.last.get("band", {}).get("stopped_by") == "fmax"
            solved = band_converged and all(v is not None and v < self.energy_tol for v in errors.values())
            if self.force_tol is not None:
                solved = solved and force_error < self.force_tol
        metrics["energy_errors"] = errors
        self.history.append({"iteration": data.iteration, **{k: metrics.get(k) for k in (
            "oracle_barrier", "oracle_reverse_barrier", "energy_errors")},
            "model_barrier": self.last.get("band", {}).get("model_barrier")})
        self.solved = bool(solved)
        return self.solved, metrics

    def _infer_ends(self, ends: list[int], data: IterationData) -> None:
        """The energies of the unlabelled end points ``ends`` the batch determines: the
        predictions of a model copy trained on the labelled batch (module docstring)."""
        trained = self._model.copy()
        for frame in list(data.special) + list(data.queried):
            if frame is None:
                continue
            bare = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
            trained.add_training_data(bare, forces=frame.get_forces(apply_constraint=False),
                                      energy=float(frame.get_potential_energy()), atom_indices=free_atoms(frame))
        trained.train(optimize=False)
        for end in ends:
            frame = self._frame(self.band[0 if end == 0 else -1])
            bare = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
            # plus the other end point's residual after training: a GP fits its energy labels
            # only to within its noise, and for an end point that is the other one translated
            # the two predictions are the same, so the inferred energy is then the oracle's
            other = self.labelled_ends[1 - end]
            residual = 0.0
            if other is not None and not other.get("inferred"):
                known = Atoms(frame.numbers, positions=np.array(other["positions"]), cell=frame.cell, pbc=frame.pbc)
                residual = other["energy"] - float(trained.predict(known).energy)
            energy = float(trained.predict(bare).energy) + residual
            before = float(self._model.predict(bare).energy)
            self.labelled_ends[end] = {"positions": np.array(frame.positions).tolist(), "energy": energy,
                                       "error": abs(before - energy), "inferred": True}

    def _remember_end(self, end: int, frame: Atoms | None, pred: Any) -> None:
        if frame is None:
            return
        energy = float(frame.get_potential_energy())
        self.labelled_ends[end] = {"positions": np.array(frame.positions).tolist(), "energy": energy,
                                   "error": None if pred is None else abs(float(pred.energy) - energy)}

    def state(self) -> dict[str, Any]:
        """The band (end points included) and the end points' last labels."""
        return {"band": [p.tolist() for p in self.band], "labelled_ends": self.labelled_ends,
                "history": self.history, "solved": self.solved,
                "saddle_index": getattr(self, "saddle_index", None)}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a checkpointed :meth:`state`."""
        band = [np.array(p, dtype=float) for p in state["band"]]
        if len(band) != self.n_images or any(p.shape != (len(self.template), 3) for p in band):
            raise ValueError(f"the checkpointed band does not fit this task ({self.n_images} images of "
                             f"{len(self.template)} atoms)")
        self.band = band
        self.labelled_ends = list(state["labelled_ends"])
        self.history = list(state["history"])
        self.solved = bool(state["solved"])
        if state.get("saddle_index") is not None:
            self.saddle_index = int(state["saddle_index"])

    def result(self) -> dict[str, Any]:
        """The oracle barrier at the last labelled saddle (forward and reverse) and errors."""
        last = self.history[-1] if self.history else {}
        return {"solved": self.solved, "barrier": last.get("oracle_barrier"),
                "reverse_barrier": last.get("oracle_reverse_barrier"),
                "model_barrier": last.get("model_barrier"), "energy_errors": last.get("energy_errors")}

    def images(self) -> list[Atoms]:
        """The current band as frames (end points included, no calculators)."""
        return [self._frame(p) for p in self.band]

