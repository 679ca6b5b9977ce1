"""Held-out and training frames of the benches' Al workload: seeded EMT Langevin runs of the
32-atom fcc Al cell (a0 = 4.05 A, the FLARE anchor cell). One builder, so that the test sets
of ``otf_al.py``, ``uq_calibration.py``, ``calibration_scale.py`` and ``scale_otf.py`` are
made by one rule and a change to it reaches all of them."""
from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin

from otfgp.builders import maxwell_boltzmann

A0 = 4.05


def emt_langevin_frames(temperature_K: float, n: int, seed: int, equilibrate: int = 200, every: int = 10,
                        jitter: float = 0.01) -> list[Atoms]:
    """``n`` frames, ``every`` steps apart after ``equilibrate`` steps, of a Langevin run
    (5 fs, friction 0.02/fs, seeded by ``seed``) at ``temperature_K`` with EMT, from the
    lattice with every coordinate displaced uniformly by up to ``jitter`` x a0 (0: none,
    and no random draw, so the run is the one an unjittered start always gave). Each frame
    carries EMT's energy, forces and stress, and its kinetic temperature in
    ``info["temperature_K"]``."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=A0, cubic=True).repeat((2, 2, 2))
    if jitter > 0:
        atoms.positions += rng.uniform(-jitter * A0, jitter * A0, atoms.positions.shape)
    maxwell_boltzmann(atoms, temperature_K, rng)
    atoms.calc = EMT()
    with warnings.catch_warnings():  # ASE's Langevin warns about fixcm=False
        warnings.simplefilter("ignore")
        dyn = Langevin(atoms, 5.0 * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs,
                       fixcm=False, rng=rng)
    dyn.run(equilibrate)
    frames = []
    for _ in range(n):
        dyn.run(every)
        frame = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=True)
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
        frame.info["temperature_K"] = atoms.get_temperature()
        frames.append(frame)
    return frames
