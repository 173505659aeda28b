"""Matrices with known log-determinants, for tests, the demo and benchmarks.

Examples
--------
>>> import numpy as np
>>> from bigspec.testing import matern_matrix
>>> K = matern_matrix(np.random.default_rng(0).random((50, 3)), nu=1.5, lengthscale=0.5, noise=1e-3)
>>> bool(np.all(np.linalg.eigvalsh(K) > 0))
True
"""

from __future__ import annotations

import numpy as np


def matern_matrix(X, *, nu: float = 1.5, lengthscale: float = 1.0, variance: float = 1.0,
                  noise: float = 0.0, dtype="float64", block: int = 2048) -> np.ndarray:
    """Dense Matérn kernel matrix ``K_ij = k(|x_i - x_j|) + noise * delta_ij`` (nu = 1/2, 3/2, 5/2).

    Formed block by block so the distance matrix never needs more than ``block`` rows.
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    K = np.empty((n, n), dtype=dtype)
    sq = np.einsum("ij,ij->i", X, X)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        d2 = sq[r0:r1, None] + sq[None, :] - 2.0 * (X[r0:r1] @ X.T)
        r = np.sqrt(np.maximum(d2, 0.0)) / lengthscale
        if nu == 0.5:
            k = np.exp(-r)
        elif nu == 1.5:
            s = np.sqrt(3.0) * r
            k = (1.0 + s) * np.exp(-s)
        elif nu == 2.5:
            s = np.sqrt(5.0) * r
            k = (1.0 + s + s * s / 3.0) * np.exp(-s)
        else:
            raise ValueError(f"nu must be 0.5, 1.5 or 2.5, got {nu}")
        K[r0:r1] = variance * k
    K[np.diag_indices(n)] += noise
    return (K + K.T) / 2


def make_spd(n: int, seed: int = 0, dtype="float64", cond: float = 1e3) -> np.ndarray:
    """A random SPD matrix with condition number ``cond`` (log-uniform spectrum)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.logspace(0, np.log10(cond), n) if n > 1 else np.ones(1)
    A = (Q * eig) @ Q.T
    return ((A + A.T) / 2).astype(dtype)


def make_indefinite(n: int, seed: int = 0, dtype="float64") -> np.ndarray:
    """A random symmetric indefinite matrix (GOE-like, scaled to O(1) entries)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n))
    return ((X + X.T) / 2).astype(dtype)


def assert_logdet_close(result, A, rtol: float = 1e-10, atol: float = 1e-8) -> None:
    """Assert ``result`` (a LogdetResult or (sign, logabsdet)) matches numpy's slogdet of A."""
    sign, logabsdet = tuple(result)
    ref_sign, ref = np.linalg.slogdet(np.asarray(A, dtype=np.float64))
    assert sign == int(ref_sign), f"sign {sign} != numpy's {int(ref_sign)}"
    assert abs(logabsdet - ref) <= atol + rtol * abs(ref), \
        f"logabsdet {logabsdet!r} != numpy's {ref!r} (diff {logabsdet - ref:.3g})"
