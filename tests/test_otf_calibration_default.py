"""On-the-fly learning calibrates by default while its force decisions stay on the latent
std: a calibrated run calls DFT at exactly the steps of an uncalibrated one and ends with a
calibrated model, whose stds the run's frames report; ``force_decision = "calibrated"``
compares the epistemic part of the calibrated std instead."""
from __future__ import annotations

import numpy as np
from ase import units
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.verlet import VelocityVerlet

import otfgp
from otf_helpers import jittered_al, thermalize

CUTOFFS = {"twobody": 4.5, "threebody": 3.2}


def _run(tmp_path, name: str, steps: int = 12, **options):
    rng = np.random.default_rng(11)
    atoms = jittered_al(rng, repeat=(1, 1, 1))
    thermalize(atoms, 900, rng)
    otf = otfgp.OTF(VelocityVerlet(atoms, 5 * units.fs), otfgp.GaussianProcess(["Al"], CUTOFFS), EMT(),
                    threshold=0.002, max_atoms_added=2, output_dir=str(tmp_path / name), progress=False,
                    map=False, **options)
    return otf, otf.run(steps)


def test_default_run_is_calibrated_and_decides_as_an_uncalibrated_one(tmp_path):
    plain, plain_summary = _run(tmp_path, "plain", calibration=None)
    default, summary = _run(tmp_path, "default")
    assert summary["dft_call_steps"] == plain_summary["dft_call_steps"]
    assert len(summary["dft_call_steps"]) >= 3
    assert plain.model.calibration is None
    cal = default.model.calibration
    assert cal is not None and cal.force.form == "neighbourhood" and not cal.force.fallback
    # the same model otherwise: identical predictions, calibrated stds
    atoms = read(tmp_path / "default" / "trajectory.extxyz", index=-1)
    p, q = default.model.predict(atoms, variance="exact"), plain.model.predict(atoms, variance="exact")
    np.testing.assert_array_equal(p.forces, q.forces)
    np.testing.assert_allclose(p.latent_force_variances, q.latent_force_variances, rtol=1e-12)
    assert not np.allclose(p.force_variances, q.force_variances)
    # the last frame's stds in the trajectory are the calibrated model's (the file keeps 8 digits)
    np.testing.assert_allclose(atoms.arrays["force_stds"], p.force_stds, rtol=1e-4)


def test_calibrated_force_decision_compares_the_epistemic_std(tmp_path):
    otf, _ = _run(tmp_path, "calibrated", steps=6, force_decision="calibrated")
    assert otf.model.calibration is not None
    otf.run(1)
    r = otf.calc.results
    np.testing.assert_array_equal(otf._uncertainty(), r["epistemic_force_stds"])
    assert not np.allclose(r["epistemic_force_stds"], r["latent_force_stds"])
