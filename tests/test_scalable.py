"""The reduced-rank basis GP (otfgp.ScalableGP) against the exact GP, and its own rules."""
from __future__ import annotations

import numpy as np
import pytest

import otfgp
from conftest import displaced_al, random_alloy

CUT = {"twobody": 5.0, "threebody": 3.5}
HYP = {"sigma2": 0.3, "ell2": 1.0, "sigma3": 0.05, "ell3": 0.8, "noise_force": 0.02, "noise_energy": 0.05,
       "noise_stress": 0.005}


def _pair(frames, species=("Al",), cut=CUT, hyp=HYP, **kw):
    """An exact GP and a scalable model on the same labels at the same hyperparameters."""
    gp = otfgp.GaussianProcess(list(species), cut, hyp)
    sg = otfgp.ScalableGP(list(species), cut, hyp, **kw)
    for atoms, extra in frames:
        gp.add_training_data(atoms, **extra)
        sg.add_training_data(atoms, **extra)
    gp.train(optimize=False)
    sg.train(optimize=False)
    return gp, sg


@pytest.fixture(scope="module")
def al_models():
    rng = np.random.default_rng(3)
    frames = [(displaced_al(rng), {"energy": True, "stress": True, "atom_indices": np.arange(0, 32, 2)})
              for _ in range(3)]
    return _pair(frames, lower=1.8)


def test_scalable_matches_exact_gp(al_models):
    gp, sg = al_models
    assert sg.log_likelihood() == pytest.approx(gp.log_likelihood(), rel=1e-3)
    rng = np.random.default_rng(11)
    ratios = []
    for _ in range(2):
        atoms = displaced_al(rng)
        p, q = gp.predict(atoms), sg.predict(atoms)
        scale = np.abs(p.forces).mean()
        assert np.abs(q.forces - p.forces).max() < 0.01 * scale
        assert q.energy == pytest.approx(p.energy, abs=1e-3 * len(atoms))
        np.testing.assert_allclose(q.stress, p.stress, atol=0.01 * np.abs(p.stress).max())
        np.testing.assert_allclose(q.local_energies, p.local_energies, atol=2e-3)
        assert q.local_energies.sum() == pytest.approx(q.energy, abs=1e-9)
        np.testing.assert_allclose(np.sqrt(q.latent_local_energy_variances),
                                   np.sqrt(p.latent_local_energy_variances), rtol=0.15)
        ratios.append((np.sqrt(q.latent_force_variances) / np.sqrt(p.latent_force_variances)).ravel())
    r = np.concatenate(ratios)
    assert np.median(np.abs(r - 1)) < 0.02
    assert np.percentile(np.abs(r - 1), 90) < 0.05


def test_low_rank_projection_keeps_the_model(al_models):
    # The fixed projection drops prior directions below 1e-9 of the largest eigenvalue: the
    # same mean and (closer to the exact GP, no jitter directions) variance at half the size.
    gp, sg = al_models
    full = otfgp.ScalableGP.from_gaussian_process(gp, lower=sg.lower, rank_tolerance=None)
    full.train(optimize=False)
    assert full.rank == full.n_coefficients and sg.rank < 0.7 * full.rank
    atoms = displaced_al(np.random.default_rng(14))
    p, q, e = full.predict(atoms), sg.predict(atoms), gp.predict(atoms)
    assert np.abs(q.forces - p.forces).max() < 1e-3 * np.abs(p.forces).mean()
    dev = lambda m: np.median(np.abs(np.sqrt(m.latent_force_variances / e.latent_force_variances) - 1))
    assert dev(q) <= dev(p) + 1e-3


def test_from_gaussian_process_takes_over_its_data(al_models):
    gp, sg = al_models
    copy = otfgp.ScalableGP.from_gaussian_process(gp, lower=sg.lower)
    assert copy.n_labels == gp.n_labels == sg.n_labels
    copy.train(optimize=False)
    atoms = displaced_al(np.random.default_rng(13))
    np.testing.assert_allclose(copy.predict(atoms).forces, sg.predict(atoms).forces, rtol=1e-9, atol=1e-10)


def test_two_species_match_exact_gp():
    # Cu-Au: every pair and triplet type, including the triplet types with a two-fold
    # edge symmetry (their orbits differ from the single-element case).
    rng = np.random.default_rng(5)
    cut = {"twobody": 4.5, "threebody": 3.3}
    hyp = dict(HYP, ell3=1.0)
    frames = [(random_alloy(rng), {"energy": True, "atom_indices": rng.choice(32, 6, replace=False)})
              for _ in range(2)]
    gp, sg = _pair(frames, ("Cu", "Au"), cut, hyp, lower=1.8, nodes2=32, nodes3=8)
    p, q = gp.predict(frames[0][0]), sg.predict(frames[0][0])
    assert np.abs(q.forces - p.forces).max() < 0.02 * np.abs(p.forces).mean()
    r = np.sqrt(q.latent_force_variances) / np.sqrt(p.latent_force_variances)
    assert np.median(np.abs(r - 1)) < 0.1


def test_forces_are_minus_energy_gradient(al_models):
    _, sg = al_models
    atoms = displaced_al(np.random.default_rng(8))
    f = sg.predict(atoms, variance=False).forces
    h = 1e-4
    for i, k in ((0, 0), (5, 1), (17, 2)):
        e = []
        for s in (1, -1):
            a = atoms.copy()
            a.positions[i, k] += s * h
            e.append(sg.predict(a, variance=False).energy)
        assert f[i, k] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-6)


def test_likelihood_gradient_matches_finite_differences(al_models):
    _, sg = al_models
    g = sg.log_likelihood_gradient()
    hyp = sg.hyperparameters
    for name in ("sigma2", "ell2", "sigma3", "ell3", "noise_force", "noise_energy", "noise_stress"):
        h = 1e-4 * hyp[name]
        up, down = dict(hyp), dict(hyp)
        up[name] += h
        down[name] -= h
        fd = (sg.log_likelihood(up) - sg.log_likelihood(down)) / (2 * h)
        assert g[name] == pytest.approx(fd, rel=2e-3, abs=1e-3), name


def test_training_raises_the_likelihood_and_is_thread_independent():
    rng = np.random.default_rng(2)
    frames = [displaced_al(rng) for _ in range(2)]
    models = []
    for threads in (1, 2):
        otfgp.set_num_threads(threads)
        sg = otfgp.ScalableGP(["Al"], CUT, lower=1.8)
        for a in frames:
            sg.add_training_data(a, energy=True)
        before = sg.log_likelihood()
        sg.train(optimize=True, max_iterations=15)
        assert sg.log_likelihood() > before
        models.append(sg)
    otfgp.set_num_threads(1)
    a = displaced_al(rng)
    np.testing.assert_array_equal(models[0].predict(a).forces, models[1].predict(a).forces)


def test_save_load_is_exact_and_does_not_grow_with_labels(al_models, tmp_path):
    _, sg = al_models
    sg.save(tmp_path / "m.npz")
    back = otfgp.ScalableGP.load(tmp_path / "m.npz")
    atoms = displaced_al(np.random.default_rng(9))
    p, q = sg.predict(atoms), back.predict(atoms)
    np.testing.assert_array_equal(p.forces, q.forces)
    np.testing.assert_array_equal(p.latent_force_variances, q.latent_force_variances)
    assert p.energy == q.energy and back.hyperparameters == sg.hyperparameters
    assert back.n_labels == sg.n_labels
    # more data, same file size (up to compression): the statistics are basis^2
    back.add_training_data(displaced_al(np.random.default_rng(10)), energy=True)
    back.train(optimize=False)
    back.save(tmp_path / "m2.npz")
    assert (tmp_path / "m2.npz").stat().st_size < 1.2 * (tmp_path / "m.npz").stat().st_size
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="scalable-GP model file"):
        otfgp.ScalableGP.load(tmp_path / "bad.npz")


def test_incremental_adding_equals_one_batch():
    rng = np.random.default_rng(4)
    frames = [displaced_al(rng) for _ in range(3)]
    one = otfgp.ScalableGP(["Al"], CUT, HYP, lower=1.8)
    steps = otfgp.ScalableGP(["Al"], CUT, HYP, lower=1.8)
    for a in frames:
        one.add_training_data(a, energy=True)
    one.train(optimize=False)
    for a in frames:
        steps.add_training_data(a, energy=True)
        steps.train(optimize=False)  # folds the rows in: a rank update per structure
    a = displaced_al(rng)
    np.testing.assert_allclose(steps.predict(a).forces, one.predict(a).forces, rtol=1e-9, atol=1e-10)


def test_bad_input_is_a_clear_error():
    rng = np.random.default_rng(6)
    atoms = displaced_al(rng)
    sg = otfgp.ScalableGP(["Al"], CUT, lower=3.0)
    with pytest.raises(otfgp.InputError, match="below the basis lower end"):
        sg.add_training_data(atoms)
    with pytest.raises(otfgp.InputError, match="lower end"):
        otfgp.ScalableGP(["Al"], CUT, lower=0.1)
    sg = otfgp.ScalableGP(["Al"], CUT)
    with pytest.raises(otfgp.NotTrainedError):
        sg.train()
    with pytest.raises(otfgp.InputError, match="unknown species"):
        sg.add_training_data(random_alloy(rng))
    # up to three species the default triplet grid keeps the basis within the limit
    assert otfgp.ScalableGP(["Cu", "Au", "Ag"], CUT, lower=1.5).n_coefficients <= otfgp.scalable.MAX_COEFFICIENTS
    with pytest.raises(ValueError, match="too large"):
        otfgp.ScalableGP(["Cu", "Au", "Ag", "Ni"], CUT, lower=1.5)


def test_map_training_uses_the_exact_gps_prior_medians():
    from otfgp.priors import DEFAULT_PRIORS

    rng = np.random.default_rng(12)
    frames = [displaced_al(rng) for _ in range(2)]
    gp = otfgp.GaussianProcess(["Al"], CUT)
    sg = otfgp.ScalableGP(["Al"], CUT, lower=1.8, priors=DEFAULT_PRIORS)
    for a in frames:
        gp.add_training_data(a, atom_indices=np.arange(10))
        sg.add_training_data(a, atom_indices=np.arange(10))
    exact, basis = gp.prior_medians(), sg.prior_medians()
    for name in ("sigma2", "sigma3"):
        assert basis[name].median == pytest.approx(exact[name].median, rel=1e-3)
    with pytest.raises(ValueError, match="no priors"):
        otfgp.ScalableGP(["Al"], CUT).prior_medians()
