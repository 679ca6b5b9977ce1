"""Kernel matrices and the log marginal likelihood."""
import numpy as np
import pytest

import otfgp
from conftest import assert_gradient_matches_central_differences, displaced_al, mixed_alloy_model


def test_kernel_matrix_symmetric_positive_semidefinite(rng):
    gp = mixed_alloy_model(rng)
    g = gp.core.n_groups
    K2, K3, dK2, dK3 = gp.core.covariance(0, g, 0, g, True)
    for K in (K2, K3):
        assert np.array_equal(K, K.T)
        eig = np.linalg.eigvalsh(K)
        assert eig.min() > -1e-9 * eig.max()
        assert eig.max() > 0
    # Off-diagonal blocks computed on their own agree with the full matrix.
    A2, A3, _, _ = gp.core.covariance(2, g, 0, 2, False)
    r = gp.core.group_row_offset(2)
    np.testing.assert_allclose(A2, K2[r:, :r], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(A3, K3[r:, :r], rtol=1e-13, atol=1e-13)


def test_length_scale_derivatives_match_finite_differences(rng):
    gp = mixed_alloy_model(rng)
    g = gp.core.n_groups
    base = gp.hyperparameters
    h = 1e-6
    _, _, dK2, dK3 = gp.core.covariance(0, g, 0, g, True)
    for name, idx, dK in (("ell2", 0, dK2), ("ell3", 1, dK3)):
        mats = []
        for sign in (1, -1):
            gp.hyperparameters = {name: base[name] + sign * h}
            mats.append(gp.core.covariance(0, g, 0, g, False)[idx])
        gp.hyperparameters = base
        fd = (mats[0] - mats[1]) / (2 * h)
        np.testing.assert_allclose(dK, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_likelihood_gradient_matches_finite_differences(rng):
    gp = mixed_alloy_model(rng)
    hyp = {"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.6,
           "noise_force": 0.05, "noise_energy": 0.2, "noise_stress": 0.01}
    value, grad = gp.log_likelihood_gradient(hyp)
    assert value == pytest.approx(gp.log_likelihood(hyp), rel=1e-12)
    assert_gradient_matches_central_differences(gp.log_likelihood, grad, hyp)


def test_optimisation_improves_likelihood(rng):
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    for _ in range(2):
        gp.add_training_data(displaced_al(rng), atom_indices=range(8))
    before = gp.log_likelihood()
    gp.train(optimize=True, max_iterations=30)
    assert gp.log_likelihood() > before + 1.0


def test_incremental_update_equals_full_solve(rng):
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    gp.add_training_data(displaced_al(rng), atom_indices=range(6))
    gp.train(optimize=False)
    extra = displaced_al(rng)
    gp.add_training_data(extra, atom_indices=range(5), energy=True)
    gp.train(optimize=False)  # block update of the Cholesky factor
    incremental = gp.predict(extra)
    full = otfgp.GaussianProcess(["Al"], gp.cutoffs, hyperparameters=gp.hyperparameters)
    full._model = otfgp._core.Model.from_bytes(gp.core.to_bytes())
    full._reset_cache()
    full.train(optimize=False)  # from scratch
    reference = full.predict(extra)
    np.testing.assert_allclose(incremental.forces, reference.forces, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(incremental.force_variances, reference.force_variances, rtol=1e-6, atol=1e-12)
    assert incremental.energy == pytest.approx(reference.energy, rel=1e-10)


def test_hyperparameters_at_bounds_are_warned(caplog):
    """Noise-free EMT labels drive sigma_n to its lower bound: the report and the log say so."""
    import logging

    from conftest import displaced_al

    rng = np.random.default_rng(2)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, bounds={"noise_force": (0.05, 1.0)})
    for _ in range(2):
        gp.add_training_data(displaced_al(rng), atom_indices=range(8))
    with caplog.at_level(logging.WARNING, logger="otfgp.gp"):
        gp.train(max_iterations=30)
    report = gp.last_optimization
    assert report is not None and report.at_bounds.get("noise_force") == "lower"
    assert any("noise_force" in w and "lower bound" in w for w in report.warnings())
    assert any("noise_force" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # labels with 50 meV/A of noise: sigma_n is set by the data, well inside its bounds
    gp2 = otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, bounds={"noise_force": (1e-3, 1.0)})
    for _ in range(2):
        atoms = displaced_al(rng)
        forces = atoms.get_forces() + rng.normal(0.0, 0.05, (len(atoms), 3))
        gp2.add_training_data(atoms, forces=forces, atom_indices=range(8))
    gp2.train(max_iterations=30)
    assert "noise_force" not in gp2.last_optimization.at_bounds, gp2.hyperparameters
    assert 0.02 < gp2.hyperparameters["noise_force"] < 0.1
