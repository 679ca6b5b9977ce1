#!/usr/bin/env python3
"""The scalable GP in on-the-fly learning and in ``otfgp train`` (issue 15), EMT as the labeller.

Sections (each run in its own subprocess; results in bench/results/scale_otf.json):

* ``switch``: why the automatic switch is at 150 environments -- the exact GP's retrain
  time (10 L-BFGS-B iterations, and the solution alone) and one 32-atom prediction with the
  exact variance against the training-set size, on environments of hot 32-atom Al
  (Langevin at 1500 K); at each size the scalable model made from that GP
  (``ScalableGP.from_gaussian_process``, trained) and its force MAE / variance against the
  exact GP's on held-out frames.
* ``melt``: on-the-fly Al melt, 32 atoms, Langevin 500 steps at 800 K + 500 steps at
  1800 K (5 fs), ``[model] kind = "auto"`` (OTFOptions.scalable_after = 150): DFT calls,
  the switch step, wall time, held-out force MAE and calibration of the final model on EMT
  frames of both temperatures.
* ``train``: ``otfgp train`` (the CLI) with ``kind = "scalable"`` on 2000 EMT frames of
  32-atom Al (Langevin at 300 to 1500 K; forces, energy and stress labels): wall time,
  labels and the held-out force MAE.

    python bench/scale_otf.py                   # all sections
    python bench/scale_otf.py --sections melt
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import benchinfo
from benchinfo import cpu_model, git_commit, modified_paths

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "scale_otf.json"
CUTOFFS = {"twobody": 5.0, "threebody": 3.5}
SWITCH_SIZES = (100, 200, 300)


def snapshots(temperature_K: float, n: int, seed: int, spacing: int = 10) -> list:
    """``n`` EMT-labelled 32-atom Al frames of a Langevin run at ``temperature_K`` from the
    unjittered lattice."""
    from al_frames import emt_langevin_frames

    return emt_langevin_frames(temperature_K, n, seed, every=spacing, jitter=0.0)


def errors(model, frames: list) -> dict:
    """Force MAE and the reported std's 1-std coverage and mean z^2 on ``frames``."""
    err, std = [], []
    for a in frames:
        p = model.predict(a)
        err.append((p.forces - a.get_forces()).ravel())
        std.append(p.force_stds.ravel())
    e, s = np.concatenate(err), np.concatenate(std)
    return {"force_mae": float(np.mean(np.abs(e))), "force_rmse": float(np.sqrt(np.mean(e ** 2))),
            "coverage_1std": float(np.mean(np.abs(e) < s)), "mean_squared_z": float(np.mean((e / s) ** 2))}


# --------------------------------------------------------------------------- sections
def worker_switch() -> dict:
    import otfgp

    rng = np.random.default_rng(3)
    pool = snapshots(1500.0, max(SWITCH_SIZES) // 10, seed=11)
    test = snapshots(1500.0, 10, seed=12)
    out = []
    for size in SWITCH_SIZES:
        gp = otfgp.GaussianProcess(["Al"], CUTOFFS)
        for a in pool[:size // 10]:
            gp.add_training_data(a, atom_indices=np.sort(rng.choice(len(a), 10, replace=False)))
        t = time.perf_counter()
        gp.train(optimize=True, max_iterations=10)
        t_opt = time.perf_counter() - t
        t = time.perf_counter()
        gp.train(optimize=False)
        t_solve = time.perf_counter() - t
        t = time.perf_counter()
        gp.predict(test[0], variance="exact")
        t_pred = time.perf_counter() - t
        t = time.perf_counter()
        sc = otfgp.ScalableGP.from_gaussian_process(gp, lower_margin=1.0)
        sc.train(optimize=True, max_iterations=50)  # as OTF's default max_iterations
        t_sc = time.perf_counter() - t
        ratio = []
        for a in test:
            ratio.append((sc.predict(a).latent_force_stds / gp.predict(a, variance="exact").latent_force_stds).ravel())
        r = np.concatenate(ratio)
        row = {"environments": gp.n_training_environments, "exact_optimise_10_iterations_s": t_opt,
               "exact_solve_s": t_solve, "exact_predict_with_variance_s": t_pred,
               "scalable_from_gp_and_train_s": t_sc, "exact": errors(gp, test), "scalable": errors(sc, test),
               "scalable_latent_std_ratio_median": float(np.median(r)),
               "hyperparameters": {"exact": gp.hyperparameters, "scalable": sc.hyperparameters}}
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    return {"temperature_K": 1500.0, "test_frames": len(test), "sizes": out}


def worker_melt() -> dict:
    import warnings

    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    import otfgp
    from otfgp.builders import maxwell_boltzmann
    from otfgp.scalable import AUTO_SWITCH_ENVIRONMENTS

    rng = np.random.default_rng(5)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    maxwell_boltzmann(atoms, 800.0, rng)
    Stationary(atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = Langevin(atoms, 5 * units.fs, temperature_K=800.0, friction=0.02 / units.fs, fixcm=False, rng=rng)
    # the uncertainty is checked every 5th step, no spline maps (the exact mean is cheap at a few
    # hundred environments; re-mapping at every call is not), hyperparameters optimised (20 iterations) for
    # the first 10 DFT calls: the exact GP's cost at a few hundred environments would
    # otherwise dominate the benchmark on a shared 2-core machine
    # (--melt-threshold, --melt-add-threshold, --scalable-after: passed on in the environment)
    add = os.environ.get("MELT_ADD_THRESHOLD")
    options = dict(threshold=float(os.environ.get("MELT_THRESHOLD", "0.05")), max_atoms_added=8, init_atoms=8,
                   add_threshold=None if add is None else float(add), calibration="relative",
                   force_decision="calibrated", every=5, map=False,
                   optimize_until_calls=10, max_iterations=20,
                   scalable_after=int(os.environ.get("MELT_SCALABLE_AFTER", AUTO_SWITCH_ENVIRONMENTS)),
                   progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with otfgp.OTF(dyn, otfgp.GaussianProcess(["Al"], CUTOFFS), EMT(), output_dir=f"{tmp}/run", **options) as otf:
            first = otf.run(500)
            dyn.set_temperature(temperature_K=1800.0)
            summary = otf.run(500)
            wall = time.perf_counter() - t0
            model = otf.model
            size = (Path(tmp) / "run" / "model.otfgp").stat().st_size
    tests = {"800K": snapshots(800.0, 10, seed=21), "1800K": snapshots(1800.0, 10, seed=22)}
    return {"steps": summary["steps"], "dft_calls": summary["dft_calls"],
            "dft_calls_first_500": first["dft_calls"], "dft_call_steps": summary["dft_call_steps"],
            "model_switch": summary["model_switch"], "final_model": summary["model"],
            "training_environments": summary["training_environments"], "wall_time_s": wall,
            "timers": summary["wall_time_s"], "pre_update_calibration": summary["pre_update_calibration"],
            "model_file_bytes": size, "options": options,
            "heldout": {k: errors(model, v) for k, v in tests.items()}}


def worker_train() -> dict:
    from ase.io import write

    temps = (300.0, 600.0, 900.0, 1200.0, 1500.0)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        frames = [a for i, T in enumerate(temps) for a in snapshots(T, 400, seed=30 + i, spacing=5)]
        t_label = time.perf_counter() - t
        write(f"{tmp}/frames.extxyz", frames)
        (Path(tmp) / "train.toml").write_text(
            '[model]\nspecies = ["Al"]\ntwobody = 5.0\nthreebody = 3.5\nkind = "scalable"\n'
            '[data]\nfiles = ["frames.extxyz"]\n[train]\noutput = "model.otfgp"\n')
        t = time.perf_counter()
        res = subprocess.run([str(Path(sys.executable).parent / "otfgp"), "train", "train.toml"], cwd=tmp,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t
        if res.returncode:
            raise RuntimeError(res.stderr[-3000:])
        summary = json.loads((Path(tmp) / "model_summary.json").read_text())
        import otfgp

        model = otfgp.ScalableGP.load(Path(tmp) / "model.otfgp")
        size = (Path(tmp) / "model.otfgp").stat().st_size
    tests = {f"{int(T)}K": snapshots(T, 5, seed=60 + i) for i, T in enumerate(temps)}
    return {"frames": len(frames), "atoms_per_frame": 32, "temperatures_K": list(temps),
            "label_seconds": t_label, "otfgp_train_wall_s": wall, "labels": summary["training_labels"],
            "training_environments": summary["training_environments"],
            "summary_wall_time_s": summary["wall_time_s"], "hyperparameters": summary["hyperparameters"],
            "model_file_bytes": size, "heldout": {k: errors(model, v) for k, v in tests.items()}}


WORKERS = {"switch": worker_switch, "melt": worker_melt, "train": worker_train}


def run_worker(section: str, threads: int) -> dict:
    return benchinfo.run_worker(__file__, ["--worker", section], threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", nargs="+", choices=list(WORKERS), default=list(WORKERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--melt-threshold", type=float, help="melt: DFT threshold, eV/A (default 0.05)")
    ap.add_argument("--melt-add-threshold", type=float, help="melt: add_threshold, eV/A (default: the threshold)")
    ap.add_argument("--scalable-after", type=int, help="melt: the switch threshold (default: AUTO_SWITCH_ENVIRONMENTS, 150)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name, value in (("MELT_THRESHOLD", args.melt_threshold), ("MELT_ADD_THRESHOLD", args.melt_add_threshold),
                        ("MELT_SCALABLE_AFTER", args.scalable_after)):
        if value is not None:
            os.environ[name] = str(value)
    if args.worker:
        print(json.dumps(WORKERS[args.worker]()))
        return
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results.update({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "cpu": cpu_model(), "commit": git_commit(), "modified": modified_paths(), "cutoffs": CUTOFFS})
    for section in args.sections:
        results[section] = run_worker(section, args.threads)
        print(section, json.dumps(results[section], indent=1), flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
