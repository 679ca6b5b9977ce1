#!/usr/bin/env python3
"""uMLIP fine-tuning on Al against Quantum ESPRESSO (issue 14, item 2): the bias of a
universal MLIP prior and its removal by iterations of simulate-label-refit.

Prior: CHGNet's pretrained model (the ``"chgnet"`` baseline, otfgp[umlip]). Model: a
GaussianProcess with that baseline (Delta-learning: the GP learns pw.x - CHGNet, energies
and forces), trained by ``otfgp.active.ActiveLearner`` on an ``MDTask``: Langevin MD of the
``--cell``-atom fcc Al cell at ``--temperature`` K with prior + GP, ``--steps`` steps per
iteration, a snapshot every ``--pool-every`` steps; ``--batch`` frames per iteration picked
greedily from the snapshots (``query = "greedy"``), labelled by pw.x, the model retrained
(hyperparameters optimised). Iteration 0 labels the MD's starting frame (a rattled cell).

Evaluated before the loop (the prior alone) and after every iteration (prior + GP):

- held-out frames: ``--frames`` cells (``--cell 4``: the 4-atom cubic cell, k-points 4x4x4;
  ``--cell 8``: 2x1x1 of it, k-points 2x4x4), every coordinate displaced uniformly within
  +-``--amplitude`` A (seeded, independent of the loop's frames), labelled by pw.x with the
  settings of examples/otf_al.py (docs/labellers.md: Al.pz-vbc.UPF, LDA, ecutwfc 15 Ry,
  Marzari-Vanderbilt smearing 0.1 Ry);
- force MAE (eV/A) over all components;
- energy MAE (eV/atom) after removing the mean per-atom offset over the frames (CHGNet's
  energy zero, MP-compatible PBE, and the pseudopotential total energy of pw.x differ by a
  constant; prior + GP absorbs it in its per-species energy offset); the mean offset too;
- the lattice constant: a Birch-Murnaghan fit (ase.eos) of the 4-atom cubic cell's energy at
  ``--scan`` points within +-4 % of 4.05 A, of the model against pw.x's.

The per-iteration evaluation runs the learner with ``max_iterations`` = 0, 1, 2, ... and
``resume=True`` on the same run directory (the documented way to extend a run), evaluating
the model after each.

``--prior none`` runs the same loop with a bare GP (no baseline): what the prior buys.
``--volumes 1.0`` runs the MD at one volume only (see ``VolumesMD``).
``--oracle emt`` labels with ASE's EMT instead of pw.x (a minute; a smoke run of this script).

    .venv/bin/python bench/umlip_finetune.py [--iterations 8] [--batch 3] [--output bench/results/umlip_finetune.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.eos import EquationOfState

from otfgp import GaussianProcess
from otfgp.active import ActiveLearner
from otfgp.active.md import MDTask, langevin
from otfgp.baselines import CalculatorBaseline
from benchinfo import cpu_model, git_commit, modified_paths, otfgp_version

A0 = 4.05
QE = {"pseudopotentials": {"Al": "Al.pz-vbc.UPF"}, "ecutwfc": 15, "smearing": "mv", "degauss": 0.1}
EV_PER_A3_IN_GPA = 160.21766208


def base_cell(cell: int) -> Atoms:
    return bulk("Al", "fcc", a=A0, cubic=True).repeat((1, 1, 1) if cell == 4 else (2, 1, 1))


def rattled(n: int, cell: int, amplitude: float, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = base_cell(cell)
        a.positions += rng.uniform(-amplitude, amplitude, a.positions.shape)
        frames.append(a)
    return frames


def kpts_of(cell: int) -> tuple[int, int, int]:
    return (4, 4, 4) if cell == 4 else (2, 4, 4)


def make_oracle(name: str, workdir: Path) -> Callable[[Atoms], Any]:
    """``oracle(atoms)`` -> a fresh labeller for that structure (pw.x: its own directory)."""
    if name == "emt":
        from ase.calculators.emt import EMT
        return lambda atoms: EMT()
    from otfgp.labellers import espresso_calculator

    counter = iter(range(10 ** 6))
    return lambda atoms: espresso_calculator(workdir / f"pw_{next(counter)}", kpts=kpts_of(len(atoms)), **QE)


def loop_labeller(name: str, cell: int) -> Any:
    """The loop's labeller specification (each frame runs in its job directory)."""
    if name == "emt":
        return "emt"
    return {"type": "espresso", "kpts": list(kpts_of(cell)), **QE}


def label(atoms: Atoms, calc: Any) -> dict[str, Any]:
    a = atoms.copy()
    a.calc = calc
    return {"energy": float(a.get_potential_energy()), "forces": np.array(a.get_forces())}


def scan_cells(points: int) -> list[Atoms]:
    """The 4-atom cubic cell at ``points`` lattice constants within +-4 % of A0."""
    return [bulk("Al", "fcc", a=A0 * s, cubic=True) for s in np.linspace(0.96, 1.04, points)]


def lattice_constant(cells: list[Atoms], energies: list[float]) -> dict[str, float]:
    """Birch-Murnaghan fit of E(V) of the cubic cells."""
    eos = EquationOfState([a.get_volume() for a in cells], energies, eos="birchmurnaghan")
    v0, _, b = eos.fit()
    return {"a": float(v0 ** (1 / 3)), "bulk_modulus_GPa": float(b * EV_PER_A3_IN_GPA)}


def errors(pred: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, float]:
    n = np.array([len(r["forces"]) for r in ref])
    de = np.array([p["energy"] - r["energy"] for p, r in zip(pred, ref)]) / n
    force_mae = np.mean(np.concatenate([np.abs(p["forces"] - r["forces"]).ravel() for p, r in zip(pred, ref)]))
    return {"force_mae_eV_per_A": float(force_mae),
            "energy_mae_eV_per_atom_offset_removed": float(np.mean(np.abs(de - de.mean()))),
            "energy_offset_eV_per_atom": float(de.mean())}


def evaluate(predict: Callable[[Atoms], dict[str, Any]], frames: list[Atoms], ref: list[dict[str, Any]],
             cells: list[Atoms], lattice_ref: dict[str, float]) -> dict[str, Any]:
    """Held-out errors and the lattice constant of a model given as ``predict(atoms)``."""
    out = errors([predict(a) for a in frames], ref)
    lat = lattice_constant(cells, [predict(a)["energy"] for a in cells])
    out["lattice_constant_A"] = lat["a"]
    out["lattice_constant_error_A"] = lat["a"] - lattice_ref["a"]
    out["bulk_modulus_GPa"] = lat["bulk_modulus_GPa"]
    return out


class VolumesMD:
    """MD at several fixed volumes as one active-learning task (``otfgp.active.Task``):
    one :class:`otfgp.active.md.MDTask` per lattice constant, each continuing its own
    trajectory; the pool is all their snapshots, so the greedy batch can pick from any
    volume. Why: NVT frames at one volume tell the GP nothing about how the energy changes
    with density, which is what the lattice constant measures (measured with the EMT
    oracle: one volume leaves prior + GP's E(V) curvature 3-4x too stiff). Iteration 0
    labels only the first task's starting frame."""

    name = "md"

    def __init__(self, tasks: list[MDTask]) -> None:
        self.tasks = tasks

    def initial_frames(self) -> list[Atoms]:
        return self.tasks[0].initial_frames()

    def simulate(self, calc: Any, workdir: Path) -> list[Atoms]:
        pool: list[Atoms] = []
        for i, task in enumerate(self.tasks):
            sub = Path(workdir) / f"volume_{i}"
            sub.mkdir(parents=True, exist_ok=True)
            pool += task.simulate(calc, sub)
        return pool

    def special(self, pool: Any) -> list[Atoms]:
        return []

    def converged(self, data: Any) -> tuple[bool, dict[str, Any]]:
        results = [task.converged(data) for task in self.tasks]  # the audit is over the whole batch
        metrics = dict(results[0][1])
        metrics["snapshots"] = sum(m.get("snapshots") or 0 for _, m in results)
        metrics["stopped_by"] = [m.get("stopped_by") for _, m in results]
        return all(ok for ok, _ in results), metrics

    def state(self) -> dict[str, Any]:
        return {"tasks": [task.state() for task in self.tasks]}

    def restore(self, state: dict[str, Any]) -> None:
        for task, sub in zip(self.tasks, state["tasks"], strict=True):
            task.restore(sub)

    def result(self) -> dict[str, Any]:
        return {"volumes": [task.result() for task in self.tasks]}


def gp_predict(model: GaussianProcess) -> Callable[[Atoms], dict[str, Any]]:
    def predict(atoms: Atoms) -> dict[str, Any]:
        p = model.predict(atoms, variance=False)
        return {"energy": float(p.energy), "forces": np.asarray(p.forces)}
    return predict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10, help="held-out frames")
    p.add_argument("--cell", type=int, choices=(4, 8), default=4, help="atoms of the held-out and MD cells")
    p.add_argument("--amplitude", type=float, default=0.15, help="held-out displacement bound (A)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan", type=int, default=7, help="lattice-constant scan points")
    p.add_argument("--iterations", type=int, default=8, help="simulate-label-refit iterations after iteration 0")
    p.add_argument("--batch", type=int, default=3, help="frames labelled per iteration")
    p.add_argument("--steps", type=int, default=100, help="MD steps per iteration")
    p.add_argument("--pool-every", type=int, default=5, help="MD steps between pool snapshots")
    p.add_argument("--temperature", type=float, default=800.0, help="Langevin temperature (K)")
    p.add_argument("--volumes", default="1.0,0.97,1.03",
                   help="lattice-constant scales of the MD cells (comma-separated; 1.0: a = 4.05 A); "
                        "--steps is split among them")
    p.add_argument("--start-amplitude", type=float, default=0.1, help="displacement bound of the MD's first frame (A)")
    p.add_argument("--twobody", type=float, default=5.0, help="GP two-body cutoff (A)")
    p.add_argument("--threebody", type=float, default=4.0, help="GP three-body cutoff (A)")
    p.add_argument("--oracle", choices=("qe", "emt"), default="qe")
    p.add_argument("--prior", choices=("chgnet", "none"), default="chgnet",
                   help="the model's baseline (none: a bare GP through the same loop, an ablation; "
                        "'prior_alone' is CHGNet's either way)")
    p.add_argument("--run-dir", default=None, help="keep the active-learning run here (default: a temporary directory)")
    p.add_argument("--output", default=None, help="results JSON (default: print only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    prior = CalculatorBaseline(spec="chgnet")
    t_load = time.perf_counter() - t0
    wall: dict[str, Any] = {"prior_load": t_load}
    with tempfile.TemporaryDirectory(prefix="umlip_") as tmp:
        tmp_path = Path(tmp)
        oracle = make_oracle(args.oracle, tmp_path / "held_out")
        frames = rattled(args.frames, args.cell, args.amplitude, args.seed)
        cells = scan_cells(args.scan)
        t = time.perf_counter()
        ref = [label(a, oracle(a)) for a in frames]
        lat_oracle = lattice_constant(cells, [label(a, oracle(a))["energy"] for a in cells])
        wall["oracle_held_out_and_scan"] = time.perf_counter() - t
        t = time.perf_counter()
        prior_alone = evaluate(lambda a: prior.evaluate(a, stress=False), frames, ref, cells, lat_oracle)
        wall["prior_evaluation"] = time.perf_counter() - t
        print(f"{args.oracle} lattice constant {lat_oracle['a']:.4f} A; prior alone: {json.dumps(prior_alone)}", flush=True)

        # the loop: MD from a rattled cell (seed + 1: not a held-out frame)
        start = rattled(1, args.cell, args.start_amplitude, args.seed + 1)[0]
        model = GaussianProcess(["Al"], {"twobody": args.twobody, "threebody": args.threebody},
                                baseline=prior if args.prior == "chgnet" else None)
        scales = [float(v) for v in args.volumes.split(",")]
        steps = max(args.pool_every, args.steps // len(scales))
        tasks = []
        for i, scale in enumerate(scales):
            atoms = start.copy()
            atoms.set_cell(atoms.cell * scale, scale_atoms=True)
            tasks.append(MDTask(atoms, steps=steps, dynamics=langevin(args.temperature, seed=args.seed + i),
                                temperature=args.temperature, pool_every=args.pool_every, seed=args.seed + i))
        task = VolumesMD(tasks)
        run = Path(args.run_dir) if args.run_dir else tmp_path / "run"
        options = {"batch_size": args.batch, "query": "greedy", "add_energy": True, "seed": args.seed,
                   "keep_checkpoints": 1}
        iterations = []
        for k in range(args.iterations + 1):
            t = time.perf_counter()
            with ActiveLearner(model, loop_labeller(args.oracle, args.cell), task, run, options,
                               resume=k > 0, max_iterations=k) as learner:
                result = learner.run()
                model = learner.model
            t_loop = time.perf_counter() - t
            t = time.perf_counter()
            row = {"iteration": k, "oracle_calls": result.oracle_calls, "labels": result.labels,
                   "training_environments": model.n_training_environments,
                   **evaluate(gp_predict(model), frames, ref, cells, lat_oracle),
                   "md": {key: result.metrics.get(key) for key in ("snapshots", "stopped_by", "audit_rmse")},
                   "hyperparameters": dict(model.hyperparameters),
                   "time_s": {"loop": t_loop, "evaluation": time.perf_counter() - t}}
            iterations.append(row)
            print(f"iteration {k}: calls {row['oracle_calls']}, force MAE {row['force_mae_eV_per_A']:.4f} eV/A, "
                  f"energy MAE {1000 * row['energy_mae_eV_per_atom_offset_removed']:.2f} meV/atom, "
                  f"a {row['lattice_constant_A']:.4f} A, {t_loop:.0f} s", flush=True)
        wall["loop_and_evaluation"] = sum(r["time_s"]["loop"] + r["time_s"]["evaluation"] for r in iterations)
    wall["total"] = time.perf_counter() - t0
    result_doc = {
        "benchmark": "umlip_finetune",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "git_commit": git_commit(), "modified": modified_paths(),
        "otfgp_version": otfgp_version(),
        "settings": {**vars(args), "qe": QE if args.oracle == "qe" else None},
        "prior": args.prior,
        "held_out": {"frames": args.frames, "atoms_per_frame": len(frames[0])},
        "lattice_constant_oracle": lat_oracle,
        "prior_alone": prior_alone,
        "iterations": iterations,
        "wall_time_s": wall,
    }
    print(json.dumps(result_doc, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result_doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
