"""The ``otfgp`` command line.

    otfgp otf config.toml [--output-dir DIR]   on-the-fly run described by a config file
    otfgp otf --resume RUN_DIR [--set otf.threshold=0.02] [--override FILE] [--checkpoint N]
                                               continue an interrupted run (changing settings)
    otfgp active config.toml | --resume RUN_DIR
                                               offline active learning (docs/active.md)
    otfgp plot RUN_DIR [--test frames.extxyz]  PNG plots of a run (and of a test set)
    otfgp map MODEL -o MAPPED [--tolerance T]  spline-tabulate a model (mapped GP)
    otfgp eval MODEL FRAMES... [--json OUT.json] [--png OUT.png]
                                               accuracy and uncertainty quality on labelled frames
    otfgp train [CONFIG] [--data FILE...] [-o MODEL]
                                               fit a model to labelled frames (docs/training.md)
    otfgp export MODEL|RUN_DIR -o DATA.extxyz  a model's training set with its trained labels
    otfgp [-v | -q] [--version]                DEBUG / WARNING logging; the version

``otfgp otf`` also logs to ``RUN_DIR/otfgp.log`` (appended on resume; DEBUG with -v, else INFO).

A config file (TOML, or YAML when PyYAML is installed) has five sections::

    [structure]            # either a lattice ...
    lattice = "fcc"        # any ase.build.bulk crystal structure
    element = "Al"
    a = 4.05
    cubic = true
    repeat = [2, 2, 2]
    jitter = 0.0405        # uniform random displacement of every coordinate, +-A
    seed = 1
    # file = "start.extxyz" and index = 0  # ... or a structure file (relative to the config)

    [md]
    integrator = "velocity_verlet"   # or langevin, langevin_baoab, bussi, nose_hoover_chain, npt,
                                     # npt_berendsen, isotropic_mtk_npt; bfgs / fire (fmax,
                                     # relax_cell): the keys of each in docs/config.md
    timestep_fs = 5.0
    temperature_K = 300     # Maxwell-Boltzmann start (and thermostat target)
    seed = 2
    steps = 100             # or a list of stages:
    # [[md.stages]]
    # steps = 100
    # [[md.stages]]
    # steps = 100
    # rescale_to_K = 3000   # rescale the velocities to 3000 K when the stage starts

    [model]
    species = ["Al"]
    twobody = 5.0
    threebody = 3.5
    # hyperparameters = {noise_force = 0.02}
    # bounds = {noise_force = [0.005, 1.0]}
    # priors = {noise_force = [0.02, 3.0]}   # [median, factor per std]; false: maximum likelihood

    [labeller]
    type = "espresso"       # or "emt", "module:function", any ASE calculator by name ("cp2k",
                            # "vasp", ...; docs/labellers.md); espresso keys: otfgp.labellers.espresso_calculator
    kpts = [2, 2, 2]

    [otf]                   # otfgp.OTFOptions fields
    threshold = 0.05
    output_dir = "otf_run"

The run directory receives a verbatim copy of the config, ``run_config.json`` (the
resolved config), ``initial.extxyz`` (the starting structure) and ``stages.json`` (stage
transitions, written atomically), so ``--resume`` needs nothing else. The directory is
locked while a command runs in it (a second ``otfgp otf`` on it stops with an error).
``--resume`` may change ``[otf]`` and ``[labeller]`` settings (``--set SECTION.KEY=VALUE``,
``--override FILE``): they are written to ``run_config.json`` (later resumes keep them) and
recorded with their step in ``overrides.json``. ``--checkpoint N`` goes back to the kept
checkpoint N (``checkpoint/state_<N>.json``). Exit codes: 0 done, 1 run failed (DFT, or
the MD stopped on atoms too close together; the last checkpoint stays), 2 bad command
line, config or run directory (locked, holding a run, damaged state file).

Every key of every section, with type, default, unit and meaning: docs/config.md.
(Code: schema and validation in otfgp.config, builders in otfgp.builders, the stage
driver in otfgp.stages; this module holds the commands.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .atomic_io import write_json
from .models import is_scalable, load_model
from .builders import (build_dynamics, build_labeller, build_model, build_structure, otf_model_options,
                       restore_hyperparameter_settings, set_velocities)
from .config import (ConfigError, apply_overrides, check_output_path, load_config, parse_set, stage_bounds,
                     validate_config)
from .run_dir import (OVERRIDES_FILE, RunDirError, RunLock, holds_run, read_checkpoint, read_json_file,
                      record_overrides)
from .stages import STAGES_FILE, read_stages_state, run_stages

RUN_CONFIG = "run_config.json"
INITIAL_STRUCTURE = "initial.extxyz"
LOG_FILE = "otfgp.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def _run_log(run_dir: Path, args: argparse.Namespace) -> Iterator[None]:
    """Append the run's log records to ``run_dir/otfgp.log`` while the command runs (INFO,
    DEBUG with -v, whatever -q does to the console)."""
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    package = logging.getLogger("otfgp")
    old_level = package.level
    package.setLevel(min(package.getEffectiveLevel(), handler.level))  # the file gets INFO whatever the console
    package.addHandler(handler)
    try:
        yield
    except BaseException as exc:  # the reason a run stopped belongs in its log (the console gets it from main)
        handler.handle(logging.makeLogRecord({"name": "otfgp.cli", "levelno": logging.ERROR, "levelname": "ERROR",
                                              "msg": "stopped: %s: %s", "args": (type(exc).__name__, exc)}))
        raise
    finally:
        package.removeHandler(handler)
        package.setLevel(old_level)
        handler.close()


# --------------------------------------------------------------------------- commands
def format_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable end-of-run report of an OTF (or :func:`run_stages`) summary."""
    w = summary.get("wall_time_s", {})
    total = w.get("total", 0.0) or float("nan")
    lines = [f"steps: {summary.get('steps')}", f"DFT calls: {summary.get('dft_calls')}"]
    for s in summary.get("stages", []):
        lines.append(f"  {s['name']} (steps {s['start_step']}-{s['end_step']}): {s['dft_calls']} DFT calls")
    if summary.get("failed_dft_steps"):
        lines.append(f"failed DFT calls at steps: {summary['failed_dft_steps']}")
    lines.append(f"training environments: {summary.get('training_environments')}"
                 f" ({summary.get('training_labels')} labels)")
    hyp = summary.get("hyperparameters", {})
    if "noise_force" in hyp:
        lines.append(f"sigma_n (force noise): {1000 * hyp['noise_force']:.1f} meV/A")
    cal = summary.get("pre_update_calibration")
    if cal:
        lines.append(f"uncertainty on {cal['frames']} DFT frames predicted before learning them: force RMSE "
                     f"{1000 * cal['rmse']:.1f} meV/A, RMS latent std {1000 * cal['rms_latent_std']:.1f} meV/A; "
                     f"within 1 std: {cal['coverage_1std_latent']:.0%} latent, {cal['coverage_1std_total']:.0%} "
                     f"with sigma_n" + (f", {cal['coverage_1std_reported']:.0%} reported" if "coverage_1std_reported" in cal
                                        else "") + " (a calibrated std: 68%)")
    warned = summary.get("hyperparameter_warnings", [])
    if warned:
        last = warned[-1]
        lines.append(f"WARNING: {len(warned)} retrain(s) ended with hyperparameters at a bound or an "
                     f"abnormal optimiser exit; last at step {last['step']}: {'; '.join(last['warnings'])}")
    parts = []
    for key in ("dft", "training", "mapping", "prediction", "md"):
        if key in w:
            parts.append(f"{key} {w[key]:.1f} s ({100 * w[key] / total:.0f}%)")
    lines.append(f"wall time: {w.get('total', 0.0):.1f} s = " + ", ".join(parts))
    return "\n".join(lines)


def _prepare_run_dir(cfg: dict[str, Any], config_path: Path, run_dir: Path) -> None:
    """Create ``run_dir`` with a verbatim copy of the config and the resolved run_config.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_path, run_dir / ("config" + config_path.suffix.lower()))
    write_json(run_dir / RUN_CONFIG, cfg, indent=2)


def _resume_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings given with ``--override FILE`` (TOML/YAML tables ``[otf]``, ``[labeller]``)
    and ``--set SECTION.KEY=VALUE`` (applied after the file), as {section: {key: value}}."""
    overrides: dict[str, dict[str, Any]] = {}
    if args.override:
        for section, values in load_config(args.override).items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"{args.override}: [{section}] must be a table of settings")
            overrides.setdefault(section, {}).update(values)
    for expr in args.set or []:
        section, key, value = parse_set(expr)
        overrides.setdefault(section, {})[key] = value
    return overrides


def _resume_dir(args: argparse.Namespace) -> Path:
    """The run directory of ``--resume RUN_DIR``, checked to hold a run."""
    if args.config:
        raise ConfigError("give a config file or --resume RUN_DIR, not both")
    run_dir = Path(args.resume)
    args.run_dir = str(run_dir)
    if not (run_dir / RUN_CONFIG).is_file():
        raise ConfigError(f"{run_dir}: not an otfgp run directory ({RUN_CONFIG} missing)")
    return run_dir


def _new_run_config(args: argparse.Namespace, command: str,
                    validate: Callable[..., dict[str, Any]]) -> tuple[dict[str, Any], Path, Path]:
    """The validated config of a new ``otfgp COMMAND CONFIG`` run, the config's path and
    the run directory (``--output-dir`` overrides the config's ``COMMAND.output_dir``)."""
    if not args.config:
        raise ConfigError(f"give a config file (otfgp {command} config.toml) or --resume RUN_DIR")
    config_path = Path(args.config)
    cfg = validate(load_config(config_path), base_dir=config_path.parent)
    if args.output_dir:
        cfg[command]["output_dir"] = args.output_dir
    run_dir = Path(cfg[command]["output_dir"])
    cfg[command]["output_dir"] = str(run_dir)
    args.run_dir = str(run_dir)
    return cfg, config_path, run_dir


def _refuse_held_run_dir(run_dir: Path, command: str) -> None:
    """A new run never writes over another: continuing one is ``--resume``."""
    if holds_run(run_dir):
        raise ConfigError(f"output_dir {run_dir} already holds a run: continue it with "
                          f"'otfgp {command} --resume {run_dir}' or choose another {command}.output_dir")


def cmd_otf(args: argparse.Namespace) -> int:
    """``otfgp otf CONFIG`` (a new run) or ``otfgp otf --resume RUN_DIR``; the run directory
    is locked for the whole command."""
    if args.resume:
        run_dir = _resume_dir(args)
        with RunLock(run_dir), _run_log(run_dir, args):
            return _resume(args, run_dir)
    if args.set or args.override or args.checkpoint is not None:
        raise ConfigError("--set, --override and --checkpoint go with --resume RUN_DIR "
                          "(a new run takes its settings from the config file)")
    cfg, config_path, run_dir = _new_run_config(args, "otf", validate_config)
    with RunLock(run_dir):
        _refuse_held_run_dir(run_dir, "otf")
        with _run_log(run_dir, args):
            return _new_run(cfg, config_path, run_dir)


def _check_structure_species(cfg: Mapping[str, Any], atoms: Any) -> None:
    """ConfigError unless model.species covers the elements of the built structure (a
    structure file may hold any), before the run directory is prepared or DFT runs."""
    from .learning import check_species

    try:
        check_species(cfg["model"]["species"], [atoms])
    except ValueError as exc:
        raise ConfigError(f"model.species: {exc}") from None


def _new_run(cfg: dict[str, Any], config_path: Path, run_dir: Path) -> int:
    """A new run of the resolved ``cfg`` in ``run_dir`` (locked by the caller)."""
    from ase.io import write

    from .otf import OTF

    atoms = build_structure(cfg["structure"])
    _check_structure_species(cfg, atoms)
    model = build_model(cfg["model"])
    build_labeller(cfg["labeller"], run_dir)  # its errors now, before the run directory is prepared
    labeller = cfg["labeller"]  # the OTF builds it the same way and fingerprints the whole specification
    _prepare_run_dir(cfg, config_path, run_dir)
    write(run_dir / INITIAL_STRUCTURE, atoms, format="extxyz")
    set_velocities(atoms, cfg["md"])
    dyn = build_dynamics(atoms, cfg["md"])
    with OTF(dyn, model, labeller, **cfg["otf"], **otf_model_options(cfg["model"])) as otf:
        summary = run_stages(otf, cfg, run_dir)
    print(f"otfgp: run finished in {run_dir}")
    print(format_summary(summary))
    return 0


def _resume(args: argparse.Namespace, run_dir: Path) -> int:
    """``otfgp otf --resume RUN_DIR [--checkpoint N] [--set ...] [--override FILE]`` (locked
    by the caller)."""
    from ase.io import read

    from .otf import OTF

    cfg = read_json_file(run_dir / RUN_CONFIG, f"restore it, or start the run afresh from its config copy "
                                                f"in {run_dir} in a new output directory")
    overrides = _resume_overrides(args)
    cfg, changed = apply_overrides(cfg, overrides)
    state_path = run_dir / "checkpoint" / "state.json"
    has_state = state_path.is_file() or args.checkpoint is not None
    if not has_state and holds_run(run_dir):
        read_checkpoint(run_dir)  # raises: outputs without a checkpoint (a restart would double them)
    state = read_checkpoint(run_dir, args.checkpoint) if has_state else None
    total = stage_bounds(cfg["md"]["stages"])[-1]
    if state is not None and args.checkpoint is None and not changed and state["step"] >= total \
            and (run_dir / "summary.json").is_file():
        print(f"otfgp: {run_dir} is complete ({total} steps); nothing to resume")
        summary = read_json_file(run_dir / "summary.json", "delete it; 'otfgp otf --resume' then rewrites it")
        if (run_dir / STAGES_FILE).is_file():
            summary["stages"] = read_stages_state(run_dir).get("dft_calls_per_stage", [])
        print(format_summary(summary))
        return 0
    atoms = read(run_dir / INITIAL_STRUCTURE)
    atoms.calc = None
    set_velocities(atoms, cfg["md"])
    dyn = build_dynamics(atoms, cfg["md"])
    build_labeller(cfg["labeller"], run_dir)  # a changed labeller that fails is not recorded
    labeller = cfg["labeller"]  # as for a new run (_new_run)
    if changed:
        write_json(run_dir / RUN_CONFIG, cfg, indent=2)  # later resumes keep the new settings
        print(f"otfgp: changed settings on resume: {json.dumps(changed)} (recorded in {run_dir / RUN_CONFIG} "
              f"and {run_dir / OVERRIDES_FILE})", file=sys.stderr)
    if state is not None:
        if "labeller" in changed:
            record_overrides(run_dir, {"step": state["step"], "checkpoint": state["checkpoint_index"],
                                       "labeller": changed["labeller"]})
        otf = OTF.resume(run_dir, dyn, labeller, checkpoint=args.checkpoint, **changed.get("otf", {}))
        # model files keep hyperparameters but neither priors nor bounds: restore them
        restore_hyperparameter_settings(otf.model, cfg["model"])
        print(f"otfgp: resuming {run_dir} at step {otf.step} "
              f"({len(otf.dft_calls)} DFT calls so far)", file=sys.stderr)
    else:
        if changed:
            record_overrides(run_dir, {"step": 0, "checkpoint": 0, **changed})
        print(f"otfgp: {run_dir} has no checkpoint yet; starting it from step 0", file=sys.stderr)
        otf = OTF(dyn, build_model(cfg["model"]), labeller,
                  **{**cfg["otf"], **otf_model_options(cfg["model"]), "output_dir": str(run_dir)})
    with otf:
        summary = run_stages(otf, cfg, run_dir)
    print(f"otfgp: run finished in {run_dir}")
    print(format_summary(summary))
    return 0


ACTIVE_INITIAL = "initial.traj"  # lossless: keeps the constraints (a slab's FixAtoms)


def cmd_active(args: argparse.Namespace) -> int:
    """``otfgp active CONFIG`` (a new active-learning run) or ``otfgp active --resume RUN_DIR``;
    the run directory is locked for the whole command."""
    from ase.io import read, write

    from .active.config import format_active_summary, run_active, validate_active_config

    if args.resume:
        run_dir = _resume_dir(args)
        cfg = read_json_file(run_dir / RUN_CONFIG, f"restore it, or start afresh from the config copy in {run_dir}")
        with RunLock(run_dir), _run_log(run_dir, args):
            atoms = read(run_dir / ACTIVE_INITIAL)
            atoms.calc = None
            result = run_active(cfg, run_dir, atoms, resume=True)
    else:
        cfg, config_path, run_dir = _new_run_config(args, "active", validate_active_config)
        with RunLock(run_dir):
            _refuse_held_run_dir(run_dir, "active")
            with _run_log(run_dir, args):
                atoms = build_structure(cfg["structure"])
                _check_structure_species(cfg, atoms)
                _prepare_run_dir(cfg, config_path, run_dir)
                write(run_dir / ACTIVE_INITIAL, atoms)
                result = run_active(cfg, run_dir, atoms, resume=False)
    print(f"otfgp: active learning finished in {run_dir}")
    print(format_active_summary(result))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``otfgp plot RUN_DIR [--test FRAMES]``: PNG plots of a run."""
    from .plots import plot_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "log.jsonl").is_file():
        raise ConfigError(f"{run_dir}: no log.jsonl (not an otfgp run directory)")
    if args.test and not Path(args.test).is_file():
        raise ConfigError(f"--test: {args.test} not found")
    try:
        written = plot_run(run_dir, test=args.test)
    except ValueError as exc:  # test frames without reference forces, ...
        raise ConfigError(str(exc)) from exc
    for p in written:
        print(p)
    return 0


def _load_model_file(src: Path) -> Any:
    """A model file of either kind (:func:`otfgp.models.load_model`); a missing, corrupt,
    truncated or foreign file is a ConfigError."""
    if not src.is_file():
        raise ConfigError(f"{src}: no such model file")
    try:
        return load_model(src)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def cmd_map(args: argparse.Namespace) -> int:
    """``otfgp map MODEL -o MAPPED``: spline-tabulate a trained model."""
    src = Path(args.model)
    gp = _load_model_file(src)
    if is_scalable(gp):
        raise ConfigError(f"{src}: a scalable model is mapped by construction (its basis is the map); "
                          "ScalableGP.save_mapped writes the pair style's file")
    if not gp.trained:
        raise ConfigError(f"{src}: the model is not trained")
    check_output_path("-o", args.output)  # the model file itself may be replaced by its mapped version
    grids = {k: v for k, v in (("grid2", args.grid2), ("grid3", args.grid3)) if v is not None}
    try:
        report = gp.map(tolerance=args.tolerance, variance=not args.no_variance, **grids)
    except ValueError as exc:  # a grid or tolerance out of range
        raise ConfigError(str(exc)) from exc
    gp.save(args.output)
    print(f"otfgp: wrote {args.output}: {report.summary()}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``otfgp eval MODEL FRAMES...``: errors and uncertainty metrics (otfgp.evaluate);
    one frame group per FRAMES file."""
    from ase.io import read

    from .evaluate import evaluate, plot

    src = Path(args.model)
    if not src.is_file():
        raise ConfigError(f"{src}: no such model file")
    missing = [f for f in args.frames if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"no such frames file: {', '.join(missing)}")
    inputs = [("the model", src), *(("a frames file", f) for f in args.frames)]
    if args.json:
        check_output_path("--json", args.json, inputs)
    if args.png:
        check_output_path("--png", args.png, inputs + ([("the --json output", args.json)] if args.json else []))
    gp = _load_model_file(src)
    frames, groups = [], []
    for f in args.frames:
        try:
            read_frames = read(f, index=":")
        except Exception as exc:  # ase raises many kinds for unreadable files
            raise ConfigError(f"{f}: cannot read frames ({exc})") from exc
        frames += read_frames
        groups += [f] * len(read_frames)
    try:
        report = evaluate(gp, frames, groups=groups, variance=args.variance,
                          error_threshold=args.error_threshold)
    except ValueError as exc:  # untrained model, frames without forces, ...
        raise ConfigError(str(exc)) from exc
    print(report.summary())
    if args.json:
        write_json(args.json, report.to_dict(), indent=2)
        print(f"otfgp: wrote {args.json}")
    if args.png:
        print(f"otfgp: wrote {plot(report, args.png)}")
    return 0


def _train_config(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved train config of ``otfgp train``: the config file (if any) with the
    command-line settings applied on top."""
    from .train import validate_train_config

    raw: dict[str, Any] = {}
    base_dir = Path(".")
    if args.config:
        raw = load_config(args.config)
        base_dir = Path(args.config).parent
    model = raw.setdefault("model", {})
    for key in ("species", "twobody", "threebody", "kind"):
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    if args.data:
        raw.setdefault("data", {})["files"] = [str(Path(f).resolve()) for f in args.data]
    train = raw.setdefault("train", {})
    for key in ("output", "summary", "select", "atoms_per_frame", "std_threshold", "calibrate"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.labels is not None:
        train["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    if args.no_optimize:
        train["optimize"] = False
    if args.no_map:
        train["map"] = False
    if "data" not in raw:
        raise ConfigError("give the data: --data FILE... or a config with a [data] section")
    return validate_train_config(raw, base_dir=base_dir)


def cmd_train(args: argparse.Namespace) -> int:
    """``otfgp train [CONFIG] [--data FILE...] ...``: fit a model to labelled frames."""
    from .train import format_train_summary, run_train

    summary = run_train(_train_config(args))
    print(format_train_summary(summary))
    print(f"otfgp: wrote {summary['output']} and {summary['summary']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``otfgp export MODEL|RUN_DIR -o DATA.extxyz``: the training set with its trained labels."""
    src = Path(args.model)
    if src.is_dir():
        src = src / "model.otfgp"
    if not src.is_file():
        raise ConfigError(f"{src}: no such model file (a run directory has model.otfgp once the run "
                          f"finished; give checkpoint/model_<n>.otfgp for an unfinished one)")
    gp = _load_model_file(src)
    if is_scalable(gp):
        raise ConfigError(f"{src}: a scalable model keeps no training structures (its file holds sums over "
                          "the labels), so there is nothing to export; export the labelled frames it was "
                          "trained on instead")
    if gp.n_training_structures == 0:
        raise ConfigError(f"{src}: the model has no training data")
    check_output_path("-o", args.output, [("the model", src)])
    n = gp.export_training_data(args.output)
    print(f"otfgp: wrote {args.output}: {n} frames, {gp.n_training_environments} force environments")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``otfgp`` argument parser with its otf, plot, map and eval commands."""
    ap = argparse.ArgumentParser(prog="otfgp", description="On-the-fly Gaussian-process force fields.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    loud = ap.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    loud.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    ap.add_argument("--version", action="version", version=f"otfgp {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("otf", help="on-the-fly learning run from a config file (or --resume)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="config file (.toml; .yaml/.yml with PyYAML)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--output-dir", help="override otf.output_dir")
    p.add_argument("--checkpoint", type=int, metavar="N",
                   help="with --resume: go back to the kept checkpoint N (newer ones are dropped)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="with --resume: change an [otf] or [labeller] setting from here on, e.g. "
                        "--set otf.threshold=0.02 --set labeller.electron_maxstep=200 (repeatable; TOML values)")
    p.add_argument("--override", metavar="FILE",
                   help="with --resume: a TOML/YAML file of [otf] and [labeller] settings to change "
                        "(--set applies after it)")
    p.set_defaults(func=cmd_otf)
    p = sub.add_parser("active", help="offline active learning (relaxation, ...) from a config file (or --resume)",
                       description="Simulate with the model, label a batch, retrain, until the task's "
                                   "termination test passes; see docs/active.md and docs/config.md ([active]).")
    p.add_argument("config", nargs="?", help="config file: [structure], [model], [labeller], [active]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--output-dir", help="override active.output_dir")
    p.set_defaults(func=cmd_active)
    p = sub.add_parser("plot", help="PNG plots of a run: temperature, training (and parity, uncertainty)")
    p.add_argument("run_dir")
    p.add_argument("--test", help="extxyz frames with reference forces: parity.png and uncertainty.png")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("map", help="tabulate a trained model as splines (mapped GP), report its accuracy")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="mapped model file to write")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest force deviation from the exact GP on held-out atoms, eV/A (default 5e-4)")
    p.add_argument("--grid2", type=int, help="fixed pair grid (nodes) instead of the automatic choice")
    p.add_argument("--grid3", type=int, help="fixed triplet grid (nodes per axis)")
    p.add_argument("--no-variance", action="store_true", help="do not tabulate the reduced variance")
    p.set_defaults(func=cmd_map)
    p = sub.add_parser("eval", help="force errors and uncertainty quality of a model on labelled frames")
    p.add_argument("model")
    p.add_argument("frames", nargs="+", help="frame files with reference forces (extxyz, ...); one group each")
    p.add_argument("--json", metavar="OUT.json", help="write the report as JSON")
    p.add_argument("--png", metavar="OUT.png", help="write a reliability diagram and |error|-vs-std plot")
    p.add_argument("--variance", choices=("auto", "exact", "mapped"), default="auto",
                   help="variance to evaluate (default auto: mapped if the model has variance maps)")
    p.add_argument("--error-threshold", type=float, default=None, metavar="X",
                   help="ROC-AUC positives: atoms with max |force error| > X eV/A (default: the median)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("train", help="fit a model to labelled frames (extxyz, vasprun.xml, QE output, ASE db)",
                       description="Fit a model to existing labelled frames; see docs/training.md. "
                                   "Command-line settings override the config's.")
    p.add_argument("config", nargs="?", help="train config (.toml/.yaml): [model], [data], [train]")
    p.add_argument("--data", nargs="+", metavar="FILE", help="frame files (any format ase.io.read reads)")
    p.add_argument("-o", "--output", help="model file to write (train.output, default model.otfgp)")
    p.add_argument("--summary", help="summary JSON (default: OUTPUT_STEM_summary.json)")
    p.add_argument("--species", nargs="+", help="model.species (default: the data's)")
    p.add_argument("--twobody", type=float, help="model.twobody cutoff, A")
    p.add_argument("--threebody", type=float, help="model.threebody cutoff, A")
    p.add_argument("--kind", choices=("exact", "scalable", "auto"),
                   help="model.kind: the exact GP, the scalable one (linear in the data; docs/scalable.md) or auto")
    p.add_argument("--labels", help="comma-separated labels to train: forces,energy,stress (default all)")
    p.add_argument("--select", choices=("all", "uncertainty"), help="train all atoms or choose by uncertainty")
    p.add_argument("--atoms-per-frame", type=int, help="with --select uncertainty: atoms added per frame")
    p.add_argument("--std-threshold", type=float, help="with --select uncertainty: add atoms above this std, eV/A")
    p.add_argument("--calibrate", help="fit this calibration form (otfgp.calibration) after training")
    p.add_argument("--no-optimize", action="store_true", help="keep the [model] hyperparameters")
    p.add_argument("--no-map", action="store_true", help="do not map the trained model")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("export", help="a model's (or run's) training set as extxyz with the trained labels")
    p.add_argument("model", help="model file, or a run directory (its model.otfgp)")
    p.add_argument("-o", "--output", required=True, help="extxyz file to write")
    p.set_defaults(func=cmd_export)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otfgp`` command line; returns the exit code (0 done, 1 run failed, 2 bad
    command line or config, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    _configure_console(args)
    package = logging.getLogger("otfgp")
    old_level = package.level
    if args.verbose:
        package.setLevel(logging.DEBUG)
    try:
        return _dispatch(args)
    finally:
        package.setLevel(old_level)


def _configure_console(args: argparse.Namespace) -> None:
    """Console logging of the command (an application configures logging; the library never
    does): INFO, WARNING only with -q; -v adds otfgp's DEBUG messages (main sets that level).
    The -q filter sits on the console handler, so a run's log file still gets INFO. Nothing
    is changed when the embedding program has configured logging already."""
    root = logging.getLogger()
    if root.handlers:
        return
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    console.setLevel(logging.WARNING if args.quiet else logging.NOTSET)
    root.addHandler(console)
    root.setLevel(logging.INFO)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; errors become messages and exit codes."""
    from .label_checks import LabelRejected
    from .otf import DynamicsError, LabellerError

    command = "active" if args.command == "active" else "otf"  # the command a resume uses
    try:
        return args.func(args)
    except (ConfigError, RunDirError) as exc:
        print(f"otfgp: error: {exc}", file=sys.stderr)
        return 2
    except DynamicsError as exc:
        print(f"otfgp: error: {exc}", file=sys.stderr)
        return 1
    except LabelRejected as exc:  # absurd labels: a stop naming labeller, step and check
        print(f"otfgp: error: {exc}\notfgp: continue with 'otfgp {command} --resume "
              f"{getattr(args, 'run_dir', None) or 'RUN_DIR'}'", file=sys.stderr)
        return 1
    except LabellerError as exc:
        where = getattr(args, "run_dir", None) or "RUN_DIR"
        print(f"otfgp: DFT failed: {exc}\notfgp: everything up to the last checkpoint is saved; "
              f"continue with 'otfgp {command} --resume {where}'", file=sys.stderr)
        return 1
    except OSError as exc:  # a file that cannot be written (permissions, a full disk, ...)
        print(f"otfgp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"otfgp: interrupted; continue with 'otfgp {command} --resume RUN_DIR'", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
