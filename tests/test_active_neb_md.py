"""The NEB and MD tasks of otfgp.active: the NEB task converges to the oracle NEB's barrier,
its special queries are the predicted saddle and the relaxed end points, the MD task stops
by its termination test, and the greedy query works with several special frames."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.mep import NEB
from ase.optimize import BFGS

from otfgp import GaussianProcess, GPCalculator
from otfgp.active import ActiveLearner, MDTask, NEBTask, max_force
from otfgp.baselines import Morse

FMAX = 0.05
FAST = {"hyperparameter_iterations": 20, "add_energy": True, "label_max_z": None, "label_energy_jump": None,
        "label_max_force": None}  # an early model explores wild structures: their labels teach it


def adatom_endpoints():
    """Cu adatom hollow-to-hollow on a 2x2x2 Cu(100) slab (bottom layer fixed), not relaxed."""
    initial = fcc100("Cu", (2, 2, 2), vacuum=5.0)
    add_adsorbate(initial, "Cu", 1.8, "hollow")
    initial.set_constraint(FixAtoms(mask=initial.get_tags() == 2))
    final = initial.copy()
    final.positions[-1, 0] += initial.cell[0, 0] / 2
    final.set_constraint(initial.constraints)
    return initial, final


def model(prior: bool = False) -> GaussianProcess:
    """The test model; ``prior``: with a Cu Morse prior (Girifalco-Weizer parameters)."""
    baseline = Morse({"Cu": (0.343, 2.866, 1.359)}, cutoff=6.0) if prior else None
    return GaussianProcess(["Cu"], {"twobody": 4.0, "threebody": 3.0}, baseline=baseline)


def oracle_neb(initial, final) -> tuple[float, list]:
    """The oracle reference: end points relaxed on EMT, then a CI-NEB on EMT; the barrier
    and the band."""
    ends = [initial.copy(), final.copy()]
    for end in ends:
        end.calc = EMT()
        BFGS(end, logfile=None).run(fmax=FMAX)
    images = [ends[0]] + [ends[0].copy() for _ in range(3)] + [ends[1]]
    for image in images:
        image.calc = EMT()
    band = NEB(images, climb=True, method="improvedtangent")
    band.interpolate(mic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert BFGS(band, logfile=None).run(fmax=FMAX, steps=300)
    energies = [im.get_potential_energy() for im in images]
    return max(energies) - energies[0], images


def o_diffusion_endpoints():
    """O hollow-to-hollow on a 3x3x3 Cu(100) slab (a = 3.61 A, bottom two layers fixed), the
    final state one surface lattice vector along x; not relaxed (bench/active_systems.py)."""
    initial = fcc100("Cu", (3, 3, 3), a=3.61, vacuum=6.0)
    initial.set_constraint(FixAtoms(indices=[a.index for a in initial if a.tag > 1]))
    add_adsorbate(initial, "O", 1.2, "hollow")
    final = initial.copy()
    final.positions[-1, 0] += initial.cell[0, 0] / 3
    final.set_constraint(initial.constraints)
    return initial, final


# The settings of bench/active_learning.py's NEB benchmark: fixed hyperparameters (optimised
# on the first few labels the length scales collapse to their bound, and the optimiser's
# path then depends on rounding: on the Cu adatom slab a run with 2 OpenMP threads did not
# converge where 1 thread did), only the special frames per batch, the translation-equivalent
# final state inferred, and Morse parameters fitted to EMT there (Cu: fcc binding curve; O:
# O over the slab's sites, the bonding window).
NEB_HYPERPARAMETERS = {"sigma2": 0.5, "ell2": 1.0, "sigma3": 0.5, "ell3": 1.0, "noise_force": 0.01,
                       "noise_energy": 0.005}
NEB_MORSE = {"Cu": (0.48856, 2.82108, 1.24122), "O": (2.90758, 2.55451, 0.3)}


def test_neb_task_converges_to_the_oracle_barrier(tmp_path):
    initial, final = o_diffusion_endpoints()
    reference, _ = oracle_neb(initial, final)
    task = NEBTask(initial, final, fmax=FMAX, energy_tol=0.01, max_step=0.3, reuse_band=False, skip_std=0.02)
    gp = GaussianProcess(["Cu", "O"], {"twobody": 4.5, "threebody": 3.3}, hyperparameters=NEB_HYPERPARAMETERS,
                         baseline=Morse(NEB_MORSE, cutoff=6.0))
    with ActiveLearner(gp, EMT(), task, tmp_path / "run", FAST, batch_size=1, optimize=False,
                       max_iterations=8) as learner:
        result = learner.run()
    assert result.converged, result.metrics
    errors = result.metrics["energy_errors"]
    assert max(v for v in errors.values() if v is not None) < 0.01
    assert abs(result.task["barrier"] - reference) < 0.02, (result.task, reference)
    assert abs(result.task["reverse_barrier"] - reference) < 0.02
    assert result.oracle_calls <= 0.2 * 61  # the oracle NEB's 61 calls (bench/results/active_learning.json)


def test_neb_skip_std_infers_the_equivalent_end_point(tmp_path):
    """The final state is the initial one translated by a surface lattice vector: with
    ``skip_std`` the oracle never labels it (iteration 0 labels the initial end point only,
    later the batch or the training set determines the final one), and its inferred energy
    is the oracle's there."""
    import json

    initial, final = adatom_endpoints()
    gp = model(prior=True)
    gp.hyperparameters = {"sigma2": 0.5, "ell2": 1.0, "sigma3": 0.5, "ell3": 1.0, "noise_force": 0.01,
                          "noise_energy": 0.005}
    task = NEBTask(initial, final, fmax=FMAX, energy_tol=0.01, max_step=0.2, skip_std=0.02)
    with ActiveLearner(gp, EMT(), task, tmp_path / "run", FAST, batch_size=1, optimize=False,
                       max_iterations=3) as learner:
        result = learner.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["labels"] == 1
    assert all("final" not in r["metrics"].get("labelled_ends", []) for r in records)
    assert all("final" in r["metrics"]["inferred_ends"] for r in records[1:])
    # the saddle and the initial end point at most, per iteration
    assert result.labels <= 1 + 2 * result.iterations
    end = task.labelled_ends[1]
    assert end["inferred"]
    oracle = task.images()[-1]
    assert np.allclose(oracle.positions, end["positions"])
    oracle.calc = EMT()
    assert abs(end["energy"] - oracle.get_potential_energy()) < 0.01
    # and the equivalent initial end point's label (translation: the same energy)
    assert abs(end["energy"] - task.labelled_ends[0]["energy"]) < 0.01


def test_neb_special_queries_are_the_saddle_and_the_relaxed_end_points(tmp_path):
    initial, final = adatom_endpoints()
    gp = model()  # a model that knows the path: trained on the oracle's band and the start
    for frame in [initial, final] + oracle_neb(initial, final)[1]:
        probe = frame.copy()
        probe.calc = EMT()
        gp.add_training_data(probe, forces=True, energy=True)
    gp.train()
    calc = GPCalculator(gp, uncertainty=False)
    task = NEBTask(initial, final, fmax=FMAX, max_step=None)
    pool = task.simulate(calc, tmp_path)
    special = task.special(pool)
    band = task.images()
    assert len(special) == 3 and len(pool) > len(band)
    energies = []
    for image in band:
        image.calc = calc
        energies.append(image.get_potential_energy())
    saddle = 1 + int(np.argmax(energies[1:-1]))
    assert np.allclose(special[0].positions, band[saddle].positions)
    for frame, end in zip(special[1:], (band[0], band[-1])):
        assert np.allclose(frame.positions, end.positions)
        frame.calc = calc
        assert max_force(frame, frame.get_forces(apply_constraint=False)) < FMAX  # relaxed on the model
    # the end points moved: they were relaxed, not taken as given
    assert np.abs(special[1].positions - initial.positions).max() > 0.01


def test_greedy_query_with_several_special_frames(tmp_path):
    """The loop's greedy query conditions on all three NEB special frames before picking
    the fourth frame of the batch."""
    initial, final = adatom_endpoints()
    task = NEBTask(initial, final, fmax=FMAX, energy_tol=1e-6)
    with ActiveLearner(model(), EMT(), task, tmp_path / "run", FAST, batch_size=4, query="greedy",
                       max_iterations=1) as learner:
        result = learner.run()
    assert result.labels == 2 + 4


@pytest.mark.parametrize("target, converges", [(0.5, True), (1e-6, False)])
def test_md_task_stops_by_its_audit_error(tmp_path, target, converges):
    start, _ = adatom_endpoints()
    task = MDTask(start, steps=20, pool_every=5, target_error=target, stop_std=0.3, seed=1)
    with ActiveLearner(model(), EMT(), task, tmp_path / "run", {**FAST, "hyperparameter_iterations": 10},
                       batch_size=2, query="uncertainty", max_iterations=4) as learner:
        result = learner.run()
    assert result.converged is converges
    audit = result.metrics["audit_rmse"]
    assert (audit < target) is converges
    assert result.iterations == (len(task.history) if converges else 4)
    # two per iteration, one when the guard stopped the trajectory at its first snapshot
    assert 1 + result.iterations <= result.labels <= 1 + 2 * result.iterations


def test_md_task_uncertainty_target(tmp_path):
    start, _ = adatom_endpoints()
    task = MDTask(start, steps=20, pool_every=5, target_std=0.1, stop_std=0.5, seed=2)
    with ActiveLearner(model(), EMT(), task, tmp_path / "run", {**FAST, "hyperparameter_iterations": 10},
                       batch_size=2, query="greedy", max_iterations=6) as learner:
        result = learner.run()
    assert result.converged
    assert result.metrics["pool_max_std"] < 0.1
    assert all(h["pool_max_std"] is not None for h in task.history)


def test_md_audit_and_std_look_at_the_atoms_that_move():
    """A fixed atom's force never enters the dynamics and, not trained by default, its
    error and std stay whatever is labelled: they must not hold up the audit, target_std
    or the stop_std guard."""
    from types import SimpleNamespace

    from ase.calculators.singlepoint import SinglePointCalculator

    from otfgp.active import free_atoms
    from otfgp.active.task import IterationData

    start, _ = adatom_endpoints()
    fixed = np.setdiff1d(np.arange(len(start)), free_atoms(start))
    assert fixed.size
    labelled = start.copy()
    forces = np.random.default_rng(0).normal(0.0, 0.3, (len(start), 3))
    labelled.calc = SinglePointCalculator(labelled, forces=forces, energy=0.0)
    predicted = forces.copy()
    predicted[free_atoms(start)] += 0.01  # 0.01 eV/A on every component of the free atoms
    predicted[fixed] += 5.0
    task = MDTask(start, steps=10, pool_every=5, target_error=0.02)
    task.last = {"snapshots": 2, "stopped_by": "steps", "pool_max_std": None}  # as simulate() leaves it
    done, metrics = task.converged(IterationData(1, [], [], [labelled], [SimpleNamespace(forces=predicted)]))
    assert metrics["audit_rmse"] == pytest.approx(0.01, rel=1e-12) and done
    stds = np.full((len(start), 3), 0.05)
    stds[fixed] = 3.0
    stub = SimpleNamespace(predict=lambda atoms, variance: SimpleNamespace(epistemic_force_stds=stds))
    assert task._max_std(stub, start) == pytest.approx(0.05)


def test_bad_task_arguments_are_named():
    initial, final = adatom_endpoints()
    with pytest.raises(ValueError, match="n_images"):
        NEBTask(initial, final, n_images=2)
    with pytest.raises(ValueError, match="same atoms"):
        NEBTask(initial, final[:-1])
    with pytest.raises(ValueError, match="target_std"):
        MDTask(initial, target_std=-1.0)
    with pytest.raises(ValueError, match="fmax must be a positive number, got None"):
        NEBTask(initial, final, fmax=None)  # required, unlike the optional skip_std
    assert NEBTask(initial, final, skip_std=None).skip_std is None
    with pytest.raises(ValueError, match="climb must be true or false"):
        NEBTask(initial, final, climb="false")  # bool("false") turned climbing on
    with pytest.raises(ValueError, match="the same structure"):
        NEBTask(initial, initial.copy())
    with pytest.raises(ValueError, match="multiple of pool_every"):
        MDTask(initial, steps=3, pool_every=5)  # it used to run no step at all


@pytest.mark.parametrize("make_task", [
    lambda: MDTask(adatom_endpoints()[0], steps=10, pool_every=2, seed=1),
    lambda: NEBTask(*adatom_endpoints(), n_images=3, steps=20, relax_steps=20),
])
def test_resume_after_a_failed_label_simulates_the_same_pool(tmp_path, make_task):
    """MD and NEB move their state in simulate(): a failure used to checkpoint the moved
    state, so the resumed iteration simulated another pool, clashed with the labels stored
    for it and could never go on."""
    from otfgp.batch import BatchLabelError

    options = dict(batch_size=2, query="random", max_iterations=1, retries=0, **FAST)

    class Failing:
        def __init__(self, fail_on):
            self.calls, self.fail_on = 0, fail_on

        def __call__(self, atoms):
            self.calls += 1
            if self.calls == self.fail_on:
                raise RuntimeError("injected failure")
            return EMT()

    clean = Failing(0)
    with ActiveLearner(model(), clean, make_task(), tmp_path / "clean", **options) as learner:
        reference = learner.run()
    broken = Failing(reference.labels)  # the last iteration's last label
    with pytest.raises(BatchLabelError):
        with ActiveLearner(model(), broken, make_task(), tmp_path / "run", **options) as learner:
            learner.run()
    again = Failing(0)
    with ActiveLearner(model(), again, make_task(), tmp_path / "run", resume=True, **options) as learner:
        result = learner.run()
    assert result.labels == reference.labels and again.calls == 1  # only the failed label is redone


class _BreaksDown(EMT):
    """EMT until its ``after``-th evaluation, then the core's error for a structure the
    model cannot evaluate (what an early model's collapsed trajectory gives)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.evaluations, self.evaluated = after, 0, []

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        from otfgp import _core

        self.evaluations += 1
        if self.evaluations > self.after:
            raise _core.InputError("atoms 0 and 1 are 0.4 Angstrom apart (overlapping atoms)")
        super().calculate(atoms, properties, system_changes)
        self.evaluated.append(np.array(self.atoms.positions))


@pytest.mark.parametrize("after, snapshots", [(3, 0), (13, 2)])
def test_md_breakdown_puts_the_last_evaluated_structure_in_the_pool(tmp_path, after, snapshots):
    """A window the model cannot finish ends its pool with the last structure the model
    evaluated (where it is most wrong), and the next window starts from the last regular
    snapshot: a breakdown before the first snapshot used to leave the start as the whole
    pool, so every later window replayed the same collision and labelled the same frame."""
    start, _ = adatom_endpoints()
    task = MDTask(start, steps=20, pool_every=5, seed=1)
    first = task.positions.copy()
    calc = _BreaksDown(after)
    pool = task.simulate(calc, tmp_path)
    assert task.last["stopped_by"].startswith("model error")
    assert len(pool) == snapshots + 1
    np.testing.assert_array_equal(pool[-1].positions, calc.evaluated[-1])  # the step before the breakdown
    assert not np.allclose(pool[-1].positions, first)
    if snapshots:  # continues from the last regular snapshot, with its momenta
        np.testing.assert_array_equal(task.positions, pool[snapshots - 1].positions)
    else:  # none: from where the window started
        np.testing.assert_array_equal(task.positions, first)
