"""Checks of the numbers users pass to the public API, one rule each, so every entry point
(on-the-fly learning, offline training, the active-learning tasks and loop, ``evaluate``)
refuses bad input with the same message."""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def positive_number(name: str, value: Any, allow_none: bool = True) -> float | None:
    """``value`` as a float when it is a finite real number > 0 (``None`` passes, as
    ``None``, when ``allow_none``); otherwise a ValueError naming ``name``. Booleans are
    refused although Python counts them as integers: ``True`` is never meant as 1."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def count(name: str, value: Any, low: int = 1, allow_none: bool = False) -> int | None:
    """``value`` as an int when it is an integer >= ``low`` (numpy integers included;
    ``None`` passes, as ``None``, when ``allow_none``); otherwise a ValueError naming
    ``name``. Booleans and integral floats such as ``3.0`` are refused: a count that
    arrives as either is a caller's mistake, not a number to round."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
        raise ValueError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def flag(name: str, value: Any, allow_none: bool = False) -> bool | None:
    """``value`` as a bool when it is one (numpy's bool included; ``None`` passes, as
    ``None``, when ``allow_none``); otherwise a ValueError naming ``name``. Strings and
    numbers are refused: ``bool("false")`` is True, so a flag written as a string in a
    config or on a command line would silently mean the opposite."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false{', or unset (None)' if allow_none else ''}, got {value!r}")
    return bool(value)
