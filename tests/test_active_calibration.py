"""The active-learning loop's held-out check of its stds: every labelled frame after
iteration 0 was predicted before it was learnt, so its free atoms' errors against those
stds are recorded (log.jsonl ``pre_update``, ActiveResult.pre_update_calibration) and, with
``calibration``, refit the model's calibration."""
import json
import math

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from otfgp import GaussianProcess
from otfgp.active import ActiveLearner, ActiveOptions, MDTask, free_atoms

OPTIONS = {"hyperparameter_iterations": 10, "add_energy": True, "label_max_z": None, "label_energy_jump": None,
           "label_max_force": None, "batch_size": 2, "query": "uncertainty"}


def adatom_slab():
    """A Cu adatom on a 2x2x2 Cu(100) slab, the bottom layer fixed."""
    slab = fcc100("Cu", (2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "Cu", 1.8, "hollow")
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 2))
    return slab


def md_task() -> MDTask:
    # target_error 1e-6: never met, so every run goes the full max_iterations
    return MDTask(adatom_slab(), steps=20, pool_every=5, target_error=1e-6, seed=1)


def fresh_emt(atoms):
    """A new EMT per label: one EMT object reused keeps its neighbour list between frames,
    which changes its forces in the last bits (1e-14 eV/A), and a resumed run (a new object)
    would not repeat the uninterrupted one bit for bit."""
    return EMT()


def run(directory, resume=False, **options):
    model = GaussianProcess(["Cu"], {"twobody": 4.0, "threebody": 3.0})
    with ActiveLearner(model, fresh_emt, md_task(), directory, {**OPTIONS, **options}, resume=resume) as learner:
        return learner.run(), learner


def records(directory):
    return [json.loads(line) for line in (directory / "log.jsonl").read_text().splitlines()]


def test_pre_update_errors_are_the_free_atoms_audit(tmp_path):
    result, learner = run(tmp_path / "run", max_iterations=2)
    n_free = len(free_atoms(adatom_slab()))
    log = records(tmp_path / "run")
    assert log[0]["pre_update"] is None  # iteration 0: no model predicted the first labels
    total = 0
    for r in log[1:]:
        pre = r["pre_update"]
        # the MD task's audit is computed apart (its converged()), on the same free atoms
        assert pre["rmse"] == pytest.approx(r["metrics"]["audit_rmse"], rel=1e-10)
        assert pre["components"] == 3 * n_free * r["batch"]
        # uncalibrated: the reported std is the latent std and sigma_n in quadrature
        assert pre["mean_squared_z_reported"] == pytest.approx(pre["mean_squared_z_total"], rel=1e-10)
        total += pre["components"] * pre["rmse"] ** 2
    pooled = result.pre_update_calibration
    assert pooled == log[-1]["pre_update_calibration"]
    assert pooled["components"] * pooled["rmse"] ** 2 == pytest.approx(total, rel=1e-12)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["pre_update_calibration"] == pooled
    assert learner.model.calibration is None  # no refit by default


def test_calibration_refits_on_the_pre_update_errors(tmp_path):
    result, learner = run(tmp_path / "run", max_iterations=2, calibration="neighbourhood")
    cal = learner.model.calibration
    assert cal is not None and cal.force.form == "neighbourhood" and not cal.force.fallback
    # the last retrain's fit: leave-one-out residuals and every frame's pre-update samples
    assert len(learner.calibration_samples) == result.labels - 1  # iteration 0's frame had no prediction
    refit = learner.model.copy()
    refit.calibrate(samples=learner.calibration_samples, loo=True, form="neighbourhood")
    assert refit.calibration.force.coefficients() == pytest.approx(cal.force.coefficients(), rel=1e-9)
    # the second iteration's stds were the first refit's: no longer latent and sigma_n
    second = records(tmp_path / "run")[2]["pre_update"]
    assert not math.isclose(second["mean_squared_z_reported"], second["mean_squared_z_total"], rel_tol=1e-3)


def test_resume_keeps_the_held_out_record(tmp_path):
    reference, ref_learner = run(tmp_path / "whole", max_iterations=3, calibration="neighbourhood")
    run(tmp_path / "cut", max_iterations=1, calibration="neighbourhood")
    resumed, learner = run(tmp_path / "cut", resume=True, max_iterations=3)
    assert resumed.pre_update_calibration == reference.pre_update_calibration
    assert learner.calibration_samples == ref_learner.calibration_samples
    assert learner.model.calibration.force.coefficients() == ref_learner.model.calibration.force.coefficients()
    assert records(tmp_path / "cut") == [{**r, "time_s": c["time_s"]} for r, c in
                                         zip(records(tmp_path / "whole"), records(tmp_path / "cut"))]


def test_a_bad_calibration_form_is_named():
    with pytest.raises(ValueError, match="calibration must be one of"):
        ActiveOptions(calibration="nope")


def test_free_atom_samples_leave_the_fixed_atoms_out():
    """learning.pre_update_record and calibration_sample over chosen atoms: the fixed atoms'
    components are not in the sums, and the neighbourhood scales still see every atom."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from otfgp.learning import calibration_sample, pre_update_record

    slab = adatom_slab()
    rng = np.random.default_rng(0)
    labels = rng.normal(0.0, 0.3, (len(slab), 3))
    slab.calc = SinglePointCalculator(slab, forces=labels)
    free = free_atoms(slab)
    predicted = labels + 0.01
    predicted[np.setdiff1d(np.arange(len(slab)), free)] += 5.0  # huge errors on the fixed atoms
    stds = np.full((len(slab), 3), 0.02)
    record = pre_update_record(predicted, stds, slab, 0.0, atoms=free)
    assert record["n"] == 3 * len(free) and record["sum_squared_error"] == pytest.approx(3 * len(free) * 1e-4)
    whole = calibration_sample(predicted, stds ** 2, slab, 3.0)
    part = calibration_sample(predicted, stds ** 2, slab, 3.0, atoms=free)
    rows = (3 * free[:, None] + np.arange(3)).ravel()
    for key in ("residuals", "latent_variances", "forces", "neighbourhood_scales"):
        assert part[key] == pytest.approx(np.asarray(whole[key])[rows].tolist(), rel=1e-14)
