"""Distances between spectral distributions: laws, decompressed results, or eigenvalue arrays.

Examples
--------
>>> import numpy as np
>>> from bigspec.spectra.laws import Wigner
>>> from bigspec.spectra.metrics import wasserstein1
>>> round(wasserstein1(Wigner(1.0), Wigner(1.0).eigenvalues(2000, seed=0)), 3) < 0.02
True
"""

from __future__ import annotations

import numpy as np

_P = (np.arange(20000) + 0.5) / 20000  # midpoint rule on (0, 1)


def quantile_function(dist, p=_P) -> np.ndarray:
    """Q(p) of a law (``.quantile``), a result (``.quantiles``) or an array of eigenvalues."""
    if hasattr(dist, "quantile"):
        return dist.quantile(p)
    if hasattr(dist, "quantiles"):
        return dist.quantiles(p)
    return np.quantile(np.asarray(dist, float), p, method="inverted_cdf")


def wasserstein1(a, b) -> float:
    """W1 = integral over p of |Q_a(p) - Q_b(p)| (atoms included)."""
    return float(np.mean(np.abs(quantile_function(a) - quantile_function(b))))


def l1(a, b, x=None) -> float:
    """L1 distance of the continuous densities, integral |rho_a - rho_b| dx, on a fine grid."""
    def dens(d):
        return d.density_at if hasattr(d, "density_at") else d.density

    if x is None:
        lo = min(_support(a)[0], _support(b)[0])
        hi = max(_support(a)[1], _support(b)[1])
        x = np.linspace(lo, hi, 20001)
    return float(np.trapezoid(np.abs(dens(a)(x) - dens(b)(x)), x))


def _support(d):
    return tuple(d.support)
