"""Analytic spectral laws: the exact oracles of free decompression.

A principal n_s x n_s submatrix of a large random-ordered matrix of size n has the law of
the big one *compressed* by alpha = n / n_s; free decompression inverts that. These laws
know both sides in closed form:

* :class:`Wigner` (semicircle of variance s^2) decompresses to a semicircle of variance
  ``alpha * s^2`` (a principal submatrix of a scaled Wigner matrix is a narrower semicircle).
* :class:`MarchenkoPastur` with ratio ``lam = n / d`` decompresses to ratio ``alpha * lam``
  (a principal submatrix of a Wishart matrix is a Wishart matrix with a smaller ratio). For
  ratio > 1 it has an atom of mass ``1 - 1 / ratio`` at 0.

Examples
--------
>>> from bigspec.spectra.laws import MarchenkoPastur, Wigner
>>> mp = MarchenkoPastur(1 / 50)
>>> [round(e, 4) for e in mp.decompress(32).support]
[0.04, 3.24]
>>> w = Wigner(1.0).decompress(4)
>>> w.support, round(float(w.cdf(0.0)), 12)
((-4.0, 4.0), 0.5)
>>> round(MarchenkoPastur(2.0).atom[1], 12)
0.5
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Law", "Wigner", "MarchenkoPastur"]


class Law:
    """A spectral law with a continuous part on ``support`` and at most one atom.

    Subclasses define ``support``, ``atom`` (``(location, mass)`` or ``None``),
    ``_density`` (continuous part, finite on the open support), ``stieltjes``,
    ``decompress`` and ``matrix``.
    """

    support: tuple[float, float]
    atom: tuple[float, float] | None = None

    # -- distribution --------------------------------------------------------------------
    def density(self, x):
        """Density of the continuous part at ``x`` (0 outside the support)."""
        x = np.asarray(x, dtype=float)
        lo, hi = self.support
        inside = (x > lo) & (x < hi)
        out = np.zeros_like(x)
        out[inside] = self._density(x[inside])
        return out

    def _cdf_table(self):
        # the substitution x = c + h cos(theta) removes the square-root edges, so a
        # cumulative trapezoid in theta is accurate to ~1e-10 with this many points
        if not hasattr(self, "_table"):
            lo, hi = self.support
            c, h = (hi + lo) / 2, (hi - lo) / 2
            theta = np.linspace(np.pi, 0.0, 20001)
            x = c + h * np.cos(theta)
            f = np.zeros_like(x)
            f[1:-1] = self._density(x[1:-1]) * h * np.sin(theta[1:-1])
            F = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(-theta))])
            self._table = (x, F)
        return self._table

    def cdf(self, x):
        """Cumulative distribution function (atom included)."""
        x = np.asarray(x, dtype=float)
        grid, F = self._cdf_table()
        out = np.interp(x, grid, F, left=0.0, right=F[-1])
        if self.atom is not None:
            loc, mass = self.atom
            out = out + mass * (x >= loc)
        return out

    def quantile(self, p):
        """Inverse CDF (the left-continuous generalised inverse)."""
        p = np.asarray(p, dtype=float)
        grid, F = self._cdf_table()
        if self.atom is None:
            return np.interp(p, F, grid)
        loc, mass = self.atom
        # the atom sits below (or above) the continuous part
        if loc <= grid[0]:
            return np.where(p <= mass, loc, np.interp(p - mass, F, grid))
        return np.where(p >= F[-1], loc, np.interp(p, F, grid))

    @property
    def mean(self) -> float:
        return self.moment(1)

    @property
    def variance(self) -> float:
        return self.moment(2) - self.moment(1) ** 2

    def moment(self, k: int) -> float:
        """``E[x^k]`` by Gauss-Chebyshev quadrature of the continuous part plus the atom."""
        lo, hi = self.support
        c, h = (hi + lo) / 2, (hi - lo) / 2
        theta = (np.arange(4000) + 0.5) * np.pi / 4000
        x = c + h * np.cos(theta)
        val = float(np.sum(x ** k * self._density(x) * h * np.sin(theta)) * np.pi / 4000)
        if self.atom is not None:
            val += self.atom[1] * self.atom[0] ** k
        return val

    def eigenvalues(self, n: int, seed=None) -> np.ndarray:
        """Eigenvalues of one random ``n x n`` matrix with this limiting law."""
        return np.linalg.eigvalsh(self.matrix(n, seed))

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class Wigner(Law):
    """Semicircle law of variance ``variance`` (radius ``2 sqrt(variance)``), centred at ``center``.

    Examples
    --------
    >>> w = Wigner(0.25)
    >>> w.support, round(float(w.density(0.0)), 6)
    ((-1.0, 1.0), 0.63662)
    """

    def __init__(self, variance: float = 1.0, center: float = 0.0):
        if not variance > 0:
            raise ValueError(f"variance must be > 0, got {variance!r}")
        self.variance_ = float(variance)
        self.center = float(center)
        r = 2 * math.sqrt(self.variance_)
        self.support = (self.center - r, self.center + r)

    @property
    def radius(self) -> float:
        return 2 * math.sqrt(self.variance_)

    def _density(self, x):
        y = x - self.center
        return np.sqrt(np.maximum(self.radius ** 2 - y * y, 0.0)) / (2 * np.pi * self.variance_)

    def stieltjes(self, z):
        """m(z) = integral of rho(x) / (x - z), on the principal sheet."""
        y = np.asarray(z, dtype=complex) - self.center
        r = self.radius
        return (-y + np.sqrt(y - r) * np.sqrt(y + r)) / (2 * self.variance_)

    def decompress(self, alpha: float) -> "Wigner":
        """The law of the matrix ``alpha`` times larger: variance times ``alpha``."""
        return Wigner(alpha * self.variance_, self.center)

    def mean_log_abs(self) -> float:
        """E log|x|: ``log(r / 2) - 1/2`` for ``center = 0``, else by quadrature."""
        if self.center == 0:
            return math.log(self.radius / 2) - 0.5
        from scipy import integrate

        lo, hi = self.support
        inner = [0.0] if lo < 0 < hi else None
        return integrate.quad(lambda x: math.log(abs(x)) * float(self._density(np.array(x))), lo, hi,
                              points=inner, limit=200)[0]

    def matrix(self, n: int, seed=None) -> np.ndarray:
        """A GOE matrix scaled so that its spectrum tends to this law."""
        rng = np.random.default_rng(seed)
        g = rng.standard_normal((n, n))
        return (g + g.T) * math.sqrt(self.variance_ / (2 * n)) + self.center * np.eye(n)


class MarchenkoPastur(Law):
    """Marchenko-Pastur law of ``X X^T / d`` for an ``n x d`` matrix of i.i.d. entries.

    ``ratio = n / d``; entries of variance ``variance``. For ``ratio > 1`` there is an atom
    of mass ``1 - 1/ratio`` at 0.

    Examples
    --------
    >>> mp = MarchenkoPastur(0.25)
    >>> mp.support, round(mp.mean, 8), round(mp.variance, 8)
    ((0.25, 2.25), 1.0, 0.25)
    """

    def __init__(self, ratio: float, variance: float = 1.0):
        if not ratio > 0 or not variance > 0:
            raise ValueError(f"ratio and variance must be > 0, got {ratio!r}, {variance!r}")
        self.ratio = float(ratio)
        self.variance_ = float(variance)
        s = math.sqrt(self.ratio)
        self.support = (self.variance_ * (1 - s) ** 2, self.variance_ * (1 + s) ** 2)
        self.atom = (0.0, 1 - 1 / self.ratio) if self.ratio > 1 else None

    def _density(self, x):
        lo, hi = self.support
        return np.sqrt(np.maximum((hi - x) * (x - lo), 0.0)) / (2 * np.pi * self.variance_ * self.ratio * x)

    def stieltjes(self, z):
        """m(z) = integral of rho(x) / (x - z) (atom included), on the principal sheet."""
        z = np.asarray(z, dtype=complex)
        lo, hi = self.support
        lam, s2 = self.ratio, self.variance_
        return (s2 * (1 - lam) - z + np.sqrt(z - lo) * np.sqrt(z - hi)) / (2 * lam * s2 * z)

    def decompress(self, alpha: float) -> "MarchenkoPastur":
        """The law of the matrix ``alpha`` times larger: ratio times ``alpha``."""
        return MarchenkoPastur(alpha * self.ratio, self.variance_)

    def mean_log(self) -> float:
        """E log x for ``ratio < 1``: ``log(variance) - 1 - (1 - r)/r * log(1 - r)``."""
        lam = self.ratio
        if lam >= 1:
            return -math.inf
        return math.log(self.variance_) - 1 - (1 - lam) / lam * math.log1p(-lam)

    def matrix(self, n: int, seed=None) -> np.ndarray:
        """A Wishart matrix ``X X^T / d`` with ``d = round(n / ratio)``."""
        rng = np.random.default_rng(seed)
        d = max(1, round(n / self.ratio))
        x = rng.standard_normal((n, d)) * math.sqrt(self.variance_)
        return x @ x.T / d
