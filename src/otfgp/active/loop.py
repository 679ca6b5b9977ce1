"""The offline / iterative active-learning loop: :class:`ActiveLearner`.

Iteration 0 labels the task's initial frames (:meth:`Task.initial_frames`) and trains the
model on them. Each later iteration

1. runs the task's simulation with the current model (:meth:`Task.simulate`): the pool;
2. picks the batch: the task's special frames (:meth:`Task.special`) and up to
   ``batch_size - len(special)`` further pool frames by the ``query`` strategy of
   :mod:`otfgp.query` (``"random"``, ``"uncertainty"``, ``"greedy"``: the greedy batch is
   picked with the special frames already conditioned on, so it complements them), never a
   frame twice nor one equal to a special frame;
3. labels the batch with :func:`otfgp.batch.label_batch` (each frame in its own job
   directory ``labels/iteration_<iiii>/frame_<jjjj>/``, the labels stored there at once;
   retries; the label sanity checks of :mod:`otfgp.label_checks`);
4. asks the task whether it is solved (:meth:`Task.converged`), with the oracle's labels
   and the model's predictions made before training on them;
5. adds every labelled frame to the model (forces of the atoms the constraints leave free,
   by default; energies as ``add_energy`` says) and retrains once
   (:func:`otfgp.learning.add_labelled`, :func:`otfgp.learning.retrain`; with ``calibration``
   the calibration is refitted on the pre-update errors so far and the leave-one-out residuals);
6. appends a record to ``log.jsonl`` (with ``pre_update``: how the labelled frames'
   forces compare with the model's predictions and stds made before it learnt them) and
   checkpoints model and state (:mod:`otfgp.run_dir`:
   atomic files, the last ``keep_checkpoints`` kept, the directory locked while it runs);

until the task is solved or ``max_iterations`` iterations have run. Every oracle call is
counted: each label (a frame labelled once, however often the run was resumed) and each
failed attempt. A resumed run (``resume=True``) continues after the last checkpoint; the
labels of a batch that was cut short are reused from their job directories, so no label is
computed twice or lost.

Fixed atoms: the labels keep the labeller's forces on every atom (also fixed ones), but by
default (``train_atoms = "free"``) only the atoms the constraints leave free join the
training set. The relaxation never moves the others, their environments (a slab's bottom
layers, bulk-like) teach the model little about the free atoms, and each environment costs
kernel size (the exact GP's cost grows with the square of the training set).
``train_atoms = "all"`` trains on every atom.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .. import atomic_io, run_dir
from ..arguments import count, flag
from ..batch import BatchLabelError, BatchResult, job_directory, label_batch
from ..calculator import GPCalculator
from ..gp import GaussianProcess, Prediction
from ..label_checks import LabelChecks, labeller_id, labeller_name
from ..learning import (Labeller, LearningOptions, add_labelled, check_species, held_out_check, retrain,
                        running_calibration)
from ..query import greedy_variance_batch, max_uncertainty_batch, random_batch
from .task import IterationData, Task, free_atoms, same_structure

log = logging.getLogger(__name__)

QUERIES = ("random", "uncertainty", "greedy")
LABELS_DIR = "labels"
ITERATIONS_DIR = "iterations"
LABELLED_FILE = "labelled.extxyz"
MODEL_FILE = "model.otfgp"
RESULT_FILE = "result.json"


@dataclass
class ActiveOptions:
    """Settings of :class:`ActiveLearner`.

    Attributes:
        batch_size: frames labelled per iteration, the task's special frames included (1
            with one special frame: only that one; special frames beyond it are labelled
            all the same, with no query).
        query: how the other frames are picked from the pool: ``"random"``,
            ``"uncertainty"`` (largest epistemic force std) or ``"greedy"`` (each pick
            conditions the GP's variance before the next; :mod:`otfgp.query`).
        max_iterations: the most iterations after iteration 0 (the loop stops earlier when
            the task is solved).
        train_atoms: ``"free"``: train on the forces of the atoms the constraints leave
            free; ``"all"``: on every atom (see the module docstring).
        add_energy: train on the labelled energies too (``None``: whenever the labeller
            returns one); without, the energy reference is refitted (``energy_reference``).
        energy_reference: see :class:`otfgp.learning.LearningOptions`.
        optimize: optimise the hyperparameters at each retrain (until
            ``optimize_until_calls`` labels, ``None``: always), with
            ``hyperparameter_iterations`` L-BFGS-B iterations.
        map: map the model after each retrain (the simulations then run at mapped speed).
        retries: extra attempts of a frame whose labeller fails.
        on_failure: ``"raise"``: a frame that still fails stops the run after a checkpoint
            (:class:`otfgp.batch.BatchLabelError`; resume retries it, reusing the rest of the
            batch); ``"skip"``: the iteration goes on without it.
        calibration: refit the model's uncertainty calibration at each retrain (a form of
            :mod:`otfgp.calibration`, e.g. ``"neighbourhood"``, the on-the-fly learner's
            default) from the leave-one-out residuals and the loop's *pre-update errors*:
            each labelled frame's free-atom forces against the model's prediction made
            before it learnt them. ``None`` (default): no refit; the stds the tasks and
            queries compare (``target_std``, ``stop_std``, ``skip_std``) are then the model's
            as given, for an uncalibrated model the latent GP std. Either way the run
            reports how the pre-update errors compare with the stds (``log.jsonl``
            ``pre_update``, :attr:`ActiveResult.pre_update_calibration`).
        keep_checkpoints: how many checkpoints to keep.
        seed: seed of the random query (iteration i draws from ``[seed, i]``).
        label_max_force, label_max_energy_per_atom, label_max_stress, label_energy_jump,
        label_max_z, label_z_min_error: the label sanity checks, as in
            :class:`otfgp.learning.LearningOptions` (same defaults).
    """

    batch_size: int = 1
    query: str = "greedy"
    max_iterations: int = 30
    train_atoms: str = "free"
    add_energy: bool | None = False
    energy_reference: bool = True
    optimize: bool = True
    optimize_until_calls: int | None = None
    hyperparameter_iterations: int = 50
    map: bool = False
    retries: int = 1
    on_failure: str = "raise"
    keep_checkpoints: int = 3
    seed: int = 0
    calibration: str | None = None
    label_max_force: float | None = LearningOptions.label_max_force
    label_max_energy_per_atom: float | None = LearningOptions.label_max_energy_per_atom
    label_max_stress: float | None = LearningOptions.label_max_stress
    label_energy_jump: float | None = LearningOptions.label_energy_jump
    label_max_z: float | None = LearningOptions.label_max_z
    label_z_min_error: float = LearningOptions.label_z_min_error

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("max_iterations", 0), ("hyperparameter_iterations", 1),
                          ("retries", 0), ("keep_checkpoints", 1)):
            count(name, getattr(self, name), low)
        count("optimize_until_calls", self.optimize_until_calls, 0, allow_none=True)
        count("seed", self.seed, 0)  # numpy's random generators take no negative seed
        choices = {"query": QUERIES, "train_atoms": ("free", "all"), "on_failure": ("raise", "skip")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        for name in ("optimize", "map", "energy_reference"):
            flag(name, getattr(self, name))
        flag("add_energy", self.add_energy, allow_none=True)
        self.learning_options()  # the label_* checks are validated there

    def learning_options(self) -> LearningOptions:
        """The :class:`otfgp.learning.LearningOptions` of the shared training and label-check code."""
        # calibration None (the default): no refit, a calibrated model stays calibrated as it was
        return LearningOptions(
            add_energy=self.add_energy, add_stress=False, energy_reference=self.energy_reference,
            calibration=self.calibration,
            optimize=self.optimize, optimize_until_calls=self.optimize_until_calls,
            max_iterations=self.hyperparameter_iterations, map=self.map,
            label_max_force=self.label_max_force, label_max_energy_per_atom=self.label_max_energy_per_atom,
            label_max_stress=self.label_max_stress, label_energy_jump=self.label_energy_jump,
            label_max_z=self.label_max_z, label_z_min_error=self.label_z_min_error)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ActiveOptions":
        """Options from a mapping of field names; an unknown name is a ValueError naming it."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown active-learning options {bad}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class ActiveResult:
    """What :meth:`ActiveLearner.run` gives back (also written to ``result.json``).

    Attributes:
        converged: the task's termination test passed.
        iterations: iterations run after iteration 0.
        oracle_calls: every labeller call: the labels plus the failed attempts.
        labels: frames labelled.
        failed_attempts: labeller calls that gave no label.
        task: the task's :meth:`Task.result`.
        metrics: the last iteration's metrics (:meth:`Task.converged`).
        directory: the run directory.
        pre_update_calibration: the pre-update errors of every labelled frame after iteration
            0 (free atoms' force components; :func:`otfgp.learning.running_calibration`: RMSE,
            RMS latent and reported std, mean squared z-score, 1-std coverage) against the
            stds the model gave them; ``None`` before any.
    """

    converged: bool
    iterations: int
    oracle_calls: int
    labels: int
    failed_attempts: int
    task: dict[str, Any]
    metrics: dict[str, Any]
    directory: str
    pre_update_calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _the_labeller(labeller: Labeller, directory: str) -> Labeller:
    """The factory of a labeller object used in-process: the object itself, whatever the job."""
    return labeller


def _training_copy(labelled: Atoms) -> Atoms:
    """The labelled frame without constraints, so that its force labels are the labeller's
    on every atom (ASE's ``get_forces`` zeroes a fixed atom's)."""
    frame = Atoms(labelled.numbers, positions=labelled.positions, cell=labelled.cell, pbc=labelled.pbc)
    frame.calc = SinglePointCalculator(frame, **labelled.calc.results)
    return frame


class ActiveLearner:
    """Offline / iterative active learning of ``task`` (see the module docstring).

    Args:
        model: the model to train (usually untrained: iteration 0 seeds it). On resume the
            checkpoint's model replaces it; its ``priors`` and ``bounds`` (which model files
            do not store) are carried over.
        labeller: the oracle. Without ``executor``: an ASE calculator, a callable
            ``f(atoms)`` (:data:`otfgp.learning.Labeller`) or a labeller specification
            (``"emt"``, ``{"type": "espresso", ...}``), run in this process one frame after
            another. With ``executor``: a specification or a picklable factory
            (:func:`otfgp.batch.label_batch`).
        task: the problem (:class:`otfgp.active.Task`, e.g. :class:`otfgp.active.RelaxTask`).
        directory: the run directory (locked while the learner exists; see :meth:`close`).
        options: :class:`ActiveOptions` or a mapping of its fields; keyword arguments
            override single fields. On resume the checkpointed options apply, with the
            fields given here replacing theirs (e.g. more ``max_iterations``).
        executor: where the labels of a batch run (any ``concurrent.futures.Executor``:
            a process pool, Dask's ``Client.get_executor()``); ``None``: in this process.
        resume: continue the run in ``directory`` from its last checkpoint (a directory
            without one starts afresh); without it, a directory that holds a run is an error.

    Raises:
        otfgp.run_dir.RunDirError: the directory is locked by another process, holds a run
            (without ``resume``) or its checkpoint is damaged or of another task.
        ValueError: bad options.
    """

    def __init__(self, model: GaussianProcess, labeller: Labeller | str | Mapping[str, Any], task: Task,
                 directory: str | Path, options: ActiveOptions | Mapping[str, Any] | None = None,
                 executor: Executor | None = None, resume: bool = False, **overrides: Any) -> None:
        if not isinstance(task, Task):
            raise TypeError(f"task must implement otfgp.active.Task, got {type(task).__name__}")
        given = asdict(options) if isinstance(options, ActiveOptions) else dict(options or {})
        given.update(overrides)
        self.options = ActiveOptions.from_dict(given)
        self.directory = Path(directory)
        self.task = task
        self.model = model
        self.executor = executor
        self.labeller_name = labeller_name(labeller)
        self.labeller_id = labeller_id(labeller)
        if isinstance(labeller, (str, Mapping)) or executor is not None:
            self._labeller: Any = labeller
        else:
            self._labeller = functools.partial(_the_labeller, labeller)
        self.iteration = -1  # the last completed iteration (-1: none, not even iteration 0)
        self.labels = 0
        self.failed_attempts = 0
        self.converged = False
        self.labelled_files: list[str] = []  # relative to the run directory, in training order
        # job directories (relative) of labels a sanity check rejected, counted in failed_attempts
        self.counted_rejections: list[str] = []
        self.reference_energies: list[float | None] = []
        # per labelled frame after iteration 0: its pre-update errors, as a record of sums
        # (learning.pre_update_record) and as the calibration fit's samples
        self.pre_update_errors: list[dict[str, Any]] = []
        self.calibration_samples: list[dict[str, Any]] = []
        self.last_metrics: dict[str, Any] = {}
        self._checkpoint_index = 0
        self._lock = run_dir.RunLock(self.directory).acquire()
        try:
            self.checks = self._label_checks()
            if resume and (self.directory / run_dir.CHECKPOINT_DIR / run_dir.STATE_FILE).exists():
                self._restore(given)
            elif run_dir.holds_run(self.directory) and not resume:
                raise run_dir.RunDirError(
                    f"{self.directory} already holds a run ({', '.join(run_dir.holds_run(self.directory))}): "
                    f"continue it with resume=True (command line: 'otfgp active --resume {self.directory}') "
                    f"or choose another directory")
            elif resume and run_dir.holds_run(self.directory):
                run_dir.read_checkpoint(self.directory)  # raises: outputs without a checkpoint
        except BaseException:
            self._lock.release()
            raise

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the lock on the run directory."""
        self._lock.release()

    def __enter__(self) -> "ActiveLearner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def oracle_calls(self) -> int:
        """Every labeller call so far: labels plus failed attempts."""
        return self.labels + self.failed_attempts

    # ----------------------------------------------------------------- the loop
    def run(self) -> ActiveResult:
        """Iterate until the task is solved or ``max_iterations`` iterations have run."""
        if self.iteration < 0:
            self._iterate(0)
        while not self.converged and self.iteration < self.options.max_iterations:
            self._iterate(self.iteration + 1)
        result = self.result()
        atomic_io.write_model(self.directory / MODEL_FILE, self.model)
        atomic_io.write_json(self.directory / RESULT_FILE, result.to_dict(), indent=2)
        frames = [self._read_labelled(p) for p in self.labelled_files]
        if frames:
            atomic_io.write_atoms(self.directory / LABELLED_FILE, frames)
        log.info("active learning %s after %d iteration(s): %d oracle call(s)",
                 "converged" if self.converged else "stopped unconverged", self.iteration, self.oracle_calls)
        return result

    def result(self) -> ActiveResult:
        """The state of the run as an :class:`ActiveResult`."""
        return ActiveResult(converged=self.converged, iterations=max(self.iteration, 0),
                            oracle_calls=self.oracle_calls, labels=self.labels,
                            failed_attempts=self.failed_attempts, task=self.task.result(),
                            metrics=self.last_metrics, directory=str(self.directory),
                            pre_update_calibration=running_calibration(self.pre_update_errors))

    def _iterate(self, iteration: int) -> None:
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        pool: list[Atoms] = []
        # the task as the iteration finds it: a labelling failure checkpoints this, not the
        # state its simulation moved on to (MD, NEB), so the resumed iteration simulates the
        # same pool and reuses the labels stored for it
        task_state = copy.deepcopy(self.task.state())
        if iteration == 0:
            special = list(self.task.initial_frames())
            check_species(self.model.species, special)
            queried: list[int] = []
        else:
            workdir = self.directory / ITERATIONS_DIR / f"{iteration:04d}"
            workdir.mkdir(parents=True, exist_ok=True)
            pool = list(self.task.simulate(GPCalculator(self.model, uncertainty=False), workdir))
            timing["simulation"] = time.perf_counter() - t0
            special = list(self.task.special(pool))
            t = time.perf_counter()
            queried = self.query(pool, special, iteration)
            timing["query"] = time.perf_counter() - t
        frames = special + [pool[i] for i in queried]
        predictions = [self._predict(f) for f in frames]
        t = time.perf_counter()
        batch = self._label(frames, predictions, iteration, task_state)
        timing["labelling"] = time.perf_counter() - t
        labelled = batch.frames
        n_special = len(special)
        data = IterationData(iteration, labelled[:n_special], predictions[:n_special],
                             labelled[n_special:], predictions[n_special:], pool)
        converged, metrics = self.task.converged(data)
        held_out, samples = self._held_out(batch.frames, predictions, iteration)
        t = time.perf_counter()
        self._train(batch, self.calibration_samples + samples)
        if not self.model.trained:
            # nothing to simulate with: checkpointed as not done (its failed calls counted),
            # so a resume redoes it
            self._write_checkpoint(task_state)
            if batch.failures:
                raise BatchLabelError(batch)
            raise RuntimeError(f"iteration {iteration} gave the model no training data: no labelled frame "
                               f"has atoms to train on ({self.options.train_atoms} atoms)")
        timing["training"] = time.perf_counter() - t
        timing["total"] = time.perf_counter() - t0
        self.pre_update_errors += held_out
        self.calibration_samples += samples
        self.iteration = iteration
        self.converged = bool(converged)
        self.last_metrics = metrics
        record = {"step": iteration, "iteration": iteration, "oracle_calls": self.oracle_calls,
                  "labels": self.labels, "failed_attempts": self.failed_attempts,
                  "batch": len(frames), "special": n_special, "queried": [int(i) for i in queried],
                  "pool": len(pool), "skipped": [f.index for f in batch.failures],
                  "converged": self.converged, "metrics": metrics,
                  "pre_update": running_calibration(held_out),
                  "pre_update_calibration": running_calibration(self.pre_update_errors),
                  "training_environments": self.model.n_training_environments,
                  "hyperparameters": self.model.hyperparameters, "time_s": timing}
        atomic_io.append_text(self.directory / run_dir.LOG_FILE, json.dumps(record) + "\n")
        self._write_checkpoint()
        log.info("active iteration %d: %d frame(s) labelled, %d oracle call(s) so far, %s", iteration,
                 len(batch.indices), self.oracle_calls, "converged" if converged else "not converged")

    # ----------------------------------------------------------------- steps
    def query(self, pool: Sequence[Atoms], special: Sequence[Atoms], iteration: int) -> list[int]:
        """Indices into ``pool`` of the frames labelled besides ``special``: up to
        ``batch_size - len(special)`` by the ``query`` strategy, among the pool frames that
        equal neither a special frame nor an earlier pool frame."""
        k = self.options.batch_size - len(special)
        candidates: list[int] = []
        for i, frame in enumerate(pool):
            if any(same_structure(frame, s) for s in special) or any(
                    same_structure(frame, pool[j]) for j in candidates):
                continue
            candidates.append(i)
        k = min(k, len(candidates))
        if k <= 0:
            return []
        sub = [pool[i] for i in candidates]
        if self.options.query == "random":
            picks = random_batch(sub, k, rng=np.random.default_rng([self.options.seed, iteration]))
        elif self.options.query == "uncertainty":
            # scored over the atoms labelling would train: a never-trained fixed atom's std
            # stays whatever is labelled
            picks = max_uncertainty_batch(self.model, sub, k, atoms=self._train_atoms)
        else:
            picks = greedy_variance_batch(self._conditioned_on(special), sub, k, atoms=self._train_atoms)
        return [candidates[j] for j in picks]

    def _conditioned_on(self, frames: Sequence[Atoms]) -> GaussianProcess:
        """A copy of the model whose variance already knows ``frames`` (fantasy labels: the
        GP's variance does not depend on the label values), for the greedy query."""
        if not frames:
            return self.model
        fantasy = self.model.copy()
        for frame in frames:
            # zero fantasy forces: a model with data added is untrained until train(), so it
            # cannot predict the next frame's; the variance does not depend on them anyway
            bare = _structure(frame)
            fantasy.add_training_data(bare, forces=np.zeros((len(bare), 3)), atom_indices=self._train_atoms(frame))
        fantasy.train(optimize=False)
        return fantasy

    def _predict(self, frame: Atoms) -> Prediction | None:
        """The model's prediction of a frame before it learns it (None: no model yet)."""
        if not self.model.trained:
            return None
        return self.model.predict(_structure(frame), variance="exact")

    def _label(self, frames: list[Atoms], predictions: list[Prediction | None], iteration: int,
               task_state: Mapping[str, Any]) -> BatchResult:
        """Label the batch (reusing what an interrupted run stored) and count the calls.
        ``task_state``: the task's state before this iteration's simulation, which a failure
        checkpoints."""
        jobs = []
        for frame, pred in zip(frames, predictions):
            job = frame.copy()
            job.calc = None
            if pred is not None:  # the pre-update prediction for the z-score label check
                job.arrays["gp_forces"] = np.asarray(pred.forces)
                job.arrays["gp_force_stds"] = np.asarray(pred.force_stds)
            jobs.append(job)
        directory = self.directory / LABELS_DIR / f"iteration_{iteration:04d}"
        executor = self.executor or ThreadPoolExecutor(max_workers=1)
        try:
            batch = label_batch(jobs, self._labeller, directory, executor=executor, retries=self.options.retries,
                                on_failure="skip", checks=self.checks, labeller_id=self.labeller_id)
        finally:
            if self.executor is None:
                executor.shutdown(wait=True)
        fresh = set(batch.indices) - set(batch.reused)
        failed = sum(batch.calls.values()) - len(fresh)  # a labeller never built made no call
        self.failed_attempts += failed
        # A rejected label's call was counted as failed; accepted on resume, it is a label
        # now (counted below). Only rejections a checkpoint counted are taken back: after a
        # kill before the checkpoint the resumed run never counted that call.
        for i in batch.released:
            key = str(job_directory(directory, i).relative_to(self.directory))
            if key in self.counted_rejections:
                self.counted_rejections.remove(key)
                self.failed_attempts -= 1
        self.counted_rejections += [str(f.directory.relative_to(self.directory)) for f in batch.failures
                                    if f.rejected and f.attempts > 0]
        if batch.failures:
            # The failed calls are counted now and checkpointed at once (with the iteration
            # not done): a kill before the iteration's own checkpoint forgot them when the run
            # went on (on_failure = "skip"). The labels of this batch are stored in their job
            # directories and counted when a resumed run reuses them.
            self._write_checkpoint(task_state)
            if self.options.on_failure == "raise":
                raise BatchLabelError(batch)
        self.labels += len(batch.indices)
        for i in batch.indices:
            path = directory / f"frame_{i:04d}" / "labelled.traj"
            self.labelled_files.append(str(path.relative_to(self.directory)))
        return batch

    def _held_out(self, labelled: Sequence[Atoms | None], predictions: Sequence[Prediction | None],
                  iteration: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Each labelled frame's pre-update errors over the atoms the loop trains (a free
        held-out sample: the model predicted it before learning it): the records of sums
        and the calibration fit's samples (:func:`otfgp.learning.held_out_check`)."""
        records, samples = [], []
        for frame, pred in zip(labelled, predictions):
            if frame is None or pred is None:
                continue
            atoms = self._train_atoms(frame)
            if len(atoms) == 0:
                continue
            record, sample = held_out_check(self.model, pred, frame, math.sqrt(pred.noise_force_variance or 0.0),
                                            atoms=atoms)
            records.append({"iteration": iteration, **record})
            samples.append(sample)
        return records, samples

    def _train_atoms(self, frame: Atoms) -> np.ndarray:
        if self.options.train_atoms == "all":
            return np.arange(len(frame))
        return free_atoms(frame)

    def _train(self, batch: BatchResult, samples: Sequence[Mapping[str, Any]]) -> None:
        """Add every labelled frame of the batch, then retrain once (``samples``: the
        held-out samples a calibration refit uses)."""
        options = self.options.learning_options()
        added = 0
        for frame in batch.labelled:
            atoms = self._train_atoms(frame)
            if len(atoms) == 0:
                log.warning("a labelled frame has no free atoms; it is not trained on")
                continue
            add_labelled(self.model, _training_copy(frame), atoms, options, self.reference_energies)
            added += 1
        if added:
            retrain(self.model, options, calls=self.labels, samples=samples,
                    reference_energies=self.reference_energies)

    # ----------------------------------------------------------------- checkpoints
    def _label_checks(self) -> LabelChecks:
        """The label checks with the current options (quarantine: each batch's own)."""
        return LabelChecks(self.options.learning_options(), self.labeller_name, self.directory)

    def _write_checkpoint(self, task_state: Mapping[str, Any] | None = None) -> None:
        """Checkpoint the run after the last completed iteration; ``task_state`` (default
        the task's current state) is the task's part."""
        self._checkpoint_index += 1
        state = {
            "version": 1,
            "kind": "active",
            "step": self.iteration,
            "iteration": self.iteration,
            "model": f"model_{self._checkpoint_index:05d}.otfgp",
            "checkpoint_index": self._checkpoint_index,
            "task_name": self.task.name,
            "task": self.task.state() if task_state is None else task_state,
            "labels": self.labels,
            "failed_attempts": self.failed_attempts,
            "converged": self.converged,
            "labelled_files": self.labelled_files,
            "counted_rejections": self.counted_rejections,
            "reference_energies": self.reference_energies,
            "pre_update_errors": self.pre_update_errors,
            "calibration_samples": self.calibration_samples,
            "last_metrics": self.last_metrics,
            "options": asdict(self.options),
        }
        run_dir.write_checkpoint(self.directory, self.model, state, keep=self.options.keep_checkpoints)

    def _restore(self, given: Mapping[str, Any]) -> None:
        state = run_dir.read_checkpoint(self.directory)
        if state.get("kind") != "active":
            raise run_dir.RunDirError(f"{self.directory} holds an on-the-fly run, not an active-learning run")
        if state["task_name"] != self.task.name:
            raise run_dir.RunDirError(f"{self.directory} holds a {state['task_name']!r} run; this task is "
                                      f"{self.task.name!r}")
        model = run_dir.load_checkpoint_model(self.directory, state)
        model.priors, model.bounds = self.model.priors, dict(self.model.bounds)
        self.model = model
        self.options = ActiveOptions.from_dict({**state["options"], **given})
        self.checks = self._label_checks()
        self.task.restore(state["task"])
        self.iteration = int(state["iteration"])
        self.labels = int(state["labels"])
        self.failed_attempts = int(state["failed_attempts"])
        self.converged = bool(state["converged"])
        self.labelled_files = list(state["labelled_files"])
        self.counted_rejections = list(state.get("counted_rejections", []))  # older checkpoints: none
        self.reference_energies = list(state["reference_energies"])
        # older checkpoints kept no pre-update errors: the run's report starts from the resume
        self.pre_update_errors = list(state.get("pre_update_errors", []))
        self.calibration_samples = list(state.get("calibration_samples", []))
        self.last_metrics = dict(state["last_metrics"])
        self._checkpoint_index = int(state["checkpoint_index"])
        for path in self.labelled_files:  # the energy history of the label checks
            self.checks.accept(self._read_labelled(path))
        run_dir.cut_records(self.directory / run_dir.LOG_FILE, before_step=self.iteration + 1)
        log.info("active learning: resuming %s after iteration %d (%d oracle call(s) so far)",
                 self.directory, self.iteration, self.oracle_calls)

    def _read_labelled(self, path: str) -> Atoms:
        from ase.io import read

        return read(self.directory / path)


def _structure(frame: Atoms) -> Atoms:
    """A frame's structure without constraints or calculator (for predictions)."""
    return Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
