"""Hyperparameter checks, done once in each factory.

Every message has the form "NAME must be ..., got NAME = VALUE." and every check
raises ValueError, for a value out of range and a value of the wrong type (a str,
a bool, None) alike.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np


def _fail(name: str, what: str, value: Any) -> None:
    raise ValueError(f"{name} must be {what}, got {name} = {value!r}.")


def is_real(value: Any) -> bool:
    """A real number: a Python or NumPy int or float, or a 0-d array of one."""
    if isinstance(value, (bool, str, bytes)):
        return False
    if isinstance(value, numbers.Real):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        getattr(value, "ndim", None) == 0
        and dtype is not None
        and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
    )


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """A number in the interval from ``low`` to ``high`` (either may be None)."""
    if low is not None and high is not None:
        what = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        what = f"{'>' if low_open else '>='} {low}"
    else:
        what = f"{'<' if high_open else '<='} {high}"
    if not is_real(value):
        _fail(name, f"a number {what}", value)
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    if not (above and below):  # NaN fails both
        _fail(name, what, value)


def check_positive(name: str, value: Any) -> None:
    check_range(name, value, 0, low_open=True)


def check_decay(name: str, value: Any) -> None:
    """The weight of the old value in a moving average: in ``[0, 1)``."""
    check_range(name, value, 0, 1, high_open=True)


def check_finite(name: str, value: Any) -> None:
    if not (is_real(value) and math.isfinite(value)):
        _fail(name, "a finite number", value)


def check_integer(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(name, f"an integer >= {minimum}", value)
    if value < minimum:
        _fail(name, f"an integer >= {minimum}", value)


def check_every(name: str, value: Any) -> None:
    """A step period: an integer >= 1."""
    check_integer(name, value, 1)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        _fail(name, f"one of {choices}", value)


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "True or False", value)
