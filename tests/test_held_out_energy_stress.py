"""Pre-update energies and stresses as held-out calibration samples: what a sample records,
that the energy and stress maps are then fitted on them rather than taking the force map's
scale, that local energies follow the energy map, and that the on-the-fly learner records them."""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

import otfgp
from otfgp.calibration import SamplePool, model_calibration
from otfgp.learning import calibration_sample, held_out_energy_stress, label
from conftest import random_triclinic, trained_toy_model
from otf_helpers import jittered_al, thermalize

NOISE = {"force": 1e-4, "energy": 1e-4, "stress": 1e-8}


def _labelled_and_prediction(model, seed: int, variance="exact"):
    atoms = random_triclinic(np.random.default_rng(seed))
    p = model.predict(atoms, variance=variance)
    return label(atoms, EMT(), stress=None), p


def _voigt_to_full(v):
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _sample(model, labelled, p):
    return calibration_sample(p.forces, p.latent_force_variances, labelled, model.force_scale_radius,
                              *held_out_energy_stress(model, p.energy, p.latent_energy_std, p.stress,
                                                      p.latent_stress_stds))


def test_sample_records_energy_and_stress_residuals_against_the_labels():
    model = trained_toy_model(np.random.default_rng(1))
    labelled, p = _labelled_and_prediction(model, 2)
    s = _sample(model, labelled, p)
    ref = labelled.calc.results
    assert s["energy_residuals"] == [pytest.approx(ref["energy"] - p.energy, rel=0, abs=1e-12)]
    assert s["energy_latent_variances"] == [pytest.approx(p.latent_energy_variance, rel=1e-12)]
    np.testing.assert_allclose(s["stress_residuals"], np.asarray(ref["stress"]) - p.stress, rtol=0, atol=1e-14)
    np.testing.assert_allclose(s["stress_latent_variances"], p.latent_stress_variance, rtol=1e-12)
    assert len(s["residuals"]) == 3 * len(labelled)
    # a labeller that returns the stress as a 3 x 3 tensor gives the same 6 Voigt residuals
    full = _voigt_to_full(ref["stress"])
    as_tensor = label(labelled, lambda a: {"forces": ref["forces"], "energy": ref["energy"], "stress": full}, stress=None)
    np.testing.assert_allclose(_sample(model, as_tensor, p)["stress_residuals"], s["stress_residuals"], atol=1e-15)


def test_no_energy_sample_from_a_force_only_model_and_none_from_the_mapped_variance():
    forces_only = trained_toy_model(np.random.default_rng(1), energy=False, stress=False)
    labelled, p = _labelled_and_prediction(forces_only, 2)
    s = _sample(forces_only, labelled, p)
    assert "energy_residuals" not in s  # its energy is fixed only up to a constant per species
    assert len(s["stress_residuals"]) == 6  # the stress is a derivative: meaningful
    mapped = trained_toy_model(np.random.default_rng(1))
    mapped.map(variance=True)
    labelled, p = _labelled_and_prediction(mapped, 2, variance="mapped")
    s = _sample(mapped, labelled, p)
    assert "energy_residuals" not in s and "stress_residuals" not in s


def test_energy_and_stress_maps_fit_their_own_samples_and_local_energies_follow_the_energy():
    """Synthetic samples whose energy errors have 9x the latent variance and stress errors
    2.25x, force errors 4x: the maps recover their own scales (with 400 samples each within
    about 15 %), and the local-energy map takes the energy map's latent scale exactly."""
    rng = np.random.default_rng(3)

    def errors(n, factor, scale):
        v = scale * rng.uniform(0.2, 2.0, n)
        return rng.normal(size=n) * np.sqrt(factor * v), v

    samples = []
    for _ in range(400):
        r, v = errors(3, 4.0, 1e-3)
        er, ev = errors(1, 9.0, 1e-2)
        sr, sv = errors(6, 2.25, 1e-6)
        samples.append({"residuals": r, "latent_variances": v, "energy_residuals": er,
                        "energy_latent_variances": ev, "stress_residuals": sr, "stress_latent_variances": sv})
    pool = SamplePool()
    pool.add_samples(samples, NOISE)
    assert pool.counts["energy"] == {"samples": 400} and pool.counts["stress"] == {"samples": 2400}
    cal = model_calibration(pool.pooled, pool.counts, NOISE, "scale_floor", 30)
    assert cal.info["transferred_from_force"] == [] and cal.info["local_energy_from"] == "energy"
    assert cal.force.params["a"] == pytest.approx(4.0, rel=0.15)
    assert cal.energy.params["a"] == pytest.approx(9.0, rel=0.15)
    assert cal.stress.params["a"] == pytest.approx(2.25, rel=0.15)
    assert cal.local_energy.form == "latent_scale"
    assert cal.local_energy.coefficients()["a"] == pytest.approx(cal.energy.params["a"], rel=1e-14)
    # too few energy samples (20 energy, 120 stress): energy and local energies of a model
    # without energy labels take the force map's scale
    few = SamplePool()
    few.add_samples(samples[:20], NOISE)
    cal = model_calibration(few.pooled, few.counts, NOISE, "scale_floor", 30)
    assert cal.info["transferred_from_force"] == ["energy", "local_energy"]
    assert cal.local_energy.coefficients()["a"] == pytest.approx(cal.force.params["a"], rel=1e-14)
    # ... unless the model is trained on energies: then they stay the GP's own until measured
    cal = model_calibration(few.pooled, few.counts, NOISE, "scale_floor", 30, energy_labels=True)
    assert cal.info["transferred_from_force"] == [] and cal.info["uncalibrated"] == ["energy", "local_energy"]
    assert cal.energy.form == cal.local_energy.form == "identity"


def test_otf_records_pre_update_energies_and_stresses_and_a_resume_keeps_them(tmp_path):
    rng = np.random.default_rng(6)
    atoms = jittered_al(rng, repeat=(1, 1, 1))
    thermalize(atoms, 600, rng)
    otf = otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), otfgp.GaussianProcess(["Al"], {"twobody": 4.5}), EMT(),
                    threshold=0.005, add_energy=True, add_stress=True, output_dir=str(tmp_path / "run"),
                    progress=False, map=False, calibration="scale_floor")
    otf.run(6)
    assert len(otf.dft_calls) >= 3
    samples = otf.calibration_samples
    assert len(samples) == len(otf.dft_calls) - 1  # every call after the seed
    for s in samples:
        assert len(s["energy_residuals"]) == 1 and len(s["stress_residuals"]) == 6
        assert np.all(np.asarray(s["energy_latent_variances"]) > 0)
    resumed = otfgp.OTF.resume(str(tmp_path / "run"), VelocityVerlet(atoms.copy(), 5 * units.fs), EMT())
    assert resumed.calibration_samples == samples
    assert otf.model.calibration.info["samples"]["energy"]["samples"] == len(samples)
