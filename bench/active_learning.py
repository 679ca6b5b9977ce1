#!/usr/bin/env python3
"""Offline active learning (otfgp.active) against ASE's optimizers, with EMT as the oracle.

One function per benchmark, each writing its own section of the results JSON (a run with
``--only`` keeps the other sections of an existing file):

- ``relax``: C on Cu(100). A 3x3x4 Cu(100) slab (``ase.build.fcc100``, 6 A of vacuum each
  side), C at the hollow site 1.2 A above the surface, the bottom two layers fixed, every
  atom rattled by 0.05 A (``Atoms.rattle(0.05, seed)``, seeds 0-2), fmax 0.03 and 0.05 eV/A.
  In the same run: ASE's BFGS, FIRE and GPMin on the oracle (oracle calls = EMT evaluations
  of distinct geometries, final energy), then :class:`otfgp.active.ActiveLearner` with
  :class:`otfgp.active.RelaxTask` from the one labelled starting frame (its label counts),
  without a prior and with a Morse prior (:class:`otfgp.baselines.Morse`, per-element Cu
  and C parameters fitted here to EMT; see :func:`fit_morse`). Targets: fewer oracle calls
  than GPMin, final energy within 2 meV of the oracle-BFGS minimum (BFGS to fmax 0.001
  from the same start; the energy difference to BFGS at the same fmax is reported too).
  ``--ablation unanchored no_trust_radius`` adds the loop relaxing on the model's own
  surface (``anchor = False``) and without a trust radius (``max_step = None``).

    .venv/bin/python bench/active_learning.py [--only relax] [--seeds 0 1 2] [--output FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import cpu_model, git_commit, modified_paths, otfgp_version  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "active_learning.json"

# ---------------------------------------------------------------------- the relaxation
RELAX_FMAX = (0.03, 0.05)
RELAX_SEEDS = (0, 1, 2)
MORSE_CUTOFF = 6.0  # A
# The model of the active loop: cutoffs of a Cu nearest-neighbour shell (3-body) and the
# second/third shells (2-body).
RELAX_MODEL = {"species": ["Cu", "C"], "cutoffs": {"twobody": 5.0, "threebody": 3.5}}
RELAX_OPTIONS = {"batch_size": 1, "hyperparameter_iterations": 50, "max_iterations": 30}
RELAX_TASK = {"optimizer": "bfgs", "max_step": 0.5, "anchor": True}
TIGHT_FMAX = 0.001  # eV/A: the oracle-BFGS minimum the final energies are compared with
# --ablation NAME: the loop with one setting of RELAX_TASK changed, without and with the prior
ABLATIONS = {"unanchored": {"anchor": False},  # relax on the model's own surface
             "no_trust_radius": {"max_step": None}}  # no limit on a model relaxation's displacement


def c_on_cu100(seed: int):
    """The starting structure of the relaxation benchmark (see the module docstring)."""
    from ase.build import add_adsorbate, fcc100
    from ase.constraints import FixAtoms

    slab = fcc100("Cu", (3, 3, 4), vacuum=6.0)
    add_adsorbate(slab, "C", 1.2, "hollow")
    slab.set_constraint(FixAtoms(mask=slab.get_tags() >= 3))  # tags 3, 4: the bottom two layers
    slab.rattle(0.05, seed=seed)
    return slab


def counting_emt():
    """An EMT calculator that counts its evaluations (ASE caches repeated geometries)."""
    from ase.calculators.emt import EMT

    class CountingEMT(EMT):
        calls = 0

        def calculate(self, *args: Any, **kwargs: Any) -> None:
            CountingEMT.calls += 1
            super().calculate(*args, **kwargs)

    return CountingEMT()


def oracle_relaxation(name: str, seed: int, fmax: float) -> dict[str, Any]:
    """ASE's optimizer ``name`` on the oracle: calls, final energy and fmax, wall time."""
    from ase import optimize

    atoms = c_on_cu100(seed)
    calc = counting_emt()
    atoms.calc = calc
    t = time.perf_counter()
    opt = getattr(optimize, name)(atoms, logfile=None)
    converged = opt.run(fmax=fmax, steps=1000)
    return {"oracle_calls": type(calc).calls, "energy": float(atoms.get_potential_energy()),
            "fmax": float(np.sqrt((atoms.get_forces() ** 2).sum(axis=1)).max()), "converged": bool(converged),
            "seconds": time.perf_counter() - t}


def fit_morse(adsorbate: str = "C", size: tuple[int, int, int] = (3, 3, 4), step: float = 0.3,
              window: float | None = None) -> dict[str, Any]:
    """Per-element Morse parameters of Cu and ``adsorbate`` fitted to EMT (the same oracle),
    as the issue's helper would to DFT scans:

    - Cu (D_e, r_e, a): binding energy per atom (EMT energy minus isolated atoms) of fcc Cu
      compressed and expanded, a = 3.2-4.0 A (9 points), against the Morse pair sum with the
      baseline's cutoff and smoothing (:func:`otfgp.baselines.evaluate`);
    - the adsorbate (C of the relaxation, O of the NEB): with Cu fixed, the binding energy of
      one adsorbate atom above the ideal Cu(100) slab of ``size`` (``fcc100``, a = 3.61 A,
      6 A of vacuum) at the hollow, bridge and top sites, heights 0.6-3.0 A (top: from 1.2 A;
      closer it is 10-40 eV up, which would dominate the fit) every ``step`` A, Cu-adsorbate
      pairs by the mixing rules (with one adsorbate atom per cell its own pair never enters).
      ``window``: keep only the heights within this many eV of each site's lowest energy,
      the bonding region a diffusion path samples (a pair sum cannot fit the whole curves of
      all three sites: it then trades the equilibrium heights for the repulsive wall).
    """
    from ase import Atoms
    from ase.build import add_adsorbate, bulk, fcc100
    from ase.calculators.emt import EMT
    from scipy.optimize import least_squares

    from otfgp.baselines import Morse, evaluate

    def emt(atoms):
        atoms = atoms.copy()
        atoms.calc = EMT()
        return float(atoms.get_potential_energy())

    e_atom = {s: emt(Atoms(s, cell=[20, 20, 20])) for s in ("Cu", adsorbate)}
    crystals = [bulk("Cu", "fcc", a=a, cubic=True) for a in np.linspace(3.2, 4.0, 9)]
    crystal_e = [emt(x) - len(x) * e_atom["Cu"] for x in crystals]

    def cu_residuals(p):
        m = Morse({"Cu": tuple(p)}, MORSE_CUTOFF)
        return [(evaluate(m, x)["energy"] - e) / len(x) for x, e in zip(crystals, crystal_e)]

    cu_fit = least_squares(cu_residuals, [0.34, 2.87, 1.36], bounds=([0.01, 1.5, 0.3], [5.0, 4.0, 5.0]))
    cu = tuple(float(v) for v in cu_fit.x)
    slab = fcc100("Cu", size, a=3.61, vacuum=6.0)
    e_slab = emt(slab)
    adsorbed, adsorbed_e = [], []
    for site, low in (("hollow", 0.6), ("bridge", 0.6), ("ontop", 1.2)):
        frames = []
        for h in np.arange(low, 3.0001, step):
            x = slab.copy()
            add_adsorbate(x, adsorbate, float(h), site)
            frames.append(x)
        energies = np.array([emt(x) - e_slab - e_atom[adsorbate] for x in frames])
        keep = np.ones(len(frames), bool) if window is None else energies <= energies.min() + window
        adsorbed += [x for x, k in zip(frames, keep) if k]
        adsorbed_e += energies[keep].tolist()

    def x_residuals(p):
        m = Morse({"Cu": cu, adsorbate: tuple(p)}, MORSE_CUTOFF)
        base = evaluate(m, slab)["energy"]
        return [evaluate(m, x)["energy"] - base - e for x, e in zip(adsorbed, adsorbed_e)]

    x_fit = least_squares(x_residuals, [1.0, 1.5, 2.0], bounds=([0.01, 0.5, 0.3], [20.0, 4.0, 6.0]))
    x = tuple(float(v) for v in x_fit.x)
    return {"Cu": cu, adsorbate: x, "cutoff": MORSE_CUTOFF,
            "rms_Cu_eV_per_atom": float(np.sqrt(np.mean(np.square(cu_fit.fun)))),
            f"rms_{adsorbate}_binding_eV": float(np.sqrt(np.mean(np.square(x_fit.fun)))),
            "fit": f"Cu: fcc binding energy per atom, a = 3.2-4.0 A; {adsorbate}: {adsorbate} binding energy "
                   f"over the {size[0]}x{size[1]}x{size[2]} Cu(100) hollow/bridge/top sites, 0.6 (top 1.2)-3.0 A "
                   f"every {step} A" + ("" if window is None else f", within {window} eV of each site's minimum")
                   + f"; EMT; mixing rules for Cu-{adsorbate}", "points": len(adsorbed)}


def active_relaxation(seed: int, fmax: float, baseline: Any, workdir: Path, **task: Any) -> dict[str, Any]:
    """The active loop from one labelled frame: oracle calls, final oracle energy and fmax."""
    from otfgp import GaussianProcess
    from otfgp.active import ActiveLearner, RelaxTask

    atoms = c_on_cu100(seed)
    calc = counting_emt()
    model = GaussianProcess(RELAX_MODEL["species"], RELAX_MODEL["cutoffs"], baseline=baseline)
    task = RelaxTask(atoms, fmax=fmax, **{**RELAX_TASK, **task})
    t = time.perf_counter()
    with ActiveLearner(model, calc, task, workdir, RELAX_OPTIONS) as learner:
        result = learner.run()
    seconds = time.perf_counter() - t
    records = [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]
    return {"oracle_calls": result.oracle_calls, "counted_by_emt": type(calc).calls,
            "energy": result.task["energy"], "fmax": result.task["fmax"], "converged": result.converged,
            "iterations": result.iterations, "seconds": seconds,
            "oracle_fmax_per_iteration": [r["metrics"].get("oracle_fmax") for r in records],
            "training_environments": records[-1]["training_environments"]}


def bench_relax(args: argparse.Namespace) -> dict[str, Any]:
    """The C on Cu(100) relaxation benchmark (module docstring)."""
    from otfgp.baselines import Morse

    t = time.perf_counter()
    morse = fit_morse()
    print(f"Morse fit ({time.perf_counter() - t:.1f} s): Cu {np.round(morse['Cu'], 4).tolist()} "
          f"(rms {morse['rms_Cu_eV_per_atom']:.4f} eV/atom), C {np.round(morse['C'], 4).tolist()} "
          f"(rms {morse['rms_C_binding_eV']:.3f} eV)")
    prior = Morse({"Cu": morse["Cu"], "C": morse["C"]}, MORSE_CUTOFF)
    variants: dict[str, tuple[Any, dict[str, Any]]] = {"none": (None, {}), "morse": (prior, {})}
    for name in args.ablation or ():
        variants.update({f"none_{name}": (None, ABLATIONS[name]), f"morse_{name}": (prior, ABLATIONS[name])})
    # the oracle-BFGS minimum of each start: BFGS to fmax 0.001
    tight = {seed: oracle_relaxation("BFGS", seed, TIGHT_FMAX) for seed in args.seeds}
    rows = []
    with tempfile.TemporaryDirectory(prefix="otfgp_active_bench_") as tmp:
        for fmax in args.fmax:
            for seed in args.seeds:
                row: dict[str, Any] = {"fmax": fmax, "seed": seed}
                for name in ("BFGS", "FIRE", "GPMin"):
                    row[name] = oracle_relaxation(name, seed, fmax)
                minimum = tight[seed]["energy"]
                for name in ("BFGS", "FIRE", "GPMin"):
                    row[name]["energy_above_minimum_meV"] = 1000 * (row[name]["energy"] - minimum)
                for label, (baseline, changed) in variants.items():
                    key = f"active_{label}"
                    row[key] = r = active_relaxation(seed, fmax, baseline, Path(tmp) / f"{fmax}_{seed}_{label}",
                                                     **changed)
                    r["energy_minus_bfgs_meV"] = 1000 * (r["energy"] - row["BFGS"]["energy"])
                    r["energy_above_minimum_meV"] = 1000 * (r["energy"] - minimum)
                    r["fewer_calls_than_gpmin"] = r["oracle_calls"] < row["GPMin"]["oracle_calls"]
                    r["within_2meV_of_minimum"] = abs(r["energy_above_minimum_meV"]) <= 2.0
                rows.append(row)
                active = ", ".join(f"{label} {row['active_' + label]['oracle_calls']} "
                                   f"({row['active_' + label]['energy_above_minimum_meV']:+.2f} meV, "
                                   f"{row['active_' + label]['seconds']:.0f} s)" for label in variants)
                print(f"fmax {fmax} seed {seed}: oracle calls BFGS {row['BFGS']['oracle_calls']}, FIRE "
                      f"{row['FIRE']['oracle_calls']}, GPMin {row['GPMin']['oracle_calls']}; active (energy above "
                      f"the minimum): {active}", flush=True)
    targets = {f"active_{key}": all(r[f"active_{key}"]["fewer_calls_than_gpmin"]
                                    and r[f"active_{key}"]["within_2meV_of_minimum"]
                                    and r[f"active_{key}"]["converged"] for r in rows) for key in variants}
    return {"system": "C on Cu(100): 3x3x4 slab, vacuum 6 A, C at the hollow 1.2 A up, bottom two layers "
                      "fixed, rattle 0.05 A (seed), EMT oracle",
            "model": {**RELAX_MODEL, "options": RELAX_OPTIONS, "task": RELAX_TASK},
            "minimum": {"fmax": TIGHT_FMAX, "per_seed": {str(k): v for k, v in tight.items()}},
            "morse": morse, "rows": rows, "targets_met": targets,
            "targets": "fewer oracle calls than GPMin at the same fmax, converged, and final energy within 2 meV "
                       "of the oracle-BFGS minimum (BFGS to fmax 0.001 from the same start)"}


# ---------------------------------------------------------------------- NEB and MD
# Systems and oracle references: bench/active_systems.py.
NEB_FMAX = (0.05, 0.03)
NEB_MODEL = {"species": ["Cu", "O"], "cutoffs": {"twobody": 4.5, "threebody": 3.3}}
# Fixed hyperparameters (length scales of 1 A, 10 meV/A force and 5 meV energy noise): the
# likelihood of the first few labels drove both length scales to their 0.05 A bound (then
# to the 0.5 A bound a tighter one sets), and the spiky model sent the band into
# structures 1-45 eV up (measured, docs/active.md).
NEB_HYPERPARAMETERS = {"sigma2": 0.5, "ell2": 1.0, "sigma3": 0.5, "ell3": 1.0, "noise_force": 0.01,
                       "noise_energy": 0.005}
# batch_size 1: only the special frames (the saddle, an end point the batch does not determine)
NEB_OPTIONS = {"batch_size": 1, "add_energy": True, "optimize": False, "max_iterations": 8,
               "label_max_z": None, "label_energy_jump": None, "label_max_force": None}
# skip_std: the final state is the initial one translated by a surface lattice vector, so a
# batch holding the initial end point determines it (module docstring of otfgp.active.neb)
NEB_TASK = {"energy_tol": 0.01, "max_step": 0.3, "reuse_band": False, "skip_std": 0.02}
# the O Morse prior: fitted to EMT O-over-Cu(100) scans (fit_morse), the bonding region only
NEB_MORSE_FIT = {"adsorbate": "O", "size": (3, 3, 3), "step": 0.1, "window": 0.5}
MD_MODEL = {"species": ["Cu", "C", "O"], "cutoffs": {"twobody": 4.5, "threebody": 3.3}}
MD_OPTIONS = {"batch_size": 2, "query": "greedy", "add_energy": True, "hyperparameter_iterations": 30,
              "max_iterations": 40, "optimize_until_calls": 8, "label_max_z": None, "label_energy_jump": None, "label_max_force": None}
MD_TASK = {"steps": 200, "pool_every": 10, "target_error": 0.1, "stop_std": 0.5}
MD_STEPS = 2000  # the oracle's and the final model's MD (RDF)


def md_morse() -> tuple[Any, dict[str, Any]]:
    """The MD's Morse prior: Cu and C as in the relaxation (:func:`fit_morse`), O as in the
    NEB (``NEB_MORSE_FIT``), all fitted to EMT; C-O by the mixing rules. (Dimer-fitted
    parameters, D_e = 6.2 / 5.2 eV for C / O, bind CO by about 5.7 eV where EMT's CO on
    Cu(100) comes apart at 300 K: measured, the loop did not converge in 40 iterations.)"""
    from otfgp.baselines import Morse

    c, o = fit_morse(), fit_morse(**NEB_MORSE_FIT)
    params = {"Cu": c["Cu"], "C": c["C"], "O": o["O"]}
    return Morse(params, MORSE_CUTOFF), {k: np.asarray(v).tolist() for k, v in params.items()}


def bench_neb(args: argparse.Namespace) -> dict[str, Any]:
    """O on Cu(100) hollow-to-hollow diffusion: the oracle CI-NEB (end points relaxed on the
    oracle) against :class:`otfgp.active.NEBTask` from the two unrelaxed end points."""
    import active_systems as systems
    from otfgp import GaussianProcess
    from otfgp.active import ActiveLearner, NEBTask

    from otfgp.baselines import Morse

    morse = fit_morse(**NEB_MORSE_FIT)
    print(f"O Morse fit: Cu {np.round(morse['Cu'], 4).tolist()}, O {np.round(morse['O'], 4).tolist()} "
          f"(rms {morse['rms_O_binding_eV']:.3f} eV, {morse['points']} points)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="otfgp_active_neb_") as tmp:
        for fmax in args.neb_fmax:
            oracle = systems.oracle_neb(fmax)
            row: dict[str, Any] = {"fmax": fmax, "oracle": oracle}
            for label in args.priors:
                prior = Morse({"Cu": morse["Cu"], "O": morse["O"]}, MORSE_CUTOFF) if label == "morse" else None
                initial, final = systems.o_diffusion_endpoints()
                model = GaussianProcess(NEB_MODEL["species"], NEB_MODEL["cutoffs"],
                                        hyperparameters=NEB_HYPERPARAMETERS, baseline=prior)
                task = NEBTask(initial, final, fmax=fmax, **NEB_TASK)
                counter = [0]
                t = time.perf_counter()
                try:
                    with ActiveLearner(model, systems.CountingEMT(counter), task, Path(tmp) / f"{fmax}_{label}",
                                       NEB_OPTIONS) as learner:
                        result = learner.run()
                    r: dict[str, Any] = {"oracle_calls": result.oracle_calls, "counted_by_emt": counter[0],
                                         "converged": result.converged, "iterations": result.iterations,
                                         **result.task, "history": task.history}
                except Exception as exc:  # a failed variant is a measured result, not a lost run
                    r = {"error": f"{type(exc).__name__}: {exc}", "history": task.history}
                r["seconds"] = time.perf_counter() - t
                if r.get("barrier") is not None:
                    r["barrier_error"] = r["barrier"] - oracle["barrier"]
                    r["call_reduction"] = 1 - r["oracle_calls"] / oracle["oracle_calls"]
                    r["targets_met"] = bool(r["converged"] and abs(r["barrier_error"]) <= 0.02
                                            and r["call_reduction"] >= 0.8)
                row[f"active_{label}"] = r
                print(f"neb fmax {fmax} {label}: {r.get('oracle_calls')} calls vs oracle {oracle['oracle_calls']}, "
                      f"barrier {r.get('barrier')} vs {oracle['barrier']:.4f}, converged {r.get('converged')}, "
                      f"{r['seconds']:.0f} s {r.get('error', '')}", flush=True)
            rows.append(row)
    return {"system": "O on Cu(100): 3x3x3 slab, vacuum 6 A, O 1.2 A above a hollow, final state the "
                      "neighbouring hollow, bottom two layers fixed, end points not pre-relaxed, 5 images, EMT",
            "oracle": "end points relaxed on the oracle (BFGS, same fmax), then CI-NEB (improved tangent, BFGS); "
                      "oracle calls = EMT evaluations of both",
            "model": {**NEB_MODEL, "hyperparameters": NEB_HYPERPARAMETERS, "options": NEB_OPTIONS,
                      "task": NEB_TASK}, "morse": morse,
            "rows": rows, "targets": "at least 80% fewer oracle calls than the oracle NEB, barrier within 0.02 eV"}


def bench_md(args: argparse.Namespace) -> dict[str, Any]:
    """CO on Cu(100), 300 K Langevin: :class:`otfgp.active.MDTask` from one frame, then the
    final model's MD against the oracle's (RDF)."""
    import active_systems as systems
    from otfgp import GaussianProcess, GPCalculator
    from otfgp.active import ActiveLearner, MDTask
    from otfgp.active.md import langevin

    oracle_frames, oracle = systems.oracle_md(MD_STEPS)
    # the noise floor of the comparison: the oracle against itself with another seed
    seed1_frames, _ = systems.oracle_md(MD_STEPS, seed=1)
    oracle["rdf_seed1_vs_seed0"] = systems.rdf_difference(seed1_frames[len(seed1_frames) // 5:],
                                                          oracle_frames[len(oracle_frames) // 5:])
    oracle["seed1_observables"] = systems.md_observables(seed1_frames[len(seed1_frames) // 5:])
    out: dict[str, Any] = {"oracle": oracle}
    morse, morse_params = md_morse() if "morse" in args.priors else (None, None)
    with tempfile.TemporaryDirectory(prefix="otfgp_active_md_") as tmp:
        for label, seed in [(label, seed) for label in args.priors for seed in args.md_seeds]:
            prior = morse if label == "morse" else None
            model = GaussianProcess(MD_MODEL["species"], MD_MODEL["cutoffs"], baseline=prior)
            # seed: the loop's initial velocities and Langevin noise (the chaotic loop's
            # outcome varies with it; the final model's MD comparison always runs seed 0)
            task = MDTask(systems.co_on_cu100(), dynamics=langevin(300.0, seed=seed), seed=seed,
                          **{**MD_TASK, "stop_std": args.md_stop_std or None})
            counter = [0]
            t = time.perf_counter()
            try:
                with ActiveLearner(model, systems.CountingEMT(counter), task, Path(tmp) / f"{label}_{seed}",
                                   {**MD_OPTIONS, "calibration": args.md_calibration}) as learner:
                    result = learner.run()
                r: dict[str, Any] = {"oracle_calls": result.oracle_calls, "converged": result.converged,
                                     "iterations": result.iterations, **result.task, "history": task.history,
                                     "seed": seed, "calibration": args.md_calibration,
                                     "pre_update_calibration": result.pre_update_calibration}
                r["learning_seconds"] = time.perf_counter() - t
            except Exception as exc:
                r = {"error": f"{type(exc).__name__}: {exc}", "history": task.history}
            if "error" not in r:
                t = time.perf_counter()
                try:  # the final model's MD; its failure (atoms collapsing) keeps the learning result
                    frames = systems.run_md(systems.co_on_cu100(), GPCalculator(learner.model, uncertainty=False),
                                            MD_STEPS, seed=0)
                    skip = len(frames) // 5
                    r["rdf"] = systems.rdf_difference(frames[skip:], oracle_frames[len(oracle_frames) // 5:])
                    r["observables"] = systems.md_observables(frames[skip:])
                except Exception as exc:
                    r["model_md_error"] = f"{type(exc).__name__}: {exc}"
                r["model_md_seconds"] = time.perf_counter() - t
            # a calibrated run is its own row beside the uncalibrated one
            key = (f"active_{label}" + (f"_seed{seed}" if seed else "")
                   + (f"_calibrated_{args.md_calibration}" if args.md_calibration else ""))
            out[key] = r
            print(f"md {key}: {r.get('oracle_calls')} calls, converged {r.get('converged')}, rdf {r.get('rdf')} "
                  f"{r.get('error', '')}", flush=True)
    return {"system": "CO upright on a top site of a 3x3x3 Cu(100) slab (bottom two layers fixed), 300 K "
                      "Langevin (1 fs, friction 0.02/fs), EMT",
            "model": {**MD_MODEL, "options": MD_OPTIONS, "task": {**MD_TASK, "stop_std": args.md_stop_std or None},
                      "morse": morse_params},
            "md_steps": MD_STEPS, **out,
            "rdf_metric": "total RDF to 3.6 A (72 bins, frames after the first 20%): max |g_model - g_oracle| and "
                          "overlap 1 - sum|dg| / sum(g_model + g_oracle); the oracle's own seed-to-seed spread is "
                          "oracle.rdf_seed1_vs_seed0 (the same MD with seed 1)"}


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "relax": bench_relax, "neb": bench_neb, "md": bench_md}
"""One function per benchmark, by the name ``--only`` takes; each returns its JSON section."""
SECTIONS = ("relax", "neb", "md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=SECTIONS, action="append",
                    help="run only this benchmark (repeatable; default: all implemented)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(RELAX_SEEDS))
    ap.add_argument("--fmax", type=float, nargs="+", default=list(RELAX_FMAX))
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--ablation", nargs="+", choices=tuple(ABLATIONS),
                    help="relax: also run the loop with these changes: unanchored (anchor = false), "
                         "no_trust_radius (max_step = none)")
    ap.add_argument("--priors", nargs="+", choices=("none", "morse"), default=["none", "morse"],
                    help="neb, md: the model variants (no prior, Morse prior)")
    ap.add_argument("--md-stop-std", type=float, default=MD_TASK["stop_std"],
                    help="md: the trajectory's uncertainty guard (eV/A; 0: none)")
    ap.add_argument("--md-seeds", type=int, nargs="+", default=[0],
                    help="md: seeds of the loop's initial velocities and Langevin noise (one run each)")
    ap.add_argument("--md-calibration", default=None,
                    help="md: ActiveOptions.calibration of the loop (a form of otfgp.calibration; default none)")
    ap.add_argument("--neb-fmax", type=float, nargs="+", default=list(NEB_FMAX))
    args = ap.parse_args(argv)
    chosen = args.only or [s for s in SECTIONS if s in BENCHMARKS]
    missing = [s for s in chosen if s not in BENCHMARKS]
    if missing:
        ap.error(f"benchmark(s) {', '.join(missing)} not implemented yet")
    data = json.loads(args.output.read_text()) if args.output.is_file() else {}
    for name in chosen:
        commit, changes = git_commit(), modified_paths()  # the checkout as the run started
        t = time.perf_counter()
        section = BENCHMARKS[name](args)
        section["seconds"] = time.perf_counter() - t
        section["machine"] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(),
                              "commit": commit, "uncommitted_changes": changes, "otfgp": otfgp_version()}
        # variant rows this run did not make (e.g. --priors none, or --md-calibration) stay,
        # each with the stamp of the run that made it
        earlier = data.get(name, {})
        for key, row in earlier.items():
            if key.startswith("active_") and key not in section and isinstance(row, dict):
                section[key] = {**row, "machine": row.get("machine", earlier.get("machine"))}
        data[name] = section
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(data, indent=2) + "\n")  # after each section: a later failure keeps it
        print(f"{name}: {section['seconds']:.0f} s, written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
