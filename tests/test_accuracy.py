"""Learning EMT forces: accuracy of the mean and calibration of the variance."""
import numpy as np
import pytest

import otfgp
from conftest import displaced_al, random_alloy


@pytest.fixture(scope="module")
def al_model():
    """100 training environments of 5%-displaced fcc Al (10 cells x 10 random atoms), optimised."""
    rng = np.random.default_rng(2024)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    for _ in range(10):
        atoms = displaced_al(rng)
        gp.add_training_data(atoms, atom_indices=rng.choice(32, 10, replace=False))
    gp.train(optimize=True)
    return gp, rng


def test_al_force_mae_below_8_mev(al_model):
    gp, rng = al_model
    assert gp.n_training_environments == 100
    errors = []
    for _ in range(10):
        atoms = displaced_al(rng)
        pred = gp.predict(atoms, variance=False)
        errors.append(np.abs(pred.forces - atoms.get_forces()).mean())
    mae = float(np.mean(errors))
    print(f"Al force MAE {1000 * mae:.2f} meV/A, hyperparameters {gp.hyperparameters}")
    assert mae < 0.008


def test_variance_of_a_single_training_environment_is_noise():
    """One isolated environment with a strong prior: the posterior variance there is ~sigma_n^2."""
    rng = np.random.default_rng(5)
    noise = 0.02
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5},
                               hyperparameters={"sigma2": 2.0, "sigma3": 2.0, "noise_force": noise})
    atoms = displaced_al(rng)
    gp.add_training_data(atoms, atom_indices=[3])
    gp.train(optimize=False)
    var = gp.predict(atoms).latent_force_variances[3]
    np.testing.assert_allclose(var, noise**2, rtol=0.05)


def test_variance_at_training_environments_below_noise(al_model):
    """With 100 correlated environments the latent variance at training atoms is below
    sigma_n^2 (posterior shrinkage) and below that of strongly displaced fresh structures."""
    gp, _ = al_model
    noise2 = gp.hyperparameters["noise_force"] ** 2
    data = gp.training_structure(0)
    pred = gp.predict(data["atoms"])
    var_train = pred.latent_force_variances[data["force_atoms"]].mean()
    var_far = gp.predict(displaced_al(np.random.default_rng(7), amplitude=0.09)).latent_force_variances.mean()
    print(f"variance at training atoms {var_train:.3g}, noise^2 {noise2:.3g}, 9% displaced {var_far:.3g}")
    assert 0 < var_train < noise2
    assert var_far > 2 * var_train


def test_uncertainty_grows_with_displacement_like_error(al_model):
    gp, _ = al_model
    rng = np.random.default_rng(99)
    stds, errors = [], []
    for amp in (0.01, 0.03, 0.05, 0.07, 0.09):
        s, e = [], []
        for _ in range(3):
            atoms = displaced_al(rng, amplitude=amp)
            pred = gp.predict(atoms)
            s.append(pred.latent_force_stds.mean())
            e.append(np.abs(pred.forces - atoms.get_forces()).mean())
        stds.append(np.mean(s))
        errors.append(np.mean(e))
    print("std", stds, "error", errors)
    assert np.all(np.diff(stds) > 0)
    # The true error grows over the range too; the std tracks it.
    assert errors[-1] > 5 * errors[0]
    assert np.corrcoef(stds, errors)[0, 1] > 0.9


def test_cuau_alloy_force_mae_below_5_percent():
    rng = np.random.default_rng(77)
    gp = otfgp.GaussianProcess(["Cu", "Au"], {"twobody": 5.0, "threebody": 3.5})
    for _ in range(5):
        atoms = random_alloy(rng)
        gp.add_training_data(atoms, atom_indices=rng.choice(32, 20, replace=False))
    gp.train(optimize=True)
    err, scale = [], []
    for _ in range(4):
        atoms = random_alloy(rng)
        f = atoms.get_forces()
        err.append(np.abs(gp.predict(atoms, variance=False).forces - f).mean())
        scale.append(np.abs(f).mean())
    ratio = np.mean(err) / np.mean(scale)
    print(f"CuAu force MAE {np.mean(err):.4f} eV/A = {100 * ratio:.2f}% of mean |F|")
    assert ratio < 0.05
