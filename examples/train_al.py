"""Learn an Al force field from real DFT (Quantum ESPRESSO) and predict with uncertainties.

    python examples/train_al.py                 # Quantum ESPRESSO labels (about a minute)
    python examples/train_al.py --oracle emt    # ASE's EMT instead (seconds)

Labels jittered 4-atom fcc Al cells with DFT, trains the 2+3-body GP (hyperparameters by
maximum a posteriori with the default priors, otfgp.priors), checks it on fresh DFT frames
it has never seen, then predicts a 32-atom cell with per-atom force uncertainties and saves
the model.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from tqdm.auto import tqdm

import otfgp
from otfgp.labellers import espresso_al_calculator


def jittered_cell(rng: np.random.Generator, amplitude: float) -> Atoms:
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.positions += rng.uniform(-amplitude, amplitude, atoms.positions.shape)
    return atoms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", choices=["qe", "emt"], default="qe")
    ap.add_argument("--train-frames", type=int, default=8)
    ap.add_argument("--test-frames", type=int, default=3)
    ap.add_argument("--amplitude", type=float, default=0.15, help="jitter in Angstrom")
    ap.add_argument("--output", default="demo_run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def label(atoms, k):
        atoms.calc = EMT() if args.oracle == "emt" else espresso_al_calculator(out / f"dft_{k:03d}")
        atoms.get_forces()
        return atoms

    t0 = time.perf_counter()
    frames = [label(jittered_cell(rng, args.amplitude), k)
              for k in tqdm(range(args.train_frames + args.test_frames), desc=f"{args.oracle} labels")]
    t_label = time.perf_counter() - t0
    train, test = frames[: args.train_frames], frames[args.train_frames:]

    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    for atoms in train:
        gp.add_training_data(atoms, forces=True, energy=True, stress=True)
    t0 = time.perf_counter()
    gp.train(optimize=True)
    t_train = time.perf_counter() - t0

    errors, stds = [], []
    for atoms in test:
        pred = gp.predict(atoms)
        errors.append(np.abs(pred.forces - atoms.get_forces()).ravel())
        stds.append(pred.force_stds.ravel())  # reported (latent + noise until calibrated)
    errors, stds = np.concatenate(errors), np.concatenate(stds)

    big = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    big.positions += rng.uniform(-args.amplitude, args.amplitude, big.positions.shape)
    t0 = time.perf_counter()
    pred = gp.predict(big)
    t_pred = time.perf_counter() - t0
    gp.save(out / "al.otfgp")

    summary = {
        "oracle": args.oracle,
        "training_structures": gp.n_training_structures,
        "training_environments": gp.n_training_environments,
        "labels": gp.n_labels,
        "hyperparameters": gp.hyperparameters,
        "held_out_force_mae_eV_per_A": float(errors.mean()),
        "held_out_mean_predicted_std_eV_per_A": float(stds.mean()),
        "seconds": {"labelling": t_label, "training": t_train, "predict_32_atoms_with_variance": t_pred},
        "32_atom_energy_eV": pred.energy,
        "32_atom_max_force_std_eV_per_A": float(pred.force_stds.max()),
        "model_file": str(out / "al.otfgp"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
