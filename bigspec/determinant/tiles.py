"""Tile kernels of the tiled LDL^T / Cholesky factorization.

Pure functions on one or a few square-ish tiles; they call BLAS/LAPACK (scipy on numpy
arrays, cuBLAS/cuSOLVER through cupy) and never loop over entries in Python. On numpy
they update C-ordered tiles in place where the caller owns the tile (each tile version
has exactly one consumer in the graph), and always return the result.

Conventions: a factorization of the diagonal tile ``T = Lt D Lt^T`` where, for LDL^T,
``Lt = L[invperm]`` with ``L`` unit lower triangular and ``D`` block diagonal (1x1/2x2,
Bunch-Kaufman inside the tile); for Cholesky ``Lt = L`` lower and ``D = I``. Below the
diagonal ``L_ik = T_ik Lt^{-T} D^{-1}`` and the trailing update is
``T_ij -= L_ik D L_jk^T``.

Examples
--------
>>> import numpy as np
>>> from bigspec.determinant.tiles import factor_diagonal
>>> f = factor_diagonal(np.array([[4.0, 2.0], [2.0, 3.0]]), "cholesky")
>>> bool(np.isclose(f.logabsdet, np.log(8.0)))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas, lapack

from ..backend import namespace_of, to_device, to_host
from ..errors import NotPositiveDefiniteError, arg, kw


class ZeroPivot(Exception):
    """Internal: an exact zero pivot in LDL^T (the matrix is singular)."""

    def __init__(self, row: int, tile: tuple[int, int]):
        super().__init__(row, tile)
        self.row = row
        self.tile = tile


@dataclass
class DiagonalFactor:
    """Factor of one diagonal block (a tile, or a pivot group of tiles) and its determinant."""

    L: object                 # Cholesky: lower L; LDL: unit lower L (rows in pivot order)
    perm: np.ndarray | None   # LDL: T[perm][:, perm] = L D L^T; None for Cholesky
    D: np.ndarray | None      # LDL: (2, k) host array, diag and subdiag of D; None for Cholesky
    log_d: np.ndarray         # log |d_i| of the determinant-preserving diagonal (float64)
    sign_d: np.ndarray        # sign of d_i (int8)
    pivots: np.ndarray = None  # |eigenvalues| of D's 1x1 and 2x2 blocks (Cholesky: d_i = L_ii^2)

    @property
    def logabsdet(self) -> float:
        return math.fsum(self.log_d)

    @property
    def sign(self) -> int:
        return int(np.prod(self.sign_d))

    @property
    def majorant(self) -> np.ndarray:
        """Diagonal d~ with |L| diag(d~) |L|^T >= |L| |D| |L|^T entrywise (growth bound, Higham 2002, section 11.1)."""
        if self.D is None:
            return np.ones(self.log_d.shape)
        diag, sub = np.abs(self.D[0]), np.abs(self.D[1])
        out = diag + sub
        out[1:] += sub[:-1]
        return out


def leading_minors(perm, D) -> np.ndarray:
    """Where the prefix determinants of an LDL^T factor are leading principal minors.

    The first m pivots of ``P A P^T = L D L^T`` give det (P A P^T)[:m, :m], which is
    det A[:m, :m] exactly when they are rows 0..m-1 in some order (``max(perm[:m]) == m - 1``)
    and m does not split a 2x2 block of D (``D[1, m - 1] == 0``). Returns a bool array of
    ``len(perm)``; ``perm`` counts rows from the block's first row.
    """
    perm = np.asarray(perm)
    return (np.maximum.accumulate(perm) == np.arange(perm.size)) & (np.asarray(D)[1] == 0)


def _c(x):
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def factor_diagonal(T, method: str, tile=(0, 0), offset: int = 0, tile_size: int | None = None) -> DiagonalFactor:
    """Factor a symmetric diagonal block (only its lower triangle is read).

    For LDL^T the block may span several tiles (a pivot group): Bunch-Kaufman pivoting then
    reaches across all of it. Raises :class:`NotPositiveDefiniteError` (Cholesky) naming the
    tile and global pivot row (``tile_size``: the tiles' edge, when the block spans several), or
    :class:`ZeroPivot` (LDL^T) on an exact zero pivot.
    """
    xp = namespace_of(T)
    if method == "cholesky":
        if xp is np and T.flags.f_contiguous and T.ndim == 2 and T.shape[0] > 1:
            # an F-ordered block (an assembled pivot group) is factored in its own memory
            L, info = lapack.get_lapack_funcs("potrf", (T,))(T, lower=1, overwrite_a=1, clean=1)
        elif xp is np:
            T = _c(T)
            # C-ordered T is the F-ordered T^T = T; 'upper' of that is our lower triangle
            c, info = lapack.get_lapack_funcs("potrf", (T,))(T.T, lower=0, overwrite_a=1, clean=1)
            L = c.T
        else:
            L, info = _cupy_cholesky(T)
        if info > 0:
            row = offset + info - 1
            if tile_size:   # a block of several tiles: name the tile that holds the row
                tile = (row // tile_size, row // tile_size)
            raise NotPositiveDefiniteError(
                f"the matrix is not positive definite: Cholesky met a non-positive pivot at row "
                f"{row} (tile {tile}, local pivot {info - 1}); use {arg('method', 'ldl')} for symmetric "
                f"indefinite or semidefinite matrices, or add a ridge with {kw('shift')}",
                tile=tuple(tile), pivot=int(row),
            )
        diag = to_host(xp.diagonal(L)).astype(np.float64)
        return DiagonalFactor(L, None, None, 2.0 * np.log(diag), np.ones(diag.shape, np.int8), diag * diag)
    # LDL^T with Bunch-Kaufman pivoting across the whole block (on the host: no GPU sytrf)
    host = to_host(T)
    # an F-ordered block (an assembled pivot group) is this task's own: factor it in place
    L, diag, sub, perm = bunch_kaufman(host, overwrite=host is T and host.flags.f_contiguous)
    log_d, sign_d, zero = _fold_determinant(diag, sub)
    if zero is not None:
        raise ZeroPivot(offset + zero, tuple(tile))
    return DiagonalFactor(to_device(L, "gpu") if xp is not np else L, perm,
                          np.stack([diag, sub]), log_d, sign_d, _block_pivots(diag, sub))


def bunch_kaufman(T: np.ndarray, overwrite: bool = False):
    """``T[perm][:, perm] = L D L^T`` by LAPACK's Bunch-Kaufman ``sytrf`` (lower triangle of T read).

    Returns (L, diag, sub, perm): L unit lower triangular (F-ordered), D's diagonal and its
    subdiagonal (``sub[k] != 0`` marks the 2x2 block (k, k+1)), and the symmetric permutation.
    ``syconv`` turns LAPACK's interleaved factor into that form in place, so the block is held
    once (scipy.linalg.ldl would also build the dense n x n D); with ``overwrite`` an
    F-ordered float64 ``T`` is factored in its own memory.
    """
    n = T.shape[0]
    a = np.array(T, dtype=np.float64, order="F", copy=None if overwrite else True)
    lwork = max(int(lapack.dsytrf_lwork(n, lower=1)[0]), 1)
    a, ipiv, info = lapack.dsytrf(a, lower=1, lwork=lwork, overwrite_a=1)
    if info < 0:  # pragma: no cover - an argument error, not the matrix
        raise ValueError(f"LAPACK dsytrf: illegal argument {-info}")
    a, sub, _ = lapack.dsyconv(a, ipiv, lower=1, way=0, overwrite_a=1)
    diag = np.diagonal(a).copy()
    for c0 in range(0, n, 1024):                       # L: unit lower, zero above (in place, blockwise)
        c1 = min(c0 + 1024, n)
        a[:c0, c0:c1] = 0.0
        blk = a[c0:c1, c0:c1]
        blk[np.triu_indices(c1 - c0, 1)] = 0.0
    a[np.diag_indices(n)] = 1.0
    perm = np.arange(n)
    k = 0
    while k < n:                                        # LAPACK's interchanges, in order
        p = ipiv[k]
        if p > 0:
            perm[[k, p - 1]] = perm[[p - 1, k]]
            k += 1
        else:
            perm[[k + 1, -p - 1]] = perm[[-p - 1, k + 1]]
            k += 2
    sub = np.asarray(sub, dtype=np.float64)
    sub[-1:] = 0.0
    return a, diag, sub, perm


def _block_pivots(diag, sub):
    """|eigenvalues| of D's blocks: |d| for 1x1, the two |lambda| of each 2x2 block."""
    out = np.abs(diag).astype(np.float64)
    starts = np.flatnonzero(sub != 0)
    if starts.size:
        a, c, e = diag[starts], sub[starts], diag[starts + 1]
        mid, rad = (a + e) / 2, np.hypot((a - e) / 2, c)
        out[starts], out[starts + 1] = np.abs(mid - rad), np.abs(mid + rad)
    return out


def _cupy_cholesky(T):  # pragma: no cover - needs a GPU
    import cupy

    try:
        return cupy.linalg.cholesky(T), 0
    except np.linalg.LinAlgError:
        _, info = lapack.dpotrf(to_host(T), lower=1)
        return None, max(info, 1)


def _fold_determinant(diag, sub):
    """Determinant-preserving diagonal of a 1x1/2x2 block-diagonal D.

    A 2x2 block [[a, c], [c, e]] becomes d_i = a, d_{i+1} = (a e - c^2) / a, so that prefix
    sums of log|d| are leading-minor log-determinants (Ameli et al. 2025, arXiv:2503.04424). Returns
    (log|d|, sign(d), index of the first exact zero pivot or None).
    """
    d = diag.copy()
    starts = np.flatnonzero(sub != 0)
    a, c, e = diag[starts], sub[starts], diag[starts + 1]
    det = a * e - c * c
    safe = a != 0
    # a == 0 (a pure 2x2 pivot): keep the product right, put the whole determinant first
    d[starts] = np.where(safe, a, det)
    d[starts + 1] = np.where(safe, det / np.where(safe, a, 1.0), 1.0)
    zeros = np.flatnonzero(d == 0)
    with np.errstate(divide="ignore"):
        log_d = np.log(np.abs(d))
    return log_d, np.sign(d).astype(np.int8), (int(zeros[0]) if zeros.size else None)


def growth_rows(L, majorant) -> np.ndarray:
    """Row sums ``sum_k L_ik^2 d~_k`` of one block of L (the growth bound's diagonal)."""
    host = to_host(L)
    return (host * host) @ np.asarray(majorant, dtype=np.float64)


def solve_below(T, F: DiagonalFactor):
    """``L_ik = T_ik[:, perm] L^{-T} D^{-1}`` for a block below the diagonal (in place on numpy)."""
    xp = namespace_of(T)
    unit = F.perm is not None
    if unit:
        T = T[:, F.perm if xp is np else xp.asarray(F.perm)]
    if xp is np:
        T = _c(T)
        trsm = blas.get_blas_funcs("trsm", (T,))
        # C-ordered T is F-ordered T^T: solve L Y = T^T, Y = (T L^{-T})^T, in T's memory
        if F.L.flags.f_contiguous:
            Y = trsm(1.0, F.L, T.T, side=0, lower=1, trans_a=0, diag=int(unit), overwrite_b=1)
        else:
            Y = trsm(1.0, F.L.T, T.T, side=0, lower=0, trans_a=1, diag=int(unit), overwrite_b=1)
        X = Y.T
    else:  # pragma: no cover - needs a GPU
        import cupyx.scipy.linalg as cpl

        X = cpl.solve_triangular(F.L, T.T, lower=True, unit_diagonal=unit).T
    if F.D is not None:
        X = _solve_D(X, F.D)
    return X


def _blocks(D):
    sub = D[1]
    starts = np.flatnonzero(sub != 0)
    return D[0], sub, starts


def scale_by_D(X, D):
    """``X D`` (a new array) for a (2, b) block-diagonal ``D``; ``X`` itself when D is None (Cholesky)."""
    if D is None:
        return X
    xp = namespace_of(X)
    diag, sub, starts = _blocks(D)
    out = X * xp.asarray(diag.astype(X.dtype))[None, :]
    if starts.size:
        c = xp.asarray(sub[starts].astype(X.dtype))[None, :]
        starts = starts if xp is np else xp.asarray(starts)
        out[:, starts] += X[:, starts + 1] * c
        out[:, starts + 1] += X[:, starts] * c
    return out


def scale_by_D_columns(X, D, left=None, right=None):
    """``(L D)[:, c0:c1]`` from ``X = L[:, c0:c1]`` when D's 2x2 blocks may cross c0 or c1.

    ``D`` is (2, c1 - c0) for these columns. A block (c0 - 1, c0) crossing the left edge is
    given as ``left = (L[:, c0 - 1], sub[c0 - 1])``; a block (c1 - 1, c1) crossing the right
    edge as ``right = (L[:, c1], sub[c1 - 1])``. Blocks cross tile edges only inside a pivot
    group wider than one tile.
    """
    if D is None:
        return X
    if right is not None:
        D = D.copy()
        D[1, -1] = 0.0
    out = scale_by_D(X, D)
    if left is not None:
        out[:, 0] += left[0] * left[1]
    if right is not None:
        out[:, -1] += right[0] * right[1]
    return out


def _solve_D(X, D):
    xp = namespace_of(X)
    diag, sub, starts = _blocks(D)
    inv = np.where(diag != 0, 1.0 / np.where(diag != 0, diag, 1.0), 0.0)
    starts_h = starts
    if xp is not np:  # pragma: no cover - needs a GPU
        starts = xp.asarray(starts)
    x0 = X[:, starts].copy()
    x1 = X[:, starts + 1].copy()
    # every column scaled in one pass (a gather/scatter of nearly all columns was 6x slower); the
    # columns of 2x2 blocks are overwritten below
    X *= xp.asarray(inv.astype(X.dtype))[None, :]
    if starts_h.size:
        a, c, e = diag[starts_h], sub[starts_h], diag[starts_h + 1]
        det = a * e - c * c
        # [x0 x1] [[a c] [c e]]^{-1} = [x0 e - x1 c, -x0 c + x1 a] / det
        X[:, starts] = (x0 * xp.asarray(e / det) - x1 * xp.asarray(c / det)).astype(X.dtype)
        X[:, starts + 1] = (x1 * xp.asarray(a / det) - x0 * xp.asarray(c / det)).astype(X.dtype)
    return X


def update(T, L_i, LD_j, symmetric_tile: bool, cholesky: bool):
    """``T -= L_i @ LD_j.T`` (in place on numpy); syrk on a Cholesky diagonal tile."""
    xp = namespace_of(T)
    if xp is not np:  # pragma: no cover - needs a GPU
        T -= L_i @ LD_j.T
        return T
    T = _c(T)
    L_i = _c(L_i)
    if symmetric_tile and cholesky:
        syrk = blas.get_blas_funcs("syrk", (T,))
        # F view: T^T (= T) -= (L_i^T)^T (L_i^T); upper of the F view is our lower triangle
        out = syrk(-1.0, L_i.T, beta=1.0, c=T.T, trans=1, lower=0, overwrite_c=1)
    else:
        LD_j = _c(LD_j)
        gemm = blas.get_blas_funcs("gemm", (T,))
        # F view: T^T -= LD_j L_i^T
        out = gemm(-1.0, LD_j.T, L_i.T, beta=1.0, c=T.T, trans_a=1, trans_b=0, overwrite_c=1)
    return out.T

