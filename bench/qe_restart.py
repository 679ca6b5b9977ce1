#!/usr/bin/env python3
"""pw.x labels from scratch against starting from the previous frame's density and wave
functions: SCF iterations and wall time per call, per frame pair displacement.

The frames are a sequence as an on-the-fly run labels them: by default the frames of an EMT
MD of the demo protocol (32-atom fcc Al, a = 4.05 A, jittered +-1 %, 300 K
Maxwell-Boltzmann, velocity Verlet 5 fs; after 100 steps the velocities are rescaled to
3000 K) at the steps the demo called DFT at; with ``--run-dir`` the ``dft/frame_*.traj``
of an on-the-fly run (e.g. the demo's ``otf_al_qe``). The frames go through the espresso
labeller (demo settings: LDA Al.pz-vbc.UPF, 15 Ry, 2x2x2 shifted k, MV 0.1 Ry, 1 rank) three
times, one after the other:

* ``scratch``: ``restart_displacement = 0`` (every SCF from atomic densities, no files);
* ``always``: every frame after the first starts from the previous one (any displacement);
* ``rule``: restart when no atom moved more than ``--threshold`` A (default 0.15).

Energies and forces of the three are compared; the table gives, per frame, the max
minimum-image displacement from the previous frame, iterations and seconds of each.

    .venv/bin/python bench/qe_restart.py                     # EMT frames (10-20 minutes)
    .venv/bin/python bench/qe_restart.py --run-dir otf_al_qe # the demo's own DFT frames
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

from otfgp.builders import maxwell_boltzmann
from otfgp.labellers import espresso_calculator
from otfgp.labellers.espresso import DEFAULT_RESTART_DISPLACEMENT
from otfgp.labellers.restart import max_displacement

# bench/ is on sys.path when run as a script
from benchinfo import cpu_model, git_commit, modified_paths, other_cores

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
A = 4.05
DEMO_CALL_STEPS = (0, 2, 5, 57, 102, 103, 104, 113, 116, 122, 123)
"""The steps at which `make demo` called pw.x (a run of examples/otf_al.py)."""
MODES = {"scratch": 0.0, "always": math.inf, "rule": 0.15}


def emt_frames(steps: tuple[int, ...], solid_steps: int = 100) -> list[tuple[int, Atoms]]:
    """Frames of an EMT MD of the demo protocol at ``steps``."""
    atoms = bulk("Al", "fcc", a=A, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(1)
    atoms.positions += rng.uniform(-0.01 * A, 0.01 * A, atoms.positions.shape)
    maxwell_boltzmann(atoms, 300, np.random.default_rng(2))
    Stationary(atoms)
    atoms.calc = EMT()
    dyn = VelocityVerlet(atoms, 5 * units.fs)
    frames = []
    for step in range(max(steps) + 1):
        if step == solid_steps:
            atoms.set_velocities(atoms.get_velocities() * math.sqrt(3000.0 / atoms.get_temperature()))
        if step in steps:
            frames.append((step, Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)))
        dyn.run(1)
    return frames


def run_frames(run_dir: Path) -> list[tuple[int, Atoms]]:
    """The labelled frames of an on-the-fly run directory, by step."""
    files = sorted((run_dir / "dft").glob("frame_*.traj")) or sorted((run_dir / "dft").glob("frame_*.extxyz"))
    if not files:
        raise SystemExit(f"no dft/frame_*.traj or .extxyz in {run_dir}")
    out = []
    for f in files:
        a = read(f)
        out.append((int(f.stem.split("_")[1]), Atoms(a.numbers, a.positions, cell=a.cell, pbc=a.pbc)))
    return out


def label_all(frames: list[tuple[int, Atoms]], threshold: float, workdir: Path) -> list[dict]:
    calc = espresso_calculator(workdir, kpts=(2, 2, 2), ecutwfc=15.0, smearing="mv", degauss=0.1,
                               restart_displacement=threshold)
    rows = []
    for step, frame in frames:
        atoms = frame.copy()
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        rows.append({"step": step, **calc.calls[-1], "energy_eV": energy, "forces": forces.tolist()})
        print(f"  {step:4d}  restart={rows[-1]['restart']!s:5}  {rows[-1]['scf_iterations']} it  "
              f"{rows[-1]['wall_s']:.1f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, help="label the dft/ frames of this on-the-fly run instead")
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["scratch", "always"])
    ap.add_argument("--threshold", type=float, default=MODES["rule"], help="restart limit of the rule mode, A")
    ap.add_argument("--output", type=Path, default=RESULTS / "qe_restart.json")
    args = ap.parse_args()

    MODES["rule"] = args.threshold
    frames = run_frames(args.run_dir) if args.run_dir else emt_frames(DEMO_CALL_STEPS)
    source = str(args.run_dir) if args.run_dir else "EMT MD of the demo protocol at the demo's DFT steps"
    displacements = [None] + [max_displacement(a, b) for (_, a), (_, b) in zip(frames, frames[1:])]
    load_before = other_cores()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            print(f"{mode} (restart_displacement = {MODES[mode]} A):", flush=True)
            results[mode] = label_all(frames, MODES[mode], Path(tmp) / mode)
    load_after = other_cores()

    ref = results.get("scratch")
    summary = {}
    for mode, rows in results.items():
        s = {"wall_s": round(sum(r["wall_s"] for r in rows), 2),
             "scf_iterations": sum(r["scf_iterations"] or 0 for r in rows),
             "restarts": sum(r["restart"] for r in rows)}
        if ref is not None:
            s["max_energy_diff_eV"] = max(abs(r["energy_eV"] - q["energy_eV"]) for r, q in zip(rows, ref))
            s["max_force_diff_eV_per_A"] = max(float(np.abs(np.subtract(r["forces"], q["forces"])).max())
                                               for r, q in zip(rows, ref))
        summary[mode] = s

    print(f"\n{'step':>5} {'max disp A':>10} " + " ".join(f"{m + ' it/s':>14}" for m in results))
    for i, (step, _) in enumerate(frames):
        d = displacements[i]
        cells = " ".join(f"{results[m][i]['scf_iterations']!s:>4} {results[m][i]['wall_s']:7.1f} s"
                         + ("*" if results[m][i]["restart"] else " ") for m in results)
        print(f"{step:5d} {'-' if d is None else f'{d:.3f}':>10} {cells}")
    print("(* = started from the previous frame)")
    for mode, s in summary.items():
        print(f"{mode:8s}: {s}")

    for rows in results.values():
        for r in rows:
            del r["forces"]
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "python": platform.python_version(),
                    "other_cores_before": load_before, "other_cores_after": load_after},
        "git_commit": git_commit(), "modified": modified_paths(),
        "frames": source, "steps": [s for s, _ in frames],
        "max_displacement_from_previous_A": displacements,
        "settings": "32 Al, LDA Al.pz-vbc.UPF, ecutwfc 15 Ry, k 2x2x2 shifted, mv 0.1 Ry, conv_thr 1e-6, 1 rank",
        "rule_threshold_A": MODES["rule"], "labeller_default_A": DEFAULT_RESTART_DISPLACEMENT,
        "summary": summary, "calls": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
