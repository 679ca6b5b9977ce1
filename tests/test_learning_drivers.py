"""One learning rule for both drivers: the same frame through the ASE learner (OTF) and
through LAMMPS's fix otfgp/learn gives the same DFT decision and adds the same atoms."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

import otfgp
from conftest import displaced_al
from lammps_helpers import fixed_al_model, run_lmp, write_data

LABELLERS = '''
from ase.calculators.emt import EMT


def emt(atoms):
    return EMT()
'''

# No integrator: the atoms stay put, so the fix's check at step 1 sees the data file's frame.
INPUT = """
units metal
atom_style atomic
read_data frame.data
pair_style otfgp
pair_coeff * * model.otfgp Al
fix learn all otfgp/learn 1 {options} labeller mylabels:emt map no optimize_until_calls 0 output_dir learn_out
run 1
"""


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A 6-environment model, an unseen frame, and the frame's per-atom stds."""
    tmp = tmp_path_factory.mktemp("drivers")
    rng = np.random.default_rng(5)
    gp = fixed_al_model(displaced_al(rng), range(6), tmp / "model.otfgp")
    frame = displaced_al(rng, amplitude=0.08)
    per_atom = gp.predict(frame, variance="exact").force_stds.max(axis=1)
    return tmp, frame, per_atom


def _ase_decision(tmp, frame, options, name):
    out = tmp / f"ase_{name}"
    gp = otfgp.GaussianProcess.load(tmp / "model.otfgp")
    atoms = frame.copy()
    atoms.calc = None
    otf = otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), gp, EMT(), output_dir=str(out), map=False,
                    optimize_until_calls=0, progress=False, **options)
    otf.run(0)  # checks step 0 only
    added = gp.training_structure(gp.n_training_structures - 1)["force_atoms"].tolist() if otf.dft_calls else []
    return bool(otf.dft_calls), added


def _lammps_decision(tmp, frame, options, name):
    work = tmp / f"lmp_{name}"
    work.mkdir()
    (work / "model.otfgp").write_bytes((tmp / "model.otfgp").read_bytes())
    (work / "mylabels.py").write_text(LABELLERS)
    write_data(frame, work / "frame.data", ["Al"])
    words = " ".join(f"{k} {v}" for k, v in options.items())
    (work / "in.learn").write_text(INPUT.format(options=words))
    out = run_lmp(["-in", "in.learn", "-log", "none"], work)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    log_file = work / "learn_out" / "learn_log.jsonl"
    if not log_file.exists():
        return False, []
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(entries) == 1
    gp = otfgp.GaussianProcess.load(work / "model.otfgp")
    added = gp.training_structure(gp.n_training_structures - 1)["force_atoms"].tolist()
    assert added == entries[0]["added_atoms"]
    return True, added


@pytest.mark.parametrize("name", ["below", "above", "relative", "add_threshold"])
def test_ase_learner_and_lammps_fix_decide_alike(setting, name):
    tmp, frame, per_atom = setting
    top = float(per_atom.max())
    options = {
        "below": {"threshold": 1.5 * top},  # no DFT call
        "above": {"threshold": 0.5 * top, "max_atoms_added": 3},
        # x sigma_n (0.01 eV/A here), floored: the floor decides
        "relative": {"relative_threshold": 0.5 * top / 0.01, "min_threshold": 0.8 * top, "max_atoms_added": 2},
        # atoms above a separate add threshold, at most 4
        "add_threshold": {"threshold": 0.5 * top, "add_threshold": float(np.quantile(per_atom, 0.8)),
                          "max_atoms_added": 4},
    }[name]
    ase_called, ase_added = _ase_decision(tmp, frame, options, name)
    lmp_called, lmp_added = _lammps_decision(tmp, frame, options, name)
    assert ase_called == lmp_called == (name != "below")
    assert ase_added == lmp_added
    if name == "above":
        assert ase_added == np.argsort(-per_atom, kind="stable")[:3].tolist()
    if name == "add_threshold":
        assert 1 <= len(ase_added) <= 4 and all(per_atom[i] > np.quantile(per_atom, 0.8) for i in ase_added)
