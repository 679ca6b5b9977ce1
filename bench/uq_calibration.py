#!/usr/bin/env python3
"""How trustworthy are the GP's force uncertainties, and which calibration fixes them.

Workload (the FLARE anchor): 32-atom fcc Al cells (2x2x2 cubic, a = 4.05 A), EMT labels,
r2 = 5.0 A, r3 = 3.5 A; 100 training environments = 4 cells x 25 random force atoms, every
coordinate displaced uniformly within +-5 % of a; hyperparameters by maximum likelihood.
Test sets (fixed seeds): 5 cells each at 2, 5 and 9 % displacement, and 10 frames of a
3000 K liquid (EMT Langevin, 32 atoms, dt 5 fs, friction 0.02/fs, 200 steps of
equilibration, then a frame every 10 steps).

Reported std variants on every test set:

* ``latent``: ``Prediction.latent_force_stds`` (noise-free GP variance; what was reported before the calibration);
* ``latent+noise``: sigma_n^2 added;
* each form of :mod:`otfgp.calibration` fitted on the leave-one-environment-out residuals of
  the training set only (``GaussianProcess.loo_residuals("environment")``), plus the
  scale + floor form fitted on leave-one-label-out residuals for comparison.

* PROTOTYPE forms of one general formula (implemented here in numpy/scipy, to be replaced
  by :mod:`otfgp.calibration` once the form lands there), fitted the same way on the same
  leave-one-environment-out residuals:

      var = a * v**p + b + c * m2 + e * n

  v the latent variance of the force component, n = sigma_n^2, and m2 either the atom's
  |F_i|^2 / 3 (predicted force; "atom", the default) or the component's own m^2
  ("component"); in the leave-one-out data F_i is the leave-one-out prediction (label minus
  residual), never the label. Forms: ``relative`` (a v + c |F_i|^2/3, the recommended
  one), ``relative_floor`` (+ b), ``relative(component)`` (a v + c m^2) and
  ``general`` (a v^p + b + c |F_i|^2/3, all free). e is not fitted: on this workload n is
  one constant, so e n and b are the same parameter.
* ``general(LOO + cal cells)``, kept apart because it is NOT fitted on leave-one-out alone:
  the general form fitted on the LOO residuals pooled with the held-out errors of 4 extra
  cells (2 at 2 %, 2 at 9 %, seeds disjoint from the test sets), a stand-in for on-the-fly
  pre-update and audit errors that span the conditions; it measures what calibration data
  would reach the target, not a LOO-only result.

Findings (3 training seeds, see the JSON): fitted on LOO alone no form meets the target on
the 2 % set (best: ``relative``, ratio 0.41-0.45); every LOO residual comes from one
displacement amplitude, so a floor b (or e n) and the scale a of v are only loosely
identified and the forms with more freedom win the LOO likelihood by collapsing a, which
wrecks 9 % and liquid. With calibration data spanning 2-9 % the same general formula (b at 0)
reaches the ratio target on all four sets for all three seeds.

Metrics per test set: RMSE / RMS(reported std) (1 = right on average), coverage of
|error| < 1 and < 2 std (68 / 95 % for a Gaussian), Spearman rank correlation over atoms
between the error norm and the RMS std of the atom's three components, and the mean
Gaussian negative log likelihood per force component (lower is better; in nats, forces in
eV/A). Acceptance (the calibration issue's target): ratio within [0.5, 2] on each of the
four test sets and Spearman not lower than the latent std's on each.

``--seeds`` repeats the workload with other training seeds (seed s > 0 also moves the test
sets' seeds by 1000 s); seed 0 is the anchor and fills the top-level keys of the JSON.

    .venv/bin/python bench/uq_calibration.py [--seeds 0 1 2] [--output bench/results/uq_calibration.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

import math

import scipy.optimize

import otfgp
from otfgp.calibration import FORMS, fit_calibration, gaussian_nll
from al_frames import emt_langevin_frames
from benchinfo import cpu_model, git_commit, modified_paths, otfgp_version

A = 4.05
CUTOFFS = {"twobody": 5.0, "threebody": 3.5}
TEST_SETS = ("2%", "5%", "9%", "liquid")
# "relative" and "neighbourhood" need the predicted forces: relative is measured in the prototype section below
CALIBRATED = [f for f in FORMS if f not in ("identity", "relative", "neighbourhood")]
BASELINE_ISSUE = {  # the issue's measurement, same workload (other seeds)
    "ratio_latent": [3.3, 6.7, 4.1, 3.9], "ratio_latent_noise": [0.40, 1.26, 3.9, 3.8],
    "coverage_latent_noise": [1.00, 0.65, 0.30, 0.20], "spearman": [0.55, 0.18, 0.50, 0.69]}


def displaced(rng: np.random.Generator, amplitude: float) -> Atoms:
    atoms = bulk("Al", "fcc", a=A, cubic=True).repeat((2, 2, 2))
    atoms.positions += rng.uniform(-amplitude * A, amplitude * A, atoms.positions.shape)
    atoms.calc = EMT()
    return atoms


def train(seed: int = 0) -> otfgp.GaussianProcess:
    rng = np.random.default_rng(seed)
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS)
    for _ in range(4):
        gp.add_training_data(displaced(rng, 0.05), atom_indices=rng.choice(32, 25, replace=False))
    gp.train()
    return gp


def test_sets(seed: int = 0) -> dict[str, list[Atoms]]:
    out = {}
    for k, amp in enumerate((0.02, 0.05, 0.09)):
        rng = np.random.default_rng(100 + k + 1000 * seed)
        out[TEST_SETS[k]] = [displaced(rng, amp) for _ in range(5)]
    out["liquid"] = emt_langevin_frames(3000.0, 10, seed=2000 + 1000 * seed)
    return out


def predict(gp: otfgp.GaussianProcess, frames: list[Atoms]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Errors, latent variances and predicted forces (each N x 3) over all atoms of the frames."""
    err, var, force = [], [], []
    for f in frames:
        p = gp.predict(f, variance="exact")
        err.append(f.get_forces() - p.forces)
        var.append(p.latent_force_variances)
        force.append(p.forces)
    return np.concatenate(err), np.concatenate(var), np.concatenate(force)


def metrics(err: np.ndarray, var: np.ndarray) -> dict[str, float]:
    std = np.sqrt(var)
    atom_err = np.linalg.norm(err, axis=1)
    atom_std = np.sqrt(var.mean(axis=1))
    return {
        "rmse_over_rms_std": float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(var))),
        "coverage_1std": float(np.mean(np.abs(err) < std)),
        "coverage_2std": float(np.mean(np.abs(err) < 2 * std)),
        "spearman_atoms": float(scipy.stats.spearmanr(atom_err, atom_std)[0]),
        "nll": gaussian_nll(err, var),
    }


# ----------------------------------------------------------------------------------------
# PROTOTYPE calibration forms. To be replaced by otfgp.calibration once the general form
# lands there (another branch is changing that API); kept here, in numpy/scipy, so that the
# measurement does not depend on it.
#
#   reported variance = a * v**p + b + c * m2 + e * n
#
# v: latent variance of the force component; n: label-noise variance sigma_n^2; m2: the
# atom's |F_i|^2 / 3 from the predicted force F_i ("atom") or the component's own m^2
# ("component"). Fitted by maximum Gaussian likelihood (the components treated as
# independent samples, as in otfgp.calibration) over the free parameters; the others are
# fixed at p = 1, b = c = e = 0.
# ----------------------------------------------------------------------------------------
GENERAL_PARAMETERS = ("a", "p", "b", "c", "e")
PROTOTYPES: dict[str, tuple[tuple[str, ...], str]] = {  # name: (free parameters, m2 kind)
    "relative": (("a", "c"), "atom"),
    "relative_floor": (("a", "b", "c"), "atom"),
    "relative(component)": (("a", "c"), "component"),
    "general": (("a", "p", "b", "c"), "atom"),
}
RECOMMENDED_PROTOTYPE = "relative"
SPANNING = "general(LOO + cal cells)"  # not LOO-only: what would reach the target
_P_BOUNDS = (0.1, 3.0)


def force_scale2(forces: np.ndarray, kind: str = "atom") -> np.ndarray:
    """m2 of every force component (N x 3): |F_i|^2 / 3 of its atom, or its own square."""
    forces = np.asarray(forces, dtype=float).reshape(-1, 3)
    if kind == "component":
        return forces**2
    return np.repeat(np.mean(forces**2, axis=1, keepdims=True), 3, axis=1)


def general_variance(params: dict[str, float], v, n, m2) -> np.ndarray:
    """a v^p + b + c m2 + e n (the formula the C++ core is to evaluate)."""
    q = {"a": 0.0, "p": 1.0, "b": 0.0, "c": 0.0, "e": 0.0, **params}
    return q["a"] * np.maximum(v, 0.0) ** q["p"] + q["b"] + q["c"] * m2 + q["e"] * n


def fit_general(r, v, n, m2, free: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """Maximum-likelihood fit of the free parameters of :func:`general_variance` on held-out
    residuals r with latent variances v, noise variances n and force scales m2 (flat arrays).
    Returns all five parameters and the mean NLL per sample."""
    r, v, m2 = (np.asarray(x, dtype=float).ravel() for x in (r, v, m2))
    n = np.broadcast_to(np.asarray(n, dtype=float), r.shape)
    v = np.maximum(v, 0.0)
    # dimensionless: variances in units of v0, m2 in units of its median
    v0 = float(np.median(v + n))
    f0 = float(np.median(m2)) or 1.0
    x, e, q, r2 = v / v0, n / v0, m2 / f0, r**2 / v0
    basis = {"a": x, "b": np.ones_like(x), "c": q, "e": e}

    def unpack(u):
        return {k: (u[i] if k == "p" else math.exp(u[i])) for i, k in enumerate(free)}

    def var_of(t):
        var = t.get("a", 0.0) * x ** t.get("p", 1.0) + t.get("b", 0.0) + t.get("c", 0.0) * q + t.get("e", 0.0) * e
        return np.maximum(var, 1e-12)

    def nll(u):
        var = var_of(unpack(u))
        return float(np.mean(0.5 * (np.log(var) + r2 / var)))

    # starts: each scale term alone carrying the mean squared residual, and all sharing it
    scales = [k for k in free if k != "p"]
    target = float(np.mean(r2))
    starts = []
    for share in [[k] for k in scales] + [scales]:
        u = []
        for k in free:
            if k == "p":
                u.append(1.0)
            else:
                w = target / len(share) if k in share else 1e-4 * target
                u.append(math.log(w / max(float(np.mean(basis[k])), 1e-300)))
        starts.append(u)
    bounds = [_P_BOUNDS if k == "p" else (-40.0, 40.0) for k in free]
    best = min((scipy.optimize.minimize(nll, u, method="L-BFGS-B", bounds=bounds) for u in starts),
               key=lambda res: res.fun)
    t = unpack(best.x)
    p = t.get("p", 1.0)
    params = {"a": t.get("a", 0.0) * v0 ** (1.0 - p), "p": p, "b": t.get("b", 0.0) * v0,
              "c": t.get("c", 0.0) * v0 / f0, "e": t.get("e", 0.0)}
    full = general_variance(params, v, n, m2)
    return params, gaussian_nll(r, np.maximum(full, 1e-12 * v0))


def meets_target(row: dict[str, dict[str, float]], latent: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Per test set: ratio within [0.5, 2] and Spearman not lower than the latent std's."""
    return {c: bool(0.5 <= row[c]["rmse_over_rms_std"] <= 2.0
                    and row[c]["spearman_atoms"] >= latent[c]["spearman_atoms"] - 1e-12) for c in TEST_SETS}


def run_seed(seed: int, bootstrap: bool) -> dict:
    """Train, fit every calibration on the training LOO residuals, evaluate on the test sets."""
    t0 = time.perf_counter()
    gp = train(seed)
    t_train = time.perf_counter() - t0
    hyp = gp.hyperparameters
    noise = hyp["noise_force"] ** 2
    print(f"\n=== seed {seed}: trained on {gp.n_training_environments} environments in {t_train:.1f} s: "
          + ", ".join(f"{k} {v:.4g}" for k, v in hyp.items()), flush=True)

    t0 = time.perf_counter()
    loo_env = gp.loo_residuals("environment").select(0)
    loo_lab = gp.loo_residuals("label").select(0)
    t_loo = time.perf_counter() - t0
    cals = {form: fit_calibration(loo_env.residuals, loo_env.latent_variances, loo_env.noise_variances, form=form)
            for form in CALIBRATED}
    cals["scale_floor(label LOO)"] = fit_calibration(loo_lab.residuals, loo_lab.latent_variances,
                                                     loo_lab.noise_variances, form="scale_floor")
    for name, c in cals.items():
        print(f"  {name:24s} " + ", ".join(f"{k} {v:.4g}" for k, v in c.params.items())
              + f"  (LOO NLL {c.nll:.3f}, {c.n_samples} samples)")

    # PROTOTYPE forms: the leave-one-out prediction of a held-out force is label - residual
    force_rows = np.flatnonzero(np.asarray(gp.core.row_kinds) == 0)
    labels = np.asarray(gp.core.labels, dtype=float)[force_rows]
    loo_force = {"environment": labels - loo_env.residuals, "label": labels - loo_lab.residuals}
    loo = {"environment": loo_env, "label": loo_lab}
    protos: dict[str, dict] = {}
    for name, (free, kind) in PROTOTYPES.items():
        for mode in ("environment", "label"):
            if mode == "label" and name != RECOMMENDED_PROTOTYPE:
                continue
            L = loo[mode]
            m2 = force_scale2(loo_force[mode], kind).ravel()
            params, nll = fit_general(L.residuals, L.latent_variances, L.noise_variances, m2, free)
            key = name if mode == "environment" else f"{name}(label LOO)"
            protos[key] = {"params": params, "free": list(free), "m2": kind, "loo_mode": mode, "nll": nll,
                           "n_samples": int(L.residuals.size)}
            print(f"  PROTOTYPE {key:24s} " + ", ".join(f"{k} {params[k]:.4g}" for k in free)
                  + f"  (LOO NLL {nll:.3f})")

    # How well the training LOO pins the maps down: refit on bootstrap resamples of the
    # training environments (3 rows each).
    bootstrap_out = {}
    q = None
    if bootstrap:
        rng = np.random.default_rng(7)
        n_env = loo_env.residuals.size // 3
        boot, boot_rel = [], []
        m2_env = force_scale2(loo_force["environment"], PROTOTYPES[RECOMMENDED_PROTOTYPE][1]).ravel()
        for _ in range(200):
            pick = (3 * rng.integers(0, n_env, n_env)[:, None] + np.arange(3)).ravel()
            c = fit_calibration(loo_env.residuals[pick], loo_env.latent_variances[pick],
                                loo_env.noise_variances[pick], form="scale_floor")
            boot.append((c.params["a"], c.params["b"]))
            pr, _ = fit_general(loo_env.residuals[pick], loo_env.latent_variances[pick],
                                loo_env.noise_variances[pick], m2_env[pick], PROTOTYPES[RECOMMENDED_PROTOTYPE][0])
            boot_rel.append((pr["a"], pr["c"]))
        q = np.percentile(np.array(boot), [16, 50, 84], axis=0)
        qr = np.percentile(np.array(boot_rel), [16, 50, 84], axis=0)
        bootstrap_out = {
            "scale_floor": {"resamples": len(boot), "a_16_50_84": q[:, 0].tolist(), "b_16_50_84": q[:, 1].tolist()},
            RECOMMENDED_PROTOTYPE: {"resamples": len(boot_rel), "a_16_50_84": qr[:, 0].tolist(),
                                    "c_16_50_84": qr[:, 1].tolist()}}
        print(f"  scale_floor bootstrap (200 resamples of environments): a {q[0, 0]:.3g} / {q[1, 0]:.3g} / "
              f"{q[2, 0]:.3g}, sqrt(b) {1e3 * np.sqrt(q[0, 1]):.2f} / {1e3 * np.sqrt(q[1, 1]):.2f} / "
              f"{1e3 * np.sqrt(q[2, 1]):.2f} meV/A (16/50/84 %)")
        print(f"  PROTOTYPE {RECOMMENDED_PROTOTYPE} bootstrap: a {qr[0, 0]:.3g} / {qr[1, 0]:.3g} / {qr[2, 0]:.3g}, "
              f"sqrt(c) {np.sqrt(qr[0, 1]):.4f} / {np.sqrt(qr[1, 1]):.4f} / {np.sqrt(qr[2, 1]):.4f} (16/50/84 %)")

    # What would reach the target (NOT LOO-only, kept apart): the general form fitted on the
    # LOO residuals pooled with held-out errors of 4 extra calibration cells (2 at 2 %, 2 at
    # 9 %; seeds 700 + k + 1000 s, disjoint from the test sets), standing in for on-the-fly
    # pre-update / audit errors that span the conditions.
    cal_cells = []
    for k, amp in enumerate((0.02, 0.09)):
        crng = np.random.default_rng(700 + k + 1000 * seed)
        cal_cells += [displaced(crng, amp) for _ in range(2)]
    ce, cv, cf = predict(gp, cal_cells)
    kind = PROTOTYPES["general"][1]
    params, nll = fit_general(np.r_[loo_env.residuals, ce.ravel()], np.r_[loo_env.latent_variances, cv.ravel()],
                              noise, np.r_[force_scale2(loo_force["environment"], kind).ravel(),
                                           force_scale2(cf, kind).ravel()], PROTOTYPES["general"][0])
    protos[SPANNING] = {"params": params, "free": list(PROTOTYPES["general"][0]), "m2": kind,
                        "loo_mode": "environment + 4 calibration cells (2 % and 9 %)", "nll": nll,
                        "n_samples": int(loo_env.residuals.size + ce.size)}
    print(f"  PROTOTYPE {SPANNING:24s} " + ", ".join(f"{k} {params[k]:.4g}" for k in PROTOTYPES["general"][0])
          + f"  (NLL {nll:.3f}; NOT LOO-only)")

    sets = test_sets(seed)
    data = {name: predict(gp, frames) for name, frames in sets.items()}
    # the training-set LOO itself (what the calibration saw), for reference
    data["train LOO"] = (loo_env.residuals.reshape(-1, 3), loo_env.latent_variances.reshape(-1, 3),
                         loo_force["environment"].reshape(-1, 3))
    columns = list(TEST_SETS) + ["train LOO"]

    variants = {"latent": lambda v, F: v, "latent+noise": lambda v, F: v + noise}
    for name, c in cals.items():
        variants[name] = (lambda cal: (lambda v, F: cal.apply(v, noise)))(c)
    for name, pr in protos.items():
        variants[f"PROTOTYPE {name}"] = (lambda pr: (lambda v, F: general_variance(
            pr["params"], v, noise, force_scale2(F, pr["m2"]))))(pr)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for vname, f in variants.items():
        table[vname] = {col: metrics(data[col][0], f(data[col][1], data[col][2])) for col in columns}
    accept = {vname: meets_target(table[vname], table["latent"]) for vname in variants}

    rmse = {col: float(np.sqrt(np.mean(data[col][0] ** 2))) for col in columns}
    print("\nforce RMSE (meV/A): " + ", ".join(f"{c} {1e3 * rmse[c]:.1f}" for c in columns))
    for key, label in (("rmse_over_rms_std", "RMSE / RMS(std)"), ("coverage_1std", "coverage |err| < 1 std"),
                       ("coverage_2std", "coverage |err| < 2 std"),
                       ("spearman_atoms", "Spearman over atoms"), ("nll", "Gaussian NLL per component")):
        print(f"\n{label}")
        print(f"{'':36s}" + "".join(f"{c:>11s}" for c in columns))
        for vname in variants:
            print(f"{vname:36s}" + "".join(f"{table[vname][c][key]:11.3f}" for c in columns))
    print("\nmeets the target (ratio in [0.5, 2] and Spearman >= latent's) on 2% / 5% / 9% / liquid:")
    for vname in variants:
        print(f"  {vname:36s} " + " ".join("yes" if accept[vname][c] else "no " for c in TEST_SETS))
    return {"seed": seed, "gp": gp, "hyp": hyp, "t_train": t_train, "t_loo": t_loo, "cals": cals, "protos": protos,
            "bootstrap": bootstrap_out, "q": q, "table": table, "accept": accept, "rmse": rmse}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "uq_calibration.json"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="training seeds (0 = the anchor workload; default 0 1 2)")
    args = ap.parse_args()
    otfgp.set_num_threads(1)
    seeds = list(dict.fromkeys(args.seeds))
    runs = {s: run_seed(s, bootstrap=(s == seeds[0])) for s in seeds}
    r0 = runs[seeds[0]]
    table, cals, q = r0["table"], r0["cals"], r0["q"]

    # Recommendation among the library forms (as before): those with the ratio in [0.5, 2] on
    # every test set; of those the lowest mean NLL over the four test sets.
    def mean_nll(v: str) -> float:
        return float(np.mean([table[v][c]["nll"] for c in TEST_SETS]))

    ok = [f for f in CALIBRATED
          if all(0.5 <= table[f][c]["rmse_over_rms_std"] <= 2.0 for c in TEST_SETS)]
    pool = ok or CALIBRATED
    best = min(pool, key=mean_nll)
    simplest = min(pool, key=lambda f: (len(cals[f].params), mean_nll(f)))
    close = [f for f in pool if mean_nll(f) <= mean_nll(best) + 0.05]
    pick = min(close, key=lambda f: len(cals[f].params))
    meets = (f"ratio within [0.5, 2] on all four test sets: {', '.join(ok)}" if ok else
             "no form has the ratio within [0.5, 2] on all four test sets")
    reason = (f"{meets}; lowest mean test NLL "
              f"{best} ({mean_nll(best):.3f}); fewest parameters within 0.05 nats of it: {pick} "
              f"({mean_nll(pick):.3f}, {len(cals[pick].params)} parameter(s)); Spearman is the same for "
              "every monotone map of the latent variance")
    fails = [c for c in TEST_SETS if not 0.5 <= table[pick][c]["rmse_over_rms_std"] <= 2.0]
    reason += (f"; {pick} misses the ratio target on {', '.join(fails)}" if fails else "")
    reason += (f"; bootstrap a 16-84 % {q[0, 0]:.2g}-{q[2, 0]:.2g}: the training LOO pins the scale down only loosely"
               if pick == "scale_floor" and q is not None else "")
    print(f"\nlibrary forms, seed {seeds[0]}: recommended {pick} -- {reason}")

    # PROTOTYPE recommendation (fixed in advance, not chosen on the test sets; see the report
    # in the commit message / issue): relative = a v + c |F_i|^2/3.
    rec = f"PROTOTYPE {RECOMMENDED_PROTOTYPE}"
    per_seed = {s: {"ratio": [runs[s]["table"][rec][c]["rmse_over_rms_std"] for c in TEST_SETS],
                    "spearman_minus_latent": [runs[s]["table"][rec][c]["spearman_atoms"]
                                              - runs[s]["table"]["latent"][c]["spearman_atoms"] for c in TEST_SETS],
                    "meets": [runs[s]["accept"][rec][c] for c in TEST_SETS]} for s in seeds}
    all_ok = all(all(v["meets"]) for v in per_seed.values())
    proto_reason = (
        f"{RECOMMENDED_PROTOTYPE}: var = a v + c |F_i|^2/3 (general formula a v^p + b + c m2 + e n with p = 1, "
        f"b = 0, e = 0, m2 = |F_i|^2/3 of the predicted force), fitted on environment LOO only; "
        + ("meets the target on every test set and seed" if all_ok else
           "does NOT meet the target everywhere: " + "; ".join(
               f"seed {s}: ratio " + "/".join(f"{x:.2f}" for x in v["ratio"]) + ", Spearman minus latent's "
               + "/".join(f"{x:+.3f}" for x in v["spearman_minus_latent"])
               for s, v in per_seed.items()))
        + " (2% / 5% / 9% / liquid)")
    print(f"\n{proto_reason}")

    def seed_block(r: dict) -> dict:
        return {"training_seed": r["seed"], "hyperparameters": r["hyp"],
                "seconds": {"train": r["t_train"], "loo_both_modes": r["t_loo"]},
                "force_rmse_eV_per_A": r["rmse"], "calibrations": {k: c.to_dict() for k, c in r["cals"].items()},
                "prototype_calibrations": r["protos"], "metrics": r["table"], "meets_target": r["accept"]}

    out = {
        "machine": {"cpu": cpu_model(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "cpus": os.cpu_count(), "threads": 1, "otfgp": otfgp_version()},
        "git": {"commit": git_commit(), "modified": modified_paths()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workload": {"training": f"4 cells x 25 force atoms, 5 % displacement, seed {seeds[0]}",
                     "test": {"2%": "5 cells, seed 100", "5%": "5 cells, seed 101", "9%": "5 cells, seed 102",
                              "liquid": "10 frames, EMT Langevin 3000 K, seed 2000, 200 + 10 x 10 steps"},
                     "test_seed_offset": "training seed s > 0: test seeds + 1000 s",
                     "cutoffs": CUTOFFS},
        "hyperparameters": r0["hyp"],
        "seconds": {"train": r0["t_train"], "loo_both_modes": r0["t_loo"]},
        "force_rmse_eV_per_A": r0["rmse"],
        "calibrations": {k: c.to_dict() for k, c in cals.items()},
        "prototype_formula": "var = a * v**p + b + c * m2 + e * n; m2 = |F_i|^2/3 (predicted force of the atom) "
                             "or m^2 of the component; PROTOTYPE, to be replaced by otfgp.calibration",
        "prototype_calibrations": r0["protos"],
        "scale_floor_bootstrap": r0["bootstrap"].get("scale_floor", {}),
        "prototype_bootstrap": r0["bootstrap"].get(RECOMMENDED_PROTOTYPE, {}),
        "metrics": table,
        "meets_target": r0["accept"],
        "baseline_issue": BASELINE_ISSUE,
        "recommended": {"form": pick, "lowest_nll": best, "simplest": simplest, "reason": reason},
        "recommended_prototype": {"form": RECOMMENDED_PROTOTYPE, "params": r0["protos"][RECOMMENDED_PROTOTYPE]["params"],
                                  "meets_target_all_seeds": all_ok, "per_seed": per_seed, "reason": proto_reason},
        "seeds": {str(s): seed_block(runs[s]) for s in seeds},
    }
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
