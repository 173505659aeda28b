"""Task graphs of the exact factorization: one per super-panel, and what each one costs.

The graph builder is the one source of the plan's counts: :func:`panel_cost` builds a
panel's graph without data and returns its tasks, flops and bytes, so ``--dry-run``
reports the graphs that run.

A super-panel of tile columns ``k0:k1`` (the left-looking scheme of memdet; Ameli et al.
2025, arXiv:2503.04424):

* the first (``k0 == 0``) reads its tiles one task each;
* a later one reads its rows in row blocks, and applies the updates of the earlier tile
  columns to each block as a chain of tasks, one per span of ``plan.update_tiles`` earlier
  columns (wider spans: fewer tasks, fewer and larger reads, GEMMs with a longer inner
  dimension, more memory per task). The panel's own rows of a span (its "top") are read once
  by one task and shared by every block's update; each block reads only its own rows of L
  below the panel. The L entries each panel
  reads back are then exactly those it needs, ``(n - c) * c`` for a panel at column ``c``,
  which sums to the left-looking bound ``n^3 / (6 W)`` for panels of width ``W``;
* then it is factored in memory, right-looking over pivot groups, and its L tiles written.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np

from . import tasks
from .tasks import COMPUTE_DTYPE


@dataclass
class Cost:
    """What a graph does: its tasks, flops, and the bytes its tasks read and write in the stores."""

    tasks: int = 0
    flops: float = 0.0
    read_matrix: int = 0        # bytes of the matrix's tiles read (at the storage dtype)
    read_factor: int = 0        # bytes of earlier L columns read back from the factor store
    written: int = 0            # bytes of L written to the factor store

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.tasks + other.tasks, self.flops + other.flops, self.read_matrix + other.read_matrix,
                    self.read_factor + other.read_factor, self.written + other.written)


class PanelGraph:
    """The task graph of one super-panel, the keys the client gathers from it, and its cost."""

    def __init__(self, dsk, infos, check, outputs, groups, cost: Cost):
        self.dsk, self.infos, self.check, self.outputs, self.groups = dsk, infos, check, outputs, groups
        self.cost = cost

    @property
    def keys(self) -> list:
        return self.infos + ([self.check] if self.check else []) + self.outputs


#: what a graph built only to be counted reads from (no task of it ever runs)
NO_FACTOR = {"L": None, "D": None}


def panel_cost(plan, k0, k1, write) -> Cost:
    """The cost of one super-panel's graph as first factored (``plan.first_group``), from the graph itself."""
    return panel_graph(plan, k0, k1, None, NO_FACTOR, 1.0, None, "cpu", write, plan.first_group(k0, k1)).cost


def panel_graph(plan, k0, k1, source, factor, scale, shift, device, write, group=1, limit=math.inf,
                prior_s=None, prior_scale=0.0, offset=0, pure=False) -> PanelGraph:
    """Task graph of one super-panel with pivot groups of ``group`` tile columns.

    With ``0 < offset < group`` the first group has ``offset`` tiles, which moves every group
    boundary (a 2x2 pivot block that a boundary would split then lies inside a group).
    ``pure``: no task changes its inputs (for a distributed cluster, which may run a task again).
    """
    b, n, nt = plan.tile_size, plan.n, plan.n_tiles
    bounds = [(i * b, min((i + 1) * b, n)) for i in range(nt)]
    size = [r1 - r0 for r0, r1 in bounds]
    itemsize, storage = COMPUTE_DTYPE.itemsize, plan.storage_itemsize
    cost = Cost()
    cholesky = plan.method == "cholesky"
    tok = uuid.uuid4().hex[:8]
    name = {s: f"bigspec-{s}-{tok}" for s in
            ("read", "top", "amax", "update", "tile", "assemble", "strip", "factor", "info", "L", "solve", "scaled",
             "stats", "gate", "store")}
    dsk = {}
    panel = list(range(k0, k1))
    tile, scales = {}, []
    if k0 == 0:
        for k in panel:
            for i in range(k, nt):
                key = (name["read"], i, k)
                d_shift = tasks.shift_slice(shift, bounds, i) if i == k else None
                cost.read_matrix += size[i] * size[k] * storage
                if cholesky:
                    dsk[key] = (tasks.read_tile, source, *bounds[i], *bounds[k], scale, d_shift, device, (i, k))
                    tile[i, k] = key
                    continue
                # the tile is updated in place by its one consumer: its max|A| travels beside it
                dsk[key] = (tasks.read_tile_and_amax, source, *bounds[i], *bounds[k], scale, d_shift, device, (i, k))
                dsk[(name["tile"], i, k, 0)] = (tasks.getitem, key, 0)
                dsk[(name["amax"], i, k)] = (tasks.getitem, key, 1)
                tile[i, k] = (name["tile"], i, k, 0)
                scales.append((name["amax"], i, k))
    else:
        chunks = plan.row_chunks(k0, k1)
        rows_all = list(range(k0, nt))
        rstep = -(-len(rows_all) // chunks)
        t0, t1 = bounds[k0][0], bounds[k1 - 1][1]
        tops = {}
        step = plan.update_tiles
        spans = [(j0, min(j0 + step, k0)) for j0 in range(0, k0, step)]
        for j0, j1 in spans:   # each span of earlier columns' rows of the panel: read once, shared
            tops[j0] = (name["top"], j0)
            dsk[tops[j0]] = (tasks.read_top, factor, panel, j0, j1, bounds, device)
            cost.read_factor += (t1 - t0) * (bounds[j1 - 1][1] - bounds[j0][0]) * itemsize
        for r, s in enumerate(range(0, len(rows_all), rstep)):
            rows = rows_all[s:s + rstep]
            r0, r1 = bounds[rows[0]][0], bounds[rows[-1]][1]
            ukey = (name["read"], r)
            dsk[ukey] = (tasks.read_rows, source, rows, panel, bounds, scale, shift, device)
            pairs = [(i, k) for i in rows for k in panel if i >= k]
            cost.read_matrix += sum(size[i] * size[k] for i, k in pairs) * storage
            pair_flops = 2.0 * sum(size[i] * size[k] for i, k in pairs)
            for j0, j1 in spans:       # the left-looking updates, a span of earlier tile columns at a time
                width = bounds[j1 - 1][1] - bounds[j0][0]
                prev, ukey = ukey, (name["update"], r, j0)
                dsk[ukey] = (tasks.update_rows, prev, tops[j0], factor, rows, panel, j0, j1, bounds, device, pure)
                cost.read_factor += max(r1 - max(r0, t1), 0) * width * itemsize
                cost.flops += pair_flops * width
            for pos, (i, k) in enumerate(pairs):
                key = (name["tile"], i, k, k0)
                dsk[key] = (tasks.getitem, ukey, pos)
                tile[i, k] = key
            if not cholesky:
                dsk[(name["amax"], r)] = (tasks.getitem, ukey, -1)
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
            dsk[diag_in] = (tasks.assemble, [[tile[i, j] for j in range(g0, i + 1)] for i in cols],
                            [bounds[i][1] - bounds[i][0] for i in cols], "C" if cholesky else "F")
        fkey = (name["factor"], g0)
        dsk[fkey] = (tasks.factor_task, diag_in, plan.method, (g0, g0), start, pure, b)
        P = bounds[g1 - 1][1] - start
        cost.flops += P ** 3 / 3.0
        dsk[(name["info"], g0)] = (tasks.diagonal_info, fkey)
        infos.append((name["info"], g0))
        Lkey = (name["L"], g0)
        dsk[Lkey] = (tasks.diagonal_L, fkey)
        strips = {}   # row tile -> (key of its L rows over the group's columns, row offset in it)
        for i in cols:
            strips[i] = (Lkey, bounds[i][0] - start)
        for i in range(g1, nt):
            if g1 - g0 == 1:
                strip_in = tile[i, g0]
            else:
                strip_in = (name["strip"], i, g0)
                dsk[strip_in] = (tasks.hstack, [tile[i, j] for j in cols])
            skey = (name["solve"], i, g0)
            dsk[skey] = (tasks.solve_task, strip_in, fkey, pure)
            cost.flops += float(size[i]) * P * P
            strips[i] = (skey, 0)
        for j in range(g1, k1):   # trailing tiles of the panel, right-looking over groups
            jkey = strips[j][0]
            if cholesky:
                ld = jkey
            else:
                ld = (name["scaled"], j, g0)
                dsk[ld] = (tasks.scaled_task, jkey, fkey)
            for i in range(j, nt):
                key = (name["tile"], i, j, g1)
                dsk[key] = (tasks.update_task, tile[i, j], strips[i][0], ld, i == j, cholesky, pure)
                cost.flops += (1.0 if i == j and cholesky else 2.0) * size[i] * size[j] * P
                tile[i, j] = key
        for i in range(g0, nt):
            src, off = strips[i]
            rows = bounds[i][1] - bounds[i][0]
            if not cholesky:
                skey = (name["stats"], i, g0)
                dsk[skey] = (tasks.stats_task, src, fkey, off, off + rows, i < g1)
                stats.append((i, skey))
            for j in cols:
                if i < j:
                    continue
                okey = (name["store"], i, j)
                lc0 = bounds[j][0] - start
                if write:
                    cost.written += size[i] * size[j] * itemsize
                    writes.append((okey, (tasks.write_L, src, L_array, *bounds[i], *bounds[j], off, lc0, i == j)))
                else:   # in memory: the tile's max|L| (and a tick of the progress bar)
                    writes.append((okey, (tasks.max_abs, src, off, rows, i == j)))
    check = None
    if not cholesky:
        check = (name["gate"], k0)
        dsk[check] = (tasks.gate, [key for _, key in stats], [i for i, _ in stats], scales,
                      np.zeros(n - bounds[k0][0]) if prior_s is None else prior_s, prior_scale,
                      bounds[k0][0], limit)
    outputs = []
    for okey, task in writes:
        dsk[okey] = task + ((check,) if check is not None and task[0] is tasks.write_L else ())
        outputs.append(okey)
    cost.tasks = len(dsk)
    return PanelGraph(dsk, infos, check, outputs, groups, cost)
