"""The built-in example behind ``bigspec demo``: NTKs of the digits data set.

scikit-learn ships the 1797 handwritten 8x8 digits (no download). The demo forms the
analytic NTK of a deep ReLU network on all of them (10 outputs, stored once as K of
K (x) I_10), factors it out of core with a memory budget a third of the stored matrix, and
compares with numpy's in-core ``slogdet``. With torch installed it also forms the empirical
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


def _compare(ms, client, progress, budget_fraction=1 / 3):
    import bigspec

    budget = int(ms.nbytes * budget_fraction)
    res = bigspec.logdet(ms, method="ldl", memory=budget, client=client, progress=progress, overwrite=True)
    K = ms.to_dask().compute(scheduler="threads")
    t0 = time.perf_counter()
    sign, ref = np.linalg.slogdet(K)
    t_numpy = time.perf_counter() - t0
    ref = res.kron_outputs * float(ref)
    return {"n": ms.n, "kron_outputs": res.kron_outputs, "matrix_bytes": ms.nbytes, "memory_budget": budget,
            "bigspec": res.to_dict(), "numpy_sign": int(sign), "numpy_logabsdet": ref,
            "numpy_seconds": t_numpy, "rel_diff": abs(res.logabsdet - ref) / abs(ref)}


def run_demo(workdir: str, *, n_samples: int | None = None, ntk_samples: int = 150, tile_size: int = 256,
             client=None, progress=None, torch_ntk: bool | None = None) -> dict:
    """Form and factor the demo NTKs under ``workdir``; return bigspec's and numpy's answers."""
    import bigspec

    X, _ = digits()
    if n_samples:
        X = X[:n_samples]
    out = {}
    t0 = time.perf_counter()
    ms = bigspec.form("relu", X, f"{workdir}/relu-ntk.zarr", tile_size=tile_size, depth=3, n_outputs=10,
                      client=client, progress=progress, overwrite=True)
    out["relu_ntk"] = {"form_seconds": time.perf_counter() - t0, **_compare(ms, client, progress)}
    if torch_ntk is None:
        try:
            import torch  # noqa: F401

            torch_ntk = True
        except ImportError:
            torch_ntk = False
    if torch_ntk:
        t0 = time.perf_counter()
        sub = X[np.random.default_rng(0).permutation(len(X))[:ntk_samples]]
        tile = max(10, len(sub) // 10 * 10)  # ten tile rows of whole samples (10 outputs each)
        ms = bigspec.form("ntk", sub, f"{workdir}/mlp-ntk.zarr", model=small_mlp(), tile_size=tile,
                          client=client, progress=progress, overwrite=True)
        out["empirical_ntk"] = {"form_seconds": time.perf_counter() - t0, "model": "MLP 64-64-10 (tanh)",
                                **_compare(ms, client, progress)}
    return out
