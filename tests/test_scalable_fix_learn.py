"""fix otfgp/learn with the scalable model: the automatic switch (``scalable_after``), a run
that starts from a ScalableGP (``scalable_model``), and the errors for files that do not fit.

After the switch the pair style evaluates the mapped export of the ScalableGP the fix
learns on: its forces and stds must be the ScalableGP's Python prediction to 1e-9, and the
DFT calls after the switch must keep adding data to that ScalableGP."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

import otfgp
from otfgp.calibration import Calibration, ModelCalibration
from otfgp.lammps.thermo import thermo_rows
from conftest import displaced_al
from lammps_helpers import FIXED_AL_HYPERPARAMETERS, fixed_al_model, learn_deck, run_lmp, write_data

LABELLERS = '''
from ase.calculators.emt import EMT


def emt(atoms):
    return EMT()
'''

# Fast: no hyperparameter optimisation of the exact GP (the switch still optimises the
# ScalableGP's, as in the ASE driver), two atoms per call so the training set grows quickly.
FIX = "5 threshold 0.004 labeller mylabels:emt output_dir learn_out max_atoms_added 2 optimize_until_calls 0"
START_ENVIRONMENTS = 6  # the starting model's (fixed_al_model on 6 atoms)
SWITCH_AFTER = 9  # environments: the first call (6 + 2) stays exact, the second switches
CELL = displaced_al(np.random.default_rng(0)).cell  # al.data's box (fcc Al 2x2x2; NVE keeps it)

# After the learning run: the pair's forces and stds with the model the run ended with, at
# the final positions (run 0 recomputes them; the last step's forces may predate a retrain).
FINAL = """
unfix learn
compute std all otfgp/std/atom
thermo_style custom step pe
run 0
write_dump all custom final.dump id x y z fx fy fz c_std[1] c_std[2] c_std[3] modify sort id format float %.17g
"""


def _data(workdir, rng):
    atoms = displaced_al(rng, amplitude=0.01)
    write_data(atoms, workdir / "al.data", ["Al"])
    (workdir / "mylabels.py").write_text(LABELLERS)
    return atoms


@pytest.fixture
def exact_workdir(tmp_path):
    rng = np.random.default_rng(21)
    fixed_al_model(displaced_al(rng), range(START_ENVIRONMENTS), tmp_path / "model.otfgp")
    _data(tmp_path, rng)
    return tmp_path


def _scalable_start(workdir):
    """A trained ScalableGP (6 environments) as ``scalable.npz`` and its export as the pair's
    ``model.otfgp``."""
    rng = np.random.default_rng(21)
    sg = otfgp.ScalableGP(["Al"], {"twobody": 5.0, "threebody": 3.5}, FIXED_AL_HYPERPARAMETERS, lower=1.5)
    sg.add_training_data(displaced_al(rng), atom_indices=range(START_ENVIRONMENTS))
    sg.train(optimize=False)
    sg.save(workdir / "scalable.npz")
    sg.save_mapped(workdir / "model.otfgp")
    _data(workdir, rng)
    return sg


def _log(workdir):
    return [json.loads(line) for line in (workdir / "learn_out" / "learn_log.jsonl").read_text().splitlines()]


def _final(workdir):
    """The final dump's atoms (positions as LAMMPS had them), forces and force stds."""
    rows = np.loadtxt(workdir / "final.dump", skiprows=9)
    atoms = Atoms("Al" * len(rows), positions=rows[:, 1:4], cell=CELL, pbc=True)
    return atoms, rows[:, 4:7], rows[:, 7:10]


def _assert_pair_is_the_scalable_model(workdir, sg):
    atoms, forces, stds = _final(workdir)
    ref = sg.predict(atoms)
    np.testing.assert_allclose(forces, ref.forces, rtol=1e-9, atol=1e-9 * np.abs(ref.forces).max())
    np.testing.assert_allclose(stds, ref.force_stds, rtol=1e-9, atol=1e-14)
    # the files the fix left: the pair's model file is the export of the learner state
    exported = otfgp.GaussianProcess.load(workdir / "model.otfgp")
    assert exported.core.mapped_only
    np.testing.assert_allclose(exported.predict(atoms).forces, ref.forces, rtol=1e-9,
                               atol=1e-9 * np.abs(ref.forces).max())


@pytest.mark.parametrize("nprocs", [1, 2])
def test_switch_to_the_scalable_model_and_learn_on(exact_workdir, nprocs):
    d = exact_workdir
    pristine = (d / "model.otfgp").read_bytes()
    (d / "in.learn").write_text(learn_deck(f"{FIX} scalable_after {SWITCH_AFTER}", steps=60) + FINAL)
    out = run_lmp(["-in", "in.learn", "-log", "none"], d, nprocs=nprocs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]

    log = _log(d)
    switches = [i for i, e in enumerate(log) if "model_switch" in e]
    assert len(switches) == 1, [e["training_environments"] for e in log]
    k = switches[0]
    switch = log[k]["model_switch"]
    assert switch["to"] == "scalable" and switch["threshold"] == SWITCH_AFTER
    # switched at the first call that took the training set past the threshold
    assert k >= 1  # after at least one exact retrain
    assert all(e["training_environments"] <= SWITCH_AFTER and e["model"] == "GaussianProcess" for e in log[:k])
    assert log[k]["training_environments"] == switch["training_environments"] > SWITCH_AFTER
    # learning goes on with the ScalableGP: later calls add environments to it
    after = log[k + 1:]
    assert len(after) >= 1 and all(e["model"] == "ScalableGP" for e in log[k:])
    sizes = [e["training_environments"] for e in log[k:]]
    assert all(b > a for a, b in zip(sizes, sizes[1:]))

    sg = otfgp.ScalableGP.load(d / "learn_out" / "scalable_model.npz")
    assert switch["scalable_model"] == "learn_out/scalable_model.npz"  # output_dir as given
    assert sg.n_training_environments == sizes[-1]
    assert sg.n_training_structures == 1 + len(log)  # the starting model's structure + one per call
    rows = thermo_rows(out.stdout.split("unfix learn")[0])
    assert rows[-1, 3] == len(log) and rows[-1, 4] == sg.n_training_environments  # f_learn[1], f_learn[2]

    _assert_pair_is_the_scalable_model(d, sg)

    models = d / "learn_out" / "models"
    assert (models / "model_start.otfgp").read_bytes() == pristine
    npz = sorted(models.glob("model_[0-9]*.npz"))
    assert 1 <= len(npz) <= 3 and npz[-1].read_bytes() == (d / "learn_out" / "scalable_model.npz").read_bytes()
    exports = sorted(models.glob("model_[0-9]*.otfgp"))
    assert len(exports) == 3 and exports[-1].read_bytes() == (d / "model.otfgp").read_bytes()

    # A new run from the files the switch left: the mapped-only model file alone is refused,
    # naming the keyword and the learner state this output folder holds ...
    (d / "in.again").write_text(learn_deck(FIX, steps=5))
    out = run_lmp(["-in", "in.again", "-log", "none"], d)
    assert out.returncode != 0
    text = " ".join(out.stdout.split())  # LAMMPS wraps long error lines
    assert "scalable_model FILE" in text and "learn_out/scalable_model.npz is the ScalableGP" in text, text[-2000:]
    # ... and goes on with it given (the export check passes: the two files belong together)
    (d / "in.again").write_text(learn_deck(f"{FIX} scalable_model learn_out/scalable_model.npz", steps=10))
    out = run_lmp(["-in", "in.again", "-log", "none"], d)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


@pytest.mark.parametrize("nprocs", [1, 2])
def test_start_from_a_scalable_model(tmp_path, nprocs):
    d = tmp_path
    start = _scalable_start(d)
    original = (d / "scalable.npz").read_bytes()
    (d / "in.learn").write_text(learn_deck(f"{FIX} scalable_model scalable.npz", steps=40) + FINAL)
    out = run_lmp(["-in", "in.learn", "-log", "none"], d, nprocs=nprocs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    log = _log(d)
    assert len(log) >= 1 and all(e["model"] == "ScalableGP" and "model_switch" not in e for e in log)
    # the named file is kept up to date, as the pair's model file is; the start is kept
    sg = otfgp.ScalableGP.load(d / "scalable.npz")
    assert sg.n_training_environments == log[-1]["training_environments"] > START_ENVIRONMENTS
    assert sg.n_training_structures == 1 + len(log)
    assert (d / "learn_out" / "models" / "model_start.npz").read_bytes() == original
    rows = thermo_rows(out.stdout.split("unfix learn")[0])
    assert rows[0, 4] == START_ENVIRONMENTS and rows[-1, 4] == sg.n_training_environments
    _assert_pair_is_the_scalable_model(d, sg)
    # and it learnt: the newest model predicts differently from the one the run started with
    atoms, _, _ = _final(d)
    assert not np.allclose(sg.predict(atoms).forces, start.predict(atoms).forces, atol=1e-6)


def _other_export(d):
    other = otfgp.ScalableGP(["Al"], {"twobody": 5.0, "threebody": 3.5}, FIXED_AL_HYPERPARAMETERS, lower=1.5)
    other.add_training_data(displaced_al(np.random.default_rng(99)), atom_indices=range(4))
    other.train(optimize=False)
    other.save_mapped(d / "model.otfgp")


@pytest.mark.parametrize("case,expected", [
    ("mapped_only", ["exported ScalableGP", "fix otfgp/learn needs", "scalable_model FILE"]),
    ("other_export", ["is not the mapped export of scalable_model", "other basis coefficients"]),
    ("other_calibration", ["is not the mapped export of scalable_model", "another calibration"]),
    ("exact_file", ["is not the mapped export of scalable_model", "exact GaussianProcess"]),
    ("gp_as_scalable", ["is a GaussianProcess file, not a ScalableGP"]),
    ("bad_threshold", ["scalable_after must be a positive integer"]),
])
def test_files_and_values_that_do_not_fit_are_errors_before_the_first_call(tmp_path, case, expected):
    d = tmp_path
    _scalable_start(d)
    (d / "labels_called.py").write_text("from pathlib import Path\nfrom ase.calculators.emt import EMT\n\n"
                                        "def emt(atoms):\n    Path('called').touch()\n    return EMT()\n")
    fix = FIX.replace("mylabels:emt", "labels_called:emt")
    if case == "mapped_only":
        pass
    elif case == "other_export":
        _other_export(d)
        fix += " scalable_model scalable.npz"
    elif case == "other_calibration":
        otfgp.ScalableGP.load(d / "scalable.npz").save_mapped(d / "model.otfgp", calibration=ModelCalibration(
            force=Calibration("scale", {"s": 2.0})))
        fix += " scalable_model scalable.npz"
    elif case == "exact_file":
        fixed_al_model(displaced_al(np.random.default_rng(3)), range(4), d / "model.otfgp")
        fix += " scalable_model scalable.npz"
    elif case == "gp_as_scalable":
        fixed_al_model(displaced_al(np.random.default_rng(3)), range(4), d / "exact.otfgp")
        fix += " scalable_model exact.otfgp"
    else:
        fix += " scalable_model scalable.npz scalable_after 0"
    (d / "in.learn").write_text(learn_deck(fix, steps=5))
    out = run_lmp(["-in", "in.learn", "-log", "none"], d)
    assert out.returncode != 0
    text = " ".join((out.stdout + out.stderr).split())  # LAMMPS wraps long error lines
    for phrase in expected:
        assert phrase in text, text[-2000:]
    assert not (d / "called").exists()
