"""bigspec: exact and estimated log-determinants and spectra of matrices too large for memory.

Examples
--------
>>> import numpy as np, bigspec
>>> sign, logabsdet = bigspec.slogdet(np.array([[2.0, 1.0], [1.0, 2.0]]))
>>> sign, round(logabsdet, 12)
(1, 1.098612288668)
"""

from __future__ import annotations

from importlib import import_module

from . import config  # noqa: F401  (registers the defaults in dask.config)
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    BackendUnavailableError,
    BigspecError,
    BigspecWarning,
    ClusterError,
    EstimateError,
    EstimateWarning,
    CertificatesExistError,
    CorruptFactorError,
    GrowthWarning,
    IncompleteStoreError,
    Interrupted,
    InvalidMatrixError,
    JobSpecError,
    KernelError,
    LeaseWarning,
    MemoryBudgetError,
    NonFiniteError,
    NotPositiveDefiniteError,
    OverwriteWarning,
    SingularMatrixWarning,
    StoreExistsError,
    StoreLeaseError,
    StoreNotFoundError,
    StoreNotWritableError,
    TileSizeError,
    UnstableFactorizationError,
    WorkerLostWarning,
)

from .form import form  # noqa: E402  light: zarr and dask load on first call
from .determinant import logdet, plan_logdet, slogdet  # noqa: E402  light: the heavy modules load on first call
from .spectra import DecompressionWarning, InvalidSpectrumError, free_decompress, spectrum  # noqa: E402

# The verbs are functions and their implementations live in packages of other names
# (``bigspec.determinant``, ``bigspec.spectra``), so ``import bigspec.spectra.laws`` and
# ``bigspec.spectrum(...)`` never shadow each other.

__version__ = "0.1.0"

_lazy = {
    "from_array": "bigspec.store",
    "open_matrix": "bigspec.store",
    "MatrixStore": "bigspec.store",
    "connect": "bigspec.cluster",
    "LogdetResult": "bigspec.results",
    "EstimateResult": "bigspec.determinant.estimate",
    "kernels": "bigspec.kernels",
    "SpectrumResult": "bigspec.spectra.result",
    "calibrate": "bigspec.perfmodel",
    "MachineProfile": "bigspec.perfmodel",
}

__all__ = sorted([*_lazy, "form", "logdet", "plan_logdet", "slogdet", "spectrum", "free_decompress", "BackendUnavailableError",
                  "BigspecError", "ArgumentError", "ArgumentTypeError", "BigspecWarning", "ClusterError", "EstimateError", "EstimateWarning",
                  "Interrupted", "JobSpecError", "KernelError", "WorkerLostWarning", "DecompressionWarning", "GrowthWarning", "IncompleteStoreError",
                  "InvalidMatrixError", "InvalidSpectrumError", "CertificatesExistError", "CorruptFactorError", "MemoryBudgetError", "NonFiniteError",
                  "NotPositiveDefiniteError", "OverwriteWarning", "SingularMatrixWarning", "StoreExistsError", "StoreLeaseError",
                  "StoreNotFoundError", "StoreNotWritableError", "LeaseWarning", "TileSizeError", "UnstableFactorizationError", "__version__"])


def __getattr__(name):
    if name in _lazy:
        module = import_module(_lazy[name])
        return module if module.__name__ == f"bigspec.{name}" else getattr(module, name)
    raise AttributeError(f"module 'bigspec' has no attribute {name!r}")


def __dir__():
    return __all__
