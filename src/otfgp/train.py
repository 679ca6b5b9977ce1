"""``otfgp train``: fit a model to existing labelled frames (offline training).

Frames come from any file ``ase.io.read(path, index=":")`` reads (extended XYZ, VASP's
vasprun.xml / OUTCAR, Quantum ESPRESSO output, ASE databases, trajectories, ...), with
their labels in the single-point calculator ASE attaches. A training-data export
(:meth:`otfgp.GaussianProcess.export_training_data`) carries a per-atom ``force_trained``
array; only those atoms' forces are labels, so an export trains into the same training set.

A train config has three sections (keys: docs/training.md; ``[model]`` is the one of
``otfgp otf``, validated and built by the same code)::

    [model]
    species = ["Al"]        # default: the species found in the data
    twobody = 5.0
    threebody = 3.5

    [data]
    files = ["frames.extxyz", "run.db"]   # relative to the config file
    # index = ":"           # ASE index of the frames to read from every file
    # format = "extxyz"     # ASE format name (default: from the file name)

    [train]                 # TrainOptions fields, plus output and summary
    output = "model.otfgp"
    # labels = ["forces", "energy", "stress"]   # each used where a frame has it
    # select = "uncertainty"; atoms_per_frame = 4; std_threshold = 0.05
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .arguments import count, flag, positive_number
from .config import ConfigError, _check_keys, _validate_model, check_output_path
from .reference_labels import reference_energy

if TYPE_CHECKING:
    from ase import Atoms

    from .gp import GaussianProcess

log = logging.getLogger(__name__)

TRAIN_SECTIONS = ("model", "data", "train")
DATA_KEYS = ("files", "index", "format")
LABELS = ("forces", "energy", "stress")
SELECT = ("all", "uncertainty")


@dataclass
class TrainOptions:
    """How ``otfgp train`` fits the model (the ``[train]`` keys besides output and summary).

    ``labels``: which labels are trained, each only where a frame has it (stresses only
    for periodic cells). ``select``: ``"all"`` trains every atom's forces; ``"uncertainty"``
    goes through the frames in order and adds, per frame, up to ``atoms_per_frame`` atoms
    whose epistemic force std under the model trained so far is largest and above
    ``std_threshold`` (eV/A; a frame with none above it is skipped, energy and stress
    included), exactly the on-the-fly learner's choice of atoms
    (:func:`otfgp.learning.choose_atoms`); the first frame gives ``init_atoms`` random
    atoms (seeded by ``seed``; 0: all). Between frames the model is re-solved with the
    hyperparameters optimised once on the first frame. Finally the hyperparameters are
    optimised (``optimize``; ``max_iterations`` L-BFGS-B iterations, ``restarts`` random
    restarts), then ``calibrate`` (a form of :mod:`otfgp.calibration`, or None) and
    ``map`` (to ``map_tolerance`` eV/A, variance included).
    """

    labels: tuple[str, ...] = LABELS
    select: str = "all"
    atoms_per_frame: int | None = None
    init_atoms: int = 4
    std_threshold: float | None = None
    seed: int = 0
    optimize: bool = True
    max_iterations: int = 100
    restarts: int = 0
    map: bool = True
    map_tolerance: float | None = None
    calibrate: str | None = None

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        bad = [x for x in self.labels if x not in LABELS]
        if bad or not self.labels:
            raise ValueError(f"labels must be a non-empty list of {', '.join(LABELS)}, got {list(self.labels)}")
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {', '.join(SELECT)}, got {self.select!r}")
        count("atoms_per_frame", self.atoms_per_frame, allow_none=True)
        for name in ("init_atoms", "seed", "max_iterations", "restarts"):
            count(name, getattr(self, name), 0)
        for name in ("std_threshold", "map_tolerance"):
            positive_number(name, getattr(self, name))
        if self.select == "all" and (self.atoms_per_frame is not None or self.std_threshold is not None):
            raise ValueError('atoms_per_frame and std_threshold select atoms: they need select = "uncertainty"')
        for name in ("optimize", "map"):
            flag(name, getattr(self, name))
        if self.calibrate is not None:
            from .calibration import FORMS

            if self.calibrate not in FORMS:
                raise ValueError(f"calibrate must be one of {', '.join(FORMS)}, got {self.calibrate!r}")


TRAIN_KEYS = tuple(f.name for f in fields(TrainOptions)) + ("output", "summary")


def known_train_keys() -> dict[str, tuple[str, ...]]:
    """The keys a train config accepts, by section (``model`` as for ``otfgp otf``)."""
    from .config import MODEL_KEYS

    return {"config": TRAIN_SECTIONS, "model": MODEL_KEYS, "data": DATA_KEYS, "train": TRAIN_KEYS}


# --------------------------------------------------------------------------- config
def validate_train_config(cfg: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> dict[str, Any]:
    """Check a train config and return it resolved: data files absolute (relative to
    ``base_dir``), ``[train]`` with every default, ``summary`` next to ``output``. The
    ``[model]`` section is validated once the data are read (:func:`run_train`), because
    its species default to the data's.

    Raises:
        ConfigError: an unknown section or key, a missing file, a bad value.
    """
    _check_keys(cfg, TRAIN_SECTIONS, "config")
    for name in ("model", "data"):
        if name not in cfg:
            raise ConfigError(f"missing section [{name}]")
    data = cfg["data"]
    _check_keys(data, DATA_KEYS, "data")
    files = data.get("files")
    if isinstance(files, str):
        files = [files]
    if not files or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError("data.files must be a non-empty list of file names")
    resolved = []
    for f in files:
        p = Path(f) if Path(f).is_absolute() else Path(base_dir) / f
        if not p.exists():
            raise ConfigError(f"data.files: {p} not found")
        resolved.append(str(p.resolve()))
    index = data.get("index", ":")
    if not isinstance(index, (str, int)) or isinstance(index, bool):
        raise ConfigError(f"data.index must be an ASE index string (e.g. ':' or '::10') or an integer, got {index!r}")
    fmt = data.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise ConfigError(f"data.format must be an ASE format name, got {fmt!r}")
    train = dict(cfg.get("train", {}))
    _check_keys(train, TRAIN_KEYS, "train")
    output = str(train.pop("output", "model.otfgp"))
    summary = train.pop("summary", None)
    summary = str(summary) if summary is not None else str(Path(output).with_name(Path(output).stem + "_summary.json"))
    data_files = [("a data file", f) for f in resolved]
    check_output_path("train.output (-o)", output, data_files)
    check_output_path("train.summary (--summary)", summary, [*data_files, ("the model output", output)])
    try:
        options = TrainOptions(**train)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[train]: {exc}") from exc
    _check_keys(cfg["model"], known_train_keys()["model"], "model")
    return {"model": dict(cfg["model"]), "data": {"files": resolved, "index": index, "format": fmt},
            "train": {**asdict(options), "labels": list(options.labels), "output": output, "summary": summary}}


def read_frames(data: Mapping[str, Any]) -> list[tuple[str, int, "Atoms"]]:
    """(file, index in the file, frame) of every frame of a resolved ``[data]`` section.

    Raises:
        ConfigError: a file ASE cannot read, or one without frames.
    """
    from ase.io import read

    out = []
    for path in data["files"]:
        try:
            frames = read(path, index=data.get("index", ":"), format=data.get("format"))
        except Exception as exc:  # ASE raises many kinds for unreadable files
            raise ConfigError(f"{path}: cannot read frames ({type(exc).__name__}: {exc})") from exc
        frames = frames if isinstance(frames, list) else [frames]
        if not frames:
            raise ConfigError(f"{path}: no frames")
        out += [(path, i, atoms) for i, atoms in enumerate(frames)]
    _warn_duplicates(out)
    return out


def _warn_duplicates(frames: Sequence[tuple[str, int, "Atoms"]]) -> None:
    """Log a warning for frames that repeat an earlier one exactly (species, positions,
    cell): the GP takes their identical labels for independent measurements, and a frame
    given 3 times made its energy std 27x smaller and the held-out error 2x larger."""
    import hashlib

    first: dict[str, tuple[str, int]] = {}
    repeats = []
    for path, i, atoms in frames:
        h = hashlib.sha256()
        for part in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc):
            h.update(np.ascontiguousarray(part).tobytes())
        key = h.hexdigest()
        if key in first:
            repeats.append(((path, i), first[key]))
        else:
            first[key] = (path, i)
    if repeats:
        shown = "; ".join(f"{p}:{i} repeats {q}:{j}" for (p, i), (q, j) in repeats[:3])
        log.warning("%d frame(s) repeat an earlier frame exactly (%s%s): the model counts their labels as "
                    "independent data and becomes overconfident; remove the repeats", len(repeats), shown,
                    "; ..." if len(repeats) > 3 else "")


# --------------------------------------------------------------------------- fitting
def frame_labels(atoms: "Atoms", labels: Sequence[str]) -> dict[str, Any]:
    """The labels of a read frame that ``labels`` asks for: ``forces`` (N x 3) with
    ``force_atoms`` (the atoms whose forces are labels: ``force_trained`` of an export,
    else all), ``energy``, ``stress`` (Voigt, periodic cells only); absent ones are None."""
    from .reference_labels import labelled_force_atoms

    results = atoms.calc.results if atoms.calc is not None else {}
    out: dict[str, Any] = {"forces": None, "force_atoms": np.zeros(0, dtype=int), "energy": None, "stress": None}
    if "forces" in labels and results.get("forces") is not None:
        out["forces"] = np.asarray(results["forces"], dtype=float)
        out["force_atoms"] = labelled_force_atoms(atoms)
    if "energy" in labels and results.get("energy") is not None:
        out["energy"] = float(results["energy"])
    if ("stress" in labels and results.get("stress") is not None and atoms.pbc.all()
            and atoms.cell.volume > 1e-8):
        out["stress"] = np.asarray(results["stress"], dtype=float)
    return out


def _choose(model: "GaussianProcess", atoms: "Atoms", candidates: np.ndarray, options: TrainOptions,
            rng: np.random.Generator) -> np.ndarray:
    """The atoms of one frame to train on (see :class:`TrainOptions`)."""
    from .learning import choose_atoms

    if options.select == "all" or candidates.size == 0:
        return candidates
    if not model.trained:  # the first frame: no model to ask yet
        n = min(options.init_atoms or candidates.size, candidates.size)
        return np.sort(rng.choice(candidates, n, replace=False))
    stds = np.full(len(atoms), -np.inf)
    stds[candidates] = model.predict(atoms, variance="exact").epistemic_force_stds.max(axis=1)[candidates]
    threshold = -np.inf if options.std_threshold is None else options.std_threshold
    if stds.max() <= threshold:
        return np.zeros(0, dtype=int)
    return np.sort(choose_atoms(stds, threshold, options.atoms_per_frame or candidates.size))


def fit(model: "GaussianProcess", frames: Sequence[tuple[str, int, "Atoms"]], options: TrainOptions
        ) -> dict[str, Any]:
    """Add the frames' labels to ``model`` as ``options`` says and train it (calibrate and
    map it as asked); returns the summary (counts, hyperparameters, optimisation, times).

    Raises:
        ConfigError: a frame's labels are unusable (the message names file and frame), or
            no frame has any label ``options.labels`` asks for.
    """
    from . import _core

    rng = np.random.default_rng(options.seed)
    times = {"selection": 0.0, "training": 0.0, "calibration": 0.0, "mapping": 0.0}
    used = skipped_unlabelled = skipped_confident = 0
    counts = {"force_environments": 0, "energies": 0, "stresses": 0}
    optimized_once = False
    # the labeller's energy of each training structure (None: none given): a model trained
    # without energy labels gets its energy reference from them (as on-the-fly learning does)
    reference_energies: list[float | None] = []
    for path, i, atoms in frames:
        lab = frame_labels(atoms, options.labels)
        where = f"{path} frame {i}"
        if lab["forces"] is None and lab["energy"] is None and lab["stress"] is None:
            skipped_unlabelled += 1
            continue
        t = time.perf_counter()
        try:
            chosen = _choose(model, atoms, lab["force_atoms"], options, rng)
        except (_core.InputError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        times["selection"] += time.perf_counter() - t
        if options.select == "uncertainty" and model.trained and lab["force_atoms"].size and chosen.size == 0:
            skipped_confident += 1
            continue
        if lab["forces"] is not None and chosen.size and not np.all(np.isfinite(lab["forces"][chosen])):
            raise ConfigError(f"{where}: forces of trained atoms are NaN or inf")
        try:
            model.add_training_data(atoms, forces=lab["forces"] if chosen.size else False,
                                    energy=False if lab["energy"] is None else lab["energy"],
                                    stress=False if lab["stress"] is None else lab["stress"],
                                    atom_indices=chosen if chosen.size else None)
        except (_core.InputError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        energy = reference_energy(atoms)
        added = model.n_training_structures - len(reference_energies)
        reference_energies += [energy if energy is not None and math.isfinite(energy) else None] * added
        used += 1
        log.debug("%s: %d force environments%s%s", where, chosen.size, ", energy" if lab["energy"] is not None else "",
                  ", stress" if lab["stress"] is not None else "")
        counts["force_environments"] += int(chosen.size)
        counts["energies"] += lab["energy"] is not None
        counts["stresses"] += lab["stress"] is not None
        if options.select == "uncertainty":  # the next frame's choice needs this one learnt
            t = time.perf_counter()
            model.train(optimize=options.optimize and not optimized_once, max_iterations=options.max_iterations)
            optimized_once = optimized_once or options.optimize
            times["training"] += time.perf_counter() - t
    if model.n_labels == 0:
        raise ConfigError(f"no frame has any of the labels {', '.join(options.labels)} "
                          f"({len(frames)} frames read)")
    t = time.perf_counter()
    model.train(optimize=options.optimize, restarts=options.restarts, max_iterations=options.max_iterations,
                seed=options.seed)
    times["training"] += time.perf_counter() - t
    if options.calibrate:
        t = time.perf_counter()
        model.calibrate(loo=True, form=options.calibrate)
        times["calibration"] = time.perf_counter() - t
    report = None
    if options.map and not getattr(model, "mapped_by_construction", False):
        t = time.perf_counter()
        report = model.map(tolerance=options.map_tolerance)
        times["mapping"] = time.perf_counter() - t
    energy_reference = None
    if not model.has_energy_labels and any(e is not None for e in reference_energies):
        # after mapping: the reference is fitted to the energies the model will predict
        energy_reference = model.set_energy_reference(reference_energies)
        log.info("energy reference from %d frame energies (not trained on): %s",
                 sum(e is not None for e in reference_energies),
                 ", ".join(f"{k} {v:.6g} eV" for k, v in energy_reference.items()))
    opt = model.last_optimization if options.optimize else None
    return {
        "frames_read": len(frames),
        "frames_used": used,
        "frames_without_labels": skipped_unlabelled,
        "frames_skipped_confident": skipped_confident,
        **counts,
        "training_structures": model.n_training_structures,
        "training_environments": model.n_training_environments,
        "training_labels": model.n_labels,
        "hyperparameters": model.hyperparameters,
        "log_likelihood": float(model.log_likelihood()),
        "optimization": None if opt is None else {"converged": opt.converged, "iterations": opt.iterations,
                                                  "message": opt.message, "warnings": opt.warnings()},
        "calibrated": model.calibration is not None,
        "energy_reference": energy_reference,
        "mapped": getattr(model, "mapped_by_construction", False) or model.mapped,
        "model_kind": type(model).__name__,
        "map": None if report is None else report.summary(),
        "wall_time_s": times,
    }


def run_train(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Read the data of a resolved train config (:func:`validate_train_config`), build the
    ``[model]`` (species default to the data's), fit it, save it to ``train.output`` and
    the summary to ``train.summary`` (both atomically); returns the summary."""
    from ase.data import atomic_numbers

    from . import __version__
    from .atomic_io import write_json, write_model
    from .builders import build_model
    from .models import is_scalable

    t0 = time.perf_counter()
    frames = read_frames(cfg["data"])
    t_read = time.perf_counter() - t0
    model_cfg = dict(cfg["model"])
    if "species" not in model_cfg:
        found = {s for _, _, a in frames for s in a.get_chemical_symbols()}
        model_cfg["species"] = sorted(found, key=lambda s: atomic_numbers[s])
    train = dict(cfg["train"])
    output, summary_path = train.pop("output"), train.pop("summary")
    options = TrainOptions(**train)
    # kind = "auto": the exact GP up to scalable_after force environments, beyond that the
    # scalable one (the frames' atoms bound the environments from above)
    model = build_model(_validate_model(model_cfg, {}), environments=sum(len(a) for _, _, a in frames))
    if options.calibrate and is_scalable(model):
        raise ConfigError("train.calibrate: the scalable model keeps no label rows, so it has no "
                          "leave-one-out residuals to calibrate on; leave calibrate unset (or use "
                          "model.kind = 'exact') and calibrate it on held-out frames "
                          "(ScalableGP.calibrate(frames=...))")
    log.info("training on %d frames from %s", len(frames), ", ".join(cfg["data"]["files"]))
    summary = fit(model, frames, options)
    write_model(output, model)
    summary["wall_time_s"] = {"read": t_read, **summary["wall_time_s"], "total": time.perf_counter() - t0}
    summary = {"otfgp_version": __version__, "output": str(output), "summary": str(summary_path),
               "files": [{"path": p, "frames": sum(1 for f, _, _ in frames if f == p)} for p in cfg["data"]["files"]],
               "model": {"species": model.species, "cutoffs": model.cutoffs},
               "options": {**asdict(options), "labels": list(options.labels)}, **summary}
    write_json(summary_path, summary, indent=2)
    return summary


def format_train_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable report of a :func:`run_train` summary."""
    w = summary["wall_time_s"]
    lines = [f"frames: {summary['frames_used']} of {summary['frames_read']} used"
             + (f" ({summary['frames_without_labels']} without labels)" if summary["frames_without_labels"] else "")
             + (f" ({summary['frames_skipped_confident']} below the std threshold)"
                if summary["frames_skipped_confident"] else ""),
             f"training set: {summary['training_environments']} force environments, {summary['energies']} "
             f"energies, {summary['stresses']} stresses ({summary['training_labels']} labels)",
             "hyperparameters: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["hyperparameters"].items())]
    opt = summary.get("optimization")
    if opt and opt["warnings"]:
        lines.append("WARNING: " + "; ".join(opt["warnings"]))
    if summary.get("energy_reference"):
        lines.append("energy reference (from frame energies not trained on): "
                     + ", ".join(f"{k} {v:.6g} eV" for k, v in summary["energy_reference"].items()))
    if summary.get("map"):
        lines.append(f"map: {summary['map']}")
    lines.append(f"wall time: {w['total']:.1f} s (read {w['read']:.1f}, training {w['training']:.1f}, "
                 f"mapping {w['mapping']:.1f})")
    return "\n".join(lines)
