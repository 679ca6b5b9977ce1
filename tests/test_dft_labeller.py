"""On-the-fly learning with real Quantum ESPRESSO labels, and what happens when pw.x fails.

Needs pw.x and the Al pseudopotential (Debian: quantum-espresso, quantum-espresso-data; CI
installs both). 4-atom Al cells cost about 1-2 s per pw.x call.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.calculators.espresso import Espresso, EspressoProfile
from ase.io import read
from ase.md.verlet import VelocityVerlet

import otfgp
from otfgp.labellers import espresso_al_calculator
from otfgp.labellers.espresso import DEFAULT_RESTART_DISPLACEMENT
from otf_helpers import CUTOFFS, jittered_al, read_log, thermalize

PSEUDO_DIR = "/usr/share/espresso/pseudo"
needs_pw = pytest.mark.skipif(
    shutil.which("pw.x") is None,
    reason="Quantum ESPRESSO pw.x not on PATH (apt-get install quantum-espresso quantum-espresso-data)")


def _hand_built_espresso(directory: Path, command: str = "pw.x", electrons: dict | None = None) -> Espresso:
    """An Espresso calculator built directly with ASE (the settings of espresso_al_calculator)."""
    input_data = {
        "control": {"tprnfor": True, "tstress": True, "disk_io": "none"},
        "system": {"ecutwfc": 15.0, "occupations": "smearing", "smearing": "mv", "degauss": 0.1},
        "electrons": {"conv_thr": 1e-6, **(electrons or {})},
    }
    return Espresso(profile=EspressoProfile(command=command, pseudo_dir=PSEUDO_DIR), directory=str(directory),
                    input_data=input_data, pseudopotentials={"Al": "Al.pz-vbc.UPF"}, kpts=(4, 4, 4),
                    koffset=(1, 1, 1))


def _good_then(bad_factory, tmp_path: Path):
    """Callable labeller: a working pw.x calculator for the first frame, ``bad_factory(i)`` after."""
    calls = []

    def labeller(atoms):
        calls.append(len(atoms))
        if len(calls) == 1:
            return espresso_al_calculator(tmp_path / "qe_good")
        return bad_factory(len(calls))

    labeller.calls = calls
    return labeller


def _al4_dynamics(seed: int = 4) -> VelocityVerlet:
    rng = np.random.default_rng(seed)
    atoms = jittered_al(rng, repeat=(1, 1, 1), jitter=0.01)
    thermalize(atoms, 300, rng)
    return VelocityVerlet(atoms, 5 * units.fs)


@needs_pw
def test_otf_with_quantum_espresso(tmp_path):
    out = tmp_path / "run"
    model = otfgp.GaussianProcess(["Al"], CUTOFFS)
    # threshold 0.02 eV/A: the seeded model becomes unsure after about 5 steps (measured:
    # calls at steps 0, 5, 6)
    otf = otfgp.OTF(_al4_dynamics(), model, espresso_al_calculator(tmp_path / "qe"), threshold=0.02,
                    output_dir=str(out))
    summary = otf.run(8)
    calls = summary["dft_call_steps"]
    wall = summary["wall_time_s"]
    per_call = wall["dft"] / len(calls)
    print(f"\nQE OTF: calls at {calls}, {per_call:.2f} s per pw.x call, wall-time split {wall}")
    assert summary["steps"] == 8
    assert calls[0] == 0 and 2 <= len(calls) <= 4, calls
    assert summary["failed_dft_steps"] == []
    # pw.x really ran (its own record of every call is checked below); how long it took is
    # a benchmark's business, not a test's (52 s per call was seen on a loaded machine)
    assert per_call > 0.0

    assert model.trained and model.n_training_structures == len(calls)
    assert model.n_training_environments == 4 + (len(calls) - 1)
    for step in calls:
        frame = read(out / "dft" / f"frame_{step:07d}.extxyz")
        forces, energy = frame.get_forces(), frame.get_potential_energy()
        assert forces.shape == (4, 3) and np.all(np.isfinite(forces)) and np.isfinite(energy)
        assert -58.0 < energy / 4 < -56.0  # LDA Al with this pseudopotential: ~ -56.95 eV/atom
        np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-4)
        assert 0.01 < np.abs(forces).max() < 2.0
    # the model reproduces the labels it was trained on (all 4 atoms of the seed frame)
    seed = read(out / "dft" / "frame_0000000.extxyz")
    fit = model.predict(seed, variance=False).forces
    assert np.abs(fit - seed.get_forces()).max() < 0.01
    entries = read_log(out)
    assert [e["step"] for e in entries] == list(range(9))
    assert [e["step"] for e in entries if e["dft"]] == calls
    assert otfgp.GaussianProcess.load(out / "model.otfgp").n_training_structures == len(calls)
    # every pw.x call is recorded: from scratch or from the previous frame, SCF iterations
    records = [json.loads(line) for line in (tmp_path / "qe" / "pw_calls.jsonl").read_text().splitlines()]
    print(f"pw.x calls: {records}")
    assert len(records) == len(calls) and records[0]["restart"] is False
    assert all(isinstance(r["scf_iterations"], int) and r["scf_iterations"] > 0 for r in records)
    for r in records[1:]:  # the default rule (0: off)
        limit = DEFAULT_RESTART_DISPLACEMENT
        assert r["restart"] == (limit > 0 and r["max_displacement_A"] is not None and r["max_displacement_A"] <= limit)


def test_missing_pw_x_is_reported_up_front(tmp_path):
    with pytest.raises(FileNotFoundError, match="pw.x-does-not-exist"):
        espresso_al_calculator(tmp_path / "qe", command="pw.x-does-not-exist")
    assert not (tmp_path / "qe" / "espresso.pwi").exists()


@needs_pw
def test_missing_pseudopotential_is_reported_up_front(tmp_path):
    with pytest.raises(FileNotFoundError, match="Al.pz-vbc.UPF"):
        espresso_al_calculator(tmp_path / "qe", pseudo_dir=tmp_path)


@needs_pw
def test_nonexistent_program_raises_labeller_error_and_keeps_checkpoint(tmp_path):
    out = tmp_path / "run"
    labeller = _good_then(lambda i: _hand_built_espresso(tmp_path / f"qe_bad{i}", command="/nonexistent/pw.x"),
                          tmp_path)
    model = otfgp.GaussianProcess(["Al"], CUTOFFS)
    otf = otfgp.OTF(_al4_dynamics(), model, labeller, threshold=1e-6, output_dir=str(out))
    with pytest.raises(otfgp.LabellerError) as info:
        otf.run(5)
    message = str(info.value)
    print(f"\nLabellerError: {message}")
    assert "step 1" in message
    assert "/nonexistent/pw.x" in message and "No such file" in message
    assert len(labeller.calls) == 2
    # what was learnt before the failure is on disk and loadable
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["dft_calls"] == [0] and state["failed_calls"] == [1] and state["step"] == 1
    saved = otfgp.GaussianProcess.load(out / "checkpoint" / state["model"])
    assert saved.trained and saved.n_training_structures == 1 and saved.n_training_environments == 4
    assert (out / "dft" / "frame_0000000.extxyz").is_file()
    assert not (out / "dft" / "frame_0000001.extxyz").exists()
    assert [e["step"] for e in read_log(out)] == [0]


@needs_pw
def test_unconverged_scf_raises_labeller_error(tmp_path):
    out = tmp_path / "run"
    labeller = _good_then(lambda i: _hand_built_espresso(
        tmp_path / f"qe_unconverged{i}", electrons={"electron_maxstep": 1, "conv_thr": 1e-12}), tmp_path)
    otf = otfgp.OTF(_al4_dynamics(), otfgp.GaussianProcess(["Al"], CUTOFFS), labeller, threshold=1e-6,
                    output_dir=str(out))
    with pytest.raises(otfgp.LabellerError) as info:
        otf.run(3)
    message = str(info.value)
    print(f"\nLabellerError: {message}")
    assert "step 1" in message
    assert "CalledProcessError" in message and "exit status 2" in message and "pw.x" in message
    assert "convergence NOT achieved" in (tmp_path / "qe_unconverged2" / "espresso.pwo").read_text()
    assert "convergence NOT achieved" in message  # the program's own verdict is in the error
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["dft_calls"] == [0] and state["failed_calls"] == [1]
    assert state["learned"] is False  # a resume retries the failed step


@needs_pw
def test_unconverged_scf_skipped_when_asked(tmp_path):
    out = tmp_path / "run"
    labeller = _good_then(lambda i: _hand_built_espresso(
        tmp_path / f"qe_unconverged{i}", electrons={"electron_maxstep": 1, "conv_thr": 1e-12}), tmp_path)
    model = otfgp.GaussianProcess(["Al"], CUTOFFS)
    otf = otfgp.OTF(_al4_dynamics(), model, labeller, threshold=1e-6, on_dft_failure="skip",
                    output_dir=str(out))
    summary = otf.run(2)
    assert summary["steps"] == 2
    assert summary["dft_call_steps"] == [0]
    assert summary["failed_dft_steps"] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["failed_dft_steps"] == [1, 2]
    assert len(labeller.calls) == 3
    assert model.n_training_structures == 1
    entries = read_log(out)
    assert [e["step"] for e in entries] == [0, 1, 2]
    assert [e["dft"] for e in entries] == [True, False, False]
    assert all(e["max_std_eV_per_A"] > 1e-6 for e in entries[1:])  # DFT was wanted, and failed
    assert sorted(p.name for p in (out / "dft").glob("frame_*.extxyz")) == ["frame_0000000.extxyz"]
