"""How good are a model's forces and its uncertainty on frames with reference labels?

``evaluate(model, frames)`` predicts every frame (with variances) and compares with the
reference forces (and energies, when every frame has one) attached to the frames: an ASE
calculator (``ase.io.read`` of extxyz attaches a SinglePointCalculator) or a ``forces``
array. It returns an :class:`EvalReport`: MAE/RMSE overall, per species and per frame
group, and the metrics of :mod:`otfgp.uq_metrics` for two stds side by side:

- ``latent``: ``Prediction.latent_force_stds``, the std of the latent (noise-free) GP;
- ``latent+noise``: ``sqrt(latent^2 + sigma_n^2)`` with ``sigma_n =
  model.hyperparameters['noise_force']``, the predictive std of a noisy label. The
  reference labels carry the noise the model assumes, so this is the one to calibrate;
- ``reported``: ``Prediction.force_stds``, the model's calibrated std (what OTF
  thresholds, ``GPCalculator`` and LAMMPS report; equal to ``latent+noise`` for an
  uncalibrated model).

Rank metrics (Spearman, ROC-AUC) are the same for both: adding a constant in quadrature
keeps the order. ``plot(report, path)`` draws a reliability diagram and |error| against std.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms

from . import uq_metrics as uq
from .arguments import positive_number
from .gp import GaussianProcess
from .reference_labels import checked_reference_forces, reference_energy, reference_forces
from .plots import agg_pyplot

STD_KINDS = ("latent", "latent+noise", "reported")
RELIABILITY_LEVELS = tuple(np.round(np.arange(1, 20) / 20.0, 2))
VARIANCE_MODES = ("auto", "exact", "mapped")


@dataclass
class EvalReport:
    """Accuracy and uncertainty quality of a model on labelled frames (eV, eV/A).

    ``forces``: ``mae``, ``rmse``, ``max`` over force components. ``species`` /
    ``groups``: the same per chemical symbol / per frame group (with ``n_atoms``,
    ``n_frames``). ``uncertainty``: per std kind (``latent``, ``latent+noise``, ``reported``) the force
    metrics ``nll``, ``mean_z2``, ``coverage_1std``, ``coverage_2std``,
    ``miscalibration_area``, ``rmse_over_rms_std``, ``spearman_components``,
    ``spearman_atoms``, ``spearman_frames``, ``roc_auc`` and the reliability curve
    (``reliability_observed`` at ``reliability_levels``). ``energy``: per-atom energy errors
    and, when the variance is exact, the same metrics for them (None without energies).
    ``errors`` / ``stds``: the force components (error, latent std) behind the metrics,
    for plots; not written by ``to_json`` unless asked.
    """

    n_frames: int
    n_atoms: int
    variance: str
    noise_force: float
    error_threshold: float
    forces: dict[str, float]
    species: dict[str, dict[str, float]]
    groups: dict[str, dict[str, float]]
    uncertainty: dict[str, dict[str, Any]]
    energy: dict[str, Any] | None = None
    reliability_levels: list[float] = field(default_factory=lambda: list(RELIABILITY_LEVELS))
    errors: np.ndarray | None = field(default=None, repr=False, compare=False)
    stds: np.ndarray | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------ serialisation
    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN and inf become None); ``arrays`` adds ``errors`` and
        ``stds`` (force components, lists)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("errors", "stds")}
        if arrays and self.errors is not None:
            d["errors"] = np.asarray(self.errors).tolist()
            d["stds"] = np.asarray(self.stds).tolist()
        return _json_clean(d)

    def to_json(self, arrays: bool = False, indent: int | None = 2) -> str:
        """The report as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(arrays), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "EvalReport":
        """A report from :meth:`to_json` text (metrics that were NaN come back as None)."""
        d = json.loads(text)
        errors, stds = d.pop("errors", None), d.pop("stds", None)
        report = cls(**d)
        if errors is not None:
            report.errors, report.stds = np.asarray(errors, float), np.asarray(stds, float)
        return report

    # ------------------------------------------------------------ text
    def summary(self) -> str:
        """Human-readable multi-line summary (forces in meV/A)."""
        f = self.forces
        lines = [f"{self.n_frames} frames, {self.n_atoms} atoms; variance {self.variance}; "
                 f"sigma_n {1000 * self.noise_force:.1f} meV/A",
                 f"forces: MAE {_mev(f['mae'])}  RMSE {_mev(f['rmse'])}  max {_mev(f['max'])} meV/A"]
        for title, table in (("species", self.species), ("group", self.groups)):
            if len(table) > 1 or title == "species":
                for name, m in table.items():
                    lines.append(f"  {title} {name}: MAE {_mev(m['mae'])}  RMSE {_mev(m['rmse'])} meV/A"
                                 f" ({m['n_atoms']} atoms)")
        header = f"{'uncertainty':<22}" + "".join(f"{k:>14}" for k in STD_KINDS)
        lines.append(header)
        rows = [("NLL (nats/component)", "nll"), ("mean z^2", "mean_z2"),
                ("coverage 1 std", "coverage_1std"), ("coverage 2 std", "coverage_2std"),
                ("miscalibration area", "miscalibration_area"), ("RMSE / RMS std", "rmse_over_rms_std"),
                ("Spearman components", "spearman_components"), ("Spearman atoms", "spearman_atoms"),
                ("Spearman frames", "spearman_frames"), ("ROC-AUC", "roc_auc")]
        for label, key in rows:
            lines.append(f"{label:<22}" + "".join(f"{_num(self.uncertainty[k].get(key)):>14}" for k in STD_KINDS))
        lines.append(f"(ROC-AUC: flagging atoms with max |error| > {_mev(self.error_threshold)} meV/A by max std;"
                     f" ideal: coverage 0.683 / 0.954, mean z^2 1, area 0)")
        if self.energy:
            e = self.energy
            text = f"energy: MAE {_mev(e['mae'])}  RMSE {_mev(e['rmse'])} meV/atom"
            if e.get("uncertainty"):
                u = e["uncertainty"]
                text += "; " + ", ".join(f"{k}: mean z^2 {_num(u[k]['mean_z2'])}, coverage 1 std "
                                         f"{_num(u[k]['coverage_1std'])}" for k in STD_KINDS)
            lines.append(text)
        return "\n".join(lines)


def _mev(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{1000 * x:.1f}"


def _num(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _json_clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------- reference labels
# ---------------------------------------------------------------- metrics
def _accuracy(errors: np.ndarray, n_atoms: int, **extra: Any) -> dict[str, Any]:
    a = np.abs(errors)
    return {**extra, "n_atoms": int(n_atoms), "mae": float(a.mean()), "rmse": float(np.sqrt(np.mean(errors ** 2))),
            "max": float(a.max())}


def _safe(fn, *args) -> float | None:
    """``fn(*args)``, or None when the metric is undefined for these data (ValueError)."""
    try:
        return fn(*args)
    except ValueError:
        return None


def _component_metrics(e: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    _, observed = uq.reliability_curve(e, s, RELIABILITY_LEVELS)
    return {
        "nll": uq.gaussian_nll(e, s),
        "mean_z2": uq.mean_squared_z(e, s),
        "coverage_1std": uq.coverage(e, s, 1.0),
        "coverage_2std": uq.coverage(e, s, 2.0),
        "miscalibration_area": uq.miscalibration_area(e, s),
        "rmse_over_rms_std": uq.rmse_over_rms_std(e, s),
        "spearman_components": _safe(uq.spearman, e, s),
        "reliability_observed": observed.tolist(),
    }


def evaluate(model: GaussianProcess, frames: Sequence[Atoms], groups: Sequence[str] | None = None,
             variance: str = "auto", error_threshold: float | None = None) -> EvalReport:
    """Forces (and energies) of ``model`` on ``frames`` against their reference labels,
    with the quality of the predicted uncertainty.

    ``groups``: a label per frame (e.g. the file it came from) for per-group MAE/RMSE;
    default one group ``"all"``. ``variance``: ``"auto"``, ``"exact"`` or ``"mapped"`` (as
    in :meth:`GaussianProcess.predict`). ``error_threshold`` (eV/A): an atom is a positive
    for the ROC-AUC when its largest absolute force-component error exceeds it; default the
    median of those errors over all atoms. Only atoms whose forces are labels enter (all
    atoms, except in an otfgp export, whose ``force_trained`` array marks them); a frame
    with no atoms, or with a NaN or infinite reference force, is an error naming it.
    Energies are evaluated (per atom) when every frame has one; their uncertainty metrics
    need the exact variance (the mapped variance gives none).
    """
    if variance not in VARIANCE_MODES:
        raise ValueError(f"variance must be one of {VARIANCE_MODES}, got {variance!r}")
    # an error norm is never negative: at a threshold <= 0 every atom would be a positive
    positive_number("error_threshold", error_threshold)
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to evaluate")
    if not model.trained:
        raise ValueError("the model is not trained")
    named = groups is not None
    groups = ["all"] * len(frames) if groups is None else [str(g) for g in groups]
    if len(groups) != len(frames):
        raise ValueError(f"{len(groups)} group labels for {len(frames)} frames")
    refs, rows = [], []  # reference forces, and the atoms whose forces are labels
    for i, a in enumerate(frames):
        f, r = checked_reference_forces(a, f"frame {i}" + (f" (group {groups[i]})" if named else ""))
        refs.append(f)
        rows.append(r)
    ref_energies = [reference_energy(a) for a in frames]
    sigma_n = float(model.hyperparameters["noise_force"])
    sigma_e = float(model.hyperparameters.get("noise_energy", 0.0))

    err, std, reported, symbols, frame_of_atom = [], [], [], [], []
    e_err, e_std, e_reported, used = [], [], [], set()
    for i, (atoms, f_ref, r) in enumerate(zip(frames, refs, rows)):
        pred = model.predict(atoms, variance=variance)
        if pred.force_variances is None:
            raise ValueError("the model returned no force variances")
        err.append(pred.forces[r] - f_ref[r])
        std.append(np.sqrt(np.maximum(pred.latent_force_variances[r], 0.0)))
        reported.append(pred.force_stds[r])
        symbols += np.asarray(atoms.get_chemical_symbols())[r].tolist()
        frame_of_atom += [i] * r.size
        ev = pred.energy_variance
        exact = ev is not None and math.isfinite(ev)
        used.add("exact" if exact else "mapped")
        if ref_energies[i] is not None:
            e_err.append((pred.energy - ref_energies[i]) / len(atoms))
            lev = pred.latent_energy_variance
            e_std.append(math.sqrt(max(lev, 0.0)) / len(atoms) if exact else math.nan)
            e_reported.append(math.sqrt(max(ev, 0.0)) / len(atoms) if exact else math.nan)
    err_a, std_a = np.concatenate(err), np.concatenate(std)  # atoms x 3
    symbols_a, frame_a = np.array(symbols), np.array(frame_of_atom)
    noisy_a = np.sqrt(std_a ** 2 + sigma_n ** 2)
    reported_a = np.concatenate(reported)

    atom_max_err = np.abs(err_a).max(axis=1)
    threshold = float(np.median(atom_max_err)) if error_threshold is None else float(error_threshold)
    positives = atom_max_err > threshold

    uncertainty: dict[str, dict[str, Any]] = {}
    for kind, s in zip(STD_KINDS, (std_a, noisy_a, reported_a)):
        m = _component_metrics(err_a.ravel(), s.ravel())
        m["spearman_atoms"] = _safe(uq.spearman, np.linalg.norm(err_a, axis=1), s.max(axis=1))
        frame_rmse = np.array([np.sqrt(np.mean(err_a[frame_a == i] ** 2)) for i in range(len(frames))])
        frame_std = np.array([np.sqrt(np.mean(s[frame_a == i] ** 2)) for i in range(len(frames))])
        m["spearman_frames"] = _safe(uq.spearman, frame_rmse, frame_std) if len(frames) > 2 else None
        m["roc_auc"] = _safe(uq.roc_auc, s.max(axis=1), positives)
        m["n_positive_atoms"] = int(positives.sum())
        uncertainty[kind] = m

    species = {sym: _accuracy(err_a[symbols_a == sym], np.sum(symbols_a == sym))
               for sym in dict.fromkeys(symbols)}
    group_table = {}
    for g in dict.fromkeys(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        mask = np.isin(frame_a, idx)
        group_table[g] = _accuracy(err_a[mask], mask.sum(), n_frames=len(idx))

    energy = None
    if e_err and len(e_err) == len(frames):
        ee, es = np.array(e_err), np.array(e_std)
        energy = {"n_frames": len(ee), "mae": float(np.abs(ee).mean()),
                  "rmse": float(np.sqrt(np.mean(ee ** 2))), "noise_energy": sigma_e, "uncertainty": None}
        if np.all(np.isfinite(es)):
            n_atoms = np.array([len(a) for a in frames], float)
            energy["uncertainty"] = {
                kind: {"nll": uq.gaussian_nll(ee, s), "mean_z2": uq.mean_squared_z(ee, s),
                       "coverage_1std": uq.coverage(ee, s, 1.0), "coverage_2std": uq.coverage(ee, s, 2.0),
                       "spearman": _safe(uq.spearman, ee, s) if len(ee) > 2 else None}
                for kind, s in (("latent", es), ("latent+noise", np.sqrt(es ** 2 + (sigma_e / n_atoms) ** 2)),
                                ("reported", np.array(e_reported)))}

    return EvalReport(
        n_frames=len(frames), n_atoms=len(symbols), variance="+".join(sorted(used)), noise_force=sigma_n,
        error_threshold=threshold, forces=_accuracy(err_a, len(symbols)), species=species, groups=group_table,
        uncertainty=uncertainty, energy=energy, errors=err_a.ravel(), stds=std_a.ravel())


# ---------------------------------------------------------------- plot
def plot(report: EvalReport, path: str | Path) -> Path:
    """Write a PNG: the reliability diagram (expected against observed coverage of central
    Gaussian intervals, both std kinds) and, when the report holds the force components,
    |error| against the predicted std (log-log, lines at 1 and 2 std)."""
    plt = agg_pyplot()
    path = Path(path)
    has_points = report.errors is not None and report.stds is not None
    fig, axes = plt.subplots(1, 2 if has_points else 1, figsize=(10 if has_points else 5, 4.5), squeeze=False)
    ax = axes[0, 0]
    levels = [0.0] + list(report.reliability_levels) + [1.0]
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for kind, style in zip(STD_KINDS, ("o-", "s-", "^-")):
        m = report.uncertainty[kind]
        obs = [0.0] + [np.nan if v is None else v for v in m["reliability_observed"]] + [1.0]
        area = m.get("miscalibration_area")
        ax.plot(levels, obs, style, ms=3, label=f"{kind} (area {_num(area)})")
    ax.set_xlabel("expected coverage of the central interval")
    ax.set_ylabel("observed fraction inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("reliability diagram (force components)")
    if has_points:
        ax = axes[0, 1]
        s = np.asarray(report.stds)
        a = np.abs(np.asarray(report.errors))
        floor = max(1e-6, 1e-3 * float(np.max(a)) if a.size else 1e-6)
        ax.scatter(np.maximum(s, 1e-9), np.maximum(a, floor), s=4, alpha=0.4, label="latent std")
        noisy = np.sqrt(s ** 2 + report.noise_force ** 2)
        ax.scatter(noisy, np.maximum(a, floor), s=4, alpha=0.4, label="latent+noise std")
        lo = min(float(np.min(np.maximum(s, 1e-9))), floor)
        hi = max(float(np.max(noisy)), float(np.max(a)), lo * 10)
        grid = np.array([lo, hi])
        ax.plot(grid, grid, "k-", lw=1, label="|error| = std")
        ax.plot(grid, 2 * grid, "k:", lw=1, label="|error| = 2 std")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted std (eV/A)")
        ax.set_ylabel("|error| (eV/A)")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title("force components")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")  # the name as given, even without .png
    plt.close(fig)
    return path


__all__ = ["EvalReport", "evaluate", "plot", "reference_forces", "reference_energy"]
