"""The DFT decision's extrapolation checks (local-energy and stress stds) and which labels
of a frame are trained on."""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.md.nptberendsen import NPTBerendsen
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import otfgp
from otfgp.calibration import Calibration, ModelCalibration
from otfgp.learning import (DEFAULT_LOCAL_ENERGY_THRESHOLD, DEFAULT_STRESS_THRESHOLD, FrameUncertainty,
                            LabellerError, LearningOptions, label, label_reasons, trained_labels)
from otfgp.otf import cell_can_change


def _rattled_model(energy: bool) -> otfgp.GaussianProcess:
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.0})
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    gp.add_training_data(atoms, energy=energy)
    gp.train(optimize=False)
    return gp


@pytest.fixture(scope="module")
def model():
    """Trained on forces and the energy: its local-energy std is meaningful."""
    return _rattled_model(energy=True)


def test_local_energy_check_needs_energy_labels():
    """A force-trained model's local energy is fixed only up to a constant, so the default
    local-energy bound does not apply to it (it would fire everywhere); an explicit one does."""
    force_only = _rattled_model(energy=False)
    quiet = FrameUncertainty(0.01, 0.02, 0.5 * DEFAULT_STRESS_THRESHOLD)
    assert label_reasons(quiet, LearningOptions(threshold=0.05), force_only, cell_changes=True) == []
    explicit = LearningOptions(threshold=0.05, local_energy_threshold=0.01)
    assert label_reasons(quiet, explicit, force_only, cell_changes=True) == ["local-energy std 0.02 > 0.01 eV/atom"]


def test_extrapolation_checks_follow_the_cell(model):
    options = LearningOptions(threshold=0.05)
    quiet = FrameUncertainty(0.01, 0.02, 2.0)  # forces fine, local energy and stress not
    assert label_reasons(quiet, options, model, cell_changes=False) == []
    reasons = label_reasons(quiet, options, model, cell_changes=True)
    assert len(reasons) == 2 and "local-energy" in reasons[0] and "stress" in reasons[1]
    below = FrameUncertainty(0.01, 0.5 * DEFAULT_LOCAL_ENERGY_THRESHOLD, 0.5 * DEFAULT_STRESS_THRESHOLD)
    assert label_reasons(below, options, model, cell_changes=True) == []
    forced = LearningOptions(threshold=0.05, extrapolation_checks=True, local_energy_threshold=0.03)
    assert label_reasons(quiet, forced, model, cell_changes=False) == [
        "stress std 2 > 1 GPa"]
    off = LearningOptions(threshold=0.05, extrapolation_checks=False)
    assert label_reasons(quiet, off, model, cell_changes=True) == []
    assert "force std" in label_reasons(FrameUncertainty(0.06), options, model, cell_changes=True)[0]


def test_uncertainty_from_calculator_results(model):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    calc = otfgp.GPCalculator(model, uncertainty="exact")
    atoms.calc = calc
    atoms.get_forces()
    u = FrameUncertainty.from_results(calc.results, "calibrated")
    assert u.max_force_std == pytest.approx(float(np.max(calc.results["epistemic_force_stds"])))
    latent = FrameUncertainty.from_results(calc.results)  # the default force decision
    assert latent.max_force_std == pytest.approx(float(np.max(calc.results["latent_force_stds"])))
    assert latent.max_local_energy_std == u.max_local_energy_std and latent.max_stress_std == u.max_stress_std
    assert u.max_local_energy_std == pytest.approx(float(np.max(calc.results["epistemic_energies_stds"])))
    assert u.max_stress_std == pytest.approx(float(np.max(calc.results["epistemic_stress_stds"])) / units.GPa)
    assert FrameUncertainty.from_results({"latent_force_stds": np.ones((2, 3))}).max_stress_std is None
    with pytest.raises(ValueError, match="force_decision"):
        LearningOptions(force_decision="reported")


def test_epistemic_part_is_what_more_data_can_reduce(model):
    """Uncalibrated, the epistemic variance is the latent one; calibrated, it is a latent^p
    alone: the floor, the force-proportional term and the noise are left out."""
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.1, seed=3)
    gp = model.copy()
    p = gp.predict(atoms, variance="exact")
    np.testing.assert_array_equal(p.epistemic_force_variances, p.latent_force_variances)
    np.testing.assert_array_equal(p.epistemic_local_energy_variances, p.latent_local_energy_variances)
    assert np.all(p.force_variances > p.epistemic_force_variances)  # the noise is not epistemic
    gp.calibration = ModelCalibration(force=Calibration("general", {"a": 3.0, "p": 0.9, "b": 1e-4, "c": 0.01,
                                                                    "e": 1.0}),
                                      local_energy=Calibration("scale_floor", {"a": 2.0, "b": 1e-5}))
    q = gp.predict(atoms, variance="exact")
    np.testing.assert_allclose(q.epistemic_force_variances, 3.0 * np.maximum(q.latent_force_variances, 0) ** 0.9,
                               rtol=1e-14)
    np.testing.assert_allclose(q.epistemic_local_energy_variances, 2.0 * q.latent_local_energy_variances, rtol=1e-14)
    assert np.all(q.force_variances > q.epistemic_force_variances)


def test_cell_can_change():
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.calc = EMT()
    assert not cell_can_change(VelocityVerlet(atoms, 1 * units.fs))
    assert cell_can_change(NPTBerendsen(atoms, 1 * units.fs, temperature_K=300, pressure_au=0.0,
                                        compressibility_au=1 / (76 * units.GPa)))
    assert cell_can_change(BFGS(FrechetCellFilter(atoms), logfile=None))
    assert not cell_can_change(BFGS(atoms, logfile=None))


def test_trained_labels_follow_what_the_labeller_returns():
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.05, seed=2)
    auto = LearningOptions(add_energy=None, add_stress=None)
    full = label(atoms, EMT(), stress=None)  # EMT gives a stress for a periodic cell
    assert trained_labels(full, auto) == (True, True)
    forces_only = label(atoms, lambda a: {"forces": np.zeros((len(a), 3))}, stress=None)
    assert trained_labels(forces_only, auto) == (False, False)
    # the default "auto": what the labeller returns when the cell can change, else forces only
    assert trained_labels(full, LearningOptions().for_cell(True)) == (True, True)
    assert trained_labels(full, LearningOptions().for_cell(False)) == (False, False)
    with pytest.raises(ValueError, match="resolved by the driver"):
        trained_labels(full, LearningOptions())
    with pytest.raises(LabellerError, match="add_energy is true"):
        trained_labels(forces_only, LearningOptions(add_energy=True))
    dict_stress = label(atoms, lambda a: {"forces": np.zeros((len(a), 3)), "stress": np.zeros(6)}, stress=False)
    assert "stress" not in dict_stress.calc.results


def test_options_reject_non_booleans():
    with pytest.raises(ValueError, match="extrapolation_checks"):
        LearningOptions(extrapolation_checks="yes")
    with pytest.raises(ValueError, match="add_stress must be true, false, 'auto'"):
        LearningOptions(add_stress="yes")
    with pytest.raises(ValueError, match="local_energy_threshold"):
        LearningOptions(local_energy_threshold=-1.0)
