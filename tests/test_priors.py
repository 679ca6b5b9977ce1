"""Hyperparameter priors and maximum a posteriori training (otfgp.priors)."""
import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from otfgp.gp import DEFAULT_BOUNDS, MAXIMUM_LIKELIHOOD_BOUNDS
from otfgp.priors import DEFAULT_PRIORS, LOG_10, LogNormal, Priors
from conftest import assert_gradient_matches_central_differences, displaced_al, mixed_alloy_model

_HYP = {"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.6,
        "noise_force": 0.04, "noise_energy": 0.2, "noise_stress": 0.01}


def test_log_normal_density_and_validation():
    p = LogNormal(0.02, math.log(3.0))
    value, slope = p.log_density(0.02)
    # at the median: the normal's peak in log space, zero slope
    assert value == pytest.approx(-math.log(math.log(3.0)) - 0.5 * math.log(2 * math.pi), rel=1e-14)
    assert slope == 0.0
    # one log-std above the median costs half a nat
    assert p.log_density(0.06)[0] == pytest.approx(value - 0.5, rel=1e-12)
    with pytest.raises(ValueError):
        LogNormal(-1.0, 1.0)
    with pytest.raises(ValueError):
        LogNormal(1.0, 0.0)
    with pytest.raises(ValueError):
        LogNormal(None, 1.0).log_density(1.0)  # data-dependent median not resolved
    with pytest.raises(ValueError):
        DEFAULT_PRIORS.with_overrides({"bogus": (1.0, 1.0)})
    with pytest.raises(TypeError):
        otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, priors={"ell2": (1.0, 1.0)})


def test_prior_gradient_matches_finite_differences(rng):
    gp = mixed_alloy_model(rng)
    value, grad = gp.log_prior(_HYP)
    assert set(gp._active()) == set(_HYP)
    assert_gradient_matches_central_differences(lambda h: gp.log_prior(h)[0], grad, _HYP,
                                                rel_step=1e-6, rel=1e-6, abs=1e-8)
    assert all(grad[name] != 0.0 for name in _HYP)  # every hyperparameter is off its prior median here


def test_log_posterior_is_likelihood_plus_prior_with_matching_gradient(rng):
    gp = mixed_alloy_model(rng)
    value, grad = gp.log_posterior_gradient(_HYP)
    assert value == pytest.approx(gp.log_likelihood(_HYP) + gp.log_prior(_HYP)[0], rel=1e-12)
    assert value == pytest.approx(gp.log_posterior(_HYP), rel=1e-12)
    assert_gradient_matches_central_differences(gp.log_posterior, grad, _HYP)


def test_signal_medians_follow_the_force_labels(rng):
    """Empirical Bayes centres: sigma_b^2 * mean K_b(x, x) = <F^2> / 2, linear in the labels."""
    atoms = displaced_al(rng)
    forces = atoms.get_forces()
    medians = []
    for scale in (1.0, 3.0):
        gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
        gp.add_training_data(atoms, forces=scale * forces, atom_indices=range(5))
        medians.append(gp.prior_medians())
        assert gp.prior_medians() == medians[-1]  # deterministic (and cached)
    for name in ("sigma2", "sigma3"):
        assert medians[1][name].median == pytest.approx(3.0 * medians[0][name].median, rel=1e-12)
        assert medians[0][name].log_std == LOG_10
    # the defining identity, from the full kernel matrix at the median length scales
    gp.hyperparameters = {"ell2": DEFAULT_PRIORS.ell2.median, "ell3": DEFAULT_PRIORS.ell3.median}
    g = gp.core.n_groups
    K2, K3, _, _ = gp.core.covariance(0, g, 0, g, False)
    mean_square = float(np.mean((3.0 * forces[:5]) ** 2))
    assert medians[1]["sigma2"].median ** 2 * np.mean(np.diag(K2)) == pytest.approx(0.5 * mean_square, rel=1e-10)
    assert medians[1]["sigma3"].median ** 2 * np.mean(np.diag(K3)) == pytest.approx(0.5 * mean_square, rel=1e-10)
    # fixed medians are taken as given
    fixed = otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, priors=DEFAULT_PRIORS.with_overrides({"sigma2": (0.7, 1.0)}))
    fixed.add_training_data(atoms, atom_indices=range(5))
    assert fixed.prior_medians()["sigma2"] == LogNormal(0.7, 1.0)


def test_priors_off_reproduce_maximum_likelihood():
    """priors=None is the maximum-likelihood training of before the priors, bounds included:
    the reference optimum was produced by commit 5e1c7a9 (no priors) on the same data."""
    rng = np.random.default_rng(5)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5}, priors=None)
    assert gp.bounds == MAXIMUM_LIKELIHOOD_BOUNDS
    for _ in range(2):
        atoms = displaced_al(rng)
        forces = atoms.get_forces() + rng.normal(0.0, 0.03, (len(atoms), 3))
        gp.add_training_data(atoms, forces=forces, atom_indices=range(6))
    gp.train(max_iterations=50)
    reference = {"sigma2": 0.13955713678368953, "ell2": 1.043252335734065, "sigma3": 1.7695693272150766e-05,
                 "ell3": 0.6043262481353029, "noise_force": 0.033789799761975554}
    for name, value in reference.items():
        assert gp.hyperparameters[name] == pytest.approx(value, rel=1e-6), name
    assert gp.last_optimization.log_likelihood == pytest.approx(55.36765745181547, rel=1e-9)
    assert gp.last_optimization.log_prior == 0.0
    assert gp.log_prior() == (0.0, {k: 0.0 for k in gp.hyperparameters})


def _emt_frames(rng, n: int) -> list:
    out = []
    for _ in range(n):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
        atoms.positions += rng.uniform(-0.15, 0.15, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        out.append(atoms)
    return out


def test_tiny_training_set_map_is_inside_the_bounds_and_no_less_accurate():
    """Four EMT environments of fcc Al: maximum likelihood ends at a bound on every seed
    (sigma3 -> 0 or sigma_n at its 5 meV/A floor); with the default priors nothing is at a
    bound and the held-out force MAE, averaged over the seeds, is no worse (measured:
    7.5 against 8.1 meV/A)."""
    mae = {"ml": [], "map": []}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        train, test = _emt_frames(rng, 1)[0], _emt_frames(rng, 3)
        for kind, priors in (("ml", None), ("map", DEFAULT_PRIORS)):
            gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5}, priors=priors)
            gp.add_training_data(train, atom_indices=range(4))
            gp.train()
            report = gp.last_optimization
            if kind == "ml":
                assert report.at_bounds, (seed, gp.hyperparameters)
            else:
                assert report.at_bounds == {}, (seed, gp.hyperparameters)
                assert not report.abnormal
                assert report.log_prior < 0.0
            err = [np.abs(gp.predict(f, variance=False).forces - f.get_forces()).mean() for f in test]
            mae[kind].append(float(np.mean(err)))
    assert np.mean(mae["map"]) <= np.mean(mae["ml"]), mae


def test_large_data_set_gives_nearly_the_maximum_likelihood_hyperparameters():
    """128 environments (384 force labels) outweigh the priors: the optimum moves by < 5%.

    (With 64 environments the flat likelihood in sigma2 lets the length-scale prior move
    sigma2 by 12% at a log-likelihood cost of 0.03; the claim is about plenty of data.)"""
    results = {}
    for kind, priors in (("ml", None), ("map", DEFAULT_PRIORS)):
        rng = np.random.default_rng(3)
        gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, priors=priors)
        for _ in range(4):
            gp.add_training_data(displaced_al(rng))
        gp.train()
        assert gp.last_optimization.at_bounds == {}, (kind, gp.hyperparameters)
        results[kind] = (gp.hyperparameters, gp.last_optimization.log_likelihood)
    (ml, ll_ml), (mp, ll_map) = results["ml"], results["map"]
    for name in ("sigma2", "ell2", "noise_force"):
        assert mp[name] == pytest.approx(ml[name], rel=0.05), name
    # the MAP optimum is almost as likely as the maximum-likelihood one
    assert ll_map <= ll_ml + 1e-6
    assert ll_map > ll_ml - 0.5


def test_default_bounds_are_wide_and_priors_survive_copy(rng):
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0})
    assert gp.priors is DEFAULT_PRIORS and gp.bounds == DEFAULT_BOUNDS
    for name in ("ell2", "ell3", "noise_force", "noise_energy", "noise_stress"):
        lo, hi = DEFAULT_BOUNDS[name]
        assert lo < MAXIMUM_LIKELIHOOD_BOUNDS[name][0], name
    custom = Priors().with_overrides({"noise_force": (0.05, 0.5)})
    gp2 = otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, priors=custom)
    gp2.add_training_data(displaced_al(rng), atom_indices=range(3))
    gp2.train(optimize=False)
    assert gp2.copy().priors is custom


def test_config_priors_key():
    """[model] priors: true / false / {name = [median, factor]}, also restored on --resume."""
    from pathlib import Path

    from otfgp.builders import build_model, restore_hyperparameter_settings
    from otfgp.config import ConfigError, load_config, validate_config

    example = Path(__file__).resolve().parent.parent / "examples" / "otf_al_emt.toml"
    cfg = load_config(example)
    assert "priors" not in cfg["model"] and "bounds" not in cfg["model"]  # the example relies on the defaults
    assert build_model(validate_config(cfg)["model"]).priors is DEFAULT_PRIORS
    cfg["model"]["priors"] = False
    ml = build_model(validate_config(cfg)["model"])
    assert ml.priors is None and ml.bounds == MAXIMUM_LIKELIHOOD_BOUNDS
    cfg["model"]["priors"] = {"noise_force": [0.05, 2.0]}
    cfg["model"]["bounds"] = {"ell2": [0.1, 10.0]}
    resolved = validate_config(cfg)["model"]
    gp = build_model(resolved)
    assert gp.priors.noise_force == LogNormal(0.05, math.log(2.0))
    assert gp.priors.ell2 == DEFAULT_PRIORS.ell2
    loaded = otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, priors=None)
    restore_hyperparameter_settings(loaded, resolved)
    assert loaded.priors == gp.priors and loaded.bounds == gp.bounds
    assert gp.bounds["ell2"] == (0.1, 10.0) and gp.bounds["noise_force"] == DEFAULT_BOUNDS["noise_force"]
    for bad in ({"noise_force": [0.05, 1.0]}, {"noise_force": [0.0, 2.0]}, {"nope": [1.0, 2.0]}, "yes",
                {"ell2": 1.0}):
        cfg["model"]["priors"] = bad
        with pytest.raises(ConfigError, match="model.priors"):
            validate_config(cfg)


def test_changing_the_priors_refreshes_the_resolved_medians(rng):
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0})
    gp.add_training_data(displaced_al(rng), atom_indices=range(3))
    assert gp.prior_medians()["noise_force"] == DEFAULT_PRIORS.noise_force
    gp.priors = DEFAULT_PRIORS.with_overrides({"noise_force": (0.1, 1.0)})
    assert gp.prior_medians()["noise_force"] == LogNormal(0.1, 1.0)
