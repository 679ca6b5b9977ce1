"""On-the-fly learning: run ASE dynamics with the GP, call DFT only where it is unsure.

Output directory layout (all files written atomically):

- ``log.jsonl``: one JSON object per step (time, temperature, energies, max std, DFT flag,
  training size, hyperparameters);
- ``trajectory.extxyz``: the frames with per-atom ``force_stds``;
- ``dft/frame_<step>.extxyz``: every labelled frame, written as soon as the labeller returns;
- ``checkpoint/state.json`` + ``checkpoint/model_<n>.otfgp``: model and MD state after
  every DFT call (and at the end), from which :meth:`OTF.resume` continues;
- ``model.otfgp`` and ``summary.json`` at the end of a run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import BaseCalculator
from ase.io import read, write

from .calculator import GPCalculator
from .gp import GaussianProcess

log = logging.getLogger(__name__)


class LabellerError(RuntimeError):
    """The reference (DFT) calculation of a frame failed or returned unusable labels."""


@dataclass
class OTFOptions:
    """Settings of an on-the-fly run.

    Thresholds compare with the largest predicted force-component standard deviation of
    the frame (eV/A). Give either ``threshold`` (absolute, eV/A) or ``relative_threshold``
    (multiple of the current force-noise hyperparameter sigma_n, as in the FLARE paper);
    the relative threshold never drops below ``min_threshold`` eV/A, because with
    noise-free labels sigma_n collapses to its bound and DFT would be called almost every
    step. ``add_threshold`` (same kind as the main threshold) selects which atoms of a
    labelled frame join the training set: up to ``max_atoms_added`` of those above it,
    most uncertain first (at least the most uncertain one).

    With ``map`` the model is re-mapped (spline tables, :meth:`GaussianProcess.map`) after
    every retrain, so the MD steps between DFT calls run at mapped speed. ``uncertainty``
    says which variance the DFT decision uses: ``"exact"`` (default; the GP's own variance,
    paid only on the steps that are checked) or ``"mapped"`` (the calibrated reduced
    variance, whose cost does not grow with the training set).
    """

    threshold: float | None = 0.05
    relative_threshold: float | None = None
    min_threshold: float = 0.005
    add_threshold: float | None = None
    max_atoms_added: int = 1
    every: int = 1
    init_atoms: int = 4
    add_energy: bool = False
    add_stress: bool = False
    optimize: bool = True
    optimize_until_calls: int | None = 20
    optimize_until_size: int | None = None
    max_iterations: int = 50
    on_dft_failure: str = "raise"
    dft_retries: int = 0
    trajectory_every: int = 1
    output_dir: str = "otf_run"
    seed: int = 0
    progress: bool | None = None
    map: bool = True
    map_tolerance: float = 5e-4
    uncertainty: str = "exact"

    def __post_init__(self) -> None:
        if self.threshold is None and self.relative_threshold is None:
            raise ValueError("give threshold (eV/A) or relative_threshold (x sigma_n)")
        if self.threshold is not None and self.relative_threshold is not None:
            raise ValueError("give either threshold or relative_threshold, not both")
        for name in ("threshold", "relative_threshold", "add_threshold", "min_threshold"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("max_atoms_added", "every", "trajectory_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.init_atoms < 0:
            raise ValueError("init_atoms must be >= 0")
        if self.uncertainty not in ("exact", "mapped"):
            raise ValueError(f"uncertainty must be 'exact' or 'mapped', got {self.uncertainty!r}")
        if self.uncertainty == "mapped" and not self.map:
            raise ValueError("uncertainty = 'mapped' needs map = true")
        if not (isinstance(self.map_tolerance, (int, float)) and self.map_tolerance > 0):
            raise ValueError(f"map_tolerance must be a positive number, got {self.map_tolerance!r}")
        if self.on_dft_failure not in ("raise", "skip"):
            raise ValueError("on_dft_failure must be 'raise' or 'skip'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OTFOptions":
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown OTF options {sorted(bad)}; known: {sorted(known)}")
        if d.get("relative_threshold") is not None and "threshold" not in d:
            d = {**d, "threshold": None}  # relative mode: the absolute default does not apply
        return cls(**d)


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


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_atomic_atoms(path: Path, atoms: Atoms | list[Atoms]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")  # hidden: never matches frame_*.extxyz
    write(tmp, atoms, format="extxyz")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        labeller: an ASE calculator giving reference energies/forces/stresses (DFT), or a
            callable ``f(atoms) -> Calculator``.
        **options: see :class:`OTFOptions`.

    After :meth:`run`, ``dft_calls`` lists the steps at which the labeller ran and
    ``timers`` the wall-time split.
    """

    def __init__(self, dynamics: Any, model: GaussianProcess,
                 labeller: BaseCalculator | Callable[[Atoms], BaseCalculator], **options: Any) -> None:
        self.options = options if isinstance(options, OTFOptions) else OTFOptions.from_dict(options)
        self.dyn = dynamics
        self.atoms: Atoms = dynamics.atoms
        self.model = model
        self.labeller = labeller
        self.timers = Timers()
        self.dft_calls: list[int] = []
        self.failed_calls: list[int] = []
        self.step = 0
        self.out = Path(self.options.output_dir)
        (self.out / "dft").mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoint").mkdir(parents=True, exist_ok=True)
        self.calc = _TimedGPCalculator(model, self.timers)
        self.atoms.calc = self.calc
        self._rng = np.random.default_rng(self.options.seed)
        self._checkpoint_index = 0
        self._learned_at = -1  # step whose uncertainty check already happened (resume)
        self._program_output = ""  # what a failed labeller program printed last
        self._logged_at = -1  # step already checked and logged by an earlier run() call

    # ----------------------------------------------------------------- helpers
    def threshold_value(self) -> float:
        """The current DFT-call threshold in eV/A."""
        o = self.options
        if o.threshold is not None:
            return float(o.threshold)
        return max(o.relative_threshold * self.model.hyperparameters["noise_force"], o.min_threshold)

    def add_threshold_value(self) -> float:
        """The current threshold for adding atoms of a labelled frame, in eV/A."""
        o = self.options
        if o.add_threshold is None:
            return self.threshold_value()
        if o.threshold is not None:
            return float(o.add_threshold)
        return max(o.add_threshold * self.model.hyperparameters["noise_force"], o.min_threshold)

    def _label(self, frame: Atoms) -> Atoms:
        """Reference labels of ``frame``; reuses a frame already labelled at this step
        (a resumed run) so no DFT calculation is ever done twice."""
        path = self.out / "dft" / f"frame_{self.step:07d}.extxyz"
        if path.exists():
            old = read(path)
            if len(old) == len(frame) and np.allclose(old.positions, frame.positions, atol=1e-8):
                log.info("step %d: reusing stored DFT labels from %s", self.step, path)
                return old
        attempts = 1 + max(0, self.options.dft_retries)
        last: Exception | None = None
        for attempt in range(attempts):
            t = time.perf_counter()
            calc = None
            try:
                # A factory (callable) builds a fresh calculator per frame; it may fail too.
                calc = self.labeller if isinstance(self.labeller, BaseCalculator) else self.labeller(frame)
                labelled = frame.copy()
                labelled.calc = calc
                forces = np.asarray(labelled.get_forces(), dtype=float)
                energy = float(labelled.get_potential_energy())
                stress = np.asarray(labelled.get_stress(voigt=True), dtype=float) if self.options.add_stress else None
            except Exception as exc:  # any failure of the external program
                last = exc
                self._program_output = _program_output(calc)
                log.warning("step %d: labeller failed (attempt %d/%d): %s", self.step, attempt + 1, attempts, exc)
                continue
            finally:
                self.timers.dft += time.perf_counter() - t
            if forces.shape != (len(frame), 3) or not np.all(np.isfinite(forces)) or not math.isfinite(energy):
                last = LabellerError("labeller returned unusable labels (wrong shape or NaN)")
                continue
            from ase.calculators.singlepoint import SinglePointCalculator

            out = frame.copy()
            results = {"energy": energy, "forces": forces}
            if stress is not None:
                results["stress"] = stress
            out.calc = SinglePointCalculator(out, **results)
            out.info["otf_step"] = self.step
            _write_atomic_atoms(path, out)
            return out
        detail = getattr(self, "_program_output", "")
        raise LabellerError(
            f"DFT labeller failed on the frame at step {self.step} ({len(frame)} atoms, "
            f"{frame.get_chemical_formula()}) after {attempts} attempt(s): "
            f"{type(last).__name__}: {_describe(last)}" + (f"; program output ends: {detail}" if detail else ""))

    def _train(self) -> None:
        o = self.options
        calls = len(self.dft_calls)
        optimize = o.optimize and (o.optimize_until_calls is None or calls <= o.optimize_until_calls) \
            and (o.optimize_until_size is None or self.model.n_training_environments <= o.optimize_until_size)
        t = time.perf_counter()
        self.model.train(optimize=optimize, max_iterations=o.max_iterations)
        self.timers.training += time.perf_counter() - t
        if o.map:
            t = time.perf_counter()
            self.model.map(tolerance=o.map_tolerance, variance=o.uncertainty == "mapped")  # logs its report
            self.timers.mapping += time.perf_counter() - t

    def _uncertainty(self) -> np.ndarray:
        """Per-atom max force-component std at the current positions (eV/A)."""
        self.calc.uncertainty = self.options.uncertainty
        self.calc.reset()
        try:
            self.atoms.get_forces()
            stds = self.calc.results["force_stds"]
        finally:
            self.calc.uncertainty = False
        return stds

    def _learn(self, initial: bool) -> tuple[bool, float]:
        """Check the uncertainty (or seed the model) and call DFT if needed."""
        if initial:
            stds = None
            max_std = math.inf
        else:
            stds = self._uncertainty()
            max_std = float(stds.max())
            if max_std <= self.threshold_value():
                return False, max_std
        frame = Atoms(self.atoms.get_chemical_symbols(), positions=self.atoms.positions,
                      cell=self.atoms.cell, pbc=self.atoms.pbc)
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
            per_atom = stds.max(axis=1)
            order = np.argsort(-per_atom, kind="stable")
            above = [i for i in order if per_atom[i] > self.add_threshold_value()]
            chosen = np.array((above or [order[0]])[: self.options.max_atoms_added])
        self.model.add_training_data(labelled, forces=True, energy=self.options.add_energy,
                                     stress=self.options.add_stress, atom_indices=chosen)
        self.dft_calls.append(self.step)
        self._train()
        self._uncertainty()  # re-predict this step with the updated model (stds for the trajectory)
        log.info("step %d: DFT call %d (max std %.4g eV/A, threshold %.4g eV/A), added atoms %s, "
                 "training environments %d", self.step, len(self.dft_calls), max_std,
                 self.threshold_value(), chosen.tolist(), self.model.n_training_environments)
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
            "timers": asdict(self.timers),
            "options": asdict(self.options),
            "model": model_name,
            "checkpoint_index": self._checkpoint_index,
            "learned": learned,  # False: the labeller failed at this step; resume retries it
        }
        _write_atomic_text(ck / "state.json", json.dumps(state))
        for old in ck.glob("model_*.otfgp"):
            if old.name != model_name:
                old.unlink(missing_ok=True)

    def write_checkpoint(self) -> None:
        """Write model and MD state now (done automatically after every DFT call)."""
        self._write_checkpoint()

    @classmethod
    def resume(cls, output_dir: str | os.PathLike, dynamics: Any,
               labeller: BaseCalculator | Callable[[Atoms], BaseCalculator], **overrides: Any) -> "OTF":
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
            _write_atomic_text(logf, "".join(line + "\n" for line in keep))
        traj = self.out / "trajectory.extxyz"
        if traj.exists():
            frames = [f for f in read(traj, index=":") if f.info.get("otf_step", -1) < step]
            if frames:
                _write_atomic_atoms(traj, frames)
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
        self.model.save(self.out / "model.otfgp")
        self._write_checkpoint()
        summary = self.summary()
        _write_atomic_text(self.out / "summary.json", json.dumps(summary, indent=2))
        frames = sorted((self.out / "dft").glob("frame_*.extxyz"))
        if frames:
            _write_atomic_atoms(self.out / "dft_frames.extxyz", [read(p) for p in frames])
        log.info("OTF summary: %s", json.dumps(summary))
        return summary

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
            "wall_time_s": asdict(self.timers),
        }


def _program_output(calc: Any) -> str:
    """The telling lines of a file-based calculator's output (e.g. pw.x's espresso.pwo):
    error banners and the convergence verdict, else the last lines."""
    directory = getattr(calc, "directory", None)
    if not directory:
        return ""
    files = sorted(Path(directory).glob("*.pwo")) + sorted(Path(directory).glob("*.out"))
    for f in files:
        try:
            lines = [ln.strip() for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        telling = [ln for ln in lines if "NOT achieved" in ln or "Error" in ln or "%%%%" not in ln and "error" in ln.lower()]
        picked = telling[-3:] if telling else lines[-3:]
        return f"{f.name}: " + " | ".join(picked)
    return ""


def _describe(exc: BaseException | None) -> str:
    """The exception text plus, for a failed subprocess, the end of what it printed."""
    if exc is None:
        return "unknown error"
    text = str(exc)
    for attr in ("stderr", "output"):
        extra = getattr(exc, attr, None)
        if extra:
            if isinstance(extra, bytes):
                extra = extra.decode(errors="replace")
            text += f"; program output: {extra.strip()[-500:]}"
    return text
