"""Sanity checks of reference (DFT) labels before anything is trained on them or saved.

A labeller can return finite but absurd numbers (a units mix-up, a wrong file read back, an
SCF that went astray, a bug in a user function). Trained on, they wreck the model and then
the MD, long after the cause. Both drivers (the ASE learner :class:`otfgp.OTF` and LAMMPS's
``fix otfgp/learn``) therefore pass every fresh label through :class:`LabelChecks` (from
:func:`otfgp.learning.label`); the options are :class:`otfgp.learning.LearningOptions`'
``label_*`` fields (``None`` or ``inf`` switch a check off):

- ``label_max_force``: largest |force component| (eV/A);
- ``label_max_energy_per_atom``: largest |E/N| (eV/atom);
- ``label_max_stress``: largest |stress component| (GPa), when the labeller returns a stress;
- ``label_energy_jump``: E/N may leave the range of the earlier labels of the same
  composition (stoichiometry) by at most this (eV/atom); off for a composition's first label;
- ``label_max_z`` and ``label_z_min_error``: a component whose DFT force lies more than
  ``label_max_z`` of the model's reported stds *and* more than ``label_z_min_error`` eV/A
  from the model's pre-update prediction fails; off without a prediction (the seed frame).

A frame that fails is written to ``<output_dir>/quarantine/frame_<step>.traj`` with a
``frame_<step>.json`` saying why, is not trained on, and :class:`LabelRejected` stops the
run, naming the labeller, the step, the check and its numbers. It is a
:class:`~otfgp.learning.LabellerError`: the ASE learner checkpoints without the frame (its
``on_dft_failure = "skip"`` skips it and goes on), it is not retried (the labeller would
return the same). A resume with another labeller labels the frame afresh; with the same one
(same :func:`labeller_id`) the quarantined labels are checked again with the resumed run's
``label_*`` options instead of calling it (:meth:`LabelChecks.quarantined`): with the
options loosened they are learnt, else rejected again. ``fix otfgp/learn`` turns a
rejection into a LAMMPS error.

The check functions (:func:`check_force_cap`, :func:`check_energy_cap`,
:func:`check_stress_cap`, :func:`check_energy_jump`, :func:`check_z_score`) take plain numbers and return a
:class:`Violation` or None.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import BaseCalculator

from . import atomic_io
from .learning import LabellerError

if TYPE_CHECKING:
    from .learning import LearningOptions

log = logging.getLogger(__name__)

AXES = "xyz"


@dataclass(frozen=True)
class Violation:
    """One failed check: ``option`` (the :class:`~otfgp.learning.LearningOptions` field that
    sets it), ``found`` (what the labeller returned, with the numbers), ``limit`` (the bound
    it broke) and JSON-ready ``details``."""

    option: str
    found: str
    limit: str
    details: dict[str, Any] = field(default_factory=dict)


def _off(limit: float | None) -> bool:
    return limit is None or math.isinf(limit)


# ---------------------------------------------------------------------- the checks
def check_force_cap(forces: np.ndarray, cap: float | None) -> Violation | None:
    """The largest |force component| against ``cap`` (eV/A; None or inf: off)."""
    f = np.asarray(forces, dtype=float)
    if _off(cap) or f.size == 0:
        return None
    atom, axis = np.unravel_index(int(np.argmax(np.abs(f))), f.shape)
    value = float(f[atom, axis])
    if abs(value) <= cap:
        return None
    return Violation("label_max_force", f"|F| = {abs(value):.3g} eV/A on atom {atom} ({AXES[axis]} component)",
                     f"cap {cap:.3g} eV/A",
                     {"atom": int(atom), "axis": AXES[axis], "force": value, "cap": float(cap)})


def check_energy_cap(energy: float | None, n_atoms: int, cap: float | None) -> Violation | None:
    """|E/N| against ``cap`` (eV/atom; None or inf: off; no energy: nothing to check)."""
    if energy is None or _off(cap) or n_atoms < 1:
        return None
    per_atom = float(energy) / n_atoms
    if abs(per_atom) <= cap:
        return None
    return Violation("label_max_energy_per_atom", f"E/N = {per_atom:.6g} eV/atom", f"cap |E/N| <= {cap:.3g} eV/atom",
                     {"energy_per_atom": per_atom, "cap": float(cap)})


VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")


def check_stress_cap(stress: np.ndarray | None, cap: float | None) -> Violation | None:
    """The largest |stress component| (``stress`` in eV/A^3, ASE's unit: 6 Voigt components
    or 3x3) against ``cap`` (GPa; None or inf: off; no stress: nothing to check)."""
    if stress is None or _off(cap):
        return None
    s = np.asarray(stress, dtype=float)
    if s.shape == (3, 3):
        s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    if s.size == 0:
        return None
    k = int(np.argmax(np.abs(s)))
    value = float(s[k]) / units.GPa
    if abs(value) <= cap:
        return None
    # The usual cause is a unit slip in a user labeller: ASE wants eV/A^3, and a stress in
    # GPa or kbar, or a virial (stress x volume, eV), read as eV/A^3 is 160x-1e5x too large.
    return Violation("label_max_stress", f"stress {VOIGT[k]} = {value:.4g} GPa ({s[k]:.4g} eV/A^3)",
                     f"cap {cap:.4g} GPa; labellers return stress in eV/A^3 (ASE's unit), not GPa, kbar "
                     "or a virial",
                     {"component": VOIGT[k], "stress_GPa": value, "cap_GPa": float(cap)})


def check_energy_jump(energy_per_atom: float | None, seen: "EnergyRange | None",
                      tolerance: float | None) -> Violation | None:
    """E/N against the range ``seen`` of the earlier labels of the same composition,
    widened by ``tolerance`` eV/atom on both sides (off without earlier labels, without an
    energy, or with ``tolerance`` None or inf)."""
    if energy_per_atom is None or seen is None or _off(tolerance):
        return None
    e = float(energy_per_atom)
    if seen.low - tolerance <= e <= seen.high + tolerance:
        return None
    outside = seen.low - e if e < seen.low else e - seen.high
    return Violation("label_energy_jump",
                     f"E/N = {e:.6g} eV/atom, {outside:.3g} eV/atom outside the range "
                     f"[{seen.low:.6g}, {seen.high:.6g}] of the {seen.count} earlier label(s) of this composition",
                     f"tolerance {tolerance:.3g} eV/atom",
                     {"energy_per_atom": e, "low": seen.low, "high": seen.high, "count": seen.count,
                      "tolerance": float(tolerance)})


def check_z_score(forces: np.ndarray, predicted: np.ndarray | None, stds: np.ndarray | None,
                  max_z: float | None, min_error: float) -> Violation | None:
    """The DFT forces against the model's own predictive distribution: z = |F_dft - F_gp| /
    std per component (``stds``: the model's reported stds). Fails when a component has both
    z > ``max_z`` and |F_dft - F_gp| > ``min_error`` eV/A; the component reported is the one
    of largest z among those with the large error.

    Why both: z alone would reject honest labels wherever an overconfident model meets a new
    structure (a reported std of 0.01 eV/A makes an honest 0.6 eV/A error z = 60); a large
    error alone is what a DFT call on an unfamiliar frame is for. Labels far outside the
    model's distribution *and* off by more than ``min_error`` (default 1 eV/A, about a typical
    force in hot metals) are very unlikely honest. Off without a prediction (``predicted`` or
    ``stds`` None: the seed frame of an untrained model) or with ``max_z`` None or inf."""
    if predicted is None or stds is None or _off(max_z):
        return None
    f = np.asarray(forces, dtype=float)
    p = np.asarray(predicted, dtype=float)
    s = np.broadcast_to(np.asarray(stds, dtype=float), f.shape)
    error = np.abs(f - p)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(s > 0, error / s, np.where(error > 0, np.inf, 0.0))
    z = np.where(np.isfinite(s), z, 0.0)  # an infinite std allows anything
    z_large = np.where(error > min_error, z, -np.inf)
    atom, axis = np.unravel_index(int(np.argmax(z_large)), f.shape)
    if not z_large[atom, axis] > max_z:
        return None
    return Violation("label_max_z",
                     f"F = {f[atom, axis]:.4g} eV/A on atom {atom} ({AXES[axis]} component) where the model "
                     f"predicted {p[atom, axis]:.4g} +- {s[atom, axis]:.3g} eV/A (z = {z[atom, axis]:.3g}, "
                     f"error {error[atom, axis]:.3g} eV/A)",
                     f"z <= {max_z:.3g} unless the error is <= label_z_min_error = {min_error:.3g} eV/A",
                     {"atom": int(atom), "axis": AXES[axis], "force": float(f[atom, axis]),
                      "predicted": float(p[atom, axis]), "std": float(s[atom, axis]), "z": float(z[atom, axis]),
                      "max_z": float(max_z), "min_error": float(min_error)})


# ---------------------------------------------------------------------- history
@dataclass
class EnergyRange:
    """Lowest and highest E/N (eV/atom) of the accepted labels of one composition."""

    low: float
    high: float
    count: int = 1

    def add(self, e: float) -> None:
        self.low, self.high, self.count = min(self.low, e), max(self.high, e), self.count + 1


def composition(atoms: Atoms) -> str:
    """The stoichiometry that energies per atom are compared within (``Al``, ``AlCu3``): with
    the same species in the same proportions any per-species reference energy cancels."""
    return atoms.get_chemical_formula(empirical=True)


def labelled_energy(atoms: Atoms) -> float | None:
    """The energy label of a frame, None if it has none."""
    results = atoms.calc.results if atoms.calc is not None else {}
    return float(results["energy"]) if "energy" in results else None


def labelled_stress(atoms: Atoms) -> np.ndarray | None:
    """The stress label of a frame (eV/A^3), None if it has none."""
    results = atoms.calc.results if atoms.calc is not None else {}
    return np.asarray(results["stress"], dtype=float) if results.get("stress") is not None else None


# ---------------------------------------------------------------------- the rejection
class LabelRejected(LabellerError):
    """The labeller returned labels that fail a sanity check (:mod:`otfgp.label_checks`).

    The frame was quarantined and not trained on; the model (and, in the ASE learner, the
    checkpoint) is as before the frame, so the run can resume with another labeller or other
    ``label_*`` options. Attributes: ``step``, ``labeller`` (its name), ``violations``
    (:class:`Violation` list) and ``quarantined`` (the frame's file, or None)."""

    def __init__(self, message: str, step: int | None, labeller: str, violations: list[Violation],
                 quarantined: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.labeller = labeller
        self.violations = violations
        self.quarantined = quarantined


def labeller_name(labeller: Any) -> str:
    """How messages name a labeller: its specification (``"module:function"``, ``"emt"``,
    the ``type`` of a mapping), a function's ``module:qualname`` (that of the function a
    ``functools.partial`` wraps), a calculator's class."""
    if isinstance(labeller, functools.partial):
        return labeller_name(labeller.func)
    if isinstance(labeller, str):
        return labeller
    if isinstance(labeller, Mapping):
        return str(labeller.get("type", "?"))
    if isinstance(labeller, BaseCalculator):
        return f"{type(labeller).__name__} calculator"
    module = getattr(labeller, "__module__", None)
    name = getattr(labeller, "__qualname__", None) or type(labeller).__name__
    return f"{module}:{name}" if module else name


def labeller_id(labeller: Any) -> str:
    """A short fingerprint of a labeller as given: of its whole specification (a changed
    k-point grid or cutoff is another labeller), else of its name (:func:`labeller_name`).
    Stored with each DFT frame, so that a resumed run never reuses labels another labeller
    made."""
    if isinstance(labeller, (str, Mapping)):
        text = json.dumps(labeller, sort_keys=True, default=str)
    else:
        text = labeller_name(labeller)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LabelChecks:
    """The label checks of one run: the options, the accepted energies per composition, and
    where rejected frames go.

    Args:
        options: the ``label_*`` fields are read.
        labeller: the labeller's name in messages (:func:`labeller_name`).
        output_dir: the run directory; rejected frames go to its ``quarantine/``.
        history: a directory of accepted labelled frames (``frame_*.traj`` or
            ``frame_*.extxyz``, e.g. the run's ``dft/``) whose energies seed the ranges of the
            energy-jump check, so a resumed run checks against what came before.
        digits: width of the step in quarantined file names (as the driver's ``dft/`` files).
        labeller_id: the labeller's fingerprint (:func:`labeller_id`), written with each
            rejected frame, so that a resumed run knows which labeller made it
            (:meth:`quarantined`).
    """

    def __init__(self, options: "LearningOptions", labeller: str, output_dir: str | os.PathLike,
                 history: str | os.PathLike | None = None, digits: int = 7, labeller_id: str | None = None) -> None:
        self.options = options
        self.labeller = labeller
        self.labeller_id = labeller_id
        self.quarantine_dir = Path(output_dir) / "quarantine"
        self.digits = digits
        self.energy_ranges: dict[str, EnergyRange] = {}
        if history is not None:
            self._read_history(Path(history))

    def _read_history(self, directory: Path) -> None:
        from ase.io import read

        stems: dict[str, Path] = {}
        for path in sorted(directory.glob("frame_*.extxyz")) + sorted(directory.glob("frame_*.traj")):
            stems[path.stem] = path  # the lossless .traj wins over its extxyz copy
        for path in stems.values():
            try:
                frame = read(path)
            except Exception as exc:  # a damaged file must not stop the run; it only loses history
                log.warning("label checks: cannot read %s (%s); its energy is not in the history", path, exc)
                continue
            self.accept(frame)

    def accept(self, labelled: Atoms) -> None:
        """Add an accepted frame's E/N to its composition's range."""
        e = labelled_energy(labelled)
        if e is None or len(labelled) == 0:
            return
        key = composition(labelled)
        seen = self.energy_ranges.get(key)
        if seen is None:
            self.energy_ranges[key] = EnergyRange(e / len(labelled), e / len(labelled))
        else:
            seen.add(e / len(labelled))

    def violations(self, labelled: Atoms, predicted_forces: np.ndarray | None = None,
                   predicted_stds: np.ndarray | None = None) -> list[Violation]:
        """Every check the labelled frame fails (empty: it passes)."""
        o = self.options
        forces = np.asarray(labelled.get_forces(apply_constraint=False), dtype=float)  # the labeller's, all atoms
        energy = labelled_energy(labelled)
        n = len(labelled)
        found = [check_force_cap(forces, o.label_max_force),
                 check_energy_cap(energy, n, o.label_max_energy_per_atom),
                 check_stress_cap(labelled_stress(labelled), o.label_max_stress),
                 check_energy_jump(None if energy is None or n == 0 else energy / n,
                                   self.energy_ranges.get(composition(labelled)), o.label_energy_jump),
                 check_z_score(forces, predicted_forces, predicted_stds, o.label_max_z, o.label_z_min_error)]
        return [v for v in found if v is not None]

    def check(self, labelled: Atoms, step: int | None, predicted_forces: np.ndarray | None = None,
              predicted_stds: np.ndarray | None = None) -> None:
        """Accept the frame (its energy joins the history) or quarantine it and raise.

        ``predicted_forces`` / ``predicted_stds``: the model's prediction of this frame made
        before it learns it (reported stds), for the z-score test; None: no such test.

        Raises:
            LabelRejected: a check failed (the message names labeller, step, check, numbers).
        """
        found = self.violations(labelled, predicted_forces, predicted_stds)
        if not found:
            self.accept(labelled)
            return
        quarantined = self._quarantine(labelled, step, found)
        first = found[0]
        at = f"at step {step}" if step is not None else "on this frame"
        message = (f"labeller {self.labeller!r} returned {first.found} {at} "
                   f"({first.limit}, option {first.option})")
        if len(found) > 1:
            message += "; also failed: " + ", ".join(f"{v.option} ({v.found})" for v in found[1:])
        where = f"quarantined in {quarantined}" if quarantined else "not saved"
        message += (f". The frame is {where} and was not trained on; the model is as before it. "
                    f"Fix the labeller (or change {first.option}) and resume.")
        raise LabelRejected(message, step, self.labeller, found, quarantined)

    def quarantining_in(self, directory: str | os.PathLike, digits: int, labeller_id: str) -> "LabelChecks":
        """These checks with rejected frames of the labeller ``labeller_id`` going to
        ``directory`` (steps ``digits`` wide), and a copy of the energy history (a batch's
        jobs check against the history as it was before the batch, see
        :func:`otfgp.batch.label_batch`)."""
        other = copy.copy(self)
        other.quarantine_dir, other.digits, other.labeller_id = Path(directory), digits, labeller_id
        other.energy_ranges = copy.deepcopy(self.energy_ranges)
        return other

    def quarantined(self, frame: Atoms, step: int) -> Atoms | None:
        """The labels this labeller returned for ``frame`` at ``step`` in an earlier run,
        which were quarantined: a copy of ``frame`` holding them, or None (no such file,
        another or an unknown labeller, other positions, an unreadable file).

        A resumed run checks these again (with its own, perhaps loosened, ``label_*``
        options) instead of paying for a DFT call that returns the same labels. Once they
        pass, :meth:`release` moves the files to ``quarantine/released/``; files that are
        not this labeller's labels of this frame move to ``quarantine/superseded/``."""
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import read

        path = self._path(step)
        if self.labeller_id is None or not path.exists():
            return None
        try:
            reason = json.loads(path.with_suffix(".json").read_text())
            old = read(path)
        except Exception as exc:  # a torn file of a killed run: label the frame afresh
            log.warning("step %s: cannot read the quarantined frame %s (%s); labelling the frame again",
                        step, path, exc)
            return None
        if reason.get("labeller_id") != self.labeller_id or len(old) != len(frame) \
                or not np.allclose(old.positions, frame.positions, atol=1e-8) or old.calc is None:
            self._move(step, "superseded")  # another labeller's or frame's: kept, not overwritten
            return None
        out = frame.copy()
        out.calc = SinglePointCalculator(out, **old.calc.results)
        return out

    def release(self, step: int) -> None:
        """Move a quarantined frame whose labels were checked again and accepted (see
        :meth:`quarantined`) to ``quarantine/released/``; the run's ``dft/`` now holds them."""
        self._move(step, "released")

    def _move(self, step: int, where: str) -> None:
        """Move the quarantined files of ``step`` to ``quarantine/<where>/`` (numbered
        ``frame_<step>.<k>.traj`` after the first, so nothing there is overwritten)."""
        path = self._path(step)
        target = self.quarantine_dir / where
        target.mkdir(exist_ok=True)
        k = 0
        while any((target / self._moved_name(f, k)).exists() for f in (path, path.with_suffix(".json"))):
            k += 1
        for f in (path, path.with_suffix(".json")):
            if f.exists():
                f.replace(target / self._moved_name(f, k))

    @staticmethod
    def _moved_name(path: Path, k: int) -> str:
        return path.name if k == 0 else f"{path.stem}.{k}{path.suffix}"

    def _path(self, step: int | None) -> Path:
        stem = f"frame_{step:0{self.digits}d}" if step is not None else "frame"
        return self.quarantine_dir / f"{stem}.traj"

    def _quarantine(self, labelled: Atoms, step: int | None, found: list[Violation]) -> Path | None:
        """Write the rejected frame and why; a failure to write is logged, never hides the rejection."""
        path = self._path(step)
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            atomic_io.write_atoms(path, labelled, format="traj")
            atomic_io.write_json(path.with_suffix(".json"),
                                 {"step": step, "labeller": self.labeller, "labeller_id": self.labeller_id,
                                  "violations": [asdict(v) for v in found]}, indent=2)
        except OSError as exc:
            log.error("cannot write the rejected frame to %s: %s", path, exc)
            return None
        return path
