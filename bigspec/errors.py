"""Errors and warnings raised by bigspec.

Each error also inherits the builtin exception a user would naturally catch, so
``except ValueError`` keeps working. Messages name the offending value and the fix.

Examples
--------
>>> from bigspec.errors import TileSizeError
>>> issubclass(TileSizeError, ValueError)
True
"""

from __future__ import annotations

import numpy as np


class BigspecError(Exception):
    """Base class of every bigspec error."""

    def __init__(self, message: str = "", **info):
        super().__init__(message)
        self.info = info
        for key, value in info.items():
            setattr(self, key, value)

    def __reduce__(self):
        # keep keyword details when exceptions travel between Dask workers
        return (_rebuild, (type(self), str(self), self.info))


def _rebuild(cls, message, info):
    return cls(message, **info)


class StoreNotFoundError(BigspecError, FileNotFoundError):
    """No bigspec matrix store at the given location."""


class StoreExistsError(BigspecError, FileExistsError):
    """A store (or a factorization in it) exists and ``overwrite`` was not given."""


class InvalidMatrixError(BigspecError, ValueError):
    """The matrix is not square, symmetric, or of a supported dtype."""


class TileSizeError(BigspecError, ValueError):
    """``tile_size`` is invalid or does not match the store."""


class IncompleteStoreError(BigspecError, ValueError):
    """Some tiles of the store were never written (they still hold the NaN fill)."""


class NonFiniteError(BigspecError, ValueError):
    """A tile holds NaN or infinite values."""


class NotPositiveDefiniteError(BigspecError, np.linalg.LinAlgError):
    """Cholesky met a non-positive pivot: the matrix is not (numerically) positive definite."""


class MemoryBudgetError(BigspecError, ValueError):
    """The memory budget is too small for the factorization."""


class BackendUnavailableError(BigspecError, RuntimeError):
    """The requested device backend (cupy, dask-cuda, a GPU) is not available."""


class ClusterError(BigspecError, RuntimeError):
    """The Dask cluster could not be reached or started."""


class UnstableFactorizationError(BigspecError, np.linalg.LinAlgError):
    """LDL^T needs symmetric pivoting across more columns than the memory budget lets one task hold."""


class SingularMatrixWarning(UserWarning):
    """The matrix is singular (an exact zero pivot: log|det| is -inf) or numerically singular
    (pivots below the rounding level: log|det| is set by rounding, not by the matrix)."""


class GrowthWarning(UserWarning):
    """The indefinite factorization shows large element growth; the result may be inaccurate."""


class OverwriteWarning(UserWarning):
    """``overwrite=True`` is about to delete data at the target that is not a bigspec store."""


class KernelError(BigspecError, ValueError):
    """Unknown kernel, unknown or invalid kernel parameter, or data the kernel cannot take."""


class WorkerLostWarning(UserWarning):
    """A Dask worker left the cluster during a run; Dask re-runs its tasks on the others."""


class Interrupted(KeyboardInterrupt):
    """A run was interrupted (Ctrl-C); the message says what was finished and kept, and how to resume.

    A subclass of :class:`KeyboardInterrupt`, so ``except Exception`` does not swallow it.
    """

    def __init__(self, message: str = "", **info):
        super().__init__(message)
        self.info = info
        for key, value in info.items():
            setattr(self, key, value)
