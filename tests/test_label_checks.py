"""Label sanity checks (otfgp.label_checks): each check with hand-made numbers, the options,
and the ASE learner with a labeller that turns absurd (issue 12, point 1): it stops with
LabelRejected naming labeller, step and check, quarantines the frame, trains nothing of it,
and a resume with an honest labeller goes on."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read
from ase.md.verlet import VelocityVerlet

import otfgp
from otfgp.label_checks import (EnergyRange, LabelChecks, LabelRejected, check_energy_cap, check_energy_jump,
                                check_force_cap, check_stress_cap, check_z_score, labeller_name)
from otfgp.learning import LabellerError, LearningOptions, label
from otf_helpers import CUTOFFS, jittered_al, thermalize


# ---------------------------------------------------------------------- the check functions
def test_force_cap():
    f = np.zeros((4, 3))
    f[2, 1] = -49.9
    assert check_force_cap(f, 50.0) is None
    f[3, 0] = 1e6
    v = check_force_cap(f, 50.0)
    assert v.option == "label_max_force" and v.details["atom"] == 3 and v.details["axis"] == "x"
    assert "1e+06 eV/A" in v.found and "atom 3" in v.found and "cap 50 eV/A" in v.limit
    assert check_force_cap(-f, 50.0).details["force"] == -1e6  # the magnitude counts
    assert check_force_cap(f, None) is None and check_force_cap(f, math.inf) is None


def test_energy_cap():
    assert check_energy_cap(-3.5 * 32, 32, 1e6) is None
    v = check_energy_cap(-1e9 * 32, 32, 1e6)
    assert v.option == "label_max_energy_per_atom" and v.details["energy_per_atom"] == pytest.approx(-1e9)
    assert check_energy_cap(None, 32, 1e6) is None  # no energy label: nothing to check
    assert check_energy_cap(1e30, 32, None) is None


def test_stress_cap_in_gpa():
    s = np.zeros(6)
    s[4] = -999.0 * units.GPa  # xz
    assert check_stress_cap(s, 1000.0) is None
    s[1] = 1001.0 * units.GPa
    v = check_stress_cap(s, 1000.0)
    assert v.option == "label_max_stress" and v.details["component"] == "yy"
    assert v.details["stress_GPa"] == pytest.approx(1001.0) and "1001 GPa" in v.found and "eV/A^3" in v.limit
    full = np.zeros((3, 3))
    full[0, 1] = full[1, 0] = -2000.0 * units.GPa  # a 3x3 stress: xy
    assert check_stress_cap(full, 1000.0).details == {"component": "xy", "stress_GPa": pytest.approx(-2000.0),
                                                      "cap_GPa": 1000.0}
    assert check_stress_cap(None, 1000.0) is None  # no stress label: nothing to check
    assert check_stress_cap(s, None) is None and check_stress_cap(s, math.inf) is None


def test_stress_in_gpa_returned_as_ev_per_a3_is_rejected(tmp_path):
    """A labeller that returns its stress in GPa (ASE wants eV/A^3): a 10 % compressed Al cell
    (EMT: -14.7 GPa) then reads as -2360 GPa and is rejected; the honest stress passes."""
    from ase.build import bulk

    frame = bulk("Al", "fcc", a=4.05 * 0.9, cubic=True)
    frame.calc = EMT()
    honest = {"energy": frame.get_potential_energy(), "forces": frame.get_forces(), "stress": frame.get_stress()}
    assert -30 < honest["stress"][0] / units.GPa < -10
    frame.calc = None
    checks = LabelChecks(LearningOptions(), "gpa_labeller", tmp_path)
    accepted = label(frame, lambda atoms: honest, stress=None, checks=checks, step=1)
    assert np.allclose(accepted.get_stress(), honest["stress"])
    in_gpa = {**honest, "stress": honest["stress"] / units.GPa}
    with pytest.raises(LabelRejected, match="option label_max_stress") as err:
        label(frame, lambda atoms: in_gpa, stress=None, checks=checks, step=2)
    assert "stress xx = -" in str(err.value) and (tmp_path / "quarantine" / "frame_0000002.traj").exists()


def test_energy_jump_against_the_running_range():
    seen = EnergyRange(-3.60, -3.40, count=3)
    assert check_energy_jump(-3.50, seen, 1.0) is None  # inside
    assert check_energy_jump(-2.41, seen, 1.0) is None  # 0.99 above the highest
    assert check_energy_jump(-4.59, seen, 1.0) is None
    v = check_energy_jump(-2.30, seen, 1.0)
    assert v.option == "label_energy_jump" and "1.1 eV/atom outside" in v.found and "3 earlier" in v.found
    assert check_energy_jump(-5.0, seen, 1.0).details["low"] == -3.60
    assert check_energy_jump(100.0, None, 1.0) is None  # no earlier label of this composition
    assert check_energy_jump(None, seen, 1.0) is None
    assert check_energy_jump(100.0, seen, math.inf) is None
    seen.add(-3.0)
    assert (seen.low, seen.high, seen.count) == (-3.60, -3.0, 4)


def test_z_score_needs_a_large_z_and_a_large_error():
    forces = np.zeros((3, 3))
    predicted = np.zeros((3, 3))
    stds = np.full((3, 3), 0.01)
    assert check_z_score(forces, predicted, stds, 50.0, 1.0) is None
    forces[1, 2] = 0.8  # z = 80 but only 0.8 eV/A off: an overconfident model, not absurd labels
    assert check_z_score(forces, predicted, stds, 50.0, 1.0) is None
    stds[0, 0] = 1.0
    forces[0, 0] = 40.0  # 40 eV/A off but z = 40: within the model's own (wide) distribution
    assert check_z_score(forces, predicted, stds, 50.0, 1.0) is None
    forces[2, 0] = -1.5  # z = 150 and 1.5 eV/A off
    v = check_z_score(forces, predicted, stds, 50.0, 1.0)
    assert v.option == "label_max_z" and (v.details["atom"], v.details["axis"]) == (2, "x")
    assert v.details["z"] == pytest.approx(150.0) and "z = 150" in v.found
    assert check_z_score(forces, None, stds, 50.0, 1.0) is None  # no prediction (seed frame)
    assert check_z_score(forces, predicted, stds, None, 1.0) is None
    assert check_z_score(forces, predicted, stds, 50.0, 2.0) is None
    zero = np.zeros((3, 3))
    assert check_z_score(forces, predicted, zero, 50.0, 1.0).details["z"] == math.inf


@pytest.mark.parametrize("name", ["label_max_force", "label_max_energy_per_atom", "label_max_stress",
                                  "label_energy_jump", "label_max_z", "label_z_min_error"])
def test_options_are_checked(name):
    for bad in (-1.0, float("nan"), "50", True):
        with pytest.raises(ValueError, match=name):
            LearningOptions(**{name: bad})
    LearningOptions(**{name: math.inf})  # off
    with pytest.raises(ValueError, match=name):
        otfgp.OTFOptions.from_dict({name: -2.0})


def test_labeller_names():
    assert labeller_name("my_module:make_calc") == "my_module:make_calc"
    assert labeller_name({"type": "espresso"}) == "espresso"
    assert labeller_name(EMT()) == "EMT calculator"
    assert labeller_name(test_labeller_names) == f"{__name__}:test_labeller_names"


# ---------------------------------------------------------------------- LabelChecks and label()
def _labelled(forces, energy=None, n=4):
    atoms = Atoms(f"Al{n}", positions=np.arange(3 * n, dtype=float).reshape(n, 3) * 1.5, cell=[8, 8, 8], pbc=True)
    results = {"forces": np.asarray(forces, dtype=float)}
    if energy is not None:
        results["energy"] = energy
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_rejected_frame_is_quarantined_with_the_reason(tmp_path):
    checks = LabelChecks(LearningOptions(), "mylabels:broken", tmp_path)
    checks.check(_labelled(np.zeros((4, 3)), energy=-14.0), step=3)
    assert checks.energy_ranges["Al"].count == 1
    bad = np.zeros((4, 3))
    bad[1, 2] = 2e6
    with pytest.raises(LabelRejected) as err:
        checks.check(_labelled(bad, energy=40.0), step=40)
    msg = str(err.value)
    assert msg.startswith("labeller 'mylabels:broken' returned |F| = 2e+06 eV/A on atom 1 (z component) at step 40")
    assert "option label_max_force" in msg and "label_energy_jump" in msg  # E/N 10 vs -3.5: a jump too
    assert isinstance(err.value, LabellerError) and err.value.step == 40
    path = tmp_path / "quarantine" / "frame_0000040.traj"
    assert err.value.quarantined == path
    assert np.array_equal(read(path).get_forces(), bad)
    reason = json.loads(path.with_suffix(".json").read_text())
    assert reason["labeller"] == "mylabels:broken" and reason["step"] == 40
    assert [v["option"] for v in reason["violations"]] == ["label_max_force", "label_energy_jump"]
    assert checks.energy_ranges["Al"].count == 1  # a rejected energy does not widen the range


def test_label_runs_the_checks_with_the_attached_prediction(tmp_path):
    frame = _labelled(np.zeros((4, 3)))
    frame.calc = None
    frame.arrays["gp_forces"] = np.zeros((4, 3))
    frame.arrays["gp_force_stds"] = np.full((4, 3), 0.01)
    forces = np.zeros((4, 3))
    forces[0, 1] = 3.0  # below the force cap, but 300 stds off
    checks = LabelChecks(LearningOptions(), "f", tmp_path)
    with pytest.raises(LabelRejected, match="label_max_z"):
        label(frame, lambda atoms: {"forces": forces}, checks=checks, step=7)
    assert (tmp_path / "quarantine" / "frame_0000007.traj").exists()
    relaxed = LabelChecks(LearningOptions(label_max_z=None), "f", tmp_path / "b")
    assert label(frame, lambda atoms: {"forces": forces}, checks=relaxed, step=7).get_forces()[0, 1] == 3.0


def test_history_is_read_from_accepted_frames(tmp_path):
    from ase.io import write

    (tmp_path / "dft").mkdir()
    for step, e in ((0, -14.0), (5, -13.2)):
        write(tmp_path / "dft" / f"frame_{step:07d}.extxyz", _labelled(np.zeros((4, 3)), energy=e))
    write(tmp_path / "dft" / "frame_0000005.traj", _labelled(np.zeros((4, 3)), energy=-13.0))  # wins
    checks = LabelChecks(LearningOptions(), "f", tmp_path, history=tmp_path / "dft")
    seen = checks.energy_ranges["Al"]
    assert (seen.low, seen.high, seen.count) == (-3.5, -3.25, 2)


# ---------------------------------------------------------------------- the ASE learner
ABSURD = '''
import numpy as np
from ase.calculators.emt import EMT

calls = 0


def absurd_from_third_call(atoms):
    """EMT, until its third call; then 1e6 * sign(randn) forces (issue 12)."""
    global calls
    calls += 1
    atoms = atoms.copy()
    atoms.calc = EMT()
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if calls >= 3:
        out["forces"] = 1e6 * np.sign(np.random.default_rng(calls).standard_normal((len(atoms), 3)))
    return out
'''


@pytest.fixture
def absurd_module(tmp_path, monkeypatch):
    (tmp_path / "absurd_labels.py").write_text(ABSURD)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("absurd_labels", None)
    yield "absurd_labels:absurd_from_third_call"
    sys.modules.pop("absurd_labels", None)


def _dynamics():
    rng = np.random.default_rng(5)
    atoms = jittered_al(rng, jitter=0.01)  # 32 Al atoms
    thermalize(atoms, 1500, rng)
    return VelocityVerlet(atoms, 5 * units.fs)


def _run_until_rejected(out, labeller):
    """An OTF run in ``out`` with ``labeller`` until a label is rejected: the learner and the
    pytest ExceptionInfo of the LabelRejected."""
    otf = otfgp.OTF(_dynamics(), otfgp.GaussianProcess(["Al"], CUTOFFS), labeller, threshold=0.02, init_atoms=4,
                    output_dir=str(out), progress=False, map=False, max_iterations=20)
    with pytest.raises(LabelRejected) as err:
        otf.run(30)
    return otf, err


def test_absurd_labeller_stops_the_ase_learner_and_resume_goes_on(tmp_path, absurd_module):
    out = tmp_path / "run"
    otf, err = _run_until_rejected(out, absurd_module)
    step = err.value.step
    assert otf.dft_calls == [0, otf.dft_calls[1]] and step > otf.dft_calls[1]  # the third call
    msg = str(err.value)
    assert f"labeller '{absurd_module}' returned |F| = 1e+06 eV/A" in msg
    assert f"at step {step}" in msg and "option label_max_force" in msg
    quarantined = out / "quarantine" / f"frame_{step:07d}.traj"
    assert quarantined.exists() and quarantined.with_suffix(".json").exists()
    assert np.abs(read(quarantined).get_forces()).max() == 1e6
    assert not (out / "dft" / f"frame_{step:07d}.traj").exists()  # never reused as a label
    # The model and the checkpoint hold only the two honest frames.
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == step and state["learned"] is False and state["dft_calls"] == otf.dft_calls
    saved = otfgp.GaussianProcess.load(out / "checkpoint" / state["model"])
    assert saved.n_training_structures == 2 == otf.model.n_training_structures
    assert saved.n_training_environments == 4 + 1
    # Resume with the honest labeller: the rejected step is labelled afresh and learnt.
    resumed = otfgp.OTF.resume(out, _dynamics(), EMT())
    summary = resumed.run(30 - resumed.step)
    assert summary["steps"] == 30 and step in summary["dft_call_steps"]
    assert np.abs(read(out / "dft" / f"frame_{step:07d}.traj").get_forces()).max() < 10
    assert summary["failed_dft_steps"] == [step]


def test_resume_checks_the_quarantined_labels_again_instead_of_calling_the_labeller(tmp_path, absurd_module):
    """A resume with the same labeller does not pay for the rejected frame again: with the
    same options its labels are rejected again without a call, with the checks loosened
    they are learnt (the labeller would return the same)."""
    out = tmp_path / "run"
    otf, err = _run_until_rejected(out, absurd_module)
    step = err.value.step
    labels = sys.modules["absurd_labels"]
    assert labels.calls == 3
    quarantined = read(out / "quarantine" / f"frame_{step:07d}.traj").get_forces()
    otf.close()
    with pytest.raises(LabelRejected, match=f"at step {step}"):
        otfgp.OTF.resume(out, _dynamics(), absurd_module).run(30 - step)
    assert labels.calls == 3  # rejected again, without a call
    resumed = otfgp.OTF.resume(out, _dynamics(), absurd_module, label_max_force=None, label_max_z=None)
    resumed.run(0)  # the rejected step only
    assert labels.calls == 3 and resumed.dft_calls[-1] == step
    assert np.array_equal(read(out / "dft" / f"frame_{step:07d}.traj").get_forces(), quarantined)
    assert not (out / "quarantine" / f"frame_{step:07d}.traj").exists()
    assert (out / "quarantine" / "released" / f"frame_{step:07d}.json").exists()


def test_skip_mode_quarantines_absurd_frames_and_goes_on(tmp_path, absurd_module):
    out = tmp_path / "run"
    otf = otfgp.OTF(_dynamics(), otfgp.GaussianProcess(["Al"], CUTOFFS), absurd_module, threshold=0.02,
                    on_dft_failure="skip", output_dir=str(out), progress=False, map=False, max_iterations=20)
    summary = otf.run(12)
    skipped = summary["failed_dft_steps"]
    assert summary["steps"] == 12 and len(summary["dft_call_steps"]) == 2 and skipped
    assert sorted(p.name for p in (out / "quarantine").glob("*.traj")) == [f"frame_{s:07d}.traj" for s in skipped]
    assert otf.model.n_training_structures == 2


def test_absurd_labeller_is_an_otfgp_error_on_the_command_line(tmp_path, absurd_module, monkeypatch, capsys):
    from otfgp.cli import main

    config = (CONFIG.replace("LABELLER", absurd_module))
    (tmp_path / "absurd.toml").write_text(config)
    monkeypatch.chdir(tmp_path)
    assert main(["otf", "absurd.toml"]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("otfgp: error:"))
    assert f"labeller '{absurd_module}' returned |F| = 1e+06 eV/A" in line and "label_max_force" in line
    assert "--resume" in err
    assert list((tmp_path / "run" / "quarantine").glob("frame_*.traj"))


CONFIG = """
[structure]
lattice = "fcc"
element = "Al"
a = 4.05
cubic = true
repeat = [2, 2, 2]
jitter = 0.0405
seed = 1

[md]
timestep_fs = 5.0
temperature_K = 1500
seed = 2
steps = 30

[model]
species = ["Al"]
twobody = 5.0
threebody = 3.5

[labeller]
type = "LABELLER"

[otf]
threshold = 0.02
map = false
max_iterations = 20
progress = false
output_dir = "run"
"""
