"""The on-the-fly learning step, once for both drivers.

The ASE learner (:class:`otfgp.otf.OTF`) and LAMMPS's ``fix otfgp/learn`` (through
:mod:`otfgp.lammps.learn`) apply the same rules, all of them here:

- :class:`LearningOptions`: the option vocabulary (the fix keywords use the same names);
- :func:`threshold_value` / :func:`needs_label` / :func:`add_threshold_value`: the DFT-call
  threshold and test, and the threshold for adding atoms, absolute or relative to the force
  noise sigma_n, with a floor;
- :func:`choose_atoms`: which atoms of a labelled frame join the training set;
- :func:`label`: run a labeller on a frame and validate what it returns (shapes, NaN, and
  the sanity checks of :mod:`otfgp.label_checks`);
- :func:`add_and_retrain`: add the chosen environments, retrain (optimising the
  hyperparameters only early on) and re-map.

The drivers keep only what is theirs: when to check (every N steps), computing the
uncertainties, and files, checkpoints and logs.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar, Union

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator

from .arguments import count, flag, positive_number
from .calibration import MIN_SAMPLES
from .gp import GaussianProcess

log = logging.getLogger(__name__)

Labeller = Union[BaseCalculator, Callable[[Atoms], Any]]
"""An ASE calculator, or a callable ``f(atoms)`` returning an ASE calculator or a dict with
``forces`` (N x 3, eV/A) and optionally ``energy`` (eV) and ``stress`` (Voigt, eV/A^3)."""


class LabelCheck(Protocol):
    """What :func:`label` needs of label sanity checks (:class:`otfgp.label_checks.LabelChecks`,
    which imports this module, hence a protocol here)."""

    def check(self, labelled: Atoms, step: int | None, predicted_forces: np.ndarray | None = None,
              predicted_stds: np.ndarray | None = None) -> None:
        """Accept the labelled frame or raise a :class:`LabellerError`."""


class LabellerError(RuntimeError):
    """The reference (DFT) calculation of a frame failed or returned unusable labels.

    ``program_output`` holds the telling lines a file-based calculator (pw.x) left behind.
    """

    def __init__(self, message: str, program_output: str = "") -> None:
        super().__init__(message)
        self.program_output = program_output


FORCE_DECISION_STDS: dict[str, str] = {"latent": "latent_force_stds", "calibrated": "epistemic_force_stds"}
"""The force stds each ``force_decision`` compares, as :class:`otfgp.GPCalculator` result keys."""


@dataclass
class LearningOptions:
    """Settings of the learning step (shared by :class:`otfgp.OTFOptions` and the keywords
    of LAMMPS's ``fix otfgp/learn``).

    Thresholds compare with the largest reported force-component standard deviation of
    the frame (eV/A): the model's calibrated std (:attr:`otfgp.gp.Prediction.force_stds`;
    latent and sigma_n in quadrature for an uncalibrated model), the same std in the ASE
    learner and in LAMMPS's ``fix otfgp/learn``. Give either ``threshold`` (absolute, eV/A) or ``relative_threshold``
    (multiple of the current force-noise hyperparameter sigma_n, as in the FLARE paper);
    the relative threshold never drops below ``min_threshold`` eV/A, because with
    noise-free labels sigma_n collapses to its bound and DFT would be called almost every
    step. ``add_threshold`` (same kind as the main threshold) selects which atoms of a
    labelled frame join the training set: up to ``max_atoms_added`` of those above it,
    most uncertain first (at least the most uncertain one). ``add_energy`` /
    ``add_stress`` train on the frame's energy / stress: ``None`` whenever the labeller
    returns them (DFT does; the per-species energy offsets then give the potential energy a
    fixed reference across retrains, and stresses make pressures right), ``True`` always (an
    error if the labeller cannot), ``False`` never, ``"auto"`` (default) as ``None`` when
    the cell can change (NPT, cell relaxation: the volume follows the pressure, which a
    force-trained model gets wrong) and as ``False`` at fixed cell. Energy and stress labels
    couple every cluster of their frame, so they make the exact GP's training and variance
    costlier (training fits the length scales on the forces alone:
    :meth:`GaussianProcess.train`); at fixed cell the energies only set the reference: with
    ``energy_reference`` (default on) the per-species energy offsets of a model without
    energy labels are refitted after every retrain to the labeller's energies of all DFT
    frames so far (:meth:`GaussianProcess.set_energy_reference`), which keeps the potential
    energy on the labeller's scale across retrains at the cost of one energy prediction per
    frame.

    Forces can look fine where the model extrapolates in density: a model learnt at the
    equilibrium lattice constant predicts small force stds for a crystal strained by 10-20 %
    while its energy and pressure are far off (bench/strained_lattice.py). So the decision
    also compares the largest per-atom local-energy std (eV/atom) with
    ``local_energy_threshold`` and the largest stress-component std (GPa) with
    ``stress_threshold``. ``extrapolation_checks``: ``None`` (default) applies them when
    the cell can change (NPT, cell relaxation), with the defaults
    :data:`DEFAULT_LOCAL_ENERGY_THRESHOLD` / :data:`DEFAULT_STRESS_THRESHOLD` for a
    threshold left unset (the local-energy default only for a model trained on energies:
    :func:`local_energy_threshold_value`); ``True`` always; ``False`` never. The stress std
    needs the exact variance (``uncertainty = "exact"``). With the 2+3-body kernel both stds
    *fall* as a lattice expands (the cutoff function sends the prior variance to zero near
    the cutoff), so these checks catch compression and new local structure, not expansion.

    Hyperparameters are optimised (``max_iterations`` L-BFGS-B iterations) at every
    retrain while at most ``optimize_until_calls`` DFT calls were made and the training set
    has at most ``optimize_until_size`` environments (``None``: no limit); afterwards only
    the solution is updated, which is much cheaper.

    With ``map`` the model is re-mapped (spline tables, :meth:`GaussianProcess.map`, to
    ``map_tolerance`` eV/A) after every retrain, so the MD steps between DFT calls run at
    mapped speed. ``uncertainty`` says which variance the DFT decision uses: ``"exact"``
    (default; the GP's own variance, paid only on the steps that are checked) or
    ``"mapped"`` (the reduced variance, whose cost does not grow with the training set).

    ``calibration`` (a form of :mod:`otfgp.calibration`, default ``"neighbourhood"``;
    ``None``: uncalibrated, reported = latent + noise) is refitted after every retrain
    (:meth:`GaussianProcess.calibrate`) on the leave-one-out residuals of the training set
    pooled with the pre-update errors of all DFT frames so far (each frame's forces, and
    its energy and stress when the model is trained on them, predicted before it was
    learnt, audits included), so the model's reported stds - in the run's frames, its
    model files and anything that loads them - are calibrated error bars as soon as there
    are 30 held-out samples.

    The stds compared with the local-energy and stress thresholds are the epistemic part of
    the model's reported stds (:class:`otfgp.gp.Prediction`; the latent std while
    uncalibrated): a DFT call can reduce only that part, while the calibration's floor,
    force-proportional term and the label noise stay; their thresholds are in honest
    eV/atom and GPa. ``force_decision`` says which force std the force threshold and
    ``add_threshold`` compare: ``"latent"`` (default) the GP's latent std, the distance from
    the training data in units of the fitted signal variance (FLARE's convention), which a
    refit of the calibration does not move; ``"calibrated"`` its epistemic part, sqrt(a v)
    of the force map. Why latent is the default (measured; README, "Calibration"): the
    calibrated force decision follows the refitted a, and the force map books the model's
    error floor there (the 2+3-body model's misfit to the labels, which more labels do not
    reduce), so an on-the-fly NPT run of fcc Al called DFT at almost every step once that
    floor exceeded the threshold, and the calls in the Al melt spread from 3 to 57 per seed.

    Every fresh label passes the sanity checks of :mod:`otfgp.label_checks` before it is
    trained on or saved (``None`` or ``inf`` switches a check off): ``label_max_force``
    (eV/A) caps |force component|; ``label_max_energy_per_atom`` (eV/atom) caps |E/N|;
    ``label_max_stress`` (GPa) caps |stress component| when the labeller returns a stress;
    ``label_energy_jump`` (eV/atom) bounds how far E/N may leave the range of the earlier
    labels of the same composition; ``label_max_z`` with ``label_z_min_error`` (eV/A)
    rejects a frame with a force component more than ``label_max_z`` reported stds and more
    than ``label_z_min_error`` from the model's pre-update prediction. A frame that fails
    is quarantined and the run stops with :class:`otfgp.label_checks.LabelRejected`.

    ``scalable_after`` (training environments; ``None``: never) is the automatic switch of
    both drivers: once an exact :class:`otfgp.GaussianProcess` holds more environments than
    this after a retrain (:func:`switch_due`), learning goes on with a
    :class:`otfgp.ScalableGP` made from it (:func:`switch_to_scalable`), whose cost no
    longer grows with the data (threshold and measurements: docs/scalable.md).
    """

    threshold: float | None = 0.05
    relative_threshold: float | None = None
    min_threshold: float = 0.005
    add_threshold: float | None = None
    max_atoms_added: int = 1
    add_energy: bool | str | None = "auto"
    add_stress: bool | str | None = "auto"
    energy_reference: bool = True
    local_energy_threshold: float | None = None
    stress_threshold: float | None = None
    extrapolation_checks: bool | None = None
    optimize: bool = True
    optimize_until_calls: int | None = 20
    optimize_until_size: int | None = None
    max_iterations: int = 50
    map: bool = True
    map_tolerance: float = 5e-4
    uncertainty: str = "exact"
    calibration: str | None = "neighbourhood"
    force_decision: str = "latent"
    # Label sanity checks (otfgp.label_checks). The defaults only catch labels no physical
    # system gives, so that honest DFT never trips them:
    # - forces in MD, even of hot liquids or compressed solids, stay below ~10 eV/A; 50 eV/A
    #   means nuclei pushed into each other's cores (or a units/parsing bug);
    label_max_force: float | None = 50.0
    # - all-electron total energies are about -0.77 Z^(7/3) hartree per atom (Thomas-Fermi),
    #   below 1e6 eV/atom in magnitude up to Z ~ 100; pseudopotential codes are far smaller,
    #   so only garbage (1e30, J/mol read as eV) exceeds it;
    label_max_energy_per_atom: float | None = 1e6
    # - Earth's centre is at 360 GPa and static compression reaches ~1 TPa (a study of
    #   giant-planet interiors raises the cap); a unit slip (a stress in GPa or kbar, or a
    #   virial, returned as eV/A^3) is caught whenever the number exceeds 6.24 (1000 GPa);
    label_max_stress: float | None = 1000.0
    # - between labels of one composition E/N moves by ~k_B T (0.13 eV at 1500 K), melting
    #   or a heating stage by a few tenths; 1 eV/atom beyond the range seen is not MD;
    label_energy_jump: float | None = 1.0
    # - a label 50 reported stds and more than 1 eV/A away from the model's prediction (see
    #   label_checks.check_z_score for why both).
    label_max_z: float | None = 50.0
    label_z_min_error: float = 1.0
    scalable_after: int | None = None

    def __post_init__(self) -> None:
        count("scalable_after", self.scalable_after, allow_none=True)  # training environments
        if self.threshold is None and self.relative_threshold is None:
            raise ValueError("give threshold (eV/A) or relative_threshold (x sigma_n)")
        if self.threshold is not None and self.relative_threshold is not None:
            raise ValueError("give either threshold or relative_threshold, not both")
        for name in ("energy_reference", "optimize", "map"):
            flag(name, getattr(self, name))
        for name in ("add_energy", "add_stress"):
            v = getattr(self, name)
            if v is not None and v != "auto" and not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{name} must be true, false, 'auto' or unset (None), got {v!r}")
        flag("extrapolation_checks", self.extrapolation_checks, allow_none=True)
        for name in ("threshold", "relative_threshold", "add_threshold", "min_threshold",
                     "local_energy_threshold", "stress_threshold"):
            positive_number(name, getattr(self, name))
        for name in ("label_max_force", "label_max_energy_per_atom", "label_max_stress", "label_energy_jump",
                     "label_max_z", "label_z_min_error"):
            v = getattr(self, name)  # inf allowed: the check is off
            if v is None and name != "label_z_min_error":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0 \
                    or (v == 0 and name != "label_z_min_error"):
                raise ValueError(f"{name} must be a positive number (inf or None: check off), got {v!r}")
        count("max_atoms_added", self.max_atoms_added)
        count("max_iterations", self.max_iterations, 0)
        for name in ("optimize_until_calls", "optimize_until_size"):
            count(name, getattr(self, name), 0, allow_none=True)
        if self.uncertainty not in ("exact", "mapped"):
            raise ValueError(f"uncertainty must be 'exact' or 'mapped', got {self.uncertainty!r}")
        if self.uncertainty == "mapped" and not self.map:
            raise ValueError("uncertainty = 'mapped' needs map = true")
        if self.force_decision not in FORCE_DECISION_STDS:
            raise ValueError(f"force_decision must be one of {list(FORCE_DECISION_STDS)}, got {self.force_decision!r}")
        if self.calibration is not None:
            from .calibration import FORMS
            if self.calibration not in FORMS:
                raise ValueError(f"calibration must be one of {list(FORMS)} or None, got {self.calibration!r}")
        positive_number("map_tolerance", self.map_tolerance, allow_none=False)

    def for_cell(self: _Options, cell_changes: bool) -> _Options:
        """These options with ``"auto"`` of ``add_energy`` / ``add_stress`` resolved for a
        run whose cell can (``None``: train what the labeller returns) or cannot change
        (``False``)."""
        auto = None if cell_changes else False
        return replace(self, **{name: auto for name in ("add_energy", "add_stress") if getattr(self, name) == "auto"})

    @classmethod
    def from_dict(cls: type[_Options], d: Mapping[str, Any]) -> _Options:
        """Options from a mapping of field names; unknown names are a ValueError naming them.
        A ``relative_threshold`` without a ``threshold`` switches the absolute default off."""
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown options {sorted(bad)}; known: {sorted(known)}")
        if d.get("relative_threshold") is not None and "threshold" not in d:
            d = {**d, "threshold": None}
        return cls(**d)


_Options = TypeVar("_Options", bound=LearningOptions)


# ---------------------------------------------------------------------- thresholds
def check_species(species: Sequence[str], frames: Sequence[Atoms]) -> None:
    """ValueError naming the elements of ``frames`` that are not among a model's
    ``species``: checked before the first labeller call, which would otherwise be spent
    (minutes to hours of DFT) on a frame the model then refuses to learn."""
    unknown = sorted({s for f in frames for s in f.get_chemical_symbols()} - set(species))
    if unknown:
        raise ValueError(f"the structure holds {', '.join(unknown)}, which the model does not know "
                         f"(model species: {', '.join(species)}); add them to the model's species")


def _scaled(value: float, options: LearningOptions, model: GaussianProcess) -> float:
    """``value`` in eV/A: as given (absolute mode) or x sigma_n, floored (relative mode)."""
    if options.threshold is not None:
        return float(value)
    return max(value * model.hyperparameters["noise_force"], options.min_threshold)


def threshold_value(options: LearningOptions, model: GaussianProcess) -> float:
    """The current DFT-call threshold in eV/A."""
    main = options.threshold if options.threshold is not None else options.relative_threshold
    return _scaled(main, options, model)


def needs_label(max_std: float, options: LearningOptions, model: GaussianProcess) -> bool:
    """The per-step test: DFT is called when the largest std is strictly above the threshold
    (``fix otfgp/learn`` applies the same comparison in C++ to the threshold it is given)."""
    return max_std > threshold_value(options, model)


DEFAULT_LOCAL_ENERGY_THRESHOLD = 0.01
"""eV/atom: the default bound on the largest per-atom local-energy std when the
extrapolation checks are on (see :class:`LearningOptions`; measured in
bench/strained_lattice.py)."""

DEFAULT_STRESS_THRESHOLD = 1.0
"""GPa: the default bound on the largest stress-component std when the extrapolation checks
are on."""


def _extrapolation_checks(options: LearningOptions, cell_changes: bool) -> bool:
    return bool(cell_changes) if options.extrapolation_checks is None else bool(options.extrapolation_checks)


def local_energy_threshold_value(options: LearningOptions, model: GaussianProcess,
                                 cell_changes: bool) -> float | None:
    """The bound on the largest per-atom local-energy std in eV/atom, or None when that
    check is off (see :class:`LearningOptions`).

    The default bound applies only to a model trained on energy labels: without them the
    GP fixes each local energy only up to a constant, whose prior variance dominates the
    local-energy std everywhere (measured: 115 meV at a0 for a force-trained Al model,
    falling to 50 meV at a/a0 = 1.2), so the test would label every step and say nothing
    about extrapolation. An explicit ``local_energy_threshold`` is always applied."""
    if not _extrapolation_checks(options, cell_changes):
        return None
    v = options.local_energy_threshold
    if v is None:
        return DEFAULT_LOCAL_ENERGY_THRESHOLD if model.has_energy_labels else None
    return float(v)


def stress_threshold_value(options: LearningOptions, model: GaussianProcess,
                           cell_changes: bool) -> float | None:
    """The bound on the largest stress-component std in GPa, or None when that check is off."""
    if not _extrapolation_checks(options, cell_changes):
        return None
    v = options.stress_threshold
    return DEFAULT_STRESS_THRESHOLD if v is None else float(v)


@dataclass
class FrameUncertainty:
    """What the DFT decision looks at in one frame (the model's epistemic stds).

    Attributes:
        max_force_std: largest force-component std, eV/A.
        max_local_energy_std: largest per-atom local-energy std, eV/atom (None: not computed).
        max_stress_std: largest stress-component std, GPa (None: not computed, e.g. with
            the mapped variance or without a periodic cell).
    """

    max_force_std: float
    max_local_energy_std: float | None = None
    max_stress_std: float | None = None

    @classmethod
    def from_results(cls, results: Mapping[str, Any], force_decision: str = "latent") -> "FrameUncertainty":
        """From a :class:`otfgp.GPCalculator`'s results: the force stds ``force_decision``
        names (:data:`FORCE_DECISION_STDS`) and the epistemic local-energy and stress stds
        (``epistemic_energies_stds``, ``epistemic_stress_stds`` in eV/A^3), the part a DFT
        call can reduce (see :class:`otfgp.gp.Prediction`)."""
        from ase import units

        def finite_max(key: str, scale: float = 1.0) -> float | None:
            v = results.get(key)
            if v is None:
                return None
            v = np.asarray(v, dtype=float)
            return float(np.max(v)) / scale if v.size and np.all(np.isfinite(v)) else None

        return cls(float(np.max(results[FORCE_DECISION_STDS[force_decision]])), finite_max("epistemic_energies_stds"),
                   finite_max("epistemic_stress_stds", units.GPa))


def label_reasons(u: FrameUncertainty, options: LearningOptions, model: GaussianProcess,
                  cell_changes: bool) -> list[str]:
    """Why this frame needs DFT labels (empty: it does not). The force test is always on;
    the local-energy and stress tests follow :class:`LearningOptions` (a quantity that was
    not computed is not tested; the stress test needs the exact variance)."""
    reasons = []
    if needs_label(u.max_force_std, options, model):
        reasons.append(f"{options.force_decision} force std {u.max_force_std:.4g} > "
                       f"{threshold_value(options, model):.4g} eV/A")
    le = local_energy_threshold_value(options, model, cell_changes)
    if le is not None and u.max_local_energy_std is not None and u.max_local_energy_std > le:
        reasons.append(f"local-energy std {u.max_local_energy_std:.4g} > {le:.4g} eV/atom")
    st = stress_threshold_value(options, model, cell_changes)
    if st is not None and u.max_stress_std is not None and u.max_stress_std > st:
        reasons.append(f"stress std {u.max_stress_std:.4g} > {st:.4g} GPa")
    return reasons


def add_threshold_value(options: LearningOptions, model: GaussianProcess) -> float:
    """The current threshold for adding atoms of a labelled frame, in eV/A (the DFT-call
    threshold unless ``add_threshold`` is given)."""
    if options.add_threshold is None:
        return threshold_value(options, model)
    return _scaled(options.add_threshold, options, model)


def choose_atoms(per_atom_std: Sequence[float] | np.ndarray, add_threshold: float,
                 max_atoms: int) -> np.ndarray:
    """Indices of the atoms to add: up to ``max_atoms`` of those whose std exceeds
    ``add_threshold``, most uncertain first (ties by index), and at least the most uncertain
    one, so that a DFT call always teaches the model something."""
    stds = np.asarray(per_atom_std, dtype=float)
    order = np.argsort(-stds, kind="stable")
    above = [int(i) for i in order if stds[i] > add_threshold]
    return np.array((above or [int(order[0])])[: int(max_atoms)], dtype=int)


# ---------------------------------------------------------------------- labels
def _has_volume(frame: Atoms) -> bool:
    return bool(frame.pbc.all()) and frame.cell.volume > 1e-8


def label(frame: Atoms, labeller: Labeller, stress: bool | None = False,
          checks: LabelCheck | None = None, step: int | None = None) -> Atoms:
    """Reference labels of ``frame``: a copy with a single-point calculator holding energy,
    forces and stress (``True``: required; ``None``: if the labeller gives it for a periodic
    cell; ``False``: not asked for).

    A calculator is asked for energy, forces and (as above) stress; a callable is given a
    copy of the frame and may return a calculator or a dict of results.

    With ``checks`` the labels then pass the sanity checks of :mod:`otfgp.label_checks`
    (``step`` names the frame in messages); the z-score test uses the model's pre-update
    prediction that the drivers attach to the frame (arrays ``gp_forces`` and
    ``gp_force_stds``, the reported stds), so the frame is never predicted twice.

    Raises:
        LabellerError: the labeller failed (its exception text and, for a file-based
            calculator, the end of the program's output are in the message) or returned
            labels of the wrong shape, NaN or inf.
        otfgp.label_checks.LabelRejected: (a LabellerError) the labels fail a sanity check;
            the frame is quarantined.
    """
    calc = None
    try:
        result = labeller if isinstance(labeller, BaseCalculator) else labeller(frame.copy())
        if isinstance(result, BaseCalculator):
            calc = result
            work = frame.copy()
            work.calc = calc
            # the labeller's own forces: a constrained frame (a slab's FixAtoms) must not get
            # zeros as the labels of its fixed atoms (they are real forces to learn from)
            results: dict[str, Any] = {"energy": work.get_potential_energy(),
                                       "forces": work.get_forces(apply_constraint=False)}
            if stress:
                results["stress"] = work.get_stress(voigt=True)
            elif stress is None and _has_volume(frame):
                try:
                    results["stress"] = work.get_stress(voigt=True)
                except PropertyNotImplementedError:
                    pass  # this labeller gives no stress: train without it
        elif isinstance(result, Mapping):
            results = {k: result[k] for k in ("energy", "forces", "stress") if k in result}
            if stress is False:
                results.pop("stress", None)
        else:
            raise TypeError(f"labeller returned {type(result).__name__}; expected an ASE "
                            "calculator or a dict with forces (and energy, stress)")
    except Exception as exc:  # any failure of the external program
        raise LabellerError(f"{type(exc).__name__}: {describe(exc)}", program_output(calc)) from exc
    out = frame.copy()
    out.calc = SinglePointCalculator(out, **_checked_labels(results, len(frame), stress))
    if checks is not None:
        checks.check(out, step, frame.arrays.get("gp_forces"), frame.arrays.get("gp_force_stds"))
    return out


def _as_label(name: str, value: Any, scalar: bool = False) -> Any:
    """A label as a float (``scalar``) or a float array, or a LabellerError naming it (a
    per-atom energy array, a string or None would otherwise stop the run with a bare
    conversion error)."""
    try:
        return float(value) if scalar else np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        shape = getattr(value, "shape", None)
        raise LabellerError(f"labeller returned unusable labels: {name} {value!r:.80}"
                            + (f" of shape {shape}" if shape is not None else "") + f" ({exc})") from None


def _checked_labels(results: Mapping[str, Any], n_atoms: int, stress: bool | None) -> dict[str, Any]:
    """The labeller's results as floats, checked (LabellerError naming what is unusable)."""
    out: dict[str, Any] = {k: _as_label(k, v, scalar=k == "energy") for k, v in results.items()}
    forces = out.get("forces")
    if forces is None:
        raise LabellerError("labeller returned no forces")
    if forces.shape != (n_atoms, 3):
        raise LabellerError(f"labeller returned unusable labels: forces of shape {forces.shape}, "
                            f"need ({n_atoms}, 3)")
    if not np.all(np.isfinite(forces)):
        bad = int(np.argwhere(~np.isfinite(forces))[0][0])
        raise LabellerError(f"labeller returned unusable labels: the force on atom {bad} is NaN or inf")
    if "energy" in out and not math.isfinite(out["energy"]):
        raise LabellerError("labeller returned unusable labels: energy is NaN or inf")
    if stress or (stress is None and "stress" in out):
        s = out.get("stress")
        if s is None:
            raise LabellerError("labeller returned no stress, which was asked for")
        if s.shape not in ((6,), (3, 3)) or not np.all(np.isfinite(s)):
            raise LabellerError(f"labeller returned unusable labels: stress of shape {s.shape} "
                                "(need 6 Voigt components) or with NaN/inf")
    return out


def program_output(calc: Any) -> str:
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
        telling = [ln for ln in lines if "NOT achieved" in ln or "Error" in ln
                   or "%%%%" not in ln and "error" in ln.lower()]
        picked = telling[-3:] if telling else lines[-3:]
        return f"{f.name}: " + " | ".join(picked)
    return ""


def describe(exc: BaseException | None) -> str:
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


# ---------------------------------------------------------------------- held-out errors
def pre_update_record(predicted_forces: np.ndarray, latent_stds: np.ndarray, labelled: Atoms,
                      noise_force: float, reported_stds: np.ndarray | None = None,
                      atoms: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """How the model's prediction of a frame compares with the frame's DFT labels, made
    *before* the frame is trained on: a free held-out sample of all its atoms' force
    components (biased towards uncertain frames, since those are the ones labelled).

    ``latent_stds`` are the GP's latent (noise-free) stds, the calibration's input;
    ``reported_stds`` the model's reported (calibrated) stds, the ones the DFT decision
    compares with the threshold (default: latent and sigma_n in quadrature, what an
    uncalibrated model reports). ``atoms``: only these atoms' components (default: all).

    Returns sums over the components, so that records of many frames add up: ``n``,
    ``sum_squared_error``, ``sum_latent_variance``, ``sum_reported_variance``, and for the
    latent std, the total std (latent and sigma_n in quadrature) and the reported std
    ``sum_squared_z_*`` and ``inside_1std_*``.
    """
    from .uq_metrics import coverage, mean_squared_z

    chosen = slice(None) if atoms is None else np.asarray(atoms, dtype=int)
    labels = np.asarray(labelled.get_forces(apply_constraint=False), dtype=float)  # fixed atoms' too
    errors = (np.asarray(predicted_forces, dtype=float) - labels)[chosen]
    latent = np.asarray(latent_stds, dtype=float)[chosen]
    total = np.sqrt(latent ** 2 + noise_force ** 2)
    reported = total if reported_stds is None else np.asarray(reported_stds, dtype=float)[chosen]
    n = errors.size
    return {"n": n, "sum_squared_error": float(np.sum(errors ** 2)),
            "sum_latent_variance": float(np.sum(latent ** 2)),
            "sum_reported_variance": float(np.sum(reported ** 2)),
            "sum_squared_z_latent": mean_squared_z(errors, latent) * n,
            "sum_squared_z_total": mean_squared_z(errors, total) * n,
            "sum_squared_z_reported": mean_squared_z(errors, reported) * n,
            "inside_1std_latent": coverage(errors, latent) * n,
            "inside_1std_total": coverage(errors, total) * n,
            "inside_1std_reported": coverage(errors, reported) * n}


def calibration_sample(predicted_forces: np.ndarray, latent_variances: np.ndarray,
                       labelled: Atoms, radius: float, energy: tuple[float, float] | None = None,
                       stress: tuple[np.ndarray, np.ndarray] | None = None,
                       atoms: Sequence[int] | np.ndarray | None = None) -> dict[str, list[float]]:
    """The held-out sample a pre-update prediction gives the calibration fit
    (:meth:`otfgp.GaussianProcess.calibrate`): per force component the residual (label
    minus prediction), the latent variance, the predicted force and the neighbourhood scale
    within ``radius`` (the model's ``force_scale_radius``) of the predicted forces
    (JSON-ready lists, so a checkpoint keeps them exactly).

    ``energy`` (predicted energy, its latent variance) and ``stress`` (predicted Voigt
    stress, its 6 latent variances), when the pre-update prediction had them, add the
    frame's energy and stress residuals against the label's (``energy_residuals``,
    ``energy_latent_variances``, ``stress_residuals``, ``stress_latent_variances``): the
    held-out samples the energy and stress maps are fitted on, instead of taking the force
    map's scale. A non-finite latent variance (the mapped variance has none) adds nothing.
    ``atoms``: the force samples of only these atoms (default: all; their neighbourhood
    scales still see every atom's predicted force)."""
    from .calibration import neighbourhood_scale_values

    chosen = slice(None) if atoms is None else np.asarray(atoms, dtype=int)
    predicted = np.asarray(predicted_forces, dtype=float)
    residuals = np.asarray(labelled.get_forces(apply_constraint=False), dtype=float) - predicted
    scales = neighbourhood_scale_values(labelled, predicted, radius)
    out = {"residuals": residuals[chosen].ravel().tolist(),
           "latent_variances": np.asarray(latent_variances, dtype=float)[chosen].ravel().tolist(),
           "forces": predicted[chosen].ravel().tolist(),
           "neighbourhood_scales": scales[chosen].ravel().tolist()}
    results = labelled.calc.results if labelled.calc is not None else {}
    for key, pred in (("energy", energy), ("stress", stress)):
        if pred is None or key not in results:
            continue
        value, var = (np.atleast_1d(np.asarray(x, dtype=float)).ravel() for x in pred)
        label_value = np.atleast_1d(np.asarray(labelled.get_potential_energy() if key == "energy"
                                               else labelled.get_stress(voigt=True), dtype=float)).ravel()
        if var.shape == label_value.shape == value.shape and np.all(np.isfinite(var)) and np.all(np.isfinite(value)):
            out[f"{key}_residuals"] = (label_value - value).tolist()
            out[f"{key}_latent_variances"] = var.tolist()
    return out


def held_out_energy_stress(model: Any, energy: float | None, latent_energy_std: float | None,
                           stress: np.ndarray | None, latent_stress_stds: np.ndarray | None
                           ) -> tuple[tuple[float, float] | None, tuple[np.ndarray, np.ndarray] | None]:
    """The ``energy`` and ``stress`` arguments of :func:`calibration_sample` from a
    pre-update prediction (values and latent stds; None where not computed): the energy only
    for a model trained on energies (without them its energy is fixed only up to a constant
    per species, whose prior variance swamps the latent variance)."""
    e = None
    if model.has_energy_labels and energy is not None and latent_energy_std is not None:
        e = (float(energy), float(latent_energy_std) ** 2)
    st = None
    if stress is not None and latent_stress_stds is not None:
        st = (np.asarray(stress, dtype=float), np.asarray(latent_stress_stds, dtype=float) ** 2)
    return e, st


def held_out_check(model: Any, before: Any, labelled: Atoms, noise_force: float,
                   atoms: Sequence[int] | np.ndarray | None = None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """What a labelled frame says about the model's stds, from ``before``, the model's
    :class:`otfgp.gp.Prediction` of it made before learning it: the record of sums
    (:func:`pre_update_record`, ``noise_force`` the sigma_n of that prediction) and the
    calibration fit's sample (:func:`calibration_sample`, with the energy and stress that
    :func:`held_out_energy_stress` admits), over ``atoms`` (default: all)."""
    record = pre_update_record(before.forces, before.latent_force_stds, labelled, noise_force,
                               reported_stds=before.force_stds, atoms=atoms)
    held_out = held_out_energy_stress(model, before.energy, before.latent_energy_std, before.stress,
                                      before.latent_stress_stds)
    sample = calibration_sample(before.forces, before.latent_force_variances, labelled, model.force_scale_radius,
                                *held_out, atoms=atoms)
    return record, sample


def running_calibration(records: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Pooled calibration of the pre-update predictions (:func:`pre_update_record`): RMSE,
    RMS latent std, mean squared z-score and 1-std coverage for the latent, the total and
    the reported std (a calibrated Gaussian has mean z^2 = 1 and coverage 0.68). None
    without records. The reported-std entries need every record to have them (records of
    runs before the calibration lack them)."""
    n = sum(r["n"] for r in records)
    if n == 0:
        return None
    keys = ("sum_squared_error", "sum_latent_variance", "sum_squared_z_latent", "sum_squared_z_total",
            "inside_1std_latent", "inside_1std_total")
    total = {k: sum(r[k] for r in records) for k in keys}
    out = {"frames": len(records), "components": n,
           "rmse": math.sqrt(total["sum_squared_error"] / n),
           "rms_latent_std": math.sqrt(total["sum_latent_variance"] / n),
           "mean_squared_z_latent": total["sum_squared_z_latent"] / n,
           "mean_squared_z_total": total["sum_squared_z_total"] / n,
           "coverage_1std_latent": total["inside_1std_latent"] / n,
           "coverage_1std_total": total["inside_1std_total"] / n}
    reported = ("sum_reported_variance", "sum_squared_z_reported", "inside_1std_reported")
    if all(k in r for r in records for k in reported):
        sums = {k: sum(r[k] for r in records) for k in reported}
        out.update({"rms_reported_std": math.sqrt(sums["sum_reported_variance"] / n),
                    "mean_squared_z_reported": sums["sum_squared_z_reported"] / n,
                    "coverage_1std_reported": sums["inside_1std_reported"] / n})
    return out


# ---------------------------------------------------------------------- local-energy test
# ---------------------------------------------------------------------- training
def trained_labels(labelled: Atoms, options: LearningOptions) -> tuple[bool, bool]:
    """Whether the energy and the stress of a labelled frame are trained on: as the options
    say, ``None`` meaning "if the labels include it" (see :class:`LearningOptions`)."""
    results = labelled.calc.results if labelled.calc is not None else {}
    out = []
    for name, key in (("add_energy", "energy"), ("add_stress", "stress")):
        want = getattr(options, name)
        if want == "auto":
            raise ValueError(f"{name} = 'auto' is resolved by the driver (LearningOptions.for_cell) before labelling")
        if want and key not in results:
            raise LabellerError(f"{name} is true but the labeller returned no {key}")
        out.append(bool(want) if want is not None else key in results)
    return out[0], out[1]


@dataclass
class RetrainResult:
    """What one :func:`add_and_retrain` did: its wall time (seconds) and the hyperparameter
    warnings of its optimisation (:meth:`otfgp.gp.OptimizationReport.warnings`; empty when it
    ended cleanly or did not optimise)."""

    training: float = 0.0
    mapping: float = 0.0
    warnings: list[str] = field(default_factory=list)


def add_and_retrain(model: GaussianProcess, labelled: Atoms, atoms: Sequence[int] | np.ndarray,
                    options: LearningOptions, calls: int,
                    samples: Sequence[Mapping[str, Any]] = (),
                    reference_energies: list[float | None] | None = None) -> RetrainResult:
    """Add the force environments of ``atoms`` of a labelled frame, and its energy and
    stress as :class:`LearningOptions` says, retrain, re-map and recalibrate. ``calls``
    counts the DFT calls so far, this one included (it decides whether the hyperparameters
    are still optimised); ``samples`` are the pre-update errors so far
    (:func:`calibration_sample`), pooled with the leave-one-out residuals for the
    calibration. ``reference_energies`` (the driver's list, one entry per training
    structure) gets the frame's energy appended (``None`` if the labeller gave none); with
    ``options.energy_reference`` and no energy training they refit the energy reference
    (:meth:`GaussianProcess.set_energy_reference`)."""
    add_labelled(model, labelled, atoms, options, reference_energies)
    return retrain(model, options, calls, samples, reference_energies)


def add_labelled(model: GaussianProcess, labelled: Atoms, atoms: Sequence[int] | np.ndarray,
                 options: LearningOptions, reference_energies: list[float | None] | None = None) -> None:
    """The adding half of :func:`add_and_retrain` (a batch adds every frame, then retrains
    once): the force environments of ``atoms``, energy and stress as ``options`` say, and
    the frame's energy appended to ``reference_energies``."""
    energy, stress = trained_labels(labelled, options)
    model.add_training_data(labelled, forces=True, energy=energy, stress=stress,
                            atom_indices=atoms)
    if reference_energies is not None:
        results = labelled.calc.results if labelled.calc is not None else {}
        reference_energies.append(float(results["energy"]) if "energy" in results else None)


def retrain(model: GaussianProcess, options: LearningOptions, calls: int,
            samples: Sequence[Mapping[str, Any]] = (),
            reference_energies: list[float | None] | None = None) -> RetrainResult:
    """The retraining half of :func:`add_and_retrain`, after :func:`add_labelled`."""
    optimize = (options.optimize
                and (options.optimize_until_calls is None or calls <= options.optimize_until_calls)
                and (options.optimize_until_size is None
                     or model.n_training_environments <= options.optimize_until_size))
    return _train_and_finish(model, optimize, options, samples, reference_energies)


def _train_and_finish(model: GaussianProcess, optimize: bool, options: LearningOptions,
                      samples: Sequence[Mapping[str, Any]],
                      reference_energies: list[float | None] | None) -> RetrainResult:
    """Train, re-map, recalibrate and refit the energy reference (see :func:`add_and_retrain`)."""
    from .models import is_scalable

    result = RetrainResult()
    t = time.perf_counter()
    model.train(optimize=optimize, max_iterations=options.max_iterations)
    result.training = time.perf_counter() - t
    if optimize and model.last_optimization is not None:
        result.warnings = model.last_optimization.warnings()
    # Mapped before the calibration: the neighbourhood scales of the leave-one-out residuals
    # need the mean force on every atom of every training structure, which the maps give at
    # MD speed (measured: 0.03 s against 1.5 s exact at 152 environments in 38 structures);
    # the calibration sits on top of the (latent) variance maps, so the order does not
    # change them.
    if options.map and not getattr(model, "mapped_by_construction", False):
        t = time.perf_counter()
        model.map(tolerance=options.map_tolerance, variance=options.uncertainty == "mapped")  # logs its report
        result.mapping = time.perf_counter() - t
    if options.calibration is not None:
        # a ScalableGP keeps no label rows, hence no leave-one-out residuals: its calibration
        # is fitted on the pre-update errors alone (docs/scalable.md)
        loo = not is_scalable(model)
        held_out = (3 * model.n_training_environments if loo else 0) + sum(len(s.get("residuals", ())) for s in samples)
        if held_out < MIN_SAMPLES:
            # the first retrains of a run: too few samples to fit, and every run would warn
            log.info("calibration: %d held-out force samples so far (< %d); not refitted yet", held_out, MIN_SAMPLES)
        else:
            t = time.perf_counter()
            model.calibrate(samples=list(samples), loo=loo, form=options.calibration)
            result.training += time.perf_counter() - t
    if (options.energy_reference and reference_energies is not None and not model.has_energy_labels
            and any(e is not None for e in reference_energies)):
        # The list covers the structures added by this driver, the newest last; a model
        # that came with structures of its own (a LAMMPS fix's starting model) has no
        # reference energies for those.
        n = model.n_training_structures
        if len(reference_energies) > n:
            raise ValueError(f"{len(reference_energies)} reference energies for {n} training structures")
        # after mapping: the reference is fitted to the energies the model will predict
        t = time.perf_counter()
        model.set_energy_reference([None] * (n - len(reference_energies)) + list(reference_energies))
        result.training += time.perf_counter() - t
    return result


#: Angstrom: how far below the shortest training distance the switched model's basis starts.
SWITCH_LOWER_MARGIN = 1.0


def switch_due(model: Any, options: LearningOptions) -> bool:
    """Whether a driver switches ``model`` to a :class:`otfgp.ScalableGP` now (after a
    retrain): an exact GP holding more than ``options.scalable_after`` training environments."""
    from .models import is_scalable

    limit = options.scalable_after
    return limit is not None and not is_scalable(model) and model.n_training_environments > limit


def switch_record(model: Any, options: LearningOptions, step: int) -> dict[str, Any]:
    """The ``"model_switch"`` record both drivers log for a switch at ``step`` to the
    scalable ``model``."""
    return {"step": step, "training_environments": model.n_training_environments,
            "threshold": options.scalable_after, "to": "scalable", "coefficients": model.n_coefficients,
            "rank": model.rank}


def switch_to_scalable(gp: GaussianProcess, options: LearningOptions,
                       samples: Sequence[Mapping[str, Any]] = (),
                       reference_energies: list[float | None] | None = None) -> tuple[Any, RetrainResult]:
    """The automatic switch of on-the-fly learning: a :class:`otfgp.ScalableGP` with
    ``gp``'s species, cutoffs, hyperparameters (the optimiser's start) and training data
    (:meth:`otfgp.ScalableGP.from_gaussian_process`), trained with its hyperparameters
    optimised (cheap: O(basis^3) per evaluation, whatever the data), calibrated on the
    pre-update errors ``samples`` when ``options.calibration`` is set, and with the energy
    reference refitted as after a retrain. Returns the new model and the retrain's times."""
    from .scalable import ScalableGP

    # the basis starts SWITCH_LOWER_MARGIN below the shortest distance learnt so far: the
    # run goes on, often hotter, and a training cluster below the basis is an error
    model = ScalableGP.from_gaussian_process(gp, lower_margin=SWITCH_LOWER_MARGIN)
    return model, _train_and_finish(model, options.optimize, options, samples, reference_energies)
