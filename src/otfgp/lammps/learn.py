"""Python half of LAMMPS's ``fix otfgp/learn``: the learning step of :mod:`otfgp.learning`
for frames that come from LAMMPS.

Called on MPI rank 0 from inside LAMMPS (cpp/lammps/python_bridge.cpp). The C++ fix only
tests, every N steps, whether the largest force std exceeds the force threshold
these functions return, or the largest local-energy std the local-energy threshold
(None: that test is off); the threshold rules, the choice of atoms, labelling, retraining and
re-mapping are the ASE learner's (:mod:`otfgp.learning`). The stds are those the ASE learner
compares (the latent force std, or its calibrated epistemic part with ``force_decision
calibrated``; the epistemic part of the calibrated local-energy std), so a threshold means the
same in both.
``request["cell_changes"]`` says whether the LAMMPS box can change during the run.

``request["options"]`` holds the fix keywords the input script gave, under their
:class:`~otfgp.learning.LearningOptions` names and with Python types; the others take the
same defaults as :class:`otfgp.OTFOptions`. ``request["labeller"]`` is anything
:func:`otfgp.labellers.make_labeller` accepts as a string (``module:function``, ``emt``);
it is built (a module imported) once per run, in :func:`start`.

Every label passes the sanity checks of :mod:`otfgp.label_checks` (the ``label_*`` options)
before anything is trained or saved; a rejected frame goes to ``<output_dir>/quarantine/``
and :class:`~otfgp.label_checks.LabelRejected` becomes the fix's LAMMPS error.

``output_dir`` is created when the run starts (:func:`start`; an unusable one is an error
then), and each label is written to ``<output_dir>/dft/`` as soon as the labeller returns,
before the retrain, so a failure after the DFT call loses no label; the fix's model is then
read from its file again at the next run, as it is when the file was replaced since the fix
last read or wrote it.

Models are never overwritten in place: each retrained model is written to
``<output_dir>/models/model_<step>.otfgp`` (the last :data:`KEEP_MODELS` are kept; the model
the fix started from is kept as ``models/model_start.otfgp``), then the pair style's model
file is replaced by it atomically (temporary file and rename), so it always holds a
complete model, the newest.

The scalable model (:class:`otfgp.ScalableGP`): the pair style reads its mapped export
(:meth:`otfgp.ScalableGP.to_mapped`, no training data), the fix learns on the ScalableGP
itself. It is reached two ways. ``options["scalable_after"]`` (fix keyword
``scalable_after``) is the automatic switch of the ASE driver
(:func:`otfgp.learning.switch_due`, :func:`otfgp.learning.switch_to_scalable`); the switch
goes into that call's ``learn_log.jsonl`` line as ``"model_switch"``, and the learner state
is kept in ``<output_dir>/`` :data:`SCALABLE_MODEL`. ``request["scalable_model"]`` (fix
keyword ``scalable_model``) names a ScalableGP file (:meth:`otfgp.ScalableGP.save`) of which
the pair's model file is the export: the run starts from it, and it is then kept up to date
like the model file. Each retrain of a ScalableGP writes ``models/model_<step>.npz`` (the
learner state) and ``models/model_<step>.otfgp`` (its export), then replaces the learner
state's file and the pair's model file atomically.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from .. import atomic_io
from ..gp import GaussianProcess
from ..label_checks import LabelChecks, LabelRejected
from ..labellers import make_labeller
from ..learning import (LabellerError, LearningOptions, add_and_retrain, add_threshold_value, choose_atoms,
                        held_out_check, label, local_energy_threshold_value, switch_due, switch_record,
                        switch_to_scalable, threshold_value)
from ..models import is_scalable, load_model

if TYPE_CHECKING:
    from ..models import Model

log = logging.getLogger(__name__)

KEEP_MODELS = 3
"""Retrained models kept in ``<output_dir>/models/`` (the newest and the ones before it)."""

SCALABLE_MODEL = "scalable_model.npz"
"""Where (in the output folder) the ScalableGP of an automatic switch is kept, the newest."""


class _FixState:
    """What one fix keeps between calls in a LAMMPS process: the model (retraining then
    extends it in memory instead of re-reading the file), the labeller and the DFT-call
    count. ``scalable_file`` is the file that holds a ScalableGP's learner state (None
    while the model is an exact GP)."""

    def __init__(self, model: Model, model_file: Path, scalable_file: Path | None = None) -> None:
        self.model = model
        self.model_file = model_file
        self.scalable_file = scalable_file
        self.files = self.file_signature()
        self.labeller: Any = None
        self.checks: LabelChecks | None = None
        self.calls = 0
        # pre-update errors of this run's DFT frames, for the calibration fit (a restarted
        # LAMMPS run starts them afresh; the model file keeps the last calibration)
        self.samples: list[dict[str, list[float]]] = []
        # the labeller's energies of the structures this run added (the energy reference)
        self.reference_energies: list[float | None] = []

    def file_signature(self) -> tuple[tuple[int, int, int] | None, ...]:
        """Inode, size and modification time of the files the model was read from or last
        written to: another signature means someone replaced them since."""
        out = []
        for path in (self.model_file, self.scalable_file):
            try:
                st = path.stat() if path is not None else None
            except OSError:
                st = None
            out.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)


# By fix ID and model file. A fix lives as long as its LAMMPS instance, and the embedded
# interpreter serves exactly those instances, so this is the fixes' own state, kept here
# because the C++ side cannot hold Python objects across calls without owning the GIL.
_fixes: dict[tuple[str, str], _FixState] = {}


def _key(request: dict[str, Any]) -> tuple[str, str]:
    return str(request["fix_id"]), str(request["model_file"])


def _state(request: dict[str, Any]) -> _FixState:
    """The fix's state, read afresh from the model file(s) when there is none yet or when
    the files were replaced since the fix last read or wrote them (a new model copied over
    the pair's file between runs: learning on the old one would overwrite it)."""
    state = _fixes.get(_key(request))
    if state is not None and state.file_signature() != state.files:
        log.info("fix %s: %s changed since the fix last read or wrote it; learning goes on from the file",
                 request["fix_id"], request["model_file"])
        state = None
    if state is None:
        model, scalable_file = _starting_model(request)
        state = _fixes[_key(request)] = _FixState(model, Path(request["model_file"]), scalable_file)
    return state


def _starting_model(request: dict[str, Any]) -> tuple[Model, Path | None]:
    """The model the fix starts learning on, and the file of its ScalableGP state (None for
    an exact GP): the pair's model file, or the ScalableGP ``request["scalable_model"]`` of
    which that file is the mapped export.

    Raises:
        ValueError: a mapped-only model file without ``scalable_model``; a
            ``scalable_model`` that is no trained ScalableGP, or whose export the model file
            is not.
    """
    model_file = Path(request["model_file"])
    gp = GaussianProcess.load(model_file)
    scalable = request.get("scalable_model")
    if scalable is None:
        if gp.core.mapped_only:
            switched = Path(request["output_dir"]) / SCALABLE_MODEL
            hint = (f" ({switched} is the ScalableGP of this output folder's automatic switch)"
                    if switched.exists() else "")
            raise ValueError(f"{model_file} is the maps of an exported ScalableGP, which take no training data: "
                             f"fix otfgp/learn needs a model that can learn: a GaussianProcess file, or the "
                             f"ScalableGP it was exported from, given with the keyword 'scalable_model FILE' "
                             f"(the .npz ScalableGP.save writes){hint}")
        return gp, None
    path = Path(scalable)
    try:
        model = load_model(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"scalable_model {path}: {exc}") from exc
    if not is_scalable(model):
        raise ValueError(f"scalable_model {path} is a GaussianProcess file, not a ScalableGP (the .npz "
                         f"ScalableGP.save writes); an exact GP is given as the pair style's model file alone")
    if not model.trained:
        raise ValueError(f"scalable_model {path} is not trained: train it (and export it as the pair style's "
                         f"model file with ScalableGP.save_mapped) before the run")
    problem = _export_mismatch(gp, model)
    if problem:
        raise ValueError(f"the pair style's model file {model_file} is not the mapped export of scalable_model "
                         f"{path} ({problem}): write it with ScalableGP.save_mapped from that model")
    return model, path


def _export_mismatch(gp: GaussianProcess, model: Any) -> str | None:
    """What tells the model file ``gp`` apart from the mapped export of the ScalableGP
    ``model`` (None: it is that export, to rounding), so that the pair style never predicts
    with another model than the one the fix learns on."""
    if not gp.core.mapped_only:
        return "it is an exact GaussianProcess, not a mapped-only file"
    if gp.species != model.species or gp.cutoffs != model.cutoffs:
        return f"species / cutoffs {gp.species} {gp.cutoffs} against {model.species} {model.cutoffs}"
    if gp.hyperparameters != model.hyperparameters:
        return "other hyperparameters"
    export = model.to_mapped()
    if gp.calibration != export.calibration:
        # a calibration given to save_mapped only: the first retrain's export would drop it
        return "another calibration (export it with the ScalableGP's own, save_mapped without calibration=)"
    mine, theirs = gp.core.maps, export.core.maps
    # the export's arrays are products (V m, V P V^T), equal to rounding on another machine
    # or thread count, hence a tolerance, far below any retrain's change
    same = len(mine["tables"]) == len(theirs["tables"]) and all(
        a["basis_mean"].shape == b["basis_mean"].shape and np.allclose(a["basis_mean"], b["basis_mean"], rtol=1e-9,
                                                                       atol=1e-12)
        for a, b in zip(mine["tables"], theirs["tables"]))
    if not same or not np.allclose(mine["covariance"], theirs["covariance"], rtol=1e-9, atol=1e-15):
        return "other basis coefficients"
    return None


def _options(request: dict[str, Any]) -> LearningOptions:
    options = LearningOptions.from_dict(dict(request.get("options", {})))
    return options.for_cell(bool(request.get("cell_changes", False)))


def _thresholds(request: dict[str, Any], options: LearningOptions,
                model: GaussianProcess) -> tuple[float, float | None]:
    return (threshold_value(options, model),
            local_energy_threshold_value(options, model, bool(request.get("cell_changes", False))))


def start(request: dict[str, Any]) -> tuple[float, float | None]:
    """Check the fix's options and labeller (ValueError naming the problem); returns the
    DFT-call thresholds for the current model: on the force std (eV/A) and on the
    epistemic local-energy std (eV, None: no such test)."""
    options = _options(request)
    out = _usable_output_dir(Path(request["output_dir"]))
    state = _state(request)
    spec = str(request["labeller"])
    try:
        state.labeller = make_labeller(spec)  # imports a module:function now, not at the first call
    except Exception as exc:
        raise ValueError(f"labeller {spec}: {type(exc).__name__}: {exc}") from exc
    _require_usable_labeller(spec, state.labeller)
    state.checks = LabelChecks(options, spec, out, history=out / "dft", digits=9)
    return _thresholds(request, options, state.model)


def _usable_output_dir(out: Path) -> Path:
    """``out``, created if missing, or a ValueError naming ``output_dir`` when it cannot be
    a folder the fix writes to: found at the start of the run, not after a DFT call whose
    label could then not be saved."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"output_dir {out} cannot be created: {exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir {out} is not writable")
    return out


def _require_usable_labeller(spec: str, labeller: Any) -> None:
    """ValueError unless ``labeller`` is something :func:`otfgp.learning.label` can call: an
    ASE calculator or a callable. Checked at the start of the run, so that a
    ``module:name`` naming e.g. a variable stops LAMMPS before the first step, not at the
    first DFT call hours later."""
    if isinstance(labeller, BaseCalculator) or callable(labeller):
        return
    raise ValueError(f"labeller {spec} is not callable (an object of type {type(labeller).__name__}): give a "
                     "function that takes an ase.Atoms and returns an ASE calculator or a dict of results")


def training_environments(request: dict[str, Any]) -> int:
    """The training environments of the model the fix learns on (thermo ``f_ID[2]``; the
    pair style's copy of a ScalableGP, its mapped export, holds no training data)."""
    return int(_state(request).model.n_training_environments)


def learn(request: dict[str, Any]) -> tuple[bytes, float, float | None]:
    """Label the frame, add its most uncertain environments, retrain, save model and frame;
    returns the new model file bytes (for LAMMPS to broadcast; a ScalableGP's mapped export)
    and the new thresholds (as :func:`start`). After the retrain that takes an exact GP past
    ``scalable_after`` environments the fix goes on with a ScalableGP (see the module
    docstring).

    ``learn_log.jsonl`` gets one line per call, with ``pre_update``: the model's force errors
    on this frame before learning it (sums, see :func:`otfgp.learning.pre_update_record`;
    ``audit`` marks frames labelled on the audit schedule although below the threshold),
    ``model``: the class of the model after the call, and ``model_switch`` on the call that
    switched (:func:`otfgp.learning.switch_record`, with the switch's ``seconds`` and the
    ``scalable_model`` file)."""
    t0 = time.perf_counter()
    options = _options(request)
    state = _state(request)
    gp = state.model
    symbols = [request["type_symbols"][t] for t in request["types"]]
    atoms = Atoms(symbols, positions=request["positions"], cell=request["cell"],
                  pbc=[bool(p) for p in request["pbc"]])
    # The model's prediction before it learns the frame: a held-out sample of its error.
    before = gp.predict(atoms, variance=options.uncertainty)
    step = int(request["step"])
    atoms.arrays["gp_forces"] = np.asarray(before.forces)  # for the label checks' z-score test
    atoms.arrays["gp_force_stds"] = np.asarray(before.force_stds)
    try:
        labelled = label(atoms, state.labeller, stress=options.add_stress, checks=state.checks, step=step)
    except LabelRejected:
        raise  # its message names the labeller, the step and the check
    except LabellerError as exc:
        raise LabellerError(f"labeller {request['labeller']} failed: {exc}", exc.program_output) from exc
    out = Path(request["output_dir"])
    # The label is saved before anything else can fail: a DFT call may have cost hours.
    (out / "dft").mkdir(parents=True, exist_ok=True)
    labelled.info["lammps_step"] = step
    frame_file = out / "dft" / f"frame_{step:09d}.extxyz"
    atomic_io.write_atoms(frame_file, labelled)
    try:
        return _learn_label(request, state, options, before, labelled, t0)
    except Exception as exc:
        _fixes.pop(_key(request), None)  # the model in memory may be half updated: the next run reads the file
        raise RuntimeError(f"the label is saved in {frame_file}, but learning from it failed: "
                           f"{type(exc).__name__}: {exc}") from exc


def _learn_label(request: dict[str, Any], state: _FixState, options: LearningOptions, before: Any,
                 labelled: Atoms, t0: float) -> tuple[bytes, float, float | None]:
    """Train on the saved label of :func:`learn` (``before``: the model's prediction of the
    frame before it learnt it), save the model and log the call."""
    gp = state.model
    step = int(request["step"])
    out = Path(request["output_dir"])
    sigma_n = gp.hyperparameters["noise_force"]
    pre_update, sample = held_out_check(gp, before, labelled, sigma_n)
    chosen = choose_atoms(np.asarray(request["stds"]), add_threshold_value(options, gp),
                          options.max_atoms_added)
    threshold, le_threshold = _thresholds(request, options, gp)  # the ones this step was tested against
    state.calls += 1
    state.samples.append(sample)
    retrain = add_and_retrain(gp, labelled, chosen, options, calls=state.calls, samples=state.samples,
                              reference_energies=state.reference_energies)
    warnings = list(retrain.warnings)
    switch = None
    if switch_due(gp, options):
        t = time.perf_counter()
        gp, switched = switch_to_scalable(gp, options, samples=state.samples,
                                          reference_energies=state.reference_energies)
        warnings += switched.warnings
        state.model, state.scalable_file = gp, out / SCALABLE_MODEL
        switch = {**switch_record(gp, options, step), "seconds": time.perf_counter() - t,
                  "scalable_model": str(state.scalable_file)}
        log.info("step %d: switched to the scalable GP at %d training environments (threshold %d; "
                 "%d coefficients, rank %d) in %.2f s", step, gp.n_training_environments, options.scalable_after,
                 gp.n_coefficients, gp.rank, switch["seconds"])
    payload = _save_model(state, Path(request["model_file"]), out / "models", step)
    state.files = state.file_signature()  # the fix's own writes are no outside change
    entry = {"step": step, "max_std_eV_per_A": float(request["max_std"]),
             "threshold_eV_per_A": threshold, "max_local_energy_std_eV": request.get("max_local_energy_std"),
             "local_energy_threshold_eV": le_threshold, "fired": request.get("fired"),
             "added_atoms": chosen.tolist(),
             "training_environments": gp.n_training_environments,
             "audit": bool(request.get("audit", False)), "pre_update": pre_update,
             "hyperparameters": gp.hyperparameters, "hyperparameter_warnings": warnings,
             "model": type(gp).__name__, "seconds": time.perf_counter() - t0}
    if switch is not None:
        entry["model_switch"] = switch
    with open(out / "learn_log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    return (payload, *_thresholds(request, options, gp))


def _save_model(state: _FixState, model_file: Path, models: Path, step: int) -> bytes:
    """Save the retrained model under a new name in ``models`` (after keeping the model the
    fix started from, once), prune all but the last :data:`KEEP_MODELS`, and replace
    ``model_file`` atomically and durably (:func:`otfgp.atomic_io.write_model`), so that it is
    never torn and the previous models stay on disk. A ScalableGP is saved twice, its
    learner state (``.npz``, also replacing ``state.scalable_file``) and its mapped export
    (``.otfgp``, the pair style's model file). Returns the bytes of the pair's new model."""
    models.mkdir(parents=True, exist_ok=True)
    _keep_start(model_file, models / "model_start.otfgp")
    model = state.model
    if is_scalable(model):
        assert state.scalable_file is not None
        _keep_start(state.scalable_file, models / "model_start.npz")
        atomic_io.write_model(models / f"model_{step:09d}.npz", model)
        _prune(models, "npz")
        atomic_io.write_model(state.scalable_file, model)
        model = model.to_mapped()
    atomic_io.write_model(models / f"model_{step:09d}.otfgp", model)
    _prune(models, "otfgp")
    atomic_io.write_model(model_file, model)
    return model.core.to_bytes()


def _keep_start(path: Path, start: Path) -> None:
    """Copy ``path`` (if it exists) to ``start`` unless that was done before."""
    if not start.exists() and path.exists():
        atomic_io.replace_with(start, lambda tmp: shutil.copyfile(path, tmp))


def _prune(models: Path, suffix: str) -> None:
    for old in sorted(models.glob(f"model_[0-9]*.{suffix}"))[:-KEEP_MODELS]:
        old.unlink(missing_ok=True)
