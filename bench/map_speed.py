#!/usr/bin/env python3
"""Mapped GP against the exact GP in Python: build time, prediction cost, accuracy.

Workload (the FLARE mapped-GP reference: fcc Al, 100 training environments): 32-atom fcc
Al cells (a = 4.05 A) with every coordinate displaced uniformly within +-0.2 A, EMT labels,
r2 = 5.0 A, r3 = 3.5 A, 4 cells x 25 random force atoms. Two models:

* ``optimized``: hyperparameters by maximum likelihood (what a user gets);
* ``fixed``: sigma2 0.3 eV, ell2 0.9 A, sigma3 0.05 eV, ell3 0.7 A, sigma_n 10 meV/A -- a
  sizeable 3-body part, so the triplet tables matter (the optimiser tends to switch the
  3-body term almost off on this data).

For each: ``gp.map()`` with the default tolerance (automatic grids) and with FLARE's grids
(64 pair nodes, 16^3 triplet nodes); then, on 8 unseen cells of the same kind (256 atoms),
the force deviation of the map from the exact GP, the mapped vs exact standard deviation
(Spearman rank correlation, relative error), and the wall time per atom of: exact mean,
exact mean + variance, mapped mean, mapped mean + mapped variance (median of 5, 1 thread).

    .venv/bin/python bench/map_speed.py [--output bench/results/map_speed.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.stats
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from benchinfo import cpu_model

CUTOFFS = {"twobody": 5.0, "threebody": 3.5}
FIXED = {"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7, "noise_force": 0.01}


def cell(rng: np.random.Generator):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    atoms.positions += rng.uniform(-0.2, 0.2, atoms.positions.shape)
    atoms.calc = EMT()
    return atoms


def model(kind: str, seed: int = 0) -> otfgp.GaussianProcess:
    rng = np.random.default_rng(seed)
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=FIXED if kind == "fixed" else None)
    for _ in range(4):
        gp.add_training_data(cell(rng), atom_indices=rng.choice(32, 25, replace=False))
    gp.train(optimize=kind == "optimized")
    return gp


def per_atom_ms(gp: otfgp.GaussianProcess, tests, variance) -> float:
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for a in tests:
            gp.predict(a, variance=variance)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times) / sum(len(a) for a in tests)


def measure(kind: str, grids: dict[str, int]) -> dict:
    gp = model(kind)
    exact = model(kind)
    rng = np.random.default_rng(99)
    tests = [cell(rng) for _ in range(8)]
    t = time.perf_counter()
    report = gp.map(**grids)
    build = time.perf_counter() - t
    f_dev, s_map, s_exact = [], [], []
    for a in tests:
        m, e = gp.predict(a, variance="mapped"), exact.predict(a, variance="exact")
        f_dev.append(np.abs(m.forces - e.forces).ravel())
        s_map.append(m.latent_force_stds.ravel())  # latent against latent: the map's own accuracy
        s_exact.append(e.latent_force_stds.ravel())
    f_dev, s_map, s_exact = map(np.concatenate, (f_dev, s_map, s_exact))
    rel = np.abs(s_map - s_exact) / s_exact
    row = {
        "model": kind, "hyperparameters": gp.hyperparameters, "grids_requested": grids or "automatic",
        "grid2": report.grid2, "grid3": report.grid3, "variance_basis": [report.grid2_variance, report.grid3_variance],
        "build_seconds": build,
        "force_deviation_mean_meV_per_A": 1e3 * float(f_dev.mean()),
        "force_deviation_max_meV_per_A": 1e3 * float(f_dev.max()),
        "std_exact_mean_meV_per_A": 1e3 * float(s_exact.mean()),
        "std_mapped_mean_meV_per_A": 1e3 * float(s_map.mean()),
        "std_spearman": float(scipy.stats.spearmanr(s_map, s_exact)[0]),
        "std_relative_error_median": float(np.median(rel)),
        "std_relative_error_p90": float(np.percentile(rel, 90)),
        "ms_per_atom": {
            "exact_mean": per_atom_ms(exact, tests, False),
            "exact_mean_variance": per_atom_ms(exact, tests, "exact"),
            "mapped_mean": per_atom_ms(gp, tests, False),
            "mapped_mean_variance": per_atom_ms(gp, tests, "mapped"),
        },
    }
    ms = row["ms_per_atom"]
    print(f"{kind:9s} grids {report.grid2:3d}/{report.grid3:2d}^3 (variance basis {report.grid2_variance}/"
          f"{report.grid3_variance}^3) built {build:5.2f} s | force dev mean {row['force_deviation_mean_meV_per_A']:.3f}"
          f" max {row['force_deviation_max_meV_per_A']:.3f} meV/A | std exact {row['std_exact_mean_meV_per_A']:.2f}"
          f" mapped {row['std_mapped_mean_meV_per_A']:.2f} meV/A, Spearman {row['std_spearman']:.3f}, median rel "
          f"{row['std_relative_error_median']:.1%} | ms/atom exact {ms['exact_mean']:.3f} / {ms['exact_mean_variance']:.3f}"
          f", mapped {ms['mapped_mean']:.4f} / {ms['mapped_mean_variance']:.4f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "map_speed.json"))
    args = ap.parse_args()
    otfgp.set_num_threads(1)
    rows = [measure(kind, grids) for kind in ("optimized", "fixed")
            for grids in ({}, {"grid2": 64, "grid3": 16})]
    out = {
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "threads": 1},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "flare_reference": {"grid2": 64, "grid3": 16, "build_seconds": 5.3, "mapped_ms_per_atom": 0.78,
                            "exact_ms_per_atom": 84, "force_deviation_mean_meV_per_A": 0.23,
                            "force_deviation_max_meV_per_A": 4.4, "mapped_std_meV_per_A": 31,
                            "exact_std_meV_per_A": 1.5},
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
