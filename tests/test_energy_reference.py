"""Energy reference of force-only models: per-species offsets fitted to the labeller's
energies after training (GaussianProcess.set_energy_reference), and its use in on-the-fly
learning so that the potential energy keeps the labeller's scale across retrains."""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

import otfgp
from otf_helpers import CUTOFFS, emt_langevin_snapshots, jittered_al, read_log, small_al_model, thermalize


def _labelled_frames(seed: int, n: int, jitter: float = 0.03):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = jittered_al(rng, jitter=jitter)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    return frames


def test_reference_pins_energies_without_touching_forces_or_maps(tmp_path):
    gp = small_al_model(frames=3)
    refs = [gp.training_structure(i)["atoms"] for i in range(gp.n_training_structures)]
    for a in refs:
        a.calc = EMT()
    energies = [float(a.get_potential_energy()) for a in refs]
    gp.map()
    probe = _labelled_frames(5, 1)[0]
    before = gp.predict(probe, variance=True)
    offsets = gp.set_energy_reference(energies)
    assert set(offsets) == {"Al"} and offsets["Al"] != 0.0
    assert gp.trained and gp.mapped  # a pure reference shift keeps the solution and maps
    after = gp.predict(probe, variance=True)
    np.testing.assert_array_equal(after.forces, before.forces)
    np.testing.assert_array_equal(after.force_variances, before.force_variances)
    assert after.energy == pytest.approx(before.energy + len(probe) * offsets["Al"], abs=1e-9)
    # the fitted reference is the least-squares one: residuals average to zero
    residuals = [gp.predict(a, variance=False).energy - e for a, e in zip(refs, energies)]
    assert abs(np.mean(residuals)) < 1e-9
    # refitting is idempotent (the current offsets are taken out first)
    assert gp.set_energy_reference(energies)["Al"] == pytest.approx(offsets["Al"], abs=1e-12)
    # and the model file keeps it
    gp.save(tmp_path / "m.otfgp")
    loaded = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert loaded.energy_offsets == gp.energy_offsets
    assert loaded.predict(probe, variance=False).energy == gp.predict(probe, variance=False).energy


def test_reference_needs_a_force_only_trained_model_and_one_energy_per_structure():
    gp = small_al_model(frames=2)
    with pytest.raises(ValueError, match="one entry per training structure"):
        gp.set_energy_reference([1.0])
    with pytest.raises(ValueError, match="not finite"):
        gp.set_energy_reference([float("nan"), None])
    frames = _labelled_frames(3, 2)
    with_energy = otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=gp.hyperparameters)
    for a in frames:
        with_energy.add_training_data(a, energy=True, atom_indices=[0, 1])
    with_energy.train(optimize=False)
    assert with_energy.has_energy_labels
    with pytest.raises(ValueError, match="trains on energy labels"):
        with_energy.set_energy_reference([0.0, 0.0])
    untrained = otfgp.GaussianProcess(["Al"], CUTOFFS)
    untrained.add_training_data(frames[0], atom_indices=[0])
    with pytest.raises(ValueError, match="trained model"):
        untrained.set_energy_reference([0.0])


@pytest.mark.parametrize("kind", [otfgp.GaussianProcess, otfgp.ScalableGP])
def test_references_for_some_structures_keep_the_offsets_of_the_others(kind):
    """A species in none of the structures given a reference keeps its offset: a starting
    model's own structures enter on-the-fly learning without references (None), and a Cu
    offset fitted before was reset to 0 there (a jump of 4 x 2 eV in a Cu4 cell)."""
    from ase.build import bulk

    rng = np.random.default_rng(1)
    frames = []
    for symbol, a in (("Al", 4.05), ("Al", 4.05), ("Cu", 3.61)):
        atoms = bulk(symbol, "fcc", a=a, cubic=True)
        atoms.positions += rng.uniform(-0.1, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    options = {"lower": 1.8} if kind is otfgp.ScalableGP else {}
    gp = kind(["Al", "Cu"], {"twobody": 4.5}, hyperparameters={"sigma2": 1.0, "ell2": 1.0, "noise_force": 0.05},
              **options)
    for atoms in frames:
        gp.add_training_data(atoms, atom_indices=[0, 1])
    gp.train(optimize=False)
    energies = [a.get_potential_energy() for a in frames]
    both = gp.set_energy_reference(energies)
    assert both["Cu"] != 0.0
    assert gp.set_energy_reference(energies[:2] + [None]) == pytest.approx(both, abs=1e-9)
    assert gp.set_energy_reference([None] * 3) == pytest.approx(both, abs=1e-9)
    cu = frames[2]
    assert gp.predict(cu, variance=False).energy == pytest.approx(cu.get_potential_energy(), abs=1e-6)


def _otf_energies(tmp_path, energy_reference: bool) -> tuple[float, list[float]]:
    """Held-out liquid energy error (eV/atom) and the potential-energy change at each
    retrain step of a short on-the-fly melt (EMT labels, forces trained only)."""
    rng = np.random.default_rng(0)
    atoms = jittered_al(rng, jitter=0.01)
    thermalize(atoms, 300, rng)
    out = tmp_path / f"run_{energy_reference}"
    otf = otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), otfgp.GaussianProcess(["Al"], CUTOFFS), EMT(),
                    threshold=0.01, max_atoms_added=1, init_atoms=1, output_dir=str(out),
                    energy_reference=energy_reference, progress=False)
    otf.run(10)
    atoms.set_velocities(atoms.get_velocities() * np.sqrt(10.0))
    summary = otf.run(10)
    liquid = emt_langevin_snapshots(3000.0, 3, seed=7)
    err = float(np.mean([abs(otf.model.predict(f, variance=False).energy - f.get_potential_energy()) / len(f)
                         for f in liquid]))
    log = {e["step"]: e["potential_energy_eV"] for e in read_log(out)}
    jumps = [abs(log[s] - log[s - 1]) for s in summary["dft_call_steps"] if s > 2]
    otf.close()
    return err, jumps


def test_on_the_fly_energies_keep_the_labeller_reference(tmp_path):
    err_ref, jumps_ref = _otf_energies(tmp_path, True)
    err_none, jumps_none = _otf_energies(tmp_path, False)
    print(f"\nheld-out liquid |dE|/N: {1000 * err_ref:.1f} meV/atom with the reference, "
          f"{1000 * err_none:.1f} without; largest PE change at a retrain step "
          f"{max(jumps_ref):.3f} / {max(jumps_none):.3f} eV")
    assert err_ref < 0.05  # EMT liquid Al, 20 on-the-fly steps of force-only learning
    assert err_none > 4 * err_ref  # without it the energy has no reference at all
    assert max(jumps_ref) < max(jumps_none)
