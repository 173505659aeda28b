"""The built-in example behind ``bigspec demo``.

A Matérn-3/2 kernel matrix on random points in the unit cube (no downloads), written to
a store, factored out of core with a memory budget a third of the matrix, and compared
with numpy's in-core ``slogdet``.

Examples
--------
>>> from bigspec.demo import demo_matrix
>>> demo_matrix(100).shape
(100, 100)
"""

from __future__ import annotations

import time

import numpy as np

from .testing.matrices import matern_matrix


def demo_matrix(n: int = 4000, seed: int = 0) -> np.ndarray:
    """The demo's kernel matrix: Matérn nu=3/2, lengthscale 0.2, noise 1e-2, points in [0,1]^3."""
    X = np.random.default_rng(seed).random((n, 3))
    return matern_matrix(X, nu=1.5, lengthscale=0.2, noise=1e-2)


def run_demo(store: str, *, n: int = 4000, tile_size: int = 500, client=None, progress=None) -> dict:
    """Form, store and factor the demo matrix; return bigspec's and numpy's answers."""
    import bigspec

    K = demo_matrix(n)
    t0 = time.perf_counter()
    ref_sign, ref = np.linalg.slogdet(K)
    t_numpy = time.perf_counter() - t0
    ms = bigspec.from_array(K, store, tile_size=tile_size, overwrite=True)
    budget = K.nbytes // 3
    del K
    res = bigspec.logdet(ms, method="ldl", memory=budget, client=client, progress=progress, overwrite=True)
    return {
        "n": n, "matrix_bytes": n * n * 8, "memory_budget": budget, "store": ms.url,
        "bigspec": res.to_dict(), "numpy_sign": int(ref_sign), "numpy_logabsdet": float(ref),
        "numpy_seconds": t_numpy, "abs_diff": abs(res.logabsdet - float(ref)),
        "rel_diff": abs(res.logabsdet - float(ref)) / abs(float(ref)),
    }
