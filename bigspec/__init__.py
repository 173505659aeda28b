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
    BackendUnavailableError,
    BigspecError,
    GrowthWarning,
    IncompleteStoreError,
    InvalidMatrixError,
    MemoryBudgetError,
    NonFiniteError,
    NotPositiveDefiniteError,
    OverwriteWarning,
    SingularMatrixWarning,
    StoreExistsError,
    StoreNotFoundError,
    TileSizeError,
    UnstableFactorizationError,
)

from .form import form  # noqa: E402  light: zarr and dask load on first call
from .logdet import logdet, slogdet  # light: the heavy modules load on first call
from .spectrum import free_decompress  # noqa: E402
from .spectrum import spectrum as _spectrum_function  # noqa: E402
from . import spectrum as _spectrum_module  # noqa: E402

# ``bigspec.spectrum`` is the function; its submodules stay reachable through it
# (``bigspec.spectrum.laws``) as well as by import (``from bigspec.spectrum.laws import ...``).
for _name in ("laws", "metrics", "free", "chebyshev", "result", "sample", "SpectrumResult", "free_decompress",
              "DecompressionWarning", "InvalidSpectrumError"):
    setattr(_spectrum_function, _name, getattr(_spectrum_module, _name))
spectrum = _spectrum_function
DecompressionWarning, InvalidSpectrumError = _spectrum_module.DecompressionWarning, _spectrum_module.InvalidSpectrumError
del _name

__version__ = "0.1.0"

_lazy = {
    "from_array": "bigspec.store",
    "open_matrix": "bigspec.store",
    "MatrixStore": "bigspec.store",
    "connect": "bigspec.cluster",
    "LogdetResult": "bigspec.results",
    "kernels": "bigspec.kernels",
    "SpectrumResult": "bigspec.spectrum.result",
}

__all__ = sorted([*_lazy, "form", "logdet", "slogdet", "spectrum", "free_decompress", "BackendUnavailableError",
                  "BigspecError", "DecompressionWarning", "GrowthWarning", "IncompleteStoreError",
                  "InvalidMatrixError", "InvalidSpectrumError", "MemoryBudgetError", "NonFiniteError",
                  "NotPositiveDefiniteError", "OverwriteWarning", "SingularMatrixWarning", "StoreExistsError",
                  "StoreNotFoundError", "TileSizeError", "UnstableFactorizationError", "__version__"])


def __getattr__(name):
    if name in _lazy:
        module = import_module(_lazy[name])
        return module if module.__name__ == f"bigspec.{name}" else getattr(module, name)
    raise AttributeError(f"module 'bigspec' has no attribute {name!r}")


def __dir__():
    return __all__
