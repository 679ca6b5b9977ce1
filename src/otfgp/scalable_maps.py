"""Export a trained :class:`otfgp.ScalableGP` as a mapped-only otfgp model (for LAMMPS).

The scalable model's cluster functions already live in the B-spline basis of the mapped
variance (cubic pairs, quadratic triplets, one coefficient per edge-permutation orbit; see
:mod:`otfgp.scalable` and ``cpp/core/maps.h``). Its posterior mean coefficients and
posterior covariance, taken back from the projected space (w = V m, C = V P V^T), are
therefore written into the spline tables unchanged: each table's mean is given in the
variance basis (``basis_mean``, model format version 7) and the covariance is the maps'
covariance. Nothing is re-tabulated or approximated, so the C++ core -- and with it
``pair_style otfgp`` and ``compute otfgp/std/atom`` -- reproduces the ScalableGP's energy,
forces, stress, local energies and force variances to rounding.

The file holds no training data and no labels^2 matrices: its size is set by the basis
(8 x coefficients^2 bytes for the covariance), whatever the number of labels. It loads as a
:class:`otfgp.GaussianProcess` that predicts but takes no training data and has only the
mapped variance (the exact-variance and add-data calls are clear errors).

Calibration: the reported variance is latent + label noise unless a
:class:`otfgp.calibration.ModelCalibration` is given (or the ScalableGP carries one as
``calibration``); it is stored in the file, so LAMMPS reports the calibrated stds.

One difference from the ScalableGP, by construction of the core: a cluster shorter than the
basis lower end (never seen in training) gets the mean extrapolated as the ScalableGP does,
but its atom's variance becomes the GP prior's (the core's fallback for atoms outside the
variance basis), a deliberately large std where the model knows nothing.
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .calibration import ModelCalibration

if TYPE_CHECKING:
    from .gp import GaussianProcess

# The model argument is a trained otfgp.scalable.ScalableGP. It is typed as Any because
# scalable.py reaches this module (its save_mapped/to_mapped), and the package imports one
# way (tests/test_architecture.py), type-checking imports included.
ScalableGP = Any

log = logging.getLogger(__name__)

#: Largest variance-basis nodes per axis a model file table accepts (cpp/core/maps.cpp).
MAX_TABLE_NODES = 256


def _calibration_of(model: "ScalableGP", calibration: ModelCalibration | None) -> ModelCalibration | None:
    if calibration is None:
        calibration = getattr(model, "calibration", None)
    if calibration is not None and not isinstance(calibration, ModelCalibration):
        raise TypeError(f"calibration must be an otfgp.calibration.ModelCalibration or None, "
                        f"got {type(calibration).__name__}")
    return calibration


def mapped_tables(model: "ScalableGP") -> tuple[list[dict[str, Any]], np.ndarray]:
    """The spline tables (dicts for ``_core.Model.set_maps``) and the joint covariance of
    ``model``'s full (unprojected) basis coefficients.

    Raises:
        otfgp.NotTrainedError: the model is not trained.
        ValueError: a basis axis has more nodes than a model file table accepts.
    """
    if not model.trained:
        raise _core.NotTrainedError("export a trained ScalableGP: add training data and call train() first")
    solution, V = model._solution, model._V
    assert solution is not None
    w = V @ solution["m"]
    C = V @ solution["P"] @ V.T
    C = 0.5 * (C + C.T)  # symmetric bit for bit, as the core's u^T C u assumes
    tables = []
    for t in model._design.tables():
        if t["nodes"] > MAX_TABLE_NODES:
            raise ValueError(f"the scalable model's {'pair' if t['dim'] == 1 else 'triplet'} basis has "
                             f"{t['nodes']} nodes per axis; a model file table takes at most "
                             f"{MAX_TABLE_NODES} (use a smaller nodes2 / nodes3)")
        lo, size = int(t["offset"]), int(t["size"])
        tables.append({"dim": int(t["dim"]), "type": int(t["type"]), "n": int(t["nodes"]),
                       "lo": float(t["lo"]), "hi": float(t["hi"]), "nv": int(t["nodes"]),
                       "variance_degree": int(t["degree"]), "basis_mean": w[lo:lo + size].copy()})
    return tables, C


def to_mapped_model(model: "ScalableGP", calibration: ModelCalibration | None = None) -> "GaussianProcess":
    """A :class:`otfgp.GaussianProcess` that is only the maps of ``model`` (see the module
    docstring): same species, cutoffs, hyperparameters and energy offsets, predictions equal
    to ``model.predict`` to rounding (force and local-energy variances; the energy and
    stress variances are NaN, as for any mapped variance).

    Args:
        calibration: the variance calibration to store (default: ``model.calibration`` if
            the model has one, else none: reported variance = latent + label noise).
    """
    from .gp import HYPERPARAMETER_NAMES, GaussianProcess

    calibration = _calibration_of(model, calibration)
    tables, C = mapped_tables(model)
    core = _core.Model(list(model._numbers), model._r2, model._r3)
    hyp = model.hyperparameters
    core.hyperparameters = [hyp[k] for k in HYPERPARAMETER_NAMES]
    core.energy_offsets = [float(x) for x in model._offsets]
    info = {"source": "ScalableGP", "n_labels": model.n_labels, "n_training_structures": model.n_training_structures,
            "n_coefficients": model.n_coefficients, "rank": model.rank, "lower": model.lower,
            "nodes": list(model._nodes)}
    core.set_mapped_only(tables, C, json.dumps(info))
    if calibration is not None:
        core.calibration = calibration.to_core()
    return GaussianProcess._from_core(core)


def save_mapped(model: "ScalableGP", path: str | os.PathLike, calibration: ModelCalibration | None = None) -> None:
    """Write ``model`` as a mapped-only otfgp model file (atomically) that ``pair_style
    otfgp`` and :meth:`otfgp.GaussianProcess.load` read; see :func:`to_mapped_model`."""
    gp = to_mapped_model(model, calibration)
    gp.save(path)
    log.info("ScalableGP exported to %s (%d coefficients, %d bytes)", os.fspath(path), model.n_coefficients,
             os.path.getsize(path))
