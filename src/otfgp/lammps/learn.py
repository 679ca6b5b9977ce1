"""Python side of LAMMPS's ``fix otfgp/learn``: label a frame, retrain, return the model.

Called on MPI rank 0 from inside LAMMPS (see cpp/lammps/python_bridge.cpp). The labeller is
``module:function``; the function receives an :class:`ase.Atoms` and returns either an ASE
calculator (which is then asked for energy, forces and, if needed, stress) or a dict with
``forces`` and optionally ``energy`` and ``stress``.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from ..gp import GaussianProcess

log = logging.getLogger(__name__)

# Models kept between calls of one LAMMPS process, by fix ID and model file: retraining
# then extends the model in memory instead of re-reading the file every time.
_models: dict[tuple[str, str], GaussianProcess] = {}
_calls: dict[tuple[str, str], int] = {}


def resolve_labeller(spec: str) -> Callable[[Atoms], Any]:
    """Import ``module:function`` (the working directory is on the import path)."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"labeller must be 'module:function', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportError(f"labeller module {module_name!r} does not import: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise AttributeError(f"labeller module {module_name!r} has no function {func_name!r}") from None


def label(atoms: Atoms, labeller: Callable[[Atoms], Any], stress: bool) -> Atoms:
    """Run the labeller on a copy of ``atoms``; returns the copy with a single-point calculator."""
    frame = atoms.copy()
    result = labeller(frame)
    if isinstance(result, BaseCalculator):  # Calculator and file-IO ones (Espresso)
        frame.calc = result
        results = {"energy": frame.get_potential_energy(), "forces": frame.get_forces()}
        if stress:
            results["stress"] = frame.get_stress(voigt=True)
    elif isinstance(result, dict):
        results = {k: result[k] for k in ("energy", "forces", "stress") if k in result}
    else:
        raise TypeError(f"labeller returned {type(result).__name__}; expected an ASE calculator or a dict")
    forces = np.asarray(results.get("forces"), dtype=float)
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise ValueError(f"labeller returned forces of shape {forces.shape} (need ({len(atoms)}, 3), finite)")
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, **results)
    return out


def learn(request: dict[str, Any]) -> bytes:
    """Label the frame, add the most uncertain environments, retrain, save; returns the new
    model file bytes for LAMMPS to broadcast."""
    t0 = time.perf_counter()
    key = (request["fix_id"], request["model_file"])
    opts = request["options"]
    gp = _models.get(key)
    if gp is None:
        gp = GaussianProcess.load(request["model_file"])
        _models[key] = gp
    symbols = [request["type_symbols"][t] for t in request["types"]]
    atoms = Atoms(symbols, positions=request["positions"], cell=request["cell"], pbc=[bool(p) for p in request["pbc"]])
    labelled = label(atoms, resolve_labeller(request["labeller"]), stress=bool(opts.get("stress", 0)))
    stds = np.asarray(request["stds"])
    order = np.argsort(-stds, kind="stable")
    above = [int(i) for i in order if stds[i] > opts["add_threshold"]]
    chosen = (above or [int(order[0])])[: int(opts["max_atoms"])]
    gp.add_training_data(labelled, forces=True, energy=bool(opts.get("energy", 0)),
                         stress=bool(opts.get("stress", 0)), atom_indices=chosen)
    calls = _calls.get(key, 0) + 1
    _calls[key] = calls
    gp.train(optimize=calls <= int(opts.get("optimize_until_calls", 20)))
    if opts.get("map", 1):
        gp.map(variance=bool(opts.get("map_variance", 0)))  # logs its report
    gp.save(request["model_file"])
    out = Path(request["output_dir"])
    (out / "dft").mkdir(parents=True, exist_ok=True)
    labelled.info["lammps_step"] = int(request["step"])
    tmp = out / "dft" / f".frame_{int(request['step']):09d}.extxyz"
    write(tmp, labelled, format="extxyz")
    os.replace(tmp, out / "dft" / f"frame_{int(request['step']):09d}.extxyz")
    entry = {"step": int(request["step"]), "max_std_eV_per_A": float(opts["max_std"]),
             "threshold_eV_per_A": float(opts["threshold"]), "added_atoms": chosen,
             "training_environments": gp.n_training_environments,
             "hyperparameters": gp.hyperparameters, "seconds": time.perf_counter() - t0}
    with open(out / "learn_log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    return gp.core.to_bytes()
