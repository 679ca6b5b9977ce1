"""Checks of the numbers users pass to the public API, one rule each, so every entry point
(on-the-fly learning, the offline active-learning tasks, ``evaluate``) refuses bad input
with the same message."""
from __future__ import annotations

import math
from typing import Any


def positive_number(name: str, value: Any, allow_none: bool = True) -> float | None:
    """``value`` as a float when it is a finite real number > 0 (``None`` passes, as
    ``None``, when ``allow_none``); otherwise a ValueError naming ``name``. Booleans are
    refused although Python counts them as integers: ``True`` is never meant as 1."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)
