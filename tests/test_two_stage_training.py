"""Training with energy and stress labels: length scales from the forces, the rest from all labels."""
import numpy as np
import pytest

import otfgp
from conftest import mixed_alloy_model

FORCE_NAMES = ("sigma2", "ell2", "sigma3", "ell3", "noise_force")


def _force_only_twin(gp: otfgp.GaussianProcess) -> otfgp.GaussianProcess:
    twin = otfgp.GaussianProcess(gp.species, gp.cutoffs)
    for i in range(gp.n_training_structures):
        d = gp.training_structure(i)
        forces = np.zeros((len(d["atoms"]), 3))
        forces[d["force_atoms"]] = d["forces"]
        twin.add_training_data(d["atoms"], forces=forces, atom_indices=d["force_atoms"])
    return twin


def test_force_kernel_blocks_equal_the_force_rows_of_the_full_kernel(rng):
    gp = mixed_alloy_model(rng)
    kinds = np.asarray(gp.core.row_kinds)
    rows = np.flatnonzero(kinds == 0)
    assert 0 < rows.size < kinds.size  # energy and stress rows sit between the force rows
    g = gp.core.n_groups
    full = gp.core.covariance(0, g, 0, g, True, ell2=0.8, ell3=0.7)
    part = gp._force_kernel_parts(0.8, 0.7, True)
    for F, P in zip(full, part):
        np.testing.assert_allclose(P, F[np.ix_(rows, rows)], rtol=1e-13, atol=1e-14)


def test_force_only_likelihood_equals_a_force_only_model(rng):
    gp = mixed_alloy_model(rng)
    twin = _force_only_twin(gp)
    hyp = {"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.6,
           "noise_force": 0.05, "noise_energy": 0.2, "noise_stress": 0.01}
    rows = np.flatnonzero(np.asarray(gp.core.row_kinds) == 0)
    value, grad = gp._likelihood(hyp, grad=True, rows=rows)
    ref_value, ref_grad = twin.log_likelihood_gradient(hyp)
    assert value == pytest.approx(ref_value, rel=1e-12)
    for k in FORCE_NAMES:
        assert grad[k] == pytest.approx(ref_grad[k], rel=1e-9, abs=1e-12), k


def test_two_stages_fit_length_scales_to_forces_and_the_rest_to_all_labels(rng):
    gp = mixed_alloy_model(rng)
    twin = _force_only_twin(gp)
    twin.train(max_iterations=60)
    gp.train(max_iterations=60)  # default "auto": two stages, as the model has energy and stress labels
    assert gp.last_optimization.message.startswith("length scales:")
    for k in ("ell2", "ell3"):
        assert gp.hyperparameters[k] == pytest.approx(twin.hyperparameters[k], rel=1e-9), k
    # the second stage is a stationary point of the full log posterior in what it fits
    # (unless a hyperparameter ended at a bound)
    _, g = gp.log_posterior_gradient()
    for k in ("sigma2", "sigma3", "noise_force", "noise_energy", "noise_stress"):
        if k in gp.last_optimization.at_bounds:
            continue
        scale = abs(g[k] * gp.hyperparameters[k])  # d log p / d log theta
        assert scale < 1e-2 * max(1.0, abs(gp.log_posterior())), (k, g[k])


def test_length_scales_from_all_optimises_every_hyperparameter(rng):
    gp = mixed_alloy_model(rng)
    gp.train(max_iterations=40, length_scales_from="all")
    assert not gp.last_optimization.message.startswith("length scales:")
    _, g = gp.log_posterior_gradient()
    for k in ("ell2", "ell3"):
        if k not in gp.last_optimization.at_bounds:
            assert abs(g[k] * gp.hyperparameters[k]) < 1e-2 * max(1.0, abs(gp.log_posterior())), k


def test_bad_length_scales_from_is_an_error(rng):
    gp = mixed_alloy_model(rng)
    with pytest.raises(ValueError, match="length_scales_from"):
        gp.train(length_scales_from="energies")
