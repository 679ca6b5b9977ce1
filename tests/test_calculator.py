"""GPCalculator honours the ASE calculator contract and drives ASE optimisers, MD and NEB."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.io import read, write

import otfgp
from otf_helpers import A_AL, jittered_al, small_al_model, thermalize


@pytest.fixture(scope="module")
def model() -> otfgp.GaussianProcess:
    return small_al_model()


@pytest.fixture
def atoms() -> Atoms:
    return jittered_al(np.random.default_rng(7), jitter=0.02)


# ------------------------------------------------------------------ contract
def test_properties_and_results_keys(model, atoms):
    calc = otfgp.GPCalculator(model)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    assert isinstance(energy, float) and np.isfinite(energy)
    assert forces.shape == (32, 3) and np.all(np.isfinite(forces))
    assert stress.shape == (6,) and np.all(np.isfinite(stress))
    # get_property is the same thing through the generic entry point
    assert calc.get_property("energy", atoms) == energy
    np.testing.assert_array_equal(calc.get_property("forces", atoms), forces)
    np.testing.assert_array_equal(calc.get_property("stress", atoms), stress)
    assert atoms.get_potential_energy(force_consistent=True) == energy  # free_energy
    r = calc.results
    assert r["force_stds"].shape == (32, 3) and np.all(r["force_stds"] >= 0)
    assert isinstance(r["energy_std"], float) and r["energy_std"] > 0
    assert r["stress_stds"].shape == (6,) and np.all(r["stress_stds"] >= 0)
    assert r["energies_stds"].shape == (32,) and np.all(r["energies_stds"] >= 0)
    assert r["energies"].shape == (32,)
    np.testing.assert_allclose(r["energies"].sum(), energy, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies(), r["energies"])
    # the mean is exactly what the model predicts
    pred = model.predict(atoms, variance=True)
    np.testing.assert_allclose(forces, pred.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(energy, pred.energy, rtol=1e-13)
    np.testing.assert_allclose(stress, pred.stress, rtol=0, atol=1e-14)
    np.testing.assert_allclose(r["force_stds"], pred.force_stds, rtol=1e-12)
    np.testing.assert_allclose(r["energy_std"], np.sqrt(pred.energy_variance), rtol=1e-12)
    np.testing.assert_allclose(model.predict(atoms, variance=False).forces, forces, rtol=0, atol=1e-12)
    # the per-atom stds travel with the atoms (for extxyz output)
    np.testing.assert_array_equal(atoms.arrays["force_stds"], r["force_stds"])


def test_results_cache_and_check_state(model, atoms):
    calc = otfgp.GPCalculator(model)
    atoms.calc = calc
    f1 = atoms.get_forces()
    assert calc.n_calculations == 1
    f2 = atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_stress()
    assert calc.n_calculations == 1, "unchanged atoms must be served from the results cache"
    np.testing.assert_array_equal(f1, f2)
    assert calc.check_state(atoms) == []

    atoms.positions[5] += [0.05, -0.02, 0.01]
    assert "positions" in calc.check_state(atoms)
    f3 = atoms.get_forces()
    assert calc.n_calculations == 2
    assert not np.allclose(f3, f1)
    np.testing.assert_allclose(f3, model.predict(atoms, variance=False).forces, atol=1e-12)

    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    assert "cell" in calc.check_state(atoms)
    atoms.get_stress()
    assert calc.n_calculations == 3


def test_uncertainty_off_gives_no_stds(model, atoms):
    calc = otfgp.GPCalculator(model, uncertainty=False)
    atoms.calc = calc
    atoms.get_forces()
    for key in ("force_stds", "energy_std", "stress_stds", "energies_stds"):
        assert key not in calc.results
    assert "force_stds" not in atoms.arrays
    assert "energy" in calc.results and "stress" in calc.results


def test_uncertainty_every_third_calculation(model, atoms):
    calc = otfgp.GPCalculator(model, uncertainty_every=3)
    atoms.calc = calc
    has_stds = []
    for i in range(7):
        atoms.positions[0, 0] += 0.01  # force a new calculation
        atoms.get_forces()
        has_stds.append("force_stds" in calc.results)
        # a frame without fresh stds must not carry stale ones into output files
        assert ("force_stds" in atoms.arrays) == has_stds[-1]
    assert calc.n_calculations == 7
    assert has_stds == [True, False, False, True, False, False, True]


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="uncertainty_every"):
        otfgp.GPCalculator(model, uncertainty_every=0)
    with pytest.raises(TypeError, match="GaussianProcess"):
        otfgp.GPCalculator("model.otfgp")


def test_non_periodic_has_no_stress(model):
    cluster = jittered_al(np.random.default_rng(3), repeat=(1, 1, 1))
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    calc = otfgp.GPCalculator(model)
    cluster.calc = calc
    assert np.all(np.isfinite(cluster.get_forces()))
    assert np.isfinite(cluster.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        cluster.get_stress()
    assert "stress_stds" not in calc.results
    assert calc.results["force_stds"].shape == (4, 3)


def test_extxyz_round_trip(model, atoms, tmp_path):
    calc = otfgp.GPCalculator(model, uncertainty_every=2)
    atoms.calc = calc
    atoms.get_forces()
    path = tmp_path / "frame.extxyz"
    write(path, atoms, format="extxyz")
    back = read(path, format="extxyz")
    assert "force_stds" in back.arrays
    # extxyz stores 8 decimals
    np.testing.assert_allclose(back.arrays["force_stds"], calc.results["force_stds"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(back.get_forces(), calc.results["forces"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(back.get_potential_energy(), calc.results["energy"], rtol=1e-10)

    # the next calculation carries no stds, and the written frame must not either
    atoms.positions[0] += 0.02
    atoms.get_forces()
    write(tmp_path / "frame2.extxyz", atoms, format="extxyz")
    assert "force_stds" not in read(tmp_path / "frame2.extxyz").arrays


# ------------------------------------------------------------------ ASE drivers
def test_bfgs_relaxes_to_fcc(model):
    from ase.optimize import BFGS

    atoms = jittered_al(np.random.default_rng(11), jitter=0.02)
    atoms.calc = otfgp.GPCalculator(model, uncertainty=False)
    assert np.abs(atoms.get_forces()).max() > 0.05
    converged = BFGS(atoms, logfile=None).run(fmax=0.005, steps=200)
    assert converged
    assert np.abs(atoms.get_forces()).max() < 0.005
    # by symmetry the ideal lattice is a stationary point of any invariant model: the
    # relaxed positions are the ideal ones up to a rigid translation
    ideal = bulk("Al", "fcc", a=A_AL, cubic=True).repeat((2, 2, 2)).positions
    d = atoms.positions - ideal
    d -= d.mean(axis=0)
    assert np.abs(d).max() < 0.02, np.abs(d).max()


def test_velocity_verlet_conserves_energy(model):
    from ase.md.verlet import VelocityVerlet

    atoms = jittered_al(np.random.default_rng(21), jitter=0.01)
    thermalize(atoms, 300, np.random.default_rng(22))
    atoms.calc = otfgp.GPCalculator(model, uncertainty=False)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    etot, ekin = [], []

    def record():
        etot.append(atoms.get_total_energy())
        ekin.append(atoms.get_kinetic_energy())

    dyn.attach(record, interval=1)
    dyn.run(50)
    etot, ekin = np.array(etot), np.array(ekin)
    assert len(etot) == 51 and np.all(np.isfinite(etot))
    drift = abs(etot[-1] - etot[0])
    spread = np.ptp(etot)
    fluct = np.std(ekin)
    print(f"VelocityVerlet: drift {drift:.2e} eV, spread {spread:.2e} eV, KE std {fluct:.2e} eV")
    assert fluct > 0.01  # the atoms do move
    assert drift < 0.01 * fluct and spread < 0.02 * fluct


def test_langevin_and_npt_berendsen(model):
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen

    atoms = jittered_al(np.random.default_rng(31), jitter=0.01)
    thermalize(atoms, 300, np.random.default_rng(32))
    atoms.calc = otfgp.GPCalculator(model, uncertainty_every=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False,
                 rng=np.random.default_rng(33)).run(10)
    assert np.all(np.isfinite(atoms.positions)) and np.isfinite(atoms.get_potential_energy())
    assert 0 < atoms.get_temperature() < 2000

    volume0 = atoms.get_volume()
    npt = NPTBerendsen(atoms, 2 * units.fs, temperature_K=300, pressure_au=1.0 * units.bar,
                       taut=50 * units.fs, taup=200 * units.fs,
                       compressibility_au=1.3e-2 / units.GPa)
    npt.run(10)
    assert np.all(np.isfinite(atoms.positions)) and np.all(np.isfinite(atoms.get_stress()))
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_volume() != volume0  # the barostat did act on the GP stress
    assert abs(atoms.get_volume() / volume0 - 1) < 0.05


def _vacancy_hop():
    """Endpoints of a nearest-neighbour vacancy hop in 31-atom fcc Al."""
    perfect = bulk("Al", "fcc", a=A_AL, cubic=True).repeat((2, 2, 2))
    d = perfect.get_distances(0, range(1, 32), mic=True)
    hopper = 1 + int(np.argmin(d))
    initial = perfect.copy()
    target = perfect.positions[0].copy()
    del initial[0]
    final = initial.copy()
    final.positions[hopper - 1] = target
    return initial, final


def test_neb_vacancy_hop(model):
    from ase.mep import NEB
    from ase.optimize import FIRE

    initial, final = _vacancy_hop()
    # teach the model the vacancy and the hop (EMT labels of both ends and the midpoint)
    mid = initial.copy()
    mid.positions = 0.5 * (initial.positions + final.positions)
    extra = []
    for s in (initial, mid, final):
        s = s.copy()
        s.calc = EMT()
        extra.append(s)
    gp = small_al_model(extra=extra)

    def band(make_calc):
        images = [initial.copy() for _ in range(4)] + [final.copy()]
        neb = NEB(images, method="improvedtangent")
        neb.interpolate()
        for image in images:
            image.calc = make_calc()
        FIRE(neb, logfile=None).run(fmax=0.1, steps=30)
        return images, np.array([im.get_potential_energy() for im in images])

    images, energies = band(lambda: otfgp.GPCalculator(gp, uncertainty=False))
    _, emt_energies = band(EMT)
    assert np.all(np.isfinite(energies))
    assert all(np.all(np.isfinite(im.get_forces())) for im in images)
    # the two ends are equivalent by symmetry
    assert abs(energies[0] - energies[-1]) < 1e-6
    barrier = energies.max() - energies[0]
    emt_barrier = emt_energies.max() - emt_energies[0]
    print(f"vacancy-hop barrier: GP {barrier:.3f} eV, EMT {emt_barrier:.3f} eV")
    assert np.argmax(energies) in (1, 2, 3)
    assert abs(barrier - emt_barrier) < 0.1  # measured: GP 0.341, EMT 0.384 eV


def test_per_atom_stresses_sum_to_stress():
    from conftest import random_triclinic, trained_toy_model

    rng = np.random.default_rng(4)
    gp = trained_toy_model(rng)
    atoms = random_triclinic(rng, n=7)
    atoms.calc = otfgp.GPCalculator(gp, uncertainty=False)
    stresses = atoms.get_stresses()
    assert stresses.shape == (7, 6)
    np.testing.assert_allclose(stresses.sum(axis=0), atoms.get_stress(), rtol=1e-10, atol=1e-12)
    assert np.ptp(stresses[:, 0]) > 0  # really per atom, not the mean repeated
