"""Validators of the small arguments shared by several verbs (flags and numbers).

Each raises ``TypeError`` / ``ValueError`` naming the argument, at the public entry, so a
string such as ``overwrite="no"`` is an error rather than a truthy value that deletes data.

Examples
--------
>>> from bigspec.validate import check_flag, check_number
>>> check_flag(True, "overwrite"), check_number(2, "scale")
(True, 2.0)
>>> check_flag("no", "overwrite")
Traceback (most recent call last):
...
TypeError: overwrite must be True or False, got 'no'
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_flag(value, name: str, allow_none: bool = False):
    """``value`` as a bool; only True, False (and None where ``allow_none``) are accepted."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    choices = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"{name} must be {choices}, got {value!r}")


def check_number(value, name: str) -> float:
    """``value`` as a finite float; strings and other objects are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value
