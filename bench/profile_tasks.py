"""Where an exact log-determinant's time goes: task time by task function, and how many tasks ran at once.

    python bench/profile_tasks.py STORE [--memory FRACTION] [--method cholesky|ldl]

Runs ``bigspec.logdet(STORE, memory=FRACTION x the matrix)`` on Dask's threaded scheduler under
:class:`dask.diagnostics.Profiler` (the factor is not kept) and prints the wall time, the summed
task time per task function (seconds of a task thread, so I/O slowed by a concurrent GEMM shows
here), and the seconds during which 0, 1, 2, ... tasks ran: what a lookahead across the
per-panel barrier could fill at most. docs/scale.md section 5 quotes it for n = 8192.
"""

import argparse
import collections
import time

from dask.diagnostics import Profiler

import bigspec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--memory", type=float, default=0.25, help="budget as a fraction of the matrix (0: in memory)")
    ap.add_argument("--method", default="cholesky")
    args = ap.parse_args(argv)
    ms = bigspec.open_matrix(args.store, mode="r")
    budget = int(ms.n * ms.n * 8 * args.memory) if args.memory else "1TiB"
    bigspec.logdet(ms, method=args.method, memory=budget, checkpoint=False, progress=False)   # warm-up
    with Profiler() as prof:
        t = time.perf_counter()
        r = bigspec.logdet(ms, method=args.method, memory=budget, checkpoint=False, progress=False)
        wall = time.perf_counter() - t
    total, count = collections.Counter(), collections.Counter()
    for res in prof.results:
        name = getattr(getattr(res.task, "func", None), "__name__", str(res.task)[:30])
        total[name] += res.end_time - res.start_time
        count[name] += 1
    print(f"n = {ms.n}, tile {ms.tile_size}, {r.super_panels} super-panels, {r.tasks} tasks: wall {wall:.2f} s, "
          f"task time {sum(total.values()):.2f} s")
    for name, seconds in total.most_common():
        print(f"  {name:24s} {seconds:7.3f} s  {count[name]:5d} tasks")
    events = sorted([(res.start_time, 1) for res in prof.results] + [(res.end_time, -1) for res in prof.results])
    running, last, at_once = 0, events[0][0], collections.Counter()
    for t, step in events:
        at_once[running] += t - last
        running, last = running + step, t
    print("seconds with k tasks running: " + ", ".join(f"{k}: {v:.2f}" for k, v in sorted(at_once.items())))


if __name__ == "__main__":
    main()
