"""Stationary kernels: RBF and Matérn (nu = 1/2, 3/2, 5/2), Rasmussen & Williams 2006, chapter 4.

Data are centred globally before tiling (``prepare``) so GEMM distances stay accurate, r^2 is
clamped at 0 and forced to 0 on the global diagonal.

Examples
--------
>>> import numpy as np
>>> from bigspec.kernels import Matern
>>> float(Matern(nu=0.5, lengthscale=1.0)(np.zeros((1, 1)), np.ones((1, 1)))[0, 0]) == float(np.exp(-1.0))
True
"""

from __future__ import annotations

from ..backend import namespace_of
from .base import Kernel, KernelParameterError, squared_distances


class _Stationary(Kernel):
    kron_identity = True

    def prepare(self, X):
        return X - X.mean(axis=0, keepdims=True)

    def check_params(self):
        self._positive("lengthscale", "variance")


class RBF(_Stationary):
    """``k(r) = variance * exp(-r^2 / (2 lengthscale^2))``."""

    name = "rbf"
    defaults = {"lengthscale": 1.0, "variance": 1.0}

    def block(self, x_rows, x_cols, *, diagonal=False):
        xp = namespace_of(x_rows)
        d2 = squared_distances(x_rows, x_cols, diagonal)
        ell = self.params["lengthscale"]
        return self.params["variance"] * xp.exp(-d2 / (2.0 * ell * ell))


class Matern(_Stationary):
    """Matérn kernel with nu in {0.5, 1.5, 2.5}: ``variance * p(s) exp(-s)``, ``s = sqrt(2 nu) r / lengthscale``."""

    name = "matern"
    defaults = {"nu": 1.5, "lengthscale": 1.0, "variance": 1.0}

    def check_params(self):
        super().check_params()
        if self.params["nu"] not in (0.5, 1.5, 2.5):
            raise KernelParameterError(f"matern kernel: nu must be 0.5, 1.5 or 2.5, got {self.params['nu']!r}")

    def block(self, x_rows, x_cols, *, diagonal=False):
        xp = namespace_of(x_rows)
        nu, ell = self.params["nu"], self.params["lengthscale"]
        s = xp.sqrt(squared_distances(x_rows, x_cols, diagonal)) * ((2.0 * nu) ** 0.5 / ell)
        if nu == 0.5:
            poly = 1.0
        elif nu == 1.5:
            poly = 1.0 + s
        else:
            poly = 1.0 + s + s * s / 3.0
        return self.params["variance"] * poly * xp.exp(-s)
