"""Task functions of the exact factorization: reads, tile kernels' wrappers, growth check, writes.

Each function is what one task of a super-panel's graph runs (:mod:`bigspec.determinant.graph`
wires them); the BLAS/LAPACK work itself is in :mod:`bigspec.determinant.tiles`. Tasks are
pure functions of their inputs except where noted (in-place tile updates on Dask's threaded
scheduler, see :func:`_own`).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import namespace_of, to_device, to_host
from ..chunkio import read_region
from ..errors import NonFiniteError
from . import tiles

COMPUTE_DTYPE = np.dtype("float64")


class NeedsPivoting(Exception):
    """Internal: a panel's growth is above GROWTH_RETRY; factor it again with wider pivot groups."""

    def __init__(self, growth: float, row: int):
        super().__init__(growth, row)
        self.growth, self.row = growth, row


def read_tile(source, r0, r1, c0, c1, scale, shift, device, index):
    """Read ``scale * A[r0:r1, c0:c1] (+ diag(shift))`` as a fresh C-ordered float64 tile."""
    T = source[r0:r1, c0:c1]
    if T.base is not None or T.dtype != COMPUTE_DTYPE or not (T.flags.c_contiguous and T.flags.writeable):
        T = np.array(T, dtype=COMPUTE_DTYPE, order="C", copy=True)   # a view of an in-memory matrix: copy
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
    """max |T| (the scale that growth is measured against), without a temporary |T|."""
    if not T.size:
        return 0.0
    xp = namespace_of(T)
    return float(max(xp.max(T), -xp.min(T)))


def read_tile_and_amax(*args):
    """[tile, max|tile|]: the tile's one consumer updates it in place, so its scale is taken first."""
    T = read_tile(*args)
    return [T, amax(T)]


def read_rows(source, rows, panel, bounds, scale, shift, device):
    """Read a row block of a super-panel: its tiles (i, k), i >= k, in row-major order, then max|A|.

    The block's left-looking updates follow as a chain of :func:`update_rows` tasks, one per
    earlier tile column.
    """
    out = []
    for i in rows:
        for k in panel:
            if i >= k:
                d_shift = shift_slice(shift, bounds, i) if i == k else None
                out.append(read_tile(source, *bounds[i], *bounds[k], scale, d_shift, device, (i, k)))
    return out + [max((amax(T) for T in out), default=0.0)]


def read_top(factor, panel, j0, j1, bounds, device):
    """The panel's own rows of earlier tile columns ``j0:j1`` of L, and its D-scaled copy.

    Read once per panel and shared by every row block's update (the row blocks below the
    panel read only their own rows of L). Returns ``(L_top, LD_top)``; for Cholesky (no D)
    both are the same array.
    """
    t0, t1 = bounds[panel[0]][0], bounds[panel[-1]][1]
    c0, c1 = bounds[j0][0], bounds[j1 - 1][1]
    L, D = factor["L"], factor.get("D")
    L_top = to_device(np.ascontiguousarray(read_region(L, t0, t1, c0, c1), dtype=COMPUTE_DTYPE), device)
    if D is None:
        return L_top, L_top
    lo = max(c0 - 1, 0)
    D_cols = np.asarray(D[:, lo:c1])
    D_here = D_cols[:, c0 - lo:]

    def column(c):  # one column of L's top block (a 2x2 pivot block crossing a tile edge needs it)
        return to_device(np.asarray(L[t0:t1, c], dtype=COMPUTE_DTYPE), device)

    left = (column(c0 - 1), D_cols[1, 0]) if c0 > 0 and D_cols[1, 0] != 0 else None
    right = (column(c1), D_here[1, -1]) if c1 < t0 and D_here[1, -1] != 0 else None
    return L_top, tiles.scale_by_D_columns(L_top, D_here, left, right)


def update_rows(block, top, factor, rows, panel, j0, j1, bounds, device, pure=False):
    """Apply the left-looking update of earlier tile columns ``j0:j1`` to a row block of a super-panel.

    ``block``: the block's tiles then max|A| (from :func:`read_rows` or the previous update);
    ``top``: :func:`read_top` of the same columns. Rows of the block inside the panel take
    their L rows from ``top``; rows below it read theirs from ``factor`` in one read (each L
    entry is read from the store once per panel). One GEMM per tile of the block, with inner
    dimension the columns' width. Updates the tiles in place unless ``pure``.
    """
    out = [_own(T, pure) for T in block[:-1]]
    L_top, LD_top = top
    t0, t1 = bounds[panel[0]][0], bounds[panel[-1]][1]
    r0, r1 = bounds[rows[0]][0], bounds[rows[-1]][1]
    c0, c1 = bounds[j0][0], bounds[j1 - 1][1]
    s0 = max(r0, t1)
    L_below = to_device(np.ascontiguousarray(read_region(factor["L"], s0, r1, c0, c1), dtype=COMPUTE_DTYPE), device) \
        if r1 > s0 else None
    pos = 0
    for i in rows:
        a0, a1 = bounds[i]
        L_i = L_top[a0 - t0:a1 - t0] if a0 < t1 else L_below[a0 - s0:a1 - s0]
        for k in panel:
            if i >= k:
                b0, b1 = bounds[k][0] - t0, bounds[k][1] - t0
                out[pos] = tiles.update(out[pos], L_i, LD_top[b0:b1], False, False)
                pos += 1
    return out + [block[-1]]


def shift_slice(shift, bounds, i):
    if shift is None:
        return None
    if np.ndim(shift) == 0:
        return float(shift)
    return np.asarray(shift[bounds[i][0]:bounds[i][1]])


def assemble(blocks, sizes, order="F"):
    """The lower triangle of a pivot group's diagonal block from its tiles, as one array.

    ``order``: "F" for LAPACK's sytrf (factored in place); "C" for Cholesky, whose C-ordered
    block is factored in place as the upper triangle of its F-ordered transpose (copying
    C-ordered tiles into a C-ordered block is a row-by-row copy, not a transposition).
    """
    xp = namespace_of(blocks[0][0])
    P = sum(sizes)
    out = xp.zeros((P, P), dtype=COMPUTE_DTYPE, order=order)
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


def factor_task(T, method, tile, offset, pure=False, tile_size=None):
    return tiles.factor_diagonal(_own(T, pure), method, tile, offset, tile_size)


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
    if diagonal:  # the diagonal block: its unit diagonal and the zeros above it do not count
        return s, amax(np.tril(to_host(piece), r0 - 1))
    return s, amax(to_host(piece))


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
    return 0.0 if diagonal else amax(host)


def max_abs(L, lr0, rows, diagonal):
    return 0.0 if diagonal else amax(L[lr0:lr0 + rows])
