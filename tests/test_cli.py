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


@pytest.mark.parametrize("mutation,expected", [
    (("[labeller]\ntype = \"emt\"", "[labeller]\ntype = \"vasp\""), "vasp"),
    (("threshold = 0.04", "threshold = 0.04\nthreshhold = 1"), "threshhold"),
    (("[model]", "[modle]\n[model]"), "modle"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, mutation, expected):
    text = (EXAMPLES / "otf_al_emt.toml").read_text()
    assert mutation[0] in text
    config = tmp_path / "bad.toml"
    config.write_text(text.replace(mutation[0], mutation[1]))
    out = _run(["otf", str(config)], tmp_path)
    assert out.returncode == 2
    assert expected in out.stdout + out.stderr
