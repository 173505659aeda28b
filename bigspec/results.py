"""Result objects: frozen, with a text repr, ``_repr_html_``, ``to_dict()`` and ``plot()``.

Examples
--------
>>> import numpy as np, bigspec
>>> r = bigspec.logdet(np.diag([1.0, 2.0, 4.0]))
>>> round(r.logabsdet, 6), r.sign
(2.079442, 1)
>>> sorted(r.to_dict())[:3]
['bytes_read', 'bytes_written', 'cached']
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field, fields

import numpy as np


def _json_safe(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "-inf" if value < 0 else "inf"
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def pyplot():
    """``matplotlib.pyplot``, or an ImportError that names the extra to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'bigspec[plot]' (or matplotlib itself)") from e
    return plt


class ResultMixin:
    """Shared text/HTML/dict rendering of the frozen result dataclasses."""

    _title = "result"
    _headline: tuple = ()

    def to_dict(self) -> dict:
        """JSON-safe dict of the public fields (what ``--json`` prints)."""
        return {f.name: _json_safe(getattr(self, f.name)) for f in fields(self) if f.repr}

    def __repr__(self) -> str:
        d = self.to_dict()
        head = ", ".join(f"{k}={d[k]!r}" for k in self._headline if k in d)
        return f"{type(self).__name__}({head})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(str(v))}</td></tr>"
            for k, v in self.to_dict().items()
        )
        return f"<b>{html.escape(type(self).__name__)}</b><table>{rows}</table>"


@dataclass(frozen=True, repr=False)
class LogdetResult(ResultMixin):
    """Exact log-determinant of ``scale * A + diag(shift)`` and how it was computed.

    ``prefix_logdet[m - 1]`` is log|det A[:m, :m]| for every m (Cholesky), and for LDL^T at
    every m where its pivots so far are rows 0..m-1 (``leading_minor[m - 1]``): at every tile
    boundary outside the ``pivot_groups`` (column ranges [start, stop) that LDL^T pivoted
    across several tiles) and wherever Bunch-Kaufman kept the order; elsewhere it is NaN,
    never the minor of a permuted matrix. For a store of a Kronecker kernel
    ``K (x) I_d`` (``kron_outputs = d``), the determinants are those of the full kernel:
    ``d * logdet K``, and prefixes over the first m samples.

    Diagnostics: ``min_abs_d`` / ``max_abs_d`` are the smallest and largest pivot magnitudes
    (|eigenvalues| of D's 1x1 and 2x2 blocks; Cholesky: L_ii^2), whose ratio below
    ``n * eps`` means numerically singular; ``growth`` is LDL^T's element growth
    ``max_i sum_k L_ik^2 |d_k| / max|A|`` (1 for positive definite matrices); ``max_abs_L``
    is the largest multiplier.
    """

    sign: int
    logabsdet: float
    n: int
    tile_size: int
    method: str
    super_panels: int
    panels_computed: int
    tasks: int
    seconds: float
    bytes_read: int
    bytes_written: int
    memory_budget: int
    peak_memory_estimate: int
    scale: float = 1.0
    shift: object = 0.0
    max_abs_L: float = float("nan")
    min_abs_d: float = float("nan")
    max_abs_d: float = float("nan")
    growth: float = 0.0
    pivot_groups: tuple = ()
    singular_at: int | None = None
    store: str | None = None
    device: str = "cpu"
    cached: bool = False
    kron_outputs: int = 1
    log_d: np.ndarray = field(default=None, repr=False, compare=False)
    sign_d: np.ndarray = field(default=None, repr=False, compare=False)
    #: bool (n,): True where the first m pivots are rows 0..m-1 (the prefix is a leading minor)
    leading_minor: np.ndarray = field(default=None, repr=False, compare=False)

    _headline = ("sign", "logabsdet", "n", "kron_outputs", "method", "tile_size", "super_panels", "seconds")

    @property
    def matrix_rows(self) -> int:
        """Order of the matrix whose log-determinant this is: ``n * kron_outputs``."""
        return self.n * self.kron_outputs

    @property
    def matrix(self) -> str:
        """What was factored, in words: ``"A (3000 x 3000)"`` or ``"K (x) I_10 (30000 x 30000; K is 3000 x 3000)"``."""
        d, n = self.kron_outputs, self.n
        if d == 1:
            return f"A ({n} x {n})"
        return f"K (x) I_{d} ({n * d} x {n * d}; K is {n} x {n}, stored; logdet = {d} logdet K)"

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["matrix_rows"], d["matrix"] = self.matrix_rows, self.matrix
        return d

    def __repr__(self) -> str:
        d = self.to_dict()
        keys = [k for k in self._headline if k != "kron_outputs" or self.kron_outputs != 1]
        head = ", ".join(f"{k}={d[k]!r}" for k in keys)
        kron = f"; the matrix is {self.matrix}" if self.kron_outputs != 1 else ""
        return f"LogdetResult({head}){kron}"

    def _repr_html_(self) -> str:
        import html as _html

        caption = f"<p>log-determinant of {_html.escape(self.matrix)}</p>"
        return caption + super()._repr_html_()

    @property
    def prefix_logdet(self) -> np.ndarray:
        """log|det A[:m, :m]| for m = 1..n (float64, nats); NaN where ``leading_minor`` is False."""
        if self.log_d is None:
            return None
        prefix = self.kron_outputs * np.cumsum(self.log_d)
        return prefix if self.leading_minor is None else np.where(self.leading_minor, prefix, np.nan)

    @property
    def prefix_sign(self) -> np.ndarray:
        """sign(det A[:m, :m]) for m = 1..n (int64); 0 where ``leading_minor`` is False."""
        if self.sign_d is None:
            return None
        sign = np.cumprod(self.sign_d.astype(np.int64)) ** self.kron_outputs
        return sign if self.leading_minor is None else np.where(self.leading_minor, sign, 0)

    def __iter__(self):  # (sign, logabsdet) unpacking, like numpy's slogdet
        return iter((self.sign, self.logabsdet))

    def plot(self, ax=None):
        """Plot the prefix log-determinants log|det A[:m, :m]| against m."""
        plt = pyplot()

        if ax is None:  # constrained layout keeps the labels inside the figure however it is saved
            _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
        m = np.arange(1, self.n + 1)
        prefix = self.prefix_logdet
        known = np.isfinite(prefix) | np.isinf(prefix)       # NaN: not a leading minor (pivoting)
        ax.plot(m[known], prefix[known], lw=1.2)
        ax.set_xlabel("m (leading submatrix size)")
        ax.set_ylabel("log |det A[:m, :m]|")
        ax.set_title(f"{self.method} prefix log-determinants, n = {self.n}")
        return ax
