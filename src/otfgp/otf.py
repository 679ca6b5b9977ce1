"""On-the-fly learning: run ASE dynamics with the GP, call DFT only where it is unsure.

Output directory layout (all files written atomically):

- ``log.jsonl``: one JSON object per step (time, temperature, energies, max std, DFT flag,
  training size, hyperparameters);
- ``trajectory.extxyz``: the frames with per-atom ``force_stds``;
- ``dft/frame_<step>.extxyz``: every labelled frame, written as soon as the labeller returns
  (with a lossless ``frame_<step>.traj`` copy from which a resumed run reuses it), with the
  model's prediction made before it learnt the frame (arrays ``gp_forces``,
  ``gp_force_stds``: reported stds (the decision compares their epistemic part), and
  ``gp_latent_force_stds``: the GP's latent stds);
- ``quarantine/frame_<step>.traj`` + ``.json``: a labelled frame that failed the label
  sanity checks (:mod:`otfgp.label_checks`), never trained on, and why;
- ``checkpoint/state.json`` + ``checkpoint/model_<n>.otfgp``: model and MD state after
  every DFT call (and at the end), from which :meth:`OTF.resume` continues;
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
from ase.io import read, write

from . import atomic_io
from .calculator import GPCalculator
from .gp import GaussianProcess
from .label_checks import LabelChecks, LabelRejected, labeller_name
from .labellers import make_labeller
from .learning import (FrameUncertainty, LabellerError, Labeller, LearningOptions, add_and_retrain,
                       add_threshold_value, calibration_sample, choose_atoms, label, label_reasons,
                       pre_update_record, running_calibration, threshold_value)

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

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("every", "trajectory_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.audit_every is not None:
            if isinstance(self.audit_every, bool) or not isinstance(self.audit_every, int) \
                    or self.audit_every < 1 or self.audit_every % int(self.every):
                raise ValueError(f"audit_every must be a positive multiple of every ({self.every}), "
                                 f"got {self.audit_every!r}")
        if self.init_atoms < 0:
            raise ValueError("init_atoms must be >= 0")
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
    its inhomogeneous variant, the MTK barostats) and optimizers on a cell filter."""
    from ase.filters import UnitCellFilter, StrainFilter
    from ase.md.npt import NPT
    from ase.md.nptberendsen import NPTBerendsen

    barostats: tuple[type, ...] = (NPT, NPTBerendsen)
    try:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT
        barostats += (IsotropicMTKNPT, MTKNPT)
    except ImportError:  # older ASE
        pass
    return isinstance(dynamics, barostats) or isinstance(getattr(dynamics, "atoms", None),
                                                         (UnitCellFilter, StrainFilter))


def _rng_state(rng: Any) -> Any:
    if rng is None:
        return None
    if isinstance(rng, np.random.Generator):
        return {"kind": "generator", "state": rng.bit_generator.state}
    if hasattr(rng, "get_state"):
        state = rng.get_state()
        return {"kind": "legacy", "state": [state[0], state[1].tolist(), *state[2:]]}
    return None


def _set_rng_state(rng: Any, saved: Any) -> None:
    if rng is None or saved is None:
        return
    if saved["kind"] == "generator":
        rng.bit_generator.state = saved["state"]
    else:
        s = saved["state"]
        rng.set_state((s[0], np.array(s[1], dtype=np.uint32), *s[2:]))


class OTF:
    """On-the-fly learning with any ASE dynamics.

    Args:
        dynamics: an ASE dynamics object (VelocityVerlet, Langevin, NPTBerendsen, ...) built
            on the atoms to simulate; its atoms get a :class:`GPCalculator` of ``model``.
        model: the GaussianProcess to train (may be empty: step 0 seeds it).
        labeller: an ASE calculator giving reference energies/forces/stresses (DFT), a
            callable ``f(atoms)`` returning a calculator or a dict of results (see
            :data:`otfgp.learning.Labeller`), or a specification that
            :func:`otfgp.labellers.make_labeller` builds (``"emt"``, ``"module:function"``,
            ``{"type": "espresso", "kpts": [2, 2, 2]}``; pw.x then works in
            ``output_dir/pw``).
        **options: see :class:`OTFOptions`.

    After :meth:`run`, ``dft_calls`` lists the steps at which the labeller ran and
    ``timers`` the wall-time split.
    """

    def __init__(self, dynamics: Any, model: GaussianProcess,
                 labeller: Labeller | str | Mapping[str, Any], **options: Any) -> None:
        self.options = options if isinstance(options, OTFOptions) else OTFOptions.from_dict(options)
        self.dyn = dynamics
        self.atoms: Atoms = dynamics.atoms
        self.model = model
        name = labeller_name(labeller)  # named as the user gave it, before a specification is built
        if isinstance(labeller, (str, Mapping)):
            labeller = make_labeller(labeller, directory=Path(self.options.output_dir) / "pw")
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
        self.step = 0
        self.out = Path(self.options.output_dir)
        (self.out / "dft").mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoint").mkdir(parents=True, exist_ok=True)
        # label sanity checks; the energies of dft/ (a resumed run's earlier labels) seed them
        self.label_checks = LabelChecks(self.options, name, self.out, history=self.out / "dft")
        self.calc = _TimedGPCalculator(model, self.timers)
        self.atoms.calc = self.calc
        self._rng = np.random.default_rng(self.options.seed)
        self.cell_changes = cell_can_change(dynamics)  # turns the extrapolation checks on by default
        self._checkpoint_index = 0
        self._learned_at = -1  # step whose uncertainty check already happened (resume)
        self._logged_at = -1  # step already checked and logged by an earlier run() call

    # ----------------------------------------------------------------- helpers
    def threshold_value(self) -> float:
        """The current DFT-call threshold in eV/A (see :func:`otfgp.learning.threshold_value`)."""
        return threshold_value(self.options, self.model)

    def _label(self, frame: Atoms) -> Atoms:
        """Reference labels of ``frame``; reuses a frame already labelled at this step
        (a resumed run) so no DFT calculation is ever done twice."""
        path = self.out / "dft" / f"frame_{self.step:07d}.extxyz"
        exact = path.with_suffix(".traj")
        for stored in (exact, path):  # the lossless copy first: extxyz keeps 8 decimals
            if not stored.exists():
                continue
            old = read(stored)
            if len(old) == len(frame) and np.allclose(old.positions, frame.positions, atol=1e-8):
                log.info("step %d: reusing stored DFT labels from %s", self.step, stored)
                if not path.exists():
                    atomic_io.write_atoms(path, old)
                return old
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
            out.info["otf_step"] = self.step
            # Lossless copy first (a resumed run then repeats the uninterrupted one exactly),
            # then the readable extxyz that users and dft_frames.extxyz read.
            atomic_io.write_atoms(exact, out, format="traj")
            atomic_io.write_atoms(path, out)
            return out
        assert last is not None
        detail = last.program_output
        raise LabellerError(
            f"DFT labeller failed on the frame at step {self.step} ({len(frame)} atoms, "
            f"{frame.get_chemical_formula()}) after {attempts} attempt(s): {last}"
            + (f"; program output ends: {detail}" if detail else ""), detail)

    def _uncertainty(self) -> np.ndarray:
        """Epistemic force-component stds at the current positions (N x 3, eV/A), the ones
        the DFT decision compares; the reported and latent ones are left in
        ``self.calc.results`` (``force_stds``, ``latent_force_stds``)."""
        self.calc.uncertainty = self.options.uncertainty
        self.calc.reset()
        try:
            self.atoms.get_forces()
            stds = self.calc.results["epistemic_force_stds"]
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
            max_std = float(stds.max())
            reasons = label_reasons(FrameUncertainty.from_results(self.calc.results), self.options,
                                    self.model, self.cell_changes)
            if not reasons:
                if not (self.options.audit_every and self.step % self.options.audit_every == 0):
                    return False, max_std
                audit = True  # confident, but this step is labelled to measure the real error
        frame = Atoms(self.atoms.get_chemical_symbols(), positions=self.atoms.positions,
                      cell=self.atoms.cell, pbc=self.atoms.pbc)
        if stds is not None:  # the prediction before this frame is learnt goes with its labels
            frame.arrays["gp_forces"] = np.array(self.calc.results["forces"])
            frame.arrays["gp_force_stds"] = np.array(self.calc.results["force_stds"])
            frame.arrays["gp_latent_force_stds"] = np.array(self.calc.results["latent_force_stds"])
            sigma_n = self.model.hyperparameters["noise_force"]
        try:
            labelled = self._label(frame)
        except LabellerError as exc:
            self.failed_calls.append(self.step)
            if self.options.on_dft_failure == "skip" and not initial:
                log.error("%s; skipping this frame (on_dft_failure='skip')", exc)
                return False, max_std
            self._write_checkpoint(learned=False)  # all learnt so far stays; resume retries this step
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
            self.calibration_samples.append(calibration_sample(frame.arrays["gp_forces"], latent, labelled))
        self.dft_calls.append(self.step)
        retrain = add_and_retrain(self.model, labelled, chosen, self.options, calls=len(self.dft_calls),
                                  samples=self.calibration_samples)
        self.timers.training += retrain.training
        self.timers.mapping += retrain.mapping
        if retrain.warnings:
            self.hyperparameter_warnings.append({"step": self.step, "warnings": retrain.warnings})
        self._uncertainty()  # re-predict this step with the updated model (stds for the trajectory)
        why = "seed" if initial else ("audit" if audit else "; ".join(reasons))
        log.info("step %d: DFT call %d (%s), added atoms %s, training environments %d", self.step,
                 len(self.dft_calls), why, chosen.tolist(), self.model.n_training_environments)
        self._write_checkpoint()
        return True, max_std

    def _log_step(self, dft: bool, max_std: float) -> None:
        atoms = self.atoms
        dt = getattr(self.dyn, "dt", 0.0)
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
        if atoms.pbc.all() and atoms.cell.volume > 1e-8:
            entry["volume_A3"] = float(atoms.get_volume())
            stress = self.calc.results.get("stress")  # computed with the forces, no extra cost
            if stress is not None:
                entry["pressure_GPa"] = float(-np.mean(stress[:3]) / units.GPa)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.step % self.options.trajectory_every == 0:
            frame = atoms.copy()
            frame.calc = None
            frame.info["otf_step"] = self.step
            if "force_stds" in atoms.arrays:
                frame.arrays["force_stds"] = atoms.arrays["force_stds"]
            write(self.out / "trajectory.extxyz", frame, format="extxyz", append=True)

    # ----------------------------------------------------------------- checkpoint
    def _write_checkpoint(self, learned: bool = True) -> None:
        ck = self.out / "checkpoint"
        self._checkpoint_index += 1
        model_name = f"model_{self._checkpoint_index:05d}.otfgp"
        self.model.save(ck / model_name)
        atoms = self.atoms
        state = {
            "version": 1,
            "step": self.step,
            "dyn_nsteps": int(getattr(self.dyn, "nsteps", self.step)),
            "positions": atoms.positions.tolist(),
            "momenta": atoms.get_momenta().tolist(),
            "cell": atoms.cell.array.tolist(),
            "thermostat_rng": _rng_state(getattr(self.dyn, "rng", None)),
            "otf_rng": self._rng.bit_generator.state,
            "dft_calls": self.dft_calls,
            "failed_calls": self.failed_calls,
            "hyperparameter_warnings": self.hyperparameter_warnings,
            "pre_update_errors": self.pre_update_errors,
            "calibration_samples": self.calibration_samples,
            "timers": asdict(self.timers),
            "options": asdict(self.options),
            "model": model_name,
            "checkpoint_index": self._checkpoint_index,
            "learned": learned,  # False: the labeller failed at this step; resume retries it
        }
        atomic_io.write_json(ck / "state.json", state)
        for old in ck.glob("model_*.otfgp"):
            if old.name != model_name:
                old.unlink(missing_ok=True)

    def write_checkpoint(self) -> None:
        """Write model and MD state now (done automatically after every DFT call)."""
        self._write_checkpoint()

    @property
    def checkpoint_index(self) -> int:
        """Index of the last checkpoint written (0: none yet); it grows by one per checkpoint."""
        return self._checkpoint_index

    @classmethod
    def resume(cls, output_dir: str | os.PathLike, dynamics: Any,
               labeller: Labeller | str | Mapping[str, Any], **overrides: Any) -> "OTF":
        """Continue a run from its last checkpoint in ``output_dir``.

        ``dynamics`` must be built like the original one (same integrator, time step and
        thermostat settings) on atoms of the same system; positions, momenta, cell, step
        count and the thermostat's random state are restored from the checkpoint. Log and
        trajectory entries written after the checkpoint are dropped and regenerated; DFT
        frames labelled after it are reused, not recomputed.
        """
        out = Path(output_dir)
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        model = GaussianProcess.load(out / "checkpoint" / state["model"])
        options = dict(state["options"])
        options.update(overrides)
        options["output_dir"] = str(out)
        atoms = dynamics.atoms
        if len(atoms) != len(state["positions"]):
            raise ValueError("the dynamics' atoms do not match the checkpointed system")
        atoms.set_cell(state["cell"])
        atoms.set_positions(state["positions"])
        atoms.set_momenta(state["momenta"])
        if hasattr(dynamics, "nsteps"):
            dynamics.nsteps = state["dyn_nsteps"]
        _set_rng_state(getattr(dynamics, "rng", None), state["thermostat_rng"])
        otf = cls(dynamics, model, labeller, **options)
        otf.step = state["step"]
        otf.dft_calls = list(state["dft_calls"])
        otf.failed_calls = list(state["failed_calls"])
        otf.hyperparameter_warnings = list(state.get("hyperparameter_warnings", []))
        otf.pre_update_errors = list(state.get("pre_update_errors", []))
        otf.calibration_samples = list(state.get("calibration_samples", []))
        otf.timers = Timers(**state["timers"])
        otf.calc.timers = otf.timers
        otf._rng.bit_generator.state = state["otf_rng"]
        otf._checkpoint_index = state["checkpoint_index"]
        otf._learned_at = state["step"] if state.get("learned", True) else -1
        otf._truncate_outputs(state["step"])
        log.info("resumed at step %d with %d DFT calls and %d training environments",
                 otf.step, len(otf.dft_calls), model.n_training_environments)
        return otf

    def _truncate_outputs(self, step: int) -> None:
        """Drop log and trajectory entries of steps after the checkpoint (redone on resume)."""
        logf = self.out / "log.jsonl"
        if logf.exists():
            keep = [line for line in logf.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] < step]
            atomic_io.write_text(logf, "".join(line + "\n" for line in keep))
        traj = self.out / "trajectory.extxyz"
        if traj.exists():
            frames = [f for f in read(traj, index=":") if f.info.get("otf_step", -1) < step]
            if frames:
                atomic_io.write_atoms(traj, frames)
            else:
                traj.unlink()

    # ----------------------------------------------------------------- driver
    def run(self, steps: int) -> dict[str, Any]:
        """Run ``steps`` MD steps with on-the-fly learning; returns the summary."""
        start = time.perf_counter()
        total0 = self.timers.total
        show = self.options.progress if self.options.progress is not None else sys.stderr.isatty()
        from tqdm.auto import tqdm

        end = self.step + int(steps)
        bar = tqdm(total=int(steps), disable=not show, desc="otf", unit="step")
        try:
            if self.step == 0 and not self.model.trained:
                self._learn(initial=True)
                self._learned_at = 0
            while True:
                if self.step != self._logged_at:  # not the last step of a previous run()
                    dft, max_std = self.step in self.dft_calls, math.nan
                    if self.step % self.options.every == 0 and self.step != self._learned_at:
                        dft, max_std = self._learn(initial=False)
                    self._log_step(dft, max_std)
                    self._logged_at = self.step
                if self.step >= end:
                    break
                t = time.perf_counter()
                pred0 = self.timers.prediction
                self.dyn.step()
                if hasattr(self.dyn, "nsteps"):
                    self.dyn.nsteps += 1
                self.timers.md += (time.perf_counter() - t) - (self.timers.prediction - pred0)
                self.step += 1
                bar.update(1)
                bar.set_postfix(dft=len(self.dft_calls), env=self.model.n_training_environments)
        finally:
            bar.close()
            self.timers.total = total0 + time.perf_counter() - start
        self._final_model().save(self.out / "model.otfgp")
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
        if not (self.options.map and model.trained and model.mapped) or model.has_variance_maps:
            return model
        t = time.perf_counter()
        final = model.copy()
        final.map(tolerance=self.options.map_tolerance, variance=True)
        elapsed = time.perf_counter() - t
        self.timers.mapping += elapsed
        self.timers.total += elapsed
        return final

    def summary(self) -> dict[str, Any]:
        """DFT calls, steps, training size and the wall-time split."""
        return {
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
        }
