"""Shared pieces of the calculator / on-the-fly tests: Al structures, MD set-up, held-out data."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from otfgp.builders import maxwell_boltzmann

A_AL = 4.05
CUTOFFS = {"twobody": 5.0, "threebody": 3.5}
FIXED_HYPERPARAMETERS = {"sigma2": 0.1, "ell2": 1.0, "sigma3": 0.01, "ell3": 0.8, "noise_force": 0.01}


#: Maxwell-Boltzmann momenta, the library's one rule (ASE 3.29 renamed the function)
thermalize = maxwell_boltzmann


def jittered_al(rng: np.random.Generator, repeat=(2, 2, 2), jitter: float = 0.01) -> Atoms:
    """fcc Al (a = 4.05 A, cubic cell repeated) with coordinates jittered by +-jitter*a."""
    atoms = bulk("Al", "fcc", a=A_AL, cubic=True).repeat(repeat)
    atoms.positions += rng.uniform(-jitter * A_AL, jitter * A_AL, atoms.positions.shape)
    return atoms


def small_al_model(seed: int = 1, frames: int = 3, atoms_per_frame: int = 8,
                   amplitude: float = 0.03, extra: list[Atoms] | None = None) -> otfgp.GaussianProcess:
    """A quickly trained Al model (fixed hyperparameters, EMT force labels of displaced cells).

    ``extra``: further structures (with a calculator attached) whose forces are all added.
    """
    rng = np.random.default_rng(seed)
    gp = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=FIXED_HYPERPARAMETERS)
    for _ in range(frames):
        atoms = jittered_al(rng, jitter=amplitude)
        atoms.calc = EMT()
        gp.add_training_data(atoms, atom_indices=rng.choice(len(atoms), atoms_per_frame, replace=False))
    for atoms in extra or []:
        gp.add_training_data(atoms)
    gp.train(optimize=False)
    return gp


def emt_langevin_snapshots(temperature_K: float, n: int, seed: int, equilibrate: int = 60,
                           spacing: int = 10) -> list[Atoms]:
    """``n`` snapshots (EMT labels attached) of 32-atom Al from an EMT Langevin run."""
    from ase.md.langevin import Langevin

    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=A_AL, cubic=True).repeat((2, 2, 2))
    atoms.calc = EMT()
    thermalize(atoms, temperature_K, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fixcm deprecation in newer ASE
        dyn = Langevin(atoms, 5 * units.fs, temperature_K=temperature_K, friction=0.01 / units.fs,
                       fixcm=False, rng=rng)
    dyn.run(equilibrate)
    snaps = []
    for _ in range(n):
        dyn.run(spacing)
        snap = atoms.copy()
        snap.calc = EMT()
        snaps.append(snap)
    return snaps


def force_mae(model: otfgp.GaussianProcess, frames: list[Atoms]) -> float:
    """Mean absolute force-component error (eV/A) of ``model`` against the frames' calculators."""
    errors = [np.abs(model.predict(f, variance=False).forces - f.get_forces()).mean() for f in frames]
    return float(np.mean(errors))


def read_log(run_dir: str | Path) -> list[dict]:
    """The entries of ``log.jsonl`` of an OTF output directory."""
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line.strip()]
