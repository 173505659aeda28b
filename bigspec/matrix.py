"""The matrix argument of every verb: one validator for stores, paths, numpy, dask and zarr arrays.

:func:`as_matrix` is called at the public entry of ``logdet``, ``from_array`` and ``spectrum``
(and the CLI, through them), before anything is copied or written, so every input path is
checked the same way and fails with the same message:

* the shape is square and non-empty; a dask array with unknown chunk sizes has them computed;
* the dtype is stored as float64 or float32 (float16 becomes float32, integers and booleans
  float64, both exactly); anything else is refused;
* a zarr array has no chunk that was never written (zarr would read it as its fill value);
* every entry is finite; the first NaN or inf is named by row and column;
* the matrix is symmetric: the largest ``|A[i, j] - A[j, i]|`` must stay below
  ``rtol * max|A|`` (rtol 1e-10 for float64, 1e-4 for float32; config ``bigspec.symmetry-rtol``),
  and every path then reads the lower triangle (diagonal tiles too, mirrored, not averaged).
  A matrix given as one triangle (the other all zero, or never written) is read from that
  triangle with ``triangle="upper"`` or ``"lower"``, which mirrors it exactly and reads nothing
  of the other half.

Examples
--------
>>> import numpy as np
>>> from bigspec.matrix import as_matrix
>>> U = np.triu(np.arange(1.0, 10.0).reshape(3, 3))   # only the upper triangle is filled
>>> m = as_matrix(U, triangle="upper")
>>> m.block(0, 3, 0, 3)
array([[1., 2., 3.],
       [2., 5., 6.],
       [3., 6., 9.]])
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from . import config
from .errors import IncompleteStoreError, InvalidMatrixError, NonFiniteError, StoreNotFoundError, arg, opt

logger = logging.getLogger(__name__)

TRIANGLES = (None, "lower", "upper")
MISSING_CHUNKS = ("error", "fill")
SYMMETRY_RTOL = {"float64": 1e-10, "float32": 1e-4}
SCAN_BLOCK = 2048  # rows of the blocks read while validating an in-memory or zarr array


def symmetry_rtol(dtype) -> float:
    """Relative tolerance of the symmetry check: ``bigspec.symmetry-rtol`` or the dtype's default."""
    value = config.get("symmetry-rtol", None)
    return float(value) if value is not None else SYMMETRY_RTOL[np.dtype(dtype).name]


def check_triangle(triangle):
    if triangle not in TRIANGLES:
        from .errors import ArgumentError

        raise ArgumentError(f"{arg('triangle')} must be None (both triangles given, checked to agree), 'lower' or 'upper', "
                         f"got {triangle!r}")
    return triangle


def check_missing_chunks(missing_chunks):
    if missing_chunks not in MISSING_CHUNKS:
        from .errors import ArgumentError

        raise ArgumentError(f"{arg('missing_chunks')} must be 'error' or 'fill', got {missing_chunks!r}")
    return missing_chunks


class TriangleView:
    """Full symmetric values of an array given by one triangle: ``A[i, j]`` is read from the
    ``triangle`` half (diagonal included) and mirrored; the other half is never used."""

    def __init__(self, array, triangle: str):
        self.array, self.triangle = array, triangle
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, 2

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        A = self.array
        if r1 <= r0 or c1 <= c0:
            return np.empty((max(r1 - r0, 0), max(c1 - c0, 0)), self.dtype)
        lower_side = self.triangle == "lower"
        if (r0 >= c1 - 1) if lower_side else (c0 >= r1 - 1):   # wholly in the given triangle
            return np.asarray(A[r0:r1, c0:c1])
        if (c0 >= r1 - 1) if lower_side else (r0 >= c1 - 1):   # wholly in the other: mirror
            return np.asarray(A[c0:c1, r0:r1]).T.copy()
        direct = np.asarray(A[r0:r1, c0:c1])
        mirror = np.asarray(A[c0:c1, r0:r1]).T
        i = np.arange(r0, r1)[:, None]
        j = np.arange(c0, c1)[None, :]
        return np.where(i >= j if lower_side else i <= j, direct, mirror)


@dataclass
class Matrix:
    """A validated square matrix and how to read it; made by :func:`as_matrix`."""

    n: int
    dtype: np.dtype            # storage dtype: float32 or float64
    kind: str                  # "store", "numpy", "zarr" or "dask"
    source: object             # [r0:r1, c0:c1] gives full symmetric values (a dask array for "dask")
    store: object = None       # the MatrixStore, for kind "store"
    triangle: str | None = None
    origin: object = field(default=None, repr=False)  # the user's object, guarding writes against it
    label: str = "the matrix"

    @property
    def tile_size(self) -> int | None:
        """The store's tile edge (None for arrays, whose tiles the caller chooses)."""
        return self.store.tile_size if self.store is not None else None

    def block(self, r0, r1, c0, c1) -> np.ndarray:
        """``A[r0:r1, c0:c1]`` of the full symmetric matrix, in the storage dtype."""
        if self.kind == "dask":
            return np.asarray(self.source[r0:r1, c0:c1].compute())
        return np.asarray(self.source[r0:r1, c0:c1])

    def to_dask(self, chunks: int):
        """The full symmetric matrix as a lazy dask array of square ``chunks``."""
        import dask.array as da

        if self.kind == "dask":
            return self.source.rechunk((chunks, chunks))
        if self.kind == "store" and chunks == self.store.tile_size:
            return self.store.to_dask()
        return da.from_array(self.source, chunks=(chunks, chunks), asarray=False, lock=False,
                             name=f"bigspec-input-{id(self.source):x}-{self.n}-{chunks}")


# -- resolving what the user gave --------------------------------------------------------

def _load(A, storage_options, mode):
    """Paths and groups become a MatrixStore, a memory-mapped .npy array or a zarr array."""
    import zarr

    from .storage import contents, locate, open_group
    from .store import MatrixStore

    if isinstance(A, MatrixStore):
        return A
    if isinstance(A, zarr.Group):
        return MatrixStore(A)
    if not isinstance(A, (str, os.PathLike)):
        return A
    loc = locate(A, storage_options)
    if loc.protocol == "file" and os.path.isfile(loc.path):
        if loc.path.endswith(".npy"):
            return np.load(loc.path, mmap_mode="r")
        raise InvalidMatrixError(
            f"{loc.url} is a file but not a .npy file; bigspec reads matrices from .npy files, zarr arrays "
            f"and bigspec stores (save it with numpy.save(path, A))", path=loc.url)
    found = contents(A, storage_options)
    if found.kind == "file":
        raise InvalidMatrixError(
            f"{loc.url} is a file at a remote URL; bigspec memory-maps .npy files on a local disk only: copy it "
            f"to a local path, or store the matrix as a zarr array (zarr.save_array(URL, A)), which is read "
            f"tile by tile from anywhere", path=loc.url)
    if found.kind == "bigspec":
        return MatrixStore(open_group(A, mode, storage_options))
    if found.kind == "zarr":
        try:
            return zarr.open_array(loc.path if loc.protocol == "file" else loc.target, mode="r",
                                   **({} if loc.protocol == "file" else {"storage_options": storage_options}))
        except Exception:
            group = open_group(A, "r", storage_options)
            arrays = sorted(name for name, node in group.members() if isinstance(node, zarr.Array))
            hint = f"; pass one of its arrays, e.g. {loc.url.rstrip('/')}/{arrays[0]}" if arrays else ""
            raise InvalidMatrixError(
                f"{loc.url} is a zarr group but not a bigspec store (it holds {', '.join(found.entries)})"
                f"{hint}, or write a store with " + opt("bigspec.from_array", "`bigspec import`"),
                path=loc.url) from None
    if found.kind == "missing":
        raise StoreNotFoundError(
            f"no bigspec matrix store, zarr array or .npy file at {loc.url}: nothing is there; check the path "
            f"(write a store with " + opt("bigspec.from_array(A, path)", "`bigspec import A.npy STORE`") + ")",
            store=loc.url)
    raise StoreNotFoundError(
        f"no bigspec matrix store, zarr array or .npy file at {loc.url}: it "
        + (f"holds other files ({', '.join(found.entries)})" if found.entries else "is an empty directory"),
        store=loc.url)


def _kind(A) -> str:
    import zarr

    if isinstance(A, zarr.Array):
        return "zarr"
    module = type(A).__module__.split(".")[0]
    if module == "dask" and hasattr(A, "dask"):
        return "dask"
    if module == "cupy":
        raise InvalidMatrixError("the matrix is a cupy array: pass cupy.asnumpy(A) or write it to a store; "
                                 "bigspec moves tiles to the GPU itself with device='gpu'")
    if hasattr(A, "toarray") and hasattr(A, "nnz"):
        raise InvalidMatrixError("the matrix is a scipy.sparse matrix: bigspec factors dense matrices; "
                                 "pass A.toarray() (or write it to a store tile by tile)")
    return "numpy"


def check_dtype(dtype) -> np.dtype:
    """The storage dtype for ``dtype``: float64 and float32 kept, float16 stored as float32, integers and
    booleans as float64 (all exact); complex, object and extended precision refused."""
    dtype = np.dtype(dtype)
    if dtype in (np.dtype("float64"), np.dtype("float32")):
        return dtype
    if dtype == np.dtype("float16"):
        return np.dtype("float32")
    if dtype.kind in "iub":
        return np.dtype("float64")
    raise InvalidMatrixError(
        f"unsupported dtype {dtype}: bigspec stores float32 or float64 matrices of real numbers"
        + ("; a complex matrix is not supported" if dtype.kind == "c" else
           "; convert first, e.g. A.astype('float64')"), dtype=str(dtype))


def _shape(A, kind, label):
    if kind == "dask" and any(np.isnan(c) for cs in A.chunks for c in cs):
        logger.info("computing the unknown chunk sizes of the dask array (one pass over it)")
        A = A.copy()          # compute_chunk_sizes works in place: never on the user's array
        A.compute_chunk_sizes()
    shape = tuple(int(s) for s in A.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise InvalidMatrixError(
            f"{label} must be square (n x n), got shape {shape}; bigspec factors symmetric matrices "
            f"such as kernel matrices", shape=shape)
    if shape[0] == 0:
        raise InvalidMatrixError(f"{label} is empty (shape {shape}); give a matrix with at least one row",
                                 shape=shape)
    return A, shape[0]


def as_matrix(A, *, triangle=None, missing_chunks="error", storage_options=None, symmetric=True,
              mode="r", label="the matrix", client=None) -> Matrix:
    """Validate the matrix argument of a verb; see the module docstring for what is checked.

    Parameters
    ----------
    A : MatrixStore, zarr.Group, str, os.PathLike, numpy array, dask array or zarr array
        A bigspec store (or its path / URL), a ``.npy`` file, a zarr array (or its path), or an
        in-memory or dask array, of shape (n, n).
    triangle : {None, "lower", "upper"}, default None
        None: both triangles are given and must agree. ``"lower"`` / ``"upper"``: the matrix is
        given by that triangle (diagonal included); the other half is neither read nor checked.
    missing_chunks : {"error", "fill"}, default "error"
        For zarr arrays: a needed chunk that was never written raises
        :class:`~bigspec.errors.IncompleteStoreError`; ``"fill"`` reads it as the array's fill
        value (zarr does not store chunks that equal it).
    symmetric : bool, default True
        Check symmetry (False only for a non-symmetric store written on purpose).
    mode : {"r", "r+"}
        How a store given by path is opened.
    client : distributed.Client, optional
        Where a dask array is scanned (default: Dask's threaded scheduler).

    Returns
    -------
    Matrix

    Raises
    ------
    InvalidMatrixError, NonFiniteError, IncompleteStoreError, StoreNotFoundError
    """
    from .store import MatrixStore

    if isinstance(A, Matrix):
        return A                      # validated already (the CLI validates before starting a cluster)
    check_triangle(triangle)
    check_missing_chunks(missing_chunks)
    origin = A
    A = _load(A, storage_options, mode)
    if isinstance(A, MatrixStore):
        if triangle is not None:
            from .errors import ArgumentError

            raise ArgumentError(f"{arg('triangle', triangle)} applies to arrays; the bigspec store {A.url} already "
                                f"holds a symmetric matrix as its lower tiles")
        if symmetric and not A.symmetric:
            raise InvalidMatrixError(
                f"store {A.url} holds a non-symmetric matrix (written with symmetric=False); bigspec "
                f"factors and samples symmetric matrices: write it again with "
                + opt("bigspec.from_array(A, path)", "`bigspec import`") + " after symmetrizing A", store=A.url)
        check_dtype(A.dtype)
        A.check_complete()
        return Matrix(A.n, A.dtype, "store", A.view(), store=A, origin=A, label=f"store {A.url}")
    kind = _kind(A)
    if kind == "numpy" and not isinstance(A, np.ndarray):
        A = np.asarray(A)
        if A.dtype == object:
            raise InvalidMatrixError(f"{label} could not be read as an array of numbers (got dtype object)")
    A, n = _shape(A, kind, label)
    dtype = check_dtype(A.dtype)
    if kind == "zarr" and missing_chunks == "error":
        _check_chunks_written(A, triangle, symmetric)
    stats = _scan(A, kind, triangle, symmetric, label, client)
    if symmetric and triangle is None:
        _check_symmetric(stats, dtype, label)
    if triangle is None or not symmetric:
        source = A
    elif kind == "dask":
        import dask.array as da

        source = (da.tril(A) + da.tril(A, -1).T) if triangle == "lower" else (da.triu(A) + da.triu(A, 1).T)
    else:
        source = TriangleView(A, triangle)
    return Matrix(n, dtype, kind, source, triangle=triangle, origin=origin, label=label)


# -- missing chunks -----------------------------------------------------------------------

def _check_chunks_written(A, triangle, symmetric):
    from .storage import chunk_grid, initialized_chunks

    (cr, cc), (gr, gc) = chunk_grid(A)

    def needed(i, j):  # does chunk (i, j) hold entries of the triangle that is read?
        rows, cols = (i * cr, min((i + 1) * cr, A.shape[0]) - 1), (j * cc, min((j + 1) * cc, A.shape[1]) - 1)
        if triangle == "upper" and symmetric:
            return cols[1] >= rows[0]
        if triangle == "lower" and symmetric:
            return rows[1] >= cols[0]
        return True

    want = [(i, j) for i in range(gr) for j in range(gc) if needed(i, j)]
    written = initialized_chunks(A, want)
    missing = [c for c in want if c not in written]
    if not missing:
        return
    from .storage import source_location

    loc = source_location(A)
    where = loc.url if loc is not None else "(in memory)"
    fill = A.fill_value
    fill = f"{float(fill):g}" if np.ndim(fill) == 0 and np.issubdtype(np.asarray(fill).dtype, np.number) else repr(fill)
    def span(c):
        i, j = c
        return f"({i}, {j}) rows {i * cr}:{min((i + 1) * cr, A.shape[0])}, cols {j * cc}:{min((j + 1) * cc, A.shape[1])}"
    shown = "; ".join(span(c) for c in missing[:6]) + (" ..." if len(missing) > 6 else "")
    hints = []
    if triangle is None and written:
        below = all(i * cr > min((j + 1) * cc, A.shape[1]) - 1 for i, j in missing)
        above = all(j * cc > min((i + 1) * cr, A.shape[0]) - 1 for i, j in missing)
        if below:
            hints.append("Every written chunk touches the upper triangle: if the matrix is stored as its upper "
                         f"triangle, pass {arg('triangle', 'upper')} to mirror it")
        elif above:
            hints.append("Every written chunk touches the lower triangle: if the matrix is stored as its lower "
                         f"triangle, pass {arg('triangle', 'lower')} to mirror it")
    hints.append(("I" if len(hints) == 0 else "i") + "f those chunks really equal the fill value (zarr does not store a chunk equal to its fill "
                 f"value), pass {arg('missing_chunks', 'fill')}; otherwise write them first")
    raise IncompleteStoreError(
        f"the zarr array at {where} has {len(missing)} of {len(want)} needed chunks that were never written, "
        f"which zarr would read as the fill value {fill}: {shown}. " + "; ".join(hints), missing=missing)


# -- one pass over the values -------------------------------------------------------------

def _pair_stats(lo, up_raw, i0, j0, triangle, symmetric):
    """Statistics of one scan step: the block ``lo = A[i0:i1, j0:j1]`` and its mirror ``up_raw =
    A[j0:j1, i0:i1]`` (either None where its triangle is not read; on the diagonal ``up_raw`` is None)."""
    diagonal = i0 == j0
    lo = None if lo is None else np.asarray(lo, dtype=np.float64)
    up = lo.T if diagonal else (None if up_raw is None else np.asarray(up_raw, dtype=np.float64).T)
    out = {"amax": 0.0, "lower": 0.0, "upper": 0.0, "diff": 0.0, "diff_at": None, "bad_at": None}
    if not symmetric:
        parts = [(lo, i0, j0, None)]
    elif triangle is None:
        parts = [(lo, i0, j0, None)] + ([] if diagonal else [(up.T, j0, i0, None)])
    elif triangle == "lower":
        parts = [(lo, i0, j0, "lower" if diagonal else None)]
    else:
        parts = [(lo, i0, j0, "upper")] if diagonal else [(up.T, j0, i0, None)]
    for blk, r, c, half in parts:   # half: on a diagonal block only that triangle of it is read
        vals = np.tril(blk) if half == "lower" else np.triu(blk) if half == "upper" else blk
        finite = np.isfinite(vals)
        if not finite.all():
            k = np.argwhere(~finite)[0]
            out["bad_at"] = (int(r + k[0]), int(c + k[1]), float(vals[k[0], k[1]]))
            return out
        out["amax"] = max(out["amax"], float(np.max(np.abs(vals), initial=0.0)))
    if triangle is None and symmetric:
        if diagonal:
            out["lower"] = float(np.max(np.abs(np.tril(lo, -1)), initial=0.0))
            out["upper"] = float(np.max(np.abs(np.triu(lo, 1)), initial=0.0))
        else:
            out["lower"] = float(np.max(np.abs(lo), initial=0.0))
            out["upper"] = float(np.max(np.abs(up), initial=0.0))
        d = np.abs(lo - up)
        if d.size and d.max() > 0:
            k = np.unravel_index(np.argmax(d), d.shape)
            r, c = i0 + int(k[0]), j0 + int(k[1])
            out["diff"], out["diff_at"] = float(d[k]), (r, c, float(lo[k]), float(up[k]))
    return out


def _scan(A, kind, triangle, symmetric, label, client=None):
    """One pass over the needed entries: finiteness, max|A|, the largest asymmetry and where it is."""
    n = A.shape[0]
    b = int(A.chunks[0]) * max(1, SCAN_BLOCK // int(A.chunks[0])) if kind == "zarr" else SCAN_BLOCK
    pairs = [(i0, j0) for i0 in range(0, n, b) for j0 in range(0, (i0 + 1 if symmetric else n), b)]

    def needs(i0, j0):  # (read A[i0, j0] block, read its mirror A[j0, i0] block)
        if not symmetric or i0 == j0:
            return True, False
        return triangle != "upper", triangle != "lower"

    if kind == "dask":
        import dask

        blocks = A.rechunk((b, b)).to_delayed()
        stats_of = dask.delayed(_pair_stats, pure=True)
        tasks = []
        for i0, j0 in pairs:
            lo, up = needs(i0, j0)
            tasks.append(stats_of(blocks[i0 // b, j0 // b] if lo else None,
                                  blocks[j0 // b, i0 // b] if up else None, i0, j0, triangle, symmetric))
        from .runner import Runner

        results = Runner(client, progress=False).compute(tasks)
    else:
        results = []
        for i0, j0 in pairs:
            lo, up = needs(i0, j0)
            results.append(_pair_stats(A[i0:i0 + b, j0:j0 + b] if lo else None,
                                       A[j0:j0 + b, i0:i0 + b] if up else None, i0, j0, triangle, symmetric))
    total = {"amax": 0.0, "lower": 0.0, "upper": 0.0, "diff": 0.0, "diff_at": None}
    for s in results:
        if s["bad_at"] is not None:
            r, c, v = s["bad_at"]
            what = "NaN" if np.isnan(v) else ("inf" if v > 0 else "-inf")
            raise NonFiniteError(
                f"{label} holds {what} at row {r}, col {c}; bigspec needs finite entries (and reserves NaN for "
                f"tiles never written): fix or drop that row and column first", row=r, col=c)
        total["amax"] = max(total["amax"], s["amax"])
        total["lower"] = max(total["lower"], s["lower"])
        total["upper"] = max(total["upper"], s["upper"])
        if s["diff"] > total["diff"]:
            total["diff"], total["diff_at"] = s["diff"], s["diff_at"]
    return total


def _check_symmetric(stats, dtype, label):
    rtol = symmetry_rtol(dtype)
    tol = rtol * stats["amax"]
    if stats["diff"] <= tol:
        return
    r, c, a_rc, a_cr = stats["diff_at"]
    found = (f"{label} is not symmetric: |A[{r}, {c}] - A[{c}, {r}]| = {stats['diff']:.6g} (A[{r}, {c}] = {a_rc:.6g}, "
             f"A[{c}, {r}] = {a_cr:.6g}) is the largest asymmetry, above the tolerance {rtol:g} * max|A| = {tol:.3g}")
    if stats["lower"] == 0.0 and stats["upper"] > 0.0:
        fix = ("its strict lower triangle is all zero, so it looks stored as its upper triangle: pass "
               f"{arg('triangle', 'upper')} to mirror that triangle; do not use (A + A.T) / 2, "
               "which would halve the off-diagonal entries")
    elif stats["upper"] == 0.0 and stats["lower"] > 0.0:
        fix = ("its strict upper triangle is all zero, so it looks stored as its lower triangle: pass "
               f"{arg('triangle', 'lower')} to mirror that triangle; do not use (A + A.T) / 2, "
               "which would halve the off-diagonal entries")
    else:
        fix = ("if the asymmetry is noise, symmetrize it first with (A + A.T) / 2; if one triangle holds the "
               f"matrix, pass {arg('triangle', 'lower')} or {arg('triangle', 'upper')} to use only that one")
    raise InvalidMatrixError(f"{found}; {fix}", row=r, col=c, asymmetry=stats["diff"])


__all__ = ["Matrix", "TriangleView", "as_matrix", "check_dtype", "symmetry_rtol", "TRIANGLES", "MISSING_CHUNKS"]


def tile_source(m: Matrix, tile_size: int, client, tmp: list, threads=None):
    """What tile tasks read: a store's mirrored view, the array itself, or a temporary copy.

    Tasks cannot slice a dask array, and on a cluster a numpy array would travel inside every
    task: those are copied to a temporary store first, in a directory appended to ``tmp`` (the
    caller removes it). A store, or the temporary directory, must be visible to every worker
    (:func:`bigspec.cluster.require_visible`).
    """
    import tempfile

    import zarr

    from .cluster import require_visible
    from .errors import opt
    from .runner import Runner
    from .store import create_matrix, write_matrix

    ms = m.store
    if ms is not None:
        if ms.local_path is not None:
            require_visible(client, ms.local_path, f"the store {ms.url}",
                            "put the store on storage every worker mounts at the same path, or use a URL (s3://...)")
        return m.source
    if m.kind == "dask" or (m.kind == "numpy" and client is not None):
        tmp.append(tempfile.mkdtemp(prefix="bigspec-matrix-"))
        require_visible(client, tmp[-1], "the temporary copy of the in-memory matrix",
                        "write the matrix to shared storage first: "
                        + opt("bigspec.from_array(A, SHARED_PATH_OR_URL)", "`bigspec import A.npy SHARED_PATH`"))
        copy = create_matrix(zarr.open_group(f"{tmp[-1]}/matrix.zarr", mode="w"), m.n, tile_size, m.dtype)
        write_matrix(m, copy, Runner(client, progress=False, threads=threads))
        return copy.view()
    return m.source
