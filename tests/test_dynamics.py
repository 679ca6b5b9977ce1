"""On-the-fly learning with every supported ASE dynamics (otfgp.dynamics_state): MD
integrators and thermostats/barostats, optimizers on atoms and on a cell filter (stopping at
fmax); a checkpointed and resumed run repeats the uninterrupted one bit for bit; the CLI
builds each of them from [md]."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.langevinbaoab import LangevinBAOAB
from ase.md.melchionna import MelchionnaNPT
from ase.md.nose_hoover_chain import IsotropicMTKNPT, NoseHooverChainNVT
from ase.md.npt import NPT
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

import otfgp
from otf_helpers import CUTOFFS, FIXED_HYPERPARAMETERS, thermalize
from otfgp.dynamics_state import UncheckpointedDynamicsWarning, deferred_calculator

DT = 4 * units.fs
# Fixed hyperparameters and no maps: the runs test the driving of the dynamics, and stay fast.
OPTIONS = dict(threshold=0.05, init_atoms=4, max_atoms_added=2, optimize=False, map=False, progress=False,
               checkpoint_minutes=None)


def _atoms(seed: int = 1, temperature_K: float | None = 500.0, a: float = 4.05):
    """8 Al atoms (two cubic fcc cells), jittered, with Maxwell-Boltzmann momenta."""
    atoms = bulk("Al", "fcc", a=a, cubic=True).repeat((2, 1, 1))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.uniform(-0.08, 0.08, atoms.positions.shape)
    if temperature_K:
        thermalize(atoms, temperature_K, rng)
        Stationary(atoms)
    return atoms


def _npt(atoms):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ase.md.npt.NPT is MelchionnaNPT's old name
        return NPT(atoms, DT, temperature_K=500, externalstress=0.0, ttime=50 * units.fs,
                   pfactor=(200 * units.fs) ** 2 * 70 * units.GPa)


def _baoab(atoms):
    with deferred_calculator(atoms):  # LangevinBAOAB evaluates forces when built
        return LangevinBAOAB(atoms, DT, temperature_K=500, T_tau=50 * units.fs, rng=7)


# name -> builder of the dynamics on fresh atoms (deterministic: seeded random numbers)
DYNAMICS = {
    "velocity_verlet": lambda a: VelocityVerlet(a, DT),
    "langevin": lambda a: Langevin(a, DT, temperature_K=500, friction=0.02 / units.fs, fixcm=False,
                                   rng=np.random.default_rng(7)),
    "langevin_baoab": _baoab,
    "bussi": lambda a: Bussi(a, DT, temperature_K=500, taut=50 * units.fs, rng=np.random.default_rng(7)),
    "nose_hoover_chain": lambda a: NoseHooverChainNVT(a, DT, temperature_K=500, tdamp=50 * units.fs),
    "npt": _npt,
    "npt_berendsen": lambda a: NPTBerendsen(a, DT, temperature_K=500, pressure_au=0.0, taut=50 * units.fs,
                                            taup=500 * units.fs, compressibility_au=1e-6 / units.bar),
    "isotropic_mtk_npt": lambda a: IsotropicMTKNPT(a, DT, temperature_K=500, pressure_au=0.0,
                                                   tdamp=50 * units.fs, pdamp=500 * units.fs),
    "bfgs": lambda a: BFGS(a, logfile=None),
    "fire": lambda a: FIRE(a, logfile=None),
    "bfgs_cell": lambda a: BFGS(FrechetCellFilter(a), logfile=None),
    "fire_cell": lambda a: FIRE(FrechetCellFilter(a), logfile=None),
}
OPTIMIZERS = ("bfgs", "fire", "bfgs_cell", "fire_cell")
BAROSTATS = ("npt", "npt_berendsen", "isotropic_mtk_npt", "bfgs_cell", "fire_cell")


def _model():
    return otfgp.GaussianProcess(["Al"], CUTOFFS, hyperparameters=FIXED_HYPERPARAMETERS)


def _otf(kind: str, run_dir: Path, **options):
    atoms = _atoms(temperature_K=None if kind in OPTIMIZERS else 500.0)
    return otfgp.OTF(DYNAMICS[kind](atoms), _model(), EMT(), output_dir=str(run_dir), **{**OPTIONS, **options})


@pytest.mark.parametrize("kind", [k for k in DYNAMICS if k not in OPTIMIZERS])
def test_md_runs_on_the_fly(kind, tmp_path):
    with _otf(kind, tmp_path / "run") as otf:
        summary = otf.run(12)
        cell0 = _atoms().cell.array
        assert summary["steps"] == 12 and 1 <= summary["dft_calls"] <= 13
        log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in log] == list(range(13))
        assert all(np.isfinite(e["temperature_K"]) and e["temperature_K"] > 0 for e in log[1:])
        assert np.isfinite(otf.atoms.positions).all()
        if kind in BAROSTATS:  # the cell is the dynamics' to change
            assert not np.allclose(otf.atoms.cell.array, cell0, atol=1e-6)
        else:
            assert np.array_equal(otf.atoms.cell.array, cell0)
        # add_energy / add_stress "auto": trained when the cell can change, else forces only
        trained = [otf.model.training_structure(i) for i in range(otf.model.n_training_structures)]
        changing = kind in BAROSTATS
        assert all((d["energy"] is not None) == changing and (d["stress"] is not None) == changing for d in trained)


def test_langevin_baoab_uses_the_model_forces_from_the_first_step(tmp_path):
    """Built under deferred_calculator its cached accelerations are zeros; the first model's
    (the seed's) forces replace them before the first step."""
    with _otf("langevin_baoab", tmp_path / "run") as otf:
        otf.run(0)
        masses = otf.atoms.get_masses()[:, None]
        np.testing.assert_allclose(otf.dyn.accel * masses, otf.atoms.get_forces(), rtol=1e-12, atol=1e-12)
        assert np.abs(otf.dyn.accel).max() > 0


def test_npt_next_step_follows_the_retrained_model(tmp_path):
    """Melchionna NPT computes the next positions (and the momenta) at the end of a step:
    after a retrain they are recomputed from the new model's forces."""
    with _otf("npt", tmp_path / "run", threshold=1e-4) as otf:  # DFT at every step
        otf.run(3)
        assert otf.dft_calls[-1] == 3
        dyn = otf.dyn
        q_future = dyn.q_future.copy()
        dyn._calculate_q_future(otf.atoms.get_forces(md=True))
        np.testing.assert_array_equal(dyn.q_future, q_future)
        p = np.dot(dyn.q_future - dyn.q_past, dyn.h / (2 * dyn.dt)) * dyn._getmasses()
        np.testing.assert_array_equal(otf.atoms.get_momenta(), p)


@pytest.mark.parametrize("kind", ["nose_hoover_chain", "isotropic_mtk_npt", "npt", "langevin_baoab"])
def test_velocity_rescale_between_runs_takes_effect(kind, tmp_path):
    """A stage's velocity rescale (atoms.set_momenta between two run() calls) reaches
    integrators that keep their own copy of the momenta (Nose-Hoover, MTK) or derive them
    from positions (Melchionna NPT re-initialises)."""
    with _otf(kind, tmp_path / "run", threshold=10.0, extrapolation_checks=False) as otf:
        otf.run(3)
        t_before = otf.atoms.get_temperature()
        otf.atoms.set_momenta(otf.atoms.get_momenta() * 2.0)  # 4x the temperature
        otf.run(1)
        assert otf.atoms.get_temperature() > 2.5 * t_before


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_optimizer_relaxes_on_the_fly_and_stops_at_fmax(kind, tmp_path):
    fmax = 0.05
    # a cell relaxation learns the DFT stress (extrapolation checks off: on a cell this small
    # the stress std exceeds 1 GPa throughout and every step would be labelled)
    extra = dict(add_stress=True, extrapolation_checks=False) if kind.endswith("_cell") else {}
    with _otf(kind, tmp_path / "run", threshold=0.03, **extra) as otf:
        if kind.endswith("_cell"):  # a compressed cell, to be relaxed too
            otf.atoms.set_cell(otf.atoms.cell * 0.98, scale_atoms=True)
        summary = otf.run(150, fmax=fmax)
        assert summary["converged"] and summary["steps"] < 150
        assert summary["fmax_eV_per_A"] < fmax and summary["fmax_target_eV_per_A"] == fmax
        log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
        assert log[-1]["fmax_eV_per_A"] < fmax <= max(e["fmax_eV_per_A"] for e in log)
        # the model is confident at the final geometry, so DFT agrees to about the threshold
        final = otf.atoms.copy()
        final.calc = EMT()
        dft_fmax = np.linalg.norm(final.get_forces(), axis=1).max()
        assert dft_fmax < 0.15, f"EMT fmax at the relaxed geometry: {dft_fmax:.3f} eV/A"
        if kind.endswith("_cell"):
            # fmax on the cell's generalised forces (virial / N) of 0.05 eV/A is ~0.5 GPa here
            assert np.abs(final.get_stress()).max() / units.GPa < 0.6
            assert final.cell.volume > 0.98 ** 3 * _atoms().cell.volume + 0.5  # it expanded
        again = otf.run(150, fmax=fmax)  # converged: no further step
        assert again["steps"] == summary["steps"]


def test_fmax_is_for_optimizers_only(tmp_path):
    with _otf("velocity_verlet", tmp_path / "run") as otf:
        with pytest.raises(ValueError, match="fmax applies to optimizers"):
            otf.run(2, fmax=0.05)


# ------------------------------------------------------------------ checkpoint and resume
STEPS, SPLIT = 14, 6
# Only the seed frame is labelled (a threshold no std reaches), so that the runs compare the
# dynamics' own state: a retrain after the resume point can leave the retrained model ~1e-14
# eV/A off the uninterrupted one's (GP level, not the dynamics; see the report of issue 13).
RESUME_OPTIONS = dict(threshold=10.0, extrapolation_checks=False)
RESUMED = [k for k in DYNAMICS if k not in ("velocity_verlet", "npt_berendsen", "fire_cell")]


def _final(otf) -> dict:
    a = otf.atoms
    return {"positions": a.positions.copy(), "momenta": a.get_momenta(), "cell": a.cell.array.copy()}


@pytest.mark.parametrize("kind", RESUMED)
def test_resume_repeats_the_uninterrupted_run_exactly(kind, tmp_path):
    """A run checkpointed at step SPLIT and resumed (fresh atoms, fresh dynamics) ends
    bit for bit where the uninterrupted run does, with the same log."""
    fmax = {"fmax": 1e-3} if kind in OPTIMIZERS else {}  # not converged within STEPS
    with _otf(kind, tmp_path / "whole", **RESUME_OPTIONS) as whole:
        whole.run(STEPS, **fmax)
        reference = _final(whole)
    with _otf(kind, tmp_path / "split", **RESUME_OPTIONS) as first:
        first.run(SPLIT, **fmax)
    atoms = _atoms(temperature_K=None if kind in OPTIMIZERS else 500.0)
    with otfgp.OTF.resume(tmp_path / "split", DYNAMICS[kind](atoms), EMT()) as resumed:
        assert resumed.step == SPLIT
        resumed.run(STEPS - SPLIT, **fmax)
        got = _final(resumed)
    for key in reference:
        np.testing.assert_array_equal(got[key], reference[key], err_msg=key)
    assert (tmp_path / "split" / "log.jsonl").read_text() == (tmp_path / "whole" / "log.jsonl").read_text()


def test_resume_with_another_dynamics_type_is_refused(tmp_path):
    with _otf("nose_hoover_chain", tmp_path / "run") as otf:
        otf.run(2)
    with pytest.raises(ValueError, match="NoseHooverChainNVT.*VelocityVerlet"):
        otf.resume(tmp_path / "run", VelocityVerlet(_atoms(), DT), EMT())


def test_unknown_dynamics_runs_with_a_warning(tmp_path):
    from ase.md.andersen import Andersen

    class Custom(VelocityVerlet):  # a known base: treated as one, no warning
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error", UncheckpointedDynamicsWarning)
        otfgp.OTF(Custom(_atoms(), DT), _model(), EMT(), output_dir=str(tmp_path / "a"), **OPTIONS).close()
    with pytest.warns(UncheckpointedDynamicsWarning, match="Andersen.*not continue it exactly"):
        otf = otfgp.OTF(Andersen(_atoms(), DT, temperature_K=500, andersen_prob=0.01, rng=np.random.default_rng(1)),
                        _model(), EMT(), output_dir=str(tmp_path / "b"), **OPTIONS)
    with otf:
        assert otf.run(3)["steps"] == 3


# ------------------------------------------------------------------ command line
@pytest.mark.parametrize("integrator,cls", [
    ("langevin_baoab", LangevinBAOAB), ("bussi", Bussi), ("nose_hoover_chain", NoseHooverChainNVT),
    ("npt", MelchionnaNPT),
    ("npt_berendsen", NPTBerendsen), ("isotropic_mtk_npt", IsotropicMTKNPT), ("fire", FIRE),
])
def test_config_builds_each_integrator(integrator, cls):
    from otfgp.builders import build_dynamics
    from otfgp.config import validate_config

    md = {"integrator": integrator, "steps": 5}
    if integrator not in ("bfgs", "fire"):
        md.update(timestep_fs=2.0, temperature_K=300)
    cfg = validate_config({"structure": {"lattice": "fcc", "element": "Al", "cubic": True}, "md": md,
                           "model": {"twobody": 4.0}, "labeller": {"type": "emt"}, "otf": {}})
    atoms = _atoms(temperature_K=None if integrator == "fire" else 300)
    dyn = build_dynamics(atoms, cfg["md"])
    assert type(dyn) is cls and atoms.calc is None


def test_config_error_when_ase_rejects_the_dynamics():
    from otfgp.builders import build_dynamics
    from otfgp.config import ConfigError

    md = {"integrator": "bussi", "timestep_fs": 2.0, "temperature_K": 300, "taut_fs": 100.0}
    with pytest.raises(ConfigError, match="bussi.*kinetic energy is zero"):
        build_dynamics(_atoms(temperature_K=None), md)  # Bussi needs velocities


@pytest.mark.parametrize("md,message", [
    ({"integrator": "bfgs", "timestep_fs": 1.0}, "timestep_fs applies to MD integrators"),
    ({"integrator": "bussi", "timestep_fs": 1.0, "temperature_K": 300, "friction": 0.1}, "friction applies"),
    ({"integrator": "bfgs", "pressure_bar": 1.0}, "needs md.relax_cell"),
    ({"integrator": "nose_hoover_chain", "timestep_fs": 1.0, "temperature_K": 300,
      "stages": [{"steps": 2, "temperature_K": 500}]}, "cannot change during a run"),
])
def test_config_rejects_keys_of_other_integrators(md, message):
    from otfgp.config import ConfigError, validate_config

    md.setdefault("stages", [{"steps": 2}])
    with pytest.raises(ConfigError, match=message):
        validate_config({"structure": {"lattice": "fcc", "element": "Al"}, "md": md, "model": {"twobody": 4.0},
                         "labeller": {"type": "emt"}, "otf": {}})


def test_cli_relaxes_a_cell_on_the_fly(tmp_path, monkeypatch):
    from otfgp.cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "relax.toml"
    config.write_text('''
[structure]
lattice = "fcc"
element = "Al"
a = 3.95
cubic = true
repeat = [2, 1, 1]
jitter = 0.05
seed = 1

[md]
integrator = "bfgs"
relax_cell = true
fmax = 0.05
steps = 150

[model]
twobody = 5.0
threebody = 3.5
hyperparameters = {sigma2 = 0.1, ell2 = 1.0, sigma3 = 0.01, ell3 = 0.8, noise_force = 0.01}

[labeller]
type = "emt"

[otf]
threshold = 0.03
add_stress = true
extrapolation_checks = false
optimize = false
map = false
output_dir = "relax"
''')
    assert main(["otf", str(config)]) == 0
    summary = json.loads((tmp_path / "relax" / "summary.json").read_text())
    assert summary["converged"] and summary["steps"] < 150 and summary["fmax_eV_per_A"] < 0.05
    # resuming a converged relaxation does nothing more
    assert main(["otf", "--resume", str(tmp_path / "relax")]) == 0
    assert json.loads((tmp_path / "relax" / "summary.json").read_text())["steps"] == summary["steps"]
