"""The built-in example behind ``bigspec demo``: NTKs of the digits data set.

scikit-learn ships the 1797 handwritten 8x8 digits (no download). The demo forms the
analytic NTK of a deep ReLU network on all of them (10 outputs, stored once as K of
K (x) I_10), factors it out of core with a memory budget a third of the stored matrix (with
the largest tile size whose plan fits that budget on the cluster it runs on: each worker thread
needs its own workspace), and compares with numpy's in-core ``slogdet``. With torch installed it also forms the empirical
NTK of a small MLP on a shuffled subset and does the same.

Examples
--------
>>> from bigspec.demo import digits
>>> X, y = digits()
>>> X.shape, float(X.max())
((1797, 64), 1.0)
"""

from __future__ import annotations

import time

import numpy as np


def digits():
    """(X, y): the 1797 digits images scaled to [0, 1], and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("bigspec demo uses scikit-learn's bundled digits: pip install scikit-learn, or pip install \".[examples]\" in the bigspec checkout") from e
    data = load_digits()
    return data.data / 16.0, data.target


def small_mlp(seed: int = 0):
    """A 64-64-10 tanh MLP (torch), the demo's finite network."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10)).double()


BUDGET_FRACTION = 1 / 3


def fitting_tile(n: int, candidates, client=None, fraction: float = BUDGET_FRACTION) -> tuple[int, int]:
    """(tile size, budget in bytes): the first of ``candidates`` (largest first) whose LDL^T plan
    for an ``n x n`` float64 matrix fits ``fraction`` of it on ``client``'s workers (or this
    machine's threads); where none does (many threads, each with its own workspace), the last
    candidate and its minimum budget."""
    from .cluster import resources
    from .determinant import plan_logdet
    from .errors import MemoryBudgetError

    workers, threads, _ = resources(client)
    budget = int(n * n * 8 * fraction)
    need = budget
    for b in candidates:
        try:
            plan_logdet(n=n, tile_size=b, memory=budget, method="ldl", workers=workers, threads=threads)
            return b, budget
        except MemoryBudgetError as e:
            need = max(int(e.minimum), budget)
    return candidates[-1], need


def _compare(ms, client, progress, budget):
    import bigspec

    res = bigspec.logdet(ms, method="ldl", memory=budget, client=client, progress=progress, overwrite=True)
    K = ms.to_dask().compute(scheduler="threads")
    t0 = time.perf_counter()
    sign, ref = np.linalg.slogdet(K)
    t_numpy = time.perf_counter() - t0
    ref = res.kron_outputs * float(ref)
    return {"n": ms.n, "kron_outputs": res.kron_outputs, "matrix_bytes": ms.nbytes, "memory_budget": budget,
            "tile_size": ms.tile_size, "bigspec": res.to_dict(), "numpy_sign": int(sign),
            "numpy_logabsdet": ref, "numpy_seconds": t_numpy, "rel_diff": abs(res.logabsdet - ref) / abs(ref)}


def run_demo(workdir: str, *, n_samples: int | None = None, ntk_samples: int = 150, tile_size: int = 256,
             client=None, progress=None, torch_ntk: bool | None = None) -> dict:
    """Form and factor the demo NTKs under ``workdir``; return bigspec's and numpy's answers."""
    import bigspec

    X, _ = digits()
    if n_samples:
        X = X[:n_samples]
    out = {}
    t0 = time.perf_counter()
    tile, budget = fitting_tile(len(X), [tile_size] + [t for t in (192, 128, 96, 64, 48, 32) if t < tile_size],
                                client)
    ms = bigspec.form("relu", X, f"{workdir}/relu-ntk.zarr", tile_size=tile, depth=3, n_outputs=10,
                      client=client, progress=progress, overwrite=True)
    out["relu_ntk"] = {"form_seconds": time.perf_counter() - t0, **_compare(ms, client, progress, budget)}
    if torch_ntk is None:
        try:
            import torch  # noqa: F401

            torch_ntk = True
        except ImportError:
            torch_ntk = False
    if torch_ntk:
        t0 = time.perf_counter()
        sub = X[np.random.default_rng(0).permutation(len(X))[:ntk_samples]]
        # about ten tile rows of whole samples (10 outputs each), fewer samples a tile where that does not fit
        first = max(10, len(sub) // 10 * 10)
        tile, budget = fitting_tile(10 * len(sub), [first] + [t for t in (100, 80, 60, 50, 40, 30, 20, 10)
                                                              if t < first], client)
        ms = bigspec.form("ntk", sub, f"{workdir}/mlp-ntk.zarr", model=small_mlp(), tile_size=tile,
                          client=client, progress=progress, overwrite=True)
        out["empirical_ntk"] = {"form_seconds": time.perf_counter() - t0, "model": "MLP 64-64-10 (tanh)",
                                **_compare(ms, client, progress, budget)}
    return out
