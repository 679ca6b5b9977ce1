#!/usr/bin/env python3
"""Scaling benchmark of the reduced-rank model (otfgp.ScalableGP) against the exact GP.

Protocol of issue 15 (the FLARE sparse-GP anchor): 2x2x2 cubic fcc Al cells (32 atoms,
a = 4.05 A), every coordinate displaced uniformly within +-5 % of a, EMT labels (forces of
all atoms: 96 labels per cell; a second series adds each cell's energy), cutoffs 5.0 /
3.5 A. For each training size (labels) a fresh subprocess (so that its peak RSS is its own) times

* adding the data (design rows in C++ + the coefficient-space rank updates),
* training with maximum-likelihood hyperparameter optimisation (L-BFGS-B),

and measures the force MAE and the 1-std coverage (fraction of force components whose error
is below the predicted std, latent and latent + noise) on 5 fresh cells at 5 % and at 9 %
displacement. Labelling with EMT is not part of the training time.

Exact-GP comparison at 100 environments (4 cells x 25 random atoms' forces, as in
gp_speed.py): the exact GP trained as usual (priors, MAP), the scalable model at the exact
GP's hyperparameters (the basis approximation alone) and trained by itself (ML).

    python bench/scale.py                       # 10^3, 10^4, 10^5 labels + the comparison
    python bench/scale.py --sizes 1000 10000 --threads 1
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

import benchinfo
from benchinfo import cpu_model, git_commit, modified_paths

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "scale.json"
LATTICE = 4.05
CUTOFFS = {"twobody": 5.0, "threebody": 3.5}
LOWER = 1.5  # basis lower end (A): below the shortest distance of the 9 % test cells
LABELS_PER_CELL = 97
TEST_CELLS = 5
# The anchor: FLARE's sparse GP, 10^4 labels, same protocol, same machine kind.
FLARE = {"labels": 10000, "train_seconds": 3.9 + 2.9, "peak_MB": 594,
         "mae_5": 0.0053, "mae_9": 0.0407, "coverage_5": 0.32, "coverage_9": 0.47}


def cells(n: int, amplitude: float, seed: int) -> list:
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Al", "fcc", a=LATTICE, cubic=True).repeat((2, 2, 2))
        a.positions += rng.uniform(-amplitude * LATTICE, amplitude * LATTICE, a.positions.shape)
        a.calc = EMT()
        a.get_forces()
        a.get_potential_energy()
        out.append(a)
    return out


def errors(model, test) -> dict:
    err, lat, rep = [], [], []
    for a in test:
        p = model.predict(a, variance=True)
        err.append(np.abs(p.forces - a.get_forces()).ravel())
        lat.append(np.sqrt(p.latent_force_variances).ravel())
        rep.append(np.sqrt(p.force_variances).ravel())
    e, sl, sr = map(np.concatenate, (err, lat, rep))
    return {"force_mae": float(e.mean()), "coverage_latent": float(np.mean(e < sl)),
            "coverage_reported": float(np.mean(e < sr)), "latent_std_median": float(np.median(sl))}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_size(labels: int, energy: bool) -> dict:
    import otfgp

    n_cells = -(-labels // (LABELS_PER_CELL if energy else LABELS_PER_CELL - 1))
    t0 = time.perf_counter()
    train = cells(n_cells, 0.05, seed=1)
    label_seconds = time.perf_counter() - t0
    tests = {pct: cells(TEST_CELLS, pct / 100, seed=100 + pct) for pct in (5, 9)}
    rss0 = rss_mb()
    model = otfgp.ScalableGP(["Al"], CUTOFFS, lower=LOWER)
    t0 = time.perf_counter()
    for a in train:
        model.add_training_data(a, energy=energy)
    model._flush()
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.train(optimize=True)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.log_likelihood_gradient()
    t_eval = time.perf_counter() - t0
    out = {"labels": model.n_labels, "energy_labels": energy, "cells": n_cells,
           "coefficients": model.n_coefficients, "rank": model.rank,
           "label_seconds": label_seconds, "add_seconds": t_add, "optimise_seconds": t_train,
           "train_seconds": t_add + t_train, "likelihood_gradient_seconds": t_eval,
           "evaluations": model.evaluations, "hyperparameters": model.hyperparameters,
           "rss_before_training_MB": rss0, "peak_rss_MB": rss_mb()}
    for pct, test in tests.items():
        out[f"test_{pct}pct"] = errors(model, test)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"scale_{os.getpid()}.npz"
    model.save(path)
    out["model_file_bytes"] = path.stat().st_size
    path.unlink()
    # The LAMMPS export (mapped-only otfgp model file; src/otfgp/scalable_maps.py).
    mapped = path.with_suffix(".otfgp")
    t0 = time.perf_counter()
    model.save_mapped(mapped)
    out["export_seconds"] = time.perf_counter() - t0
    out["mapped_file_bytes"] = mapped.stat().st_size
    mapped.unlink()
    return out


def worker_exact() -> dict:
    import otfgp

    rng = np.random.default_rng(7)
    train = cells(4, 0.05, seed=2)
    picks = [np.sort(rng.choice(32, 25, replace=False)) for _ in train]
    tests = {pct: cells(TEST_CELLS, pct / 100, seed=100 + pct) for pct in (5, 9)}
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS)
    for a, idx in zip(train, picks):
        gp.add_training_data(a, atom_indices=idx)
    t0 = time.perf_counter()
    gp.train(optimize=True)
    t_exact = time.perf_counter() - t0
    hyp = gp.hyperparameters

    def scalable(h, optimize):
        m = otfgp.ScalableGP(["Al"], CUTOFFS, hyperparameters=h, lower=LOWER)
        for a, idx in zip(train, picks):
            m.add_training_data(a, atom_indices=idx)
        t = time.perf_counter()
        m.train(optimize=optimize)
        return m, time.perf_counter() - t

    same, _ = scalable(hyp, False)
    own, t_own = scalable(None, True)
    out = {"environments": 100, "exact": {"train_seconds": t_exact, "hyperparameters": hyp},
           "scalable_same_hyperparameters": {}, "scalable_trained": {"train_seconds": t_own,
                                                                     "hyperparameters": own.hyperparameters}}
    for pct, test in tests.items():
        out["exact"][f"test_{pct}pct"] = errors(gp, test)
        out["scalable_trained"][f"test_{pct}pct"] = errors(own, test)
        s = out["scalable_same_hyperparameters"][f"test_{pct}pct"] = errors(same, test)
        ratio, dmean = [], []
        for a in test:
            p, q = gp.predict(a), same.predict(a)
            ratio.append((np.sqrt(q.latent_force_variances) / np.sqrt(p.latent_force_variances)).ravel())
            dmean.append(np.abs(p.forces - q.forces).ravel())
        r = np.concatenate(ratio)
        s["latent_std_relative_difference_median"] = float(np.median(np.abs(r - 1)))
        s["latent_std_relative_difference_p90"] = float(np.percentile(np.abs(r - 1), 90))
        s["mean_force_difference_max"] = float(np.concatenate(dmean).max())
        s["force_mae_relative_to_exact"] = s["force_mae"] / out["exact"][f"test_{pct}pct"]["force_mae"] - 1
    return out


def run_worker(args: list[str], threads: int) -> dict:
    return benchinfo.run_worker(__file__, args, threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.worker == "exact":
            print(json.dumps(worker_exact()))
        else:
            size, _, kind = args.worker.partition(":")
            print(json.dumps(worker_size(int(size), kind == "energy")))
        return
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "cpu": cpu_model(), "commit": git_commit(), "modified": modified_paths(),
               "cutoffs": CUTOFFS, "lower": LOWER, "flare_anchor": FLARE, "sizes": []}
    print(f"{'labels':>7} {'energies':>8} {'rank':>5} {'add s':>7} {'opt s':>7} {'train s':>8} {'evals':>5} "
          f"{'peak MB':>8} {'MAE5':>7} {'MAE9':>7} {'cov5':>5} {'cov9':>5}")
    for kind in ("forces", "energy"):
        for size in args.sizes:
            r = run_worker(["--worker", f"{size}:{kind}"], args.threads)
            results["sizes"].append(r)
            print(f"{r['labels']:>7} {'yes' if r['energy_labels'] else 'no':>8} {r['rank']:>5} {r['add_seconds']:7.2f} "
                  f"{r['optimise_seconds']:7.2f} {r['train_seconds']:8.2f} {r['evaluations']:>5} {r['peak_rss_MB']:8.0f} "
                  f"{r['test_5pct']['force_mae']:7.4f} {r['test_9pct']['force_mae']:7.4f} "
                  f"{r['test_5pct']['coverage_latent']:5.2f} {r['test_9pct']['coverage_latent']:5.2f}", flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1))
    print(f"FLARE anchor (10^4 labels): train {FLARE['train_seconds']:.1f} s, {FLARE['peak_MB']} MB, "
          f"MAE {FLARE['mae_5']} / {FLARE['mae_9']}, coverage {FLARE['coverage_5']} / {FLARE['coverage_9']}")
    c = results["exact_comparison"] = run_worker(["--worker", "exact"], args.threads)
    for name in ("exact", "scalable_same_hyperparameters", "scalable_trained"):
        t5, t9 = c[name]["test_5pct"], c[name]["test_9pct"]
        print(f"100 env {name:>30}: MAE {t5['force_mae']:.4f} / {t9['force_mae']:.4f}, "
              f"coverage {t5['coverage_latent']:.2f} / {t9['coverage_latent']:.2f}")
    s5 = c["scalable_same_hyperparameters"]["test_5pct"]
    print(f"same hyperparameters: MAE {100 * s5['force_mae_relative_to_exact']:+.2f} % vs exact, latent std "
          f"median relative difference {100 * s5['latent_std_relative_difference_median']:.2f} %")
    args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
