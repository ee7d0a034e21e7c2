"""Checks of the numbers the learning components are configured and fed with.

A NaN or an infinity passed once (a weight, a cooldown, a retrieval score) does not
fail where it was given: it spreads through the shared weights or a timer and turns
every later score into NaN, or keeps a tool quarantined for good. So each such number
is checked where it comes in, and the error names it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def check_number(
    label: str,
    value: Any,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
    strict: bool = False,
) -> float:
    """``value`` as a float, or an error naming ``label``: finite, at least ``minimum``
    (above it when ``strict``), at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{label} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{label} must be a finite number {bound}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{label} must be at most {maximum:g}, got {value!r}")
    return number


def check_count(label: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as a whole number of at least ``minimum``, or an error naming ``label``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{label} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{label} must be >= {minimum}, got {value!r}")
    return int(value)
