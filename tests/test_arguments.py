"""The one positive-number rule (otfgp.arguments) and the entry points that use it."""
from __future__ import annotations

import numpy as np
import pytest

from otfgp.arguments import positive_number
from otfgp.learning import LearningOptions


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
