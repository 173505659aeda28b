"""What pure tasks cost on a cluster: each factor/solve/update task updating its own copy of the tile.

On a distributed cluster Dask runs a task again, from the inputs it still holds, when the
worker holding its result dies, so bigspec's tasks must not change their inputs there
(``graph.panel_graph(..., pure=True)``); on the threaded scheduler they update tiles in place.
This times the out-of-core factorization (budget 1/4 of the matrix) on an in-process
``LocalCluster`` (1 worker, 2 threads) both ways, alternating, on the Matérn matrices of
``bench/logdet_exact.py``, and prints the ratio pure / in place (medians of ``--repeat`` runs).
Seconds are reported, never asserted::

    python bench/pure_tasks.py                 # n = 8192, tiles of 1024: about 2 minutes
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import logdet_exact as le  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    import numpy as np
    import zarr
    from distributed import Client, LocalCluster

    import bigspec
    import bigspec.determinant.tasks as tasks

    copy_own = tasks._own
    with tempfile.TemporaryDirectory(prefix="bigspec-pure-") as work:
        full = os.path.join(work, "full.zarr")
        le.write_full_matrix(args.n, full, args.tile)
        ms = bigspec.from_array(zarr.open_array(full, mode="r"), os.path.join(work, "K.zarr"), tile_size=args.tile)
        budget = args.n * args.n * 8 // 4
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            bigspec.logdet(np.eye(256) * 2.0, tile_size=64, client=client)
            for method in ("cholesky", "ldl"):
                times = {"pure": [], "in place": []}
                values = set()
                for _ in range(args.repeat):
                    for mode in times:
                        tasks._own = copy_own if mode == "pure" else (lambda T, pure: T)
                        t0 = time.perf_counter()
                        r = bigspec.logdet(ms, method=method, memory=budget, checkpoint=False, client=client,
                                           progress=False)
                        times[mode].append(time.perf_counter() - t0)
                        values.add(r.logabsdet)
                tasks._own = copy_own
                pure, inplace = (statistics.median(times[m]) for m in ("pure", "in place"))
                print(f"{method:8s} n={args.n} tile={args.tile} budget 1/4: pure {pure:.2f} s, in place {inplace:.2f} s, "
                      f"ratio {pure / inplace:.2f} (same value: {len(values) == 1})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
