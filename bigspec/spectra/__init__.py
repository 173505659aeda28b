"""Eigenvalue densities of huge matrices from sampled submatrices (free decompression).

* :func:`spectrum` samples principal submatrices of a store, or forms them from a
  kernel and data, computes their eigenvalues on the workers, and decompresses.
* :func:`free_decompress` takes eigenvalues you already have.
* :mod:`bigspec.spectra.laws` holds the analytic oracles (Marchenko-Pastur, Wigner).
"""

from . import laws, metrics
from .free import DecompressionWarning, InvalidSpectrumError, free_decompress
from .result import SpectrumResult
from .sample import spectrum

__all__ = ["spectrum", "free_decompress", "SpectrumResult", "laws", "metrics", "DecompressionWarning",
           "InvalidSpectrumError"]
