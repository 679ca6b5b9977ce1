"""Query strategies (otfgp.query): random, largest uncertainty, greedy variance-updating batch."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_helpers import jittered_al, small_al_model
from otfgp.query import frame_scores, greedy_variance_batch, max_uncertainty_batch, random_batch


def strained_al(rng: np.random.Generator, a: float, jitter: float) -> Atoms:
    """8-atom fcc Al at lattice constant ``a`` with coordinates jittered by +-jitter*a."""
    atoms = bulk("Al", "fcc", a=a, cubic=True).repeat((1, 1, 2))
    atoms.positions += rng.uniform(-jitter * a, jitter * a, atoms.positions.shape)
    return atoms


def pool_with_duplicates(seed: int = 3) -> list[Atoms]:
    """20 frames: 12 distinct 8-atom Al frames over a range of densities (the model knows
    only a = 4.05 A), a copy of each of three of them, and 5 near the training data."""
    rng = np.random.default_rng(seed)
    distinct = [strained_al(rng, a, 0.05) for a in np.linspace(3.7, 4.5, 12)]
    near = [strained_al(rng, 4.05, 0.01) for _ in range(5)]
    return distinct + [distinct[i].copy() for i in (0, 1, 11)] + near


@pytest.fixture(scope="module")
def model():
    return small_al_model(seed=1, frames=2, atoms_per_frame=8)


def copies(pool, batch):
    """The pairs of picked frames that are the same structure."""
    return [(a, b) for i, a in enumerate(batch) for b in batch[i + 1:]
            if np.allclose(pool[a].positions, pool[b].positions)]


def test_random_batch():
    pool = [jittered_al(np.random.default_rng(i)) for i in range(6)]
    batch = random_batch(pool, 4, rng=0)
    assert len(set(batch)) == 4 and all(0 <= i < 6 for i in batch)
    assert batch == random_batch(pool, 4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="exceeds the pool"):
        random_batch(pool, 7)
    with pytest.raises(ValueError, match="non-negative integer"):
        random_batch(pool, -1)


def test_max_uncertainty_picks_duplicates_greedy_does_not(model):
    pool = pool_with_duplicates()
    scores = frame_scores(model, pool)
    k = 4
    top = max_uncertainty_batch(model, pool, k)
    assert top == list(np.argsort(-scores, kind="stable")[:k])
    assert copies(pool, top)  # both copies of the most uncertain frame
    greedy = greedy_variance_batch(model, pool, k)
    assert len(set(greedy)) == k and not copies(pool, greedy)
    assert greedy[0] == top[0]  # the first pick is the same; the updates change the rest
    assert model.n_labels == 48  # the model itself is untouched


def test_greedy_stops_when_the_pool_is_explained(model):
    """One pick (24 force labels) explains much of this pool:
    with min_std at the force noise the batch stops before it would pick near-ties, and
    holds no copies however large k is."""
    pool = pool_with_duplicates()
    noise = model.hyperparameters["noise_force"]
    batch = greedy_variance_batch(model, pool, 12, min_std=noise)
    assert 1 < len(batch) < 12 and not copies(pool, batch)
    fantasy = model.copy()
    for i in batch:
        fantasy.add_training_data(pool[i], forces=model.predict(pool[i], variance=False).forces)
    fantasy.train(optimize=False)
    assert frame_scores(fantasy, pool).max() < noise


def test_greedy_conditioning_does_not_depend_on_the_labels(model):
    """Why fantasy labels are exact: conditioning on the predicted forces or on the true
    (EMT) forces gives the same variance everywhere."""
    rng = np.random.default_rng(9)
    frame, probe = jittered_al(rng, repeat=(1, 1, 2), jitter=0.05), jittered_al(rng, repeat=(1, 1, 2), jitter=0.05)
    atoms = [0, 3, 5]
    fantasy, real = model.copy(), model.copy()
    fantasy.add_training_data(frame, forces=model.predict(frame, variance=False).forces, atom_indices=atoms)
    labelled = frame.copy()
    labelled.calc = EMT()
    real.add_training_data(labelled, atom_indices=atoms)
    for m in (fantasy, real):
        m.train(optimize=False)
    a = fantasy.predict(probe, variance="exact").epistemic_force_variances
    b = real.predict(probe, variance="exact").epistemic_force_variances
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
    assert np.all(b < model.predict(probe, variance="exact").epistemic_force_variances)


def test_greedy_with_few_atoms_per_frame_and_bad_arguments(model):
    pool = pool_with_duplicates()
    batch = greedy_variance_batch(model, pool, 3, atoms_per_frame=2)
    assert len(set(batch)) == 3
    assert greedy_variance_batch(model, pool, 0) == []
    with pytest.raises(ValueError, match="atoms_per_frame"):
        greedy_variance_batch(model, pool, 2, atoms_per_frame=0)
    with pytest.raises(ValueError, match="exceeds the pool"):
        max_uncertainty_batch(model, pool, 21)



def test_fixed_atoms_that_are_never_trained_are_not_scored(model):
    """With ``atoms`` (the active loop passes the atoms the constraints leave free) a slab
    whose surfaces are fixed scores by its bulk-like free layers, below a jittered bulk
    cell, where scoring every atom ranks it first by the surfaces no label will teach."""
    from ase.build import fcc100
    from ase.constraints import FixAtoms

    from otfgp.active import free_atoms
    from otfgp.query import per_atom_std

    slab = fcc100("Al", (2, 2, 6), a=4.05, vacuum=6.0)
    slab.set_constraint(FixAtoms(mask=np.isin(slab.get_tags(), (1, 6))))
    cell = strained_al(np.random.default_rng(0), 4.05, 0.05)
    pool = [slab, cell]
    stds = [per_atom_std(model, f) for f in pool]
    free = frame_scores(model, pool, atoms=free_atoms)
    np.testing.assert_allclose(free, [stds[0][free_atoms(slab)].max(), stds[1].max()], rtol=1e-12)
    assert free[0] < free[1] < frame_scores(model, pool)[0]
    assert max_uncertainty_batch(model, pool, 1) == [0]
    assert max_uncertainty_batch(model, pool, 1, atoms=free_atoms) == [1]
    assert greedy_variance_batch(model, pool, 2, atoms=free_atoms) == [1, 0]
    assert frame_scores(model, pool, atoms=lambda f: np.zeros(0, dtype=int)).tolist() == [0.0, 0.0]
