"""The result of an estimated log-determinant (FLODANCE, SLQ, spectral), and its shared checks.

An estimate is reported like the exact :class:`~bigspec.results.LogdetResult` (``sign``,
``logabsdet``, unpacking, ``to_dict()``, HTML), plus what makes it honest: an ``interval``
with its stated meaning, the method's settings and diagnostics, the warnings it raised, and
its ``cost`` (matrix entries read or formed, flops, seconds).

Examples
--------
>>> import numpy as np, bigspec
>>> from bigspec.determinant.estimate import EstimateResult
>>> r = EstimateResult(method="slq", sign=1, logabsdet=10.0, interval=(9.0, 11.5),
...                    interval_meaning="illustration", n=100)
>>> r.relative_halfwidth
0.125
>>> tuple(r)
(1, 10.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import EstimateWarning
from ..results import ResultMixin

ESTIMATE_METHODS = ("flodance", "slq", "spectrum")


@dataclass(frozen=True, repr=False)
class EstimateResult(ResultMixin):
    """An estimated log-determinant of ``scale * A + diag(shift)`` with an interval and its cost.

    Attributes
    ----------
    method : {"flodance", "slq", "spectrum"}
    sign : int
        Sign of the determinant (+1 for the pseudo-determinant of a semidefinite matrix).
    logabsdet : float
        The estimate of log|det| (nats) of the whole matrix (``matrix_rows`` rows).
    interval : (float, float)
        ``(low, high)`` in nats; ``interval_meaning`` says what it covers and from what spread.
    n : int
        Samples (data points) of the matrix; ``matrix_rows = n * rows_per_sample * kron_outputs``.
    settings : dict
        The method's options as used (chosen defaults filled in).
    diagnostics : dict
        What the method saw (FLODANCE: chosen model, held-out error, alternatives; SLQ: probe
        standard error, quadrature bias; spectrum: regime, support).
    cost : dict
        ``entries`` (matrix entries read or formed), ``flops``, ``seconds``.
    warnings : tuple of str
        The warnings raised while estimating (also issued as :class:`EstimateWarning`).
    """

    method: str
    sign: int
    logabsdet: float
    interval: tuple
    interval_meaning: str
    n: int
    rows_per_sample: int = 1
    kron_outputs: int = 1
    scale: float = 1.0
    shift: object = 0.0
    settings: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    warnings: tuple = ()
    source: str | None = None
    seconds: float = 0.0
    #: arrays for plot(): method-specific (FLODANCE: the ladders and the fitted curve)
    curves: dict = field(default_factory=dict, repr=False, compare=False)

    _title = "estimate"
    _headline = ("method", "sign", "logabsdet", "interval", "matrix_rows", "seconds")

    @property
    def matrix_rows(self) -> int:
        """Order of the matrix whose log-determinant is estimated."""
        return self.n * self.rows_per_sample * self.kron_outputs

    @property
    def relative_halfwidth(self) -> float:
        """Half the interval's width over |logabsdet| (inf at a zero estimate)."""
        low, high = self.interval
        mid = abs(self.logabsdet)
        return (high - low) / 2 / mid if mid else math.inf

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        low, high = self.interval
        return bool(low <= value <= high)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["matrix_rows"] = self.matrix_rows
        d["relative_halfwidth"] = _finite_or_str(self.relative_halfwidth)
        return d

    def __iter__(self):  # (sign, logabsdet), like numpy's slogdet
        return iter((self.sign, self.logabsdet))

    def __repr__(self) -> str:
        low, high = self.interval
        warn = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        return (f"EstimateResult(method={self.method!r}, sign={self.sign}, logabsdet={self.logabsdet:.8g}, "
                f"interval=({low:.8g}, {high:.8g}), matrix_rows={self.matrix_rows}, seconds={self.seconds:.3g}"
                f"{warn})")

    def _repr_html_(self) -> str:
        import html as _html

        caption = (f"<p>{_html.escape(self.method)} estimate of log|det| of a {self.matrix_rows} x "
                   f"{self.matrix_rows} matrix; interval: {_html.escape(self.interval_meaning)}</p>")
        return caption + super()._repr_html_()

    def plot(self, ax=None):
        """FLODANCE: the ladder(s), the fitted curve and the extrapolation with its band.

        SLQ: the per-probe estimates and their mean; spectrum: the decompressed density's
        log-determinant integrand. Returns the matplotlib Axes.
        """
        from ..results import pyplot

        plt = pyplot()

        if ax is None:
            _, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
        c = self.curves or {}
        if self.method == "flodance" and "ladders" in c:
            for j, lad in enumerate(c["ladders"]):
                x = np.arange(1, len(lad) + 1)
                ax.plot(x, lad, lw=1.0, color="0.55" if j else "C0", label="ladder (exact)" if j == 0 else None)
            x_fit, y_fit = c["fit_x"], c["fit_y"]
            ax.plot(x_fit, y_fit, "C1--", lw=1.2, label=f"fit: {self.diagnostics.get('model', '')} (shape; models averaged)")
            ax.fill_between(x_fit, c["band_low"], c["band_high"], color="C1", alpha=0.2, label="interval")
            ax.errorbar([self.n], [self.logabsdet / max(self.kron_outputs, 1)],
                        yerr=[[(self.logabsdet - self.interval[0]) / max(self.kron_outputs, 1)],
                              [(self.interval[1] - self.logabsdet) / max(self.kron_outputs, 1)]],
                        fmt="o", color="C3", label="estimate")
            ax.set_xscale("log")
            ax.set_xlabel("samples m")
            ax.set_ylabel("log |det K_m|")
            ax.set_title(f"FLODANCE: {self.n} samples from {self.settings.get('sample_size')}")
            ax.legend(fontsize=8)
        elif self.method == "slq" and "probe_estimates" in c:
            est = np.asarray(c["probe_estimates"])
            ax.plot(np.arange(1, len(est) + 1), est, ".", color="0.5", label="one probe")
            ax.axhline(self.logabsdet, color="C0", label="estimate")
            ax.axhspan(*self.interval, color="C0", alpha=0.2, label="interval")
            ax.set_xlabel("probe")
            ax.set_ylabel("log |det|")
            ax.set_title("SLQ")
            ax.legend(fontsize=8)
        elif "x" in c and "integrand" in c:
            ax.plot(c["x"], c["integrand"])
            ax.set_xlabel("eigenvalue x")
            ax.set_ylabel("n log|x| rho(x)")
            ax.set_title("spectral log-determinant integrand")
        else:
            ax.axhline(self.logabsdet, color="C0")
            ax.axhspan(*self.interval, color="C0", alpha=0.2)
            ax.set_title(f"{self.method} estimate")
        return ax


def _finite_or_str(v: float):
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def emit(message: str, issued: list, *, stacklevel: int = 5) -> None:
    """Issue an :class:`EstimateWarning` and keep its text for the result's ``warnings``.

    The default ``stacklevel`` points at the user's call of :func:`bigspec.logdet` from an
    estimator's helper (user -> logdet -> <method>_logdet -> helper -> emit).
    """
    import warnings

    from ..errors import render

    issued.append(render(message))
    warnings.warn(message, EstimateWarning, stacklevel=stacklevel)
