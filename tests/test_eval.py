"""otfgp.evaluate and ``otfgp eval``: a small trained Al model on a few EMT frames."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import write
from otf_helpers import emt_langevin_snapshots, small_al_model

from otfgp import uq_metrics as uq
from otfgp.cli import main
from otfgp.evaluate import EvalReport, evaluate, plot


@pytest.fixture(scope="module")
def model():
    return small_al_model()


@pytest.fixture(scope="module")
def frames():
    return emt_langevin_snapshots(300, 4, seed=3, equilibrate=20, spacing=5)


@pytest.fixture(scope="module")
def report(model, frames):
    return evaluate(model, frames, groups=["a", "a", "b", "b"])


def test_report_matches_a_direct_computation(model, frames, report):
    preds = [model.predict(f, variance="exact") for f in frames]
    err = np.concatenate([p.forces - f.get_forces() for p, f in zip(preds, frames)])
    std = np.concatenate([p.latent_force_stds for p in preds])
    noisy = np.sqrt(std ** 2 + model.hyperparameters["noise_force"] ** 2)
    reported = np.concatenate([p.force_stds for p in preds])  # uncalibrated: latent + noise
    np.testing.assert_allclose(reported, noisy, rtol=1e-12)
    assert report.n_frames == 4 and report.n_atoms == 128 and report.variance == "exact"
    assert report.forces["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-12)
    assert report.forces["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-12)
    assert report.species["Al"]["mae"] == pytest.approx(report.forces["mae"])
    assert report.groups["a"]["mae"] == pytest.approx(np.abs(err[:64]).mean())
    assert report.groups["b"]["n_frames"] == 2 and report.groups["b"]["n_atoms"] == 64
    for kind, s in (("latent", std), ("latent+noise", noisy), ("reported", reported)):
        u = report.uncertainty[kind]
        assert u["nll"] == pytest.approx(uq.gaussian_nll(err, s))
        assert u["mean_z2"] == pytest.approx(uq.mean_squared_z(err, s))
        assert u["coverage_1std"] == pytest.approx(uq.coverage(err, s, 1))
        assert u["coverage_2std"] == pytest.approx(uq.coverage(err, s, 2))
        assert u["miscalibration_area"] == pytest.approx(uq.miscalibration_area(err, s))
        assert u["spearman_atoms"] == pytest.approx(uq.spearman(np.linalg.norm(err, axis=1), s.max(axis=1)))
    atom_err = np.abs(err).max(axis=1)
    assert report.error_threshold == pytest.approx(np.median(atom_err))
    auc = uq.roc_auc(std.max(axis=1), atom_err > np.median(atom_err))
    assert report.uncertainty["latent"]["roc_auc"] == pytest.approx(auc)
    assert report.uncertainty["latent+noise"]["roc_auc"] == pytest.approx(auc)  # noise keeps the order
    # the noise only widens the stds
    assert report.uncertainty["latent+noise"]["mean_z2"] < report.uncertainty["latent"]["mean_z2"]
    e_ref = np.array([f.get_potential_energy() / len(f) for f in frames])
    e_pred = np.array([p.energy / len(f) for p, f in zip(preds, frames)])
    assert report.energy["mae"] == pytest.approx(np.abs(e_pred - e_ref).mean())
    assert report.energy["uncertainty"]["latent"]["mean_z2"] > 0
    text = report.summary()
    assert "miscalibration area" in text and "ROC-AUC" in text and "group a" in text


def test_json_round_trip_and_png(report, tmp_path):
    again = EvalReport.from_json(report.to_json())
    assert again == report
    assert json.loads(report.to_json()) == report.to_dict()
    with_arrays = EvalReport.from_json(report.to_json(arrays=True))
    np.testing.assert_allclose(with_arrays.errors, report.errors)
    png = plot(report, tmp_path / "uq.png")
    assert png.stat().st_size > 10_000
    assert plot(again, tmp_path / "reliability_only.png").stat().st_size > 5_000  # no arrays: one panel


def test_threshold_and_mapped_variance(model, frames):
    r = evaluate(model, frames[:2], error_threshold=10.0)  # no atom that bad: no ROC-AUC
    assert r.uncertainty["latent"]["roc_auc"] is None and r.uncertainty["latent"]["n_positive_atoms"] == 0
    assert r.uncertainty["latent"]["spearman_frames"] is None  # two frames do not rank
    assert r.to_dict()["uncertainty"]["latent"]["roc_auc"] is None
    with pytest.raises(ValueError, match="variance"):
        evaluate(model, frames, variance="sampled")
    mapped = small_al_model()
    mapped.map(tolerance=5e-3)
    m = evaluate(mapped, frames[:3], variance="mapped")
    assert m.variance == "mapped" and 0 < m.uncertainty["latent"]["coverage_2std"] <= 1
    assert m.energy["mae"] > 0 and m.energy["uncertainty"] is None  # mapped: no energy variance
    with pytest.raises(ValueError, match="group labels"):
        evaluate(model, frames, groups=["a"])
    for bad in (0.0, -0.01, float("nan")):
        with pytest.raises(ValueError, match="error_threshold must be a positive"):
            evaluate(model, frames[:2], error_threshold=bad)


def test_frames_without_forces_raise(model, frames):
    bare = frames[0].copy()
    bare.calc = None
    with pytest.raises(ValueError, match="frame 1: no reference forces"):
        evaluate(model, [frames[0], bare])


def test_cli_eval(model, frames, report, tmp_path, capsys):
    model_path = tmp_path / "al.otfgp"
    model.save(model_path)
    f1, f2 = tmp_path / "set1.extxyz", tmp_path / "set2.extxyz"
    for f in frames:  # extxyz stores the calculator's results only once computed
        f.get_forces(), f.get_potential_energy()
    write(f1, frames[:2])
    write(f2, frames[2:])
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    code = main(["-q", "eval", str(model_path), str(f1), str(f2), "--json", str(out_json), "--png", str(out_png)])
    assert code == 0
    assert "miscalibration area" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert set(data["groups"]) == {str(f1), str(f2)}
    assert data["forces"]["mae"] == pytest.approx(report.forces["mae"], rel=1e-6)
    assert data["uncertainty"]["latent"]["coverage_1std"] == pytest.approx(
        report.uncertainty["latent"]["coverage_1std"])
    assert out_png.stat().st_size > 10_000


def test_cli_eval_bad_input_exits_2(model, frames, tmp_path, capsys):
    model_path = tmp_path / "al.otfgp"
    model.save(model_path)
    assert main(["-q", "eval", str(model_path), str(tmp_path / "missing.extxyz")]) == 2
    assert "missing.extxyz" in capsys.readouterr().err
    assert main(["-q", "eval", str(tmp_path / "nomodel.otfgp"), str(model_path)]) == 2
    bare = frames[0].copy()
    bare.calc = None
    write(tmp_path / "bare.extxyz", bare)
    assert main(["-q", "eval", str(model_path), str(tmp_path / "bare.extxyz")]) == 2
    assert "bare.extxyz): no reference forces" in capsys.readouterr().err
    frames[0].get_forces()
    write(tmp_path / "good.extxyz", frames[0])
    assert main(["-q", "eval", str(model_path), str(tmp_path / "good.extxyz"), "--error-threshold", "-1"]) == 2
    assert "error_threshold must be a positive" in capsys.readouterr().err


def test_export_frames_evaluate_their_labelled_atoms_only(model, frames, tmp_path, capsys):
    """An otfgp export holds NaN forces for untrained atoms (force_trained false): those are
    left out, and the result equals the evaluation of the labelled atoms alone."""
    gp = small_al_model(seed=5, frames=2, atoms_per_frame=5)
    gp.save(tmp_path / "other.otfgp")
    assert gp.export_training_data(tmp_path / "export.extxyz") == 2
    model.save(tmp_path / "al.otfgp")
    assert main(["-q", "eval", str(tmp_path / "al.otfgp"), str(tmp_path / "export.extxyz"),
                 "--json", str(tmp_path / "e.json")]) == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "e.json").read_text())
    errors = []
    for i in range(2):
        d = gp.training_structure(i)
        errors.append(model.predict(d["atoms"]).forces[d["force_atoms"]] - d["forces"])
    errors = np.concatenate(errors)
    assert data["forces"]["n_atoms"] == len(errors) == 10
    assert data["forces"]["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-6)


def test_empty_and_non_finite_frames_are_named(model, frames):
    empty = frames[0][[]]
    with pytest.raises(ValueError, match="frame 1: the frame has no atoms"):
        evaluate(model, [frames[0], empty])
    bad = frames[0].copy()
    f = frames[0].get_forces().copy()
    f[5, 1] = np.nan
    from ase.calculators.singlepoint import SinglePointCalculator
    bad.calc = SinglePointCalculator(bad, forces=f)
    with pytest.raises(ValueError, match="frame 0: the reference force of atom 5 is not finite"):
        evaluate(model, [bad])


def test_cli_eval_refuses_outputs_before_the_work(model, frames, tmp_path, capsys):
    model.save(tmp_path / "al.otfgp")
    frames[0].get_forces()
    write(tmp_path / "f.extxyz", frames[0])
    before = (tmp_path / "f.extxyz").read_bytes()
    assert main(["-q", "eval", str(tmp_path / "al.otfgp"), str(tmp_path / "f.extxyz"),
                 "--json", str(tmp_path / "f.extxyz")]) == 2
    assert "--json" in capsys.readouterr().err and (tmp_path / "f.extxyz").read_bytes() == before
    assert main(["-q", "eval", str(tmp_path / "al.otfgp"), str(tmp_path / "f.extxyz"),
                 "--json", str(tmp_path / "nodir" / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "does not exist" in err
    assert main(["-q", "eval", str(tmp_path / "al.otfgp"), str(tmp_path / "f.extxyz"),
                 "--png", str(tmp_path / "plotfile")]) == 0
    assert str(tmp_path / "plotfile") in capsys.readouterr().out
    assert (tmp_path / "plotfile").read_bytes()[:4] == b"\x89PNG"


def test_cli_reads_a_scalable_model(frames, tmp_path, capsys):
    """``otfgp eval`` and ``otfgp plot --test`` read the scalable model file that ``otfgp
    train --kind scalable`` (or an OTF run that switched) writes: they refused it as "not an
    otfgp model file"; ``map`` and ``export`` say why they do not apply to it."""
    import otfgp

    scalable = otfgp.ScalableGP(["Al"], {"twobody": 4.5, "threebody": 3.2}, lower=1.8)
    for f in frames[:2]:
        scalable.add_training_data(f)
    scalable.train(optimize=False)
    run = tmp_path / "run"
    run.mkdir()
    scalable.save(run / "model.otfgp")
    log = [{"step": i, "time_fs": 5.0 * i, "temperature_K": 300.0, "dft": i == 0, "training_environments": 64,
            "hyperparameters": scalable.hyperparameters, "threshold_eV_per_A": 0.05, "max_std_eV_per_A": 0.01}
           for i in range(2)]  # what plot's run plots need of an OTF run's log
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    test = tmp_path / "test.extxyz"
    for f in frames:  # extxyz stores the calculator's results only once computed
        f.get_forces(), f.get_potential_energy()
    write(test, frames[2:])
    out_json = tmp_path / "eval.json"
    assert main(["-q", "eval", str(run / "model.otfgp"), str(test), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["forces"]["mae"] == pytest.approx(
        evaluate(scalable, frames[2:]).forces["mae"], rel=1e-6)  # the JSON keeps 7 digits
    assert main(["-q", "plot", str(run), "--test", str(test)]) == 0
    assert (run / "parity.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["-q", "map", str(run / "model.otfgp"), "-o", str(tmp_path / "m.otfgp")]) == 2
    assert "mapped by construction" in capsys.readouterr().err
    assert main(["-q", "export", str(run / "model.otfgp"), "-o", str(tmp_path / "x.extxyz")]) == 2
    assert "keeps no training structures" in capsys.readouterr().err


def test_calibration_and_test_plots_name_unusable_reference_frames(model, frames):
    """``calibrate(frames=...)`` and ``otfgp plot --test`` read reference forces like
    ``evaluate``: a frame without them, or with a NaN one, is named (they gave ASE's "no
    calculator", matplotlib's "Axis limits cannot be NaN", or dropped the NaN silently)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from otfgp.plots import predict_test_set

    bare = frames[0].copy()  # no calculator
    nan = frames[1].copy()
    forces = frames[1].get_forces().copy()
    forces[3, 1] = np.nan
    nan.calc = SinglePointCalculator(nan, forces=forces)
    for frame, match in ((bare, "frame 1: no reference forces"), (nan, "frame 1: the reference force of atom 3")):
        with pytest.raises(ValueError, match="calibration " + match):
            model.copy().calibrate(frames=[frames[2], frame], loo=False)
        with pytest.raises(ValueError, match="test " + match):
            predict_test_set(model, [frames[2], frame])
