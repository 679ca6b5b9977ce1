"""compute otfgp/std/atom reports the model's calibrated stds (force and local energy), the
same numbers as Python's GPCalculator, serial and under MPI; `latent` gives the latent ones."""
from __future__ import annotations

import numpy as np
import pytest

import otfgp
from otfgp.calibration import Calibration, ModelCalibration
from lammps_helpers import two_species_model, lammps_cell, run_lmp, write_data

SPECIES = ["Al", "Cu"]
# Every coefficient of the rule in use: c > 0 makes the force std depend on the predicted
# force, which the compute (asking for variances only) must then compute too.
CALIBRATION = ModelCalibration(
    force=Calibration("general", {"a": 2.3, "p": 1.0, "b": 4e-4, "c": 0.02, "e": 0.7}),
    local_energy=Calibration("power", {"a": 1.8, "p": 0.9, "b": 1e-5}))
# The same with a force scale averaged over each atom's neighbourhood (radius 3 A): under MPI
# the neighbours' scales of ghost atoms come from the processes that own them.
NEIGHBOURHOOD = ModelCalibration(
    force=Calibration("general", {"a": 2.3, "p": 1.0, "b": 4e-4, "c": 0.02, "e": 0.7, "radius": 3.0}),
    local_energy=CALIBRATION.local_energy)
CALIBRATIONS = {"atom": CALIBRATION, "nb": NEIGHBOURHOOD}

INPUT = """
units metal
atom_style atomic
boundary p p p
read_data cell.data
pair_style otfgp
pair_coeff * * {model} Al Cu
compute std all otfgp/std/atom {keywords}
compute lat all otfgp/std/atom {keywords} latent
dump d all custom 1 stds.txt id c_std[1] c_std[2] c_std[3] c_std[4] c_std[5] &
    c_lat[1] c_lat[2] c_lat[3] c_lat[4] c_lat[5]
dump_modify d format float %.17g sort id
run 0
"""


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory):
    """A calibrated two-species model (exact and mapped files) and a triclinic cell."""
    d = tmp_path_factory.mktemp("calibrated")
    rng = np.random.default_rng(23)
    gp = two_species_model(rng)
    gp.calibration = CALIBRATION
    mapped = gp.copy()
    mapped.map()
    models = {}
    for name, cal in CALIBRATIONS.items():
        for kind, m in (("exact", gp), ("mapped", mapped)):
            m = m.copy()
            m.calibration = cal
            m.save(d / f"{kind}_{name}.otfgp")
            models[kind, name] = m
    test = lammps_cell(rng, 14)
    write_data(test, d / "cell.data", SPECIES)
    return d, models, test


def _python_stds(gp, atoms, uncertainty: str) -> dict:
    atoms = atoms.copy()
    atoms.calc = otfgp.GPCalculator(gp, uncertainty=uncertainty)
    atoms.get_forces()
    return atoms.calc.results


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("model,keywords", [("exact", ""), ("mapped", ""), ("mapped", "exact")])
@pytest.mark.parametrize("scale", list(CALIBRATIONS))
def test_compute_std_atom_is_calibrated(calibrated_dir, model, keywords, nprocs, scale):
    d, models, atoms = calibrated_dir
    (d / "in.std").write_text(INPUT.format(model=f"{model}_{scale}.otfgp", keywords=keywords))
    (d / "stds.txt").unlink(missing_ok=True)
    out = run_lmp(["-in", "in.std", "-log", "none"], d, nprocs=nprocs)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = np.loadtxt(d / "stds.txt", skiprows=9)
    uncertainty = "exact" if model == "exact" or keywords == "exact" else "mapped"
    ref = _python_stds(models[model, scale], atoms, uncertainty)
    assert models[model, scale].calibration == CALIBRATIONS[scale]
    reported, latent = rows[:, 1:6], rows[:, 6:11]
    np.testing.assert_allclose(reported[:, :3], ref["force_stds"], rtol=1e-9)
    np.testing.assert_allclose(reported[:, 3], ref["force_stds"].max(axis=1), rtol=1e-9)
    np.testing.assert_allclose(reported[:, 4], ref["energies_stds"], rtol=1e-9)
    np.testing.assert_allclose(latent[:, :3], ref["latent_force_stds"], rtol=1e-9)
    np.testing.assert_allclose(latent[:, 3], ref["latent_force_stds"].max(axis=1), rtol=1e-9)
    np.testing.assert_allclose(latent[:, 4], ref["latent_energies_stds"], rtol=1e-9)
    # The calibration made a difference (else this test would not test it).
    assert np.all(reported[:, :3] > 1.4 * latent[:, :3]) and np.all(reported[:, 4] > latent[:, 4])


def test_bad_keyword_is_an_error(calibrated_dir):
    d, _, _ = calibrated_dir
    (d / "in.bad").write_text(INPUT.format(model="exact_atom.otfgp", keywords="bogus"))
    out = run_lmp(["-in", "in.bad", "-log", "none"], d, timeout=120)
    assert out.returncode != 0 and "unknown keyword bogus" in out.stdout + out.stderr


def test_learn_start_returns_force_and_local_energy_thresholds(calibrated_dir, tmp_path, monkeypatch):
    """fix otfgp/learn's Python half gives both thresholds, and the local-energy rule is told
    whether the box changes."""
    import otfgp.lammps.learn as learn

    d, _, _ = calibrated_dir
    model = tmp_path / "model.otfgp"
    model.write_bytes((d / "exact_atom.otfgp").read_bytes())
    request = {"fix_id": "t", "model_file": str(model), "labeller": "emt", "output_dir": str(tmp_path),
               "options": {"threshold": 0.03, "local_energy_threshold": 0.02}, "cell_changes": True}
    # the box changes: the local-energy test is on with its bound; a fixed box: off
    assert learn.start(request) == (0.03, 0.02)
    assert learn.start({**request, "cell_changes": False}) == (0.03, None)
    # the default bound is for models trained on energies, which this one is not
    assert not otfgp.GaussianProcess.load(model).has_energy_labels
    assert learn.start({**request, "options": {"threshold": 0.03}}) == (0.03, None)
    seen = []

    def rule(options, gp, cell_changes):
        seen.append(cell_changes)
        return 0.2

    monkeypatch.setattr(learn, "local_energy_threshold_value", rule)
    assert learn.start(request) == (0.03, 0.2) and seen == [True]
