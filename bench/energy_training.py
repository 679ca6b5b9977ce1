#!/usr/bin/env python3
"""Training on energy and stress labels: one optimisation stage against two.

32-atom fcc Al cells (a = 4.05 A scaled by 0.98 / 1.00 / 1.02 in turn), every coordinate
displaced uniformly within +-0.08 A, EMT labels, cutoffs 5.0 / 3.5 A; the forces of 2
atoms per training cell, plus the energy, or the energy and the stress. For each label set
and each ``length_scales_from`` ("all": every hyperparameter on every label; "auto": the
length scales on the forces alone, the rest on every label) it times
``GaussianProcess.train()`` from the defaults (1 thread) and measures the force MAE and the
energy and pressure errors on held-out cells made the same way. A force-only model gets its
energy reference from the training energies (``set_energy_reference``).

    .venv/bin/python bench/energy_training.py [--cells 8] [--output bench/results/energy_training.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from benchinfo import cpu_model, git_commit, modified_paths, otfgp_version

SCALES = (0.98, 1.0, 1.02)
LABELS = {"forces": (False, False), "forces+energies": (True, False), "forces+energies+stresses": (True, True)}


def cells(n: int, rng: np.random.Generator) -> list[Atoms]:
    out = []
    for i in range(n):
        atoms = bulk("Al", "fcc", a=4.05 * SCALES[i % len(SCALES)], cubic=True).repeat((2, 2, 2))
        atoms.positions += rng.uniform(-0.08, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        out.append(atoms)
    return out


def run(train: list[Atoms], test: list[Atoms], labels: str, how: str) -> dict:
    energy, stress = LABELS[labels]
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    for atoms in train:
        gp.add_training_data(atoms, atom_indices=[0, 1], energy=energy, stress=stress)
    t0 = time.perf_counter()
    gp.train(length_scales_from=how)
    seconds = time.perf_counter() - t0
    if not energy:
        gp.set_energy_reference([a.get_potential_energy() for a in train])
    f_err, e_err, p_err = [], [], []
    for atoms in test:
        p = gp.predict(atoms, variance=False)
        f_err.append(np.abs(p.forces - atoms.get_forces()).mean())
        e_err.append(abs(p.energy - atoms.get_potential_energy()) / len(atoms))
        p_err.append(abs(np.mean(p.stress[:3]) - np.mean(atoms.get_stress()[:3])) / units.GPa)
    return {"labels": labels, "length_scales_from": how, "n_labels": gp.n_labels, "train_s": seconds,
            "force_mae_meV_per_A": 1000 * float(np.mean(f_err)), "energy_mae_meV_per_atom": 1000 * float(np.mean(e_err)),
            "pressure_mae_GPa": float(np.mean(p_err)), "hyperparameters": gp.hyperparameters,
            "warnings": gp.last_optimization.warnings() if gp.last_optimization else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=8, help="training cells (default 8)")
    ap.add_argument("--test-cells", type=int, default=6)
    ap.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "energy_training.json")
    args = ap.parse_args()
    otfgp.set_num_threads(1)
    rng = np.random.default_rng(0)
    train, test = cells(args.cells, rng), cells(args.test_cells, rng)
    rows = []
    print(f"{'labels':26s} {'stages':6s} {'labels':>6s} {'train s':>8s} {'F MAE':>7s} {'E meV/at':>9s} {'P GPa':>7s}")
    for labels in LABELS:
        for how in (("all",) if labels == "forces" else ("all", "auto")):
            r = run(train, test, labels, how)
            rows.append(r)
            print(f"{labels:26s} {how:6s} {r['n_labels']:6d} {r['train_s']:8.2f} {r['force_mae_meV_per_A']:7.2f} "
                  f"{r['energy_mae_meV_per_atom']:9.2f} {r['pressure_mae_GPa']:7.3f}", flush=True)
    result = {"benchmark": "energy_training", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "commit": git_commit(), "uncommitted_changes": modified_paths(), "otfgp": otfgp_version(),
              "cpu": cpu_model(), "python": sys.version.split()[0],
              "protocol": {"cells": args.cells, "test_cells": args.test_cells, "scales": SCALES, "jitter_A": 0.08,
                           "force_atoms_per_cell": 2, "threads": 1},
              "runs": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
