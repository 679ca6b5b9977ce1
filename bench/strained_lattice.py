#!/usr/bin/env python3
"""Does on-the-fly learning notice density extrapolation? The strained-lattice case.

Forces alone miss it: in a crystal strained uniformly every atom still sits at a symmetric
site, the forces stay small and so do their stds, while energy and pressure are far off.

Part 1, flagging. A model is learnt on the fly at a0 (32-atom fcc Al, a0 = 4.05 A, EMT
labels, Langevin 300 K, dt 5 fs, 100 steps, threshold 10 meV/A (``--threshold``), up to 4 atoms per call,
training on the energies and stresses EMT returns, the calibration refitted on the fly in the form
``--calibration``, default the package's, and the force decision ``--force-decision``, default the
package's latent one). It then predicts 32-atom
cells at a/a0 = 1.0, 1.05, 1.1, 1.2 (each coordinate rattled by 1 % of a, fixed seed);
for each: energy error per atom, pressure error, the largest reported force,
local-energy and stress stds, and the DFT decision of :func:`otfgp.learning.label_reasons`
with the extrapolation checks on (as in any run whose cell can change).

Part 2, NPT. The same system under ASE's NPTBerendsen (300 K, 0 GPa, taut 100 fs,
taup 500 fs, bulk modulus 76 GPa) for ``--npt-steps`` steps: once with EMT itself, once
on the fly from an empty model with the EMT labeller (default options: as the cell
changes, the extrapolation checks are on and energies and stresses are trained), and once
on the fly training on forces only. Reported: mean volume per atom over the second half
of each run, its ratio to EMT's, and the oracle calls.

    .venv/bin/python bench/strained_lattice.py [--npt-steps 400] [--calibration none|FORM]
        [--force-decision latent|calibrated] [--output bench/results/strained_lattice.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.nptberendsen import NPTBerendsen

import otfgp
from otfgp.builders import maxwell_boltzmann
from otfgp.learning import FrameUncertainty, LearningOptions, label_reasons
from benchinfo import cpu_model, git_commit, modified_paths, otfgp_version

A0 = 4.05
CUTOFFS = {"twobody": 5.0, "threebody": 3.5}
STRAINS = (1.0, 1.05, 1.1, 1.2)
# energies and stresses are trained (the local-energy and stress stds mean nothing otherwise)
TRAIN_ALL = {"add_energy": None, "add_stress": None}


def crystal(scale: float, rng: np.random.Generator, rattle: float = 0.01) -> Atoms:
    atoms = bulk("Al", "fcc", a=A0 * scale, cubic=True).repeat((2, 2, 2))
    atoms.positions += rng.uniform(-rattle * A0, rattle * A0, atoms.positions.shape)
    return atoms


def learn_at_a0(out: Path, steps: int, threshold: float, options: dict) -> otfgp.OTF:
    rng = np.random.default_rng(1)
    atoms = crystal(1.0, rng)
    maxwell_boltzmann(atoms, 300.0, rng)
    dyn = Langevin(atoms, 5.0 * units.fs, temperature_K=300.0, friction=0.02 / units.fs, rng=rng)
    otf = otfgp.OTF(dyn, otfgp.GaussianProcess(["Al"], CUTOFFS), "emt", output_dir=str(out), progress=False,
                    threshold=threshold, max_atoms_added=4, **options)
    otf.run(steps)
    return otf


def flagging(model: otfgp.GaussianProcess, force_decision: str) -> list[dict]:
    options = LearningOptions(force_decision=force_decision)
    rows = []
    for scale in STRAINS:
        atoms = crystal(scale, np.random.default_rng(5))
        calc = otfgp.GPCalculator(model, uncertainty="exact")
        atoms.calc = calc
        e = atoms.get_potential_energy()
        p_gp = -np.mean(atoms.get_stress()[:3]) / units.GPa
        u = FrameUncertainty.from_results(calc.results, options.force_decision)
        ref = atoms.copy()
        ref.calc = EMT()
        p_ref = -np.mean(ref.get_stress()[:3]) / units.GPa
        reasons = label_reasons(u, options, model, cell_changes=True)
        rows.append({"a_over_a0": scale,
                     "energy_error_eV_per_atom": (e - ref.get_potential_energy()) / len(atoms),
                     "pressure_GPa": p_gp, "pressure_reference_GPa": p_ref,
                     "max_force_error_eV_per_A": float(np.abs(atoms.get_forces() - ref.get_forces()).max()),
                     "max_force_std_eV_per_A": u.max_force_std,
                     "max_local_energy_std_eV": u.max_local_energy_std,
                     "max_stress_std_GPa": u.max_stress_std,
                     "flagged": bool(reasons), "reasons": reasons})
    return rows


def npt(atoms: Atoms, steps: int, otf_dir: Path | None, options: dict) -> dict:
    rng = np.random.default_rng(3)
    maxwell_boltzmann(atoms, 300.0, rng)
    dyn = NPTBerendsen(atoms, 5.0 * units.fs, temperature_K=300.0, pressure_au=0.0, taut=100 * units.fs,
                       taup=500 * units.fs, compressibility_au=1.0 / (76.0 * units.GPa))
    volumes: list[float] = []
    if otf_dir is None:
        atoms.calc = EMT()
        dyn.attach(lambda: volumes.append(atoms.get_volume() / len(atoms)), interval=1)
        dyn.run(steps)
        calls = None
    else:
        otf = otfgp.OTF(dyn, otfgp.GaussianProcess(["Al"], CUTOFFS), "emt", output_dir=str(otf_dir),
                        progress=False, **options)
        otf.run(steps)
        calls = len(otf.dft_calls)
        cells = [json.loads(line) for line in open(otf_dir / "log.jsonl") if line.strip()]
        volumes = [c["volume_A3"] / len(atoms) for c in cells]
    half = volumes[len(volumes) // 2:]
    return {"mean_volume_per_atom_A3": float(np.mean(half)), "final_volume_per_atom_A3": volumes[-1],
            "dft_calls": calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learn-steps", type=int, default=100)
    ap.add_argument("--npt-steps", type=int, default=400)
    ap.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "strained_lattice.json")
    ap.add_argument("--threshold", type=float, default=0.01,
                    help="force-std threshold of the learning at a0, eV/A (default 0.01; calibrated stds are "
                         "larger than latent ones, so a calibrated run needs a larger one)")
    ap.add_argument("--calibration", default="neighbourhood",
                    help="calibration form refitted on the fly (default: neighbourhood, the package default; "
                         "'none': uncalibrated)")
    ap.add_argument("--force-decision", default="latent", choices=("latent", "calibrated"),
                    help="force std the thresholds compare (default: latent, the package default)")
    args = ap.parse_args()
    calibration = None if args.calibration == "none" else args.calibration
    options = {**TRAIN_ALL, "calibration": calibration, "force_decision": args.force_decision}
    otfgp.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        otf = learn_at_a0(Path(tmp) / "a0", args.learn_steps, args.threshold, options)
        model = otf.model
        print(f"model learnt at a0: {len(otf.dft_calls)} DFT calls, {model.n_training_environments} "
              f"environments, {model.n_training_structures} labelled frames")
        rows = flagging(model, args.force_decision)
        print(f"{'a/a0':>5} {'dE meV/at':>9} {'P GPa':>7} {'P ref':>7} {'max |dF|':>8} {'F std':>7} "
              f"{'E_i std':>7} {'S std GPa':>9}  decision")
        for r in rows:
            le = r["max_local_energy_std_eV"]
            ss = r["max_stress_std_GPa"]
            print(f"{r['a_over_a0']:5.2f} {1000 * r['energy_error_eV_per_atom']:9.1f} {r['pressure_GPa']:7.2f} "
                  f"{r['pressure_reference_GPa']:7.2f} {r['max_force_error_eV_per_A']:8.3f} "
                  f"{r['max_force_std_eV_per_A']:7.4f} {le if le is None else f'{le:7.4f}'} "
                  f"{ss if ss is None else f'{ss:9.3f}'}  {'; '.join(r['reasons']) or 'no DFT'}", flush=True)
        ref = npt(crystal(1.0, np.random.default_rng(2)), args.npt_steps, None, {})
        # package defaults (energies and stresses trained, as the cell changes), and forces only
        npt_options = {"calibration": calibration, "force_decision": args.force_decision}
        otf_npt = npt(crystal(1.0, np.random.default_rng(2)), args.npt_steps, Path(tmp) / "npt", npt_options)
        forces_npt = npt(crystal(1.0, np.random.default_rng(2)), args.npt_steps, Path(tmp) / "npt_forces",
                         {**npt_options, "add_energy": False, "add_stress": False})
    ratio = otf_npt["mean_volume_per_atom_A3"] / ref["mean_volume_per_atom_A3"]
    forces_ratio = forces_npt["mean_volume_per_atom_A3"] / ref["mean_volume_per_atom_A3"]
    print(f"NPT {args.npt_steps} steps: EMT V/atom {ref['mean_volume_per_atom_A3']:.3f} A^3; on the fly "
          f"{otf_npt['mean_volume_per_atom_A3']:.3f} A^3 (ratio {ratio:.4f}), {otf_npt['dft_calls']} DFT calls; "
          f"forces only {forces_npt['mean_volume_per_atom_A3']:.3f} A^3 (ratio {forces_ratio:.4f}), "
          f"{forces_npt['dft_calls']} DFT calls")
    result = {
        "benchmark": "strained_lattice", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "commit": git_commit(), "uncommitted_changes": modified_paths(), "otfgp": otfgp_version(),
        "cpu": cpu_model(), "python": sys.version.split()[0],
        "protocol": {"a0": A0, "strains": STRAINS, "learn_steps": args.learn_steps, "npt_steps": args.npt_steps,
                     "threshold_eV_per_A": args.threshold,
                     "calibration": calibration, "force_decision": args.force_decision},
        "model_at_a0": {"dft_calls": len(otf.dft_calls), "training_environments": model.n_training_environments},
        "flagging": rows, "npt": {"emt": ref, "otf": otf_npt, "volume_ratio": ratio, "otf_forces_only": forces_npt,
                "forces_only_volume_ratio": forces_ratio},
        "wall_time_s": time.perf_counter() - t0,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
