"""The neighbourhood force scale of the calibration (form ``neighbourhood``): the core's
scale values against a numpy/ASE reference, the reported stds of every prediction path
against the rule applied by hand, save/load, the leave-one-out scales and the samples the
on-the-fly learner records."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

import otfgp
from otfgp.calibration import (Calibration, ModelCalibration, SamplePool, force_scale_values, model_calibration,
                               neighbourhood_scale_values, scale_radius)
from otfgp.learning import calibration_sample

CUTOFFS = {"twobody": 4.5, "threebody": 3.5}


def _reference_scales(atoms: Atoms, forces: np.ndarray, radius: float) -> np.ndarray:
    """RMS of |F_j|/sqrt(3) over the atom and its neighbours closer than radius (ASE's list)."""
    m = np.sqrt((np.asarray(forces) ** 2).sum(axis=1) / 3.0)
    i, j = neighbor_list("ij", atoms, radius)
    s = m**2 + np.bincount(i, weights=m[j] ** 2, minlength=len(atoms))
    c = 1 + np.bincount(i, minlength=len(atoms))
    return np.repeat(np.sqrt(s / c)[:, None], 3, axis=1)


def _cell(rng: np.random.Generator, repeat=(2, 2, 2), amplitude: float = 0.15) -> Atoms:
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(repeat)
    atoms.positions += rng.normal(0.0, amplitude, atoms.positions.shape)
    atoms.calc = EMT()
    return atoms


@pytest.fixture(scope="module")
def model() -> otfgp.GaussianProcess:
    rng = np.random.default_rng(7)
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters={"sigma2": 0.5, "ell2": 1.0, "sigma3": 0.02,
                                                                 "ell3": 0.9, "noise_force": 0.01})
    for _ in range(3):
        # given unsorted: the leave-one-out rows follow the stored order
        gp.add_training_data(_cell(rng), atom_indices=[9, 2, 30, 17])
    gp.train(optimize=False)
    return gp


@pytest.mark.parametrize("radius", [0.0, 2.0, 3.5, 6.0])
def test_scale_values_match_a_neighbour_list_reference(radius):
    rng = np.random.default_rng(1)
    atoms = Atoms("Al5", positions=rng.uniform(0, 4.0, (5, 3)),
                  cell=[[4.0, 0.3, 0.0], [0.5, 4.2, 0.0], [0.2, 0.4, 3.9]], pbc=[True, True, False])
    forces = rng.normal(0.0, 1.0, (5, 3))
    got = neighbourhood_scale_values(atoms, forces, radius)
    if radius == 0.0:
        np.testing.assert_array_equal(got, force_scale_values(forces))
    else:  # 6 A in a 4 A cell: an atom is its own neighbour by image, counted as in ASE
        np.testing.assert_allclose(got, _reference_scales(atoms, forces, radius), rtol=1e-13)


def test_scale_radius_is_the_threebody_cutoff():
    assert scale_radius({"twobody": 5.0, "threebody": 3.5}) == 3.5
    assert scale_radius({"twobody": 5.0, "threebody": 0.0}) == 5.0


def _neighbourhood(a: float = 3.0, c: float = 0.03, radius: float = 3.5) -> ModelCalibration:
    return ModelCalibration(force=Calibration("neighbourhood", {"a": a, "c": c, "radius": radius}))


@pytest.mark.parametrize("mapped", [False, True])
def test_reported_force_variance_is_the_rule_on_neighbourhood_scales(model, mapped):
    gp = model.copy()
    if mapped:
        gp.map()
    gp.calibration = _neighbourhood()
    atoms = _cell(np.random.default_rng(11))
    p = gp.predict(atoms, variance="mapped" if mapped else "exact")
    scales = _reference_scales(atoms, p.forces, 3.5)
    want = 3.0 * p.latent_force_variances + 0.03 * scales**2
    np.testing.assert_allclose(p.force_stds**2, want, rtol=1e-12)
    # the atom's own scale would give other numbers: the test can tell the two apart
    own = 3.0 * p.latent_force_variances + 0.03 * force_scale_values(p.forces) ** 2
    assert np.max(np.abs(own - want) / want) > 0.05
    # the MD-code path (per-centre environments, all neighbours are centres) agrees. It sums
    # the exact latent variance k** - k^T K^-1 k in another order, and that difference of
    # near-equal numbers loses digits: up to 1.03e-12 relative on an AMD EPYC (within 1e-12
    # on the Intel CPUs before), against > 5% for a wrong scale rule (above); 1e-10 is the
    # tolerance of the same comparison in test_local_path.py
    local = gp.core.predict_local(atoms.cell[:], list(atoms.pbc), atoms.positions,
                                  np.zeros(len(atoms), dtype=np.int32), variance="mapped" if mapped else "exact")
    np.testing.assert_allclose(local["force_variances"], p.force_stds**2, rtol=1e-10)


def test_neighbourhood_map_survives_save_load(model, tmp_path):
    gp = model.copy()
    gp.calibration = _neighbourhood(radius=3.0)
    gp.save(tmp_path / "m.otfgp")
    back = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert back.calibration == gp.calibration
    assert back.core.calibration["force"]["radius"] == 3.0
    atoms = _cell(np.random.default_rng(12))
    np.testing.assert_array_equal(back.predict(atoms).force_stds, gp.predict(atoms).force_stds)


def test_radius_beyond_the_cutoff_is_rejected(model):
    gp = model.copy()
    with pytest.raises(ValueError, match="radius"):
        gp.calibration = _neighbourhood(radius=4.6)


def test_calibrate_defaults_to_the_neighbourhood_form(model):
    gp = model.copy()
    cal = gp.calibrate(loo=True)
    assert cal.force.form == "neighbourhood" and cal.force.params["radius"] == gp.force_scale_radius == 3.5


def test_loo_scales_use_the_loo_forces_in_row_order(model):
    gp = model.copy()
    res = gp.loo_residuals("environment").select(0)
    labels = np.concatenate([f.get_forces()[f.arrays["force_trained"]] for f in gp.training_frames()])
    got = gp._loo_neighbourhood_scales(np.asarray(gp.core.labels)[: labels.size] - res.residuals, 3.5)
    # by hand, structure by structure in stored order
    want = []
    loo = (np.asarray(gp.core.labels)[: labels.size] - res.residuals).reshape(-1, 3)
    k = 0
    for i in range(gp.n_training_structures):
        d = gp.core.training_structure(i)
        order = np.asarray(d["force_atoms"])
        atoms = Atoms("Al" * len(d["positions"]), positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
        forces = np.array(gp.predict(atoms, variance=False).forces)
        forces[order] = loo[k:k + order.size]
        want.append(_reference_scales(atoms, forces, 3.5)[order])
        k += order.size
    assert sorted(gp.core.training_structure(0)["force_atoms"]) == [2, 9, 17, 30]
    np.testing.assert_allclose(got, np.concatenate(want).ravel(), rtol=1e-12)


def test_pre_update_samples_carry_neighbourhood_scales_and_old_ones_are_left_out(model, caplog):
    atoms = _cell(np.random.default_rng(13))
    p = model.predict(atoms)
    sample = calibration_sample(p.forces, p.latent_force_variances, atoms, 3.5)
    np.testing.assert_allclose(np.reshape(sample["neighbourhood_scales"], (-1, 3)),
                               _reference_scales(atoms, p.forces, 3.5), rtol=1e-13)
    old = {k: v for k, v in sample.items() if k != "neighbourhood_scales"}  # a checkpoint before them
    pool = SamplePool(3.5)
    pool.add_samples([sample, old], 1e-4)
    noise = {"force": 1e-4, "energy": 1e-4, "stress": 1e-6}
    with caplog.at_level(logging.WARNING, logger="otfgp.calibration"):
        cal = model_calibration(pool.pooled, pool.counts, noise, "neighbourhood", 30, radius=3.5)
    assert cal.force.n_samples == len(sample["residuals"])
    assert "no neighbourhood scale" in caplog.text
    # the relative form uses both (the atom scale needs only the forces)
    assert model_calibration(pool.pooled, pool.counts, noise, "relative", 30).force.n_samples == 2 * len(
        sample["residuals"])


def test_scalable_gp_applies_the_same_rule(model):
    sgp = otfgp.ScalableGP.from_gaussian_process(model)
    sgp.train(optimize=False)
    sgp.calibration = _neighbourhood()
    atoms = _cell(np.random.default_rng(14))
    p = sgp.predict(atoms)
    want = 3.0 * p.latent_force_variances + 0.03 * _reference_scales(atoms, p.forces, 3.5) ** 2
    np.testing.assert_allclose(p.force_variances, want, rtol=1e-12)


def test_relative_samples_without_forces_are_named_not_dropped_silently(model, caplog):
    atoms = _cell(np.random.default_rng(14))
    p = model.predict(atoms)
    sample = calibration_sample(p.forces, p.latent_force_variances, atoms, 3.5)
    no_forces = {k: v for k, v in sample.items() if k != "forces"}  # a caller's sample without them
    pool = SamplePool()
    pool.add_samples([sample, no_forces], 1e-4)
    noise = {"force": 1e-4, "energy": 1e-4, "stress": 1e-6}
    with caplog.at_level(logging.WARNING, logger="otfgp.calibration"):
        cal = model_calibration(pool.pooled, pool.counts, noise, "relative", 30)
    assert cal.force.n_samples == len(sample["residuals"])
    assert "have no predicted forces" in caplog.text and "relative" in caplog.text
