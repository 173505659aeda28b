"""Benchmark kernel formation: bigspec.form against in-core references in the same process.

What it measures (one run, all on this machine):

1. ``matern`` (nu=3/2) and ``relu`` (NTK, depth 3) at n = 16384 points in 16 dimensions:
   bigspec.form on the threaded scheduler (tiles of 2048, lower triangle only, each tile
   written to a Zarr store) against the same kernel's ``block`` evaluated by numpy on the whole
   n x n matrix in one call (the in-core reference). Reports seconds, tiles/s, matrix entries
   per second (n^2 / seconds, the full-matrix equivalent for both), GFLOP/s (counting the
   distance/inner-product GEMM, 2 d flops per entry, plus the kernel's elementwise work) and
   the ratio in-core seconds / bigspec seconds (target >= 0.7).
2. The empirical NTK of a small CNN (3x32x32 inputs, 10 outputs) on 384 samples: entries/s of
   bigspec.form("ntk") against one in-process torch.func reference (vmap(jacrev) over all
   samples, then one float64 contraction J J^T). Target >= 0.8.

Run: ``python bench/form.py`` (``--quick`` for a small smoke run). Results are printed and
written to ``bench/results/form.json``. Timings are never asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

import bigspec
from bigspec.kernels import get_kernel

ELEMENTWISE_FLOPS = {"matern": 12, "relu": 3 * 25}   # rough per-entry non-GEMM work, for GFLOP/s only


def timed(fn, repeat=1):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None or dt < best else best
    return best, out


def bench_kernel(name, params, n, dim, tile, workdir, repeat):
    X = np.random.default_rng(0).standard_normal((n, dim))
    k = get_kernel(name, **params)
    Xp = k.prepare(X)
    t_ref, K = timed(lambda: k(Xp, Xp, diagonal=True), repeat)
    del K
    path = os.path.join(workdir, f"{name}.zarr")

    def run():
        return bigspec.form(name, X, path, tile_size=tile, overwrite=True, progress=False, shuffle=False, **params)

    t_big, ms = timed(run, repeat)
    tiles = sum(1 for _ in ms.stored_tiles())
    # check the stored matrix against the in-core one on a few tiles
    Kref_block = k(Xp[:tile], Xp[-tile:])
    err = float(np.abs(ms.read(n - tile, n, 0, tile) - Kref_block.T).max())
    flops = n * n * (2 * dim + ELEMENTWISE_FLOPS[name])
    return {
        "kernel": name, "params": params, "n": n, "dim": dim, "tile_size": tile, "tiles": tiles,
        "incore_seconds": t_ref, "bigspec_seconds": t_big, "ratio_incore_over_bigspec": t_ref / t_big,
        "bigspec_tiles_per_s": tiles / t_big, "incore_entries_per_s": n * n / t_ref,
        "bigspec_entries_per_s": n * n / t_big, "incore_gflops": flops / t_ref / 1e9,
        "bigspec_gflops": flops / t_big / 1e9, "max_abs_diff": err,
    }


def small_cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(16 * 16, 10)).eval()


def torch_reference_ntk(net, X):
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, x):
        return functional_call(net, p, (x.unsqueeze(0),)).squeeze(0)

    x = torch.as_tensor(X, dtype=torch.float32)
    J = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    flat = torch.cat([v.reshape(x.shape[0] * 10, -1).double() for v in J.values()], dim=1)
    return (flat @ flat.T).numpy()


def bench_ntk(n, tile_samples, workdir, repeat):
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "torch is not installed"}
    X = np.random.default_rng(1).standard_normal((n, 3, 32, 32)).astype(np.float32)
    net = small_cnn()
    torch_reference_ntk(net, X[:4])  # warm torch up so neither side pays its first-call cost
    t_ref, K = timed(lambda: torch_reference_ntk(net, X), repeat)
    path = os.path.join(workdir, "ntk.zarr")
    k = get_kernel("ntk", model=net, batch_size=32)

    def run():
        return bigspec.form(k, X, path, tile_size=tile_samples * 10, overwrite=True, progress=False, shuffle=False)

    t_big, ms = timed(run, repeat)
    err = float(np.abs(ms.to_dask().compute() - K).max() / np.abs(K).max())
    N = n * 10
    return {
        "model": "CNN conv8-conv16-linear, 3x32x32 -> 10", "parameters": int(sum(p.numel() for p in net.parameters())),
        "n_samples": n, "matrix_rows": N, "tile_size": tile_samples * 10,
        "reference_seconds": t_ref, "bigspec_seconds": t_big,
        "reference_entries_per_s": N * N / t_ref, "bigspec_entries_per_s": N * N / t_big,
        "ratio_bigspec_over_reference": t_ref / t_big, "max_rel_diff": err,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    n, tile, ntk_n = (2048, 512, 64) if args.quick else (args.n, 2048, 384)
    workdir = tempfile.mkdtemp(prefix="bigspec-bench-form-")
    rows = []
    try:
        for name, params in (("matern", {"nu": 1.5, "lengthscale": 2.0}), ("relu", {"depth": 3})):
            rows.append(bench_kernel(name, params, n, 16, tile, workdir, args.repeat))
            r = rows[-1]
            print(f"{name:7s} n={n} tile={tile}: in-core {r['incore_seconds']:.2f} s "
                  f"({r['incore_gflops']:.1f} GFLOP/s), bigspec {r['bigspec_seconds']:.2f} s "
                  f"({r['bigspec_tiles_per_s']:.2f} tiles/s, {r['bigspec_gflops']:.1f} GFLOP/s), "
                  f"ratio in-core/bigspec {r['ratio_incore_over_bigspec']:.2f}, max diff {r['max_abs_diff']:.1e}",
                  flush=True)
        ntk = bench_ntk(ntk_n, 64 if not args.quick else 16, workdir, args.repeat)
        if "skipped" in ntk:
            print("ntk: skipped,", ntk["skipped"])
        else:
            print(f"ntk     {ntk['n_samples']} samples ({ntk['matrix_rows']} rows, P={ntk['parameters']}): "
                  f"torch.func reference {ntk['reference_seconds']:.2f} s "
                  f"({ntk['reference_entries_per_s']:.3g} entries/s), bigspec {ntk['bigspec_seconds']:.2f} s "
                  f"({ntk['bigspec_entries_per_s']:.3g} entries/s), ratio {ntk['ratio_bigspec_over_reference']:.2f}, "
                  f"max rel diff {ntk['max_rel_diff']:.1e}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "numpy": np.__version__, "bigspec": bigspec.__version__,
                    "quick": args.quick},
           "kernels": rows, "ntk": ntk}
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "form.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
