"""Offline training (``otfgp train``) from files ASE reads, uncertainty selection, and the
training-data export that keeps partial force labels (``otfgp export``)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

import otfgp
from otfgp.cli import main
from otfgp.learning import choose_atoms
from otfgp.train import TrainOptions, fit, known_train_keys

OTFGP = str(Path(sys.executable).parent / "otfgp")
DOC = Path(__file__).resolve().parent.parent / "docs" / "training.md"
HYP = {"sigma2": 0.1, "ell2": 1.0, "sigma3": 0.01, "ell3": 0.8, "noise_force": 0.01,
       "noise_energy": 0.01, "noise_stress": 0.001}


def _frames(n: int, seed: int = 0, repeat=(1, 1, 1), amplitude: float = 0.1, rounded: bool = False):
    """EMT-labelled jittered fcc Al cells (labels computed here, attached as single points)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Al", "fcc", a=4.05, cubic=True).repeat(repeat)
        a.positions += rng.uniform(-amplitude, amplitude, a.positions.shape)
        if rounded:  # exactly representable in extxyz's 8 decimals
            a.positions = np.round(a.positions, 8)
        a.calc = EMT()
        f, e, s = a.get_forces(), a.get_potential_energy(), a.get_stress()
        if rounded:
            f = np.round(f, 8)
        a.calc = SinglePointCalculator(a, forces=f, energy=e, stress=s)
        out.append(a)
    return out


def _run(args, cwd):
    return subprocess.run([OTFGP, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------ files ASE reads
def test_train_from_extxyz_on_the_command_line(tmp_path):
    write(tmp_path / "frames.extxyz", _frames(4))
    out = _run(["train", "--data", "frames.extxyz", "--twobody", "5", "--threebody", "3.5",
                "-o", "al.otfgp"], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "al_summary.json").read_text())
    assert summary["frames_read"] == summary["frames_used"] == 4
    assert summary["training_environments"] == 16 and summary["energies"] == 4 and summary["stresses"] == 4
    assert summary["training_labels"] == 16 * 3 + 4 + 4 * 6
    assert summary["model"] == {"species": ["Al"], "cutoffs": {"twobody": 5.0, "threebody": 3.5}}
    assert summary["mapped"] and summary["optimization"]["iterations"] > 0
    gp = otfgp.GaussianProcess.load(tmp_path / "al.otfgp")
    assert gp.trained and gp.mapped and gp.n_training_environments == 16
    assert gp.hyperparameters == pytest.approx(summary["hyperparameters"], rel=1e-12)
    test = _frames(1, seed=9)[0]
    err = np.abs(gp.predict(test).forces - test.get_forces()).mean()
    assert err < 0.05, err  # it learnt something
    assert "16 force environments" in out.stdout


def test_train_config_from_ase_db_forces_only(tmp_path, capsys):
    from ase.db import connect

    with connect(tmp_path / "data.db") as db:
        for a in _frames(3, seed=1):
            db.write(a)
    (tmp_path / "train.toml").write_text(
        '[model]\ntwobody = 5.0\nthreebody = 3.5\nhyperparameters = {noise_force = 0.02}\n'
        '[data]\nfiles = ["data.db"]\n'
        '[train]\nlabels = ["forces"]\noptimize = false\nmap = false\noutput = "out/m.otfgp"\n')
    (tmp_path / "out").mkdir()
    code = main(["train", str(tmp_path / "train.toml"), "-o", str(tmp_path / "out" / "m.otfgp")])
    assert code == 0, capsys.readouterr()
    gp = otfgp.GaussianProcess.load(tmp_path / "out" / "m.otfgp")
    assert gp.n_training_environments == 12 and gp.n_labels == 36  # no energies, no stresses
    assert gp.hyperparameters["noise_force"] == 0.02 and not gp.mapped
    summary = json.loads((tmp_path / "out" / "m_summary.json").read_text())
    assert summary["energies"] == 0 and summary["optimization"] is None
    # not trained on, the frames' energies still set the energy reference (as on-the-fly
    # learning does): least squares on one species leaves no mean error on them
    assert set(summary["energy_reference"]) == {"Al"} and summary["energy_reference"] == gp.energy_offsets
    errors = [gp.predict(a, variance=False).energy - a.get_potential_energy() for a in _frames(3, seed=1)]
    assert abs(np.mean(errors)) < 1e-9, errors
    assert "energy reference (from frame energies not trained on): Al" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("pw.x") is None, reason="Quantum ESPRESSO pw.x not installed")
def test_train_from_quantum_espresso_output(tmp_path):
    from otfgp.labellers import espresso_calculator

    outputs = []
    for k, a in enumerate(_frames(2, seed=3, amplitude=0.08)):  # 4-atom cells, about 1 s each
        a.calc = espresso_calculator(tmp_path / f"pw{k}", kpts=(2, 2, 2), ecutwfc=12.0)
        a.get_forces()
        outputs += list((tmp_path / f"pw{k}").glob("*.pwo"))
    assert len(outputs) == 2
    out = _run(["train", "--data", *map(str, outputs), "--twobody", "5", "-o", "qe.otfgp", "--no-map"], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "qe_summary.json").read_text())
    assert summary["training_environments"] == 8 and summary["energies"] == 2 and summary["stresses"] == 2
    qe = read(outputs[0])
    gp = otfgp.GaussianProcess.load(tmp_path / "qe.otfgp")
    # the QE total energy (about -57 eV/atom for this pseudopotential) went into the offsets
    assert gp.energy_offsets["Al"] == pytest.approx(qe.get_potential_energy() / 4, abs=1.0)


# ------------------------------------------------------------------ selection by uncertainty
def test_select_by_uncertainty_is_the_learners_choice():
    frames = [("f", i, a) for i, a in enumerate(_frames(3, seed=4, repeat=(2, 1, 1)))]
    options = TrainOptions(select="uncertainty", atoms_per_frame=3, init_atoms=2, optimize=False, map=False)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5}, hyperparameters=HYP)
    summary = fit(gp, frames, options)
    assert summary["training_environments"] == 2 + 3 + 3
    # replay: frame 0's random atoms, then each frame's 3 most uncertain under the model so far
    replay = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5}, hyperparameters=HYP)
    first = np.sort(np.random.default_rng(0).choice(8, 2, replace=False))
    replay.add_training_data(frames[0][2], energy=True, stress=True, atom_indices=first)
    replay.train(optimize=False)
    for _, _, a in frames[1:]:
        stds = replay.predict(a, variance="exact").epistemic_force_stds.max(axis=1)
        replay.add_training_data(a, energy=True, stress=True, atom_indices=choose_atoms(stds, -np.inf, 3))
        replay.train(optimize=False)
    np.testing.assert_array_equal(gp.core.labels, replay.core.labels)
    for i in range(3):
        np.testing.assert_array_equal(gp.training_structure(i)["force_atoms"],
                                      replay.training_structure(i)["force_atoms"])


def test_std_threshold_skips_confident_frames():
    frames = [("f", i, a) for i, a in enumerate(_frames(3, seed=5, repeat=(2, 1, 1), amplitude=0.02))]
    options = TrainOptions(select="uncertainty", std_threshold=10.0, init_atoms=0, optimize=False, map=False)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, hyperparameters=HYP)
    summary = fit(gp, frames, options)
    assert summary["frames_used"] == 1 and summary["frames_skipped_confident"] == 2
    assert summary["training_environments"] == 8


# ------------------------------------------------------------------ export and round trip
def _partially_labelled_model(rounded: bool) -> otfgp.GaussianProcess:
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5}, hyperparameters=HYP)
    frames = _frames(4, seed=6, repeat=(2, 1, 1), rounded=rounded)
    gp.add_training_data(frames[0], energy=True)                                  # all atoms
    gp.add_training_data(frames[1], atom_indices=[1, 4, 6])                       # some atoms only
    gp.add_training_data(frames[2], atom_indices=[0, 7], energy=True, stress=True)
    gp.add_training_data(frames[3], forces=False, energy=True)                    # energy only
    gp.train(optimize=False)
    return gp


def test_export_keeps_partial_force_labels(tmp_path):
    gp = _partially_labelled_model(rounded=False)
    assert gp.export_training_data(tmp_path / "data.extxyz") == 4
    back = read(tmp_path / "data.extxyz", index=":")
    masks = [b.arrays["force_trained"] for b in back]
    assert [np.flatnonzero(m).tolist() for m in masks] == [list(range(8)), [1, 4, 6], [0, 7], []]
    assert np.all(np.isnan(back[1].get_forces()[~masks[1]]))  # unknown, not zero
    np.testing.assert_allclose(back[1].get_forces()[masks[1]], gp.training_structure(1)["forces"], atol=1e-8)
    assert [("energy" in b.calc.results, "stress" in b.calc.results) for b in back] == \
        [(True, False), (False, False), (True, True), (True, False)]
    assert "forces" not in back[3].calc.results


@pytest.mark.parametrize("rounded", [True, False])
def test_export_then_train_recreates_the_training_set(tmp_path, rounded, capsys):
    gp = _partially_labelled_model(rounded)
    gp.save(tmp_path / "orig.otfgp")
    assert main(["export", str(tmp_path / "orig.otfgp"), "-o", str(tmp_path / "data.extxyz")]) == 0
    hyp = "{" + ", ".join(f"{k} = {v!r}" for k, v in HYP.items()) + "}"
    (tmp_path / "train.toml").write_text(
        "[model]\nspecies = ['Al']\ntwobody = 5.0\nthreebody = 3.5\n"
        f"hyperparameters = {hyp}\n"
        "[data]\nfiles = ['data.extxyz']\n[train]\noptimize = false\nmap = false\n")
    assert main(["train", str(tmp_path / "train.toml"), "-o", str(tmp_path / "new.otfgp")]) == 0, \
        capsys.readouterr()
    new = otfgp.GaussianProcess.load(tmp_path / "new.otfgp")
    assert new.n_training_structures == 4 and new.n_labels == gp.n_labels
    np.testing.assert_array_equal(new.core.row_kinds, gp.core.row_kinds)
    for i in range(4):
        np.testing.assert_array_equal(new.training_structure(i)["force_atoms"], gp.training_structure(i)["force_atoms"])
    # extxyz keeps positions and forces to 8 decimals: exact when the data have no more
    tol = 1e-10 if rounded else 1e-8
    np.testing.assert_allclose(new.core.labels, gp.core.labels, rtol=0, atol=tol)
    test = _frames(1, seed=8, repeat=(2, 1, 1))[0]
    p, q = gp.predict(test, variance="exact"), new.predict(test, variance="exact")
    np.testing.assert_allclose(q.forces, p.forces, rtol=0, atol=tol if rounded else 1e-6)
    np.testing.assert_allclose(q.energy, p.energy, rtol=0, atol=tol if rounded else 1e-6)
    np.testing.assert_allclose(q.force_stds, p.force_stds, rtol=0, atol=tol if rounded else 1e-6)


def test_export_of_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _partially_labelled_model(rounded=False).save(run / "model.otfgp")
    assert main(["export", str(run), "-o", str(tmp_path / "d.extxyz")]) == 0
    assert len(read(tmp_path / "d.extxyz", index=":")) == 4
    assert main(["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "e.extxyz")]) == 2
    assert "no such model file" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("config,expected", [
    ("[model]\ntwobody = 5.0\n[data]\nfiles = ['missing.extxyz']\n", "missing.extxyz not found"),
    ("[model]\ntwobody = 5.0\n[data]\nfiles = ['f.extxyz']\n[train]\natoms_per_fram = 3\n", "atoms_per_fram"),
    ("[model]\ntwobody = 5.0\n[data]\nfiles = ['f.extxyz']\n[train]\natoms_per_frame = 3\n", "uncertainty"),
    ("[model]\ntwobody = 5.0\n[data]\nfiles = ['f.extxyz']\n[train]\nlabels = ['force']\n", "labels"),
    ("[model]\ntwobody = 5.0\n[data]\nfiles = ['plain.xyz']\n", "no frame has any of the labels"),
    ("[model]\nspecies = ['Cu']\ntwobody = 5.0\n[data]\nfiles = ['f.extxyz']\n", "unknown species Al"),
    ("[model]\ntwobody = 5.0\n[data]\nfiles = ['garbage.extxyz']\n", "cannot read frames"),
    ("[modell]\n[data]\nfiles = ['f.extxyz']\n", "modell"),
])
def test_bad_train_input_exits_2_naming_the_problem(tmp_path, capsys, config, expected):
    write(tmp_path / "f.extxyz", _frames(1))
    plain = bulk("Al", "fcc", a=4.05, cubic=True)
    write(tmp_path / "plain.xyz", plain, format="xyz")
    (tmp_path / "garbage.extxyz").write_text("not\na frame\n")
    (tmp_path / "t.toml").write_text(config)
    assert main(["train", str(tmp_path / "t.toml"), "-o", str(tmp_path / "m.otfgp")]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not (tmp_path / "m.otfgp").exists()


def test_doc_lists_every_train_key():
    """docs/training.md has one table row per key of every train-config section."""
    text = DOC.read_text()
    for section, keys in known_train_keys().items():
        if section in ("config", "model"):
            continue
        block = text.split(f"## [{section}]", 1)[1].split("\n## ", 1)[0]
        documented = {line.split("`")[1] for line in block.splitlines() if line.startswith("| `")}
        assert documented == set(keys), (section, sorted(set(keys) ^ documented))


@pytest.mark.parametrize("args,expected", [
    (["--data", "f.extxyz", "-o", "f.extxyz"], "train.output (-o): f.extxyz is also a data file"),
    (["--data", "f.extxyz", "-o", "m.otfgp", "--summary", "m.otfgp"], "m.otfgp is also the model output"),
    (["--data", "f.extxyz", "-o", "nodir/m.otfgp"], "directory nodir does not exist"),
    (["--data", "f.extxyz", "-o", "m.otfgp", "--summary", "nodir/s.json"], "directory nodir does not exist"),
    (["--data", "f.extxyz", "-o", "adir"], "adir is a directory"),
])
def test_train_refuses_outputs_before_the_work(tmp_path, args, expected, capsys, monkeypatch):
    """An output that would replace the data or the other output, or that cannot be
    written, stops the command before training (it used to replace the labelled frames,
    or fail with a traceback once the work was done)."""
    write(tmp_path / "f.extxyz", _frames(1))
    (tmp_path / "adir").mkdir()
    before = (tmp_path / "f.extxyz").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args, "--twobody", "4", "--no-optimize", "--no-map"]) == 2
    assert expected in capsys.readouterr().err
    assert (tmp_path / "f.extxyz").read_bytes() == before and not (tmp_path / "m.otfgp").exists()


def test_export_and_map_refuse_bad_outputs(tmp_path, capsys):
    gp = _partially_labelled_model(rounded=False)
    gp.save(tmp_path / "m.otfgp")
    before = (tmp_path / "m.otfgp").read_bytes()
    assert main(["export", str(tmp_path / "m.otfgp"), "-o", str(tmp_path / "m.otfgp")]) == 2
    assert "is also the model" in capsys.readouterr().err
    assert (tmp_path / "m.otfgp").read_bytes() == before
    assert main(["map", str(tmp_path / "m.otfgp"), "-o", str(tmp_path / "nodir" / "x.otfgp")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for option, value, expected in (("--grid2", "1", "grid2 must be an integer >= 4"),
                                    ("--grid2", "0", "grid2 must be an integer >= 4"),
                                    ("--grid3", "100000", "grid3 must be at most"),
                                    ("--tolerance", "-1", "tolerance must be a positive number")):
        assert main(["map", str(tmp_path / "m.otfgp"), "-o", str(tmp_path / "x.otfgp"), option, value]) == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "x.otfgp").exists()


def test_repeated_frames_are_warned_about(tmp_path, caplog):
    """A frame given twice counts its labels twice (the GP takes them for independent
    measurements and grows overconfident): read_frames names the repeats."""
    import logging

    from otfgp.train import read_frames

    frames = _frames(2)
    write(tmp_path / "a.extxyz", frames)
    write(tmp_path / "b.extxyz", frames[1:])
    with caplog.at_level(logging.WARNING, logger="otfgp.train"):
        read_frames({"files": [str(tmp_path / "a.extxyz")]})
    assert "repeat" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="otfgp.train"):
        read_frames({"files": [str(tmp_path / "a.extxyz"), str(tmp_path / "b.extxyz")]})
    assert f"1 frame(s) repeat an earlier frame exactly ({tmp_path / 'b.extxyz'}:0 repeats " \
           f"{tmp_path / 'a.extxyz'}:1)" in caplog.text
