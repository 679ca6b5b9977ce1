"""Closed-form leave-one-out (GaussianProcess.loo_residuals) against brute-force refits, and
the variance calibration maps of otfgp.calibration."""
from __future__ import annotations

import json

import numpy as np
import pytest

import otfgp
from otfgp.calibration import FORMS, Calibration, fit_calibration, gaussian_nll
from otfgp.gp import LooResiduals

from conftest import displaced_al, trained_toy_model

HYP = {"sigma2": 0.4, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7, "noise_force": 0.02}
CUTOFFS = {"twobody": 4.0, "threebody": 3.0}


def _small_al(seed: int = 3):
    """Force-only Al model: 3 cells of 8 atoms, 4 force atoms each (12 environments)."""
    rng = np.random.default_rng(seed)
    cells = [displaced_al(rng, 0.05, repeat=(2, 1, 1)) for _ in range(3)]
    picks = [rng.choice(8, 4, replace=False) for _ in cells]
    return cells, picks


def _model(cells, picks, skip: tuple[int, int] | None = None) -> otfgp.GaussianProcess:
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=HYP)
    for k, (atoms, idx) in enumerate(zip(cells, picks)):
        keep = [int(i) for i in idx if skip is None or (k, int(i)) != skip]
        gp.add_training_data(atoms, atom_indices=keep)
    gp.train(optimize=False)
    return gp


def _matrix_brute_force(gp: otfgp.GaussianProcess, blocks: np.ndarray):
    """Delete each block's rows and columns from K, solve, predict the block."""
    L = np.asarray(gp.core.cholesky)
    K = L @ L.T
    y = gp._targets(np.asarray(gp.core.energy_offsets))
    res, var, covs = np.empty(len(y)), np.empty(len(y)), []
    for b in np.unique(blocks):
        out = blocks == b
        keep = ~out
        A = K[np.ix_(keep, keep)]
        C = K[np.ix_(out, keep)]
        mu = C @ np.linalg.solve(A, y[keep])
        cov = K[np.ix_(out, out)] - C @ np.linalg.solve(A, C.T)
        res[out] = y[out] - mu
        var[out] = np.diag(cov)
        covs.append(cov)
    return res, var, covs


@pytest.fixture(scope="module")
def small():
    cells, picks = _small_al()
    return cells, picks, _model(cells, picks)


def test_label_loo_equals_matrix_brute_force(small):
    gp = small[2]
    loo = gp.loo_residuals()
    assert isinstance(loo, LooResiduals) and loo.mode == "label"
    res, var, _ = _matrix_brute_force(gp, np.arange(gp.n_labels))
    np.testing.assert_allclose(loo.residuals, res, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loo.variances, var, rtol=1e-6)
    np.testing.assert_allclose(loo.latent_variances, var - HYP["noise_force"] ** 2, rtol=1e-5, atol=1e-12)
    assert np.all(loo.kinds == 0)


def test_environment_loo_equals_refit(small):
    """Hold out one atom's forces, re-solve at the same hyperparameters, predict that atom."""
    cells, picks, gp = small
    loo = gp.loo_residuals(mode="environment")
    assert loo.mode == "environment" and len(loo.block_covariances) == 12
    np.testing.assert_array_equal(loo.blocks, np.repeat(np.arange(12), 3))
    for k, i in [(0, 0), (1, 2), (2, 3)]:
        atom = int(picks[k][i])
        refit = _model(cells, picks, skip=(k, atom))
        p = refit.predict(cells[k], variance="exact")
        j = list(gp.training_structure(k)["force_atoms"]).index(atom)  # the model stores them sorted
        rows = slice(3 * (4 * k + j), 3 * (4 * k + j) + 3)
        np.testing.assert_allclose(loo.residuals[rows], cells[k].get_forces()[atom] - p.forces[atom],
                                   rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(loo.latent_variances[rows], p.latent_force_variances[atom], rtol=1e-5,
                                   atol=1e-12)
        # The uncalibrated reported variance is the LOO predictive variance: latent + noise.
        np.testing.assert_allclose(loo.variances[rows], p.force_variances[atom], rtol=1e-6)


def test_both_modes_equal_matrix_brute_force_with_energy_and_stress():
    gp = trained_toy_model(np.random.default_rng(7))
    for mode in ("label", "environment"):
        loo = gp.loo_residuals(mode=mode)
        res, var, covs = _matrix_brute_force(gp, loo.blocks)
        np.testing.assert_allclose(loo.residuals, res, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(loo.variances, var, rtol=1e-6, atol=1e-14)
        np.testing.assert_allclose(loo.noise_variances, gp.noise_diagonal())
        if mode == "environment":
            for a, b in zip(loo.block_covariances, covs):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    kinds = gp.loo_residuals().kinds
    sizes = np.bincount(gp.loo_residuals("environment").blocks)
    assert set(np.unique(kinds)) == {0, 1, 2}
    assert sorted(set(sizes)) == [1, 3, 6]
    forces = gp.loo_residuals("environment").select(0)
    assert np.all(forces.kinds == 0) and len(forces.block_covariances) == len(forces.residuals) // 3


def test_environment_loo_is_less_optimistic_than_label_loo(small):
    gp = small[2]
    lab, env = gp.loo_residuals(), gp.loo_residuals("environment")
    assert np.all(env.variances >= lab.variances * (1 - 1e-9))


def test_loo_needs_a_solution():
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=HYP)
    with pytest.raises(otfgp.NotTrainedError):
        gp.loo_residuals()
    with pytest.raises(ValueError):
        _model(*_small_al()).loo_residuals(mode="atom")


# ------------------------------------------------------------------ calibration
def _synthetic(n: int, scale: float, floor: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    latent = rng.uniform(1e-4, 1e-2, n)
    noise = np.full(n, 1e-4)
    err = rng.normal(0.0, np.sqrt(scale**2 * latent + floor))
    return err, latent, noise


def test_fit_recovers_scale():
    err, latent, noise = _synthetic(4000, 3.0, 0.0)
    cal = fit_calibration(err, latent, noise, form="scale")
    assert cal.form == "scale" and not cal.fallback
    # var = s^2 (latent + noise); the data have s^2 latent, noise is small but not zero
    np.testing.assert_allclose(cal.params["s"], 3.0, rtol=0.05)
    cal2 = fit_calibration(err, latent, noise, form="latent_scale")
    # var = s^2 latent + noise, with true variance 9 latent: s^2 = 9 - noise/latent-ish
    np.testing.assert_allclose(cal2.params["s"], 3.0, rtol=0.05)


def test_fit_recovers_scale_and_floor():
    err, latent, noise = _synthetic(6000, 2.0, 4e-3, seed=1)
    cal = fit_calibration(err, latent, noise, form="scale_floor")
    np.testing.assert_allclose(cal.params["a"], 4.0, rtol=0.15)
    np.testing.assert_allclose(cal.params["b"], 4e-3, rtol=0.15)
    powr = fit_calibration(err, latent, noise, form="power")
    np.testing.assert_allclose(powr.params["p"], 1.0, atol=0.2)
    v = cal.apply(latent, noise)
    np.testing.assert_allclose(v, 4.0 * latent + 4e-3, rtol=0.2)


def test_few_samples_fall_back_to_identity(caplog):
    err, latent, noise = _synthetic(12, 3.0, 0.0)
    with caplog.at_level("WARNING", logger="otfgp.calibration"):
        cal = fit_calibration(err, latent, noise, form="scale_floor")
    assert cal.fallback and cal.form == "identity" and cal.n_samples == 12
    assert "identity" in caplog.text
    np.testing.assert_allclose(cal.apply(latent, noise), latent + noise)


@pytest.mark.parametrize("form", FORMS)
def test_round_trip_exact(form):
    err, latent, noise = _synthetic(300, 2.5, 1e-3, seed=2)
    mean = np.random.default_rng(3).normal(0.0, 0.5, err.shape)
    cal = fit_calibration(err, latent, noise, form=form, mean=mean, radius=3.5 if form == "neighbourhood" else None)
    d = json.loads(json.dumps(cal.to_dict()))
    back = Calibration.from_dict(d)
    assert back == cal
    np.testing.assert_array_equal(back.apply(latent, noise, mean), cal.apply(latent, noise, mean))


def test_fit_recovers_relative_form():
    """var = a v + c m^2 with known a and c: the fit finds both."""
    rng = np.random.default_rng(4)
    latent = rng.uniform(1e-5, 4e-4, 8000)
    mean = rng.uniform(0.0, 1.0, 8000)
    err = rng.normal(0.0, np.sqrt(6.0 * latent + 4e-4 * mean**2))
    cal = fit_calibration(err, latent, 1e-4, form="relative", mean=mean)
    np.testing.assert_allclose(cal.params["a"], 6.0, rtol=0.15)
    np.testing.assert_allclose(cal.params["c"], 4e-4, rtol=0.15)
    with pytest.raises(ValueError, match="needs the predicted values"):
        fit_calibration(err, latent, 1e-4, form="relative")


def test_bad_input():
    with pytest.raises(ValueError):
        fit_calibration(np.zeros(50), np.ones(50), np.ones(50), form="quadratic")
    with pytest.raises(ValueError):
        fit_calibration(np.zeros(50), np.ones(49), np.ones(50))
    with pytest.raises(ValueError):
        Calibration.from_dict({"form": "scale", "params": {}})


@pytest.mark.parametrize("form", ["relative", "neighbourhood"])
def test_scaled_fit_finds_the_latent_branch(form):
    """600 pooled samples of an on-the-fly NPT run (tests/data/calibration_two_branches.npz:
    residual, latent and noise variance, force scale): a v + c m^2 has a branch where v
    explains the errors (a ~ 80) and a worse one where m^2 does (a at its bound); the fit
    must not stop in the second (it did from its two former starts: a = 2e-9, mean NLL -1.42)."""
    from pathlib import Path

    d = np.load(Path(__file__).parent / "data" / "calibration_two_branches.npz")
    r, v, n, m = d["r"], d["v"], d["n"], d["m"]
    cal = fit_calibration(r, v, n, form=form, mean=m, radius=3.5 if form == "neighbourhood" else None)
    c_only = np.mean(r**2 / m**2)  # the maximum-likelihood map var = c m^2
    assert cal.params["a"] > 10.0
    assert cal.nll < gaussian_nll(r, c_only * m**2) - 0.1
