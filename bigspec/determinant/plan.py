"""Plan the out-of-core factorization: super-panel width, row chunks, and its cost.

The memory budget fixes the super-panel width W (a multiple of the tile size): the panel
(tiles at or below its diagonal) plus each thread's streaming workspace must fit
(Ameli et al. 2025, arXiv:2503.04424). W = n when the matrix fits.

Examples
--------
>>> from bigspec.determinant.plan import make_plan
>>> p = make_plan(n=10_000, tile_size=1000, itemsize=8, method="cholesky",
...               budget=300e6, threads=2)
>>> p.panel_tiles, p.n_panels
(3, 4)
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from functools import cached_property

from dask.utils import format_bytes

from ..errors import ArgumentError, MemoryBudgetError, arg, opt


def _tile_sizes(n: int, b: int) -> list[int]:
    nt = -(-n // b)
    return [min(b, n - i * b) for i in range(nt)]


@dataclass(frozen=True)
class Plan:
    """What the factorization will do and cost; ``dry_run`` prints it."""

    n: int
    tile_size: int
    itemsize: int
    method: str
    budget: int
    threads: int
    workers: int
    panel_tiles: int
    start_column: int = 0               # tile columns already factored (resume)
    panels: tuple = field(default=())   # (first tile col, stop tile col) per panel to run
    write_factor: bool = True
    storage_itemsize: int = 8           # bytes per stored entry (tiles are factored in float64)
    pure: bool = False                  # tasks copy what they update (a distributed cluster may rerun them)
    max_tasks: int = 100_000            # bigspec.max-graph-tasks when planned
    update_tiles: int = 1               # earlier tile columns per left-looking update task
    granularity: str = "block"          # "tile", "block" or "panel" (see GRANULARITIES)
    #: the machine profile its predicted seconds use (:func:`bigspec.perfmodel.resolve_profile`; None: the
    #: dask config's when the summary is first made)
    profile: object = field(default=None, compare=False, repr=False)

    @property
    def n_tiles(self) -> int:
        return -(-self.n // self.tile_size)

    @property
    def n_panels(self) -> int:
        return len(self.panels)

    @property
    def in_memory(self) -> bool:
        return self.panel_tiles >= self.n_tiles

    def row_chunks(self, k0: int, k1: int) -> int:
        """Row blocks of a panel's left-looking update (parallelism vs re-reading the top)."""
        return _row_blocks(self.granularity, self.n_tiles, k0, k1, self.threads, self.workers)

    def panel_memory(self, k0: int, k1: int) -> int:
        return _panel_memory(self.n, self.tile_size, self.itemsize, self.threads, k0, k1,
                             self.row_chunks(k0, k1), self.method == "ldl", self.workers, self.pure,
                             self.update_tiles)

    def widest_group(self, k0: int, k1: int) -> int:
        """Tile columns of the widest pivot group one worker can hold beside its share of the panel."""
        b = self.tile_size
        avail = (self.budget - self.panel_memory(k0, k1)) / max(self.workers, 1)
        P = math.isqrt(max(int(avail // (3 * self.itemsize)), 0))  # the block, its strips, LAPACK
        return max(1, min(k1 - k0, P // b))

    def group_memory(self, k0: int, k1: int) -> int:
        """Bytes a pivot group wider than a tile holds besides the panel (its block, strips, LAPACK's
        workspace), on every worker."""
        g = self.first_group(k0, k1)
        P = min(g * self.tile_size, self.n - k0 * self.tile_size)
        return 0 if g <= 1 else 3 * P * P * self.itemsize * max(self.workers, 1)

    def first_group(self, k0: int, k1: int) -> int:
        """Tile columns per pivot group when a panel is first factored.

        LDL^T: one tile (pivoting across tiles only where growth asks for it). Cholesky with
        coarse tasks ("panel"): its diagonal block in one LAPACK call as wide as memory allows
        (fewer, larger tasks). Otherwise one tile: on 2 cores at n = 8192 a group as wide as the
        matrix was 1.4x slower in memory (one potrf task, and nothing read while it runs) and no
        faster out of core (bench/logdet_exact.py).
        """
        return self.widest_group(k0, k1) if self.method == "cholesky" and self.granularity == "panel" else 1

    def panel_tasks(self, k0: int, k1: int) -> int:
        """Tasks of one super-panel's graph (pivoting inside each tile), counted in the graph itself."""
        return self.panel_costs[self.panels.index((k0, k1))].tasks if (k0, k1) in self.panels else \
            _panel_cost(self, k0, k1).tasks

    @cached_property
    def panel_costs(self) -> tuple:
        """The :class:`~bigspec.determinant.graph.Cost` of each panel's graph, built without data."""
        return tuple(_panel_cost(self, k0, k1) for k0, k1 in self.panels)

    @property
    def panel_width(self) -> int:
        """Columns of a super-panel (W)."""
        return min(self.panel_tiles * self.tile_size, self.n)

    @cached_property
    def reread_bound(self) -> float:
        """Bytes of earlier L columns a left-looking schedule of this panel width must read back, n^3 / (6 W)."""
        n, W = self.n - self.start_column * self.tile_size, self.panel_width
        return 0.0 if self.in_memory or n <= 0 else self.itemsize * self.n ** 3 / (6.0 * W)

    def summary(self) -> dict:
        """Tasks, flops, bytes moved and peak memory, for ``--dry-run`` (from the graphs themselves)."""
        return dict(self._summary)

    @cached_property
    def _summary(self) -> dict:
        from .graph import Cost

        total = sum(self.panel_costs, Cost())
        peak = max((self.panel_memory(k0, k1) + self.group_memory(k0, k1) for k0, k1 in self.panels), default=0)
        largest = max((c.tasks for c in self.panel_costs), default=0)
        counts = {
            "verb": "logdet", "n": self.n, "tile_size": self.tile_size, "method": self.method, "tiles": self.n_tiles,
            "super_panels": self.n_panels, "panel_width": self.panel_width,
            "resume_from_column": self.start_column,
            "tasks": total.tasks, "largest_graph_tasks": largest,
            "flops": total.flops, "bytes_read": total.read_matrix + total.read_factor,
            "bytes_read_matrix": total.read_matrix, "bytes_read_factor": total.read_factor,
            "reread_bound": self.reread_bound, "bytes_written": total.written,
            "budget": self.budget, "peak_memory": peak,
            "peak_memory_per_worker": peak // max(self.workers, 1),
            "workers": self.workers, "threads": self.threads,
            "granularity": self.granularity, "update_span_tiles": self.update_tiles,
        }
        from .. import perfmodel

        counts.update(perfmodel.plan_prediction(self, counts))
        return counts

    def __repr__(self) -> str:
        return self.describe()

    def __str__(self) -> str:
        return self.describe()

    def describe(self, interface: str = "python") -> str:
        """The plan in words (what ``--dry-run`` prints; also ``str(plan)``), options written for
        ``interface`` ("python", "cli" or "job", as :func:`bigspec.errors.render`)."""
        from ..errors import render

        return render(self._describe(), interface)

    def _describe(self) -> str:
        from ..perfmodel import describe_summary

        s = self.summary()
        if not self.panels and self.start_column >= self.n_tiles:
            return (f"exact logdet plan: n={s['n']}, tile_size={s['tile_size']}, method={s['method']}\n"
                    f"  nothing to compute: the store holds the complete factor for these settings, so logdet "
                    f"returns its cached result ({arg('overwrite', True)} factors it again)")
        return "\n".join([
            f"exact logdet plan: n={s['n']}, tile_size={s['tile_size']}, method={s['method']}",
            f"  super-panels: {s['super_panels']} of width {s['panel_width']}"
            + (f" (resuming at tile column {s['resume_from_column']})" if s["resume_from_column"] else ""),
            f"  tasks: {s['tasks']}, {self.granularity} granularity (bigspec.task-granularity)"
            + (f", left-looking updates over spans of {self.update_tiles} tile columns" if self.update_tiles > 1 else "")
            + (f" (the largest graph, {s['largest_graph_tasks']}, is above "
                                       f"bigspec.max-graph-tasks = {self.max_tasks}: the whole matrix fits "
                                       f"in memory, so it is one super-panel)"
                                       if s["largest_graph_tasks"] > self.max_tasks else ""),
            f"  flops: {s['flops']:.3e}",
            f"  bytes read: {format_bytes(s['bytes_read'])} (matrix {format_bytes(s['bytes_read_matrix'])}, "
            f"factor {format_bytes(s['bytes_read_factor'])}"
            + (f", {s['bytes_read_factor'] / s['reread_bound']:.2f}x the left-looking n^3/(6W) "
               f"{format_bytes(int(s['reread_bound']))}" if s["reread_bound"] else "")
            + f"); written: {format_bytes(s['bytes_written'])}",
            f"  peak memory: {format_bytes(s['peak_memory'])} in all, "
            f"{format_bytes(s['peak_memory_per_worker'])} per worker ({s['workers']} workers, "
            f"{s['threads']} threads); budget {format_bytes(s['budget'])}",
            f"  {describe_summary(s)}",
        ])


#: the shared "top" blocks (a panel's rows of one earlier tile column) each worker is planned to hold at
#: once: the one its row blocks update with (the next one overlaps it only while the slowest block finishes)
TOPS_IN_FLIGHT = 1


def _panel_memory(n, b, itemsize, threads, k0, k1, chunks, ldl=True, workers=1, pure=False, span=1) -> int:
    """Peak bytes of one super-panel: its tiles, each thread's workspace, the shared top blocks.

    ``span``: earlier tile columns per left-looking update task (its L rows and the shared
    top blocks are ``span`` tiles wide).
    """
    sizes = _tile_sizes(n, b)
    nt = len(sizes)
    W = sum(sizes[k0:k1])
    panel = sum(sizes[i] * sizes[k] for k in range(k0, k1) for i in range(k, nt))
    rows = sum(sizes[k0:])
    work = threads * b * b * 3                         # in-panel phase: a tile kernel's temporaries per thread
    if k0 > 0:                                         # left-looking phase: L rows per thread, shared tops
        h = -(-rows // chunks)                         # rows of a row block (on average)
        cols = min(span, k0) * b
        shared = TOPS_IN_FLIGHT * min(max(workers, 1), chunks) * (2 if ldl else 1) * W * cols
        # one update task per row block: no more than ``chunks`` of them hold a workspace at once
        work = max(work, min(threads, chunks) * _workspace(h, W, cols, pure) + shared)
    ld_tiles = W * b if ldl else 0                     # D-scaled tiles of one column
    return int((panel + work + ld_tiles) * itemsize)


def _shown_up(nbytes: int) -> int:
    """``nbytes`` rounded up to the figure :func:`dask.utils.format_bytes` shows for it (2 decimals),
    so that a suggested ``memory=`` of that figure is not below it."""
    from dask.utils import format_bytes, parse_bytes

    value, unit = format_bytes(int(nbytes)).split()
    while parse_bytes(f"{value}{unit}") < nbytes:
        value = f"{float(value) + 0.01:.2f}"
    return max(int(nbytes), parse_bytes(f"{value}{unit}"))


def _workspace(h: int, W: int, cols: int, pure: bool) -> int:
    """Entries one left-looking update task holds besides the panel: its block's L rows of the
    ``cols`` earlier columns it applies and, on a distributed cluster (``pure``), the copy of
    its row block (``h x W``) that each update step makes (measured on a 2-process LocalCluster
    at n = 8192: uncounted, the working set reached 1.6-1.7x a quarter budget; counted, 1.4x.
    The rest is each worker process's own: transfer buffers and task state, not modelled).
    """
    return h * cols + (h * W if pure else 0)


def _panel_cost(plan, k0, k1):
    from .graph import panel_cost

    return panel_cost(plan, k0, k1, plan.write_factor)


MIN_SUGGESTED_TILE = 32  # smaller tiles would be dominated by per-task overhead
#: columns of earlier L one left-looking update task applies, where memory allows (GEMMs with a
#: longer inner dimension; fewer tasks and reads)
UPDATE_COLUMNS = 2048


def make_plan(n: int, tile_size: int, itemsize: int, method: str, budget: float, threads: int,
              workers: int = 1, start_column: int = 0, write_factor: bool = True,
              max_tasks: int = 100_000, storage_itemsize: int | None = None, store_tiles: bool = True,
              store_url: str | None = None, pure: bool = False, granularity: str = "block") -> Plan:
    """Choose the widest super-panel that fits ``budget`` bytes (and, out of core, ``max_tasks`` per graph).

    The panel count follows the budget: when the whole lower triangle (and the tile kernels'
    workspace) fits, the plan is one super-panel in memory, whatever its task count. Out of
    core, the panel is narrowed until its graph has at most ``max_tasks`` tasks. Every
    panel's planned peak memory is within ``budget``.

    ``store_tiles``: the tiles are a store's (fixed, at ``store_url``), so a MemoryBudgetError
    advises copying the store to smaller tiles; otherwise it advises ``tile_size=``.
    ``pure``: the graphs run on a distributed cluster (tasks copy what they update).
    ``granularity``: how much work one task does (:data:`GRANULARITIES`).
    """
    b = tile_size
    nt = -(-n // b)
    budget = int(budget)
    threads = max(int(threads), 1)
    ldl = method == "ldl"

    if granularity not in GRANULARITIES:
        raise ArgumentError(f"{arg('granularity', granularity)} must be one of {', '.join(GRANULARITIES)}")

    def memory(k0, k1, tile=b, tiles=nt):
        return _panel_memory(n, tile, itemsize, threads, k0, k1,
                             _row_blocks(granularity, tiles, k0, k1, threads, workers), ldl, workers, pure)

    def fits(w):
        # the first panel holds the most tiles; of the later ones (each reading earlier columns back) the
        # first has the most rows below it
        return all(memory(k0, min(k0 + w, nt)) <= budget for k0 in _starts(start_column, nt, w)[:2])

    w = nt
    if not fits(w):
        lo, hi = 1, nt
        if not fits(1):
            # rounded up to what format_bytes shows, so the suggested figure itself fits
            need = max(memory(min(1, nt - 1), min(2, nt)), memory(0, 1))
            need = _shown_up(need)
            smaller, hi = 0, b - 1            # the largest tile edge whose first column fits (memory grows with it)
            lo = MIN_SUGGESTED_TILE
            while lo <= hi:
                mid = (lo + hi) // 2
                if max(memory(0, 1, mid, -(-n // mid)),
                       memory(1, 2, mid, -(-n // mid)) if n > mid else 0) <= budget:
                    smaller, lo = mid, mid + 1
                else:
                    hi = mid - 1
            if smaller < MIN_SUGGESTED_TILE:
                fix = f"no tile size of {MIN_SUGGESTED_TILE} or more fits this budget"
            elif store_tiles:
                src = store_url or "STORE"
                new = f"{src.rstrip('/').removesuffix('.zarr')}-{smaller}.zarr"
                fix = (f"or smaller tiles: a store's tiles are fixed when it is written, so write a copy with "
                       f"{smaller}-row tiles, which fit: "
                       + opt(f"bigspec.from_array({src!r}, {new!r}, tile_size={smaller})",
                             f"`bigspec import {src} {new} --tile-size {smaller}`"))
            else:
                fix = f"or smaller tiles: {arg('tile_size', smaller)} would fit"
            raise MemoryBudgetError(
                f"memory budget {format_bytes(budget)} is too small for even one tile column of "
                f"this {n} x {n} matrix with {b}-row tiles on "
                + (f"{workers} workers ({threads} threads in all, each with its own workspace)" if workers > 1 else
                   f"{threads} thread{'s' if threads > 1 else ''}") + ": the "
                f"minimum is {format_bytes(need)}; raise it ({arg('memory', format_bytes(need).replace(' ', ''))} "
                f"or more)"
                f"{', or use fewer threads (' + opt('workers with fewer threads', '--workers 1 --threads 1') + ')' if threads > 1 else ''}"
                f"; {fix}",
                budget=budget, minimum=need,
            )
        while lo < hi:                                  # largest w that fits
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        w = lo
    si = itemsize if storage_itemsize is None else int(storage_itemsize)

    def plan_of(w, panels=()):
        return Plan(n, b, itemsize, method, budget, threads, workers, w, start_column, panels, write_factor, si,
                    pure, max_tasks, granularity=granularity)


    if w < nt:   # out of core: the widest panel whose graph has at most max_tasks tasks (estimated, then counted)
        while w > 1 and _estimate_tasks(n, b, ldl, threads, start_column, min(start_column + w, nt)) > max_tasks:
            w = max(1, int(w * 0.8))
        while w > 1 and max(_panel_cost(plan_of(w), k0, min(k0 + w, nt)).tasks
                            for k0 in _starts(start_column, nt, w)[:2]) > max_tasks:
            w = max(1, int(w * 0.8))
    while True:   # the plan never exceeds its own budget (the search checks the first two panels)
        panels = tuple((k0, min(k0 + w, nt)) for k0 in _starts(start_column, nt, w))
        plan = plan_of(w, panels)
        if w == 1 or all(plan.panel_memory(k0, k1) <= budget for k0, k1 in panels):
            break
        w -= 1
    if plan.in_memory or granularity == "tile":
        return plan
    # the widest update span (up to UPDATE_COLUMNS columns; coarse: all earlier columns) that the
    # memory the panel leaves allows
    import dataclasses

    best = plan
    for span in range(2, (nt if granularity == "panel" else max(1, UPDATE_COLUMNS // b)) + 1):
        wider = dataclasses.replace(plan, update_tiles=span)
        if any(wider.panel_memory(k0, k1) > budget for k0, k1 in panels):
            break
        best = wider
    return best


def _estimate_tasks(n, b, ldl, threads, k0, k1) -> int:
    """About the tasks of one super-panel's graph (narrows a panel cheaply before it is counted exactly)."""
    nt = -(-n // b)
    tasks = 0
    for k in range(k0, k1):
        tasks += 3 + (nt - k - 1) + (nt - k) * (ldl + 1)
        for j in range(k + 1, k1):
            tasks += (nt - j) + ldl
    reads = sum(nt - k for k in range(k0, k1))
    if k0 > 0:
        chunks = _chunks(nt, k0, k1, threads)
        tasks += k0 + chunks * (k0 + 1 + ldl) + reads
    else:
        tasks += reads * (1 + 2 * ldl)
    return tasks + ldl


def _starts(start, nt, w):
    return list(range(start, nt, max(w, 1)))


#: how much work one task does: "tile" (one tile kernel per task, as dask.array.linalg's graphs),
#: "block" (left-looking updates over spans of up to UPDATE_COLUMNS columns; the CPU default) or
#: "panel" (coarse: one row block per worker, updated over spans of as many earlier columns as
#: memory allows, and Cholesky's diagonal block in one LAPACK call as wide as memory allows, as
#: MAGMA's out-of-core multi-GPU routines work; the GPU default, where a task's overhead is many
#: GEMMs' time)
GRANULARITIES = ("tile", "block", "panel")


def task_granularity(device: str = "cpu") -> str:
    """``bigspec.task-granularity``, or the device's default ("panel" on GPU workers, else "block")."""
    from .. import config

    value = config.get("task-granularity", None)
    if value is None:
        return "panel" if device == "gpu" else "block"
    if value not in GRANULARITIES:
        raise ArgumentError(f"the dask config bigspec.task-granularity = {value!r} must be one of "
                            f"{', '.join(GRANULARITIES)} (or null for the device's default)")
    return value


def _row_blocks(granularity, nt, k0, k1, threads, workers):
    if granularity == "panel":
        return max(1, min(nt - k0, max(workers, 1)))
    return _chunks(nt, k0, k1, threads)


def _chunks(nt, k0, k1, threads):
    rows = nt - k0
    w = k1 - k0
    return max(1, min(rows, max(threads, min(2 * threads, rows // max(w, 1)))))


def memory_budget(memory, client=None, workers_memory: int | None = None) -> int:
    """The factorization's budget in bytes: ``memory`` (a size, or "auto"/None for ``bigspec.memory``).

    "auto" is ``bigspec.memory-fraction`` (default 0.5) of the workers' memory with a client,
    else of the memory available now on this machine.
    """
    from .. import config
    from ..validate import check_memory

    memory = check_memory(config.get("memory", "auto") if memory is None else memory)
    if memory is None or memory == "auto":
        frac = float(config.get("memory-fraction", 0.5))
        if client is not None and workers_memory:
            return int(workers_memory * frac)
        import psutil

        return int(psutil.virtual_memory().available * frac)
    return memory


def fit_tile_size(n: int, budget: int, threads: int = 1, multiple: int = 1, preferred: int | None = None,
                  method: str = "ldl") -> int:
    """The tile edge a new store of order ``n`` gets when none is given.

    ``preferred`` (default ``bigspec.tile-size``), made smaller when the factorization could
    not hold one tile column of it within ``budget`` bytes on ``threads`` threads, so the store
    can always be factored out of core under that budget. A multiple of ``multiple`` (matrix
    rows per data point), at least ``MIN_SUGGESTED_TILE`` rows where n allows.

    Examples
    --------
    >>> fit_tile_size(3000, budget=2**30)
    1024
    >>> fit_tile_size(100_000, budget=300 * 2**20, threads=2)   # 100k rows: narrower tiles fit 300 MiB
    256
    """
    from .. import config

    b = int(preferred or config.get("tile-size", 1024))
    b = max(multiple, min(b, n) // multiple * multiple)
    while b > max(MIN_SUGGESTED_TILE, multiple):
        try:
            make_plan(n, b, 8, method, budget, threads)
            break
        except MemoryBudgetError:
            b = max(multiple, (b // 2) // multiple * multiple)
    return b


def flops(n: int) -> float:
    """Flops of a dense Cholesky of order n (n^3 / 3), the reference for GFLOP/s."""
    return n ** 3 / 3.0


