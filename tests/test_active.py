"""The offline active-learning loop (otfgp.active): a relaxation converges on the oracle's
forces, every oracle call is counted, a run interrupted by a failing labeller resumes to
the same result without losing a label, and queries never pick a frame twice."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from otfgp import GaussianProcess
from otfgp.active import ActiveLearner, ActiveOptions, RelaxTask, free_atoms, max_force
from otfgp.batch import BatchLabelError
from otfgp.learning import label
from otfgp.run_dir import RunDirError

FMAX = 0.05
FAST = {"hyperparameter_iterations": 20}


def adatom_slab(seed: int = 0):
    """A 2x2x3 Cu(100) slab with a Cu adatom at the hollow site, bottom layer fixed, rattled."""
    slab = fcc100("Cu", (2, 2, 3), vacuum=5.0)
    add_adsorbate(slab, "Cu", 1.8, "hollow")
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 3))
    slab.rattle(0.05, seed=seed)
    return slab


def model() -> GaussianProcess:
    return GaussianProcess(["Cu"], {"twobody": 4.0, "threebody": 3.0})


class Counting:
    """An EMT labeller f(atoms) that counts its calls and fails on the calls listed."""

    def __init__(self, fail_on=()):
        self.calls = 0
        self.fail_on = set(fail_on)

    def __call__(self, atoms):
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"injected failure on call {self.calls}")
        return EMT()


def oracle_fmax(atoms) -> float:
    probe = atoms.copy()
    probe.calc = EMT()
    return max_force(probe, probe.get_forces(apply_constraint=False))


def test_relaxation_converges_on_the_oracle_and_counts_its_calls(tmp_path):
    slab = adatom_slab()
    start = oracle_fmax(slab)
    labeller = Counting()
    task = RelaxTask(slab, fmax=FMAX)
    with ActiveLearner(model(), labeller, task, tmp_path, **FAST) as learner:
        result = learner.run()
    assert start > 5 * FMAX  # the start is far from relaxed
    assert result.converged
    assert oracle_fmax(slab) < FMAX  # the relaxed structure, checked afresh on the oracle
    assert slab.constraints and np.allclose(slab.positions[slab.get_tags() == 3],
                                            adatom_slab().positions[slab.get_tags() == 3])  # fixed stay
    assert result.oracle_calls == labeller.calls == result.labels
    assert learner.model.n_training_environments == result.labels * len(free_atoms(slab))  # free atoms only
    assert result.oracle_calls < 8  # ASE on this oracle: BFGS 17 calls, GPMin 8
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(result.iterations + 1))
    assert records[-1]["oracle_calls"] == result.oracle_calls and records[-1]["converged"]
    assert records[-1]["metrics"]["oracle_fmax"] == pytest.approx(result.task["fmax"])
    assert len(list((tmp_path / "labels").glob("iteration_*/frame_*/labelled.traj"))) == result.labels
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["oracle_calls"] == result.oracle_calls


def test_failed_attempts_are_oracle_calls(tmp_path):
    labeller = Counting(fail_on={2})  # the first try of iteration 1 fails, its retry succeeds
    with ActiveLearner(model(), labeller, RelaxTask(adatom_slab(), fmax=FMAX), tmp_path, retries=1,
                       max_iterations=2, **FAST) as learner:
        result = learner.run()
    assert result.failed_attempts == 1
    assert result.oracle_calls == labeller.calls == result.labels + 1


def test_resume_after_a_labeller_failure_gives_the_uninterrupted_result(tmp_path):
    clean = Counting()
    reference_task = RelaxTask(adatom_slab(), fmax=FMAX)
    with ActiveLearner(model(), clean, reference_task, tmp_path / "clean", **FAST) as learner:
        reference = learner.run()
    assert reference.iterations >= 2  # the interruption below (iteration 2) is part of the run

    broken = Counting(fail_on={3})  # iteration 2's label
    interrupted = RelaxTask(adatom_slab(), fmax=FMAX)
    with pytest.raises(BatchLabelError, match="injected failure"):
        with ActiveLearner(model(), broken, interrupted, tmp_path / "run", retries=0, **FAST) as learner:
            learner.run()
    records = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(records) == 2  # iterations 0 and 1 are done and checkpointed

    resumed_labeller = Counting()
    task = RelaxTask(adatom_slab(), fmax=FMAX)
    with ActiveLearner(model(), resumed_labeller, task, tmp_path / "run", resume=True, retries=0,
                       **FAST) as learner:
        assert learner.iteration == 1 and learner.labels == 2
        result = learner.run()
    assert result.converged and result.iterations == reference.iterations
    np.testing.assert_allclose(task.atoms.positions, reference_task.atoms.positions, atol=1e-9)
    assert result.task["energy"] == pytest.approx(reference.task["energy"], abs=1e-9)
    assert result.labels == reference.labels  # no label lost, none computed twice
    assert broken.calls - 1 + resumed_labeller.calls == reference.labels  # each label computed once
    assert result.failed_attempts == 1 and result.oracle_calls == reference.oracle_calls + 1
    iterations = [json.loads(r)["iteration"] for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert iterations == list(range(reference.iterations + 1))


def test_a_directory_holding_a_run_needs_resume(tmp_path):
    with ActiveLearner(model(), EMT(), RelaxTask(adatom_slab(), fmax=FMAX), tmp_path, max_iterations=0,
                       **FAST) as learner:
        learner.run()
    with pytest.raises(RunDirError, match="resume"):
        ActiveLearner(model(), EMT(), RelaxTask(adatom_slab(), fmax=FMAX), tmp_path)


@pytest.mark.parametrize("query", ["random", "uncertainty", "greedy"])
def test_queries_never_pick_a_frame_twice(tmp_path, query):
    slab = adatom_slab()
    with ActiveLearner(model(), EMT(), RelaxTask(slab, fmax=FMAX), tmp_path, max_iterations=0, batch_size=4,
                       query=query, **FAST) as learner:
        learner.run()  # iteration 0 only: a trained model
        a, b = slab.copy(), slab.copy()
        b.positions[-1] += [0.3, 0.0, 0.2]
        c = slab.copy()
        c.positions[-1] += [0.0, 0.3, 0.4]
        special = c.copy()
        pool = [a, a.copy(), b, b.copy(), c, a.copy()]  # duplicates, and the special frame itself
        picked = learner.query(pool, [special], iteration=1)
    assert len(picked) == 2  # batch 4 - 1 special, but only two distinct non-special frames
    assert sorted(picked) == [0, 2]  # the first copy of each


def test_label_keeps_the_forces_of_fixed_atoms():
    slab = adatom_slab()
    labelled = label(slab, EMT())
    raw = labelled.get_forces(apply_constraint=False)
    fixed = np.setdiff1d(np.arange(len(slab)), free_atoms(slab))
    assert len(fixed) == 4
    assert np.abs(raw[fixed]).max() > 1e-3  # the labeller's forces, not zeros


@pytest.mark.parametrize("bad, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"query": "best"}, "query"),
    ({"train_atoms": "fixed"}, "train_atoms"),
    ({"on_failure": "ignore"}, "on_failure"),
    ({"max_iterations": -1}, "max_iterations"),
    ({"label_max_force": -1.0}, "label_max_force"),
    ({"bogus": 1}, "unknown active-learning options"),
    ({"seed": -1}, "seed must be a non-negative integer"),  # numpy's generators refuse it after a label
])
def test_bad_options_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        ActiveOptions.from_dict(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"fmax": 0.0}, "fmax"),
    ({"optimizer": "newton"}, "optimizer"),
    ({"steps": 0}, "steps"),
    ({"max_step": -0.1}, "max_step"),
    ({"optimizer_options": {"maxstp": 0.1}}, "optimizer_options .* do not fit the bfgs optimizer"),
])
def test_bad_relax_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RelaxTask(adatom_slab(), **kwargs)


# ---------------------------------------------------------------------- the command line
def write_config(tmp_path, active: str, extra: str = "") -> str:
    from ase.io import write

    write(tmp_path / "slab.traj", adatom_slab())
    path = tmp_path / "active.toml"
    path.write_text(f"""
[structure]
file = "slab.traj"

[model]
species = ["Cu"]
twobody = 4.0
threebody = 3.0
{extra}
[labeller]
type = "emt"

[active]
{active}
""")
    return str(path)


def test_cli_relaxes_and_resumes_a_finished_run(tmp_path, capsys):
    from otfgp.cli import main

    run = tmp_path / "run"
    cfg = write_config(tmp_path, f'task = "relax"\nfmax = {FMAX}\nhyperparameter_iterations = 20\n'
                                 f'output_dir = "{run}"')
    assert main(["active", cfg]) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["converged"] and result["task"]["fmax"] < FMAX
    from ase.io import read

    assert read(run / "initial.traj").constraints  # the structure file's FixAtoms came through
    assert "oracle calls" in capsys.readouterr().out
    assert main(["active", "--resume", str(run)]) == 0  # finished: nothing more to label
    assert json.loads((run / "result.json").read_text())["oracle_calls"] == result["oracle_calls"]
    assert main(["active", cfg]) == 2  # the directory holds a run
    # run_config.json is the only place to give a finished run more iterations: a bad edit is
    # a config error naming it, not a traceback
    saved = json.loads((run / "run_config.json").read_text())
    for key, value, match in (("max_iterations", "40", "max_iterations must be a non-negative integer"),
                              ("bogus", 1, "unknown key active.bogus")):
        edited = {**saved, "active": {**saved["active"], key: value}}
        (run / "run_config.json").write_text(json.dumps(edited))
        assert main(["active", "--resume", str(run)]) == 2
        assert match in capsys.readouterr().err


@pytest.mark.parametrize("active, match", [
    ('task = "dance"', "active.task must be one of"),
    ('task = "relax"\nbogus = 1', "unknown key active.bogus"),
    ('task = "relax"\nfmax = -0.1', "active.fmax must be > 0"),
    ('task = "relax"\noptimizer = "newton"', "active.optimizer 'newton' unknown"),
    ('task = "relax"\nquery = "best"', "query must be one of"),
    ('task = "relax"\nbatch_size = 0', "batch_size must be a positive integer"),
    ('task = "relax"\nworkers = 0', "active.workers must be >= 1"),
])
def test_cli_names_the_bad_key(tmp_path, capsys, active, match):
    from otfgp.cli import main

    assert main(["active", write_config(tmp_path, active)]) == 2
    assert match in capsys.readouterr().err


def test_cli_config_needs_every_section(tmp_path, capsys):
    from otfgp.cli import main

    path = tmp_path / "bad.toml"
    path.write_text('[labeller]\ntype = "emt"\n[active]\ntask = "relax"\n')
    assert main(["active", str(path)]) == 2
    assert "missing section [structure]" in capsys.readouterr().err


def test_anchored_surface_has_the_oracle_forces_at_the_anchor_and_is_conservative():
    from otfgp.active.relax import AnchoredCalculator

    slab = adatom_slab()
    labelled = label(slab, EMT())
    gp = model()
    gp.add_training_data(labelled, forces=labelled.get_forces(apply_constraint=False), atom_indices=free_atoms(slab))
    gp.train(optimize=False)
    from otfgp import GPCalculator

    oracle = labelled.get_forces(apply_constraint=False)
    calc = AnchoredCalculator(GPCalculator(gp, uncertainty=False), slab, oracle)
    probe = slab.copy()
    probe.set_constraint()
    probe.calc = calc
    np.testing.assert_allclose(probe.get_forces(), oracle, atol=1e-10)
    probe.positions[-1] += [0.05, -0.03, 0.02]
    forces = probe.get_forces()
    h = 1e-4
    for axis in range(3):  # F = -dE/dx on the moved adatom
        plus, minus = probe.copy(), probe.copy()
        plus.positions[-1, axis] += h
        minus.positions[-1, axis] -= h
        plus.calc = minus.calc = calc
        e_plus = plus.get_potential_energy()
        e_minus = minus.get_potential_energy()
        assert forces[-1, axis] == pytest.approx(-(e_plus - e_minus) / (2 * h), abs=1e-5)


def test_a_batch_labelled_through_a_process_pool(tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    slab = adatom_slab()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        with ActiveLearner(model(), "emt", RelaxTask(slab, fmax=FMAX), tmp_path, batch_size=3, query="greedy",
                           max_iterations=2, executor=pool, **FAST) as learner:
            result = learner.run()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records[1:]] == [3] * result.iterations  # predicted minimum + 2 queried
    assert all(len(set(r["queried"])) == 2 for r in records[1:])
    assert result.oracle_calls == result.labels == 1 + 3 * result.iterations
    frames = sorted((tmp_path / "labels" / "iteration_0001").glob("frame_*/labelled.traj"))
    assert len(frames) == 3


@pytest.mark.parametrize("break_it, match", [
    (lambda a: a.positions.__setitem__((3, 0), np.nan), "position of atom 3 is not finite"),
    (lambda a: a.set_constraint(FixAtoms(indices=range(len(a)))), "fix every atom"),
])
def test_starting_structures_that_would_cost_oracle_calls_first(break_it, match):
    """A NaN position failed inside the labeller (retries included); a slab with every atom
    fixed spent a call and reported convergence with nothing trained."""
    atoms = adatom_slab()
    break_it(atoms)
    with pytest.raises(ValueError, match=match):
        RelaxTask(atoms)


def test_an_iteration_0_without_labels_is_redone_on_resume(tmp_path):
    """With on_failure="skip" the only frame of iteration 0 failing left an untrained model
    checkpointed as done: iteration 1 crashed inside the optimiser, and no resume recovered."""
    broken = Counting(fail_on={1, 2})
    with pytest.raises(BatchLabelError, match="injected failure"):
        with ActiveLearner(model(), broken, RelaxTask(adatom_slab(), fmax=FMAX), tmp_path / "run",
                           on_failure="skip", retries=1, **FAST) as learner:
            learner.run()
    fixed = Counting()
    with ActiveLearner(model(), fixed, RelaxTask(adatom_slab(), fmax=FMAX), tmp_path / "run",
                       on_failure="skip", resume=True, **FAST) as learner:
        assert learner.iteration == -1  # iteration 0 is not done
        result = learner.run()
    assert result.converged and result.failed_attempts == 2 and fixed.calls == result.labels


def test_reused_labels_join_the_energy_history_on_resume(tmp_path):
    """A label stored by the interrupted run was left out of the label checks' energy
    history of the resumed one, which then judged later labels against fewer."""
    from otfgp.batch import label_batch
    from otfgp.label_checks import LabelChecks
    from otfgp.learning import LearningOptions

    from concurrent.futures import ThreadPoolExecutor

    frames = [adatom_slab(seed) for seed in range(2)]
    with ThreadPoolExecutor(1) as pool:
        label_batch(frames, "emt", tmp_path / "batch", executor=pool)
        checks = LabelChecks(LearningOptions(), "emt", tmp_path)
        again = label_batch(frames, "emt", tmp_path / "batch", executor=pool, checks=checks)
    assert sorted(again.reused) == [0, 1]
    (key, seen), = checks.energy_ranges.items()
    energies = [f.get_potential_energy() / len(f) for f in again.frames]
    assert (seen.low, seen.high) == pytest.approx((min(energies), max(energies)), rel=1e-12)


def test_a_rejected_label_is_checked_again_on_resume_not_paid_for_twice(tmp_path):
    """An honest label rejected by a z-score test too strict for the model (iteration 1) is,
    after a resume with the test loosened, learnt from its quarantined copy: the resumed run
    is the uninterrupted one, and the rejected call counts once, as a label."""
    clean = Counting()
    reference_task = RelaxTask(adatom_slab(), fmax=FMAX)
    with ActiveLearner(model(), clean, reference_task, tmp_path / "clean", **FAST) as learner:
        reference = learner.run()
    strict = Counting()
    with pytest.raises(BatchLabelError, match="label_max_z"):
        with ActiveLearner(model(), strict, RelaxTask(adatom_slab(), fmax=FMAX), tmp_path / "run",
                           label_max_z=1e-3, label_z_min_error=0.0, **FAST) as learner:
            learner.run()
    assert strict.calls == 2  # iteration 0's label, then iteration 1's, rejected
    assert (tmp_path / "run" / "labels" / "iteration_0001" / "quarantine" / "frame_0000.traj").exists()
    resumed_labeller = Counting()
    task = RelaxTask(adatom_slab(), fmax=FMAX)
    with ActiveLearner(model(), resumed_labeller, task, tmp_path / "run", resume=True, label_max_z=50.0,
                       label_z_min_error=1.0, **FAST) as learner:
        result = learner.run()
    assert resumed_labeller.calls == reference.labels - 2  # iteration 1's label was not computed again
    assert result.labels == reference.labels and result.failed_attempts == 0
    assert result.oracle_calls == reference.oracle_calls == strict.calls + resumed_labeller.calls
    np.testing.assert_allclose(task.atoms.positions, reference_task.atoms.positions, atol=1e-9)


def test_a_kill_after_a_skipped_failure_keeps_its_call_counted(tmp_path, monkeypatch):
    """With on_failure = "skip" the failed calls of an iteration were checkpointed only with
    the iteration: a kill while it trained forgot them, and the resumed run counted fewer
    oracle calls than the labeller made."""
    import otfgp.active.loop as loop

    labeller = Counting(fail_on={2})  # iteration 1's first label fails (no retry) and is skipped
    killed = RuntimeError("killed while training (simulated)")

    def kill(*args, **kwargs):
        raise killed

    with ActiveLearner(model(), labeller, RelaxTask(adatom_slab(), fmax=FMAX), tmp_path / "run", retries=0,
                       on_failure="skip", max_iterations=2, batch_size=2, query="random", **FAST) as learner:
        learner._iterate(0)
        monkeypatch.setattr(loop, "retrain", kill)
        with pytest.raises(RuntimeError, match="simulated"):
            learner._iterate(1)
    monkeypatch.undo()
    assert labeller.calls == 3  # the failed one and the other frame of the batch
    resumed = Counting()
    with ActiveLearner(model(), resumed, RelaxTask(adatom_slab(), fmax=FMAX), tmp_path / "run", resume=True,
                       retries=0, on_failure="skip", max_iterations=2, batch_size=2, query="random",
                       **FAST) as learner:
        result = learner.run()
    assert result.failed_attempts == 1
    assert result.oracle_calls == labeller.calls + resumed.calls  # every call counted once
