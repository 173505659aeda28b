"""Benchmark of bigspec's exact log-determinant against LAPACK, dask and detkit.

What it measures
----------------
All matrices are float64 SPD Matérn-3/2 kernel matrices on uniform random points in the
unit cube (lengthscale 0.1, plus a ridge 1e-3 * I), generated blockwise by this script
(:func:`matern32_rows`) and written once per size to a work directory (default
``/tmp/bigspec-bench``): a full dense Zarr array (uncompressed, chunks = tile size) and one
bigspec store per tile size (:func:`bigspec.from_array`). For each size n it times:

1. ``lapack dpotrf``: in-core ``scipy.linalg.lapack.dpotrf`` on the whole matrix, already
   in RAM (logdet = 2 sum log diag L). This is the reference of the row's ``ratio``
   (speed relative to it, same n) and of ``rel.diff`` (|logdet - ref| / |ref|). Threaded
   OpenBLAS potrf is reported to segfault on a block of 2**31 bytes or more (not reproduced
   with OpenBLAS 0.3.31 at n=20000), so at such n it still runs (every configuration runs in
   its own subprocess), a crash is reported as ``crashed``, and a 2x2-block LAPACK Cholesky
   (potrf/trsm/syrk/potrf on half-size blocks) provides the logdet reference; the speed
   reference is then the largest smaller n's dpotrf rate (marked ``*``).
2. ``bigspec chol mem``: :func:`bigspec.logdet` (method="cholesky") on the store with a
   budget far above the matrix (one super-panel, in memory), for each tile size of the
   sweep; the fastest tile size is used for everything below at that n (and, for the last
   size, which is not swept, the previous size's choice).
3. ``bigspec chol 1/2`` and ``1/4`` (and ``bigspec ldl``, at the ``--ldl-sizes``): the same
   with a memory budget of 1/2 and 1/4 of the matrix bytes n*n*8 (out of core, in
   super-panels; the factor goes to ``<store>/factor``, removed before every run so nothing
   is served from a checkpoint). If the tile size does not fit the budget, the largest
   smaller tile of the sweep that fits (by ``dry_run``) is used. At the first size, two more
   1/4 rows: ``tile tasks`` (``bigspec.task-granularity: tile``, one tile kernel per task,
   the graph before spans of earlier columns) and ``2-proc cluster`` (a ``LocalCluster`` of
   2 worker processes x 1 thread, started before the timing; RSS summed over the processes).
4. ``bigspec ldl mem`` at the ``--ldl-sizes`` (default every size), compared with raw
   ``scipy.linalg.lapack.dsytrf`` with the optimal workspace (``dsytrf_lwork``, what
   ``scipy.linalg.ldl`` uses) and with scipy's default ``lwork=n``, which makes LAPACK fall
   back to the unblocked algorithm.
5. ``dask cholesky``: ``dask.array.linalg.cholesky`` of ``da.from_zarr`` (chunks = tile size,
   or the divisor of n nearest to it, since dask needs equal square chunks) with the
   threaded scheduler, logdet from the diagonal of L.
6. ``memdet``: ``detkit.memdet(assume='spd')`` on the full Zarr array, with 1 block (in
   memory) and with ``max_mem`` = 1/2 and 1/4 of the matrix bytes (scratch in the work
   directory); and ``assume='sym'`` (its LDL^T) at 1/4 at the ``--ldl-sizes``. detkit is a benchmark-only dependency (``pip install detkit``); if it is
   missing or fails, the rows say so.

GFLOP/s is n**3/3 / seconds for every row (LDL^T included). Each configuration runs in a
fresh subprocess (``python bench/logdet_exact.py --one SPEC``) which loads or opens its
input, warms up BLAS/dask on a 2-tile problem at the run's tile size (BLAS's buffers in every
worker process are touched before), records its RSS (``rss0``), resets the kernel's
RSS high-water mark (``/proc/self/clear_refs``), and runs the computation while also sampling
RSS every 10 ms; ``other`` is the CPU (in cores) that other processes used meanwhile, and
before each run the parent waits (up to ``--quiet-wait`` s) for the machine to be quiet.
``peak`` is the absolute peak RSS during the computation; ``ws`` (working
set) = peak - rss0. Budgeted rows are checked against ``ws <= 1.25 * budget`` (the budget
is the factorization's working set; Python + numpy + dask + zarr alone take ~150-250 MB,
shown by ``abs<=1.25B``). Budgeted bigspec and memdet runs never hold the numpy matrix:
they read it from disk (the files are usually in the page cache, which is not RSS). The
LAPACK rows hold the input in RAM before ``rss0``, so their ``ws`` is only the extra memory.
BLAS threads are left at the library default. Timings are reported, never asserted; they
vary from run to run on a shared machine (``--repeat N`` reports the best of N runs; when
every run of a configuration was disturbed by other processes, one more is made).

How to run
----------
::

    pip install detkit                       # optional, for the memdet rows
    python bench/logdet_exact.py             # n = 8192, 15000 (+ tile sweep), 20000: 15-30 min
    python bench/logdet_exact.py --quick     # small smoke version (about a minute)
    python bench/logdet_exact.py --sizes 4096,8192 --tiles 512,1024 --repeat 3

The issue's targets are checked on the rows of the run and printed as notes (``targets
n=...``: met / NOT met with the figures). The table is printed at the end and written, with the machine and package versions, to
``bench/results/logdet_exact.json``. The work directory is removed at the end (``--keep``
keeps it).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import machine_load  # noqa: E402  (bench/, this script's directory)
from machine_load import cpu_busy_seconds  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "logdet_exact.json"
if (HERE.parent / "bigspec" / "__init__.py").exists():
    # benchmark this checkout's bigspec, whatever is (or is being) pip-installed meanwhile
    sys.path.insert(0, str(HERE.parent))

LENGTHSCALE = 0.1
RIDGE = 1e-3
DIM = 3
SEED = 20240601
LAPACK_BLOCK_LIMIT = 2**31          # threaded OpenBLAS potrf segfaults on blocks this large
GB = 1e9


# =========================================================================== test matrix
def points(n: int) -> np.ndarray:
    """n uniform points in the unit cube (fixed seed per n)."""
    return np.random.default_rng(SEED + n).uniform(size=(n, DIM))


def matern32_rows(X: np.ndarray, i0: int, i1: int, lengthscale=LENGTHSCALE, ridge=RIDGE) -> np.ndarray:
    """Rows i0:i1 of K = matern32(X, X) + ridge * I (exactly symmetric across blocks)."""
    from scipy.spatial.distance import cdist

    r = cdist(X[i0:i1], X)
    r *= math.sqrt(3.0) / lengthscale
    e = np.exp(-r)
    r += 1.0
    r *= e
    del e
    r[np.arange(i1 - i0), np.arange(i0, i1)] += ridge
    return r


def write_full_matrix(n: int, path: str, chunk: int) -> None:
    """Write the n x n test matrix to an uncompressed Zarr array, one row strip at a time."""
    import zarr

    z = zarr.create_array(path, shape=(n, n), chunks=(chunk, chunk), dtype="float64",
                          compressors=None, fill_value=0.0, overwrite=True)
    X = points(n)
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        z[i0:i1, :] = matern32_rows(X, i0, i1)


# =========================================================================== memory probes
_PAGE = os.sysconf("SC_PAGE_SIZE")


_CHILDREN: list = []   # a LocalCluster started by the child: its worker processes' RSS counts too


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        own = int(f.read().split()[1]) * _PAGE
    if not _CHILDREN:
        return own
    import psutil

    total = own
    for c in psutil.Process().children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return total


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def own_cpu_seconds() -> float:
    """CPU seconds of this process and, with a LocalCluster of its own, of its worker processes."""
    return machine_load.own_cpu_seconds(children=bool(_CHILDREN))


def wait_for_quiet(max_wait: float, threshold: float = 0.25, probe: float = 1.0) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores.

    Returns (seconds waited, cores busy in the last probe).
    """
    return machine_load.wait_for_quiet(max_wait, threshold, probe, pause=2.0, children=bool(_CHILDREN))


class Sampler(threading.Thread):
    """Samples this process's RSS every ``dt`` seconds; ``.peak`` is the largest seen."""

    def __init__(self, dt=0.01):
        super().__init__(daemon=True)
        self.dt, self.peak, self._halt = dt, rss_now(), threading.Event()

    def run(self):
        while not self._halt.wait(self.dt):
            self.peak = max(self.peak, rss_now())

    def stop(self):
        self._halt.set()
        self.join()
        self.peak = max(self.peak, rss_now())


# =========================================================================== child side
def _load_full(path: str) -> np.ndarray:
    import zarr

    return zarr.open_array(path, mode="r")[...]


def _warm_blas():
    from scipy.linalg import lapack

    M = np.eye(256) * 2.0
    lapack.dpotrf(M)
    M @ M


def _sytrf_logdet(ldu: np.ndarray, ipiv: np.ndarray) -> tuple[int, float]:
    """sign, log|det| from dsytrf(lower) output: 1x1 and 2x2 blocks of D."""
    n = ldu.shape[0]
    logs, sign, k = [], 1, 0
    while k < n:
        if ipiv[k] > 0:
            d = ldu[k, k]
            k += 1
        else:
            d = ldu[k, k] * ldu[k + 1, k + 1] - ldu[k + 1, k] ** 2
            k += 2
        sign *= 1 if d > 0 else -1
        logs.append(math.log(abs(d)))
    return sign, math.fsum(logs)


def setup_child(spec: dict):
    """Load / open the input and return ``compute() -> dict`` (runs after rss0 is taken)."""
    kind, n = spec["kind"], spec["n"]
    _warm_blas()
    if kind == "potrf":
        from scipy.linalg import lapack

        A = _load_full(spec["full"])

        def compute():
            c, info = lapack.dpotrf(A.T, lower=1, overwrite_a=1, clean=0)   # A.T: F-ordered, = A
            if info != 0:
                raise RuntimeError(f"dpotrf info={info}")
            return {"sign": 1, "logdet": 2.0 * math.fsum(np.log(np.diagonal(c)))}
        return compute

    if kind == "potrf2x2":
        from scipy.linalg import blas, lapack

        A = _load_full(spec["full"])
        h = n // 2
        A11, A21, A22 = (np.asfortranarray(A[:h, :h]), np.asfortranarray(A[h:, :h]),
                         np.asfortranarray(A[h:, h:]))
        del A

        def compute():
            c11, info1 = lapack.dpotrf(A11, lower=1, overwrite_a=1, clean=0)
            L21 = blas.dtrsm(1.0, c11, A21, side=1, lower=1, trans_a=1, overwrite_b=1)
            S = blas.dsyrk(-1.0, L21, beta=1.0, c=A22, lower=1, overwrite_c=1)
            c22, info2 = lapack.dpotrf(S, lower=1, overwrite_a=1, clean=0)
            if info1 or info2:
                raise RuntimeError(f"dpotrf info={info1}, {info2}")
            return {"sign": 1, "logdet": 2.0 * (math.fsum(np.log(np.diagonal(c11)))
                                                 + math.fsum(np.log(np.diagonal(c22))))}
        return compute

    if kind == "sytrf":
        from scipy.linalg import lapack

        A = _load_full(spec["full"])
        kw = {}
        if spec.get("lwork") == "opt":
            kw["lwork"] = int(lapack.dsytrf_lwork(n, lower=1)[0])

        def compute():
            ldu, ipiv, info = lapack.dsytrf(A.T, lower=1, overwrite_a=1, **kw)
            if info < 0:
                raise RuntimeError(f"dsytrf info={info}")
            sign, ld = _sytrf_logdet(ldu, ipiv)
            return {"sign": sign, "logdet": ld, "lwork": kw.get("lwork", max(n, 1)),
                    "two_by_two_blocks": int((ipiv < 0).sum() // 2)}
        return compute

    if kind == "bigspec":
        import dask

        import bigspec
        import bigspec.determinant.exact  # noqa: F401  (heavy modules load here, not in the timing)

        if spec.get("granularity"):
            dask.config.set({"bigspec.task-granularity": spec["granularity"]})
        client = None
        if spec.get("workers"):   # a LocalCluster of worker processes, started before the timing
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=int(spec["workers"]), threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
            _CHILDREN.append(cluster)
        # warm-up at the run's tile size: BLAS's buffers (in every worker process) are touched before rss0
        t = int(spec.get("tile") or 32)
        bigspec.logdet(np.eye(2 * t) * 2.0, method=spec["method"], tile_size=t, progress=False, client=client)
        ms = bigspec.open_matrix(spec["store"])

        def compute():
            r = bigspec.logdet(ms, method=spec["method"], memory=int(spec["memory"]), client=client,
                               checkpoint=spec.get("checkpoint"), progress=False)
            return {"sign": int(r.sign), "logdet": float(r.logabsdet), "super_panels": r.super_panels,
                    "tasks": r.tasks, "bigspec_seconds": r.seconds,
                    "peak_memory_estimate": r.peak_memory_estimate, "memory_budget": r.memory_budget,
                    "bytes_read": r.bytes_read, "bytes_written": r.bytes_written,
                    "max_abs_L": r.max_abs_L, "cached": bool(r.cached)}
        return compute

    if kind == "dask":
        import dask
        import dask.array as da

        small = da.from_array(np.eye(256) * 2.0, chunks=64)
        float(da.log(da.diagonal(da.linalg.cholesky(small, lower=True))).sum().compute(scheduler="threads"))
        b = spec["tile"]

        def compute():
            a = da.from_zarr(spec["full"], chunks=(b, b))
            if n % b:   # dask's cholesky needs equal square chunks: pad with I (same logdet)
                m = -(-n // b) * b
                a = da.block([[a, da.zeros((n, m - n), chunks=b)],
                              [da.zeros((m - n, n), chunks=b), da.eye(m - n, chunks=b)]]).rechunk((b, b))
            L = da.linalg.cholesky(a, lower=True)
            with dask.config.set(scheduler="threads"):
                ld = 2.0 * float(da.log(da.diagonal(L)).sum().compute())
            return {"sign": 1, "logdet": ld}
        return compute

    if kind == "memdet":
        import detkit
        import zarr

        assume = spec.get("assume", "spd")
        detkit.memdet(np.eye(256) * 2.0, assume=assume)
        z = zarr.open_array(spec["full"], mode="r")
        kw = {"num_blocks": 1} if spec.get("max_mem") is None else {"max_mem": int(spec["max_mem"])}

        def compute():
            ld, sign, _diag, _perm, info = detkit.memdet(z, assume=assume, scratch_dir=spec["scratch"],
                                                         return_info=True, **kw)
            return {"sign": int(sign), "logdet": float(ld), "num_blocks": info["block"]["matrix_blocks"][0],
                    "block_nbytes": int(info["block"]["block_nbytes"]),
                    "scratch_nbytes": int(info["scratch"]["scratch_nbytes"]),
                    "detkit_version": detkit.__version__}
        return compute

    raise ValueError(f"unknown kind {kind!r}")


def child_main(spec: dict) -> int:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))    # a segfault must not dump GBs of core
    out = {"spec": spec}
    try:
        compute = setup_child(spec)
        gc.collect()
        rss0 = rss_now()
        reset_ok = reset_hwm()
        sampler = Sampler()
        sampler.start()
        busy0, own0 = cpu_busy_seconds(), own_cpu_seconds()
        t0 = time.perf_counter()
        try:
            res = compute()
        finally:
            seconds = time.perf_counter() - t0
            busy1, own1 = cpu_busy_seconds(), own_cpu_seconds()
            sampler.stop()
        out["own_cpu_seconds"] = own1 - own0
        # CPU used by other processes on the machine while this one computed, in cores
        out["other_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(seconds, 1e-9)
        peak = max(sampler.peak, hwm() if reset_ok and not _CHILDREN else 0)
        out.update(res)
        out.update({"status": "ok", "seconds": seconds, "rss0": rss0, "peak_rss": peak,
                    "working_set": peak - rss0, "hwm_reset": reset_ok,
                    "ru_maxrss_lifetime": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
    except Exception as e:  # noqa: BLE001  (reported in the table)
        import traceback

        out.update({"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}",
                    "traceback": traceback.format_exc()})
    with open(spec["out"], "w") as f:
        json.dump(out, f)
    return 0


# =========================================================================== parent side
def _terminate(signum, frame):   # kill -TERM: stop the running child, print what was measured
    raise KeyboardInterrupt(f"signal {signum}")


def run_child(spec: dict, timeout: float, tmpdir: str) -> dict:
    fd, path = tempfile.mkstemp(suffix=".json", dir=tmpdir)
    os.close(fd)
    os.unlink(path)
    spec = dict(spec, out=path)
    signal.signal(signal.SIGTERM, _terminate)   # imported libraries may have replaced it
    cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s"}
    if p.returncode < 0:
        try:
            name = signal.Signals(-p.returncode).name
        except ValueError:
            name = str(-p.returncode)
        return {"status": f"crashed ({name})", "stderr_tail": p.stderr[-2000:]}
    if not os.path.exists(path):
        return {"status": f"failed: exit {p.returncode}", "stderr_tail": p.stderr[-2000:]}
    with open(path) as f:
        out = json.load(f)
    os.unlink(path)
    out.pop("spec", None)
    if p.returncode:
        out.setdefault("status", f"failed: exit {p.returncode}")
    if out.get("status") != "ok":
        out["stderr_tail"] = p.stderr[-2000:]
    return out


def dask_chunk(n: int, b: int) -> int:
    """The divisor of n nearest to b within [b/2, 2b] (dask's cholesky wants equal chunks), else b."""
    divisors = [d for d in range(max(1, b // 2), 2 * b + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - b), d)) if divisors else b


def fmt_bytes(x) -> str:
    if x is None:
        return "-"
    x = float(x)
    for unit, s in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if abs(x) >= s:
            return f"{x / s:.2f}{unit}" if unit == "G" else f"{x / s:.0f}{unit}"
    return f"{x:.0f}B"


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir)
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.ref_rate: dict[int, float] = {}     # n -> dpotrf GFLOP/s (measured)
        self.ref_logdet: dict[int, tuple] = {}   # n -> (logdet, source)
        self.t_start = time.perf_counter()
        self.meta = machine_info()
        self.meta.update({"argv": sys.argv[1:], "matrix": {
            "kernel": "matern-3/2", "dim": DIM, "lengthscale": LENGTHSCALE, "ridge": RIDGE,
            "points": "uniform in [0,1]^3", "seed": f"{SEED} + n", "dtype": "float64"}})

    # ------------------------------------------------------------ data
    def full_path(self, n):
        return str(self.work / f"full_{n}.zarr")

    def store_path(self, n, b):
        return str(self.work / f"store_{n}_b{b}.zarr")

    def ensure_full(self, n):
        if not os.path.exists(self.full_path(n)):
            t = time.perf_counter()
            write_full_matrix(n, self.full_path(n), self.args.chunk)
            self.log(f"  generated the {n} x {n} Matérn matrix ({n * n * 8 / GB:.2f} GB) "
                     f"in {time.perf_counter() - t:.1f} s")

    def ensure_store(self, n, b):
        import bigspec
        import zarr

        path = self.store_path(n, b)
        if not os.path.exists(path):
            t = time.perf_counter()
            bigspec.from_array(zarr.open_array(self.full_path(n), mode="r"), path, tile_size=b, overwrite=True)
            self.log(f"  wrote bigspec store n={n} tile_size={b} in {time.perf_counter() - t:.1f} s")
        shutil.rmtree(os.path.join(path, "factor"), ignore_errors=True)   # never resume / reuse
        return path

    def fits(self, n, b, budget, workers=None) -> bool:
        """Whether tile ``b`` fits ``budget`` on this process (or on ``workers`` 1-thread worker processes)."""
        import bigspec

        try:
            if workers:
                bigspec.plan_logdet(n=n, tile_size=b, method="cholesky", memory=int(budget), workers=workers,
                                    threads=workers)
            else:
                bigspec.logdet(self.ensure_store(n, b), method="cholesky", memory=int(budget),
                               checkpoint=False, dry_run=True)
            return True
        except bigspec.MemoryBudgetError:
            return False

    # ------------------------------------------------------------ running
    def log(self, msg):
        print(msg, flush=True)

    def run(self, n, config, spec, *, tile=None, budget=None, note=""):
        spec = dict(spec, n=n)
        if tile and "tile" not in spec:
            spec["tile"] = tile
        t = time.perf_counter()
        outs = []
        for _ in range(self.args.repeat):
            waited, busy = wait_for_quiet(self.args.quiet_wait)
            if busy >= 0.25:
                self.log(f"  (machine busy: other processes use {busy:.2f} cores after waiting {waited:.0f} s)")
            if spec["kind"] == "bigspec":
                shutil.rmtree(os.path.join(spec["store"], "factor"), ignore_errors=True)
            outs.append(run_child(spec, self.args.timeout, str(self.work)))
            if outs[-1].get("status") != "ok":
                break
        good = [o for o in outs if o.get("status") == "ok"]
        if good and min(o.get("other_cores", 0.0) for o in good) > 0.1:
            self.log("  (every run was disturbed by other processes: one more run)")
            wait_for_quiet(self.args.quiet_wait)
            if spec["kind"] == "bigspec":
                shutil.rmtree(os.path.join(spec["store"], "factor"), ignore_errors=True)
            extra = run_child(spec, self.args.timeout, str(self.work))
            outs.append(extra)
            if extra.get("status") == "ok":
                good.append(extra)
        out = min(good, key=lambda o: o["seconds"]) if good else outs[-1]
        if len(good) > 1:   # best time; the largest peak of all repeats
            out = dict(out, seconds_all=[o["seconds"] for o in good],
                       peak_rss=max(o["peak_rss"] for o in good),
                       working_set=max(o["working_set"] for o in good))
        row = {"n": n, "config": config, "tile": tile, "budget": budget, "note": note, **out,
               "wall_seconds_child": time.perf_counter() - t}
        if out.get("status") == "ok":
            row["gflops"] = n ** 3 / 3.0 / out["seconds"] / 1e9
        self.rows.append(row)
        self.log(f"  {config:<30s} {self._brief(row)}")
        self.save()
        return row

    @staticmethod
    def _brief(row):
        if row.get("status") != "ok":
            return row.get("status", "?")
        s = f"{row['seconds']:8.2f} s {row['gflops']:6.1f} GFLOP/s  peak {fmt_bytes(row['peak_rss'])} " \
            f"ws {fmt_bytes(row['working_set'])}  logdet {row['logdet']:.10g}"
        if row.get("super_panels"):
            s += f"  panels {row['super_panels']}"
        return s

    def size(self, n, idx, sizes):
        args = self.args
        nbytes = n * n * 8
        big = nbytes >= LAPACK_BLOCK_LIMIT
        self.log(f"\n=== n = {n} ({nbytes / GB:.2f} GB){' -- one LAPACK block >= 2^31 bytes' if big else ''}")
        self.ensure_full(n)
        full = self.full_path(n)
        huge = 4 * nbytes + 2**30

        # 1. in-core LAPACK reference
        r = self.run(n, "lapack dpotrf", {"kind": "potrf", "full": full},
                     note="one block >= 2^31 B: reported to crash; a crash only ends its subprocess" if big else "")
        if r.get("status") == "ok":
            self.ref_rate[n] = r["gflops"]
            self.ref_logdet[n] = (r["logdet"], "dpotrf")
        if big or r.get("status") != "ok":
            r2 = self.run(n, "lapack 2x2-block potrf", {"kind": "potrf2x2", "full": full},
                          note="potrf/trsm/syrk/potrf on n/2 blocks")
            if n not in self.ref_logdet and r2.get("status") == "ok":
                self.ref_logdet[n] = (r2["logdet"], "2x2-block LAPACK")

        # 2. bigspec in memory, tile sweep
        sweep = idx < len(sizes) - 1 or len(sizes) == 1
        tiles = args.tiles if sweep else [self.best_tile or args.tiles[0]]
        times = {}
        for b in tiles:
            if b > n:
                continue
            r = self.run(n, f"bigspec chol mem b={b}",
                         {"kind": "bigspec", "method": "cholesky", "store": self.ensure_store(n, b),
                          "memory": huge, "checkpoint": False}, tile=b)
            if r.get("status") == "ok":
                times[b] = r["seconds"]
        if times:
            best = min(times, key=times.get)
            if sweep:
                self.best_tile = best
                self.notes.append(f"n={n}: tile sweep {', '.join(f'{b}: {s:.2f} s' for b, s in times.items())}"
                                  f" -> tile_size {best} used for the other bigspec/dask rows at this n")
        b = self.best_tile or args.tiles[0]
        if not sweep:
            self.notes.append(f"n={n}: not swept; tile_size {b} (best of the previous size)")

        # 3. bigspec with budgets (Cholesky; LDL^T below)
        for label, frac in (("1/2", 0.5), ("1/4", 0.25)):
            budget = int(nbytes * frac)
            bb = b
            candidates = [b] + sorted((t for t in args.tiles if t < b), reverse=True)
            for t in candidates:
                if self.fits(n, t, budget):
                    bb = t
                    break
            else:
                bb = None
            if bb is None:
                self.rows.append({"n": n, "config": f"bigspec chol {label}", "tile": b, "budget": budget,
                                  "status": "skipped: MemoryBudgetError for every tile size"})
                continue
            for method in ("cholesky", "ldl") if n in args.ldl_sizes else ("cholesky",):
                self.run(n, f"bigspec {'chol' if method == 'cholesky' else 'ldl'} {label} b={bb}",
                         {"kind": "bigspec", "method": method, "store": self.ensure_store(n, bb),
                          "memory": budget, "checkpoint": True}, tile=bb, budget=budget,
                         note="" if bb == b else f"tile {b} does not fit the budget")
            if frac == 0.25 and n == sizes[0]:
                # one-tile-per-task graphs (bigspec.task-granularity: tile), and a 2-process LocalCluster
                self.run(n, f"bigspec chol {label} b={bb} tile tasks",
                         {"kind": "bigspec", "method": "cholesky", "store": self.ensure_store(n, bb),
                          "memory": budget, "checkpoint": True, "granularity": "tile"}, tile=bb, budget=budget,
                         note="one tile kernel per task")
                # a cluster's plan counts the copies its tasks make and move: the largest tile that fits it
                bc = next((t for t in sorted({bb, *args.tiles, bb // 2, bb * 4 // 5}, reverse=True)
                           if t <= bb and self.fits(n, t, budget, workers=2)), None)
                if bc is None:
                    self.rows.append({"n": n, "config": f"bigspec chol {label} 2-proc cluster", "tile": bb,
                                      "budget": budget, "status": "skipped: MemoryBudgetError for every tile size"})
                else:
                    self.run(n, f"bigspec chol {label} b={bc} 2-proc cluster",
                             {"kind": "bigspec", "method": "cholesky", "store": self.ensure_store(n, bc),
                              "memory": budget, "checkpoint": True, "workers": 2}, tile=bc, budget=budget,
                             note="LocalCluster: 2 worker processes x 1 thread; RSS summed over the processes"
                                  + ("" if bc == bb else f"; tile {bb} does not fit a 2-worker plan"))

        # 4. LDL^T vs dsytrf
        if n in args.ldl_sizes:
            self.run(n, f"bigspec ldl mem b={b}",
                     {"kind": "bigspec", "method": "ldl", "store": self.ensure_store(n, b),
                      "memory": huge, "checkpoint": False}, tile=b)
            self.run(n, "lapack dsytrf (opt lwork)", {"kind": "sytrf", "full": full, "lwork": "opt"})
            if not args.skip_default_lwork:
                self.run(n, "lapack dsytrf (lwork=n)", {"kind": "sytrf", "full": full, "lwork": "default"},
                         note="scipy's default lwork: unblocked dsytf2")

        # 5. dask
        c = dask_chunk(n, b)
        self.run(n, f"dask cholesky b={c}", {"kind": "dask", "full": full, "tile": c}, tile=c,
                 note="" if c == b else f"chunks {c}: a divisor of n near {b}" if n % c == 0 else
                 "padded with I to a multiple of the chunk")

        # 6. detkit memdet
        try:
            import detkit  # noqa: F401
            have_detkit = True
        except ImportError:
            have_detkit = False
        for label, frac, assume in (("1 block", None, "spd"), ("1/2", 0.5, "spd"), ("1/4", 0.25, "spd"),
                                    ("sym 1/4", 0.25, "sym")):
            if assume == "sym" and n not in args.ldl_sizes:
                continue
            cfg = f"memdet {label}"
            budget = None if frac is None else int(nbytes * frac)
            if not have_detkit:
                self.rows.append({"n": n, "config": cfg, "budget": budget,
                                  "status": "skipped: detkit not installed (pip install detkit)"})
                continue
            scratch = self.work / "scratch"
            scratch.mkdir(exist_ok=True)
            self.run(n, cfg, {"kind": "memdet", "full": full, "max_mem": budget, "scratch": str(scratch),
                              "assume": assume},
                     budget=budget,
                     note="one LAPACK block >= 2^31 B" if frac is None and big else "")
            shutil.rmtree(scratch, ignore_errors=True)

        if not args.keep:
            shutil.rmtree(full, ignore_errors=True)
            for b in set(args.tiles) | {self.best_tile or args.tiles[0]}:
                shutil.rmtree(self.store_path(n, b), ignore_errors=True)

    best_tile = None

    # ------------------------------------------------------------ results
    def finish_rows(self):
        sizes = sorted({r["n"] for r in self.rows})
        for n in sizes:
            rate, borrowed = self.ref_rate.get(n), False
            if rate is None:
                smaller = [m for m in self.ref_rate if m < n]
                if smaller:
                    m = max(smaller)
                    rate, borrowed = self.ref_rate[m], True
                    self.notes.append(f"n={n}: in-core dpotrf did not run to completion; ratio (marked *) "
                                      f"uses the n={m} dpotrf rate {rate:.1f} GFLOP/s")
            ref = self.ref_logdet.get(n)
            if ref and ref[1] != "dpotrf":
                self.notes.append(f"n={n}: logdet reference = {ref[1]} ({ref[0]:.12g})")
            sytrf = next((r for r in self.rows if r["n"] == n and r["config"].startswith("lapack dsytrf (opt")
                          and r.get("status") == "ok"), None)
            for r in (r for r in self.rows if r["n"] == n):
                if r.get("status") != "ok":
                    continue
                if rate:
                    r["ratio"] = r["gflops"] / rate
                    r["ratio_ref"] = "borrowed" if borrowed else "same n"
                if ref:
                    r["rel_diff"] = abs(r["logdet"] - ref[0]) / abs(ref[0])
                if r.get("budget"):
                    r["ws_within_1_25_budget"] = bool(r["working_set"] <= 1.25 * r["budget"])
                    r["abs_within_1_25_budget"] = bool(r["peak_rss"] <= 1.25 * r["budget"])
                if r["config"].startswith("bigspec ldl") and sytrf:
                    r["vs_dsytrf"] = sytrf["seconds"] / r["seconds"]
                if r["config"].startswith("bigspec ldl mem") and sytrf:
                    self.notes.append(
                        f"n={n}: bigspec LDL^T {r['seconds']:.2f} s vs dsytrf (optimal lwork) "
                        f"{sytrf['seconds']:.2f} s -> {r['vs_dsytrf']:.2f}x of dsytrf speed "
                        f"(target >= 0.85x: {'met' if r['vs_dsytrf'] >= 0.85 else 'NOT met'})")
                    slow = next((q for q in self.rows if q["n"] == n and q["config"] == "lapack dsytrf (lwork=n)"
                                 and q.get("status") == "ok"), None)
                    if slow:
                        self.notes.append(
                            f"n={n}: vs dsytrf with scipy's default lwork=n (unblocked) {slow['seconds']:.2f} s "
                            f"-> {slow['seconds'] / r['seconds']:.2f}x")

    def targets(self) -> list[str]:
        """The issue's targets, each checked on this run's rows (met / NOT met, with the figures)."""
        out = []

        def row(n, prefix):
            return next((r for r in self.rows if r["n"] == n and r["config"].startswith(prefix)
                         and not r["config"].endswith(("tile tasks", "cluster")) and r.get("status") == "ok"), None)

        for n in sorted({r["n"] for r in self.rows}):
            checks = []
            for label, lo in (("mem", 0.9), ("1/4", 0.8)):
                r = row(n, f"bigspec chol {label}")
                if r and "ratio" in r:
                    checks.append(f"chol {label} {r['ratio']:.2f}x in-core (>= {lo}: {'met' if r['ratio'] >= lo else 'NOT met'})")
            for mine, theirs in (("bigspec chol mem", "memdet 1 block"), ("bigspec chol 1/2", "memdet 1/2"),
                                 ("bigspec chol 1/4", "memdet 1/4"), ("bigspec ldl 1/4", "memdet sym 1/4")):
                a, m = row(n, mine), row(n, theirs)
                if a and m:
                    x = m["seconds"] / a["seconds"]
                    checks.append(f"{mine[8:]} vs {theirs} {x:.2f}x ({'faster' if x > 1 else 'NOT faster'})")
            r = row(n, "bigspec ldl mem")
            if r and "vs_dsytrf" in r:
                checks.append(f"ldl mem {r['vs_dsytrf']:.2f}x dsytrf (>= 0.85: {'met' if r['vs_dsytrf'] >= 0.85 else 'NOT met'})")
            over = [r["config"] for r in self.rows if r["n"] == n and r["config"].startswith("bigspec")
                    and r.get("ws_within_1_25_budget") is False]
            checks.append("peak RSS within budget + 25%: " + ("all bigspec rows" if not over else "NOT for " + ", ".join(over)))
            out.append(f"n={n}: " + "; ".join(checks))
        return out

    def table(self) -> str:
        head = ["n", "config", "budget", "sec", "GFLOP/s", "ratio", "peak RSS", "ws", "ws<=1.25B",
                "abs<=1.25B", "panels", "rel.diff", "other", "status / note"]
        lines = []
        for r in self.rows:
            ok = r.get("status") == "ok"
            yn = lambda k: ("yes" if r[k] else "NO") if k in r else "-"  # noqa: E731
            ratio = "-"
            if "ratio" in r:
                ratio = f"{r['ratio']:.2f}" + ("*" if r.get("ratio_ref") == "borrowed" else "")
            note = r.get("note", "")
            if "vs_dsytrf" in r:
                note = (note + "; " if note else "") + f"{r['vs_dsytrf']:.2f}x dsytrf(opt)"
            if r["config"].startswith("memdet") and ok and r.get("num_blocks"):
                note = (note + "; " if note else "") + f"{r['num_blocks']}x{r['num_blocks']} blocks"
            status = "ok" if ok else r.get("status", "?")
            lines.append([
                str(r["n"]), r["config"], fmt_bytes(r.get("budget")) if r.get("budget") else "-",
                f"{r['seconds']:.2f}" if ok else "-", f"{r['gflops']:.1f}" if ok else "-", ratio,
                fmt_bytes(r.get("peak_rss")) if ok else "-", fmt_bytes(r.get("working_set")) if ok else "-",
                yn("ws_within_1_25_budget"), yn("abs_within_1_25_budget"),
                str(r["super_panels"]) if ok and r.get("super_panels") else "-",
                f"{r['rel_diff']:.1e}" if "rel_diff" in r else "-",
                f"{r['other_cores']:.2f}" if ok and "other_cores" in r else "-",
                status + (f" ({note})" if note else ""),
            ])
        widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
        right = {0, 2, 3, 4, 5, 6, 7, 10, 11, 12}

        def fmt(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        out = [fmt(head), fmt(["-" * w for w in widths])]
        prev = None
        for r, l in zip(self.rows, lines):
            if prev is not None and r["n"] != prev:
                out.append("")
            prev = r["n"]
            out.append(fmt(l))
        return "\n".join(out)

    @property
    def results_path(self):
        """``--quick`` smoke runs never replace the full run's results."""
        return RESULTS.with_name("logdet_exact-quick.json") if self.args.quick else RESULTS

    def save(self, table=None):
        path = self.results_path
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"meta": dict(self.meta, total_seconds=time.perf_counter() - self.t_start),
                "rows": self.rows, "notes": self.notes, "table": table}
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=_json_default)
        os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def machine_info() -> dict:
    import dask
    import scipy
    import zarr

    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "scipy": scipy.__version__, "dask": dask.__version__,
            "zarr": zarr.__version__}
    try:
        import psutil

        info["ram_bytes"] = psutil.virtual_memory().total
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    try:
        import bigspec

        info["bigspec"] = bigspec.__version__
        info["bigspec_path"] = str(Path(bigspec.__file__).resolve().parent)
        root = Path(bigspec.__file__).resolve().parent.parent
        info["bigspec_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "bigspec"],
                               capture_output=True, text=True).stdout.strip()
        info["bigspec_worktree_dirty"] = bool(dirty)
    except Exception:  # noqa: BLE001
        pass
    try:
        import detkit

        info["detkit"] = detkit.__version__
    except ImportError:
        info["detkit"] = None
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for d in threadpool_info()]
    except ImportError:
        pass
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke version (n = 1024, 2048, 3072)")
    p.add_argument("--sizes", help="comma-separated n (default 8192,15000,20000); all but the last are "
                                   "tile-swept")
    p.add_argument("--tiles", help="tile sizes of the in-memory sweep (default 512,1024,2048)")
    p.add_argument("--ldl-sizes", help="comma-separated n of the LDL^T rows (bigspec at every budget, dsytrf, "
                                       "memdet assume='sym'; default: every size)")
    p.add_argument("--skip-default-lwork", action="store_true",
                   help="skip dsytrf with scipy's default lwork=n (unblocked, slow)")
    p.add_argument("--workdir", default="/tmp/bigspec-bench")
    p.add_argument("--timeout", type=float, default=2400.0, help="seconds per configuration")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per configuration, each in a fresh subprocess; the best time is reported "
                        "with the largest peak RSS of all runs (default 1)")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for other processes to use "
                        "< 0.25 cores (default 120)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        return child_main(json.loads(args.one))

    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [1024, 2048, 3072] if args.quick else [8192, 15000, 20000]
    if args.tiles:
        args.tiles = [int(s) for s in args.tiles.split(",")]
    else:
        args.tiles = [256, 512] if args.quick else [512, 1024, 2048]
    args.chunk = 1024 if 1024 in args.tiles else args.tiles[0]
    args.ldl_sizes = [int(v) for v in args.ldl_sizes.split(",")] if args.ldl_sizes else list(sizes)

    signal.signal(signal.SIGTERM, _terminate)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    print(f"bigspec exact-logdet benchmark: sizes {sizes}, tiles {args.tiles}, work dir {work}", flush=True)
    try:
        for i, n in enumerate(sizes):
            bench.size(n, i, sizes)
    finally:
        bench.finish_rows()
        table = bench.table()
        total = time.perf_counter() - bench.t_start
        bench.meta["total_seconds"] = total
        print("\n" + table)
        targets = bench.targets()
        bench.notes.extend(f"targets {t}" for t in targets)
        print("\nNotes:")
        for note in bench.notes + [
                "ratio = GFLOP/s / in-core dpotrf GFLOP/s at the same n (n^3/3 flops for every row); "
                "rel.diff = |logdet - reference| / |reference|",
                "peak RSS = absolute peak during the computation; ws = peak - RSS just before it; "
                "ws<=1.25B checks ws against 1.25 x the memory budget, abs<=1.25B the absolute peak",
                "other = CPU cores used by other processes on the machine during the computation "
                "(from /proc/stat; > 0.1 means the timing was disturbed)",
                "bigspec and memdet read their input from local Zarr files (in the page cache here); "
                "the LAPACK rows time the factorization of a matrix already in RAM"]:
            print(f"  - {note}")
        print(f"\ntotal runtime: {total:.0f} s ({total / 60:.1f} min)")
        bench.save(table)
        print(f"results: {bench.results_path}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
