"""The matrix store: one Zarr v3 group per matrix, cut into square tiles.

Layout (design.md, "The store")::

    <store>/matrix      (n, n), chunks (tile_size, tile_size), NaN fill, lower tiles only
    <store>/factor/     checkpoint of the exact factorization (written by bigspec.logdet)
    attrs["bigspec"]    schema, n, tile_size, dtype, symmetric, provenance, results

Examples
--------
>>> import numpy as np, bigspec
>>> A = np.eye(5)
>>> K = bigspec.from_array(A, "memory://doc-eye.zarr", tile_size=2, overwrite=True)
>>> K.n, K.tile_size, K.n_tiles
(5, 2, 3)
>>> bool((K.to_dask().compute() == A).all())
True
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator

import numpy as np
import zarr

from . import config
from .errors import (
    IncompleteStoreError,
    InvalidMatrixError,
    NonFiniteError,
    StoreExistsError,
    StoreNotFoundError,
    TileSizeError,
)

SCHEMA_VERSION = 1
ATTRS_KEY = "bigspec"
SUPPORTED_DTYPES = (np.dtype("float32"), np.dtype("float64"))
# One LAPACK call must never see a block of 2**31 bytes or more (threaded OpenBLAS
# potrf segfaults at 16384 x 16384 float64), so a tile stays below that.
MAX_TILE_BYTES = 2**31 - 1


def check_dtype(dtype) -> np.dtype:
    """Return the storage dtype for ``dtype``: float32/float64 kept, ints and bools cast to float64."""
    dtype = np.dtype(dtype)
    if dtype in SUPPORTED_DTYPES:
        return dtype
    if dtype.kind in "iub":
        return np.dtype("float64")
    raise InvalidMatrixError(
        f"unsupported dtype {dtype}: bigspec stores float32 or float64 matrices; "
        f"convert first, e.g. A.astype('float64')",
        dtype=str(dtype),
    )


def check_tile_size(tile_size, dtype=np.float64) -> int:
    """Validate a tile edge: a positive int whose square tile stays below 2**31 bytes."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)):
        raise TileSizeError(f"tile_size must be a positive integer, got {tile_size!r}")
    tile_size = int(tile_size)
    if tile_size < 1:
        raise TileSizeError(f"tile_size must be a positive integer, got {tile_size}")
    itemsize = np.dtype(dtype).itemsize
    if tile_size * tile_size * itemsize > MAX_TILE_BYTES:
        largest = math.isqrt(MAX_TILE_BYTES // itemsize)
        raise TileSizeError(
            f"tile_size={tile_size} makes a {tile_size}x{tile_size} {np.dtype(dtype)} tile of 2 GiB "
            f"or more, which LAPACK cannot factor safely; use tile_size <= {largest} (4096 is a good default)"
        )
    return tile_size


def _open_group(store, mode: str, storage_options: dict | None) -> zarr.Group:
    if isinstance(store, zarr.Group):
        return store
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    if not isinstance(store, str):
        return zarr.open_group(store=store, mode=mode)
    kwargs = {"storage_options": storage_options} if storage_options and "://" in store else {}
    return zarr.open_group(store=store, mode=mode, **kwargs)


def _exists(store, storage_options) -> bool:
    try:
        g = _open_group(store, "r", storage_options)
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        return False
    return ATTRS_KEY in g.attrs or "matrix" in g


class SymmetricView:
    """Array-like full view of a lower-tile symmetric Zarr matrix; upper tiles are mirrored.

    Reading a region that lies in one tile row and one tile column reads one chunk.
    """

    def __init__(self, array: zarr.Array, tile_size: int, symmetric: bool = True):
        self.array = array
        self.tile_size = tile_size
        self.symmetric = symmetric
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = 2

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        if not self.symmetric:
            return np.asarray(self.array[r0:r1, c0:c1])
        b = self.tile_size
        if r1 <= r0 or c1 <= c0:
            return np.empty((max(r1 - r0, 0), max(c1 - c0, 0)), self.dtype)
        tr0, tr1 = r0 // b, (r1 - 1) // b
        tc0, tc1 = c0 // b, (c1 - 1) // b
        if tr0 >= tc1:  # wholly in lower tiles
            return np.asarray(self.array[r0:r1, c0:c1])
        if tc0 >= tr1:  # wholly in upper tiles: mirror
            return np.asarray(self.array[c0:c1, r0:r1]).T.copy()
        lower = np.asarray(self.array[r0:r1, c0:c1])
        upper = np.asarray(self.array[c0:c1, r0:r1]).T
        row_tile = (np.arange(r0, r1) // b)[:, None]
        col_tile = (np.arange(c0, c1) // b)[None, :]
        return np.where(row_tile >= col_tile, lower, upper)


class MatrixStore:
    """A square matrix stored as tiles in a Zarr v3 group.

    Use :func:`from_array` to write one and :func:`open_matrix` to open one.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> K = bigspec.from_array(np.diag([1.0, 2.0, 3.0]), "memory://doc-ms.zarr", tile_size=2,
    ...                        overwrite=True)
    >>> K.read(0, 3, 0, 3).diagonal().tolist()
    [1.0, 2.0, 3.0]
    """

    def __init__(self, group: zarr.Group):
        self.group = group
        meta = dict(group.attrs.get(ATTRS_KEY, {}))
        if "matrix" not in group or not meta:
            raise StoreNotFoundError(
                f"{_describe(group)} is not a bigspec matrix store (no 'matrix' array or "
                f"'bigspec' attributes); create one with bigspec.from_array(...) or `bigspec import`"
            )
        self.n = int(meta["n"])
        self.tile_size = int(meta["tile_size"])
        self.dtype = np.dtype(meta["dtype"])
        self.symmetric = bool(meta.get("symmetric", True))
        self.matrix = group["matrix"]

    # -- description -----------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """The ``bigspec`` attributes (a copy)."""
        return dict(self.group.attrs.get(ATTRS_KEY, {}))

    def update_attrs(self, **values: Any) -> None:
        """Merge ``values`` into the ``bigspec`` attributes (client side only)."""
        meta = self.attrs
        meta.update(values)
        self.group.attrs[ATTRS_KEY] = meta

    @property
    def n_tiles(self) -> int:
        """Number of tile rows (= tile columns)."""
        return -(-self.n // self.tile_size)

    @property
    def nbytes(self) -> int:
        """Bytes of the full n x n matrix (what an in-core method would hold)."""
        return self.n * self.n * self.dtype.itemsize

    @property
    def url(self) -> str:
        return _describe(self.group)

    def __repr__(self) -> str:
        return (
            f"MatrixStore({self.url!r}, n={self.n}, tile_size={self.tile_size}, "
            f"dtype={self.dtype}, symmetric={self.symmetric})"
        )

    # -- tiles -----------------------------------------------------------------------
    def tile_bounds(self, i: int) -> tuple[int, int]:
        """Row (or column) range ``[start, stop)`` of tile ``i``."""
        b = self.tile_size
        return i * b, min((i + 1) * b, self.n)

    def stored_tiles(self) -> Iterator[tuple[int, int]]:
        """Tiles that must be written: the lower triangle when symmetric, else all."""
        for i in range(self.n_tiles):
            for j in range(i + 1 if self.symmetric else self.n_tiles):
                yield i, j

    def written_tiles(self) -> set[tuple[int, int]]:
        """Tiles present in the store (one listing of chunk keys, no data read)."""
        from zarr.core.sync import sync

        async def _list():
            prefix = f"{self.matrix.path}/c/"
            return [k async for k in self.group.store.list_prefix(prefix)]

        sep = "/"
        out = set()
        for key in sync(_list()):
            parts = key.rsplit("/c/", 1)[-1].split(sep)
            if len(parts) == 2:
                out.add((int(parts[0]), int(parts[1])))
        return out

    def missing_tiles(self) -> list[tuple[int, int]]:
        """Stored tiles never written (they read as the NaN fill)."""
        written = self.written_tiles()
        return [t for t in self.stored_tiles() if t not in written]

    def check_complete(self) -> None:
        """Raise :class:`IncompleteStoreError` naming unwritten tiles, if any."""
        missing = self.missing_tiles()
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
            raise IncompleteStoreError(
                f"store {self.url} is unfinished: {len(missing)} of "
                f"{sum(1 for _ in self.stored_tiles())} tiles were never written "
                f"(they hold the NaN fill): {shown}. Finish forming it (form again to resume) "
                f"or rewrite it with bigspec.from_array(..., overwrite=True)",
                missing=missing,
            )

    def view(self) -> SymmetricView:
        """Array-like full view with the upper triangle mirrored (what tasks read from)."""
        return SymmetricView(self.matrix, self.tile_size, self.symmetric)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Read ``A[r0:r1, c0:c1]`` of the full (mirrored) matrix."""
        return self.view()[r0:r1, c0:c1]

    def to_dask(self):
        """The full matrix as a lazy dask array, one chunk per tile, upper tiles mirrored.

        Examples
        --------
        >>> import numpy as np, bigspec
        >>> K = bigspec.from_array(np.arange(9.0).reshape(3, 3) + np.arange(9.0).reshape(3, 3).T,
        ...                        "memory://doc-td.zarr", tile_size=2, overwrite=True)
        >>> K.to_dask().chunks
        ((2, 1), (2, 1))
        """
        import dask.array as da

        return da.from_array(
            self.view(), chunks=(self.tile_size, self.tile_size), asarray=False, lock=False,
            name=f"bigspec-matrix-{abs(hash(self.url)) :x}-{self.n}-{self.tile_size}",
        )


def _describe(group: zarr.Group) -> str:
    store = group.store
    root = getattr(store, "root", None) or getattr(store, "path", None) or ""
    fs = getattr(store, "fs", None)
    protocol = ""
    if fs is not None:
        proto = fs.protocol
        protocol = (proto[0] if isinstance(proto, (tuple, list)) else proto) + "://"
    path = str(root)
    if group.path:
        path = f"{path.rstrip('/')}/{group.path}"
    return protocol + path if protocol and not path.startswith(protocol) else path


def open_matrix(store, *, mode: str = "r+", storage_options: dict | None = None) -> MatrixStore:
    """Open an existing matrix store.

    Parameters
    ----------
    store : str, os.PathLike, zarr.Group or MatrixStore
        A path, an fsspec URL (``s3://...``; ``memory://`` for tests) or a Zarr group.
    mode : {"r+", "r"}
        ``"r"`` opens read-only (the factorization checkpoint cannot be written then).
    storage_options : dict, optional
        Passed to fsspec for URLs.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> _ = bigspec.from_array(np.eye(3), "memory://doc-open.zarr", tile_size=2, overwrite=True)
    >>> bigspec.open_matrix("memory://doc-open.zarr").n
    3
    """
    if isinstance(store, MatrixStore):
        return store
    if not isinstance(store, zarr.Group) and not _exists(store, storage_options):
        raise StoreNotFoundError(
            f"no bigspec matrix store at {store!r}: check the path, or create one with "
            f"bigspec.from_array(A, {store!r}, tile_size=...) or `bigspec import A.npy {store}`",
            store=str(store),
        )
    return MatrixStore(_open_group(store, mode, storage_options))


def _as_matrix(A):
    """Return (array-like, kind) for numpy / dask / zarr inputs, checking shape and dtype."""
    kind = "numpy"
    if isinstance(A, zarr.Array):
        kind = "zarr"
    elif type(A).__module__.startswith("dask"):
        kind = "dask"
    elif not hasattr(A, "shape"):
        A = np.asarray(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise InvalidMatrixError(
            f"the matrix must be square (n x n), got shape {tuple(A.shape)}; "
            f"bigspec factors symmetric matrices such as kernel matrices",
            shape=tuple(A.shape),
        )
    check_dtype(A.dtype)
    return A, kind


def from_array(
    A,
    store,
    *,
    tile_size: int | None = None,
    symmetric: bool = True,
    overwrite: bool = False,
    storage_options: dict | None = None,
    check_symmetric: bool = True,
    attrs: dict | None = None,
) -> MatrixStore:
    """Write a numpy, dask or zarr array into a new matrix store.

    Parameters
    ----------
    A : array-like, (n, n)
        float32 or float64 (integers are stored as float64).
    store : str, os.PathLike or zarr.Group
        Where to write: a path, an fsspec URL or a group.
    tile_size : int, optional
        Tile edge; default ``bigspec.tile-size`` from the config. The last tile may be ragged.
    symmetric : bool
        Store only the lower tiles (readers mirror them). Diagonal tiles are stored exactly
        symmetric, ``(T + T.T) / 2``.
    overwrite : bool
        Replace an existing store at that location.
    check_symmetric : bool
        For numpy and zarr inputs, check that ``A`` is symmetric (within 1e-10 relative)
        before dropping its upper triangle.

    Returns
    -------
    MatrixStore

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> K = bigspec.from_array(np.ones((3, 3)) + np.eye(3), "memory://doc-fa.zarr", tile_size=2,
    ...                        overwrite=True)
    >>> K.n, K.tile_size, K.symmetric
    (3, 2, True)
    """
    A, kind = _as_matrix(A)
    dtype = check_dtype(A.dtype)
    n = int(A.shape[0])
    tile_size = check_tile_size(config.get("tile-size") if tile_size is None else tile_size, dtype)
    tile_size = min(tile_size, max(n, 1))
    if not overwrite and (isinstance(store, zarr.Group) and "matrix" in store or
                          not isinstance(store, zarr.Group) and _exists(store, storage_options)):
        raise StoreExistsError(
            f"a matrix store already exists at {store!r}; pass overwrite=True "
            f"(CLI: --overwrite) to replace it, or choose another path",
            store=str(store),
        )
    if symmetric and check_symmetric and kind in ("numpy", "zarr"):
        _check_symmetric(A, tile_size)
    group = new_group(store, storage_options)
    ms = create_matrix(group, n, tile_size, dtype, symmetric, {"source": kind, **(attrs or {})})
    if kind == "dask":
        _write_dask(A, ms)
    else:
        for i, j in ms.stored_tiles():
            r0, r1 = ms.tile_bounds(i)
            c0, c1 = ms.tile_bounds(j)
            ms.matrix[r0:r1, c0:c1] = _prepare_tile(A[r0:r1, c0:c1], i == j and symmetric, dtype, (i, j))
    ms.update_attrs(complete=True)
    return ms


def _check_finite(tile: np.ndarray, i: int, j: int) -> None:
    if not np.isfinite(tile).all():
        raise NonFiniteError(
            f"the matrix holds NaN or infinite values in tile ({i}, {j}); bigspec reserves NaN "
            f"for unwritten tiles, so clean the input (e.g. np.nan_to_num) before storing it",
            tile=(i, j),
        )


def new_group(store, storage_options: dict | None = None) -> zarr.Group:
    """An empty group at ``store`` (a path or URL is recreated; a given group is emptied)."""
    if isinstance(store, zarr.Group):
        for name in list(store.keys()):
            del store[name]
        return store
    return _open_group(store, "w", storage_options)


def create_matrix(group: zarr.Group, n: int, tile_size: int, dtype, symmetric: bool = True,
                  attrs: dict | None = None) -> MatrixStore:
    """Create the NaN-filled ``matrix`` array and the ``bigspec`` attributes in ``group``."""
    dtype = np.dtype(dtype)
    group.create_array(
        "matrix", shape=(n, n), chunks=(tile_size, tile_size), dtype=dtype,
        fill_value=np.nan, dimension_names=("row", "col"), overwrite=True,
        compressors=_compressors(),
    )
    meta = {
        "schema": SCHEMA_VERSION, "n": n, "tile_size": tile_size, "dtype": dtype.name,
        "symmetric": bool(symmetric), "kernel": None, "permutation": None,
        "source": None, "complete": False, "results": {},
    }
    meta.update(attrs or {})
    group.attrs[ATTRS_KEY] = meta
    return MatrixStore(group)


def _compressors():
    """Compressors of the matrix tiles from ``bigspec.compression`` (None: raw, fastest reads)."""
    name = config.get("compression", None)
    if not name:
        return None
    from zarr.codecs import BloscCodec, ZstdCodec

    return {"zstd": ZstdCodec(level=3), "blosc": BloscCodec(cname="zstd", clevel=3)}[name]


def _prepare_tile(tile: np.ndarray, diagonal: bool, dtype, index=(0, 0)) -> np.ndarray:
    tile = np.asarray(tile, dtype=dtype)
    _check_finite(tile, *index)
    if diagonal:
        tile = (tile + tile.T) / 2
    return tile


def _write_tile(block, matrix, r0, r1, c0, c1, diagonal, dtype, index):
    matrix[r0:r1, c0:c1] = _prepare_tile(block, diagonal, dtype, index)
    return 1


def _write_dask(A, ms: MatrixStore) -> None:
    import dask

    b = ms.tile_size
    A = A.rechunk((b, b))
    blocks = A.to_delayed()
    writes = []
    write = dask.delayed(_write_tile, pure=False)
    for i, j in ms.stored_tiles():
        r0, r1 = ms.tile_bounds(i)
        c0, c1 = ms.tile_bounds(j)
        writes.append(write(blocks[i, j], ms.matrix, r0, r1, c0, c1, ms.symmetric and i == j, ms.dtype, (i, j)))
    dask.compute(*writes)


def _check_symmetric(A, b: int) -> None:
    n = A.shape[0]
    scale = 0.0
    worst = (0.0, None)
    for i0 in range(0, n, b):
        for j0 in range(0, i0 + 1, b):
            lo = np.asarray(A[i0:i0 + b, j0:j0 + b], dtype=np.float64)
            up = np.asarray(A[j0:j0 + b, i0:i0 + b], dtype=np.float64).T
            _check_finite(lo, i0 // b, j0 // b)
            _check_finite(up, j0 // b, i0 // b)
            scale = max(scale, float(np.max(np.abs(lo), initial=0.0)))
            diff = float(np.max(np.abs(lo - up), initial=0.0))
            if diff > worst[0]:
                worst = (diff, (i0, j0))
    if worst[1] is not None and worst[0] > 1e-10 * max(scale, np.finfo(float).tiny):
        raise InvalidMatrixError(
            f"the matrix is not symmetric: max |A - A.T| = {worst[0]:.3g} near rows {worst[1][0]}, "
            f"cols {worst[1][1]} (max |A| = {scale:.3g}); symmetrize it with (A + A.T) / 2, "
            f"or store it with symmetric=False",
        )
