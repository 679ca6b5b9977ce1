"""Query strategies: which frames of a candidate pool to label next, as a batch.

Each strategy returns the chosen frames' indices into ``pool`` (distinct, in the order they
were picked), for :func:`otfgp.batch.label_batch`:

- :func:`random_batch`: a uniform random sample (the baseline every other strategy must beat);
- :func:`max_uncertainty_batch`: the ``k`` frames whose largest per-atom force std is
  largest. Cheap, but blind to redundancy: near-identical frames score alike and are all
  picked;
- :func:`greedy_variance_batch`: frames picked one at a time, each pick conditioning the GP
  on that frame before the next is scored, so a frame that the batch already explains is
  not picked again. A GP can do this exactly without labels, because its posterior
  variance does not depend on the label values.

The uncertainty is the model's *epistemic* force std (:attr:`otfgp.gp.Prediction.epistemic_force_stds`):
the calibrated part of the reported std that more training data reduce (a latent^p of the
calibration; the latent std when uncalibrated). The calibration's floor, its
force-proportional term and the label noise are left out because a label cannot remove
them, so they carry no information about which frame to label; it is the quantity the
on-the-fly force decision compares with ``force_decision = "calibrated"``
(:class:`otfgp.learning.FrameUncertainty`; the latent std by default, which ranks frames the
same way for the calibration's a v). A frame's
score is the largest std of any of its force components, over the atoms that labelling
would train (``atoms``: by default every atom; the active loop passes the atoms its
constraints leave free, ``train_atoms = "free"``). A fixed atom that is never trained
keeps its std whatever is labelled: scored, it would rank frames by an uncertainty no
label removes (a slab's fixed bottom layer).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from .arguments import count, positive_number
from .gp import GaussianProcess
from .learning import choose_atoms

log = logging.getLogger(__name__)

VARIANCE = "exact"
"""The variance mode of every prediction here: the greedy strategy adds data to a copy of
the model, which drops its maps, so all strategies compare exact variances (a mapped model's
mapped variance would make the first pick incomparable with the later ones)."""


def _check_k(pool: Sequence[Atoms], k: int) -> int:
    k = count("batch size k", k, 0)
    if k > len(pool):
        raise ValueError(f"batch size k = {k} exceeds the pool of {len(pool)} frame(s)")
    return k


AtomSelection = Callable[[Atoms], np.ndarray]
"""Which atoms of a frame count: ``atoms(frame)`` gives their indices (None: all)."""


def _scored(frame: Atoms, atoms: AtomSelection | None) -> np.ndarray:
    return np.arange(len(frame)) if atoms is None else np.asarray(atoms(frame), dtype=int).ravel()


def per_atom_std(model: GaussianProcess, frame: Atoms) -> np.ndarray:
    """Per-atom epistemic force std of ``frame`` (largest of the three components, eV/A)."""
    stds = model.predict(frame, variance=VARIANCE).epistemic_force_stds
    return np.asarray(stds, dtype=float).max(axis=1)


def frame_scores(model: GaussianProcess, pool: Sequence[Atoms], atoms: AtomSelection | None = None) -> np.ndarray:
    """Each frame's score: its largest epistemic force-component std (eV/A) over the atoms
    ``atoms(frame)`` selects (all by default; 0 for a frame with none)."""
    scores = []
    for frame in pool:
        chosen = _scored(frame, atoms)
        scores.append(per_atom_std(model, frame)[chosen].max() if chosen.size else 0.0)
    return np.array(scores)


def random_batch(pool: Sequence[Atoms], k: int, rng: np.random.Generator | int | None = None) -> list[int]:
    """``k`` distinct frames of ``pool`` drawn uniformly at random (``rng``: a generator or
    a seed)."""
    k = _check_k(pool, k)
    return [int(i) for i in np.random.default_rng(rng).choice(len(pool), size=k, replace=False)]


def max_uncertainty_batch(model: GaussianProcess, pool: Sequence[Atoms], k: int,
                          atoms: AtomSelection | None = None) -> list[int]:
    """The ``k`` frames with the largest score (:func:`frame_scores` over ``atoms``), most
    uncertain first (ties: the earlier frame)."""
    k = _check_k(pool, k)
    scores = frame_scores(model, pool, atoms)
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def greedy_variance_batch(model: GaussianProcess, pool: Sequence[Atoms], k: int,
                          atoms_per_frame: int | None = None, min_std: float | None = None,
                          atoms: AtomSelection | None = None) -> list[int]:
    """``k`` frames picked greedily, each pick updating the GP variance before the next.

    Round by round: score the remaining frames (:func:`frame_scores`), pick the highest,
    and condition a copy of the model on it the way labelling would: the environments of
    its ``atoms_per_frame`` most uncertain atoms (all atoms: ``None``; the same rule as the
    on-the-fly learner's :func:`otfgp.learning.choose_atoms`) join the training set with
    *fantasy* force labels, the copy's predicted mean, and the copy is re-solved with its
    hyperparameters kept (``train(optimize=False)``). That is exact, not an approximation:
    the GP posterior variance depends on where the labels are, not on their values. The
    model itself is not changed.

    Duplicated or near-identical frames are thus never both picked while more informative
    frames remain (:func:`max_uncertainty_batch` picks them all). Once every remaining
    frame's std is down at the label-noise level the pool has nothing left to teach and
    the picks are near-ties; ``min_std`` (eV/A, e.g. the force noise sigma_n) stops the
    batch there, so it may hold fewer than ``k`` frames. ``atoms`` selects the atoms that
    are scored and may be conditioned on (the ones labelling would train; all by default).
    """
    k = _check_k(pool, k)
    count("atoms_per_frame", atoms_per_frame, allow_none=True)
    positive_number("min_std", min_std)
    if k == 0:
        return []
    fantasy = model.copy()
    remaining = list(range(len(pool)))
    picked: list[int] = []
    while len(picked) < k:
        scores = frame_scores(fantasy, [pool[i] for i in remaining], atoms)
        if min_std is not None and scores.max() < min_std:
            log.info("greedy batch: stopped after %d pick(s), every remaining frame's std is below %.4g eV/A",
                     len(picked), min_std)
            break
        best = remaining.pop(int(np.argmax(scores)))
        picked.append(best)
        log.debug("greedy batch: pick %d is frame %d (score %.4g eV/A)", len(picked), best, scores.max())
        if len(picked) == k:
            break
        frame = pool[best]
        trainable = _scored(frame, atoms)
        if trainable.size == 0:  # labelling it would train nothing: nothing to condition on
            continue
        pred = fantasy.predict(frame, variance=VARIANCE)
        stds = np.asarray(pred.epistemic_force_stds).max(axis=1)[trainable]
        chosen = trainable[choose_atoms(stds, 0.0, atoms_per_frame if atoms_per_frame is not None else trainable.size)]
        fantasy.add_training_data(frame, forces=np.asarray(pred.forces), atom_indices=chosen)
        fantasy.train(optimize=False)
    return picked
