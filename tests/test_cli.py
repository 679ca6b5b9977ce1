"""The otfgp command line: otf run, resume of a finished run, plots, bad configs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OTFGP = str(Path(sys.executable).parent / "otfgp")


def _run(args, cwd):
    return subprocess.run([OTFGP, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_otf_run_resume_and_plot(tmp_path):
    config = tmp_path / "emt.toml"
    config.write_text((EXAMPLES / "otf_al_emt.toml").read_text().replace(
        'output_dir = "otf_al_emt"', 'output_dir = "run"').replace("steps = 100", "steps = 30"))
    out = _run(["otf", str(config)], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["dft_calls"] >= 1
    assert len((run / "log.jsonl").read_text().splitlines()) == 61
    again = _run(["otf", "--resume", str(run)], tmp_path)  # finished: nothing to do, nothing lost
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["dft_call_steps"] == summary["dft_call_steps"]
    plot = _run(["plot", str(run)], tmp_path)
    assert plot.returncode == 0, plot.stderr[-2000:]
    for name in ("temperature.png", "training.png"):
        assert (run / name).stat().st_size > 10_000
    if summary["dft_calls"] > 1:  # frames predicted before they were learnt
        assert (run / "pre_update_uncertainty.png").stat().st_size > 10_000
        assert str(run / "pre_update_uncertainty.png") in plot.stdout


@pytest.mark.parametrize("mutation,expected", [
    (("[labeller]\ntype = \"emt\"", "[labeller]\ntype = \"vasp_std\""), "vasp_std"),
    (("threshold = 0.04", "threshold = 0.04\nthreshhold = 1"), "threshhold"),
    (("[model]", "[modle]\n[model]"), "modle"),
    (("threshold = 0.04", "threshold = 0.04\noptimize = \"false\""), "optimize must be true or false"),
    (("threshold = 0.04", "threshold = 0.04\nmax_iterations = \"5\""), "max_iterations must be a non-negative"),
    (('integrator = "velocity_verlet"', 'integrator = "velocity_verlet"\nzero_momentum = "false"'),
     "md.zero_momentum must be true or false"),
    (('species = ["Al"]', 'species = ["Cu"]'), "model.species: the structure holds Al, which the model does not know"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, mutation, expected):
    text = (EXAMPLES / "otf_al_emt.toml").read_text()
    assert mutation[0] in text
    config = tmp_path / "bad.toml"
    config.write_text(text.replace(mutation[0], mutation[1]))
    out = _run(["otf", str(config)], tmp_path)
    assert out.returncode == 2
    assert expected in out.stdout + out.stderr


def test_modules_import_without_the_cli():
    code = ("import sys, otfgp.config, otfgp.builders, otfgp.stages; "
            "assert 'otfgp.cli' not in sys.modules, 'a module imports the CLI'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_validate_config_resolves_the_example():
    from otfgp.config import ConfigError, load_config, stage_bounds, validate_config

    cfg = validate_config(load_config(EXAMPLES / "otf_al_emt.toml"), base_dir=EXAMPLES)
    assert [s["name"] for s in cfg["md"]["stages"]] == ["solid", "liquid"]
    assert stage_bounds(cfg["md"]["stages"]) == [0, 100, 200]
    assert cfg["otf"]["output_dir"] == "otf_al_emt" and cfg["structure"]["jitter"] == 0.0405
    with pytest.raises(ConfigError, match="md.timestep_fs"):
        validate_config({**cfg, "md": {"steps": 1}})


class _PublicOnlyOTF:
    """Stands in for OTF with just the public API run_stages may use (no _checkpoint_index)."""

    def __init__(self, atoms, checkpoint_index=0, step=0):
        from types import SimpleNamespace

        self.atoms, self.step, self.runs, self._index = atoms, step, [], checkpoint_index
        self.dyn = SimpleNamespace(dt=1.0)

    @property
    def checkpoint_index(self):
        return self._index

    def write_checkpoint(self):
        self._index += 1

    def run(self, steps):
        self.runs.append((self.step, steps))
        self.step += steps
        return {"steps": self.step, "dft_call_steps": [0, 3, 12]}


def test_run_stages_rescales_once_through_the_public_checkpoint_api(tmp_path):
    from ase.build import bulk

    from otfgp.builders import set_velocities
    from otfgp.stages import STAGES_FILE, read_stages_state, run_stages

    cfg = {"md": {"integrator": "velocity_verlet", "temperature_K": 300.0, "seed": 2,
                  "stages": [{"steps": 10, "name": "solid"},
                             {"steps": 5, "name": "liquid", "rescale_to_K": 1200.0}]}}
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(2)
    set_velocities(atoms, cfg["md"])
    otf = _PublicOnlyOTF(atoms)
    summary = run_stages(otf, cfg, tmp_path)
    assert otf.runs == [(0, 10), (10, 5)]
    assert [s["dft_calls"] for s in summary["stages"]] == [2, 1]
    assert abs(atoms.get_temperature() - 1200.0) < 1e-6
    state = read_stages_state(tmp_path)
    assert state["transitions"]["1"]["checkpoint_index"] == 1 and state["completed"] == [0, 1]
    assert json.loads((tmp_path / STAGES_FILE).read_text()) == state
    # a resume from the checkpoint holding the rescale does not rescale again ...
    atoms.set_momenta(atoms.get_momenta() * 0.5)
    again = _PublicOnlyOTF(atoms, checkpoint_index=1, step=10)
    run_stages(again, cfg, tmp_path)
    assert abs(atoms.get_temperature() - 300.0) < 1e-6 and again.checkpoint_index == 1
    # ... one from an older checkpoint (written before the rescale) does
    older = _PublicOnlyOTF(atoms, checkpoint_index=0, step=10)
    run_stages(older, cfg, tmp_path)
    assert abs(atoms.get_temperature() - 1200.0) < 1e-6 and older.checkpoint_index == 1
