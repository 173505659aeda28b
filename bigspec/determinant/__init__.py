"""Log-determinants: exact (tiled LDL^T / Cholesky); estimators come in later modules."""

from __future__ import annotations

EXACT_METHODS = ("ldl", "cholesky")


def logdet(A, *, method=None, memory=None, tile_size=None, shift=0.0, scale=1.0, client=None,
           checkpoint=None, overwrite=False, device="cpu", progress=None, dry_run=False,
           storage_options=None, triangle=None, missing_chunks="error"):
    """Log-determinant of ``scale * A + diag(shift)`` for a symmetric matrix too big for memory.

    Parameters
    ----------
    A : MatrixStore, str, os.PathLike, zarr.Group, or numpy / dask / zarr array
        The matrix: a store (path or fsspec URL) written by :func:`bigspec.from_array` or
        :func:`bigspec.form`, a ``.npy`` file or zarr array (or its path), or an array. Every
        kind is validated the same way first (:func:`bigspec.matrix.as_matrix`: square,
        finite, symmetric, no zarr chunk left unwritten).
    method : {"ldl", "cholesky"}
        ``"ldl"`` (default): LDL^T with Bunch-Kaufman pivoting, for symmetric, possibly
        indefinite or semidefinite matrices; pivoting starts inside each tile and reaches
        across many tiles (the whole panel where memory allows) where the element growth or a
        zero pivot shows it must. ``"cholesky"``: SPD only, fastest. Both compute in float64,
        whatever the storage dtype.
    memory : "auto" or size like "4GiB"
        Budget of the factorization's working set across all workers. It fixes the
        super-panel width; when the matrix fits, the whole factorization runs in memory.
    tile_size : int, optional
        Tile edge for array inputs; for a store it must match the store's tiles.
    shift, scale : float or (n,) array, float
        Factor ``scale * A + diag(shift)`` without rewriting the store (a ridge or jitter).
    client : distributed.Client, optional
        Default: the current client, else Dask's threaded scheduler.
    checkpoint : bool, optional
        Keep the factor in ``<store>/factor`` so a killed run resumes. Default: on when the
        matrix does not fit in the budget.
    overwrite : bool
        Replace an existing factorization in the store made with other settings.
    device : {"cpu", "gpu"}
        ``"gpu"`` runs the same graph on cupy tiles.
    dry_run : bool
        Return the :class:`~bigspec.determinant.plan.Plan` (tasks, flops, bytes, peak memory)
        without computing.
    triangle : {None, "lower", "upper"}, default None
        For array inputs: None checks that both triangles agree; ``"upper"`` / ``"lower"``
        reads the matrix from that triangle only (a matrix saved as its upper triangle).
    missing_chunks : {"error", "fill"}, default "error"
        For zarr arrays: refuse chunks that were never written, or read them as the fill value.

    Returns
    -------
    LogdetResult
        ``sign``, ``logabsdet`` (nats), timings (seconds) and I/O (bytes), pivot and growth
        diagnostics, and ``prefix_logdet`` (log|det A[:m, :m]|).

    Raises
    ------
    InvalidMatrixError, NonFiniteError, IncompleteStoreError
        The matrix is not square, symmetric, finite or fully written.
    NotPositiveDefiniteError
        ``method="cholesky"`` met a non-positive pivot (names the row and tile).
    UnstableFactorizationError
        LDL^T needs pivoting across more columns than the memory budget allows.
    MemoryBudgetError
        The budget cannot hold one tile column.
    StoreExistsError
        The store keeps one factorization in ``factor/``, and it was made with other settings
        (method, shift, scale): pass ``overwrite=True`` to replace it, or ``checkpoint=False``
        to factor without keeping it (out of core it then spills to a temporary directory).
    TypeError, ValueError
        An argument of the wrong kind (``overwrite="no"``, ``shift="1e-3"``, ``memory="lots"``).

    Warns
    -----
    SingularMatrixWarning
        An exact zero pivot (log|det| = -inf), or pivots below ``n * eps`` of the largest
        (numerically singular: the value is set by rounding; add ``shift=``).
    GrowthWarning
        Large element growth even with pivoting across the whole remaining matrix.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> A = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    >>> r = bigspec.logdet(A, tile_size=2)
    >>> bool(np.isclose(r.logabsdet, np.linalg.slogdet(A)[1]))
    True
    >>> bool(np.isclose(bigspec.logdet(A, shift=1.0).logabsdet, np.linalg.slogdet(A + np.eye(3))[1]))
    True
    >>> tuple(bigspec.logdet(np.array([[0.0, 1.0], [1.0, 1.0]]), tile_size=1))   # pivots across tiles
    (-1, 0.0)
    """
    method = method or None
    if method is not None and method not in EXACT_METHODS:
        from ..errors import ArgumentError, arg

        raise ArgumentError(f"unknown {arg('method')} {method!r}; choose one of: {', '.join(EXACT_METHODS)}")
    from .exact import exact_logdet

    return exact_logdet(A, method=method, memory=memory, tile_size=tile_size, shift=shift, scale=scale,
                        client=client, checkpoint=checkpoint, overwrite=overwrite, device=device,
                        progress=progress, dry_run=dry_run, storage_options=storage_options,
                        triangle=triangle, missing_chunks=missing_chunks)


def slogdet(A, **kwargs) -> tuple[int, float]:
    """``(sign, logabsdet)`` like :func:`numpy.linalg.slogdet`; options as :func:`logdet`.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> sign, logabsdet = bigspec.slogdet(np.diag([-2.0, 3.0]))
    >>> sign, round(logabsdet, 12)
    (-1, 1.791759469228)
    """
    r = logdet(A, **kwargs)
    return r.sign, r.logabsdet


__all__ = ["logdet", "slogdet"]
