"""The one positive-number rule, the one count rule and the one flag rule (otfgp.arguments),
and the entry points that use them."""
from __future__ import annotations

import numpy as np
import pytest

from otfgp.active.loop import ActiveOptions
from otfgp.arguments import count, flag, positive_number
from otfgp.labellers.launch import launch_command
from otfgp.learning import LearningOptions
from otfgp.otf import OTFOptions
from otfgp.train import TrainOptions


@pytest.mark.parametrize("value", [0, 0.0, -1e-9, float("nan"), float("inf"), True, "0.1", [0.1]])
def test_positive_number_refuses(value):
    with pytest.raises(ValueError, match=r"^tol must be a positive number, got "):
        positive_number("tol", value)


def test_positive_number_passes_and_converts():
    assert positive_number("tol", 3) == 3.0 and isinstance(positive_number("tol", 3), float)
    assert positive_number("tol", np.float64(0.25)) == 0.25
    assert positive_number("tol", None) is None
    with pytest.raises(ValueError, match="tol must be a positive number, got None"):
        positive_number("tol", None, allow_none=False)


def test_learning_thresholds_use_the_rule():
    with pytest.raises(ValueError, match="stress_threshold must be a positive number, got -1.0"):
        LearningOptions(stress_threshold=-1.0)
    assert LearningOptions(stress_threshold=None).stress_threshold is None


@pytest.mark.parametrize("value", [0, -3, 2.0, float("nan"), True, "3", None])
def test_count_refuses(value):
    with pytest.raises(ValueError, match=r"^steps must be a positive integer, got "):
        count("steps", value)


def test_count_names_its_lower_bound_and_none():
    with pytest.raises(ValueError, match=r"^retries must be a non-negative integer, got -1$"):
        count("retries", -1, 0)
    with pytest.raises(ValueError, match=r"^n_images must be an integer >= 3, got 2$"):
        count("n_images", 2, 3)
    with pytest.raises(ValueError, match=r"^k must be a positive integer or None, got 0$"):
        count("k", 0, allow_none=True)


def test_count_passes_and_converts():
    assert count("steps", np.int64(4)) == 4 and type(count("steps", np.int64(4))) is int
    assert count("retries", 0, 0) == 0
    assert count("k", None, allow_none=True) is None


@pytest.mark.parametrize("make", [
    lambda: LearningOptions(scalable_after=0),
    lambda: TrainOptions(atoms_per_frame=0),
    lambda: TrainOptions(restarts=-1),
    lambda: ActiveOptions(retries=1.0),
    lambda: LearningOptions(max_atoms_added=1.5),
    lambda: OTFOptions(every=0),
    lambda: OTFOptions(init_atoms=-1),
    lambda: OTFOptions(checkpoint_every=2.5),
    lambda: launch_command("pw.x", 0),
])
def test_counts_of_the_entry_points_use_the_rule(make):
    with pytest.raises(ValueError, match="must be a (positive|non-negative) integer"):
        make()


@pytest.mark.parametrize("value", ["false", "no", 0, 1, [], None])
def test_flag_refuses(value):
    with pytest.raises(ValueError, match=r"^optimize must be true or false, got "):
        flag("optimize", value)


def test_flag_passes_and_converts():
    assert flag("map", np.bool_(False)) is False and flag("map", True) is True
    assert flag("progress", None, allow_none=True) is None
    assert positive_number("tol", np.float32(0.5)) == 0.5  # numpy's real types are numbers too
    with pytest.raises(ValueError, match="must be a positive number"):
        positive_number("tol", np.bool_(True))


@pytest.mark.parametrize("make", [
    lambda: LearningOptions(optimize="false"),
    lambda: LearningOptions(map="false"),
    lambda: LearningOptions(max_iterations="50"),
    lambda: OTFOptions(progress="no"),
    lambda: TrainOptions(optimize="no"),
    lambda: ActiveOptions(energy_reference=1),
])
def test_flags_and_counts_the_options_used_to_miss(make):
    """Strings are truthy and '50' fails only deep inside scipy after a DFT call: each is
    refused when the options are made."""
    with pytest.raises(ValueError, match="must be (true or false|a non-negative integer)"):
        make()
