"""[model.baseline] in configs (otfgp otf / train, build_model) and on-the-fly learning on
top of a baseline: runs, checkpoints and resumes with the baseline kept."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential
from ase.md.verlet import VelocityVerlet

import otfgp
from otfgp import baselines
from otfgp.builders import build_model
from otfgp.config import ConfigError, _validate_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OTFGP = str(Path(sys.executable).parent / "otfgp")
MODEL = {"species": ["Al"], "twobody": 4.5, "threebody": 3.2}


@pytest.mark.parametrize("section,expected", [
    ({"kind": "morse", "cutoff": 7.0, "params": {"Al": [0.27, 3.25, 1.17]}},
     baselines.Morse({"Al": (0.27, 3.25, 1.17)}, 7.0)),
    ({"kind": "lj", "cutoff": 6.0, "params": {"Al": [0.1, 2.6]}, "pairs": {"Al-Al": [0.2, 2.5]}},
     baselines.LennardJones({"Al": (0.1, 2.6)}, 6.0, {"Al-Al": (0.2, 2.5)})),
    ({"kind": "zbl", "cutoff": 2.0}, baselines.ZBL(2.0)),
])
def test_analytic_baselines_from_config(section, expected):
    gp = build_model(_validate_model({**MODEL, "baseline": section}, {}))
    assert gp.baseline.to_core() == expected.to_core()


def test_calculator_baseline_from_config():
    gp = build_model(_validate_model({**MODEL, "baseline": {"kind": "calculator", "spec": "ase:emt"}}, {}))
    assert isinstance(gp.baseline, baselines.CalculatorBaseline) and gp.baseline.spec == "emt"


@pytest.mark.parametrize("section,match", [
    ({"kind": "eam"}, "model.baseline.kind"),
    ({"kind": "morse", "cutoff": 7.0}, "model.baseline.params missing"),
    ({"kind": "morse", "cutoff": 7.0, "params": {"Al": [0.27, 3.25]}}, r"model.baseline.params.Al .*3 numbers"),
    ({"kind": "morse", "params": {"Al": [0.27, 3.25, 1.17]}}, "model.baseline.cutoff"),
    ({"kind": "zbl", "cutoff": 2.0, "params": {"Al": [1.0]}}, "ZBL has no parameters"),
    ({"kind": "calculator"}, "model.baseline.spec"),
    ({"kind": "calculator", "spec": "emt", "cutoff": 5.0}, "takes only spec"),
    ({"kind": "morse", "cutoff": 7.0, "params": {"Al": [0.27, 3.25, 1.17]}, "spec": "emt"}, "spec belongs"),
    ({"kind": "zbl", "cutoff": 2.0, "cutof": 1.0}, "cutof"),
])
def test_bad_baseline_sections_name_the_key(section, match):
    with pytest.raises(ConfigError, match=match):
        _validate_model({**MODEL, "baseline": section}, {})


def test_rejected_parameters_and_unbuildable_calculators_are_config_errors():
    bad = {"kind": "morse", "cutoff": 7.0, "params": {"Al": [-0.27, 3.25, 1.17]}}
    with pytest.raises(ConfigError, match=r"\[model\]"):
        build_model(_validate_model({**MODEL, "baseline": bad}, {}))
    with pytest.raises(ConfigError, match=r"\[model.baseline\].*no_such_module"):
        build_model(_validate_model({**MODEL, "baseline": {"kind": "calculator", "spec": "no_such_module:f"}}, {}))


def _otf_cli(tmp_path: Path, baseline: str, steps: int = 15) -> Path:
    text = (EXAMPLES / "otf_al_emt.toml").read_text().replace('output_dir = "otf_al_emt"', 'output_dir = "run"')
    text = text.replace("steps = 100", f"steps = {steps}").replace("threebody = 3.5\n",
                                                                   f"threebody = 3.5\n\n[model.baseline]\n{baseline}\n")
    assert "[model.baseline]" in text
    (tmp_path / "emt.toml").write_text(text)
    out = subprocess.run([OTFGP, "otf", "emt.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dft_calls"] >= 1
    return tmp_path / "run"


def test_otf_cli_with_a_morse_baseline(tmp_path):
    run = _otf_cli(tmp_path, 'kind = "morse"\ncutoff = 7.0\nparams = { Al = [0.27, 3.25, 1.17] }')
    model = otfgp.GaussianProcess.load(run / "model.otfgp")
    assert model.baseline == baselines.Morse({"Al": (0.27, 3.25, 1.17)}, 7.0)


def test_otf_cli_with_a_calculator_baseline_resumes_from_a_checkpoint(tmp_path, monkeypatch):
    """A calculator from a module next to the config ('mybase:morse'): the run learns on top
    of it, and a resume from an earlier checkpoint (a new process) rebuilds it by its spec."""
    (tmp_path / "mybase.py").write_text(
        "from ase.calculators.morse import MorsePotential\n\n"
        "def morse():\n    return MorsePotential(epsilon=0.27, r0=3.25, rho0=3.8, rcut1=1.6, rcut2=2.0)\n")
    run = _otf_cli(tmp_path, 'kind = "calculator"\nspec = "mybase:morse"', steps=10)
    kept = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoint").glob("state_*.json"))
    assert len(kept) >= 2
    first = json.loads((run / "checkpoint" / f"state_{kept[0]:05d}.json").read_text())["step"]
    out = subprocess.run([OTFGP, "otf", "--resume", "run", "--checkpoint", str(kept[0])], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"resuming {run} at step {first}" in out.stderr or f"resuming run at step {first}" in out.stderr
    monkeypatch.chdir(tmp_path)  # where mybase.py imports from
    model = otfgp.GaussianProcess.load(run / "model.otfgp")
    assert model.core.external_baseline == "mybase:morse" and model.trained
    assert json.loads((run / "summary.json").read_text())["steps"] == 20


def _dynamics(seed: int = 0) -> VelocityVerlet:
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 1))
    atoms.positions += np.random.default_rng(seed).uniform(-0.05, 0.05, atoms.positions.shape)
    return VelocityVerlet(atoms, 2 * units.fs)


def test_otf_on_a_calculator_baseline_checkpoints_and_resumes(tmp_path, monkeypatch):
    """EMT labels on top of a Morse calculator (ASE's, so a Python-only baseline registered
    by name): the run learns, and a resume rebuilds the baseline from the checkpoint's spec."""
    monkeypatch.setitem(baselines._REGISTRY, "ase-morse-al",
                        lambda: MorsePotential(epsilon=0.27, r0=3.25, rho0=3.8, rcut1=1.6, rcut2=2.0))
    model = build_model(_validate_model({**MODEL, "baseline": {"kind": "calculator", "spec": "ase-morse-al"}}, {}))
    run = tmp_path / "run"
    with otfgp.OTF(_dynamics(), model, EMT(), threshold=0.05, init_atoms=2, max_atoms_added=2,
                   output_dir=str(run), checkpoint_every=5) as otf:
        otf.run(12)
        learnt = otf.model.n_training_structures
    assert learnt >= 1
    with otfgp.OTF.resume(run, _dynamics(), EMT()) as resumed:
        assert resumed.step == 12 and resumed.model.n_training_structures == learnt
        assert resumed.model.baseline.spec == "ase-morse-al"
        resumed.run(6)
        assert resumed.step == 18
    final = otfgp.GaussianProcess.load(run / "model.otfgp")
    assert final.core.external_baseline == "ase-morse-al"
    # the stored labels are EMT's: prediction at a training frame = EMT up to the GP's fit
    frame = final.training_frames()[0]
    emt = frame.copy()
    emt.calc = EMT()
    trained = frame.arrays["force_trained"]
    np.testing.assert_allclose(frame.get_forces()[trained], emt.get_forces()[trained], atol=1e-6)


def test_otfgp_train_on_a_calculator_baseline_maps_the_gp_part(tmp_path, capsys):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from otfgp.cli import main

    rng = np.random.default_rng(4)
    frames = []
    for _ in range(3):
        a = bulk("Al", "fcc", a=4.05, cubic=True)
        a.positions += rng.uniform(-0.1, 0.1, a.positions.shape)
        a.calc = MorsePotential(epsilon=0.3, r0=2.9, rho0=4.0, rcut1=1.5, rcut2=1.9)
        a.calc = SinglePointCalculator(a, forces=a.get_forces(), energy=a.get_potential_energy())
        frames.append(a)
    write(tmp_path / "frames.extxyz", frames)
    (tmp_path / "train.toml").write_text(
        '[model]\ntwobody = 4.5\nthreebody = 3.2\n[model.baseline]\nkind = "calculator"\nspec = "emt"\n'
        '[data]\nfiles = ["frames.extxyz"]\n[train]\noutput = "m.otfgp"\n')
    assert main(["train", str(tmp_path / "train.toml"), "-o", str(tmp_path / "m.otfgp")]) == 0, capsys.readouterr()
    gp = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert gp.baseline.spec == "emt" and gp.mapped
    test = frames[0].copy()
    test.positions += 0.02
    unmapped = gp.copy()
    unmapped.core.clear_maps()
    mapped, exact = gp.predict(test, variance=False), unmapped.predict(test, variance=False)
    assert np.abs(mapped.forces - exact.forces).max() > 0  # the maps were used
    np.testing.assert_allclose(mapped.forces, exact.forces, atol=5e-3)  # maps of the GP part, EMT added
    emt = test.copy()
    emt.calc = EMT()
    assert np.abs(exact.forces - emt.get_forces()).max() > 1e-2  # the GP part is not nothing
