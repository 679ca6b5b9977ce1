"""Calibration forms on the FLARE anchor workload, fitted on leave-one-out residuals only.

Issue 11's anchor target: RMSE / RMS reported std within [0.5, 2] on the 2/5/9 % and liquid
test sets, with the map fitted on leave-one-out residuals of the 100 training environments
(5 %-displaced cells) alone. This script measures whether richer forms or a different
held-out unit reach it, with the same training and test cells as ``bench/uq_calibration.py``.

Forms (v the latent variance, m the neighbourhood force scale of the library's
``neighbourhood`` form, which is ``a v + c m^2``):

* ``scale``: a v
* ``body_order``: a2 v2 + a3 v3 + 2 sqrt(a2 a3) c23. The GP's force f = f2 + f3 has the
  posterior variance v = v2 + v3 + 2 c23 (each body order's posterior variance and their
  posterior covariance, from the unscaled K2 and K3 blocks of the training and test labels);
  scaling the two latent functions by sqrt(a2) and sqrt(a3) reports this. Issue 11 lists
  "per body order" among the candidates: sigma2 and sigma3 could be mis-scaled separately.
* ``neighbourhood``: a v + c m^2
* ``neighbourhood_power``: a v + c (m / median m)^(2 q), q free: does the model error grow
  with the neighbourhood force faster or slower than m^2 (the error falls about 5x from the
  5 % to the 2 % cells while m falls 2.5x)?
* ``body_order_neighbourhood``: the body-order form + c m^2
* ``product``: c v m^2, one parameter whose shape is fixed in advance: the error as the
  latent std (how far from the training data) times the neighbourhood force (how distorted
  the environment is, zero at the perfect lattice, where EMT and the GP both give zero force)

Held-out units: ``environment`` (an atom's three force rows, the library's
``loo_residuals("environment")``) and ``cell`` (all labelled atoms of one training cell at
once, [K^-1]_BB^-1 alpha_B for the cell's block B): leaving a whole cell out is further from
the training data than leaving one atom out. Each form is fitted by maximum Gaussian
likelihood on each unit's residuals (the per-body-order held-out variances by holding the
block out explicitly, checked against the closed form's total). Prints a table and writes
``results/calibration_loo_forms.json``.

Findings (seeds 0 / 1 / 2, RMSE / RMS reported std at 2 %, environment unit): one scale
0.31 / 0.28 / 0.38; per body order 0.31 / 0.28 / 0.45 (the fit puts a2 = a3 on seeds 0 and
1); neighbourhood 0.42 / 0.36 / 0.51; per body order + neighbourhood 0.43 / 0.47 / 0.59, but
on seed 1 it shrinks a3 to 0.6 and under-reports the liquid 2.4x. With a free exponent the
likelihood drives q to 0, a constant floor, and wins by 0.01 nats (2 % at 0.24 / 0.22 /
0.29): within one displacement amplitude the held-out errors do not grow with m. Leaving
whole cells out raises the 2 % ratios by 0.01-0.07 (neighbourhood 0.46 / 0.39 / 0.52, still
0.39 at 9 % on seed 2; per body order + neighbourhood 0.47 / 0.41 / 0.61). The fixed-shape
product c v m^2 gets 2 % right (0.79 / 0.69 / 1.01) but over-reports 9 % and the liquid 4-14x
(0.07-0.26): the latent std already grows with distortion about as fast as the error does
away from the training amplitude, so a factor m on top doubles that growth. With
``--maximum-likelihood`` (no priors, ``results/calibration_loo_forms_ml.json``) the numbers
move by at most 0.1 at 2 % and no form meets the target either (closest: per body order +
neighbourhood on whole cells, 0.48 / 0.52 / 0.58 at 2 % and 2.19 on seed 1's liquid). No
form meets [0.5, 2] on every set: the leave-one-out residuals of one displacement amplitude
do not pin down how the error falls towards the perfect lattice.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.optimize

import otfgp
from otfgp.calibration import gaussian_nll, neighbourhood_scale_values
from benchinfo import git_commit, modified_paths, otfgp_version
from uq_calibration import CUTOFFS, TEST_SETS, displaced, test_sets

#: each form's parameters, in the order of its log-parameter vector
PARAMETERS = {"scale": ("a",), "body_order": ("a2", "a3"), "neighbourhood": ("a", "c"),
              "neighbourhood_power": ("a", "c", "q"), "body_order_neighbourhood": ("a2", "a3", "c"),
              "product": ("c",)}
FORMS = tuple(PARAMETERS)
#: what is held out together: one atom's three force rows, or a whole training cell's
UNITS = ("environment", "cell")


def training_set(seed: int, maximum_likelihood: bool = False) -> tuple[otfgp.GaussianProcess, list[tuple]]:
    """The anchor's trained model (as uq_calibration.train; with ``maximum_likelihood`` no
    hyperparameter priors) and its (cell, labelled atoms)."""
    rng = np.random.default_rng(seed)
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, **({"priors": None} if maximum_likelihood else {}))
    data = []
    for _ in range(4):
        data.append((displaced(rng, 0.05), rng.choice(32, 25, replace=False)))
        gp.add_training_data(data[-1][0], atom_indices=data[-1][1])
    gp.train()
    return gp, data


def scaled_blocks(gp: otfgp.GaussianProcess, data: list[tuple], frames: list) -> tuple[np.ndarray, np.ndarray, int]:
    """sigma^2-scaled K2 and K3 over the training labels followed by every force of ``frames``
    (the frames are appended to an untrained model's training set only to get their rows)."""
    big = otfgp.GaussianProcess(["Al"], CUTOFFS)
    for atoms, idx in data:
        big.add_training_data(atoms, atom_indices=idx)
    for f in frames:
        big.add_training_data(f)
    hyp = gp.hyperparameters
    big.hyperparameters = hyp
    g = big.core.n_groups
    K2, K3, _, _ = big.core.covariance(0, g, 0, g, False)
    return hyp["sigma2"] ** 2 * K2, hyp["sigma3"] ** 2 * K3, gp.n_labels


def body_order_parts(K2: np.ndarray, K3: np.ndarray, train: np.ndarray, test: np.ndarray,
                     noise: np.ndarray) -> np.ndarray:
    """(v2, v3, c23) of the ``test`` rows given the ``train`` rows (3 x len(test))."""
    K = K2[np.ix_(train, train)] + K3[np.ix_(train, train)]
    K[np.diag_indices_from(K)] += noise
    cf = scipy.linalg.cho_factor(K, lower=True)
    k2, k3 = K2[np.ix_(train, test)], K3[np.ix_(train, test)]
    x2, x3 = scipy.linalg.cho_solve(cf, k2), scipy.linalg.cho_solve(cf, k3)
    return np.stack([np.diag(K2[np.ix_(test, test)]) - np.sum(k2 * x2, 0),
                     np.diag(K3[np.ix_(test, test)]) - np.sum(k3 * x3, 0), -np.sum(k2 * x3, 0)])


def variance(form: str, theta: np.ndarray, parts: np.ndarray, v: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """The reported variance of ``form`` at log-parameters ``theta``."""
    w = dict(zip(PARAMETERS[form], np.exp(theta)))
    if form == "product":
        return np.maximum(w["c"] * v * m2, 1e-14)
    if "a" in w:
        out = w["a"] * v
    else:
        out = w["a2"] * parts[0] + w["a3"] * parts[1] + 2 * np.sqrt(w["a2"] * w["a3"]) * parts[2]
    if "c" in w:
        out = out + w["c"] * m2 ** w.get("q", 1.0)
    return np.maximum(out, 1e-14)


def fit(form: str, r: np.ndarray, parts: np.ndarray, v: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, float]:
    """Maximum-likelihood log-parameters of ``form`` (m2 is rescaled to v's median for the
    optimiser; the returned c multiplies the raw m2, to its power q)."""
    s = np.median(v) / np.median(m2)
    names = PARAMETERS[form]
    n = len(names)
    nll = lambda t: gaussian_nll(r, variance(form, t, parts, v, s * m2))  # noqa: E731
    starts = [np.full(n, 3.0), np.r_[np.zeros(n - 1), 4.0], np.r_[4.0, np.zeros(n - 1)], np.zeros(n)]
    best = min((scipy.optimize.minimize(nll, t0, method="Nelder-Mead",
                                        options={"maxiter": 8000, "xatol": 1e-8, "fatol": 1e-11})
                for t0 in starts), key=lambda x: x.fun)
    theta = best.x.copy()
    if "c" in names:
        q = np.exp(theta[names.index("q")]) if "q" in names else 1.0
        theta[names.index("c")] += q * np.log(s)
    return theta, float(best.fun)


def held_out(gp: otfgp.GaussianProcess, unit: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The held-out blocks of ``unit`` (row indices), and each row's held-out residual and
    latent variance: [K^-1]_BB^-1 alpha_B and diag([K^-1]_BB^-1) minus the noise."""
    if unit == "environment":
        loo = gp.loo_residuals("environment")
        ids = loo.blocks
        res, latent = loo.residuals, loo.latent_variances
    else:
        ids = np.asarray(gp.core.row_structures)
        Kinv, alpha = gp._inverse_kernel()
        noise = gp.noise_diagonal()
        res, latent = np.empty(len(alpha)), np.empty(len(alpha))
        for i in np.unique(ids):
            B = np.flatnonzero(ids == i)
            C = scipy.linalg.cho_solve(scipy.linalg.cho_factor(Kinv[np.ix_(B, B)], lower=True), np.eye(len(B)))
            res[B], latent[B] = C @ alpha[B], np.diag(C) - noise[B]
    return [np.flatnonzero(ids == i) for i in np.unique(ids)], res, latent


def run_seed(seed: int, maximum_likelihood: bool = False) -> dict:
    gp, data = training_set(seed, maximum_likelihood)
    tests = test_sets(seed)
    frames = [f for name in TEST_SETS for f in tests[name]]
    K2, K3, n = scaled_blocks(gp, data, frames)
    noise = gp.noise_diagonal()
    labels = np.asarray(gp.core.labels, dtype=float)
    # test rows follow the training rows in frame order
    test_parts = body_order_parts(K2, K3, np.arange(n), np.arange(n, K2.shape[0]), noise)
    sets, k = {}, 0
    for name in TEST_SETS:
        err, v, m2 = [], [], []
        for f in tests[name]:
            p = gp.predict(f, variance="exact")
            err.append((f.get_forces() - p.forces).ravel())
            v.append(p.latent_force_variances.ravel())
            m2.append(neighbourhood_scale_values(f, p.forces, gp.force_scale_radius).ravel() ** 2)
        err, v, m2 = map(np.concatenate, (err, v, m2))
        parts = test_parts[:, k:k + err.size]
        k += err.size
        assert np.allclose(parts[0] + parts[1] + 2 * parts[2], v, rtol=1e-5, atol=1e-12)
        sets[name] = (err, parts, v, m2)
    out = {"seed": seed, "hyperparameters": gp.hyperparameters, "units": {}}
    for unit in UNITS:
        blocks, res, latent = held_out(gp, unit)
        loo_parts = np.empty((3, n))
        for B in blocks:
            rest = np.setdiff1d(np.arange(n), B)
            loo_parts[:, B] = body_order_parts(K2, K3, rest, B, noise[rest])
        check = np.max(np.abs(loo_parts[0] + loo_parts[1] + 2 * loo_parts[2] - latent))
        assert check < 1e-6 * np.mean(latent), check
        # the held-out atoms take their held-out forces, the cell's other atoms the prediction
        loo_m2 = gp._loo_neighbourhood_scales(labels - res, gp.force_scale_radius) ** 2
        forms = {}
        for form in FORMS:
            theta, nll = fit(form, res, loo_parts, latent, loo_m2)
            row = {"params": dict(zip(PARAMETERS[form], np.exp(theta).tolist())), "loo_nll": nll, "test": {}}
            for name, (err, parts, v, m2) in sets.items():
                var = variance(form, theta, parts, v, m2)
                row["test"][name] = {"rmse_over_rms_std": float(np.sqrt(np.mean(err**2) / np.mean(var))),
                                     "coverage_1std": float(np.mean(np.abs(err) < np.sqrt(var))),
                                     "nll": gaussian_nll(err, var)}
            forms[form] = row
        out["units"][unit] = {"n_blocks": len(blocks), "forms": forms}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--maximum-likelihood", action="store_true",
                    help="train without hyperparameter priors (the model the issue measured)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "calibration_loo_forms.json"))
    args = ap.parse_args()
    rows = [run_seed(s, args.maximum_likelihood) for s in args.seeds]
    print(f"RMSE / RMS reported std ({' / '.join(f'seed {s}' for s in args.seeds)})")
    print(f"{'held out':12s}{'form':26s}" + "".join(f"{name:>20s}" for name in TEST_SETS))
    meets = {}
    for unit in UNITS:
        for form in FORMS:
            tests = [r["units"][unit]["forms"][form]["test"] for r in rows]
            cells = [" / ".join(f"{t[name]['rmse_over_rms_std']:.2f}" for t in tests) for name in TEST_SETS]
            print(f"{unit:12s}{form:26s}" + "".join(f"{c:>20s}" for c in cells))
            meets[f"{unit}/{form}"] = all(0.5 <= t[name]["rmse_over_rms_std"] <= 2.0 for t in tests for name in TEST_SETS)
    print("within [0.5, 2] on every set and seed:", meets)
    Path(args.out).write_text(json.dumps({
        "benchmark": "calibration_loo_forms", "commit": git_commit(), "modified": modified_paths(),
        "otfgp": otfgp_version(), "maximum_likelihood": args.maximum_likelihood, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": __doc__.strip(), "seeds": rows, "meets_target": meets}, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
