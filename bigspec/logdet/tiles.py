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
>>> from bigspec.logdet.tiles import factor_diagonal
>>> f = factor_diagonal(np.array([[4.0, 2.0], [2.0, 3.0]]), "cholesky")
>>> bool(np.isclose(f.logabsdet, np.log(8.0)))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas, lapack

from ..backend import namespace_of, to_device, to_host
from ..errors import NotPositiveDefiniteError


class ZeroPivot(Exception):
    """Internal: an exact zero pivot in LDL^T (the matrix is singular)."""

    def __init__(self, row: int, tile: tuple[int, int]):
        super().__init__(row, tile)
        self.row = row
        self.tile = tile


@dataclass
class DiagonalFactor:
    """Factor of one diagonal tile and its contribution to the determinant."""

    L: object                 # Cholesky: lower L; LDL: unit lower L (rows in pivot order)
    perm: np.ndarray | None   # LDL: Lt = L[invperm]; None for Cholesky
    D: np.ndarray | None      # LDL: (2, b) host array, diag and subdiag of D; None for Cholesky
    log_d: np.ndarray         # log |d_i| of the determinant-preserving diagonal (float64)
    sign_d: np.ndarray        # sign of d_i (int8)

    @property
    def logabsdet(self) -> float:
        return math.fsum(self.log_d)

    @property
    def sign(self) -> int:
        return int(np.prod(self.sign_d))


def _c(x):
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def factor_diagonal(T, method: str, tile=(0, 0), offset: int = 0) -> DiagonalFactor:
    """Factor a symmetric diagonal tile (only its lower triangle is read).

    Raises :class:`NotPositiveDefiniteError` (Cholesky) naming the tile and global pivot
    row, or :class:`ZeroPivot` (LDL^T) on an exact zero pivot.
    """
    xp = namespace_of(T)
    if method == "cholesky":
        if xp is np:
            T = _c(T)
            # C-ordered T is the F-ordered T^T = T; 'upper' of that is our lower triangle
            c, info = lapack.get_lapack_funcs("potrf", (T,))(T.T, lower=0, overwrite_a=1, clean=1)
            L = c.T
        else:
            L, info = _cupy_cholesky(T)
        if info > 0:
            row = offset + info - 1
            raise NotPositiveDefiniteError(
                f"the matrix is not positive definite: Cholesky met a non-positive pivot at row "
                f"{row} (tile {tile}, local pivot {info - 1}); use method='ldl' for symmetric "
                f"indefinite or semidefinite matrices, or add a ridge with shift=",
                tile=tuple(tile), pivot=int(row),
            )
        diag = to_host(xp.diagonal(L)).astype(np.float64)
        return DiagonalFactor(L, None, None, 2.0 * np.log(diag), np.ones(diag.shape, np.int8))
    # LDL^T with Bunch-Kaufman pivoting restricted to the tile (on the host: no GPU sytrf)
    host = to_host(T)
    lu, d, perm = scipy.linalg.ldl(host, lower=True, hermitian=False, overwrite_a=True,
                                   check_finite=False)
    diag = np.diagonal(d).astype(np.float64)
    sub = np.zeros_like(diag)
    sub[:-1] = np.diagonal(d, -1)
    log_d, sign_d, zero = _fold_determinant(diag, sub)
    if zero is not None:
        raise ZeroPivot(offset + zero, tuple(tile))
    L = np.ascontiguousarray(lu[perm])
    return DiagonalFactor(to_device(L, "gpu") if xp is not np else L, perm,
                          np.stack([diag, sub]), log_d, sign_d)


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
    sums of log|d| are leading-minor log-determinants (science.md 1.1). Returns
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


def solve_below(T, F: DiagonalFactor):
    """``L_ik = T_ik Lt^{-T} D^{-1}`` for a tile below the diagonal (in place on numpy)."""
    xp = namespace_of(T)
    unit = F.perm is not None
    if unit:
        T = T[:, F.perm if xp is np else xp.asarray(F.perm)]
    if xp is np:
        T = _c(T)
        trsm = blas.get_blas_funcs("trsm", (T,))
        # C-ordered T is F-ordered T^T: solve L Y = T^T, Y = (T L^{-T})^T, in T's memory
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


def _solve_D(X, D):
    xp = namespace_of(X)
    diag, sub, starts = _blocks(D)
    inv = np.where(diag != 0, 1.0 / np.where(diag != 0, diag, 1.0), 0.0)
    single = np.ones(diag.shape, bool)
    single[starts] = single[starts + 1] = False
    idx = np.flatnonzero(single)
    if xp is not np:  # pragma: no cover - needs a GPU
        starts_h = starts
        starts, idx = xp.asarray(starts), xp.asarray(idx)
    else:
        starts_h = starts
    x0 = X[:, starts].copy()
    x1 = X[:, starts + 1].copy()
    X[:, idx] *= xp.asarray(inv[np.flatnonzero(single)].astype(X.dtype))[None, :]
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

