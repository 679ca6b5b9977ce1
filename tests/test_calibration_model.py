"""The variance calibration stored in the model: reported = calibration(latent), the same in
Python, the core and the mapped variance; kept by save/load/copy and retraining; fitted by
GaussianProcess.calibrate; older model files load uncalibrated."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

import otfgp
from otfgp import _core
from otfgp.calibration import Calibration, ModelCalibration, fit_calibration, force_scale_values
from conftest import assert_matches_recorded, displaced_al, random_triclinic, trained_toy_model

DATA = Path(__file__).with_name("data")


def _calibration() -> ModelCalibration:
    """A calibration with every coefficient of the rule in use somewhere."""
    return ModelCalibration(
        force=Calibration("general", {"a": 2.7, "p": 1.0, "b": 3e-4, "c": 0.01, "e": 0.5}),
        energy=Calibration("scale", {"s": 1.9}),
        stress=Calibration("power", {"a": 1.3, "p": 0.8, "b": 1e-6}),
        local_energy=Calibration("latent_scale", {"s": 1.7}),
        info={"source": "test"})


def _hand_rule(c: dict, latent, noise, mean):
    """The rule written out independently of the core."""
    return c["a"] * np.maximum(latent, 0.0) ** c["p"] + c["b"] + c["c"] * mean ** 2 + c["e"] * noise


def test_uncalibrated_reported_is_latent_plus_noise(toy_model, rng):
    atoms = random_triclinic(rng)
    p = toy_model.predict(atoms, variance="exact")
    h = toy_model.hyperparameters
    assert toy_model.calibration is None
    assert p.noise_force_variance == h["noise_force"] ** 2
    np.testing.assert_array_equal(p.force_variances, p.latent_force_variances + h["noise_force"] ** 2)
    assert p.energy_variance == p.latent_energy_variance + h["noise_energy"] ** 2
    np.testing.assert_array_equal(p.stress_variance, p.latent_stress_variance + h["noise_stress"] ** 2)
    # A local energy is never a label: no noise to add.
    np.testing.assert_array_equal(p.local_energy_variances, p.latent_local_energy_variances)
    np.testing.assert_array_equal(p.force_stds, np.sqrt(p.force_variances))
    np.testing.assert_array_equal(p.latent_force_stds, np.sqrt(p.latent_force_variances))
    assert np.all(p.latent_force_variances > 0)


def test_python_apply_equals_the_core_rule(toy_model, rng):
    cal = _calibration()
    latent = rng.uniform(-1e-4, 1e-2, (50, 3))  # negative latents are clipped to 0
    noise = 2.5e-3
    mean = rng.normal(0, 1, (50, 3))
    for q in ("force", "energy", "stress", "local_energy"):
        c = getattr(cal, q)
        np.testing.assert_allclose(c.apply(latent, noise, mean), _hand_rule(c.coefficients(), latent, noise, mean),
                                   rtol=1e-14)
    # The core's predictions apply exactly what Python's apply gives.
    toy_model.calibration = cal
    atoms = random_triclinic(rng)
    p = toy_model.predict(atoms, variance="exact")
    h = toy_model.hyperparameters
    np.testing.assert_array_equal(p.force_variances,
                                  cal.force.apply(p.latent_force_variances, h["noise_force"] ** 2,
                                                  force_scale_values(p.forces)))
    np.testing.assert_array_equal(p.local_energy_variances,
                                  cal.local_energy.apply(p.latent_local_energy_variances, 0.0, p.local_energies))
    np.testing.assert_array_equal(p.energy_variance,
                                  cal.energy.apply(p.latent_energy_variance, h["noise_energy"] ** 2, p.energy))
    np.testing.assert_array_equal(p.stress_variance,
                                  cal.stress.apply(p.latent_stress_variance, h["noise_stress"] ** 2, p.stress))
    # NaN latents (variances not computed) stay NaN rather than becoming the floor b.
    assert np.isnan(cal.force.apply(np.nan, 0.0))


def test_calibration_coefficients_of_the_forms():
    assert Calibration().coefficients() == {"a": 1.0, "p": 1.0, "b": 0.0, "c": 0.0, "e": 1.0, "radius": 0.0}
    assert Calibration("scale", {"s": 2.0}).coefficients() == {"a": 4.0, "p": 1.0, "b": 0.0, "c": 0.0, "e": 4.0,
                                                               "radius": 0.0}
    assert Calibration("latent_scale", {"s": 2.0}).coefficients()["e"] == 1.0
    assert Calibration("scale_floor", {"a": 3.0, "b": 0.1}).coefficients() == {"a": 3.0, "p": 1.0, "b": 0.1,
                                                                               "c": 0.0, "e": 0.0, "radius": 0.0}
    assert Calibration("power", {"a": 3.0, "p": 0.5, "b": 0.1}).coefficients()["p"] == 0.5
    assert Calibration("neighbourhood", {"a": 2.0, "c": 0.1, "radius": 3.5}).coefficients() == {
        "a": 2.0, "p": 1.0, "b": 0.0, "c": 0.1, "e": 0.0, "radius": 3.5}
    # a general map described without a radius (before it existed) scales with the atom's own force
    assert Calibration("general", {"a": 1.0, "p": 1.0, "b": 0.0, "c": 0.1, "e": 0.0}).params["radius"] == 0.0
    with pytest.raises(ValueError, match="radius"):
        fit_calibration(np.ones(40), np.ones(40), 0.0, form="neighbourhood", mean=np.ones(40))
    with pytest.raises(ValueError, match="fitted forms"):
        fit_calibration(np.ones(40), np.ones(40), 0.0, form="general")


def test_bad_calibration_is_rejected(toy_model):
    for bad in ({"a": 0.0}, {"p": -1.0}, {"b": -1e-3}, {"c": np.nan}, {"e": np.inf}, {"radius": -1.0}):
        with pytest.raises(ValueError, match="calibration"):
            toy_model.core.calibration = {"force": bad}
    with pytest.raises(ValueError, match="unknown calibration key"):
        toy_model.core.calibration = {"forces": {"a": 2.0}}
    assert toy_model.core.calibration is None


def test_calibration_survives_save_load_copy_and_retraining(toy_model, rng, tmp_path):
    cal = _calibration()
    toy_model.calibration = cal
    stored = toy_model.core.calibration
    atoms = random_triclinic(rng)
    before = toy_model.predict(atoms, variance="exact")
    toy_model.save(tmp_path / "m.otfgp")
    loaded = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert loaded.core.format_version == _core.MODEL_FORMAT_VERSION
    for other in (loaded, toy_model.copy()):
        assert other.core.calibration == stored  # bit-exact coefficients and the same info
        assert other.calibration == cal
        after = other.predict(atoms, variance="exact")
        np.testing.assert_array_equal(after.force_variances, before.force_variances)
        np.testing.assert_array_equal(after.local_energy_variances, before.local_energy_variances)
    # Retraining keeps it (unlike the maps): Python refits it when it sees fit.
    extra = random_triclinic(rng)
    extra.calc = __import__("ase.calculators.emt", fromlist=["EMT"]).EMT()
    toy_model.add_training_data(extra, atom_indices=[0, 1])
    toy_model.hyperparameters = {"sigma2": 0.6}
    toy_model.train(optimize=False)
    assert toy_model.core.calibration == stored
    toy_model.calibration = None
    assert toy_model.calibration is None and toy_model.core.calibration is None


def test_a_calibration_set_through_the_core_reads_back_as_general(toy_model):
    toy_model.core.calibration = {"force": {"a": 2.0, "b": 1e-4}}
    cal = toy_model.calibration
    assert cal.force == Calibration("general", {"a": 2.0, "p": 1.0, "b": 1e-4, "c": 0.0, "e": 1.0})
    assert cal.energy == Calibration()  # left out: the identity


def test_format_3_file_loads_uncalibrated(caplog):
    ref = np.load(DATA / "model_v3_reference.npz")
    with caplog.at_level(logging.INFO, logger="otfgp.gp"):
        gp = otfgp.GaussianProcess.load(DATA / "model_v3.otfgp")
    assert ("model file format version 3 predates calibration; loaded uncalibrated "
            "(reported stds = latent + noise)") in caplog.text
    assert gp.core.format_version == 3 and gp.calibration is None and gp.has_variance_maps
    atoms = Atoms("Al" * len(ref["positions"]), positions=ref["positions"], cell=ref["cell"], pbc=True)
    exact = gp.predict(atoms, variance="exact")
    mapped = gp.predict(atoms, variance="mapped")
    # What format-3 otfgp called force_variances is the latent variance.
    assert_matches_recorded(exact.forces, ref["forces"])
    assert_matches_recorded(exact.latent_force_variances, ref["latent_force_variances"])
    assert_matches_recorded(mapped.latent_force_variances, ref["mapped_latent_force_variances"])
    noise2 = gp.hyperparameters["noise_force"] ** 2
    np.testing.assert_allclose(exact.force_variances, exact.latent_force_variances + noise2, rtol=1e-12)
    # Saved again it is a current-format file.
    assert _core.Model.from_bytes(gp.core.to_bytes()).format_version == _core.MODEL_FORMAT_VERSION


def _frames_with_scaled_errors(gp, n_frames: int, factor: float, seed: int) -> list[Atoms]:
    """Frames whose reference forces differ from the model's prediction by Gaussian errors of
    variance factor x the latent variance: a model whose latent variance is too small by
    exactly that factor."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = random_triclinic(rng)  # 6 atoms
        p = gp.predict(atoms, variance="exact")
        ref = p.forces + rng.normal(size=p.forces.shape) * np.sqrt(factor * p.latent_force_variances)
        atoms.calc = SinglePointCalculator(atoms, forces=ref)
        frames.append(atoms)
    return frames


def test_calibrate_recovers_a_known_scale(toy_model):
    frames = _frames_with_scaled_errors(toy_model, 80, 4.0, seed=5)
    cal = toy_model.calibrate(frames=frames, loo=False, form="scale_floor")
    assert cal.force.n_samples == 80 * 6 * 3 and not cal.force.fallback
    a = cal.force.params["a"]
    # 1440 samples: a within ~10 %; the floor is negligible against 4 x latent.
    assert a == pytest.approx(4.0, rel=0.1), a
    assert cal.info["samples"]["force"] == {"frames": 1440}
    # Too few stress samples: the stress map takes the force map's latent scale, noise added
    # as is. The model is trained on energies: with too few held-out energies the energy and
    # local-energy maps stay the GP's own.
    assert cal.info["transferred_from_force"] == ["stress"]
    assert cal.info["uncalibrated"] == ["energy", "local_energy"] and cal.info["local_energy_from"] == "none"
    assert cal.stress.form == "latent_scale" and cal.stress.coefficients()["a"] == pytest.approx(a, rel=1e-15)
    assert cal.energy.form == cal.local_energy.form == "identity"
    assert toy_model.calibration == cal
    atoms = random_triclinic(np.random.default_rng(9))
    p = toy_model.predict(atoms, variance="exact")
    np.testing.assert_array_equal(p.local_energy_variances, p.latent_local_energy_variances)
    np.testing.assert_allclose(p.energy_variance,
                               p.latent_energy_variance + toy_model.hyperparameters["noise_energy"] ** 2, rtol=1e-12)
    # A model without energy labels: energies and local energies take the force map's scale
    forces_only = trained_toy_model(np.random.default_rng(2), energy=False, stress=False)
    cal = forces_only.calibrate(frames=_frames_with_scaled_errors(forces_only, 20, 4.0, seed=6), loo=False,
                                form="scale_floor")
    a = cal.force.params["a"]
    assert cal.info["transferred_from_force"] == ["energy", "stress", "local_energy"]
    assert cal.info["local_energy_from"] == "force"
    for q in ("energy", "stress", "local_energy"):
        c = getattr(cal, q)
        assert c.form == "latent_scale" and c.coefficients()["a"] == pytest.approx(a, rel=1e-15)
    p = forces_only.predict(atoms, variance="exact")
    np.testing.assert_allclose(p.local_energy_variances, a * p.latent_local_energy_variances, rtol=1e-12)
    np.testing.assert_allclose(p.energy_variance,
                               a * p.latent_energy_variance + forces_only.hyperparameters["noise_energy"] ** 2,
                               rtol=1e-12)


def test_calibrate_pools_samples_and_loo(toy_model):
    frames = _frames_with_scaled_errors(toy_model, 6, 4.0, seed=6)
    samples = {"residuals": np.ones(40), "latent_variances": np.full(40, 0.25), "noise_variances": 0.0}
    cal = toy_model.calibrate(frames=frames, samples=samples, loo=True, form="latent_scale")
    counts = cal.info["samples"]["force"]
    assert counts == {"loo": toy_model.n_training_environments * 3, "frames": 6 * 6 * 3, "samples": 40}
    assert cal.force.n_samples == sum(counts.values())


def test_calibrate_with_too_few_samples_is_the_identity(toy_model, caplog):
    samples = {"residuals": np.ones(10), "latent_variances": np.ones(10)}
    with caplog.at_level(logging.WARNING, logger="otfgp.calibration"):
        cal = toy_model.calibrate(samples=samples, loo=False)
    assert cal.force.form == "identity" and cal.force.fallback and cal.info["fallback"]
    assert "identity" in caplog.text
    atoms = random_triclinic(np.random.default_rng(2))
    p = toy_model.predict(atoms, variance="exact")
    np.testing.assert_allclose(p.force_variances, p.latent_force_variances + p.noise_force_variance, rtol=1e-15)


def test_degenerate_samples_are_left_out_or_named(caplog):
    """Samples the GP calls exact (zero latent and noise variance) are left out with a
    warning: 10 of 100 drove the scale to 4e4. Negative noise, a noise array of the wrong
    length, all-zero residuals and min_samples < 1 are errors naming them."""
    rng = np.random.default_rng(0)
    v = rng.uniform(1e-4, 1e-3, 100)
    r = rng.normal(0.0, np.sqrt(2.0 * (v + 1e-4)))
    clean = fit_calibration(r, v, 1e-4, form="scale").params["s"]
    v0, n0 = v.copy(), np.full(100, 1e-4)
    v0[:10] = n0[:10] = 0.0
    with caplog.at_level(logging.WARNING, logger="otfgp.calibration"):
        cal = fit_calibration(r, v0, n0, form="scale")
    assert "10 of 100 samples have zero latent and noise variance" in caplog.text
    assert cal.n_samples == 90 and cal.params["s"] == pytest.approx(clean, rel=0.1)
    for kwargs, match in (({"noise_var": -5e-5}, "noise variances must be >= 0"),
                          ({"noise_var": np.ones(3)}, r"noise variances of shape \(3,\) for 100 samples"),
                          ({"residuals": np.zeros(100)}, "all 100 held-out residuals are zero"),
                          ({"min_samples": 0}, "min_samples must be a positive integer")):
        with pytest.raises(ValueError, match=match):
            fit_calibration(**{"residuals": r, "latent_var": v, "noise_var": 1e-4, "form": "scale", **kwargs})


@pytest.fixture(scope="module")
def mapped_al():
    rng = np.random.default_rng(0)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5},
                               hyperparameters={"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7,
                                                "noise_force": 0.01})
    for _ in range(4):
        gp.add_training_data(displaced_al(rng), atom_indices=rng.choice(32, 10, replace=False))
    gp.train(optimize=False)
    report = gp.map()
    gp.calibration = ModelCalibration(force=Calibration("scale_floor", {"a": 3.0, "b": 2e-5}),
                                      local_energy=Calibration("latent_scale", {"s": 1.5}))
    return gp, report


def test_mapped_reported_variance_matches_exact(mapped_al):
    """The mapped variance (force and local energy) is calibrated by the same rule: mapped
    reported = calibration(mapped latent), and it agrees with the exact reported variance
    as well as the maps' latent variance agrees with the exact one."""
    gp, report = mapped_al
    rng = np.random.default_rng(21)
    structures = [displaced_al(rng, amplitude=a) for a in (0.01, 0.03, 0.06, 0.09)]
    cal = gp.calibration
    for key, latent_key, c in (("force_variances", "latent_force_variances", cal.force),
                               ("local_energy_variances", "latent_local_energy_variances", cal.local_energy)):
        m, e, ml = [], [], []
        for s in structures:
            pm, pe = gp.predict(s, variance="mapped"), gp.predict(s, variance="exact")
            noise = pm.noise_force_variance if key == "force_variances" else 0.0
            mean = pm.forces if key == "force_variances" else pm.local_energies
            np.testing.assert_array_equal(getattr(pm, key), c.apply(getattr(pm, latent_key), noise, mean))
            m.append(getattr(pm, key).ravel())
            e.append(getattr(pe, key).ravel())
            ml.append(getattr(pm, latent_key).ravel())
        m, e = np.sqrt(np.concatenate(m)), np.sqrt(np.concatenate(e))  # compared as stds
        rel = np.abs(m - e) / e
        assert np.all(np.concatenate(ml) > 0)
        assert scipy.stats.spearmanr(m, e)[0] > 0.95
        # The map tolerance of the variance (as in test_mapping): median 10 %, 90th percentile 30 %.
        assert np.median(rel) < 0.1 and np.percentile(rel, 90) < 0.3, (key, np.median(rel), np.percentile(rel, 90))


def test_calculator_reports_calibrated_and_latent_stds(mapped_al):
    gp, _ = mapped_al
    atoms = displaced_al(np.random.default_rng(3), amplitude=0.04)
    atoms.calc = otfgp.GPCalculator(gp, uncertainty="exact")
    atoms.get_forces()
    r = atoms.calc.results
    p = gp.predict(atoms, variance="exact")
    np.testing.assert_array_equal(r["force_stds"], p.force_stds)
    np.testing.assert_array_equal(atoms.arrays["force_stds"], p.force_stds)
    np.testing.assert_array_equal(r["latent_force_stds"], p.latent_force_stds)
    np.testing.assert_array_equal(r["energies_stds"], p.local_energy_stds)
    np.testing.assert_array_equal(r["latent_energies_stds"], p.latent_local_energy_stds)
    np.testing.assert_allclose(r["energies_stds"], 1.5 * r["latent_energies_stds"], rtol=1e-12)
    assert r["energy_std"] == p.energy_std
    assert np.all(r["force_stds"] > r["latent_force_stds"])
    # The mapped variance gives local-energy stds too (no energy std).
    atoms.calc = otfgp.GPCalculator(gp, uncertainty="mapped")
    atoms.get_forces()
    assert "energies_stds" in atoms.calc.results and "energy_std" not in atoms.calc.results


def test_force_scale_values_are_the_atoms_rms_component():
    f = np.array([[3.0, 0.0, 4.0], [1.0, 1.0, 1.0]])
    expected = np.repeat([5.0 / np.sqrt(3.0), 1.0], 3).reshape(2, 3)
    np.testing.assert_allclose(force_scale_values(f), expected, rtol=1e-15)
    np.testing.assert_allclose(force_scale_values(f.ravel()), expected.ravel(), rtol=1e-15)
    with pytest.raises(ValueError, match="in threes"):
        force_scale_values(np.zeros(4))
