"""Closed-form leave-one-out (GaussianProcess.loo_residuals) against brute-force refits."""
from __future__ import annotations

import numpy as np
import pytest

import otfgp
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
        rows = slice(3 * (4 * k + i), 3 * (4 * k + i) + 3)
        np.testing.assert_allclose(loo.residuals[rows], cells[k].get_forces()[atom] - p.forces[atom],
                                   rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(loo.latent_variances[rows], p.force_variances[atom], rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(loo.variances[rows], p.force_variances[atom] + HYP["noise_force"] ** 2,
                                   rtol=1e-6)


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
