"""Shared structures and models for the tests."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp

A_AL = 4.05


#: How closely a prediction must match one that an older otfgp recorded (tests/data
#: fixtures), relative to the largest recorded value. Not bit for bit: the machine that
#: wrote a fixture may have another CPU, and OpenBLAS picks its kernels by CPU at run time
#: and -march=native sets the core's vector width, both of which reorder sums (measured:
#: up to 3e-11 for exact variances, 3e-12 for forces, on an AVX-512 machine reading
#: fixtures written elsewhere). A wrong load - a lost calibration, baseline, map or
#: hyperparameter - is off by 1e-4 or more.
RECORDED_RTOL = 1e-9


def assert_matches_recorded(actual, recorded, rtol: float = RECORDED_RTOL) -> None:
    """``actual`` equals a value recorded by an older otfgp up to another CPU's rounding."""
    recorded = np.asarray(recorded, dtype=float)
    scale = float(np.abs(recorded).max()) if recorded.size else 0.0
    np.testing.assert_allclose(actual, recorded, rtol=0.0, atol=rtol * scale)


def displaced_al(rng: np.random.Generator, amplitude: float = 0.05, repeat=(2, 2, 2)) -> Atoms:
    """fcc Al (a = 4.05 A) with every coordinate displaced uniformly within +-amplitude*a, EMT attached."""
    atoms = bulk("Al", "fcc", a=A_AL, cubic=True).repeat(repeat)
    atoms.positions += rng.uniform(-amplitude * A_AL, amplitude * A_AL, atoms.positions.shape)
    atoms.calc = EMT()
    return atoms


def random_alloy(rng: np.random.Generator, amplitude: float = 0.05, a: float = 3.8) -> Atoms:
    """Random Cu-Au fcc alloy (32 atoms) with displacements, EMT attached."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    symbols = np.where(rng.random(len(atoms)) < 0.5, "Cu", "Au")
    atoms.set_chemical_symbols(list(symbols))
    atoms.positions += rng.uniform(-amplitude * a, amplitude * a, atoms.positions.shape)
    atoms.calc = EMT()
    return atoms


def random_triclinic(rng: np.random.Generator, n: int = 6, species=("Al", "Cu"), pbc=True) -> Atoms:
    """Small random triclinic cell, several species, atoms kept >= 1.8 A apart.

    The cell is small enough that cutoffs exceed half of it (several images per neighbour).
    """
    cell = np.array([[4.2, 0.0, 0.0], [0.9, 3.9, 0.0], [-0.6, 0.7, 4.4]])
    cell += rng.uniform(-0.2, 0.2, (3, 3))
    pos: list[np.ndarray] = []
    probe = Atoms(cell=cell, pbc=pbc)
    while len(pos) < n:
        x = rng.random(3) @ cell
        trial = Atoms("H" * (len(pos) + 1), positions=pos + [x], cell=cell, pbc=pbc)
        if len(pos) == 0 or np.min(trial.get_distances(len(pos), range(len(pos)), mic=True)) > 1.8:
            pos.append(x)
    del probe
    symbols = [species[i % len(species)] for i in range(n)]
    return Atoms(symbols, positions=pos, cell=cell, pbc=pbc)


def mixed_alloy_model(rng: np.random.Generator) -> otfgp.GaussianProcess:
    """An untrained Cu-Au model with both body orders and force, energy and stress labels
    (two random alloy cells, 4 force atoms each): every kernel part and hyperparameter is active."""
    gp = otfgp.GaussianProcess(["Cu", "Au"], {"twobody": 4.5, "threebody": 3.3})
    for _ in range(2):
        atoms = random_alloy(rng)
        gp.add_training_data(atoms, atom_indices=rng.choice(len(atoms), 4, replace=False),
                             energy=True, stress=True)
    return gp


def assert_gradient_matches_central_differences(value, grad: dict[str, float], point: dict[str, float],
                                                rel_step: float = 1e-5, rel: float = 1e-4,
                                                abs: float = 1e-6) -> None:
    """``grad`` (name -> d value / d name at ``point``) equals central differences of
    ``value(point)`` with a relative step per hyperparameter."""
    for name in point:
        h = rel_step * point[name]
        plus, minus = dict(point), dict(point)
        plus[name] += h
        minus[name] -= h
        fd = (value(plus) - value(minus)) / (2 * h)
        assert grad[name] == pytest.approx(fd, rel=rel, abs=abs), name


def trained_toy_model(rng: np.random.Generator, species=("Al", "Cu"), energy=True, stress=True,
                      cutoffs=None) -> otfgp.GaussianProcess:
    """A quickly trained multi-species model on EMT labels of random triclinic cells."""
    cutoffs = cutoffs or {"twobody": 4.5, "threebody": 3.6}
    gp = otfgp.GaussianProcess(list(species), cutoffs,
                               hyperparameters={"sigma2": 0.5, "ell2": 0.8, "sigma3": 0.2, "ell3": 0.7,
                                                "noise_force": 0.05})
    for _ in range(2):
        atoms = random_triclinic(rng, species=species)
        atoms.calc = EMT()
        gp.add_training_data(atoms, energy=energy, stress=stress)
    gp.train(optimize=False)
    return gp


def delta_model(frames, cutoffs: dict, hyper: dict, baseline, n_atoms: int) -> otfgp.GaussianProcess:
    """A Delta model: a GP on top of ``baseline`` trained on the forces of the first
    ``n_atoms`` atoms, the energy and the stress of each frame (fixed hyperparameters)."""
    gp = otfgp.GaussianProcess(["Al"], cutoffs, hyperparameters=hyper, baseline=baseline)
    for a in frames:
        gp.add_training_data(a, energy=True, stress=True, atom_indices=range(n_atoms))
    gp.train(optimize=False)
    return gp


def residual_model(frames, cutoffs: dict, hyper: dict, evaluate, n_atoms: int) -> otfgp.GaussianProcess:
    """The plain GP trained on the labels minus ``evaluate(atoms)`` (a dict with energy,
    forces and stress): what the GP part of the matching :func:`delta_model` must be."""
    gp = otfgp.GaussianProcess(["Al"], cutoffs, hyperparameters=hyper)
    for a in frames:
        b = evaluate(a)
        gp.add_training_data(a, forces=a.get_forces() - b["forces"],
                             energy=a.get_potential_energy() - b["energy"],
                             stress=a.get_stress() - b["stress"], atom_indices=range(n_atoms))
    gp.train(optimize=False)
    return gp


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def toy_model(rng) -> otfgp.GaussianProcess:
    return trained_toy_model(rng)
