"""On-the-fly learning with EMT as the oracle: 32-atom Al, 300 K solid then a 3000 K kick.

One run of the whole protocol (module fixture) feeds the assertions on where DFT is
called, the accuracy of the final model on held-out EMT data and the output files.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.verlet import VelocityVerlet

import otfgp
from otf_helpers import CUTOFFS, emt_langevin_snapshots, force_mae, jittered_al, read_log, thermalize

SOLID_STEPS = 100
LIQUID_STEPS = 100
SEED = 0


@pytest.fixture(scope="module")
def single_thread():
    """One OpenMP thread: the MD is chaotic, so reduction-order differences between thread
    counts would otherwise change where DFT is called on machines with more cores."""
    before = otfgp.get_max_threads()
    otfgp.set_num_threads(1)
    yield
    otfgp.set_num_threads(before)


@pytest.fixture(scope="module")
def protocol(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("otf_al")
    rng = np.random.default_rng(SEED)
    atoms = jittered_al(rng, jitter=0.01)
    thermalize(atoms, 300, rng)
    dyn = VelocityVerlet(atoms, 5 * units.fs)
    model = otfgp.GaussianProcess(["Al"], CUTOFFS)
    otf = otfgp.OTF(dyn, model, EMT(), threshold=0.01, max_atoms_added=1, init_atoms=1,
                    output_dir=str(out))
    t0 = time.perf_counter()
    solid = otf.run(SOLID_STEPS)
    solid_calls = list(solid["dft_call_steps"])  # the summary list is the live one
    t1 = time.perf_counter()
    atoms.set_momenta(atoms.get_momenta() * np.sqrt(3000 / atoms.get_temperature()))
    summary = otf.run(LIQUID_STEPS)
    t2 = time.perf_counter()
    calls = np.array(summary["dft_call_steps"])
    print(f"\nOTF protocol: solid {t1 - t0:.1f} s, liquid {t2 - t1:.1f} s; "
          f"{len(calls)} DFT calls at steps {calls.tolist()}; wall-time split {summary['wall_time_s']}")
    return {"out": out, "otf": otf, "model": model, "atoms": atoms, "solid_calls": solid_calls,
            "summary": summary, "calls": calls, "time": t2 - t0}


def test_dft_calls_cluster_at_start_and_after_melting(protocol):
    calls = protocol["calls"]
    solid = calls[calls <= SOLID_STEPS]
    liquid = calls[calls > SOLID_STEPS] - SOLID_STEPS  # steps into the liquid segment
    assert protocol["solid_calls"] == solid.tolist()
    assert calls[0] == 0  # step 0 seeds the model
    assert np.all(np.diff(calls) > 0), "a step may be labelled at most once"
    # solid: the model learns quickly, then stays quiet
    assert 2 <= len(solid) <= 15
    assert np.sum(solid <= SOLID_STEPS // 3) >= 0.75 * len(solid), solid
    # the kick to 3000 K brings new environments: a burst of calls right afterwards
    # (how many in all varies with the trajectory: 8-26 over six seeds, against 8-10 solid)
    assert np.sum(liquid <= 20) >= 5, liquid
    first, second = np.sum(liquid <= LIQUID_STEPS // 2), np.sum(liquid > LIQUID_STEPS // 2)
    assert first > second, (first, second)


@pytest.fixture(scope="module")
def held_out():
    return {"solid": emt_langevin_snapshots(300, 6, seed=101),
            "liquid": emt_langevin_snapshots(3000, 6, seed=202)}


def test_held_out_force_accuracy(protocol, held_out):
    model = protocol["model"]
    mae_solid = force_mae(model, held_out["solid"])
    mae_liquid = force_mae(model, held_out["liquid"])
    temps = [s.get_temperature() for s in held_out["liquid"]]
    t_otf = np.mean([e["temperature_K"] for e in read_log(protocol["out"]) if e["step"] > SOLID_STEPS])
    # The kick sets 3000 K, equipartition then halves it: the OTF liquid itself averages
    # ~1500 K, so the 3000 K held-out liquid is hotter than anything the model was taught.
    print(f"held-out force MAE: 300 K solid {1000 * mae_solid:.1f} meV/A, 3000 K liquid "
          f"{1000 * mae_liquid:.1f} meV/A (snapshot temperatures {np.round(temps).tolist()}; "
          f"OTF liquid segment mean {t_otf:.0f} K)")
    assert mae_solid < 0.015
    assert mae_liquid < 0.045


def test_log_jsonl(protocol):
    entries = read_log(protocol["out"])
    steps = [e["step"] for e in entries]
    assert steps == list(range(SOLID_STEPS + LIQUID_STEPS + 1)), "one log line per step"
    fields = ("step", "time_fs", "temperature_K", "potential_energy_eV", "max_std_eV_per_A", "dft",
              "training_environments", "hyperparameters")
    for e in entries:
        for key in fields:
            assert key in e, key
        assert math.isclose(e["time_fs"], 5.0 * e["step"], rel_tol=1e-12, abs_tol=1e-12)
        assert math.isfinite(e["temperature_K"]) and math.isfinite(e["potential_energy_eV"])
        assert set(otfgp.gp.HYPERPARAMETER_NAMES) <= set(e["hyperparameters"])
        if e["step"] > 0:
            assert e["max_std_eV_per_A"] is not None and e["max_std_eV_per_A"] >= 0
            if not e["dft"]:
                assert e["max_std_eV_per_A"] <= 0.01  # only frames below threshold skip DFT
            else:
                assert e["max_std_eV_per_A"] > 0.01
    calls = protocol["calls"].tolist()
    assert [e["step"] for e in entries if e["dft"]] == calls
    # the training set grows by one environment per call after the 1-atom seed
    env = {e["step"]: e["training_environments"] for e in entries}
    assert env[SOLID_STEPS + LIQUID_STEPS] == 1 + (len(calls) - 1)
    assert all(env[s] <= env[s + 1] for s in range(SOLID_STEPS + LIQUID_STEPS))
    # the kick shows in the log: cool before it, hot after it
    t_solid = np.mean([e["temperature_K"] for e in entries if e["step"] <= SOLID_STEPS])
    t_liquid = np.mean([e["temperature_K"] for e in entries if e["step"] > SOLID_STEPS])
    assert t_solid < 600 and t_liquid > 1000


def test_output_files(protocol):
    out, model, calls = protocol["out"], protocol["model"], protocol["calls"]
    frames = read(out / "trajectory.extxyz", index=":")
    assert [f.info["otf_step"] for f in frames] == list(range(SOLID_STEPS + LIQUID_STEPS + 1))
    missing = [f.info["otf_step"] for f in frames if "force_stds" not in f.arrays]
    assert not missing, f"frames without force_stds: {missing}"
    for f in frames:
        assert f.arrays["force_stds"].shape == (32, 3) and np.all(f.arrays["force_stds"] >= 0)

    dft = sorted((out / "dft").glob("frame_*.extxyz"))
    assert len(dft) == len(calls)
    assert [int(p.stem.split("_")[1]) for p in dft] == calls.tolist()
    for p in dft[:3]:
        labelled = read(p)
        np.testing.assert_allclose(labelled.get_forces(), EMT().get_forces(labelled.copy()), atol=1e-6)
    assert len(read(out / "dft_frames.extxyz", index=":")) == len(calls)

    loaded = otfgp.GaussianProcess.load(out / "model.otfgp")
    assert loaded.n_training_structures == len(calls)
    assert loaded.n_training_environments == model.n_training_environments == len(calls)
    assert loaded.hyperparameters == model.hyperparameters
    probe = protocol["atoms"].copy()
    np.testing.assert_allclose(loaded.predict(probe, variance=False).forces,
                               model.predict(probe, variance=False).forces, rtol=0, atol=1e-12)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == SOLID_STEPS + LIQUID_STEPS
    assert summary["dft_calls"] == len(calls) and summary["dft_call_steps"] == calls.tolist()
    assert summary["failed_dft_steps"] == []
    # every DFT frame after the first was predicted before it was learnt; the frames keep that
    # prediction and the summary pools its errors (recomputed here from the frame files)
    errors, latent, reported = [], [], []
    for p in dft[1:]:
        frame = read(p)
        errors.append(frame.arrays["gp_forces"] - frame.get_forces())
        latent.append(frame.arrays["gp_latent_force_stds"])
        reported.append(frame.arrays["gp_force_stds"])
    assert "gp_forces" not in read(dft[0]).arrays  # the seed frame had no model to predict it
    errors, latent, reported = np.concatenate(errors), np.concatenate(latent), np.concatenate(reported)
    cal = summary["pre_update_calibration"]
    assert cal["frames"] == len(calls) - 1 and cal["components"] == errors.size
    assert math.isclose(cal["rmse"], np.sqrt(np.mean(errors ** 2)), rel_tol=1e-6)
    assert math.isclose(cal["mean_squared_z_latent"], np.mean((errors / latent) ** 2), rel_tol=1e-6)
    assert math.isclose(cal["mean_squared_z_reported"], np.mean((errors / reported) ** 2), rel_tol=1e-6)
    assert math.isclose(cal["coverage_1std_latent"], np.mean(np.abs(errors) <= latent), abs_tol=0.01)
    # noise-free EMT labels push sigma_n onto its 5 meV/A floor: the summary says so
    warned = summary["hyperparameter_warnings"]
    assert warned and all(w["step"] in calls for w in warned)
    assert any("noise_force is at its lower bound" in text for w in warned for text in w["warnings"])
    wall = summary["wall_time_s"]
    assert set(wall) == {"dft", "training", "mapping", "prediction", "md", "total"}
    assert all(v >= 0 for v in wall.values())
    assert wall["dft"] > 0 and wall["training"] > 0 and wall["prediction"] > 0 and wall["mapping"] > 0
    assert model.mapped and loaded.mapped  # re-mapped after the last retrain; the file keeps the maps
    # the file also carries the mapped variance (fast uncertainties for users), while the
    # run's own model was left as the decisions used it
    assert loaded.has_variance_maps and not model.has_variance_maps
    mapped = loaded.predict(probe, variance="auto").latent_force_stds
    exact = loaded.predict(probe, variance="exact").latent_force_stds
    assert np.median(np.abs(mapped - exact) / exact) < 0.1
    parts = wall["dft"] + wall["training"] + wall["mapping"] + wall["prediction"] + wall["md"]
    assert parts <= wall["total"] * 1.001
    assert wall["total"] <= protocol["time"] * 1.01 + 0.1
    assert (out / "checkpoint" / "state.json").is_file()


def test_relative_threshold_respects_floor(tmp_path):
    rng = np.random.default_rng(5)
    atoms = jittered_al(rng, jitter=0.01)
    thermalize(atoms, 600, rng)
    model = otfgp.GaussianProcess(["Al"], CUTOFFS)
    otf = otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), model, EMT(), relative_threshold=1.0,
                    min_threshold=0.005, init_atoms=1, output_dir=str(tmp_path))
    assert otf.options.threshold is None  # the absolute default does not apply
    summary = otf.run(25)
    entries = read_log(tmp_path)
    assert [e["step"] for e in entries] == list(range(26))
    thresholds = [e["threshold_eV_per_A"] for e in entries]
    assert all(t is not None for t in thresholds)
    for e in entries:
        expected = max(1.0 * e["hyperparameters"]["noise_force"], 0.005)
        assert e["threshold_eV_per_A"] >= 0.005
        assert math.isclose(e["threshold_eV_per_A"], expected, rel_tol=1e-12)
        if e["step"] > 0 and not e["dft"]:
            assert e["max_std_eV_per_A"] <= e["threshold_eV_per_A"]
    assert 1 <= summary["dft_calls"] <= 26
    print(f"relative threshold: {summary['dft_calls']} calls at {summary['dft_call_steps']}, "
          f"thresholds {min(thresholds):.4g}..{max(thresholds):.4g} eV/A")


@pytest.mark.parametrize("options, name", [
    ({"threshold": 0.01, "relative_threshold": 1.0}, "relative_threshold"),
    ({"threshold": -0.01}, "threshold"),
    ({"threshold": "abc"}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"relative_threshold": 0.0}, "relative_threshold"),
    ({"relative_threshold": -1.0, "min_threshold": 0.005}, "relative_threshold"),
    ({"min_threshold": -1.0}, "min_threshold"),
    ({"max_atoms_added": 0}, "max_atoms_added"),
    ({"on_dft_failure": "ignore"}, "on_dft_failure"),
    ({"thresold": 0.01}, "thresold"),
])
def test_bad_options_raise_value_error(tmp_path, options, name):
    atoms = jittered_al(np.random.default_rng(0), repeat=(1, 1, 1))
    model = otfgp.GaussianProcess(["Al"], CUTOFFS)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=name):
        otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), model, EMT(), output_dir=str(out), **options)
    with pytest.raises(ValueError, match=name):
        otfgp.OTFOptions.from_dict({"output_dir": str(out), **options})
    assert not out.exists(), "a rejected configuration must not create output"


def test_species_the_model_lacks_stop_before_the_first_dft_call(tmp_path):
    """The first labeller call used to run (minutes to hours of DFT) before the model
    refused the frame's unknown species."""
    calls = []

    def labeller(atoms):
        calls.append(1)
        return EMT()

    atoms = jittered_al(np.random.default_rng(0), repeat=(1, 1, 1))
    with pytest.raises(ValueError, match="the structure holds Al, which the model does not know"):
        otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), otfgp.GaussianProcess(["Cu"], CUTOFFS), labeller,
                  output_dir=str(tmp_path / "run"), progress=False)
    assert calls == [] and not list(tmp_path.rglob("frame_*"))


@pytest.mark.parametrize("spec, per_frame", [("emt", False), ({"type": "emt"}, False),
                                             ("otf_labellers_for_test:emt", True)])
def test_labeller_specs_learn_like_a_calculator(tmp_path, monkeypatch, spec, per_frame):
    """A labeller given as a registry specification learns exactly like the calculator it
    names (one EMT for the run, or a new one per frame from the function: EMT's forces
    differ in the last bits between a reused and a fresh instance)."""
    (tmp_path / "otf_labellers_for_test.py").write_text(
        "from ase.calculators.emt import EMT\n\ndef emt(atoms):\n    return EMT()\n")
    monkeypatch.chdir(tmp_path)

    def run(labeller, name):
        rng = np.random.default_rng(4)
        atoms = jittered_al(rng, repeat=(1, 1, 1))
        thermalize(atoms, 600, rng)
        otf = otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), otfgp.GaussianProcess(["Al"], CUTOFFS),
                        labeller, threshold=0.02, output_dir=str(tmp_path / name), progress=False, map=False)
        return otf.run(5)

    by_spec, by_calc = run(spec, "spec"), run((lambda atoms: EMT()) if per_frame else EMT(), "calc")
    assert by_spec["dft_call_steps"] == by_calc["dft_call_steps"]
    assert by_spec["hyperparameters"] == by_calc["hyperparameters"]


def test_audits_label_confident_frames_and_measure_their_error(tmp_path):
    """With a threshold the model never reaches, only the seed frame and the audits are
    labelled; the audits' pre-update errors are pooled separately."""
    rng = np.random.default_rng(6)
    atoms = jittered_al(rng, repeat=(1, 1, 1))
    thermalize(atoms, 300, rng)
    otf = otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), otfgp.GaussianProcess(["Al"], CUTOFFS), EMT(),
                    threshold=10.0, every=2, audit_every=4, output_dir=str(tmp_path / "run"),
                    progress=False, map=False)
    summary = otf.run(9)
    assert summary["dft_call_steps"] == [0, 4, 8] and summary["audit_steps"] == [4, 8]
    audit = summary["audit_calibration"]
    assert audit["frames"] == 2 and audit["components"] == 2 * 4 * 3
    assert summary["pre_update_calibration"] == audit  # every labelled frame after the seed was an audit
    entries = read_log(tmp_path / "run")
    assert [e["step"] for e in entries if e["dft"]] == [0, 4, 8]
    with pytest.raises(ValueError, match="audit_every"):
        otfgp.OTFOptions(audit_every=3, every=2)
