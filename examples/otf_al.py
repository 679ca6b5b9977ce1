"""On-the-fly learning of aluminium that melts, with Quantum ESPRESSO as the labeller.

    python examples/otf_al.py                 # Quantum ESPRESSO labels (about 3 minutes)
    python examples/otf_al.py --oracle emt    # ASE's EMT instead (well under a minute)

The FLARE paper's aluminium experiment, scaled down: 32-atom fcc Al (a = 4.05 A, 2x2x2
cubic cells) with every coordinate jittered by up to 1% of a, velocity Verlet with a
5 fs time step from 300 K Maxwell-Boltzmann velocities. After the solid stage the
velocities are rescaled to 3000 K and the crystal melts. The GP (2+3-body, r2 = 5 A,
r3 = 3.5 A) drives the MD; whenever its largest predicted force-component standard
deviation exceeds the threshold, the frame goes to DFT (pw.x: LDA, 15 Ry, 2x2x2 shifted
k-points, Marzari-Vanderbilt smearing 0.1 Ry; 13-20 s per call on one core) and the
most uncertain atoms join the training set.

Writes the run directory (log.jsonl, trajectory.extxyz, dft/, model.otfgp, summary.json,
temperature.png, training.png) and prints DFT calls in the solid and in the liquid, the
final training size and the wall-time split. The equivalent CLI runs are
``otfgp otf examples/otf_al_qe.toml`` and ``otfgp otf examples/otf_al_emt.toml``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

import otfgp
from otfgp.builders import maxwell_boltzmann
from otfgp.labellers import emt_labeller, espresso_calculator
from otfgp.plots import plot_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", choices=["qe", "emt"], default="qe", help="labeller (default: qe)")
    ap.add_argument("--solid-steps", type=int, default=100, help="MD steps at 300 K (default 100)")
    ap.add_argument("--liquid-steps", type=int, default=100, help="MD steps after the melt (default 100)")
    ap.add_argument("--melt-temperature", type=float, default=3000.0, help="rescale target, K")
    ap.add_argument("--threshold", type=float, default=0.04,
                    help="DFT call threshold on the max force std, eV/A (default 0.04)")
    ap.add_argument("--max-atoms-added", type=int, default=4,
                    help="atoms added per DFT frame, most uncertain first (default 4)")
    ap.add_argument("--mpi-ranks", type=int, default=1, help="MPI ranks of pw.x (default 1)")
    ap.add_argument("--test-frames", type=int, default=None,
                    help="liquid frames from the trajectory labelled afterwards as a held-out test "
                         "(default 2 with qe, 10 with emt; 0: none)")
    ap.add_argument("--energies", choices=["train", "reference"], default="reference",
                    help="train on the DFT energies (train), or use them only as the energy reference of a "
                         "force-trained model (reference, default)")
    ap.add_argument("--output", default=None, help="run directory (default otf_al_<oracle>)")
    ap.add_argument("--overwrite", action="store_true", help="delete an earlier run in the run directory")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("otfgp.gp").setLevel(logging.WARNING)  # one line per optimisation is noisy
    out = Path(args.output or f"otf_al_{args.oracle}")
    if (out / "log.jsonl").exists():
        if not args.overwrite:
            raise SystemExit(f"{out} already holds a run; pass --overwrite or another --output")
        shutil.rmtree(out)

    # 32-atom fcc Al, jittered +-1% of a, 300 K Maxwell-Boltzmann velocities
    a = 4.05
    atoms = bulk("Al", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(1)
    atoms.positions += rng.uniform(-0.01 * a, 0.01 * a, atoms.positions.shape)
    maxwell_boltzmann(atoms, 300, np.random.default_rng(2))
    Stationary(atoms)

    if args.oracle == "qe":
        labeller = espresso_calculator(out / "pw", pseudopotentials={"Al": "Al.pz-vbc.UPF"},
                                       kpts=(2, 2, 2), ecutwfc=15, smearing="mv", degauss=0.1,
                                       mpi_ranks=args.mpi_ranks)
    else:
        labeller = emt_labeller()

    # Package-default priors and bounds: the priors (otfgp.priors) keep the hyperparameters
    # fitted to the first few environments sensible, so no hand-set bounds are needed.
    model = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    dyn = VelocityVerlet(atoms, timestep=5.0 * units.fs)
    otf = otfgp.OTF(dyn, model, labeller, threshold=args.threshold, max_atoms_added=args.max_atoms_added,
                    init_atoms=4, output_dir=str(out), add_energy=args.energies == "train")

    t0 = time.perf_counter()
    otf.run(args.solid_steps)
    solid_calls = len(otf.dft_calls)
    t_before = atoms.get_temperature()
    atoms.set_momenta(atoms.get_momenta() * math.sqrt(args.melt_temperature / t_before))
    logging.info("melt: velocities rescaled from %.0f K to %.0f K at step %d",
                 t_before, atoms.get_temperature(), otf.step)
    summary = otf.run(args.liquid_steps)
    wall = time.perf_counter() - t0

    # The calibration of the final model, fitted on honest errors it never trained on: every
    # DFT frame's prediction made before it was learnt, plus leave-one-out residuals
    # (otfgp.calibration). On-the-fly learning refits it after every retrain (the force
    # decisions compare the latent std, which the calibration does not move), so the final
    # model has it; only a run too short for a fit (< 30 held-out samples) is fitted here,
    # where calibrate() falls back to the identity map. The model file keeps the calibration.
    calibration = otf.model.calibration or otf.model.calibrate(samples=otf.calibration_samples, loo=True)
    otf.model.save(out / "model.otfgp")

    # held-out check: liquid frames of the trajectory that were not labelled during the run
    n_test = args.test_frames if args.test_frames is not None else (2 if args.oracle == "qe" else 10)
    test_path, test_result = None, {}
    if n_test > 0:
        test_path = out / "test_frames.extxyz"
        t = time.perf_counter()
        test_result = _held_out_test(out, otf, n_test, args.solid_steps, test_path,
                                     (lambda: espresso_calculator(out / "pw_test", kpts=(2, 2, 2), ecutwfc=15,
                                                                  mpi_ranks=args.mpi_ranks))
                                     if args.oracle == "qe" else emt_labeller)
        test_result["labelling_wall_time_s"] = time.perf_counter() - t
    plots = plot_run(out, test=test_path)

    w = summary["wall_time_s"]
    result = {
        "oracle": args.oracle,
        "steps": {"solid": args.solid_steps, "liquid": args.liquid_steps},
        "threshold_eV_per_A": args.threshold,
        "dft_calls": {"solid": solid_calls, "liquid": len(otf.dft_calls) - solid_calls,
                      "total": len(otf.dft_calls)},
        "dft_call_steps": summary["dft_call_steps"],
        "training_environments": summary["training_environments"],
        "hyperparameters": summary["hyperparameters"],
        "wall_time_s": w,
        "wall_time_fraction": {k: w[k] / w["total"] for k in ("dft", "training", "prediction", "md")},
        "script_wall_time_s": wall,
        "liquid_second_half_mean_temperature_K": _mean_temperature(
            out, args.solid_steps + args.liquid_steps // 2),
        "held_out_liquid_test": test_result,
        "potential_energy_at_retrains": _energy_steps(out, otf.dft_calls),
        "pre_update_calibration": summary["pre_update_calibration"],
        "calibration": calibration.to_dict(),
        "hyperparameter_warnings": summary["hyperparameter_warnings"],
        "plots": [str(p) for p in plots],
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2))
    f = result["wall_time_fraction"]
    print(f"\nOn-the-fly Al ({args.oracle}): {args.solid_steps} solid + {args.liquid_steps} liquid steps "
          f"of 5 fs, threshold {1000 * args.threshold:.0f} meV/A")
    print(f"  DFT calls: {solid_calls} solid, {result['dft_calls']['liquid']} liquid "
          f"({len(otf.dft_calls)} total)")
    print(f"  training environments: {summary['training_environments']}, "
          f"sigma_n {1000 * summary['hyperparameters']['noise_force']:.1f} meV/A")
    print(f"  wall time {w['total']:.0f} s: DFT {100 * f['dft']:.0f}%, training {100 * f['training']:.0f}%, "
          f"mapping {100 * f.get('mapping', 0.0):.0f}%, prediction {100 * f['prediction']:.0f}%, MD {100 * f['md']:.1f}%")
    if test_result:
        print(f"  held-out liquid frames ({test_result['frames']} x 32 atoms, not in training): force MAE "
              f"{1000 * test_result['force_mae_eV_per_A']:.0f} meV/A, mean predicted std "
              f"{1000 * test_result['mean_predicted_std_eV_per_A']:.0f} meV/A (latent; "
              f"{test_result['fraction_within_1_std']:.0%} of errors within 1 std)")
        print(f"    calibrated std (pre-update DFT errors + leave-one-out): mean "
              f"{1000 * test_result['mean_reported_std_eV_per_A']:.0f} meV/A, RMSE / RMS std "
              f"{test_result['rmse_over_rms_reported_std']:.2f}, within 1 std "
              f"{test_result['fraction_within_1_reported_std']:.0%}, within 2 std "
              f"{test_result['fraction_within_2_reported_std']:.0%}")
    cal = summary["pre_update_calibration"]
    if cal:
        print(f"  DFT frames predicted before learning them ({cal['frames']}): force RMSE "
              f"{1000 * cal['rmse']:.0f} meV/A, within 1 latent std {cal['coverage_1std_latent']:.0%}, "
              f"within 1 std with sigma_n {cal['coverage_1std_total']:.0%} (calibrated: 68%)")
    pe = result["potential_energy_at_retrains"]
    print(f"  potential energy discontinuity at retrains (model energy of the same configuration before and "
          f"after learning it): median {pe['median_discontinuity_at_retrain_eV']:.3f}, "
          f"max {pe['max_discontinuity_at_retrain_eV']:.3f} eV")
    print(f"  potential energy change at retrain steps: median {pe['median_change_at_retrain_eV']:.3f}, "
          f"max {pe['max_change_at_retrain_eV']:.3f} eV (an MD step: median "
          f"{pe['median_change_per_md_step_eV']:.3f}, max {pe['max_change_per_md_step_eV']:.3f} eV)")
    warned = summary["hyperparameter_warnings"]
    print(f"  hyperparameters: " + ", ".join(f"{k} {v:.3g}" for k, v in summary["hyperparameters"].items()))
    print(f"  retrains with hyperparameter warnings (at a bound / abnormal stop): {len(warned)}"
          + (f", last at step {warned[-1]['step']}: {'; '.join(warned[-1]['warnings'])}" if warned else ""))
    print(f"  output: {out}/ (summary.json, demo_summary.json, {', '.join(p.name for p in plots)})")


def _held_out_test(out: Path, otf: otfgp.OTF, n: int, first_step: int, path: Path, make_calc) -> dict:
    """Label ``n`` evenly spaced liquid trajectory frames (never DFT-labelled during the
    run) and compare the final model's forces with them."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write

    frames = [f for f in read(out / "trajectory.extxyz", index=":")
              if f.info.get("otf_step", -1) > first_step and f.info["otf_step"] not in otf.dft_calls]
    frames = [frames[i] for i in np.linspace(len(frames) // 2, len(frames) - 1, n).round().astype(int)]
    labelled, err, std, reported = [], [], [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = make_calc()
        forces, energy = atoms.get_forces(), atoms.get_potential_energy()
        clean = otfgp_frame(frame)
        clean.calc = SinglePointCalculator(clean, energy=energy, forces=forces)
        labelled.append(clean)
        pred = otf.model.predict(clean, variance=True)
        err.append(np.abs(pred.forces - forces).ravel())
        std.append(pred.latent_force_stds.ravel())
        reported.append(pred.force_stds.ravel())  # calibrated total predictive std
    write(path, labelled, format="extxyz")
    err, std, reported = np.concatenate(err), np.concatenate(std), np.concatenate(reported)
    return {"frames": len(labelled), "steps": [int(f.info["otf_step"]) for f in frames],
            "force_mae_eV_per_A": float(err.mean()), "mean_predicted_std_eV_per_A": float(std.mean()),
            "fraction_within_1_std": float((err <= std).mean()),
            "fraction_within_2_std": float((err <= 2 * std).mean()),
            "mean_reported_std_eV_per_A": float(reported.mean()),
            "rmse_over_rms_reported_std": float(np.sqrt(np.mean(err ** 2) / np.mean(reported ** 2))),
            "fraction_within_1_reported_std": float((err <= reported).mean()),
            "fraction_within_2_reported_std": float((err <= 2 * reported).mean())}


def otfgp_frame(frame):
    """Positions, cell and species of a frame only (no velocities, stds or calculator)."""
    from ase import Atoms

    return Atoms(frame.get_chemical_symbols(), positions=frame.positions, cell=frame.cell, pbc=frame.pbc)


def _log(run_dir: Path) -> list[dict]:
    """The entries of the run's log.jsonl."""
    return [json.loads(line) for line in open(run_dir / "log.jsonl") if line.strip()]


def _energy_steps(run_dir: Path, dft_calls: list[int]) -> dict:
    """Is the potential energy continuous across retrains (eV)? The discontinuity at a
    retrain is the change of the model's energy of the same configuration: the energy the
    model predicted before learning the frame (``gp_energy`` of the run's
    ``dft_frames.extxyz``) against the retrained model's (the logged one). Next to it, how
    much the logged potential energy changes at those steps and at ordinary MD steps
    (physics included: right after the melt the potential energy climbs by eV per step)."""
    from ase.io import read

    pe = {e["step"]: e["potential_energy_eV"] for e in _log(run_dir)}
    before = {int(f.info["otf_step"]): float(f.info["gp_energy"])
              for f in read(run_dir / "dft_frames.extxyz", index=":") if "gp_energy" in f.info}
    jumps = [abs(pe[s] - before[s]) for s in dft_calls if s in before and s in pe]
    retrain = [abs(pe[s] - pe[s - 1]) for s in dft_calls if s - 1 in pe]
    ordinary = [abs(pe[s] - pe[s - 1]) for s in pe if s - 1 in pe and s not in dft_calls]
    return {"max_discontinuity_at_retrain_eV": max(jumps, default=0.0),
            "median_discontinuity_at_retrain_eV": float(np.median(jumps)) if jumps else 0.0,
            "max_change_at_retrain_eV": max(retrain, default=0.0),
            "median_change_at_retrain_eV": float(np.median(retrain)) if retrain else 0.0,
            "median_change_per_md_step_eV": float(np.median(ordinary)) if ordinary else 0.0,
            "max_change_per_md_step_eV": max(ordinary, default=0.0)}


def _mean_temperature(run_dir: Path, from_step: int) -> float:
    sel = [e["temperature_K"] for e in _log(run_dir) if e["step"] >= from_step]
    return float(np.mean(sel)) if sel else float("nan")


if __name__ == "__main__":
    main()
