"""Plots of an on-the-fly run (matplotlib, Agg backend: no display needed).

``plot_run(run_dir, test=None)`` writes into ``run_dir``:

- ``temperature.png``: temperature against time, DFT calls marked;
- ``training.png``: training environments and the force-noise hyperparameter sigma_n
  against time (two panels, DFT calls marked);
- ``pre_update_uncertainty.png`` when DFT frames carry the prediction made before they
  were learnt (``gp_forces``, ``gp_latent_force_stds``): the run's own held-out check of the std,
  the plot of :func:`plot_uncertainty`;
- with ``test`` (extxyz frames with reference forces): ``parity.png`` (predicted against
  reference force components) and ``uncertainty.png`` (predicted std against the absolute
  error, binned).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def agg_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``run_dir/log.jsonl`` (a step logged twice keeps both entries, e.g.
    before and after a velocity rescale at a stage boundary)."""
    entries = []
    with open(Path(run_dir) / "log.jsonl") as f:
        for line in f:
            line = line.strip()
            if line:
                entries.append(json.loads(line))
    if not entries:
        raise ValueError(f"{run_dir}/log.jsonl is empty")
    return entries


def _stage_boundaries_ps(run_dir: Path, dt_fs: float | None) -> list[tuple[float, str]]:
    """Times (ps) where a stage starts, from run_config.json/stages.json when present."""
    cfg_path = run_dir / "run_config.json"
    if not cfg_path.is_file() or not dt_fs:
        return []
    cfg = json.loads(cfg_path.read_text())
    stages = cfg.get("md", {}).get("stages", [])
    out, step = [], 0
    for i, s in enumerate(stages):
        if i > 0:
            out.append((step * dt_fs / 1000.0, s.get("name", f"stage {i}")))
        step += int(s["steps"])
    return out


def _timestep_fs(entries: Sequence[dict[str, Any]]) -> float | None:
    for e in entries:
        if e["step"] > 0:
            return e["time_fs"] / e["step"]
    return None


def _dft_entries(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for e in entries:
        if e.get("dft") and e["step"] not in seen:
            seen.add(e["step"])
            out.append(e)
    return out


def plot_temperature(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Temperature against time with the DFT calls marked; returns the PNG path."""
    plt = agg_pyplot()
    run_dir = Path(run_dir)
    entries = read_log(run_dir)
    t = np.array([e["time_fs"] for e in entries]) / 1000.0
    temp = np.array([e["temperature_K"] for e in entries])
    dft = _dft_entries(entries)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, temp, color="C0", lw=1.2, label="MD (GP forces)")
    if dft:
        ax.plot([e["time_fs"] / 1000.0 for e in dft], [e["temperature_K"] for e in dft], "o",
                ms=4, color="C3", label=f"DFT call ({len(dft)})")
    for tb, name in _stage_boundaries_ps(run_dir, _timestep_fs(entries)):
        ax.axvline(tb, color="0.5", ls="--", lw=0.8)
        ax.text(tb, ax.get_ylim()[1], f" {name}", va="top", ha="left", fontsize=8, color="0.3")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("temperature (K)")
    ax.set_title("On-the-fly MD: temperature and DFT calls")
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    out = Path(path) if path else run_dir / "temperature.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_training(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Training-set size and sigma_n against time (FLARE paper Fig. 3 style)."""
    plt = agg_pyplot()
    run_dir = Path(run_dir)
    entries = read_log(run_dir)
    t = np.array([e["time_fs"] for e in entries]) / 1000.0
    n_env = np.array([e["training_environments"] for e in entries])
    noise = np.array([e["hyperparameters"].get("noise_force", np.nan) for e in entries]) * 1000.0
    thr = np.array([np.nan if e.get("threshold_eV_per_A") is None else e["threshold_eV_per_A"]
                    for e in entries]) * 1000.0
    max_std = np.array([np.nan if e.get("max_std_eV_per_A") is None else e["max_std_eV_per_A"]
                        for e in entries]) * 1000.0
    dft = _dft_entries(entries)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.step(t, n_env, where="post", color="C0")
    ax1.set_ylabel("training environments")
    for e in dft:
        ax1.axvline(e["time_fs"] / 1000.0, color="C3", lw=0.4, alpha=0.5)
    ax1.set_title(f"{len(dft)} DFT calls (red lines), {int(n_env[-1])} environments")
    ax2.plot(t, noise, color="C2", label=r"$\sigma_n$ (force noise)")
    if np.isfinite(max_std).any():
        ax2.plot(t, max_std, color="C1", lw=0.7, alpha=0.7, label="max predicted force std")
    if np.isfinite(thr).any():
        ax2.plot(t, thr, color="k", ls="--", lw=0.8, label="DFT threshold")
    ax2.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax2.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(ScalarFormatter())
    ax2.yaxis.set_minor_formatter(NullFormatter())
    ax2.set_ylabel("meV/A")
    ax2.set_xlabel("time (ps)")
    ax2.legend(loc="best", fontsize=8)
    for tb, _ in _stage_boundaries_ps(run_dir, _timestep_fs(entries)):
        for ax in (ax1, ax2):
            ax.axvline(tb, color="0.5", ls="--", lw=0.8)
    fig.tight_layout()
    out = Path(path) if path else run_dir / "training.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def predict_test_set(model: Any, frames: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference forces, predicted forces and latent predicted stds (flattened components
    of the atoms whose forces are labels; :func:`plot_uncertainty` adds sigma_n itself).
    A frame without usable reference forces is a ValueError naming it."""
    from .reference_labels import checked_reference_forces

    ref, pred, std = [], [], []
    for i, atoms in enumerate(frames):
        f_ref, rows = checked_reference_forces(atoms, f"test frame {i}")
        p = model.predict(atoms, variance=True)
        ref.append(f_ref[rows].ravel())
        pred.append(np.asarray(p.forces)[rows].ravel())
        std.append(np.asarray(p.latent_force_stds)[rows].ravel())
    return np.concatenate(ref), np.concatenate(pred), np.concatenate(std)


def plot_parity(ref: np.ndarray, pred: np.ndarray, path: str | os.PathLike) -> Path:
    plt = agg_pyplot()
    mae = float(np.abs(pred - ref).mean())
    fig, ax = plt.subplots(figsize=(5, 5))
    lim = float(max(np.abs(ref).max(), np.abs(pred).max())) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8)
    ax.plot(ref, pred, ".", ms=3, alpha=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("reference force component (eV/A)")
    ax.set_ylabel("GP force component (eV/A)")
    ax.set_title(f"{ref.size} components, MAE {1000 * mae:.1f} meV/A")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _binned(s: np.ndarray, err: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(s)
    groups = [g for g in np.array_split(order, min(bins, max(1, s.size))) if g.size]
    return (np.array([s[g].mean() for g in groups]), np.array([err[g].mean() for g in groups]),
            np.array([np.sqrt((err[g] ** 2).mean()) for g in groups]))


def plot_uncertainty(ref: np.ndarray, pred: np.ndarray, std: np.ndarray, path: str | os.PathLike,
                     bins: int = 10, noise: float | None = None) -> Path:
    """Absolute error against predicted std: scatter plus binned means (equal-count bins).

    ``std`` is the latent (noise-free) std the on-the-fly threshold uses; with ``noise``
    (sigma_n, eV/A) the binned RMS error is also shown against sqrt(std^2 + sigma_n^2), the
    predictive std of a noisy reference label.
    """
    plt = agg_pyplot()
    err = np.abs(pred - ref) * 1000.0
    s = std * 1000.0
    bs, be, brms = _binned(s, err, bins)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(s, err, ".", ms=2, alpha=0.25, color="0.5", label="force components (latent std)")
    ax.plot(bs, be, "o-", color="C0", label="binned mean |error|")
    ax.plot(bs, brms, "s--", color="C1", ms=4, label="binned RMS error")
    hi = max(s.max(), err.max())
    lo_s = s.min()
    if noise:
        total = np.sqrt(s ** 2 + (1000.0 * noise) ** 2)
        ts, _, trms = _binned(total, err, bins)
        ax.plot(ts, trms, "^-", color="C2", ms=4,
                label=rf"binned RMS error vs std incl. $\sigma_n$ = {1000 * noise:.0f} meV/A")
        hi = max(hi, total.max())
    positive = err[err > 0]
    y_lo = max(float(np.percentile(positive, 1)) / 2 if positive.size else 1e-3, 1e-3)
    lo = max(min(lo_s / 2, y_lo), 1e-3)
    hi = 2 * hi
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="error = std")
    ax.plot([lo, hi], [lo * np.sqrt(2 / np.pi), hi * np.sqrt(2 / np.pi)], color="k", lw=0.8, ls=":",
            label=r"mean |error| of a Gaussian ($\sqrt{2/\pi}\,\sigma$)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(max(lo_s / 2, 1e-3), hi)
    ax.set_ylim(y_lo, hi)
    ax.set_xlabel("predicted force std (meV/A)")
    ax.set_ylabel("absolute force error (meV/A)")
    ax.set_title("Uncertainty against error (test set)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def pre_update_predictions(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """DFT forces, pre-update predicted forces and latent stds (flattened components) of the
    run's labelled frames that carry a pre-update prediction; None if none does."""
    from ase.io import read

    ref, pred, std = [], [], []
    for path in sorted((Path(run_dir) / "dft").glob("frame_*.extxyz")):
        frame = read(path)
        if "gp_forces" in frame.arrays:
            ref.append(frame.get_forces(apply_constraint=False).ravel())
            pred.append(frame.arrays["gp_forces"].ravel())
            # Runs before the calibration stored the latent std as gp_force_stds.
            key = "gp_latent_force_stds" if "gp_latent_force_stds" in frame.arrays else "gp_force_stds"
            std.append(frame.arrays[key].ravel())
    if not ref:
        return None
    return np.concatenate(ref), np.concatenate(pred), np.concatenate(std)


def plot_run(run_dir: str | os.PathLike, test: str | os.PathLike | None = None) -> list[Path]:
    """Write the PNGs of a run directory (see the module docstring); returns their paths."""
    run_dir = Path(run_dir)
    paths = [plot_temperature(run_dir), plot_training(run_dir)]
    pre = pre_update_predictions(run_dir)
    if pre is not None:
        entries = read_log(run_dir)
        noise = entries[-1]["hyperparameters"].get("noise_force") if entries else None
        paths.append(plot_uncertainty(*pre, run_dir / "pre_update_uncertainty.png", noise=noise))
    if test is not None:
        from ase.io import read

        from .models import load_model

        model_path = run_dir / "model.otfgp"
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path} not found (the run has not finished)")
        model = load_model(model_path)  # a run that switched to a ScalableGP ends with one
        frames = read(test, index=":")
        ref, pred, std = predict_test_set(model, frames)
        paths.append(plot_parity(ref, pred, run_dir / "parity.png"))
        paths.append(plot_uncertainty(ref, pred, std, run_dir / "uncertainty.png",
                                      noise=model.hyperparameters.get("noise_force")))
    return paths
