"""On-the-fly learning: run ASE dynamics with the GP, call DFT only where it is unsure.

Output directory layout (state files written atomically, see :mod:`otfgp.atomic_io`; the
directory is locked by the run, see :mod:`otfgp.run_dir`):

- ``log.jsonl``: one JSON object per step (time, temperature, energies, max std, DFT flag,
  training size, hyperparameters), appended to;
- ``trajectory.extxyz``: the frames with per-atom ``force_stds``, appended to (a resume
  cuts a record torn by a crash);
- ``dft/frame_<step>.extxyz``: every labelled frame, written as soon as the labeller returns
  (with a lossless ``frame_<step>.traj`` copy from which a resumed run reuses it), with the
  model's prediction made before it learnt the frame (arrays ``gp_forces``,
  ``gp_force_stds``: reported stds, and
  ``gp_latent_force_stds``: the GP's latent stds; info ``gp_energy``: its potential energy);
- ``quarantine/frame_<step>.traj`` + ``.json``: a labelled frame that failed the label
  sanity checks (:mod:`otfgp.label_checks`), never trained on, and why. A resume with the
  same labeller checks these labels again instead of calling it; once accepted they move to
  ``quarantine/released/``;
- ``checkpoint/state.json`` + ``checkpoint/model_<n>.otfgp``: model and MD state after
  every DFT call, every ``checkpoint_every`` steps or ``checkpoint_minutes`` minutes and at
  the end, from which :meth:`OTF.resume` continues; the last ``keep_checkpoints`` are
  kept (``checkpoint/state_<n>.json``), so a run can also go back to an older one;
- ``overrides.json``: the settings changed on each resume;
- ``otfgp.lock``: the lock file (:class:`otfgp.run_dir.RunLock`);
- ``model.otfgp`` (with mapped variances when the run maps) and ``summary.json`` at the end
  of a run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from . import atomic_io, dynamics_state, run_dir
from .arguments import count, flag, positive_number
from ._core import InputError
from .calculator import GPCalculator
from .gp import GaussianProcess
from .label_checks import LabelChecks, LabelRejected, labeller_id, labeller_name
from .labellers import make_labeller
from .learning import (FORCE_DECISION_STDS, FrameUncertainty, LabellerError, Labeller, LearningOptions,
                       add_and_retrain, add_threshold_value, calibration_sample, check_species, choose_atoms,
                       held_out_energy_stress, label, label_reasons, pre_update_record, running_calibration,
                       switch_due, switch_record, switch_to_scalable, threshold_value)
from .run_dir import RunDirError, RunLock

log = logging.getLogger(__name__)


@dataclass
class OTFOptions(LearningOptions):
    """Settings of an on-the-fly run: the learning step's (:class:`LearningOptions`:
    thresholds, atoms added, retraining, maps) plus the driver's own.

    The uncertainty is checked every ``every`` MD steps. With ``audit_every`` (a multiple of
    ``every``), the frame of every ``audit_every``-th step is labelled even when the model is
    confident: an audit, whose pre-update errors are an unbiased sample of the real error
    (``summary["audit_calibration"]``); the audited frame is then learnt like any other.
    The first frame of an untrained
    model is labelled and ``init_atoms`` random atoms of it (0: all) seed the model.
    ``on_dft_failure`` is ``"raise"`` (stop; resume retries the step) or ``"skip"`` (log
    and go on without the frame); a failed labeller is retried ``dft_retries`` times first.
    Every ``trajectory_every``-th step goes to the trajectory; ``output_dir`` receives all
    outputs; ``seed`` drives the choice of seed atoms; ``progress`` shows a progress bar
    (``None``: when stderr is a terminal).

    Besides after every DFT call, a checkpoint is written every ``checkpoint_every`` MD
    steps and every ``checkpoint_minutes`` minutes of wall time (``None``: not on that
    count), so a killed run redoes little; the last ``keep_checkpoints`` checkpoints are
    kept, so a run can go back to one from before a problem.

    ``scalable_after`` (training environments; ``None``: never; a :class:`LearningOptions`
    field, so ``fix otfgp/learn`` has it too) is the automatic switch: once an exact :class:`otfgp.GaussianProcess` holds more environments than this after a
    retrain, the run goes on with :meth:`otfgp.ScalableGP.from_gaussian_process` of it
    (trained, calibrated and energy-referenced like a retrain; :func:`otfgp.learning.switch_to_scalable`),
    whose cost no longer grows with the data. The switch is logged (``"model_switch"`` in
    that step's ``log.jsonl`` record, ``summary["model_switch"]``) and checkpointed; a
    resume after it continues with the scalable model. Threshold and measurements:
    docs/scalable.md.
    """

    every: int = 1
    audit_every: int | None = None
    init_atoms: int = 4
    on_dft_failure: str = "raise"
    dft_retries: int = 0
    trajectory_every: int = 1
    output_dir: str = "otf_run"
    seed: int = 0
    progress: bool | None = None
    checkpoint_every: int | None = 100
    checkpoint_minutes: float | None = 10.0
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("every", "trajectory_every", "keep_checkpoints"):
            count(name, getattr(self, name))
        count("checkpoint_every", self.checkpoint_every, allow_none=True)
        positive_number("checkpoint_minutes", self.checkpoint_minutes)
        if self.audit_every is not None:
            count("audit_every", self.audit_every)
            if self.audit_every % self.every:
                raise ValueError(f"audit_every must be a positive multiple of every ({self.every}), "
                                 f"got {self.audit_every!r}")
        count("init_atoms", self.init_atoms, 0)
        flag("progress", self.progress, allow_none=True)
        if self.on_dft_failure not in ("raise", "skip"):
            raise ValueError("on_dft_failure must be 'raise' or 'skip'")


@dataclass
class Timers:
    """Wall time split of a run (seconds)."""

    dft: float = 0.0
    training: float = 0.0
    mapping: float = 0.0
    prediction: float = 0.0
    md: float = 0.0
    total: float = 0.0


class _TimedGPCalculator(GPCalculator):
    """GPCalculator that adds the time spent predicting to a Timers object."""

    def __init__(self, model: GaussianProcess, timers: Timers) -> None:
        super().__init__(model, uncertainty=False)
        self.timers = timers

    def calculate(self, *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        try:
            super().calculate(*args, **kwargs)
        finally:
            self.timers.prediction += time.perf_counter() - t


def cell_can_change(dynamics: Any) -> bool:
    """True for dynamics that change the cell: ASE's barostats (NPT, NPTBerendsen and
    its inhomogeneous variant, the MTK barostats, LangevinBAOAB with an external stress)
    and optimizers on a cell filter."""
    from ase.filters import UnitCellFilter, StrainFilter
    from ase.md.npt import NPT
    from ase.md.nptberendsen import NPTBerendsen

    barostats: tuple[type, ...] = (NPT, NPTBerendsen)
    try:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT
        barostats += (IsotropicMTKNPT, MTKNPT)
    except ImportError:  # older ASE
        pass
    try:
        from ase.md.langevinbaoab import LangevinBAOAB
    except ImportError:  # older ASE
        pass
    else:
        if isinstance(dynamics, LangevinBAOAB):
            return getattr(dynamics, "externalstress", None) is not None
    return isinstance(dynamics, barostats) or isinstance(getattr(dynamics, "atoms", None),
                                                         (UnitCellFilter, StrainFilter))


class DynamicsError(RuntimeError):
    """The MD stopped: atoms came too close (the model's forces drove them together, or the
    time step is too large). The message says where, and what to change on resume."""


class OTF:
    """On-the-fly learning with any ASE dynamics.

    Args:
        dynamics: an ASE dynamics object built on the atoms to simulate: an MD integrator
            (VelocityVerlet, Langevin, LangevinBAOAB, Bussi, NoseHooverChainNVT, NPT,
            NPTBerendsen, IsotropicMTKNPT, ...) or an optimizer (BFGS, FIRE, ...) on the
            atoms or on a cell filter (``BFGS(FrechetCellFilter(atoms))``: on-the-fly
            relaxation, :meth:`run` stops at ``fmax``); the atoms (under the filter) get a
            :class:`GPCalculator` of ``model``. How each type is driven and checkpointed:
            :mod:`otfgp.dynamics_state` (another type runs too, with a warning that a
            resume will not continue its internal state exactly).
        model: the GaussianProcess (or ScalableGP) to train (may be empty: step 0 seeds it).
        labeller: an ASE calculator giving reference energies/forces/stresses (DFT), a
            callable ``f(atoms)`` returning a calculator or a dict of results (see
            :data:`otfgp.learning.Labeller`), or a specification that
            :func:`otfgp.labellers.make_labeller` builds (``"emt"``, ``"module:function"``,
            ``{"type": "espresso", "kpts": [2, 2, 2]}``; pw.x then works in
            ``output_dir/pw``).
        **options: see :class:`OTFOptions`.

    After :meth:`run`, ``dft_calls`` lists the steps at which the labeller ran and
    ``timers`` the wall-time split.

    The OTF locks ``output_dir`` (:class:`otfgp.run_dir.RunLock`) until :meth:`close` (or
    the end of a ``with`` block, or of the process): a second process on the directory
    gets a :class:`otfgp.run_dir.RunDirError`, and so does a new OTF on a directory that
    already holds a run (continue that one with :meth:`resume`).
    """

    def __init__(self, dynamics: Any, model: GaussianProcess,
                 labeller: Labeller | str | Mapping[str, Any], **options: Any) -> None:
        self._setup(dynamics, model, labeller, options, resuming=False)
        if model.trained:  # forces a dynamics cached before it had this model (deferred_calculator)
            dynamics_state.model_changed(self.dyn)

    def _setup(self, dynamics: Any, model: GaussianProcess, labeller: Labeller | str | Mapping[str, Any],
               options: Mapping[str, Any], resuming: bool) -> None:
        # a changing cell turns the extrapolation checks and energy + stress training on by default
        self.cell_changes = cell_can_change(dynamics)
        self.options = OTFOptions.from_dict(options).for_cell(self.cell_changes)
        if self.options.scalable_after is not None and getattr(model, "baseline", None) is not None:
            # refused now, not at the switch after hours of DFT calls
            raise ValueError("scalable_after: the scalable GP has no baselines yet, so a model with a baseline "
                             "cannot switch to it; give scalable_after=None or a model without a baseline")
        self.out = Path(self.options.output_dir)
        self._lock = RunLock(self.out).acquire()
        try:
            found = run_dir.holds_run(self.out)
            if found and not resuming:
                raise RunDirError(
                    f"{self.out} already holds an on-the-fly run ({', '.join(found)}): continue it with "
                    f"OTF.resume({str(self.out)!r}, ...) (command line: 'otfgp otf --resume {self.out}') "
                    f"or choose another output_dir; a new run there would append to its log and "
                    f"trajectory and reuse its DFT frames")
            self._init_state(dynamics, model, labeller)
        except BaseException:
            self._lock.release()
            raise

    def _init_state(self, dynamics: Any, model: GaussianProcess,
                    labeller: Labeller | str | Mapping[str, Any]) -> None:
        self.dyn = dynamics
        self.atoms: Atoms = dynamics_state.physical_atoms(dynamics)  # under a cell filter, if any
        check_species(model.species, [self.atoms])
        dynamics_state.check_supported(dynamics)
        self.optimizer = dynamics_state.is_optimizer(dynamics)
        # optimizers: whether the last run() stopped at fmax (None: not run yet / MD)
        self.converged: bool | None = None
        self.model = model
        name = labeller_name(labeller)  # named as the user gave it, before a specification is built
        self.labeller_id = labeller_id(labeller)  # stored with each DFT frame (_label)
        if isinstance(labeller, (str, Mapping)):
            labeller = make_labeller(labeller, directory=self.out / "pw")
        self.labeller = labeller
        self.timers = Timers()
        self.dft_calls: list[int] = []
        self.failed_calls: list[int] = []
        # retrains whose optimisation ended at a bound or abnormally: {"step", "warnings"}
        self.hyperparameter_warnings: list[dict[str, Any]] = []
        # per DFT call after the first: the model's pre-update errors (learning.pre_update_record)
        self.pre_update_errors: list[dict[str, Any]] = []
        # the same predictions component by component, for the calibration fit
        self.calibration_samples: list[dict[str, list[float]]] = []
        # the labeller's energy of every training structure this run added (energy reference)
        self.reference_energies: list[float | None] = []
        # the automatic switch to a ScalableGP (OTFOptions.scalable_after), once it happened
        self.model_switch: dict[str, Any] | None = None
        self.step = 0
        (self.out / "dft").mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoint").mkdir(parents=True, exist_ok=True)
        # label sanity checks; the energies of dft/ (a resumed run's earlier labels) seed them
        self.label_checks = LabelChecks(self.options, name, self.out, history=self.out / "dft",
                                        labeller_id=self.labeller_id)
        self.calc = _TimedGPCalculator(model, self.timers)
        self.atoms.calc = self.calc
        self._rng = np.random.default_rng(self.options.seed)
        self._checkpoint_index = 0
        self._learned_at = -1  # step whose uncertainty check already happened (resume)
        self._logged_at = -1  # step already checked and logged by an earlier run() call
        self._uncertainty_at = -1  # step whose last prediction computed the uncertainty
        self._dft_since_checkpoint = False
        self._checkpoint_step = 0  # step and time of the last checkpoint (periodic ones)
        self._checkpoint_time = time.monotonic()
        self._run_clock: tuple[float, float] | None = None  # (start, total before) of a run() going on
        self._last_temperature = math.nan

    def close(self) -> None:
        """Release the lock on ``output_dir`` (the OTF then must not run again)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> "OTF":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the process exit drops the lock anyway
            pass

    # ----------------------------------------------------------------- helpers
    def threshold_value(self) -> float:
        """The current DFT-call threshold in eV/A (see :func:`otfgp.learning.threshold_value`)."""
        return threshold_value(self.options, self.model)

    def _label(self, frame: Atoms) -> Atoms:
        """Reference labels of ``frame``; reuses a frame already labelled at this step
        (a resumed run), or this labeller's quarantined labels of it (checked again), so no
        DFT calculation is ever done twice."""
        path = self.out / "dft" / f"frame_{self.step:07d}.extxyz"
        exact = path.with_suffix(".traj")
        for stored in (exact, path):  # the lossless copy first: extxyz keeps 8 decimals
            if not stored.exists():
                continue
            try:
                old = read(stored)
            except Exception as exc:  # a torn file of a killed run: the other copy, or a new label
                log.warning("step %d: cannot read the stored DFT frame %s (%s: %s); not reusing it", self.step,
                            stored, type(exc).__name__, exc)
                continue
            made_by = old.info.get("labeller_id")
            if made_by is not None and made_by != self.labeller_id:
                # the labeller changed on resume: its labels must come from it, and the old
                # ones stay on disk beside the new
                for old_file in (exact, path):
                    if old_file.exists():
                        old_file.replace(old_file.with_name(old_file.name + f".labeller_{made_by}"))
                log.info("step %d: the stored DFT frame came from another labeller; labelling it again",
                         self.step)
                break
            if len(old) == len(frame) and np.allclose(old.positions, frame.positions, atol=1e-8):
                log.info("step %d: reusing stored DFT labels from %s", self.step, stored)
                # The labels from the stored copy, everything else from this step's frame as
                # a fresh label would have it: a .traj keeps no custom arrays (the pre-update
                # gp_* predictions), so the extxyz written from it would differ.
                reused = frame.copy()
                reused.calc = SinglePointCalculator(reused, **old.calc.results)
                reused.info["otf_step"] = self.step
                reused.info["labeller_id"] = self.labeller_id
                if not path.exists():
                    atomic_io.write_atoms(path, reused)
                return reused
        rejected = self.label_checks.quarantined(frame, self.step)
        if rejected is not None:
            # this labeller's labels of this frame, rejected before: the same labeller would
            # return the same, so they are checked again (the options may have changed)
            log.info("step %d: checking the quarantined labels of this frame again instead of calling the "
                     "labeller", self.step)
            self.label_checks.check(rejected, self.step, frame.arrays.get("gp_forces"),
                                    frame.arrays.get("gp_force_stds"))
            return self._stored_label(rejected, released=True)
        attempts = 1 + max(0, self.options.dft_retries)
        last: LabellerError | None = None
        for attempt in range(attempts):
            t = time.perf_counter()
            try:
                out = label(frame, self.labeller, stress=self.options.add_stress, checks=self.label_checks,
                            step=self.step)
            except LabelRejected:
                raise  # absurd labels: quarantined, not retried (a retry gives the same labels)
            except LabellerError as exc:
                last = exc
                log.warning("step %d: labeller failed (attempt %d/%d): %s", self.step, attempt + 1, attempts, exc)
                continue
            finally:
                self.timers.dft += time.perf_counter() - t
            return self._stored_label(out)
        assert last is not None
        detail = last.program_output
        raise LabellerError(
            f"DFT labeller failed on the frame at step {self.step} ({len(frame)} atoms, "
            f"{frame.get_chemical_formula()}) after {attempts} attempt(s): {last}"
            + (f"; program output ends: {detail}" if detail else ""), detail)

    def _stored_label(self, out: Atoms, released: bool = False) -> Atoms:
        """Store a new label of this step in ``dft/`` (``released``: it came out of the
        quarantine, whose files then move to ``quarantine/released/``)."""
        path = self.out / "dft" / f"frame_{self.step:07d}.extxyz"
        out.info["otf_step"] = self.step
        out.info["labeller_id"] = self.labeller_id
        # Lossless copy first (a resumed run then repeats the uninterrupted one exactly),
        # then the readable extxyz that users and dft_frames.extxyz read.
        atomic_io.write_atoms(path.with_suffix(".traj"), out, format="traj")
        atomic_io.write_atoms(path, out)
        if released:
            self.label_checks.release(self.step)
        return out

    def _uncertainty(self) -> np.ndarray:
        """The force-component stds the DFT decision compares at the current positions
        (N x 3, eV/A; latent or epistemic as ``force_decision`` says); the reported, latent
        and epistemic ones are left in ``self.calc.results``."""
        self.calc.uncertainty = self.options.uncertainty
        self.calc.reset()
        self._uncertainty_at = self.step
        try:
            self.atoms.get_forces()
            stds = self.calc.results[FORCE_DECISION_STDS[self.options.force_decision]]
        finally:
            self.calc.uncertainty = False
        return stds

    def _learn(self, initial: bool) -> tuple[bool, float]:
        """Check the uncertainty (or seed the model) and call DFT if needed (or due)."""
        audit = False
        if initial:
            stds = None
            max_std = math.inf
        else:
            stds = self._uncertainty()
            u = FrameUncertainty.from_results(self.calc.results, self.options.force_decision)
            max_std = u.max_force_std
            reasons = label_reasons(u, self.options, self.model, self.cell_changes)
            if not reasons:
                if not (self.options.audit_every and self.step % self.options.audit_every == 0):
                    return False, max_std
                audit = True  # confident, but this step is labelled to measure the real error
        frame = Atoms(self.atoms.get_chemical_symbols(), positions=self.atoms.positions,
                      cell=self.atoms.cell, pbc=self.atoms.pbc)
        if stds is not None:  # the prediction before this frame is learnt goes with its labels
            r = self.calc.results
            frame.arrays["gp_forces"] = np.array(r["forces"])
            frame.arrays["gp_force_stds"] = np.array(r["force_stds"])
            frame.arrays["gp_latent_force_stds"] = np.array(r["latent_force_stds"])
            frame.info["gp_energy"] = float(r["energy"])
            held_out = held_out_energy_stress(self.model, r["energy"], r.get("latent_energy_std"),
                                              r.get("stress"), r.get("latent_stress_stds"))
            sigma_n = self.model.hyperparameters["noise_force"]
        try:
            labelled = self._label(frame)
        except LabellerError as exc:
            self.failed_calls.append(self.step)
            if self.options.on_dft_failure == "skip" and not initial:
                log.error("%s; skipping this frame (on_dft_failure='skip')", exc)
                return False, max_std
            self._write_checkpoint(learned=False, logged=False)  # all learnt so far stays; resume retries this step
            raise
        if initial:
            n = min(self.options.init_atoms or len(frame), len(frame))
            chosen = np.sort(self._rng.choice(len(frame), n, replace=False))
        else:
            chosen = choose_atoms(stds.max(axis=1), add_threshold_value(self.options, self.model),
                                  self.options.max_atoms_added)
        if stds is not None:
            record = pre_update_record(frame.arrays["gp_forces"], frame.arrays["gp_latent_force_stds"],
                                       labelled, sigma_n, reported_stds=frame.arrays["gp_force_stds"])
            self.pre_update_errors.append({"step": self.step, "audit": audit, **record})
            latent = frame.arrays["gp_latent_force_stds"] ** 2
            self.calibration_samples.append(calibration_sample(frame.arrays["gp_forces"], latent, labelled,
                                                               self.model.force_scale_radius, *held_out))
        self.dft_calls.append(self.step)
        retrain = add_and_retrain(self.model, labelled, chosen, self.options, calls=len(self.dft_calls),
                                  samples=self.calibration_samples, reference_energies=self.reference_energies)
        self.timers.training += retrain.training
        self.timers.mapping += retrain.mapping
        if retrain.warnings:
            self.hyperparameter_warnings.append({"step": self.step, "warnings": retrain.warnings})
        self._maybe_switch()
        self._uncertainty()  # re-predict this step with the updated model (stds for the trajectory)
        dynamics_state.model_changed(self.dyn)  # nothing the dynamics kept from the old model's forces
        why = "seed" if initial else ("audit" if audit else "; ".join(reasons))
        log.info("step %d: DFT call %d (%s), added atoms %s, training environments %d", self.step,
                 len(self.dft_calls), why, chosen.tolist(), self.model.n_training_environments)
        self._dft_since_checkpoint = True  # checkpointed once this step is logged
        return True, max_std

    def _maybe_switch(self) -> None:
        """The automatic switch to a ScalableGP (see :class:`OTFOptions`), when due."""
        if not switch_due(self.model, self.options):
            return
        limit = self.options.scalable_after
        t = time.perf_counter()
        model, retrain = switch_to_scalable(self.model, self.options, samples=self.calibration_samples,
                                            reference_energies=self.reference_energies)
        elapsed = time.perf_counter() - t
        self.timers.training += elapsed
        if retrain.warnings:
            self.hyperparameter_warnings.append({"step": self.step, "warnings": retrain.warnings})
        self.model = model
        self.calc.model = model
        self.calc.reset()
        self.model_switch = switch_record(model, self.options, self.step)
        log.info("step %d: switched to the scalable GP at %d training environments (threshold %d; "
                 "%d coefficients, rank %d) in %.2f s", self.step, model.n_training_environments, limit,
                 model.n_coefficients, model.rank, elapsed)

    def _timestep(self) -> float:
        """The MD time step (ASE units); 0 for optimizers (their ``dt``, if any, is no time)."""
        return 0.0 if self.optimizer else float(getattr(self.dyn, "dt", 0.0))

    def _log_step(self, dft: bool, max_std: float) -> None:
        atoms = self.atoms
        dt = self._timestep()
        entry = {
            "step": self.step,
            "time_fs": self.step * dt / units.fs,
            "temperature_K": float(atoms.get_temperature()),
            "potential_energy_eV": float(atoms.get_potential_energy()),
            "kinetic_energy_eV": float(atoms.get_kinetic_energy()),
            "max_std_eV_per_A": None if not math.isfinite(max_std) else max_std,
            "threshold_eV_per_A": self.threshold_value() if self.model.trained else None,
            "dft": dft,
            "training_environments": self.model.n_training_environments,
            "training_labels": self.model.n_labels,
            "hyperparameters": self.model.hyperparameters,
        }
        if self.model_switch is not None and self.model_switch["step"] == self.step:
            entry["model_switch"] = self.model_switch  # the event, in the record of its step
        if self.optimizer:  # the optimizer's convergence measure, on the model's forces
            entry["fmax_eV_per_A"] = dynamics_state.max_force(self.dyn)
        if atoms.pbc.all() and atoms.cell.volume > 1e-8:
            entry["volume_A3"] = float(atoms.get_volume())
            stress = self.calc.results.get("stress")  # computed with the forces, no extra cost
            if stress is not None:
                entry["pressure_GPa"] = float(-np.mean(stress[:3]) / units.GPa)
        self._last_temperature = entry["temperature_K"]
        atomic_io.append_text(self.out / run_dir.LOG_FILE, json.dumps(entry) + "\n")
        if self.step % self.options.trajectory_every == 0:
            frame = atoms.copy()
            frame.calc = None
            frame.info["otf_step"] = self.step
            if "force_stds" in atoms.arrays:
                frame.arrays["force_stds"] = atoms.arrays["force_stds"]
            atomic_io.append_atoms(self.out / run_dir.TRAJECTORY_FILE, frame)

    # ----------------------------------------------------------------- checkpoint
    def _write_checkpoint(self, learned: bool = True, logged: bool = True) -> None:
        """Checkpoint the model and the MD state at ``self.step``.

        ``logged``: the step's log and trajectory records are written (a resume keeps
        them and goes on with the next MD step); ``learned`` without ``logged``: the step's
        uncertainty check is done but not logged (checkpoints of earlier versions);
        neither: the check is to be redone (the labeller failed; resume retries it).
        """
        self._checkpoint_index += 1
        model_name = f"model_{self._checkpoint_index:05d}.otfgp"
        atoms = self.atoms
        timers = asdict(self.timers)
        if self._run_clock is not None:  # mid-run: the wall time so far, so fractions stay <= 100%
            start, before = self._run_clock
            timers["total"] = before + time.perf_counter() - start
        state = {
            "version": 3,
            "step": self.step,
            "dyn_nsteps": int(getattr(self.dyn, "nsteps", self.step)),
            "positions": atoms.positions.tolist(),
            "momenta": atoms.get_momenta().tolist(),
            "cell": atoms.cell.array.tolist(),
            "thermostat_rng": dynamics_state.rng_state(getattr(self.dyn, "rng", None)),
            # the integrator's / optimizer's own variables (NPT's h and eta, a BFGS Hessian, ...)
            "dynamics": dynamics_state.get_state(self.dyn),
            "otf_rng": self._rng.bit_generator.state,
            "dft_calls": self.dft_calls,
            "failed_calls": self.failed_calls,
            "hyperparameter_warnings": self.hyperparameter_warnings,
            "pre_update_errors": self.pre_update_errors,
            "calibration_samples": self.calibration_samples,
            "reference_energies": self.reference_energies,
            "model_switch": self.model_switch,
            "timers": timers,
            "options": asdict(self.options),
            "model": model_name,
            "checkpoint_index": self._checkpoint_index,
            "learned": learned,
            "logged": logged and self._logged_at == self.step,
            # the step's last prediction had uncertainties (a resume redoes it: same forces
            # for the next MD step, same force_stds, as in an uninterrupted run)
            "uncertainty": self._uncertainty_at == self.step,
        }
        run_dir.write_checkpoint(self.out, self.model, state, keep=self.options.keep_checkpoints)
        self._dft_since_checkpoint = False
        self._checkpoint_step = self.step
        self._checkpoint_time = time.monotonic()

    def _checkpoint_due(self) -> bool:
        """A DFT call since the last checkpoint, or a periodic checkpoint is due."""
        o = self.options
        return (self._dft_since_checkpoint
                or (o.checkpoint_every is not None and self.step - self._checkpoint_step >= o.checkpoint_every)
                or (o.checkpoint_minutes is not None
                    and time.monotonic() - self._checkpoint_time >= 60.0 * o.checkpoint_minutes))

    def write_checkpoint(self) -> None:
        """Write model and MD state now (done automatically after every DFT call, and
        every ``checkpoint_every`` steps / ``checkpoint_minutes`` minutes)."""
        self._write_checkpoint()

    @property
    def checkpoint_index(self) -> int:
        """Index of the last checkpoint written (0: none yet); it grows by one per checkpoint."""
        return self._checkpoint_index

    @classmethod
    def resume(cls, output_dir: str | os.PathLike, dynamics: Any,
               labeller: Labeller | str | Mapping[str, Any], checkpoint: int | None = None,
               **overrides: Any) -> "OTF":
        """Continue a run from its last checkpoint in ``output_dir`` (or from the kept
        checkpoint number ``checkpoint``, which then becomes the last one).

        ``dynamics`` must be built like the original one (same integrator or optimizer,
        time step and thermostat settings) on atoms of the same system; positions,
        momenta, cell, step count, the thermostat's random state and the dynamics' own
        variables (:mod:`otfgp.dynamics_state`: NPT's barostat, a Nose-Hoover chain, a BFGS
        Hessian, ...) are restored from the checkpoint. Log and
        trajectory entries written after the checkpoint (and a record torn by a crash)
        are dropped and regenerated; DFT frames labelled after it are reused, not
        recomputed. ``overrides`` change :class:`OTFOptions` fields from here on (e.g. a
        lower ``threshold`` after an MD collision); they are recorded in
        ``overrides.json``.

        Raises:
            RunDirError: another process holds the directory, or its checkpoint is
                missing or damaged (the message says how to recover).
        """
        out = Path(output_dir)
        with RunLock(out):  # held from reading the state on (the OTF takes it over)
            state = run_dir.read_checkpoint(out, checkpoint)
            model = run_dir.load_checkpoint_model(out, state)
            options = dict(state["options"])
            # a threshold of the other kind given on resume replaces the checkpointed one
            if overrides.get("relative_threshold") is not None and "threshold" not in overrides:
                options["threshold"] = None
            if overrides.get("threshold") is not None and "relative_threshold" not in overrides:
                options["relative_threshold"] = None
            changed = {k: v for k, v in overrides.items() if options.get(k, object()) != v and k != "output_dir"}
            options.update(overrides)
            options["output_dir"] = str(out)
            atoms = dynamics_state.physical_atoms(dynamics)
            if len(atoms) != len(state["positions"]):
                raise ValueError("the dynamics' atoms do not match the checkpointed system")
            atoms.set_cell(state["cell"])
            atoms.set_positions(state["positions"])
            atoms.set_momenta(state["momenta"])
            if hasattr(dynamics, "nsteps"):
                dynamics.nsteps = state["dyn_nsteps"]
            dynamics_state.set_rng_state(getattr(dynamics, "rng", None), state["thermostat_rng"])
            dynamics_state.set_state(dynamics, state.get("dynamics"))
            otf = cls.__new__(cls)
            otf._setup(dynamics, model, labeller, options, resuming=True)
            if checkpoint is not None:
                run_dir.drop_newer_checkpoints(out, state)
            if changed:
                run_dir.record_overrides(out, {"step": state["step"], "checkpoint": state["checkpoint_index"],
                                               "otf": changed})
        otf.step = state["step"]
        otf.dft_calls = list(state["dft_calls"])
        otf.failed_calls = list(state["failed_calls"])
        otf.hyperparameter_warnings = list(state.get("hyperparameter_warnings", []))
        otf.pre_update_errors = list(state.get("pre_update_errors", []))
        otf.calibration_samples = list(state.get("calibration_samples", []))
        otf.reference_energies = list(state.get("reference_energies", []))
        otf.model_switch = state.get("model_switch")
        otf.timers = Timers(**state["timers"])
        otf.calc.timers = otf.timers
        otf._rng.bit_generator.state = state["otf_rng"]
        otf._checkpoint_index = state["checkpoint_index"]
        otf._checkpoint_step = state["step"]
        otf._learned_at = state["step"] if state.get("learned", True) else -1
        logged = bool(state.get("logged", False))
        otf._truncate_outputs(state["step"] + 1 if logged else state["step"])
        if logged:
            otf._logged_at = state["step"]
        if state.get("uncertainty"):
            otf._uncertainty()
        log.info("resumed at step %d with %d DFT calls and %d training environments",
                 otf.step, len(otf.dft_calls), model.n_training_environments)
        return otf

    def _truncate_outputs(self, before_step: int) -> None:
        """Cut log and trajectory back to the steps before ``before_step`` (the resumed run
        redoes the others), dropping a record torn by a crash."""
        for name in run_dir.APPEND_ONLY_FILES:
            run_dir.cut_records(self.out / name, before_step)

    # ----------------------------------------------------------------- driver
    def _step_dynamics(self) -> None:
        """One MD step; atoms driven too close together stop the run with a DynamicsError."""
        try:
            dynamics_state.before_step(self.dyn)  # what ASE's own run() does first (NPT: initialize)
            self.dyn.step()
        except InputError as exc:
            if "apart" not in str(exc):
                raise
            dt = self._timestep() / units.fs
            thr = self.threshold_value() if self.model.trained else math.nan
            raise DynamicsError(
                f"the MD stopped between steps {self.step} and {self.step + 1} (temperature "
                f"{self._last_temperature:.0f} K at step {self.step}, time step {dt:g} fs): {exc}. The "
                f"model's forces (or too long a time step) drove atoms together. Try a lower DFT threshold "
                f"(threshold, now {thr:.4g} eV/A) or checking every step (every = 1) so that the model is "
                f"corrected sooner, or a smaller time step. The last checkpoint (step "
                f"{self._checkpoint_step}) is intact: resume from it with changed settings "
                f"(OTF.resume(..., threshold=...); command line: otfgp otf --resume {self.out} --set "
                f"otf.threshold=...)") from exc

    def run(self, steps: int, fmax: float | None = None) -> dict[str, Any]:
        """Run ``steps`` MD steps with on-the-fly learning; returns the summary.

        With an optimizer, ``steps`` is the most steps to take: the run stops as soon as the
        largest force (with a cell filter, also the cell's generalised forces) of the model
        is below ``fmax`` (eV/A; default: the optimizer's ``fmax`` if set, else 0.05, ASE's
        default) at a geometry whose uncertainty was checked (whatever ``every`` says), and
        ``summary["converged"]`` tells whether it did. The model's forces, not DFT's: the
        model is confident there, so they agree to about the threshold.

        Raises:
            ValueError: ``fmax`` given for an MD integrator.
            LabellerError: the labeller failed (after a checkpoint; resume retries the step).
            DynamicsError: atoms came too close together (the last checkpoint stays).
        """
        if not self._lock.held:
            raise RunDirError(f"this OTF was closed; continue its run with OTF.resume({str(self.out)!r}, ...)")
        if self.optimizer:
            if fmax is None:
                fmax = getattr(self.dyn, "fmax", None)
            fmax = 0.05 if fmax is None else float(fmax)
            if not fmax > 0 or not math.isfinite(fmax):
                raise ValueError(f"fmax must be a positive number (eV/A), got {fmax!r}")
            self.dyn.fmax = fmax  # what the optimizer's own converged() compares with
            self.converged = False
        elif fmax is not None:
            raise ValueError(f"fmax applies to optimizers (BFGS, FIRE, ...); {type(self.dyn).__name__} "
                             f"runs the number of steps given")
        start = time.perf_counter()
        total0 = self.timers.total
        self._run_clock = (start, total0)
        show = self.options.progress if self.options.progress is not None else sys.stderr.isatty()
        from tqdm.auto import tqdm

        end = self.step + int(steps)
        bar = tqdm(total=int(steps), disable=not show, desc="otf", unit="step")
        try:
            if self.step == 0 and not self.model.trained:
                self._learn(initial=True)
                self._learned_at = 0
                # before anything is logged: a run killed from here on always has a checkpoint
                # (a log without one would be refused on resume)
                self._write_checkpoint(logged=False)
            while True:
                if self.step != self._logged_at:  # not the last step of a previous run()
                    dft, max_std = self.step in self.dft_calls, math.nan
                    # an optimizer's final geometry is always checked, whatever `every` says
                    due = self.step % self.options.every == 0 or (self.optimizer and self.dyn.converged())
                    if due and self.step != self._learned_at:
                        dft, max_std = self._learn(initial=False)
                    self._log_step(dft, max_std)
                    self._logged_at = self.step
                    if self._checkpoint_due():
                        self._write_checkpoint()
                if self.optimizer and self.dyn.converged():  # on the (possibly just retrained) model
                    self.converged = True
                    break
                if self.step >= end:
                    break
                t = time.perf_counter()
                pred0 = self.timers.prediction
                self._step_dynamics()
                if hasattr(self.dyn, "nsteps"):
                    self.dyn.nsteps += 1
                self.timers.md += (time.perf_counter() - t) - (self.timers.prediction - pred0)
                self.step += 1
                bar.update(1)
                bar.set_postfix(dft=len(self.dft_calls), env=self.model.n_training_environments)
        finally:
            bar.close()
            self._run_clock = None
            self.timers.total = total0 + time.perf_counter() - start
        atomic_io.write_model(self.out / "model.otfgp", self._final_model())
        self._write_checkpoint()
        summary = self.summary()
        atomic_io.write_json(self.out / "summary.json", summary, indent=2)
        frames = sorted((self.out / "dft").glob("frame_*.extxyz"))
        if frames:
            atomic_io.write_atoms(self.out / "dft_frames.extxyz", [read(p) for p in frames])
        log.info("OTF summary: %s", json.dumps(summary))
        return summary

    def _final_model(self) -> GaussianProcess:
        """The model to hand to users: with ``map``, one whose maps include the reduced
        variance, so that ``GPCalculator(GaussianProcess.load(...))`` predicts uncertainties
        at mapped speed. The variance is mapped on a copy: the run's own model (and hence
        every later decision of this run) stays as it was."""
        model = self.model
        if getattr(model, "mapped_by_construction", False) or not (self.options.map and model.trained and model.mapped) \
                or model.has_variance_maps:
            return model
        t = time.perf_counter()
        final = model.copy()
        final.map(tolerance=self.options.map_tolerance, variance=True)
        elapsed = time.perf_counter() - t
        self.timers.mapping += elapsed
        self.timers.total += elapsed
        return final

    def summary(self) -> dict[str, Any]:
        """DFT calls, steps, training size and the wall-time split (optimizers: also
        ``converged``, the model's final ``fmax_eV_per_A`` and the target)."""
        out = {
            "steps": self.step,
            "dft_calls": len(self.dft_calls),
            "dft_call_steps": list(self.dft_calls),
            "failed_dft_steps": list(self.failed_calls),
            "training_environments": self.model.n_training_environments,
            "training_labels": self.model.n_labels,
            "hyperparameters": self.model.hyperparameters,
            "hyperparameter_warnings": list(self.hyperparameter_warnings),
            # held-out check of the uncertainty: each DFT frame predicted before it was learnt
            "pre_update_calibration": running_calibration(self.pre_update_errors),
            # the same on audited frames only (labelled although the model was confident)
            "audit_steps": [r["step"] for r in self.pre_update_errors if r.get("audit")],
            "audit_calibration": running_calibration([r for r in self.pre_update_errors if r.get("audit")]),
            "wall_time_s": asdict(self.timers),
            "model": type(self.model).__name__,
            "model_switch": self.model_switch,
        }
        if self.optimizer:
            out["converged"] = self.converged
            out["fmax_eV_per_A"] = dynamics_state.max_force(self.dyn)  # the model's, at the last step
            out["fmax_target_eV_per_A"] = getattr(self.dyn, "fmax", None)
        return out
