"""Exact log-determinant: left-looking super-panel LDL^T / Cholesky over a tiled store.

For each super-panel of W columns (science.md 1.3): read its tiles, apply the updates from
the L tiles of all earlier panels (streamed from ``factor/``), factor it in memory tile by
tile (right-looking inside the panel), write its L tiles and d once, and mark it done.
Each panel is one Dask graph; a killed run resumes after the last finished panel.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import time
import uuid
import warnings

import numpy as np
import zarr
from dask.utils import parse_bytes

from .. import config
from ..backend import check_device, return_freed_tiles_to_os, to_device, to_host
from ..cluster import current_client, resources
from ..form import kron_outputs
from ..errors import (
    GrowthWarning,
    InvalidMatrixError,
    NonFiniteError,
    SingularMatrixWarning,
    StoreExistsError,
    TileSizeError,
)
from ..progress import Progress, run_graph, want_progress
from ..results import LogdetResult
from ..store import MatrixStore, _as_matrix, check_dtype, check_tile_size, from_array, open_matrix
from . import tiles
from .plan import make_plan

logger = logging.getLogger(__name__)

from . import EXACT_METHODS as METHODS
FACTOR_SCHEMA = 1


# --------------------------------------------------------------------------- tasks
def read_tile(source, r0, r1, c0, c1, scale, shift, dtype, device, index):
    """Read ``scale * A[r0:r1, c0:c1] (+ diag(shift))`` as a fresh C-ordered tile."""
    T = np.array(source[r0:r1, c0:c1], dtype=dtype, order="C", copy=True)
    if not np.isfinite(T).all():
        raise NonFiniteError(
            f"tile {index} holds NaN or infinite values (rows {r0}:{r1}, cols {c0}:{c1}); an "
            f"unwritten tile reads as NaN: finish forming the store, or clean the input matrix",
            tile=tuple(index),
        )
    if scale != 1.0:
        T *= scale
    if shift is not None:
        T[np.diag_indices(r1 - r0)] += shift
    return to_device(T, device)


def update_rows(source, factor, rows, panel, earlier, bounds, scale, shift, dtype, device):
    """Read a row block of a super-panel and apply the left-looking updates of earlier columns.

    ``rows``: tile rows of this block; ``panel``: the panel's tile columns; ``earlier``:
    tile columns already factored. Streams one earlier tile column at a time from
    ``factor`` (L tiles and D), so the workspace is one column of the block plus the top.
    Returns the block's tiles (i, k), i >= k, in row-major order.
    """
    out = []
    for i in rows:
        for k in panel:
            if i >= k:
                d_shift = _shift_slice(shift, bounds, i) if i == k else None
                out.append(read_tile(source, *bounds[i], *bounds[k], scale, d_shift, dtype, device, (i, k)))
    if not earlier:
        return out
    r0, r1 = bounds[rows[0]][0], bounds[rows[-1]][1]
    t0, t1 = bounds[panel[0]][0], bounds[panel[-1]][1]
    L, D = factor["L"], factor.get("D")
    top_inside = r0 == t0 and r1 >= t1
    for j in earlier:
        c0, c1 = bounds[j]
        L_rows = to_device(np.ascontiguousarray(L[r0:r1, c0:c1], dtype=dtype), device)
        L_top = L_rows[: t1 - t0] if top_inside else \
            to_device(np.ascontiguousarray(L[t0:t1, c0:c1], dtype=dtype), device)
        LD_top = tiles.scale_by_D(L_top, None if D is None else np.asarray(D[:, c0:c1]))
        pos = 0
        for i in rows:
            a0, a1 = bounds[i][0] - r0, bounds[i][1] - r0
            for k in panel:
                if i >= k:
                    b0, b1 = bounds[k][0] - t0, bounds[k][1] - t0
                    out[pos] = tiles.update(out[pos], L_rows[a0:a1], LD_top[b0:b1], False, False)
                    pos += 1
    return out


def _shift_slice(shift, bounds, i):
    if shift is None:
        return None
    if np.ndim(shift) == 0:
        return float(shift)
    return np.asarray(shift[bounds[i][0]:bounds[i][1]])


def factor_task(T, method, tile, offset):
    return tiles.factor_diagonal(T, method, tile, offset)


def diagonal_info(F: tiles.DiagonalFactor):
    """The small part of a diagonal factor that goes back to the client."""
    return {"log_d": F.log_d, "sign_d": F.sign_d, "D": F.D, "perm": F.perm}


def diagonal_L(F: tiles.DiagonalFactor):
    return F.L


def solve_task(T, F):
    return tiles.solve_below(T, F)


def scaled_task(L, F):
    return tiles.scale_by_D(L, F.D)


def update_task(T, L_i, LD_j, diagonal, cholesky):
    return tiles.update(T, L_i, LD_j, diagonal, cholesky)


def write_L(L, array, r0, r1, c0, c1, diagonal):
    """Write one L tile into the factor store once; return max |L| off the diagonal."""
    host = to_host(L)
    array[r0:r1, c0:c1] = host
    return 0.0 if diagonal else float(np.max(np.abs(host), initial=0.0))


def max_abs(L, diagonal):
    return 0.0 if diagonal else float(np.max(np.abs(to_host(L)), initial=0.0))


def getitem(seq, i):
    return seq[i]


# --------------------------------------------------------------------------- graph
def panel_graph(plan, k0, k1, source, factor, scale, shift, dtype, device, write):
    """Task graph of one super-panel; returns (graph, output keys, diag-info keys)."""
    b, n, nt = plan.tile_size, plan.n, plan.n_tiles
    bounds = [(i * b, min((i + 1) * b, n)) for i in range(nt)]
    cholesky = plan.method == "cholesky"
    tok = uuid.uuid4().hex[:8]
    name = {s: f"bigspec-{s}-{tok}" for s in
            ("read", "update", "tile", "factor", "info", "solve", "scaled", "store")}
    dsk = {}
    panel = list(range(k0, k1))
    tile = {}
    if k0 == 0:
        for k in panel:
            for i in range(k, nt):
                key = (name["read"], i, k)
                d_shift = _shift_slice(shift, bounds, i) if i == k else None
                dsk[key] = (read_tile, source, *bounds[i], *bounds[k], scale, d_shift, dtype, device, (i, k))
                tile[i, k] = key
    else:
        chunks = plan.row_chunks(k0, k1)
        rows_all = list(range(k0, nt))
        step = -(-len(rows_all) // chunks)
        earlier = list(range(0, k0))
        for r, s in enumerate(range(0, len(rows_all), step)):
            rows = rows_all[s:s + step]
            ukey = (name["update"], r)
            dsk[ukey] = (update_rows, source, factor, rows, panel, earlier, bounds, scale,
                         shift, dtype, device)
            pos = 0
            for i in rows:
                for k in panel:
                    if i >= k:
                        key = (name["tile"], i, k, k0)
                        dsk[key] = (getitem, ukey, pos)
                        tile[i, k] = key
                        pos += 1
    outputs, infos = [], []
    L_array = factor["L"] if write else None
    for k in panel:
        fkey = (name["factor"], k)
        dsk[fkey] = (factor_task, tile[k, k], plan.method, (k, k), bounds[k][0])
        dsk[(name["info"], k)] = (diagonal_info, fkey)
        infos.append((name["info"], k))
        Lkeys = {k: (name["factor"] + "-L", k)}
        dsk[Lkeys[k]] = (diagonal_L, fkey)
        for i in range(k + 1, nt):
            skey = (name["solve"], i, k)
            dsk[skey] = (solve_task, tile[i, k], fkey)
            Lkeys[i] = skey
        for j in range(k + 1, k1):
            if cholesky:
                ld = Lkeys[j]
            else:
                ld = (name["scaled"], j, k)
                dsk[ld] = (scaled_task, Lkeys[j], fkey)
            for i in range(j, nt):
                key = (name["tile"], i, j, k + 1)
                dsk[key] = (update_task, tile[i, j], Lkeys[i], ld, i == j, cholesky)
                tile[i, j] = key
        for i in range(k, nt):
            okey = (name["store"], i, k)
            if write:
                dsk[okey] = (write_L, Lkeys[i], L_array, *bounds[i], *bounds[k], i == k)
            else:
                dsk[okey] = (max_abs, Lkeys[i], i == k)
            outputs.append(okey)
    return dsk, outputs, infos


# --------------------------------------------------------------------------- inputs
def _resolve_matrix(A, tile_size, storage_options):
    """Return (source, MatrixStore or None, n, dtype, tile_size, temp dir or None)."""
    if isinstance(A, (MatrixStore, zarr.Group)) or isinstance(A, str) or hasattr(A, "__fspath__"):
        ms = open_matrix(A, storage_options=storage_options)
        if not ms.symmetric:
            raise InvalidMatrixError(
                f"store {ms.url} holds a non-symmetric matrix; the exact logdet factors symmetric "
                f"matrices (LDL^T / Cholesky): store a symmetric one with bigspec.from_array(..., symmetric=True)"
            )
        check_dtype(ms.dtype)
        if tile_size is not None and int(tile_size) != ms.tile_size:
            raise TileSizeError(
                f"tile_size={tile_size} does not match the store's tiles ({ms.tile_size}); omit "
                f"tile_size to use the store's, or rewrite the store with bigspec.from_array(..., tile_size={tile_size})",
                tile_size=tile_size, store_tile_size=ms.tile_size,
            )
        ms.check_complete()
        return ms.view(), ms, ms.n, ms.dtype, ms.tile_size, None
    A, kind = _as_matrix(A)
    dtype = check_dtype(A.dtype)
    n = int(A.shape[0])
    b = check_tile_size(config.get("tile-size") if tile_size is None else tile_size, dtype)
    b = min(b, max(n, 1))
    if kind == "dask" or (kind == "numpy" and current_client() is not None):
        tmp = tempfile.mkdtemp(prefix="bigspec-matrix-")
        ms = from_array(A, f"{tmp}/matrix.zarr", tile_size=b, overwrite=True)
        return ms.view(), None, n, dtype, b, tmp
    if kind == "numpy" and not np.isfinite(A).all():
        bad = np.argwhere(~np.isfinite(A))[0]
        raise NonFiniteError(
            f"the matrix holds NaN or infinite values, first at row {bad[0]}, col {bad[1]}; "
            f"clean it before computing its log-determinant", tile=(int(bad[0]) // b, int(bad[1]) // b),
        )
    return A, None, n, dtype, b, None


def _check_scale_shift(scale, shift, n):
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}")
    if np.ndim(shift) == 0:
        shift = float(shift)
        if not math.isfinite(shift):
            raise ValueError(f"shift must be finite, got {shift}")
        return scale, (None if shift == 0.0 else shift)
    shift = np.asarray(shift, dtype=np.float64)
    if shift.shape != (n,):
        raise ValueError(
            f"shift must be a scalar or a vector of length n={n} (one value per diagonal entry), "
            f"got shape {shift.shape}"
        )
    if not np.isfinite(shift).all():
        raise ValueError("shift holds NaN or infinite values")
    return scale, shift


def _budget(memory, client, n_workers_memory):
    if memory is None:
        memory = config.get("memory", "auto")
    frac = float(config.get("memory-fraction", 0.5))
    if memory == "auto":
        if client is not None and n_workers_memory:
            return int(n_workers_memory * frac)
        import psutil

        return int(psutil.virtual_memory().available * frac)
    if isinstance(memory, str):
        try:
            return parse_bytes(memory)
        except ValueError as e:
            raise ValueError(f"memory={memory!r} is not a size; use e.g. '4GiB', '500MB' or 'auto'") from e
    if isinstance(memory, (int, float)) and memory > 0:
        return int(memory)
    raise ValueError(f"memory must be 'auto', a size string like '4GiB' or a positive number of bytes, got {memory!r}")


def _shift_digest(scale, shift):
    if shift is None:
        s = "0"
    elif np.ndim(shift) == 0:
        s = repr(float(shift))
    else:
        s = hashlib.sha1(np.ascontiguousarray(shift).tobytes()).hexdigest()
    return f"scale={float(scale)!r};shift={s}"


def _shift_summary(shift):
    if shift is None:
        return 0.0
    if np.ndim(shift) == 0:
        return float(shift)
    return {"vector": True, "min": float(np.min(shift)), "max": float(np.max(shift))}


# --------------------------------------------------------------------------- factor store
class _Factor:
    """The ``factor/`` group (in the store, or a temporary spill directory)."""

    def __init__(self, group, n, b, dtype, method, digest, overwrite):
        self.group = group
        meta = dict(group.attrs.get("bigspec_factor", {}))
        want = {"schema": FACTOR_SCHEMA, "n": n, "tile_size": b, "dtype": np.dtype(dtype).name,
                "method": method, "params": digest}
        if meta and any(meta.get(k) != v for k, v in want.items()) and not overwrite:
            raise StoreExistsError(
                f"the store already holds a factorization with different settings "
                f"(method={meta.get('method')}, {meta.get('params')}, tile_size={meta.get('tile_size')}); "
                f"pass overwrite=True (CLI --overwrite) to replace it, or checkpoint=False to leave it",
                existing=meta,
            )
        if not meta or overwrite or any(meta.get(k) != v for k, v in want.items()):
            for name in list(group.keys()):
                del group[name]
            meta = dict(want, columns_done=0, complete=False)
            # L is read back O(n / W) times: no compression, whose cost would dominate the reads
            group.create_array("L", shape=(n, n), chunks=(b, b), dtype=dtype, fill_value=np.nan,
                               dimension_names=("row", "col"), overwrite=True, compressors=None)
            group.create_array("log_d", shape=(n,), chunks=(b,), dtype="float64", fill_value=np.nan,
                               overwrite=True)
            group.create_array("sign_d", shape=(n,), chunks=(b,), dtype="int8", fill_value=0, overwrite=True)
            if method == "ldl":
                group.create_array("D", shape=(2, n), chunks=(2, b), dtype="float64",
                                   fill_value=np.nan, overwrite=True)
                group.create_array("perm", shape=(n,), chunks=(b,), dtype="int64", fill_value=-1,
                                   overwrite=True)
            group.attrs["bigspec_factor"] = meta
        self.meta = meta

    @property
    def columns_done(self) -> int:
        return int(self.meta.get("columns_done", 0))

    def arrays(self) -> dict:
        return {"L": self.group["L"], "D": self.group["D"] if "D" in self.group else None}

    def save_columns(self, infos, bounds, k1, stats, complete):
        for k, info in infos:
            r0, r1 = bounds[k]
            self.group["log_d"][r0:r1] = info["log_d"]
            self.group["sign_d"][r0:r1] = info["sign_d"]
            if info["D"] is not None:
                self.group["D"][:, r0:r1] = info["D"]
                self.group["perm"][r0:r1] = info["perm"]
        self.meta = dict(self.meta, columns_done=k1, complete=complete, stats=stats,
                         panels_done=int(self.meta.get("panels_done", 0)) + 1)
        self.group.attrs["bigspec_factor"] = self.meta

    def load_d(self, stop):
        return np.asarray(self.group["log_d"][:stop]), np.asarray(self.group["sign_d"][:stop])


# --------------------------------------------------------------------------- public
def local_threads(cores: int) -> tuple[int, int]:
    """(task threads, BLAS threads per call or None) on the threaded scheduler with ``cores`` cores.

    Default: one task thread per core, BLAS threads left to the library. Measured on 2 cores
    (bench/logdet_exact.py): one task thread with 2-thread BLAS was 5% slower at n = 8192 and
    25% slower at n = 20000 than two task threads; ``bigspec.threads`` overrides.
    """
    threads = config.get("threads", None)
    if not threads:
        return cores, None
    return int(threads), max(1, cores // int(threads))


def exact_logdet(A, *, method=None, memory=None, tile_size=None, shift=0.0, scale=1.0,
                 client=None, checkpoint=None, overwrite=False, device="cpu", progress=None,
                 dry_run=False, storage_options=None):
    """Exact log-determinant by tiled LDL^T / Cholesky; see :func:`bigspec.logdet`."""
    t_start = time.perf_counter()
    method = method or config.get("method", "ldl")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} for the exact logdet, got {method!r}")
    check_device(device)
    source, ms, n, dtype, b, tmp_matrix = _resolve_matrix(A, tile_size, storage_options)
    scale, shift = _check_scale_shift(scale, shift, n)
    if client is None:
        client = current_client()
    workers, threads, worker_memory = resources(client)
    blas_threads = None
    if client is None:
        threads, blas_threads = local_threads(threads)
    budget = _budget(memory, client, worker_memory)
    digest = _shift_digest(scale, shift)
    tmp_factor = None
    try:
        # plan once without resume to learn whether the matrix fits in one panel
        probe = make_plan(n, b, dtype.itemsize, method, budget, threads, workers,
                          max_tasks=config.get("max-graph-tasks", 100_000))
        if checkpoint and ms is None:
            raise ValueError("checkpoint=True needs a matrix store; write one with bigspec.from_array(A, path)")
        use_store = ms is not None and (checkpoint or (checkpoint is None and not probe.in_memory))
        factor = None
        if use_store and dry_run:
            meta = dict(ms.group["factor"].attrs.get("bigspec_factor", {})) if "factor" in ms.group else {}
            same = meta.get("params") == digest and meta.get("method") == method
            start = int(meta.get("columns_done", 0)) if same and not overwrite else 0
            return make_plan(n, b, dtype.itemsize, method, budget, threads, workers, start_column=start,
                             max_tasks=config.get("max-graph-tasks", 100_000))
        if use_store:
            fgroup = ms.group.require_group("factor")
            factor = _Factor(fgroup, n, b, dtype, method, digest, overwrite)
            if factor.meta.get("complete") and not dry_run:
                return _cached_result(ms, factor, method, b, budget, device, scale, shift, t_start)
        start = factor.columns_done if factor is not None else 0
        resumed_panels = int(factor.meta.get("panels_done", 0)) if factor is not None and start else 0
        plan = make_plan(n, b, dtype.itemsize, method, budget, threads, workers, start_column=start,
                         write_factor=factor is not None or not probe.in_memory,
                         max_tasks=config.get("max-graph-tasks", 100_000))
        if dry_run:
            return plan
        if factor is None and not plan.in_memory:
            tmp_factor = tempfile.mkdtemp(prefix="bigspec-factor-")
            factor = _Factor(zarr.open_group(tmp_factor, mode="w"), n, b, dtype, method, digest, True)
            if client is not None and not _is_local(client):
                warnings.warn("checkpoint=False spills the factor to a local temporary directory, "
                              "which remote workers cannot read; use a store on shared storage", stacklevel=3)
        write = factor is not None
        if not plan.in_memory:
            # out of core the budget is binding: freed tiles must leave the process (in memory
            # the mmap page faults cost 5-15%, measured, and nothing needs returning)
            return_freed_tiles_to_os()
            if client is not None:
                client.run(return_freed_tiles_to_os)
        result = _run(plan, source, factor, scale, shift, dtype, device, client, threads, write, progress,
                      blas_threads)
    finally:
        if tmp_matrix:
            shutil.rmtree(tmp_matrix, ignore_errors=True)
        if tmp_factor:
            shutil.rmtree(tmp_factor, ignore_errors=True)
    log_d, sign_d, stats, singular_at, computed, tasks = result
    if factor is not None and not tmp_factor and start > 0:
        prev_log, prev_sign = factor.load_d(plan.panels[0][0] * b if plan.panels else n)
        log_d = np.concatenate([prev_log, log_d])
        sign_d = np.concatenate([prev_sign, sign_d])
    res = _make_result(log_d, sign_d, n, b, method, plan, computed, tasks, t_start, budget, scale, shift,
                       stats, singular_at, ms, device, cached=False, resumed_panels=resumed_panels)
    if ms is not None:
        _record(ms, res)
    return res


def _is_local(client) -> bool:
    addr = str(getattr(client.scheduler, "address", ""))
    return addr.startswith(("inproc://", "tcp://127.", "tcp://localhost", "tls://127."))


def _run(plan, source, factor, scale, shift, dtype, device, client, threads, write, progress,
         blas_threads=None):
    b, n, nt = plan.tile_size, plan.n, plan.n_tiles
    bounds = [(i * b, min((i + 1) * b, n)) for i in range(nt)]
    total_outputs = sum(nt - k for k0, k1 in plan.panels for k in range(k0, k1))
    log_parts, sign_parts = [], []
    stats = {"max_abs_L": 0.0, "min_abs_d": math.inf, "max_abs_d": 0.0}
    singular_at = None
    tasks = 0
    computed = 0
    factor_arrays = factor.arrays() if factor is not None else {"L": None, "D": None}
    bar_ctx = Progress(total_outputs + len([1 for p in plan.panels for _ in range(*p)]),
                       label=f"bigspec {plan.method}", enabled=want_progress(progress))
    with bar_ctx as bar:
        for k0, k1 in plan.panels:
            dsk, outputs, infos = panel_graph(plan, k0, k1, source, factor_arrays, scale, shift,
                                              dtype, device, write)
            tasks += len(dsk)
            try:
                values = run_graph(dsk, infos + outputs, client, threads, bar, blas_threads)
            except tiles.ZeroPivot as zp:
                singular_at = zp.row
                warnings.warn(
                    f"log|det| = -inf: an exact zero pivot at row {zp.row} (tile {zp.tile}). The matrix "
                    f"is singular, or a leading diagonal block of it is (pivoting stays inside each "
                    f"tile and cannot step over that); a random symmetric permutation of a "
                    f"nonsingular matrix avoids the latter", SingularMatrixWarning, stacklevel=3)
                break
            computed += 1
            info_values = values[: len(infos)]
            Lmax = max(values[len(infos):], default=0.0)
            for info in info_values:
                log_parts.append(info["log_d"])
                sign_parts.append(info["sign_d"])
                finite = np.exp(info["log_d"])
                stats["min_abs_d"] = min(stats["min_abs_d"], float(finite.min(initial=math.inf)))
                stats["max_abs_d"] = max(stats["max_abs_d"], float(finite.max(initial=0.0)))
            stats["max_abs_L"] = max(stats["max_abs_L"], Lmax)
            if factor is not None:
                factor.save_columns(list(zip(range(k0, k1), info_values)), bounds, k1, stats,
                                    complete=k1 == nt)
            _after_panel(k0, k1)
    if singular_at is not None:
        return None, None, stats, singular_at, computed, tasks
    log_d = np.concatenate(log_parts) if log_parts else np.zeros(0)
    sign_d = np.concatenate(sign_parts) if sign_parts else np.zeros(0, np.int8)
    return log_d, sign_d, stats, None, computed, tasks


def _after_panel(k0, k1):
    """Hook called after each finished super-panel (tests use it to simulate a killed job)."""


def _make_result(log_d, sign_d, n, b, method, plan, computed, tasks, t_start, budget, scale, shift,
                 stats, singular_at, ms, device, cached, resumed_panels=0):
    summary = plan.summary() if plan is not None else {}
    d = kron_outputs(ms) if ms is not None else 1  # logdet(K (x) I_d) = d logdet K
    if singular_at is not None:
        sign, logabsdet = 0, -math.inf
        log_d = sign_d = None
    else:
        sign = int(np.prod(sign_d)) if len(sign_d) else 1
        sign = sign ** d
        logabsdet = d * math.fsum(log_d)
    max_L = float(stats.get("max_abs_L", float("nan")))
    if method == "ldl" and max_L > 1e4:
        warnings.warn(f"LDL^T element growth max|L| = {max_L:.3g} > 1e4: the log-determinant may be "
                      f"inaccurate; a random symmetric permutation of the matrix usually helps", GrowthWarning,
                      stacklevel=4)
    return LogdetResult(
        sign=sign, logabsdet=logabsdet, n=n, tile_size=b, method=method,
        super_panels=summary.get("super_panels", 0) + resumed_panels,
        panels_computed=computed, tasks=tasks, seconds=time.perf_counter() - t_start,
        bytes_read=int(summary.get("bytes_read", 0)), bytes_written=int(summary.get("bytes_written", 0)),
        memory_budget=int(budget), peak_memory_estimate=int(summary.get("peak_memory", 0)),
        scale=scale, shift=_shift_summary(shift), max_abs_L=max_L,
        min_abs_d=float(stats.get("min_abs_d", float("nan"))),
        max_abs_d=float(stats.get("max_abs_d", float("nan"))), singular_at=singular_at,
        store=ms.url if ms is not None else None, device=device, cached=cached, kron_outputs=d,
        log_d=log_d, sign_d=sign_d,
    )


def _cached_result(ms, factor, method, b, budget, device, scale, shift, t_start):
    log_d, sign_d = factor.load_d(ms.n)
    stats = factor.meta.get("stats", {})
    return _make_result(log_d, sign_d, ms.n, b, method, None, 0, 0, t_start, budget, scale, shift,
                        stats, None, ms, device, cached=True,
                        resumed_panels=int(factor.meta.get("panels_done", 0)))


def _record(ms: MatrixStore, res: LogdetResult) -> None:
    try:
        results = dict(ms.attrs.get("results", {}))
        results[f"logdet-{res.method}"] = res.to_dict()
        ms.update_attrs(results=results)
    except Exception as e:  # a read-only store still returns its result
        logger.info("could not record the result in %s: %s", ms.url, e)
