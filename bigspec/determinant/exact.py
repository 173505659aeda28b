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
import warnings

import numpy as np
import zarr
from dask.utils import format_bytes

from .. import config
from ..backend import check_device, freed_tiles_leave_the_process
from ..cluster import require_visible, resolve_client, resources
from ..errors import (
    CorruptFactorError,
    ArgumentError,
    ArgumentTypeError,
    GrowthWarning,
    MemoryBudgetError,
    SingularMatrixWarning,
    TileSizeError,
    UnstableFactorizationError,
    again,
    arg,
    kw,
    opt,
)
from ..form import kron_outputs
from ..matrix import as_matrix, tile_source
from ..progress import want_progress
from ..results import LogdetResult
from ..runner import Runner
from ..store import FactorStore, check_tile_size
from ..validate import check_flag, check_scale_shift, shift_summary
from . import EXACT_METHODS as METHODS
from . import tiles
from .graph import panel_graph
from .plan import make_plan, memory_budget, task_granularity
from .tasks import COMPUTE_DTYPE, NeedsPivoting, shift_slice

logger = logging.getLogger(__name__)

GROWTH_RETRY = 1e6   # above this, a panel is factored again with pivoting across tiles
GROWTH_LIMIT = 1e10  # above this, after the widest pivoting: a warning (full pivoting) or an error


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
                 dry_run=False, storage_options=None, triangle=None, missing_chunks="error", plan=None):
    """Exact log-determinant by tiled LDL^T / Cholesky; see :func:`bigspec.logdet`.

    ``plan``: a :class:`~bigspec.determinant.plan.Plan` of :func:`plan_logdet` for this matrix,
    whose method, tile size, budget, threads and super-panel width are used.
    """
    t_start = time.perf_counter()
    checkpoint = check_flag(checkpoint, "checkpoint", allow_none=True)
    overwrite, dry_run = check_flag(overwrite, "overwrite"), check_flag(dry_run, "dry_run")
    if plan is not None:
        method, tile_size, memory = _check_plan(plan, method, tile_size, memory)
    method = method or config.get("method", "ldl")
    if method not in METHODS:
        raise ArgumentError(f"{arg('method')} must be one of {', '.join(METHODS)} for the exact logdet, got {method!r}")
    check_device(device)
    granularity = plan.granularity if plan is not None else task_granularity(device)
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
    if plan is not None and plan.n != n:
        raise ArgumentError(f"{kw('plan')} is for a matrix of order {plan.n}, and this one is of order {n}: plan this "
                            f"matrix with " + opt("bigspec.plan_logdet(A, ...)", "`bigspec logdet A --dry-run`"))
    scale, shift = check_scale_shift(scale, shift, n)
    workers, threads, worker_memory = resources(client)
    blas_threads = None
    if client is None:
        threads, blas_threads = local_threads(threads)
    if plan is not None and plan.threads != threads:   # the plan's task threads (BLAS gets the cores left)
        cores = threads * (blas_threads or 1)
        threads = plan.threads
        blas_threads = max(1, cores // threads) if client is None else None
    budget = memory_budget(memory, client, worker_memory)
    digest = _shift_digest(scale, shift)
    max_tasks = config.get("max-graph-tasks", 100_000)
    itemsize = COMPUTE_DTYPE.itemsize
    # plan once without resume to learn whether the matrix fits in one panel
    while True:
        try:
            probe = make_plan(n, b, itemsize, method, budget, threads, workers, max_tasks=max_tasks,
                              storage_itemsize=m.dtype.itemsize, store_tiles=ms is not None, pure=client is not None, granularity=granularity,
                              store_url=ms.url if ms is not None else None)
            break
        except MemoryBudgetError:
            if client is not None or threads <= 1 or config.get("threads", None) or plan is not None:
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
            _, differs, replace = FactorStore.check(meta, n, b, method, digest, overwrite)   # refuses as a run would
            start = int(meta.get("columns_done", 0)) if meta and not differs and not replace else 0
        return _as_planned(make_plan(n, b, itemsize, method, budget, threads, workers, start_column=start,
                                     write_factor=use_store or not probe.in_memory, max_tasks=max_tasks,
                                     storage_itemsize=m.dtype.itemsize, store_tiles=ms is not None,
                                     pure=client is not None, granularity=granularity), plan)
    from ..lease import hold

    # the factor is written into the store: one writer at a time (a job, or another logdet of it)
    with hold(ms.url, storage_options=storage_options, forceable=False, command=f"bigspec.logdet {method}") \
            if use_store else contextlib.nullcontext():
        factor = None
        if use_store:
            factor = FactorStore(ms.group.require_group("factor"), n, b, method, digest, overwrite)
            ms.sync_metadata()
            if factor.meta.get("complete"):
                return _result(ms=ms, factor=factor, method=method, b=b, budget=budget, device=device, scale=scale,
                               shift=shift, t_start=t_start, dtype=m.dtype)
        start = factor.columns_done if factor is not None else 0
        resumed_panels = int(factor.meta.get("panels_done", 0)) if factor is not None and start else 0
        plan = _as_planned(make_plan(n, b, itemsize, method, budget, threads, workers, start_column=start,
                                     write_factor=factor is not None or not probe.in_memory, max_tasks=max_tasks,
                                     storage_itemsize=m.dtype.itemsize, store_tiles=ms is not None,
                                     pure=client is not None, granularity=granularity), plan)
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
                    factor = FactorStore(zarr.open_group(tmp[-1], mode="w"), n, b, method, digest, True)
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


def plan_logdet(A, *, method=None, memory=None, tile_size=None, shift=0.0, scale=1.0, client=None, checkpoint=None,
                overwrite=False, storage_options=None, triangle=None, missing_chunks="error", device="cpu"):
    """The Plan of the exact log-determinant, computing nothing; see :func:`bigspec.plan_logdet`."""
    return exact_logdet(A, method=method, memory=memory, tile_size=tile_size, shift=shift, scale=scale,
                        client=client, checkpoint=checkpoint, overwrite=overwrite, progress=False, dry_run=True,
                        storage_options=storage_options, triangle=triangle, missing_chunks=missing_chunks,
                        device=device)


def _check_plan(plan, method, tile_size, memory):
    """(method, tile_size, memory) of a run given ``plan=``: the plan's, where the caller's agree."""
    from .plan import Plan

    if not isinstance(plan, Plan):
        raise ArgumentTypeError(f"{kw('plan')} must be a Plan from " + opt("bigspec.plan_logdet(A, ...)",
                                                                           "`bigspec logdet A --dry-run`")
                                + f"; got {type(plan).__name__}")
    given = {"method": method, "tile_size": tile_size,
             "memory": None if memory is None or memory == "auto" else memory}
    planned = {"method": plan.method, "tile_size": plan.tile_size, "memory": plan.budget}
    for key, value in given.items():
        if value is None:
            continue
        if key == "memory":
            from ..validate import check_memory

            value = check_memory(value)
        if value != planned[key]:
            raise ArgumentError(
                f"{arg(key, value)} differs from the plan's ({planned[key]!r}); omit {arg(key)} to run the plan, or "
                f"make a new plan with " + opt(f"bigspec.plan_logdet(A, {key}={value!r})",
                                               "`bigspec logdet A --dry-run`"))
    return plan.method, plan.tile_size, plan.budget


def _as_planned(plan, given):
    """``plan`` with the super-panel width and update span of the caller's plan ``given`` (from where
    this run starts)."""
    if given is None or (given.panel_tiles, given.update_tiles) == (plan.panel_tiles, plan.update_tiles):
        return plan
    import dataclasses

    nt, w = plan.n_tiles, given.panel_tiles
    return dataclasses.replace(plan, panel_tiles=w, update_tiles=given.update_tiles,
                               panels=tuple((k0, min(k0 + w, nt)) for k0 in range(plan.start_column, nt, w)))


def _pivot_split(plan, k0, k1, workers):
    """(k1', group): the end of a narrower super-panel from ``k0`` and its widest pivot group.

    A wide super-panel leaves little memory for pivoting, so a panel that needs pivoting
    across tiles is factored narrower when that lets its pivot group be wider (the columns
    after ``k1'`` become the next super-panel; resuming works by columns, so this is safe).
    """
    best = (k1, plan.widest_group(k0, k1))
    for w in range(k1 - k0 - 1, 0, -1):
        if best[1] >= w + 1:          # a narrower panel cannot hold a wider group
            break
        g = plan.widest_group(k0, k0 + w)
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
                            (k1, plan.widest_group(k0, k1))) if ldl else (k1, 1)
        group = plan.first_group(k0, k1)
        offset, tried, widened = 0, set(), False
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
    if shift is not None and float(shift_slice(shift, [(row, row + 1)], 0) if np.ndim(shift) else shift) != 0:
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
    if math.isnan(logabsdet):          # never a silent NaN: the pivots themselves are not numbers
        where = f"the factor in {ms.url}/factor" if ms is not None and factor is not None else "the factorization"
        raise CorruptFactorError(
            f"{where} gives log|det| = nan: pivots that are not numbers (tiles written by two runs at once, or damaged "
            f"tiles); nothing is returned. Factor again from scratch with {arg('overwrite', True)}")
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
