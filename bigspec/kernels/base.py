"""The kernel protocol: what ``bigspec.form`` needs from a kernel.

A kernel has a ``name``, its ``params``, ``n_outputs`` (d) and ``kron_identity``; calling it
on two blocks of data rows returns one tile of the matrix, on the array module of its inputs.
When ``kron_identity`` is true the full kernel is ``K (x) I_d`` and only K (n x n) is stored;
otherwise the block is ``(len(x_rows) * d, len(x_cols) * d)`` in sample-major order
(row = sample * d + output).

Examples
--------
>>> import numpy as np
>>> from bigspec.kernels import get_kernel
>>> k = get_kernel("rbf", lengthscale=2.0)
>>> k(np.zeros((2, 3)), np.ones((1, 3))).shape
(2, 1)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..backend import namespace_of
from ..errors import KernelError


class KernelParameterError(KernelError):
    """Unknown or invalid kernel parameter."""


class Kernel(ABC):
    """Base class of bigspec kernels. Subclasses set ``name`` and implement :meth:`block`."""

    name: str = "kernel"
    kron_identity: bool = True
    defaults: dict[str, Any] = {}

    def __init__(self, n_outputs: int = 1, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise KernelParameterError(
                f"unknown parameter(s) {', '.join(unknown)} for kernel {self.name!r}; "
                f"it takes: {', '.join(sorted(self.defaults)) or 'none'} and n_outputs"
            )
        if int(n_outputs) != n_outputs or n_outputs < 1:
            raise KernelParameterError(f"n_outputs must be a positive integer, got {n_outputs!r}")
        self.n_outputs = int(n_outputs)
        self.params = {**self.defaults, **params}
        self.check_params()

    def check_params(self) -> None:
        """Validate ``self.params``; raise :class:`KernelParameterError` naming the bad one."""

    def _positive(self, *names):
        for name in names:
            value = self.params[name]
            if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
                raise KernelParameterError(f"{self.name} kernel: {name} must be a positive number, got {value!r}")

    def spec(self) -> dict:
        """JSON-safe description recorded in the store's attributes."""
        return {"name": self.name, "n_outputs": self.n_outputs, "kron_identity": self.kron_identity,
                "params": {k: _jsonable(v) for k, v in self.params.items()}}

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Whole-data preprocessing before tiling (e.g. centring); default: unchanged."""
        return X

    def check_data(self, X) -> None:
        """Raise a clear error if ``X`` has the wrong shape for this kernel."""
        if X.ndim != 2:
            raise KernelError(f"{self.name} kernel needs X of shape (n_samples, n_features), got shape {X.shape}")

    def rows_per_sample(self) -> int:
        """Stored matrix rows per data point: 1 for Kronecker kernels, else n_outputs."""
        return 1 if self.kron_identity else self.n_outputs

    def __call__(self, x_rows, x_cols, *, diagonal: bool = False):
        return self.block(x_rows, x_cols, diagonal=diagonal)

    @abstractmethod
    def block(self, x_rows, x_cols, *, diagonal: bool = False):
        """The kernel block between two sets of data rows, on their array module."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args}, n_outputs={self.n_outputs})"


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def squared_distances(x_rows, x_cols, diagonal: bool):
    """Pairwise squared distances by GEMM, clamped at 0, exactly 0 on a diagonal tile."""
    xp = namespace_of(x_rows)
    a = (x_rows * x_rows).sum(axis=1)
    b = (x_cols * x_cols).sum(axis=1)
    d2 = a[:, None] + b[None, :] - 2.0 * (x_rows @ x_cols.T)
    d2 = xp.maximum(d2, 0.0)
    if diagonal:
        d2[xp.arange(d2.shape[0]), xp.arange(d2.shape[0])] = 0.0
    return d2
