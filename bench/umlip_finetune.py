#!/usr/bin/env python3
"""The bias of a universal MLIP prior on Al against Quantum ESPRESSO: the part of the uMLIP
fine-tuning benchmark (issue 14, item 2) that needs no active-learning loop.

Held-out frames: ``--frames`` fcc Al cells (``--cell 4``: the 4-atom cubic cell, k-points
4x4x4; ``--cell 8``: 2x1x1 of it, k-points 2x4x4), every coordinate displaced uniformly
within +-``--amplitude`` A (seeded), labelled by pw.x with the settings of
examples/otf_al.py (docs/labellers.md: Al.pz-vbc.UPF, LDA, ecutwfc 15 Ry, Marzari-Vanderbilt
smearing 0.1 Ry). Reported for CHGNet alone (the ``"chgnet"`` baseline, otfgp[umlip]):

- force MAE (eV/A) over all components;
- energy MAE (eV/atom) after removing the mean per-atom offset over the frames (CHGNet's
  energy zero, MP-compatible PBE, and the pseudopotential total energy of pw.x differ by a
  constant that a model's energy offset absorbs; the raw mean offset is reported too);
- the lattice constant: a Birch-Murnaghan fit (ase.eos) of the 4-atom cubic cell's energy at
  ``--scan`` points within +-4 % of 4.05 A, CHGNet against pw.x.

Still to add once otfgp.active lands: per iteration of simulate-label-refit on top of the
prior (``iterations`` in the results), the same force / energy MAE of prior + GP and the
lattice constant of prior + GP, so the bias and its removal are visible (issue 14 item 2).

``--oracle emt`` labels with ASE's EMT instead of pw.x (seconds; a smoke run of this script).

    .venv/bin/python bench/umlip_finetune.py [--frames 10] [--cell 4] [--output bench/results/umlip_finetune.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.eos import EquationOfState

from otfgp.baselines import CalculatorBaseline
from benchinfo import cpu_model, git_commit, modified_paths, otfgp_version

A0 = 4.05
QE = {"pseudopotentials": {"Al": "Al.pz-vbc.UPF"}, "ecutwfc": 15, "smearing": "mv", "degauss": 0.1}


def held_out_frames(n: int, cell: int, amplitude: float, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    base = bulk("Al", "fcc", a=A0, cubic=True).repeat((1, 1, 1) if cell == 4 else (2, 1, 1))
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.uniform(-amplitude, amplitude, a.positions.shape)
        frames.append(a)
    return frames


def make_oracle(name: str, cell: int, workdir: Path) -> Callable[[], Any]:
    """A factory of fresh labellers (pw.x runs in its own directory per call site)."""
    if name == "emt":
        from ase.calculators.emt import EMT
        return EMT
    from otfgp.labellers import espresso_calculator

    kpts = (4, 4, 4) if cell == 4 else (2, 4, 4)
    counter = iter(range(10 ** 6))
    return lambda: espresso_calculator(workdir / f"pw_{next(counter)}", kpts=kpts, **QE)


def label(atoms: Atoms, calc: Any) -> dict[str, Any]:
    a = atoms.copy()
    a.calc = calc
    return {"energy": float(a.get_potential_energy()), "forces": np.array(a.get_forces())}


def lattice_constant(energy: Callable[[Atoms], float], points: int) -> dict[str, float]:
    """Birch-Murnaghan fit of the 4-atom cubic cell's energy at points within +-4 % of A0."""
    scales = np.linspace(0.96, 1.04, points)
    volumes, energies = [], []
    for s in scales:
        a = bulk("Al", "fcc", a=A0 * s, cubic=True)
        volumes.append(a.get_volume())
        energies.append(energy(a))
    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    v0, _, b = eos.fit()
    return {"a": float(v0 ** (1 / 3)), "bulk_modulus_GPa": float(b / 1e9 * 1.602176634e-19 * 1e30)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--cell", type=int, choices=(4, 8), default=4)
    p.add_argument("--amplitude", type=float, default=0.15, help="displacement bound (A)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan", type=int, default=7, help="lattice-constant scan points")
    p.add_argument("--oracle", choices=("qe", "emt"), default="qe")
    p.add_argument("--output", default=None, help="results JSON (default: print only)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    prior = CalculatorBaseline(spec="chgnet")
    t_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="umlip_") as tmp:
        oracle = make_oracle(args.oracle, args.cell, Path(tmp))
        frames = held_out_frames(args.frames, args.cell, args.amplitude, args.seed)
        t = time.perf_counter()
        ref = [label(a, oracle()) for a in frames]
        t_oracle = time.perf_counter() - t
        t = time.perf_counter()
        pred = [prior.evaluate(a, stress=False) for a in frames]
        t_prior = time.perf_counter() - t
        n = np.array([len(a) for a in frames])
        de = np.array([p["energy"] - r["energy"] for p, r in zip(pred, ref)]) / n
        force_mae = float(np.mean(np.concatenate([np.abs(p["forces"] - r["forces"]).ravel()
                                                  for p, r in zip(pred, ref)])))
        lat_prior = lattice_constant(lambda a: prior.evaluate(a, stress=False)["energy"], args.scan)
        lat_oracle = lattice_constant(lambda a: label(a, oracle())["energy"], args.scan)
    result = {
        "benchmark": "umlip_finetune",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "git_commit": git_commit(), "modified": modified_paths(),
        "otfgp_version": otfgp_version(),
        "settings": {**vars(args), "qe": QE if args.oracle == "qe" else None},
        "prior": "chgnet",
        "held_out": {"frames": args.frames, "atoms_per_frame": int(n[0]),
                     "force_mae_eV_per_A": force_mae,
                     "energy_mae_eV_per_atom_offset_removed": float(np.mean(np.abs(de - de.mean()))),
                     "energy_offset_eV_per_atom": float(de.mean())},
        "lattice_constant_A": {"prior": lat_prior, "oracle": lat_oracle,
                               "difference": lat_prior["a"] - lat_oracle["a"]},
        "iterations": [],  # prior + GP per simulate-label-refit iteration: after otfgp.active
        "wall_time_s": {"prior_load": t_load, "oracle_labels": t_oracle, "prior_calls": t_prior,
                        "total": time.perf_counter() - t0},
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
