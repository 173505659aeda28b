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

from dataclasses import dataclass, field

from dask.utils import format_bytes

from ..errors import MemoryBudgetError, arg, opt


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
        return _chunks(self.n_tiles, k0, k1, self.threads)

    def panel_memory(self, k0: int, k1: int) -> int:
        return _panel_memory(self.n, self.tile_size, self.itemsize, self.threads, k0, k1,
                             self.row_chunks(k0, k1), self.method == "ldl")

    def panel_tasks(self, k0: int, k1: int) -> int:
        """Tasks of one super-panel's graph (pivoting inside each tile; tests check it against the graph)."""
        nt = self.n_tiles
        ldl = self.method == "ldl"
        tasks = 0
        for k in range(k0, k1):
            tasks += 3 + (nt - k - 1)                # factor, info, L; solves below
            tasks += (nt - k) * (ldl + 1)            # growth stats (LDL^T); write (or in memory max|L|)
            for j in range(k + 1, k1):
                tasks += (nt - j) + ldl              # updates of column j, one D-scaled tile
        reads = sum(nt - k for k in range(k0, k1))
        if k0 > 0:
            chunks = self.row_chunks(k0, k1)
            tasks += chunks + reads + ldl * chunks   # updates, getitems, max|A| of each row block
        else:
            tasks += reads * (1 + 2 * ldl)           # reads (LDL^T: and their tile, max|A| getitems)
        return tasks + ldl                           # the growth check

    def summary(self) -> dict:
        """Tasks, flops, bytes moved and peak memory, for ``--dry-run``."""
        b, n, nt, s = self.tile_size, self.n, self.n_tiles, self.itemsize
        sizes = _tile_sizes(n, b)
        starts = [sum(sizes[:i]) for i in range(nt)]
        flops = 0.0
        read_A = read_L = written = 0
        for k0, k1 in self.panels:
            c, W = starts[k0], sum(sizes[k0:k1])
            rows = n - c
            flops += 2.0 * rows * W * c                                   # left-looking GEMMs
            flops += rows * W * W - 2.0 * W ** 3 / 3                      # in-panel factorization
            read_A += (rows * W - W * (W - b) // 2) * self.storage_itemsize
            if c:
                chunks = self.row_chunks(k0, k1)
                read_L += (rows * c + (chunks - 1) * W * c) * s
            if self.write_factor:
                written += (rows * W - W * (W - b) // 2) * s
        peak = max((self.panel_memory(k0, k1) for k0, k1 in self.panels), default=0)
        return {
            "n": n, "tile_size": b, "method": self.method, "tiles": nt,
            "super_panels": self.n_panels, "panel_width": min(self.panel_tiles * b, n),
            "resume_from_column": self.start_column,
            "tasks": sum(self.panel_tasks(*p) for p in self.panels),
            "flops": flops, "bytes_read": read_A + read_L, "bytes_read_matrix": read_A,
            "bytes_read_factor": read_L, "bytes_written": written,
            "budget": self.budget, "peak_memory": peak,
            "peak_memory_per_worker": peak // max(self.workers, 1),
            "workers": self.workers, "threads": self.threads,
        }

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """The plan in words (what ``--dry-run`` prints; also ``str(plan)``)."""
        s = self.summary()
        if not self.panels and self.start_column >= self.n_tiles:
            return (f"exact logdet plan: n={s['n']}, tile_size={s['tile_size']}, method={s['method']}\n"
                    f"  nothing to compute: the store holds the complete factor for these settings, so logdet "
                    f"returns its cached result ({arg('overwrite', True)} factors it again)")
        return "\n".join([
            f"exact logdet plan: n={s['n']}, tile_size={s['tile_size']}, method={s['method']}",
            f"  super-panels: {s['super_panels']} of width {s['panel_width']}"
            + (f" (resuming at tile column {s['resume_from_column']})" if s["resume_from_column"] else ""),
            f"  tasks: {s['tasks']}",
            f"  flops: {s['flops']:.3e}",
            f"  bytes read: {format_bytes(s['bytes_read'])} (matrix {format_bytes(s['bytes_read_matrix'])}, "
            f"factor {format_bytes(s['bytes_read_factor'])}); written: {format_bytes(s['bytes_written'])}",
            f"  peak memory: {format_bytes(s['peak_memory'])} in all, "
            f"{format_bytes(s['peak_memory_per_worker'])} per worker ({s['workers']} workers, "
            f"{s['threads']} threads); budget {format_bytes(s['budget'])}",
        ])


def _panel_memory(n, b, itemsize, threads, k0, k1, chunks, ldl=True) -> int:
    sizes = _tile_sizes(n, b)
    nt = len(sizes)
    W = sum(sizes[k0:k1])
    panel = sum(sizes[i] * sizes[k] for k in range(k0, k1) for i in range(k, nt))
    rows = sum(sizes[k0:])
    work = b * b * 3                                   # a tile kernel's temporaries
    if k0 > 0:
        h = -(-rows // chunks)
        work = max(work, _workspace(h, W, b, ldl))
    ld_tiles = W * b if ldl else 0                     # D-scaled tiles of one column
    return int((panel + threads * work + ld_tiles) * itemsize)


def _workspace(h: int, W: int, b: int, ldl: bool) -> int:
    """Entries one update task streams: L rows of its block, the top block, its D-scaled copy."""
    return (h + (2 if ldl else 1) * W) * b


MIN_SUGGESTED_TILE = 32  # smaller tiles would be dominated by per-task overhead


def make_plan(n: int, tile_size: int, itemsize: int, method: str, budget: float, threads: int,
              workers: int = 1, start_column: int = 0, write_factor: bool = True,
              max_tasks: int = 100_000, storage_itemsize: int | None = None, store_tiles: bool = True,
              store_url: str | None = None) -> Plan:
    """Choose the widest super-panel that fits ``budget`` bytes (and ``max_tasks`` per graph).

    ``store_tiles``: the tiles are a store's (fixed, at ``store_url``), so a MemoryBudgetError
    advises copying the store to smaller tiles; otherwise it advises ``tile_size=``.
    """
    b = tile_size
    nt = -(-n // b)
    budget = int(budget)
    threads = max(int(threads), 1)
    ldl = method == "ldl"

    def fits(w):
        return all(_panel_memory(n, b, itemsize, threads, k0, min(k0 + w, nt),
                                 _chunks(nt, k0, min(k0 + w, nt), threads), ldl) <= budget
                   for k0 in _starts(start_column, nt, w)[:2])

    w = nt
    if not fits(w):
        lo, hi = 1, nt
        if not fits(1):
            need = _panel_memory(n, b, itemsize, threads, min(1, nt - 1), min(2, nt),
                                 _chunks(nt, min(1, nt - 1), min(2, nt), threads), ldl)
            need = max(need, _panel_memory(n, b, itemsize, threads, 0, 1, 1, ldl))
            smaller, hi = 0, b - 1            # the largest tile edge whose first column fits (memory grows with it)
            lo = MIN_SUGGESTED_TILE
            while lo <= hi:
                mid = (lo + hi) // 2
                if max(_panel_memory(n, mid, itemsize, threads, 0, 1, 1, ldl),
                       _panel_memory(n, mid, itemsize, threads, 1, 2, _chunks(-(-n // mid), 1, 2, threads), ldl)
                       if n > mid else 0) <= budget:
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
                f"this {n} x {n} matrix with {b}-row tiles on {threads} thread{'s' if threads > 1 else ''}: the "
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
    plan = Plan(n, b, itemsize, method, budget, threads, workers, w, start_column, (), write_factor, si)
    while w > 1 and max((plan.panel_tasks(k0, min(k0 + w, nt))
                         for k0 in _starts(start_column, nt, w)[:1]), default=0) > max_tasks:
        w = max(1, int(w * 0.8))
        plan = Plan(n, b, itemsize, method, budget, threads, workers, w, start_column, (), write_factor, si)
    panels = tuple((k0, min(k0 + w, nt)) for k0 in _starts(start_column, nt, w))
    return Plan(n, b, itemsize, method, budget, threads, workers, w, start_column, panels, write_factor, si)


def _starts(start, nt, w):
    return list(range(start, nt, max(w, 1)))


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


