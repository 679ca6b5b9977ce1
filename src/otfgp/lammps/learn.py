"""Python half of LAMMPS's ``fix otfgp/learn``: the learning step of :mod:`otfgp.learning`
for frames that come from LAMMPS.

Called on MPI rank 0 from inside LAMMPS (cpp/lammps/python_bridge.cpp). The C++ fix only
tests, every N steps, whether the largest reported force std exceeds the force threshold
these functions return, or the largest reported local-energy std the local-energy threshold
(None: that test is off); the threshold rules, the choice of atoms, labelling, retraining and
re-mapping are the ASE learner's (:mod:`otfgp.learning`). Both stds are the model's reported
(calibrated) ones, as in the ASE learner, so a threshold means the same in both.
``request["cell_changes"]`` says whether the LAMMPS box can change during the run.

``request["options"]`` holds the fix keywords the input script gave, under their
:class:`~otfgp.learning.LearningOptions` names and with Python types; the others take the
same defaults as :class:`otfgp.OTFOptions`. ``request["labeller"]`` is anything
:func:`otfgp.labellers.make_labeller` accepts as a string (``module:function``, ``emt``);
it is built (a module imported) once per run, in :func:`start`.

Every label passes the sanity checks of :mod:`otfgp.label_checks` (the ``label_*`` options)
before anything is trained or saved; a rejected frame goes to ``<output_dir>/quarantine/``
and :class:`~otfgp.label_checks.LabelRejected` becomes the fix's LAMMPS error.

Models are never overwritten in place: each retrained model is written to
``<output_dir>/models/model_<step>.otfgp`` (the last :data:`KEEP_MODELS` are kept; the model
the fix started from is kept as ``models/model_start.otfgp``), then the pair style's model
file is replaced by it atomically (temporary file and rename), so it always holds a
complete model, the newest.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from .. import atomic_io
from ..gp import GaussianProcess
from ..label_checks import LabelChecks
from ..labellers import make_labeller
from ..learning import (LearningOptions, add_and_retrain, add_threshold_value, calibration_sample, choose_atoms,
                        label, local_energy_threshold_value, pre_update_record, threshold_value)

log = logging.getLogger(__name__)

KEEP_MODELS = 3
"""Retrained models kept in ``<output_dir>/models/`` (the newest and the ones before it)."""


class _FixState:
    """What one fix keeps between calls in a LAMMPS process: the model (retraining then
    extends it in memory instead of re-reading the file), the labeller and the DFT-call
    count."""

    def __init__(self, model: GaussianProcess) -> None:
        self.model = model
        self.labeller: Any = None
        self.checks: LabelChecks | None = None
        self.calls = 0
        # pre-update errors of this run's DFT frames, for the calibration fit (a restarted
        # LAMMPS run starts them afresh; the model file keeps the last calibration)
        self.samples: list[dict[str, list[float]]] = []
        # the labeller's energies of the structures this run added (the energy reference)
        self.reference_energies: list[float | None] = []


# By fix ID and model file. A fix lives as long as its LAMMPS instance, and the embedded
# interpreter serves exactly those instances, so this is the fixes' own state, kept here
# because the C++ side cannot hold Python objects across calls without owning the GIL.
_fixes: dict[tuple[str, str], _FixState] = {}


def _state(request: dict[str, Any]) -> _FixState:
    key = (str(request["fix_id"]), str(request["model_file"]))
    state = _fixes.get(key)
    if state is None:
        state = _fixes[key] = _FixState(GaussianProcess.load(request["model_file"]))
    return state


def _options(request: dict[str, Any]) -> LearningOptions:
    return LearningOptions.from_dict(dict(request.get("options", {})))


def _thresholds(request: dict[str, Any], options: LearningOptions,
                model: GaussianProcess) -> tuple[float, float | None]:
    return (threshold_value(options, model),
            local_energy_threshold_value(options, model, bool(request.get("cell_changes", False))))


def start(request: dict[str, Any]) -> tuple[float, float | None]:
    """Check the fix's options and labeller (ValueError naming the problem); returns the
    DFT-call thresholds for the current model: on the reported force std (eV/A) and on the
    reported local-energy std (eV, None: no such test)."""
    options = _options(request)
    state = _state(request)
    if state.model.core.mapped_only:
        raise ValueError(f"{request['model_file']} is the maps of an exported ScalableGP, which take no "
                         f"training data: fix otfgp/learn needs a model that can learn (a GaussianProcess file)")
    spec = str(request["labeller"])
    try:
        state.labeller = make_labeller(spec)  # imports a module:function now, not at the first call
    except Exception as exc:
        raise ValueError(f"labeller {spec}: {type(exc).__name__}: {exc}") from exc
    _require_usable_labeller(spec, state.labeller)
    out = Path(request["output_dir"])
    state.checks = LabelChecks(options, spec, out, history=out / "dft", digits=9)
    return _thresholds(request, options, state.model)


def _require_usable_labeller(spec: str, labeller: Any) -> None:
    """ValueError unless ``labeller`` is something :func:`otfgp.learning.label` can call: an
    ASE calculator or a callable. Checked at the start of the run, so that a
    ``module:name`` naming e.g. a variable stops LAMMPS before the first step, not at the
    first DFT call hours later."""
    if isinstance(labeller, BaseCalculator) or callable(labeller):
        return
    raise ValueError(f"labeller {spec} is not callable (an object of type {type(labeller).__name__}): give a "
                     "function that takes an ase.Atoms and returns an ASE calculator or a dict of results")


def learn(request: dict[str, Any]) -> tuple[bytes, float, float | None]:
    """Label the frame, add its most uncertain environments, retrain, save model and frame;
    returns the new model file bytes (for LAMMPS to broadcast) and the new thresholds (as
    :func:`start`).

    ``learn_log.jsonl`` gets one line per call, with ``pre_update``: the model's force errors
    on this frame before learning it (sums, see :func:`otfgp.learning.pre_update_record`;
    ``audit`` marks frames labelled on the audit schedule although below the threshold)."""
    t0 = time.perf_counter()
    options = _options(request)
    state = _state(request)
    if state.model.core.mapped_only:
        raise ValueError(f"{request['model_file']} is the maps of an exported ScalableGP, which take no "
                         f"training data: fix otfgp/learn needs a model that can learn (a GaussianProcess file)")
    gp = state.model
    symbols = [request["type_symbols"][t] for t in request["types"]]
    atoms = Atoms(symbols, positions=request["positions"], cell=request["cell"],
                  pbc=[bool(p) for p in request["pbc"]])
    # The model's prediction before it learns the frame: a held-out sample of its error.
    before = gp.predict(atoms, variance=options.uncertainty)
    sigma_n = gp.hyperparameters["noise_force"]
    step = int(request["step"])
    atoms.arrays["gp_forces"] = np.asarray(before.forces)  # for the label checks' z-score test
    atoms.arrays["gp_force_stds"] = np.asarray(before.force_stds)
    labelled = label(atoms, state.labeller, stress=options.add_stress, checks=state.checks, step=step)
    pre_update = pre_update_record(before.forces, before.latent_force_stds, labelled, sigma_n,
                                   reported_stds=before.force_stds)
    chosen = choose_atoms(np.asarray(request["stds"]), add_threshold_value(options, gp),
                          options.max_atoms_added)
    threshold, le_threshold = _thresholds(request, options, gp)  # the ones this step was tested against
    state.calls += 1
    state.samples.append(calibration_sample(before.forces, before.latent_force_variances, labelled))
    retrain = add_and_retrain(gp, labelled, chosen, options, calls=state.calls, samples=state.samples,
                              reference_energies=state.reference_energies)
    out = Path(request["output_dir"])
    _save_model(gp, Path(request["model_file"]), out / "models", step)
    (out / "dft").mkdir(parents=True, exist_ok=True)
    labelled.info["lammps_step"] = step
    atomic_io.write_atoms(out / "dft" / f"frame_{step:09d}.extxyz", labelled)
    entry = {"step": step, "max_std_eV_per_A": float(request["max_std"]),
             "threshold_eV_per_A": threshold, "max_local_energy_std_eV": request.get("max_local_energy_std"),
             "local_energy_threshold_eV": le_threshold, "fired": request.get("fired"),
             "added_atoms": chosen.tolist(),
             "training_environments": gp.n_training_environments,
             "audit": bool(request.get("audit", False)), "pre_update": pre_update,
             "hyperparameters": gp.hyperparameters, "hyperparameter_warnings": retrain.warnings,
             "seconds": time.perf_counter() - t0}
    with open(out / "learn_log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    return (gp.core.to_bytes(), *_thresholds(request, options, gp))


def _save_model(gp: GaussianProcess, model_file: Path, models: Path, step: int) -> None:
    """Save the retrained model under a new name in ``models`` (after keeping the model the
    fix started from, once), prune all but the last :data:`KEEP_MODELS`, and replace
    ``model_file`` atomically and durably (:func:`otfgp.atomic_io.write_model`), so that it is
    never torn and the previous models stay on disk."""
    models.mkdir(parents=True, exist_ok=True)
    start = models / "model_start.otfgp"
    if not start.exists() and model_file.exists():
        atomic_io.replace_with(start, lambda tmp: shutil.copyfile(model_file, tmp))
    atomic_io.write_model(models / f"model_{step:09d}.otfgp", gp)
    for old in sorted(models.glob("model_[0-9]*.otfgp"))[:-KEEP_MODELS]:
        old.unlink(missing_ok=True)
    atomic_io.write_model(model_file, gp)
