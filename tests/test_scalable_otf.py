"""The scalable GP in on-the-fly learning and in configs: ``[model] kind``, OTF with a
ScalableGP (DFT when uncertain, checkpoint + exact resume), the automatic switch from the
exact GP (logged, checkpointed, resumed), and the ScalableGP's calibration from samples and
energy reference (kept by save/load, copy and pickle)."""
from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

import otfgp
from otfgp.builders import build_model, otf_model_options
from otfgp.config import ConfigError, _validate_model
from otfgp.learning import calibration_sample
from otfgp.models import load_model
from otf_helpers import FIXED_HYPERPARAMETERS, thermalize

CUTOFFS = {"twobody": 4.5, "threebody": 3.2}
# fixed hyperparameters (no optimisation): fast, and the runs compare the learner's logic
OPTIONS = dict(threshold=0.02, max_atoms_added=2, init_atoms=2, optimize=False, map=False,
               calibration="scale_floor", extrapolation_checks=False, checkpoint_every=None,
               checkpoint_minutes=None)


def _atoms(seed: int = 1, temperature_K: float = 600.0):
    """8 Al atoms (two cubic fcc cells), jittered, with Maxwell-Boltzmann momenta."""
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.uniform(-0.08, 0.08, atoms.positions.shape)
    thermalize(atoms, temperature_K, rng)
    Stationary(atoms)
    return atoms


def _scalable() -> otfgp.ScalableGP:
    return otfgp.ScalableGP(["Al"], CUTOFFS, hyperparameters=FIXED_HYPERPARAMETERS, lower=1.8)


def _exact() -> otfgp.GaussianProcess:
    return otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=FIXED_HYPERPARAMETERS)


def _frames(n: int, seed: int = 0, amplitude: float = 0.1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
        atoms.positions += rng.uniform(-amplitude, amplitude, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        out.append(atoms)
    return out


def _emt(atoms):
    """A fresh EMT per label: one EMT instance reuses its neighbour list across calls, so
    its forces depend on its history at the 1e-15 level (and a resumed run's would not
    repeat the uninterrupted run's bit for bit)."""
    return EMT()


def _final(otf) -> dict:
    return {"positions": otf.atoms.positions.copy(), "momenta": otf.atoms.get_momenta()}


# ------------------------------------------------------------------ config
def test_model_kind_selects_the_model():
    base = {"species": ["Al"], "twobody": 4.5, "threebody": 3.2}
    exact = _validate_model(base, {})
    assert exact["kind"] == "exact" and isinstance(build_model(exact), otfgp.GaussianProcess)
    assert otf_model_options(exact) == {}
    scalable = _validate_model({**base, "kind": "scalable"}, {})
    model = build_model(scalable)
    assert isinstance(model, otfgp.ScalableGP) and model.priors is None  # maximum likelihood by default
    auto = _validate_model({**base, "kind": "auto"}, {})
    assert auto["scalable_after"] == otfgp.scalable.AUTO_SWITCH_ENVIRONMENTS
    assert isinstance(build_model(auto), otfgp.GaussianProcess)  # on-the-fly: starts exact
    assert isinstance(build_model(auto, environments=auto["scalable_after"] + 1), otfgp.ScalableGP)
    auto = _validate_model({**base, "kind": "auto", "scalable_after": 50}, {})
    assert otf_model_options(auto) == {"scalable_after": 50}
    with pytest.raises(ConfigError, match="model.kind must be one of"):
        _validate_model({**base, "kind": "sparse"}, {})
    with pytest.raises(ConfigError, match="scalable_after is the threshold of kind = 'auto'"):
        _validate_model({**base, "scalable_after": 50}, {})
    with pytest.raises(ConfigError, match="positive integer"):
        _validate_model({**base, "kind": "auto", "scalable_after": 0}, {})
    with pytest.raises(ConfigError, match="no baselines"):
        _validate_model({**base, "kind": "scalable", "baseline": {"kind": "zbl", "cutoff": 2.0}}, {})


def test_scalable_after_option_is_checked():
    with pytest.raises(ValueError, match="scalable_after must be a positive integer"):
        otfgp.OTFOptions(scalable_after=0)


def test_auto_switch_refuses_a_model_with_a_baseline_before_the_run(tmp_path):
    from otfgp.baselines import Morse

    model = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=FIXED_HYPERPARAMETERS,
                                  baseline=Morse({"Al": (0.27, 3.25, 1.17)}, 5.0))
    atoms = _atoms()
    with pytest.raises(ValueError, match="no baselines yet"):
        otfgp.OTF(VelocityVerlet(atoms, 2 * units.fs), model, _emt, output_dir=tmp_path / "run",
                  scalable_after=50, **OPTIONS)
    assert not (tmp_path / "run" / "dft").exists()  # refused before any label


# ------------------------------------------------------------------ calibration, energy reference, copies
def test_a_retrain_refits_the_calibration_only_with_enough_samples_of_its_own(caplog):
    """A ScalableGP has no leave-one-out residuals, so its training environments are no
    held-out samples: with 9 environments and no pre-update errors a retrain leaves it
    uncalibrated, without fitting (and warning about) an identity fallback."""
    from otfgp.learning import LearningOptions, retrain

    model = _scalable()
    for atoms in _frames(3):
        model.add_training_data(atoms, atom_indices=[0, 1, 2])
    with caplog.at_level(logging.INFO, logger="otfgp"):
        retrain(model, LearningOptions(optimize=False, map=False), calls=3)
    assert model.calibration is None
    assert "0 held-out force samples so far" in caplog.text and "identity map" not in caplog.text


def test_scalable_calibration_from_samples_survives_save_load_copy_and_pickle(tmp_path):
    model = _scalable()
    for atoms in _frames(3):
        model.add_training_data(atoms, atom_indices=[0, 1, 2])
    model.train(optimize=False)
    heldout = _frames(3, seed=5)
    samples = []
    for atoms in heldout:
        pred = model.predict(atoms)
        samples.append(calibration_sample(pred.forces, pred.latent_force_variances, atoms, model.force_scale_radius))
    uncalibrated = model.predict(heldout[0])
    cal = model.calibrate(samples=samples, form="scale_floor")
    assert not cal.force.fallback and cal.info["samples"]["force"] == {"samples": 72}
    pred = model.predict(heldout[0])
    expected = cal.force.params["a"] * uncalibrated.latent_force_variances + cal.force.params["b"]
    np.testing.assert_allclose(pred.force_variances, expected, rtol=1e-12)
    np.testing.assert_allclose(pred.epistemic_force_variances,
                               cal.force.params["a"] * uncalibrated.latent_force_variances, rtol=1e-12)
    with pytest.raises(ValueError, match="no leave-one-out residuals"):
        model.calibrate(samples=samples, loo=True)
    model.save(tmp_path / "m.otfgp")
    for copy in (otfgp.ScalableGP.load(tmp_path / "m.otfgp"), model.copy(), pickle.loads(pickle.dumps(model))):
        assert copy.calibration == cal
        got = copy.predict(heldout[0])
        np.testing.assert_array_equal(got.force_variances, pred.force_variances)
        np.testing.assert_array_equal(got.forces, pred.forces)
        assert copy.n_training_environments == 9


def test_scalable_energy_reference_fits_offsets_and_is_saved(tmp_path):
    frames = _frames(4, seed=2)
    model = _scalable()
    for atoms in frames:
        model.add_training_data(atoms, atom_indices=[0, 1])
    model.train(optimize=False)
    assert not model.has_energy_labels
    raw = [model.predict(a, variance=False).energy for a in frames]
    energies = [a.get_potential_energy() for a in frames]
    offsets = model.set_energy_reference(energies)
    # one species: the offset is the mean of (E_ref - E_GP) per atom
    assert offsets["Al"] == pytest.approx(np.mean(np.subtract(energies, raw)) / len(frames[0]), rel=1e-10)
    model.save(tmp_path / "m.otfgp")
    loaded = otfgp.ScalableGP.load(tmp_path / "m.otfgp")
    assert loaded.predict(frames[0], variance=False).energy == model.predict(frames[0], variance=False).energy
    assert loaded.set_energy_reference(energies) == offsets  # the energy rows were saved
    with pytest.raises(ValueError, match="one entry per training structure"):
        model.set_energy_reference(energies[:2])


# ------------------------------------------------------------------ on-the-fly learning
STEPS, SPLIT = 16, 7


def _run(run_dir, model, **options):
    dyn = VelocityVerlet(_atoms(), 5 * units.fs)
    return otfgp.OTF(dyn, model, _emt, output_dir=str(run_dir), **{**OPTIONS, **options})


def _resume_matches(tmp_path, model_factory, **options):
    """Whole run vs checkpoint at SPLIT + resume: same end state and log. Returns both OTFs'
    summaries and the resumed OTF's model."""
    with _run(tmp_path / "whole", model_factory(), **options) as whole:
        summary = whole.run(STEPS)
        reference = _final(whole)
    with _run(tmp_path / "split", model_factory(), **options) as first:
        first.run(SPLIT)
        split_summary = first.summary()
    with otfgp.OTF.resume(tmp_path / "split", VelocityVerlet(_atoms(), 5 * units.fs), _emt) as resumed:
        assert resumed.step == SPLIT
        resumed.run(STEPS - SPLIT)
        got = _final(resumed)
        model = resumed.model
        resumed_summary = resumed.summary()
    for key in reference:
        np.testing.assert_array_equal(got[key], reference[key], err_msg=key)
    assert (tmp_path / "split" / "log.jsonl").read_text() == (tmp_path / "whole" / "log.jsonl").read_text()
    assert resumed_summary["dft_call_steps"] == summary["dft_call_steps"]
    return summary, split_summary, model


def test_otf_with_a_scalable_model_calls_dft_and_resumes_exactly(tmp_path):
    summary, _, model = _resume_matches(tmp_path, _scalable)
    assert isinstance(model, otfgp.ScalableGP)
    assert summary["model"] == "ScalableGP" and summary["model_switch"] is None
    calls = summary["dft_call_steps"]
    assert calls[0] == 0 and len(calls) >= 3 and any(s > SPLIT for s in calls)  # learns before and after the split
    assert summary["pre_update_calibration"]["frames"] == len(calls) - 1
    assert model.calibration is not None and not model.calibration.force.fallback  # fitted on pre-update errors
    assert isinstance(load_model(tmp_path / "whole" / "model.otfgp"), otfgp.ScalableGP)


def test_auto_switch_happens_at_the_threshold_is_logged_and_resumed(tmp_path):
    limit = 5  # environments: the seed frame gives 2, each call adds up to 2
    summary, split_summary, model = _resume_matches(tmp_path, _exact, scalable_after=limit)
    switch = summary["model_switch"]
    assert switch is not None and switch["threshold"] == limit and switch["to"] == "scalable"
    assert switch["step"] < SPLIT and split_summary["model_switch"] == switch  # switched before the checkpoint
    assert isinstance(model, otfgp.ScalableGP) and summary["model"] == "ScalableGP"
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    events = [e for e in log if "model_switch" in e]
    assert [e["step"] for e in events] == [switch["step"]]
    # switched at the first DFT call that took the training set past the threshold
    sizes = {e["step"]: e["training_environments"] for e in log}
    assert sizes[switch["step"]] == switch["training_environments"] > limit
    assert all(sizes[s] <= limit for s in summary["dft_call_steps"] if s < switch["step"])
    assert len([s for s in summary["dft_call_steps"] if s > switch["step"]]) >= 1  # learns on, scalable


# ------------------------------------------------------------------ otfgp train
def test_otfgp_train_fits_a_scalable_model(tmp_path, capsys):
    from ase.io import write

    from otfgp.cli import main

    write(tmp_path / "frames.extxyz", _frames(4, seed=8))
    args = ["train", "--data", str(tmp_path / "frames.extxyz"), "--twobody", "4.5", "--threebody", "3.2",
            "-o", str(tmp_path / "m.otfgp")]
    assert main([*args, "--kind", "scalable", "--no-optimize"]) == 0
    model = load_model(tmp_path / "m.otfgp")
    assert isinstance(model, otfgp.ScalableGP) and model.trained and model.n_labels == 4 * (24 + 1 + 6)
    summary = json.loads((tmp_path / "m_summary.json").read_text())
    assert summary["model_kind"] == "ScalableGP" and summary["mapped"] and summary["map"] is None
    assert main([*args, "--kind", "scalable", "--calibrate", "scale_floor"]) == 2
    assert "no leave-one-out residuals" in capsys.readouterr().err
