"""A spectral density as a damped Chebyshev-U series, with its Stieltjes transform in closed form.

On the support [lo, hi] with t = (2x - lo - hi) / (hi - lo), the density is

    rho(x) = (2 / span) * sqrt(1 - t^2) * sum_k c_k U_k(t),

the kernel polynomial method with Jackson damping. Because
``integral U_k(t) sqrt(1 - t^2) / (t - u) dt = -pi J(u)^(k+1)`` with ``J + 1/J = 2u``,
``|J| < 1``, the Stieltjes transform, its derivative and the Hilbert transform on the cut
(``-pi T_{k+1}``) are exact: no quadrature and no principal values.

Examples
--------
>>> import numpy as np
>>> from bigspec.spectra.chebyshev import ChebyshevDensity
>>> rho = ChebyshevDensity(-2.0, 2.0, np.array([2 / np.pi]))   # the semicircle of radius 2
>>> round(float(rho.density(np.array([0.0]))[0]), 6), round(1 / np.pi, 6)
(0.31831, 0.31831)
>>> round(float(rho.stieltjes(np.array([1j]))[0].imag), 9)
0.618033989
"""

from __future__ import annotations

import numpy as np


def jackson(K: int) -> np.ndarray:
    """Jackson damping factors g_0..g_K (the positive kernel of the kernel polynomial method)."""
    L = K + 1
    k = np.arange(L)
    a = np.pi / (L + 1)
    return ((L - k + 1) * np.cos(a * k) + np.sin(a * k) / np.tan(a)) / (L + 1)


DAMPING = {
    "jackson": jackson,
    "none": lambda K: np.ones(K + 1),
    "fejer": lambda K: 1 - np.arange(K + 1) / (K + 1),
    "lanczos": lambda K: np.sinc(np.arange(K + 1) / (K + 1)),
}


def chebyshev_u(t: np.ndarray, K: int) -> np.ndarray:
    """U_0..U_K at t, shape (K + 1, len(t)), by the three-term recurrence."""
    t = np.asarray(t, dtype=float)
    out = np.empty((K + 1, t.size))
    out[0] = 1.0
    if K >= 1:
        out[1] = 2 * t
    for k in range(2, K + 1):
        out[k] = 2 * t * out[k - 1] - out[k - 2]
    return out


class ChebyshevDensity:
    """``rho(x) = (2/span) sqrt(1 - t^2) sum_k c_k U_k(t)`` on ``[lo, hi]``; coefficients include damping."""

    def __init__(self, lo: float, hi: float, coef: np.ndarray):
        self.lo, self.hi = float(lo), float(hi)
        self.coef = np.asarray(coef, dtype=float)

    @classmethod
    def from_samples(cls, x, lo, hi, degree, damping="jackson"):
        """Moments of the empirical distribution of ``x``: c_k = (2/pi) mean U_k(t_i), damped."""
        t = np.clip((2 * np.asarray(x, float) - lo - hi) / (hi - lo), -1.0, 1.0)
        c = (2 / np.pi) * chebyshev_u(t, degree).mean(axis=1)
        return cls(lo, hi, c * DAMPING[damping](degree))

    @property
    def span(self) -> float:
        return self.hi - self.lo

    def to_t(self, x):
        return (2 * np.asarray(x) - self.lo - self.hi) / self.span

    def density(self, x):
        """The series on the support, 0 outside (it may dip below 0 between ringing lobes)."""
        t = self.to_t(np.asarray(x, float))
        inside = np.abs(t) < 1
        out = np.zeros(t.shape)
        ti = t[inside]
        out[inside] = (2 / self.span) * np.sqrt(1 - ti * ti) * (self.coef @ chebyshev_u(ti, self.coef.size - 1))
        return out

    def mass(self) -> float:
        return float(self.coef[0] * np.pi / 2)

    def hilbert(self, x):
        """Re m(x + i0) on the support: ``(2/span) * (-pi) * sum_k c_k T_{k+1}(t)``."""
        t = np.clip(self.to_t(np.asarray(x, float)), -1, 1)
        T = np.polynomial.chebyshev.chebval(t, np.concatenate([[0.0], self.coef]))
        return -np.pi * (2 / self.span) * T

    def _J(self, z):
        u = self.to_t(np.asarray(z, dtype=complex))
        J = u - np.sqrt(u - 1) * np.sqrt(u + 1)  # the root of J + 1/J = 2u inside the unit disk
        return u, J

    def stieltjes(self, z, derivative=False):
        """m(z) = integral rho(x) / (x - z) on the principal sheet (and dm/dz)."""
        u, J = self._J(z)
        k = np.arange(self.coef.size)
        powers = np.empty(J.shape + (k.size,), dtype=complex)
        powers[..., 0] = 1.0
        if k.size > 1:
            powers[..., 1:] = J[..., None]
            np.cumprod(powers[..., 1:], axis=-1, out=powers[..., 1:])  # J^k without complex pow
        # einsum, not @: a complex-by-real product this small goes through BLAS's threads, which on
        # a busy machine made each decompression up to 10x slower (thousands of calls)
        p = np.einsum("...k,k->...", powers, self.coef)
        dp = np.einsum("...k,k->...", powers[..., :-1], k[1:] * self.coef[1:]) if self.coef.size > 1 \
            else np.zeros_like(J)
        scale = -np.pi * (2 / self.span)
        m = scale * J * p
        if not derivative:
            return m
        dm_dJ = scale * (p + J * dp)
        dJ_du = 2 * J * J / (J * J - 1)
        return m, dm_dJ * dJ_du * (2 / self.span)
