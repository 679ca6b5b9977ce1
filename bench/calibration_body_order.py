"""Per-body-order calibration on the FLARE anchor workload, leave-one-out residuals only.

Issue 11 lists "per body order" among the candidate calibration forms: the 2-body and
3-body latent functions have separate signal variances (sigma2, sigma3), so each could be
mis-scaled on its own. This script measures whether scaling them separately helps the
anchor workload's target (RMSE / RMS reported std within [0.5, 2] on the 2/5/9 % and liquid
test sets), with the same training and test cells as ``bench/uq_calibration.py``.

The GP's force f = f2 + f3 has the posterior variance v = v2 + v3 + 2 c23 (each body
order's posterior variance and their posterior covariance, from the unscaled K2 and K3
blocks of the training and test labels). Scaling the two latent functions by sqrt(a2) and
sqrt(a3) reports

    var = a2 v2 + a3 v3 + 2 sqrt(a2 a3) c23      ("body_order")
    var = the same + c m^2                       ("body_order_neighbourhood")

with m the neighbourhood force scale of the library's ``neighbourhood`` form (which is
var = a v + c m^2, fitted here the same way for comparison). Every form is fitted by
maximum Gaussian likelihood on the leave-one-environment-out force residuals (the
per-body-order leave-one-out variances by holding the atom's three rows out explicitly,
checked against the closed form's total). Prints a table and writes
``results/calibration_body_order.json``.

Findings (seeds 0 / 1 / 2, RMSE / RMS reported std at 2 %): one scale 0.31 / 0.28 / 0.38;
per body order 0.31 / 0.28 / 0.45 (the fit puts a2 = a3 on seeds 0 and 1); neighbourhood
0.42 / 0.36 / 0.51; per body order + neighbourhood 0.43 / 0.47 / 0.59, but on seed 1 it
shrinks a3 to 0.6 and under-reports the liquid 2.4x. No form meets [0.5, 2] on every set:
the leave-one-out residuals of one displacement amplitude do not pin down how the error
falls towards the perfect lattice.
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
              "body_order_neighbourhood": ("a2", "a3", "c")}
FORMS = tuple(PARAMETERS)


def training_set(seed: int) -> tuple[otfgp.GaussianProcess, list[tuple]]:
    """The anchor's trained model (as uq_calibration.train) and its (cell, labelled atoms)."""
    rng = np.random.default_rng(seed)
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS)
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
    w = np.exp(theta)
    if form == "scale":
        out = w[0] * v
    elif form == "neighbourhood":
        out = w[0] * v + w[1] * m2
    else:
        out = w[0] * parts[0] + w[1] * parts[1] + 2 * np.sqrt(w[0] * w[1]) * parts[2]
        if form == "body_order_neighbourhood":
            out = out + w[2] * m2
    return np.maximum(out, 1e-14)


def fit(form: str, r: np.ndarray, parts: np.ndarray, v: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, float]:
    """Maximum-likelihood log-parameters of ``form`` (m2 is rescaled to v's median for the
    optimiser; the returned c multiplies the raw m2)."""
    s = np.median(v) / np.median(m2)
    n = len(PARAMETERS[form])
    nll = lambda t: gaussian_nll(r, variance(form, t, parts, v, s * m2))  # noqa: E731
    starts = [np.full(n, 3.0), np.r_[np.zeros(n - 1), 4.0], np.r_[4.0, np.zeros(n - 1)]]
    best = min((scipy.optimize.minimize(nll, t0, method="Nelder-Mead",
                                        options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-10})
                for t0 in starts), key=lambda x: x.fun)
    theta = best.x.copy()
    if form in ("neighbourhood", "body_order_neighbourhood"):
        theta[-1] += np.log(s)
    return theta, float(best.fun)


def run_seed(seed: int) -> dict:
    gp, data = training_set(seed)
    tests = test_sets(seed)
    frames = [f for name in TEST_SETS for f in tests[name]]
    K2, K3, n = scaled_blocks(gp, data, frames)
    noise = gp.noise_diagonal()
    loo = gp.loo_residuals("environment")
    blocks = gp.label_blocks()
    starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
    ends = np.r_[starts[1:], n]
    loo_parts = np.empty((3, n))
    for a, b in zip(starts, ends):
        rest = np.r_[0:a, b:n]
        loo_parts[:, a:b] = body_order_parts(K2, K3, rest, np.arange(a, b), noise[rest])
    check = np.max(np.abs(loo_parts[0] + loo_parts[1] + 2 * loo_parts[2] - loo.latent_variances))
    assert check < 1e-6 * np.mean(loo.latent_variances), check
    labels = np.asarray(gp.core.labels, dtype=float)
    loo_m2 = gp._loo_neighbourhood_scales(labels - loo.residuals, gp.force_scale_radius) ** 2
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
    out = {"seed": seed, "hyperparameters": gp.hyperparameters, "forms": {}}
    for form in FORMS:
        theta, nll = fit(form, loo.residuals, loo_parts, loo.latent_variances, loo_m2)
        row = {"params": dict(zip(PARAMETERS[form], np.exp(theta).tolist())), "loo_nll": nll, "test": {}}
        for name, (err, parts, v, m2) in sets.items():
            var = variance(form, theta, parts, v, m2)
            row["test"][name] = {"rmse_over_rms_std": float(np.sqrt(np.mean(err**2) / np.mean(var))),
                                 "coverage_1std": float(np.mean(np.abs(err) < np.sqrt(var))),
                                 "nll": gaussian_nll(err, var)}
        out["forms"][form] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "calibration_body_order.json"))
    args = ap.parse_args()
    rows = [run_seed(s) for s in args.seeds]
    print(f"RMSE / RMS reported std ({' / '.join(f'seed {s}' for s in args.seeds)})")
    print(f"{'form':26s}" + "".join(f"{name:>20s}" for name in TEST_SETS))
    for form in FORMS:
        cells = [" / ".join(f"{r['forms'][form]['test'][name]['rmse_over_rms_std']:.2f}" for r in rows)
                 for name in TEST_SETS]
        print(f"{form:26s}" + "".join(f"{c:>20s}" for c in cells))
    meets = {form: all(0.5 <= r["forms"][form]["test"][name]["rmse_over_rms_std"] <= 2.0
                       for r in rows for name in TEST_SETS) for form in FORMS}
    print("within [0.5, 2] on every set and seed:", meets)
    Path(args.out).write_text(json.dumps({
        "benchmark": "calibration_body_order", "commit": git_commit(), "modified": modified_paths(),
        "otfgp": otfgp_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": __doc__.strip(), "seeds": rows, "meets_target": meets}, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
