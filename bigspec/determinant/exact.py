"""Exact log-determinant: left-looking super-panel LDL^T / Cholesky over a tiled store.

For each super-panel of W columns (the left-looking scheme of memdet; Ameli et al. 2025,
arXiv:2503.04424): read its tiles, apply the updates from the L tiles of all earlier panels
(streamed from ``factor/``), factor it in memory (right-looking inside the panel), write its
L tiles and d once, and mark it done. Each panel is one Dask graph; a killed run resumes
after the last finished panel. Tiles are factored in
float64 whatever the storage dtype, and the factor is kept in float64.

Pivoting (LDL^T). Bunch-Kaufman runs inside each diagonal block of a *pivot group*: one
tile at first. Before a panel's tiles are written, its element growth

    g = max_i sum_k L_ik^2 d~_k / max|A|      (|L| diag(d~) |L|^T bounds |L| |D| |L|^T)

is checked. Above ``GROWTH_RETRY`` (the backward error could reach ~1e-10 of max|A|), or at
an exact zero pivot (which pivoting inside one tile cannot step over), the panel is factored
again with Bunch-Kaufman across a pivot group of many tiles: the whole panel where it fits in
one worker's share of the budget, else a narrower panel when that frees memory for a wider
group (the rest of its columns become the next panel). A saddle-point matrix whose constraint rows come first, or
``[[0, 1], [1, 1]]`` with one-row tiles, is then factored as stably as LAPACK would. Where even
that leaves the growth above ``GROWTH_LIMIT`` and pivoting could not reach the whole trailing
matrix, :class:`~bigspec.errors.UnstableFactorizationError` says so instead of returning a
wrong number.
"""

from __future__ import annotations

import contextlib
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
from dask.utils import format_bytes

from .. import config
from ..backend import check_device, freed_tiles_leave_the_process, namespace_of, to_device, to_host
from ..cluster import require_visible, resolve_client, resources
from ..errors import (
    ArgumentError,
    GrowthWarning,
    MemoryBudgetError,
    NonFiniteError,
    SingularMatrixWarning,
    StoreExistsError,
    TileSizeError,
    UnstableFactorizationError,
    again,
    arg,
    kw,
    opt,
)
from ..form import kron_outputs
from ..matrix import as_matrix, tile_source
from ..results import LogdetResult
from ..progress import want_progress
from ..runner import Runner
from ..store import check_tile_size
from ..validate import check_flag, check_scale_shift, shift_summary
from . import EXACT_METHODS as METHODS
from . import tiles
from .plan import make_plan, memory_budget

logger = logging.getLogger(__name__)

FACTOR_SCHEMA = 2
COMPUTE_DTYPE = np.dtype("float64")
GROWTH_RETRY = 1e6   # above this, a panel is factored again with pivoting across tiles
GROWTH_LIMIT = 1e10  # above this, after the widest pivoting: a warning (full pivoting) or an error


class NeedsPivoting(Exception):
    """Internal: a panel's growth is above GROWTH_RETRY; factor it again with wider pivot groups."""

    def __init__(self, growth: float, row: int):
        super().__init__(growth, row)
        self.growth, self.row = growth, row


# --------------------------------------------------------------------------- tasks
def read_tile(source, r0, r1, c0, c1, scale, shift, device, index):
    """Read ``scale * A[r0:r1, c0:c1] (+ diag(shift))`` as a fresh C-ordered float64 tile."""
    T = np.array(source[r0:r1, c0:c1], dtype=COMPUTE_DTYPE, order="C", copy=True)
    if not np.isfinite(T).all():
        r, c = np.argwhere(~np.isfinite(T))[0]
        raise NonFiniteError(
            f"the matrix holds {T[r, c]} at row {r0 + r}, col {c0 + c} (tile {tuple(index)}); an unwritten "
            f"tile reads as NaN: finish forming the store, or clean the input matrix",
            tile=tuple(index), row=int(r0 + r), col=int(c0 + c))
    if scale != 1.0:
        T *= scale
    if shift is not None:
        T[np.diag_indices(r1 - r0)] += shift
    return to_device(T, device)


def amax(T) -> float:
    """max |T| (the scale that growth is measured against)."""
    return float(namespace_of(T).max(namespace_of(T).abs(T))) if T.size else 0.0


def read_tile_and_amax(*args):
    """[tile, max|tile|]: the tile's one consumer updates it in place, so its scale is taken first."""
    T = read_tile(*args)
    return [T, amax(T)]


def update_rows(source, factor, rows, panel, earlier, bounds, scale, shift, device):
    """Read a row block of a super-panel and apply the left-looking updates of earlier columns.

    ``rows``: tile rows of this block; ``panel``: the panel's tile columns; ``earlier``:
    tile columns already factored. Streams one earlier tile column at a time from
    ``factor`` (L tiles and D), so the workspace is one column of the block plus the top.
    Returns the block's tiles (i, k), i >= k, in row-major order, then max|A| over them.
    """
    out = []
    for i in rows:
        for k in panel:
            if i >= k:
                d_shift = _shift_slice(shift, bounds, i) if i == k else None
                out.append(read_tile(source, *bounds[i], *bounds[k], scale, d_shift, device, (i, k)))
    scale_of_A = max((amax(T) for T in out), default=0.0)
    if not earlier:
        return out + [scale_of_A]
    r0, r1 = bounds[rows[0]][0], bounds[rows[-1]][1]
    t0, t1 = bounds[panel[0]][0], bounds[panel[-1]][1]
    L, D = factor["L"], factor.get("D")
    D_all = None if D is None else np.asarray(D[:, :t0])
    top_inside = r0 == t0 and r1 >= t1

    def column(c):  # one column of L's top block (a 2x2 pivot block crossing a tile edge needs it)
        return to_device(np.asarray(L[t0:t1, c], dtype=COMPUTE_DTYPE), device)

    for j in earlier:
        c0, c1 = bounds[j]
        L_rows = to_device(np.ascontiguousarray(L[r0:r1, c0:c1], dtype=COMPUTE_DTYPE), device)
        L_top = L_rows[: t1 - t0] if top_inside else \
            to_device(np.ascontiguousarray(L[t0:t1, c0:c1], dtype=COMPUTE_DTYPE), device)
        if D_all is None:
            LD_top = L_top
        else:
            left = (column(c0 - 1), D_all[1, c0 - 1]) if c0 > 0 and D_all[1, c0 - 1] != 0 else None
            right = (column(c1), D_all[1, c1 - 1]) if c1 < t0 and D_all[1, c1 - 1] != 0 else None
            LD_top = tiles.scale_by_D_columns(L_top, D_all[:, c0:c1], left, right)
        pos = 0
        for i in rows:
            a0, a1 = bounds[i][0] - r0, bounds[i][1] - r0
            for k in panel:
                if i >= k:
                    b0, b1 = bounds[k][0] - t0, bounds[k][1] - t0
                    out[pos] = tiles.update(out[pos], L_rows[a0:a1], LD_top[b0:b1], False, False)
                    pos += 1
    return out + [scale_of_A]


def _shift_slice(shift, bounds, i):
    if shift is None:
        return None
    if np.ndim(shift) == 0:
        return float(shift)
    return np.asarray(shift[bounds[i][0]:bounds[i][1]])


def assemble(blocks, sizes):
    """The lower triangle of a pivot group's diagonal block from its tiles, as one F-ordered array."""
    xp = namespace_of(blocks[0][0])
    P = sum(sizes)
    out = xp.zeros((P, P), dtype=COMPUTE_DTYPE, order="F")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for a, row in enumerate(blocks):
        for c, T in enumerate(row):
            out[starts[a]:starts[a + 1], starts[c]:starts[c + 1]] = T
    return out


def hstack(blocks):
    """A row strip of a pivot group: its tiles side by side (C-ordered)."""
    return namespace_of(blocks[0]).concatenate(blocks, axis=1)


def getitem(seq, i):
    return seq[i]


# The tasks below overwrite their tile argument (LAPACK/BLAS in place) on Dask's threaded
# scheduler, which never runs a task twice. On a distributed cluster a task whose result was
# lost with its worker is run again from its inputs, which are held by reference (a getitem of
# a row block's list, an assembled block): they must still be the inputs, so there (``pure``)
# each task updates its own copy. Without this, a lost worker could apply an update twice.
def _own(T, pure):
    return T.copy() if pure else T


def factor_task(T, method, tile, offset, pure=False):
    return tiles.factor_diagonal(_own(T, pure), method, tile, offset)


def diagonal_info(F: tiles.DiagonalFactor):
    """The small part of a diagonal factor that goes back to the client."""
    return {"log_d": F.log_d, "sign_d": F.sign_d, "D": F.D, "perm": F.perm,
            "pivot_min": float(F.pivots.min(initial=math.inf)), "pivot_max": float(F.pivots.max(initial=0.0))}


def diagonal_L(F: tiles.DiagonalFactor):
    return F.L


def solve_task(T, F, pure=False):
    return tiles.solve_below(_own(T, pure), F)


def scaled_task(L, F):
    return tiles.scale_by_D(L, F.D)


def update_task(T, L_i, LD_j, diagonal, cholesky, pure=False):
    return tiles.update(_own(T, pure), L_i, LD_j, diagonal, cholesky)


def stats_task(L, F, r0, r1, diagonal):
    """(growth row sums, max|L| off the unit diagonal) of rows r0:r1 of a group's L block."""
    piece = L[r0:r1]
    s = tiles.growth_rows(piece, F.majorant)
    host = np.abs(to_host(piece))
    if diagonal:  # the diagonal block: its unit diagonal and the zeros above it do not count
        host = np.tril(host, r0 - 1)
    return s, float(host.max(initial=0.0))


def gate(stats, rows_of, scales, prior_s, prior_scale, row0, limit):
    """A panel's element growth, checked before any of its tiles is written.

    The bound is Bunch-Kaufman's (Higham 2002, *Accuracy and Stability of Numerical
    Algorithms*, section 11.1).

    ``stats``: (s, max|L|) of each (row tile, pivot group), ``rows_of`` their row tiles;
    ``prior_s``: the growth sums of the panel's rows from earlier panels. Raises
    :class:`NeedsPivoting` above ``limit``.
    """
    rows = {}
    max_L = 0.0
    for i, (s, m) in zip(rows_of, stats):
        rows[i] = rows[i] + s if i in rows else s
        max_L = max(max_L, m)
    s = np.concatenate([rows[i] for i in sorted(rows)]) + prior_s
    scale = max([prior_scale, *scales]) or 1.0
    k = int(np.argmax(s)) if s.size else 0
    growth = float(s[k] / scale) if s.size else 0.0
    if growth > limit:
        raise NeedsPivoting(growth, row0 + k)
    return {"growth": growth, "growth_row": row0 + k, "max_abs_L": max_L, "s": s, "scale": scale}


def write_L(L, array, r0, r1, c0, c1, lr0, lc0, diagonal, *after):
    """Write one L tile (rows lr0.., cols lc0.. of the block L) into the factor once; return max|L|.

    ``after`` holds the panel's growth check, so nothing is written before it passes.
    """
    host = to_host(L[lr0:lr0 + r1 - r0, lc0:lc0 + c1 - c0])
    array[r0:r1, c0:c1] = host
    return 0.0 if diagonal else float(np.max(np.abs(host), initial=0.0))


def max_abs(L, lr0, rows, diagonal):
    return 0.0 if diagonal else float(np.max(np.abs(to_host(L[lr0:lr0 + rows])), initial=0.0))


# --------------------------------------------------------------------------- graph
class PanelGraph:
    """The task graph of one super-panel and the keys the client gathers from it."""

    def __init__(self, dsk, infos, check, outputs, groups):
        self.dsk, self.infos, self.check, self.outputs, self.groups = dsk, infos, check, outputs, groups

    @property
    def keys(self) -> list:
        return self.infos + ([self.check] if self.check else []) + self.outputs


def panel_graph(plan, k0, k1, source, factor, scale, shift, device, write, group=1, limit=math.inf,
                prior_s=None, prior_scale=0.0, offset=0, pure=False) -> PanelGraph:
    """Task graph of one super-panel with pivot groups of ``group`` tile columns.

    With ``0 < offset < group`` the first group has ``offset`` tiles, which moves every group
    boundary (a 2x2 pivot block that a boundary would split then lies inside a group).
    ``pure``: no task changes its inputs (for a distributed cluster, which may run a task again).
    """
    b, n, nt = plan.tile_size, plan.n, plan.n_tiles
    bounds = [(i * b, min((i + 1) * b, n)) for i in range(nt)]
    cholesky = plan.method == "cholesky"
    tok = uuid.uuid4().hex[:8]
    name = {s: f"bigspec-{s}-{tok}" for s in
            ("read", "amax", "update", "tile", "assemble", "strip", "factor", "info", "L", "solve", "scaled",
             "stats", "gate", "store")}
    dsk = {}
    panel = list(range(k0, k1))
    tile, scales = {}, []
    if k0 == 0:
        for k in panel:
            for i in range(k, nt):
                key = (name["read"], i, k)
                d_shift = _shift_slice(shift, bounds, i) if i == k else None
                if cholesky:
                    dsk[key] = (read_tile, source, *bounds[i], *bounds[k], scale, d_shift, device, (i, k))
                    tile[i, k] = key
                    continue
                # the tile is updated in place by its one consumer: its max|A| travels beside it
                dsk[key] = (read_tile_and_amax, source, *bounds[i], *bounds[k], scale, d_shift, device, (i, k))
                dsk[(name["tile"], i, k, 0)] = (getitem, key, 0)
                dsk[(name["amax"], i, k)] = (getitem, key, 1)
                tile[i, k] = (name["tile"], i, k, 0)
                scales.append((name["amax"], i, k))
    else:
        chunks = plan.row_chunks(k0, k1)
        rows_all = list(range(k0, nt))
        step = -(-len(rows_all) // chunks)
        earlier = list(range(0, k0))
        for r, s in enumerate(range(0, len(rows_all), step)):
            rows = rows_all[s:s + step]
            ukey = (name["update"], r)
            dsk[ukey] = (update_rows, source, factor, rows, panel, earlier, bounds, scale, shift, device)
            pos = 0
            for i in rows:
                for k in panel:
                    if i >= k:
                        key = (name["tile"], i, k, k0)
                        dsk[key] = (getitem, ukey, pos)
                        tile[i, k] = key
                        pos += 1
            if not cholesky:
                dsk[(name["amax"], r)] = (getitem, ukey, -1)
                scales.append((name["amax"], r))
    infos, stats, writes = [], [], []
    L_array = factor["L"] if write else None
    first = k0 + offset if 0 < offset < min(group, k1 - k0) else k0
    groups = ([(k0, first)] if first > k0 else []) + [(g0, min(g0 + group, k1)) for g0 in range(first, k1, group)]
    for g0, g1 in groups:
        cols = range(g0, g1)
        start = bounds[g0][0]
        if g1 - g0 == 1:
            diag_in = tile[g0, g0]
        else:
            diag_in = (name["assemble"], g0)
            dsk[diag_in] = (assemble, [[tile[i, j] for j in range(g0, i + 1)] for i in cols],
                            [bounds[i][1] - bounds[i][0] for i in cols])
        fkey = (name["factor"], g0)
        dsk[fkey] = (factor_task, diag_in, plan.method, (g0, g0), start, pure)
        dsk[(name["info"], g0)] = (diagonal_info, fkey)
        infos.append((name["info"], g0))
        Lkey = (name["L"], g0)
        dsk[Lkey] = (diagonal_L, fkey)
        strips = {}   # row tile -> (key of its L rows over the group's columns, row offset in it)
        for i in cols:
            strips[i] = (Lkey, bounds[i][0] - start)
        for i in range(g1, nt):
            if g1 - g0 == 1:
                strip_in = tile[i, g0]
            else:
                strip_in = (name["strip"], i, g0)
                dsk[strip_in] = (hstack, [tile[i, j] for j in cols])
            skey = (name["solve"], i, g0)
            dsk[skey] = (solve_task, strip_in, fkey, pure)
            strips[i] = (skey, 0)
        for j in range(g1, k1):   # trailing tiles of the panel, right-looking over groups
            jkey = strips[j][0]
            if cholesky:
                ld = jkey
            else:
                ld = (name["scaled"], j, g0)
                dsk[ld] = (scaled_task, jkey, fkey)
            for i in range(j, nt):
                key = (name["tile"], i, j, g1)
                dsk[key] = (update_task, tile[i, j], strips[i][0], ld, i == j, cholesky, pure)
                tile[i, j] = key
        for i in range(g0, nt):
            src, off = strips[i]
            rows = bounds[i][1] - bounds[i][0]
            if not cholesky:
                skey = (name["stats"], i, g0)
                dsk[skey] = (stats_task, src, fkey, off, off + rows, i < g1)
                stats.append((i, skey))
            for j in cols:
                if i < j:
                    continue
                okey = (name["store"], i, j)
                lc0 = bounds[j][0] - start
                if write:
                    writes.append((okey, (write_L, src, L_array, *bounds[i], *bounds[j], off, lc0, i == j)))
                else:   # in memory: the tile's max|L| (and a tick of the progress bar)
                    writes.append((okey, (max_abs, src, off, rows, i == j)))
    check = None
    if not cholesky:
        check = (name["gate"], k0)
        dsk[check] = (gate, [key for _, key in stats], [i for i, _ in stats], scales,
                      np.zeros(n - bounds[k0][0]) if prior_s is None else prior_s, prior_scale,
                      bounds[k0][0], limit)
    outputs = []
    for okey, task in writes:
        dsk[okey] = task + ((check,) if check is not None and task[0] is write_L else ())
        outputs.append(okey)
    return PanelGraph(dsk, infos, check, outputs, groups)


# --------------------------------------------------------------------------- inputs
def _shift_digest(scale, shift):
    if shift is None:
        s = "0"
    elif np.ndim(shift) == 0:
        s = repr(float(shift))
    else:
        s = hashlib.sha1(np.ascontiguousarray(shift).tobytes()).hexdigest()
    return f"scale={float(scale)!r};shift={s}"


# --------------------------------------------------------------------------- factor store
class _Factor:
    """The ``factor/`` group (in the store, or a temporary spill directory)."""

    def __init__(self, group, n, b, method, digest, overwrite):
        self.group = group
        meta = dict(group.attrs.get("bigspec_factor", {}))
        want = {"schema": FACTOR_SCHEMA, "n": n, "tile_size": b, "dtype": COMPUTE_DTYPE.name,
                "method": method, "params": digest}
        differs = bool(meta) and any(meta.get(k) != v for k, v in want.items())
        if differs and all(meta.get(k) == v for k, v in want.items() if k != "schema"):
            logger.info("replacing a factorization of an older bigspec (factor schema %s)", meta.get("schema"))
            overwrite = True   # bigspec's own cache in an outdated layout, same settings: recompute it
        if differs and not meta.get("complete") and not int(meta.get("columns_done", 0)):
            overwrite = True   # a factor with no column done holds nothing to lose (a failed first panel)
        if differs and not overwrite:
            names = {"method": "method", "params": "scale and shift", "tile_size": "tile_size", "n": "n",
                     "dtype": "dtype", "schema": "factor layout"}
            diff = "; ".join(f"{names[k]}: {_setting(k, meta.get(k))} there, {_setting(k, v)} now"
                             for k, v in want.items() if meta.get(k) != v)
            state = ("complete" if meta.get("complete") else
                     f"{min(int(meta.get('columns_done', 0)) * b, n)} of {n} columns done")
            raise StoreExistsError(
                f"the store keeps one factorization in factor/, and it was made with other settings ({diff}); "
                f"pass {arg('overwrite', True)} to replace it (it is {state}), or {arg('checkpoint', False)} to "
                f"factor without keeping this one", existing=meta)
        if not meta or overwrite or differs:
            for name in list(group.keys()):
                del group[name]
            meta = dict(want, columns_done=0, complete=False)
            # L is read back O(n / W) times: no compression, whose cost would dominate the reads
            group.create_array("L", shape=(n, n), chunks=(b, b), dtype=COMPUTE_DTYPE, fill_value=np.nan,
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

    @property
    def stats(self) -> dict:
        """Diagnostics of the panels already factored (merged over every run)."""
        return dict(self.meta.get("stats", {}))

    def arrays(self) -> dict:
        return {"L": self.group["L"], "D": self.group["D"] if "D" in self.group else None}

    def save_columns(self, infos, k1, stats, complete, root=None):
        for (r0, r1), info in infos:
            self.group["log_d"][r0:r1] = info["log_d"]
            self.group["sign_d"][r0:r1] = info["sign_d"]
            if info["D"] is not None:
                self.group["D"][:, r0:r1] = info["D"]
                self.group["perm"][r0:r1] = info["perm"] + r0
        self.meta = dict(self.meta, columns_done=k1, complete=complete, stats=stats,
                         panels_done=int(self.meta.get("panels_done", 0)) + 1)
        self.group.attrs["bigspec_factor"] = self.meta
        if root is not None:
            root.sync_metadata()

    def load_d(self, stop) -> dict:
        """log_d, sign_d and the leading-minor mask of the first ``stop`` pivots."""
        out = {"log_d": np.asarray(self.group["log_d"][:stop]), "sign_d": np.asarray(self.group["sign_d"][:stop])}
        if "perm" in self.group:
            out["leading_minor"] = tiles.leading_minors(self.group["perm"][:stop], self.group["D"][:, :stop])
        else:
            out["leading_minor"] = np.ones(stop, bool)
        return out


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
                 dry_run=False, storage_options=None, triangle=None, missing_chunks="error"):
    """Exact log-determinant by tiled LDL^T / Cholesky; see :func:`bigspec.logdet`."""
    t_start = time.perf_counter()
    checkpoint = check_flag(checkpoint, "checkpoint", allow_none=True)
    overwrite, dry_run = check_flag(overwrite, "overwrite"), check_flag(dry_run, "dry_run")
    method = method or config.get("method", "ldl")
    if method not in METHODS:
        raise ArgumentError(f"{arg('method')} must be one of {', '.join(METHODS)} for the exact logdet, got {method!r}")
    check_device(device)
    want_progress(progress)
    client = resolve_client(client)
    # validation of every argument before anything is copied or written
    m = as_matrix(A, triangle=triangle, missing_chunks=missing_chunks, storage_options=storage_options, mode="r+",
                  client=client)
    ms, n = m.store, m.n
    if ms is not None:
        if tile_size is not None and check_tile_size(tile_size) != ms.tile_size:
            new = f"{ms.url.rstrip('/').removesuffix('.zarr')}-{tile_size}.zarr"
            raise TileSizeError(
                f"{arg('tile_size', tile_size)} does not match the store's tiles ({ms.tile_size}); omit "
                f"{arg('tile_size')} to use the store's, or copy the store to new tiles with "
                + opt(f"bigspec.from_array({ms.url!r}, {new!r}, tile_size={tile_size})",
                      f"`bigspec import {ms.url} {new} --tile-size {tile_size}`"),
                tile_size=tile_size, store_tile_size=ms.tile_size)
        b = ms.tile_size
    else:
        b = min(check_tile_size(config.get("tile-size") if tile_size is None else tile_size), n)
        if checkpoint:
            raise ArgumentError(f"{arg('checkpoint', True)} needs a matrix store to keep the factor in; write one "
                                f"with " + opt("bigspec.from_array(A, path)", "`bigspec import A.npy STORE`"))
    scale, shift = check_scale_shift(scale, shift, n)
    workers, threads, worker_memory = resources(client)
    blas_threads = None
    if client is None:
        threads, blas_threads = local_threads(threads)
    budget = memory_budget(memory, client, worker_memory)
    digest = _shift_digest(scale, shift)
    max_tasks = config.get("max-graph-tasks", 100_000)
    itemsize = COMPUTE_DTYPE.itemsize
    # plan once without resume to learn whether the matrix fits in one panel
    while True:
        try:
            probe = make_plan(n, b, itemsize, method, budget, threads, workers, max_tasks=max_tasks,
                              storage_itemsize=m.dtype.itemsize, store_tiles=ms is not None,
                              store_url=ms.url if ms is not None else None)
            break
        except MemoryBudgetError:
            if client is not None or threads <= 1 or config.get("threads", None):
                raise
            # the threaded scheduler: fewer task threads (each holding its own tiles) fit a small
            # budget, and BLAS gets the cores they leave
            cores = threads
            threads = max(1, threads // 2)
            blas_threads = max(1, cores // threads) * (blas_threads or 1)
            logger.info("memory budget %s: %d task threads (BLAS %d threads each)", format_bytes(budget), threads,
                        blas_threads)
    use_store = ms is not None and (checkpoint or (checkpoint is None and not probe.in_memory))
    if dry_run:
        start = 0
        if use_store and "factor" in ms.group:
            meta = dict(ms.group["factor"].attrs.get("bigspec_factor", {}))
            same = meta.get("params") == digest and meta.get("method") == method
            start = int(meta.get("columns_done", 0)) if same and not overwrite else 0
        return make_plan(n, b, itemsize, method, budget, threads, workers, start_column=start,
                         write_factor=use_store or not probe.in_memory, max_tasks=max_tasks,
                         storage_itemsize=m.dtype.itemsize, store_tiles=ms is not None)
    factor = None
    if use_store:
        factor = _Factor(ms.group.require_group("factor"), n, b, method, digest, overwrite)
        ms.sync_metadata()
        if factor.meta.get("complete"):
            return _result(ms=ms, factor=factor, method=method, b=b, budget=budget, device=device, scale=scale,
                           shift=shift, t_start=t_start, dtype=m.dtype)
    start = factor.columns_done if factor is not None else 0
    resumed_panels = int(factor.meta.get("panels_done", 0)) if factor is not None and start else 0
    plan = make_plan(n, b, itemsize, method, budget, threads, workers, start_column=start,
                     write_factor=factor is not None or not probe.in_memory, max_tasks=max_tasks,
                     storage_itemsize=m.dtype.itemsize, store_tiles=ms is not None)
    done_before = start * b

    def interrupted():
        done = max(getattr(runner, "columns_done", 0), done_before)
        if use_store:
            return (f"factored {done} of {n} columns of {ms.url}, kept in its factor/; {again(overwrite)} to resume "
                    f"from column {done}")
        return (f"factored {done} of {n} columns; nothing is kept ("
                + ("the matrix is not a store" if ms is None else arg("checkpoint", False))
                + "): a new run starts over" + (f"; {arg('checkpoint', True)} keeps the factor to resume"
                                               if ms is not None else ""))

    note = f"resumed at column {done_before}" if done_before else None
    total = plan.n_tiles * (plan.n_tiles + 1) // 2                  # the lower tiles, each factored once
    before = total - sum(plan.n_tiles - k for k0, k1 in plan.panels for k in range(k0, k1))
    tmp = []
    try:
        with Runner(client, progress=progress, label=f"bigspec {method}", unit="tiles", total=total, done=before,
                    note=note,
                    threads=threads, blas_threads=blas_threads, interrupted=interrupted) as runner:
            source = tile_source(m, b, client, tmp, threads=threads)
            if factor is None and not plan.in_memory:
                tmp.append(tempfile.mkdtemp(prefix="bigspec-factor-"))
                require_visible(client, tmp[-1], "the temporary factor (checkpoint=False, out of core)",
                                "factor a store on shared storage with checkpoint=True")
                factor = _Factor(zarr.open_group(tmp[-1], mode="w"), n, b, method, digest, True)
            # out of core the budget is binding: freed tiles must leave the process (in memory the
            # mmap page faults cost 5-15%, measured, and nothing needs returning)
            with freed_tiles_leave_the_process(client) if not plan.in_memory else contextlib.nullcontext():
                run = _run(plan, source, factor, scale, shift, device, runner, root=ms if use_store else None,
                           workers=workers)
        if run["log_d"] is not None and start > 0:
            prev = factor.load_d(start * b)
            for key in ("log_d", "sign_d", "leading_minor"):
                run[key] = np.concatenate([prev[key], run[key]])
    finally:
        for path in tmp:
            shutil.rmtree(path, ignore_errors=True)
    res = _result(ms=ms, factor=None, method=method, b=b, budget=budget, device=device, scale=scale, shift=shift,
                  t_start=t_start, dtype=m.dtype, plan=plan, run=run, resumed_panels=resumed_panels, n=n)
    if ms is not None:
        _record(ms, res)
    return res


def _widest_group(plan, k0, k1, workers):
    """Tile columns of the widest pivot group one worker can hold beside its share of the panel."""
    b = plan.tile_size
    avail = (plan.budget - plan.panel_memory(k0, k1)) / max(workers, 1)
    P = int(math.isqrt(max(int(avail // (3 * COMPUTE_DTYPE.itemsize)), 0)))  # the block, its strips, LAPACK
    return max(1, min(k1 - k0, P // b))


def _pivot_split(plan, k0, k1, workers):
    """(k1', group): the end of a narrower super-panel from ``k0`` and its widest pivot group.

    A wide super-panel leaves little memory for pivoting, so a panel that needs pivoting
    across tiles is factored narrower when that lets its pivot group be wider (the columns
    after ``k1'`` become the next super-panel; resuming works by columns, so this is safe).
    """
    best = (k1, _widest_group(plan, k0, k1, workers))
    for w in range(k1 - k0 - 1, 0, -1):
        if best[1] >= w + 1:          # a narrower panel cannot hold a wider group
            break
        g = _widest_group(plan, k0, k0 + w, workers)
        if g > best[1]:
            best = (k0 + w, g)
    return best


def _run(plan, source, factor, scale, shift, device, runner, root=None, workers=1):
    b, n, nt = plan.tile_size, plan.n, plan.n_tiles
    bounds = [(i * b, min((i + 1) * b, n)) for i in range(nt)]
    ldl = plan.method == "ldl"
    write = factor is not None
    stats = {"max_abs_L": 0.0, "min_abs_d": math.inf, "max_abs_d": 0.0, "growth": 0.0, "growth_row": None,
             "scale": 0.0, "pivot_groups": []}
    if factor is not None and factor.columns_done:
        stats.update(factor.stats)          # diagnostics merge over every run of a resumed job
    s_rows = np.zeros(n)                    # growth sums per row, accumulated over panels
    if factor is not None and factor.columns_done and "s_rows" in factor.group:
        s_rows = np.asarray(factor.group["s_rows"][:])
    log_parts, sign_parts, minor_parts = [], [], []
    singular_at, computed, tasks, splits = None, 0, 0, 0
    arrays = factor.arrays() if factor is not None else {"L": None, "D": None}
    queue = list(plan.panels)
    while queue:
        k0, k1 = queue.pop(0)
        c = bounds[k0][0]
        # a panel can only be split where its L tiles are written for the next panels to read
        split_k1, widest = (_pivot_split(plan, k0, k1, workers) if write else
                            (k1, _widest_group(plan, k0, k1, workers))) if ldl else (k1, 1)
        group, offset, tried, widened = 1, 0, set(), False
        mark = runner.mark()
        while True:
            runner.rewind(mark)          # a panel factored again counts its tiles once
            can_widen = ldl and not widened and group < widest
            g = panel_graph(plan, k0, k1, source, arrays, scale, shift, device, write, group,
                            GROWTH_RETRY if can_widen else math.inf, s_rows[c:], stats["scale"], offset,
                            pure=runner.client is not None)
            tasks += len(g.dsk)
            try:
                values = runner.run(g.dsk, g.keys, ticks=g.outputs)
            except (tiles.ZeroPivot, NeedsPivoting) as e:
                if can_widen:
                    if split_k1 < k1:
                        queue.insert(0, (split_k1, k1))
                        k1, splits = split_k1, splits + 1
                    logger.info("panel %d:%d: %s with pivoting inside %d tile(s); factoring columns %d:%d "
                                "again with Bunch-Kaufman across %d tiles", k0, k1, _why(e), group, k0, k1,
                                widest)
                    group, widened = widest, True
                    continue
                if isinstance(e, NeedsPivoting):  # pragma: no cover - the limit is inf then
                    raise
                if (k1 == nt and group >= k1 - k0) or e.row == n - 1 or \
                        (isinstance(e, tiles.ZeroPivot) and _zero_row(source, e.row, n, b, shift)):
                    # no pivoting is left to try: the whole remaining matrix was one group, the zero
                    # is the last pivot (the trailing 1 x 1 Schur complement is exactly 0), or the
                    # matrix has a zero row (an exactly singular matrix, whatever the pivoting)
                    singular_at = e.row
                    break
                moved = _move_boundary(e.row // b, k0, k1, nt, group, offset, g.groups, tried) if ldl else None
                if moved == "panel" and not write:
                    moved = None
                if moved == "panel":
                    # the pivot needs a row of the next panel: end this one before its tile
                    k1 = e.row // b
                    queue = [(s0, min(s0 + plan.panel_tiles, nt)) for s0 in range(k1, nt, plan.panel_tiles)]
                    splits += 1
                    logger.info("panel %d:%d: %s at the panel's edge; the panel ends before it", k0, k1,
                                _why(e))
                    group, offset = min(group, k1 - k0), 0
                    continue
                if moved is not None:
                    logger.info("panel %d:%d: %s at a pivot group's edge; groups of %d tiles from offset %d",
                                k0, k1, _why(e), *moved)
                    group, offset = moved
                    continue
                raise _unstable(plan, e.row, None, group, k0, k1, b) from None
            break
        if singular_at is not None:
            warnings.warn(
                f"log|det| = -inf: the matrix is exactly singular (rank deficient): an exact zero pivot at row "
                f"{singular_at} that no symmetric pivoting removes; add a ridge with "
                f"{kw('shift')} to factor A + shift*I", SingularMatrixWarning, stacklevel=4)
            break
        computed += 1
        infos = values[: len(g.infos)]
        check = values[len(g.infos)] if g.check else None
        outs = values[len(g.infos) + (1 if g.check else 0):]
        for (g0, g1), info in zip(g.groups, infos):
            log_parts.append(info["log_d"])
            sign_parts.append(info["sign_d"])
            minor_parts.append(tiles.leading_minors(info["perm"], info["D"]) if ldl
                               else np.ones(len(info["log_d"]), bool))
            stats["min_abs_d"] = min(stats["min_abs_d"], info["pivot_min"])
            stats["max_abs_d"] = max(stats["max_abs_d"], info["pivot_max"])
            if g1 - g0 > 1:
                stats["pivot_groups"] = stats["pivot_groups"] + [[bounds[g0][0], bounds[g1 - 1][1]]]
        stats["max_abs_L"] = max(stats["max_abs_L"], max(outs, default=0.0),
                                 check["max_abs_L"] if check else 0.0)
        if check is not None:
            s_rows[c:] = check["s"]
            stats["scale"] = check["scale"]
            if check["growth"] >= stats["growth"]:
                stats["growth"], stats["growth_row"] = check["growth"], check["growth_row"]
            if check["growth"] > GROWTH_LIMIT and not (k1 == nt and group >= k1 - k0):
                raise _unstable(plan, check["growth_row"], check["growth"], group, k0, k1, b)
        if factor is not None:
            if ldl:
                if "s_rows" not in factor.group:
                    factor.group.create_array("s_rows", shape=(n,), chunks=(max(n, 1),), dtype="float64",
                                              fill_value=0.0, overwrite=True)
                factor.group["s_rows"][:] = s_rows
            grp = [(bounds[g0][0], bounds[g1 - 1][1]) for g0, g1 in g.groups]
            factor.save_columns(list(zip(grp, infos)), k1, _json_stats(stats), complete=k1 == nt, root=root)
        runner.columns_done = bounds[k1 - 1][1]
        _after_panel(k0, k1)
    log_d = np.concatenate(log_parts) if log_parts and singular_at is None else (None if singular_at is not None
                                                                                 else np.zeros(0))
    sign_d = np.concatenate(sign_parts) if sign_parts and singular_at is None else (None if singular_at is not None
                                                                                    else np.zeros(0, np.int8))
    minors = np.concatenate(minor_parts) if log_d is not None and minor_parts else np.zeros(0, bool)
    return {"log_d": log_d, "sign_d": sign_d, "leading_minor": minors, "stats": stats, "singular_at": singular_at,
            "computed": computed, "tasks": tasks, "splits": splits}


MAX_REGROUPS = 8  # pivot-group layouts tried for one panel before giving up


def _zero_row(source, row, n, b, shift) -> bool:
    """Whether row ``row`` of ``scale * A + diag(shift)`` is exactly zero (read tile by tile)."""
    if shift is not None and float(_shift_slice(shift, [(row, row + 1)], 0) if np.ndim(shift) else shift) != 0:
        return False
    return all(not np.any(np.asarray(source[row:row + 1, c0:min(c0 + b, n)])) for c0 in range(0, n, b))


def _move_boundary(t, k0, k1, nt, group, offset, groups, tried):
    """A new layout for a panel whose pivoting failed in tile ``t``, the last of its group.

    Bunch-Kaufman inside a group cannot pair the group's last row with the next group's first
    (a 2x2 pivot block across the boundary). Returns ``"panel"`` when ``t`` ends the panel (the
    panel then ends before ``t``), ``(group, offset)`` of an untried layout with ``t`` and
    ``t + 1`` in one group, or None (the failure is inside a group, or every layout was tried).
    """
    tried.add((group, offset))
    if not any(g1 - 1 == t for _, g1 in groups) or len(tried) > MAX_REGROUPS:
        return None
    if t + 1 == k1:
        return "panel" if k1 < nt and t > k0 else None
    for size in range(group, 1, -1):
        for o in sorted(range(size), key=lambda o: abs(o - (t + 1 - k0 - size // 2) % size)):
            if (size, o) not in tried and (t + 1 - k0 - o) % size != 0 and t + 1 - k0 != o:
                tried.add((size, o))
                return size, o
    return None


def _why(e) -> str:
    if isinstance(e, tiles.ZeroPivot):
        return f"an exact zero pivot at row {e.row}"
    return f"element growth {e.growth:.3g} at row {e.row}"


def _unstable(plan, row, growth, group, k0, k1, b):
    width = min(group * b, plan.n - k0 * b)
    need = plan.n - k0 * b
    what = (f"an exact zero pivot at row {row}" if growth is None else
            f"element growth {growth:.3g} at row {row} (above {GROWTH_LIMIT:g}: the log-determinant would be "
            f"unreliable)")
    return UnstableFactorizationError(
        f"LDL^T met {what} even with Bunch-Kaufman pivoting across {width} columns: the matrix needs symmetric "
        f"pivoting across more columns than the memory budget ({format_bytes(plan.budget)}) lets one worker hold. "
        f"Give it more memory ({kw('memory')}: pivoting over all {need} remaining columns needs about "
        f"{format_bytes(3 * 8 * need * need + plan.panel_memory(k0, k1))} in all, against "
        f"{format_bytes(plan.budget)} now), reorder the matrix so that its leading blocks are well "
        f"conditioned (e.g. a saddle-point matrix with its constraint rows last, or a random symmetric "
        f"permutation), or, if it is meant to be positive definite, use {arg('method', 'cholesky')} with "
        f"{kw('shift')}" + ("; a zero pivot may also mean the matrix is singular, whose log-determinant is -inf "
                            f"(a ridge with {kw('shift')} makes it definite)" if growth is None else ""),
        row=row, growth=growth, pivot_columns=width)


def _setting(key, value):
    if key == "params" and isinstance(value, str):
        return value.replace(";", ", ")
    return f"{value}"


def _json_stats(stats):
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in stats.items()}


def _after_panel(k0, k1):
    """Hook called after each finished super-panel (tests use it to simulate a killed job)."""


def singular_tolerance(n: int, dtype) -> float:
    """Pivot ratio min|d| / max|d| below which a matrix is numerically singular.

    ``n * eps`` of the float64 arithmetic, or the storage precision's eps when that is larger
    (a float32 matrix is only known to ~6e-8 relative).
    """
    return max(n * np.finfo(np.float64).eps, float(np.finfo(np.dtype(dtype)).eps))


def _result(*, ms, factor, method, b, budget, device, scale, shift, t_start, dtype, plan=None, run=None,
            resumed_panels=0, n=None):
    """The LogdetResult of a run (or of a complete factor in the store), with its warnings."""
    if run is None:                                   # the cached answer of a complete factor
        run = {**factor.load_d(ms.n), "stats": factor.stats, "singular_at": None, "computed": 0, "tasks": 0}
        resumed_panels = int(factor.meta.get("panels_done", 0))
    n = ms.n if n is None else n
    summary = plan.summary() if plan is not None else {}
    d = kron_outputs(ms) if ms is not None else 1     # logdet(K (x) I_d) = d logdet K
    stats = run["stats"]
    log_d, sign_d = run["log_d"], run["sign_d"]
    if run["singular_at"] is not None:
        sign, logabsdet = 0, -math.inf
    else:
        sign = (int(np.prod(sign_d)) if len(sign_d) else 1) ** d
        logabsdet = d * math.fsum(log_d)
    growth = float(stats.get("growth") or 0.0)
    lo, hi = stats.get("min_abs_d"), stats.get("max_abs_d")
    ratio = (lo / hi) if lo is not None and hi and math.isfinite(lo) else float("nan")
    tol = singular_tolerance(n, dtype)
    if run["singular_at"] is None and ratio < tol:
        warnings.warn(
            f"the matrix is numerically singular: the smallest pivot is {ratio:.3g} of the largest "
            f"(min|d| = {lo:.3g}, max|d| = {hi:.3g}), below {tol:.3g} (n * eps), so log|det| = {logabsdet:.6g} is "
            f"set by rounding, not by the matrix. Add a nugget with {kw('shift')} (a ridge well above "
            f"{tol * hi:.3g}) to factor A + shift*I", SingularMatrixWarning, stacklevel=4)
    elif method == "ldl" and growth > GROWTH_RETRY:
        warnings.warn(
            f"LDL^T element growth {growth:.3g} at row {stats.get('growth_row')} even with Bunch-Kaufman pivoting "
            f"across the remaining matrix: the relative backward error may reach {growth * 1.1e-16:.1g} of max|A|",
            GrowthWarning, stacklevel=4)
    return LogdetResult(
        sign=sign, logabsdet=logabsdet, n=n, tile_size=b, method=method,
        super_panels=summary.get("super_panels", 0) + run.get("splits", 0) + resumed_panels,
        panels_computed=run["computed"], tasks=run["tasks"], seconds=time.perf_counter() - t_start,
        bytes_read=int(summary.get("bytes_read", 0)), bytes_written=int(summary.get("bytes_written", 0)),
        memory_budget=int(budget), peak_memory_estimate=int(summary.get("peak_memory", 0)),
        scale=scale, shift=shift_summary(shift), max_abs_L=float(stats.get("max_abs_L") or 0.0),
        min_abs_d=float(lo) if lo is not None else float("nan"), max_abs_d=float(hi) if hi is not None else float("nan"),
        growth=growth, pivot_groups=tuple(tuple(p) for p in stats.get("pivot_groups", [])),
        singular_at=run["singular_at"], store=ms.url if ms is not None else None, device=device,
        cached=factor is not None, kron_outputs=d, log_d=log_d, sign_d=sign_d,
        leading_minor=run.get("leading_minor") if log_d is not None else None,
    )


def _record(ms, res: LogdetResult) -> None:
    try:
        results = dict(ms.attrs.get("results", {}))
        results[f"logdet-{res.method}"] = res.to_dict()
        ms.update_attrs(results=results)
    except Exception as e:  # a read-only store still returns its result
        logger.info("could not record the result in %s: %s", ms.url, e)
