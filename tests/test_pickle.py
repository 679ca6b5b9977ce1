"""Models and calculators pickle and deep-copy (multiprocessing, task engines), and the
calculator follows ASE's conventions for its extra properties, repr and todict."""
from __future__ import annotations

import copy
import multiprocessing
import pickle

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read, write

import otfgp
from otfgp import _core
from otf_helpers import jittered_al, small_al_model


@pytest.fixture(scope="module")
def model() -> otfgp.GaussianProcess:
    gp = small_al_model()
    gp.bounds["noise_force"] = (0.002, 0.5)  # Python-side state that a model file does not hold
    gp.calibrate(frames=[_labelled(40 + i) for i in range(2)], loo=True, form="scale")
    return gp


def _labelled(seed: int):
    atoms = jittered_al(np.random.default_rng(seed), jitter=0.02)
    atoms.calc = EMT()
    return atoms


def _same_predictions(a: otfgp.GaussianProcess, b: otfgp.GaussianProcess, atoms) -> None:
    pa, pb = a.predict(atoms, variance="exact"), b.predict(atoms, variance="exact")
    np.testing.assert_array_equal(pa.forces, pb.forces)
    np.testing.assert_array_equal(pa.force_stds, pb.force_stds)  # calibrated stds
    assert pa.energy == pb.energy and pa.energy_variance == pb.energy_variance


def test_core_model_pickles(model):
    core = pickle.loads(pickle.dumps(model.core))
    assert isinstance(core, _core.Model)
    assert core.to_bytes() == model.core.to_bytes()
    deep = copy.deepcopy(model.core)
    assert deep is not model.core and deep.to_bytes() == model.core.to_bytes()


def test_gaussian_process_pickle_round_trip(model):
    atoms = jittered_al(np.random.default_rng(5), jitter=0.02)
    back = pickle.loads(pickle.dumps(model))
    _same_predictions(model, back, atoms)
    assert back.bounds == model.bounds and back.bounds["noise_force"] == (0.002, 0.5)
    assert back.calibration is not None and back.calibration.to_core() == model.calibration.to_core()
    assert back.hyperparameters == model.hyperparameters


def test_mapped_model_pickles(model):
    mapped = model.copy()
    mapped.map()
    back = pickle.loads(pickle.dumps(mapped))
    assert back.mapped and back.has_variance_maps
    atoms = jittered_al(np.random.default_rng(6), jitter=0.02)
    pa, pb = mapped.predict(atoms), back.predict(atoms)
    np.testing.assert_array_equal(pa.forces, pb.forces)
    np.testing.assert_array_equal(pa.force_stds, pb.force_stds)


def test_deepcopy_is_independent(model):
    atoms = jittered_al(np.random.default_rng(8), jitter=0.02)
    before = model.predict(atoms, variance="exact")
    twin = copy.deepcopy(model)
    _same_predictions(model, twin, atoms)
    twin.bounds["ell2"] = (1.0, 2.0)
    twin.add_training_data(_labelled(9), atom_indices=[0, 1])
    twin.train(optimize=False)
    assert twin.n_training_environments == model.n_training_environments + 2
    assert model.bounds["ell2"] != (1.0, 2.0)
    after = model.predict(atoms, variance="exact")
    np.testing.assert_array_equal(before.forces, after.forces)
    assert not np.allclose(twin.predict(atoms).forces, before.forces, rtol=0, atol=1e-12)


def test_untrained_model_pickles():
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.0})
    gp.add_training_data(_labelled(1))
    back = pickle.loads(pickle.dumps(gp))
    assert not back.trained and back.n_labels == gp.n_labels
    back.train(optimize=False)
    gp.train(optimize=False)
    _same_predictions(gp, back, _labelled(2))


def test_calculator_pickles_and_deepcopies(model):
    atoms = jittered_al(np.random.default_rng(10), jitter=0.02)
    calc = otfgp.GPCalculator(model, uncertainty="exact", uncertainty_every=2)
    atoms.calc = calc
    forces = atoms.get_forces()
    back = pickle.loads(pickle.dumps(calc))
    assert back.uncertainty == "exact" and back.uncertainty_every == 2
    np.testing.assert_array_equal(back.results["forces"], forces)
    fresh = atoms.copy()
    fresh.calc = back
    fresh.positions[0, 0] += 1e-3  # a new calculation with the unpickled model
    atoms.positions[0, 0] += 1e-3
    np.testing.assert_array_equal(fresh.get_forces(), atoms.get_forces())
    twin = copy.deepcopy(calc)
    assert twin.model is not calc.model


def _predict_forces(args):
    calc, atoms = args
    atoms.calc = calc
    return atoms.get_forces(), calc.get_property("force_stds", atoms)


def test_multiprocessing_pool_predicts(model):
    frames = [jittered_al(np.random.default_rng(20 + i), jitter=0.02) for i in range(4)]
    calc = otfgp.GPCalculator(model)
    # spawn: every worker receives the calculator by pickle, as task engines do
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_predict_forces, [(calc, f) for f in frames])
    for f, (forces, stds) in zip(frames, results):
        p = model.predict(f)
        np.testing.assert_array_equal(forces, p.forces)
        np.testing.assert_array_equal(stds, p.force_stds)


# ----------------------------------------------------------------- ASE conventions
def test_get_property_force_stds(model):
    atoms = jittered_al(np.random.default_rng(11), jitter=0.02)
    calc = otfgp.GPCalculator(model, uncertainty=False)
    atoms.calc = calc
    atoms.get_forces()
    assert "force_stds" not in calc.results
    stds = calc.get_property("force_stds", atoms)  # asked for explicitly: computed
    np.testing.assert_allclose(stds, model.predict(atoms).force_stds, rtol=1e-12)
    assert calc.get_property("energy_std", atoms) == pytest.approx(model.predict(atoms, "exact").energy_std)
    assert calc.get_property("stress_stds", atoms).shape == (6,)
    assert calc.get_property("epistemic_force_stds", atoms).shape == (32, 3)
    for name in otfgp.calculator.STD_PROPERTIES:
        assert calc.get_property(name, atoms) is not None


def test_repr_and_todict(model, tmp_path):
    calc = otfgp.GPCalculator(model)
    text = repr(calc)
    assert text.startswith("GPCalculator(model=GaussianProcess(species=['Al']")
    assert "environments=24" in text and "calibrated=True" in text and "mapped=False" in text
    d = calc.todict()
    assert d["species"] == ["Al"] and d["cutoffs"] == {"twobody": 5.0, "threebody": 3.5}
    assert d["training_environments"] == 24 and d["training_labels"] == 72
    assert d["calibrated"] is True and d["mapped"] is False and d["trained"] is True
    # ASE stores todict() with trajectory frames: it must be plain data
    atoms = jittered_al(np.random.default_rng(12), jitter=0.02)
    atoms.calc = calc
    atoms.get_forces()
    write(tmp_path / "a.traj", atoms)
    back = read(tmp_path / "a.traj")
    assert back.calc.parameters["training_environments"] == 24
    assert back.calc.name == "gpcalculator"
