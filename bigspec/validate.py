"""Validators of the small arguments shared by several verbs (flags and numbers).

Each raises :class:`~bigspec.errors.ArgumentTypeError` / :class:`~bigspec.errors.ArgumentError`
(a ``TypeError`` / ``ValueError``) naming the argument, at the public entry, so a
string such as ``overwrite="no"`` is an error rather than a truthy value that deletes data.

Examples
--------
>>> from bigspec.validate import check_flag, check_number
>>> check_flag(True, "overwrite"), check_number(2, "scale")
(True, 2.0)
>>> check_flag("no", "overwrite")
Traceback (most recent call last):
...
bigspec.errors.ArgumentTypeError: overwrite must be True or False, got 'no'
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ArgumentError, ArgumentTypeError, arg


def check_flag(value, name: str, allow_none: bool = False):
    """``value`` as a bool; only True, False (and None where ``allow_none``) are accepted."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    choices = "True, False or None" if allow_none else "True or False"
    raise ArgumentTypeError(f"{arg(name)} must be {choices}, got {value!r}")


def check_number(value, name: str) -> float:
    """``value`` as a finite float; strings and other objects are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ArgumentTypeError(f"{arg(name)} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentError(f"{arg(name)} must be finite, got {value}")
    return value


def check_count(value, name: str, low: int | None = 1, high: int | None = None, why: str = "",
                allow_none: bool = False) -> int | None:
    """A count (``probes``, ``n_ladders``, ``grid``): an integer in [low, high] (None: unbounded).

    Booleans and floats (``probes=1.5``, ``probes=True``) are refused; ``why`` is appended to
    the range error (``" (the matrix has n=10 rows)"``).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ArgumentTypeError(f"{arg(name)} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"at most {high}" if low is None else f"between {low} and {high}"
        raise ArgumentError(f"{arg(name)} must be {bounds}{why}, got {value}")
    return value


def check_probabilities(q, what: str = "quantiles(q)") -> np.ndarray:
    """Probabilities ``q`` (a number or an array of them) as a float array, each in [0, 1].

    Raises :class:`~bigspec.errors.ArgumentError` for values outside [0, 1] or not finite, and
    :class:`~bigspec.errors.ArgumentTypeError` for what is not numbers; ``what`` names the caller.
    """
    if q is None or isinstance(q, (str, bytes)):
        raise ArgumentTypeError(f"{what} takes probabilities (numbers in [0, 1]), got {q!r}")
    try:
        out = np.asarray(q, dtype=float)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{what} takes probabilities (numbers in [0, 1]), got {q!r}") from None
    if not np.all((out >= 0) & (out <= 1)):       # NaN fails too
        raise ArgumentError(f"{what} takes probabilities in [0, 1], got {out.tolist()!r}")
    return out


def check_level(level, name: str = "level") -> float:
    """A confidence level: a number strictly between 0 and 1 (0.95 for a 95% interval)."""
    level = check_number(level, name)
    if not 0.0 < level < 1.0:
        raise ArgumentError(f"{arg(name)} must be between 0 and 1 (0.95 for a 95% interval), got {level}")
    return level


def check_scale(scale) -> float:
    """The ``scale`` of ``scale * A``: a finite nonzero number."""
    scale = check_number(scale, "scale")
    if scale == 0.0:
        raise ArgumentError(f"{arg('scale')} must be nonzero, got 0.0")
    return scale


def check_seed(seed, name: str = "seed") -> int:
    """A seed for ``numpy.random.SeedSequence``: a non-negative integer."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise ArgumentTypeError(f"{arg(name)} must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ArgumentError(f"{arg(name)} must be a non-negative integer, got {seed}")
    return int(seed)


def check_memory(memory):
    """A memory budget: ``None`` / ``"auto"`` (returned as is) or a positive size, returned in bytes.

    Strings are parsed by :func:`dask.utils.parse_bytes` ("4GiB", "500MB", "2e9").
    """
    if memory is None or memory == "auto":
        return memory
    if isinstance(memory, str):
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(memory)
        except ValueError:
            raise ArgumentError(f"{arg('memory', memory)} is not a size; use e.g. {arg('memory', '4GiB')}, "
                                f"{arg('memory', '500MB')} or {arg('memory', 'auto')}") from None
    elif isinstance(memory, (numbers.Real, np.integer, np.floating)) and not isinstance(memory, (bool, np.bool_)):
        value = memory
    else:
        raise ArgumentTypeError(f"memory must be 'auto', a size string like '4GiB' or a number of bytes, "
                                f"got {memory!r}")
    if not (math.isfinite(value) and value > 0):
        raise ArgumentError(f"{arg('memory')} must be a positive size, got {memory!r}")
    return int(value)


def check_attrs(attrs) -> dict:
    """Provenance attributes for a store: None or a dict of JSON-safe values (returned as a dict)."""
    import json

    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise ArgumentTypeError(f"attrs must be a dict of JSON-safe values, got {type(attrs).__name__}")
    try:
        json.dumps(attrs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ArgumentTypeError(f"attrs must be a dict of JSON-safe values (str, numbers, bools, None, lists, dicts): "
                        f"{e}") from None
    return dict(attrs)


def check_scale_shift(scale, shift, n):
    """``(scale, shift)`` of ``scale * A + diag(shift)``: shift None (zero), a float, or an (n,) float64 vector."""
    scale = check_scale(scale)
    if np.ndim(shift) == 0:
        shift = check_number(shift, "shift")
        return scale, (None if shift == 0.0 else shift)
    shift = np.asarray(shift)
    if shift.dtype.kind not in "biuf":
        raise ArgumentTypeError(f"{arg('shift')} must be a number or a vector of numbers of length n={n}, got dtype "
                                f"{shift.dtype}")
    shift = shift.astype(np.float64)
    if shift.shape != (n,):
        raise ArgumentError(
            f"{arg('shift')} must be a scalar or a vector of length n={n} (one value per diagonal entry), "
            f"got shape {shift.shape}"
        )
    if not np.isfinite(shift).all():
        raise ArgumentError(f"{arg('shift')} holds NaN or infinite values")
    return scale, shift


def shift_summary(shift):
    """A JSON-safe summary of a checked shift (a float, or the range of a vector)."""
    if shift is None:
        return 0.0
    if np.ndim(shift) == 0:
        return float(shift)
    return {"vector": True, "min": float(np.min(shift)), "max": float(np.max(shift))}
