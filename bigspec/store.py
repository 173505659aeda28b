"""The matrix store: one Zarr v3 group per matrix, cut into square tiles.

Layout::

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

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr

from .chunkio import read_region
from . import config
from .errors import (
    IncompleteStoreError,
    NonFiniteError,
    StoreExistsError,
    StoreNotFoundError,
    TileSizeError,
    arg,
    opt,
)
from .matrix import check_dtype  # noqa: F401  (re-exported: the storage dtype of a matrix)
from .storage import (
    ATTRS_KEY,
    describe,
    has_consolidated,
    initialized_chunks,
    is_store,
    local_path,
    open_group,
    refresh_consolidated,
)

SCHEMA_VERSION = 1
# One LAPACK call must never see a block of 2**31 bytes or more (threaded OpenBLAS
# potrf segfaults at 16384 x 16384 float64), so a tile stays below that. Tiles are
# factored in float64 whatever the storage dtype, so the bound is on 8-byte entries.
MAX_TILE_BYTES = 2**31 - 1
COMPUTE_ITEMSIZE = 8

logger = logging.getLogger(__name__)


def check_tile_size(tile_size) -> int:
    """Validate a tile edge: a positive int whose square float64 tile stays below 2**31 bytes."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)):
        raise TileSizeError(f"{arg('tile_size')} must be a positive integer (such as {arg('tile_size', 1024)}), "
                            f"got {tile_size!r}", tile_size=tile_size)
    tile_size = int(tile_size)
    if tile_size < 1:
        raise TileSizeError(f"{arg('tile_size')} must be a positive integer (such as {arg('tile_size', 1024)}), "
                            f"got {tile_size}", tile_size=tile_size)
    if tile_size * tile_size * COMPUTE_ITEMSIZE > MAX_TILE_BYTES:
        largest = math.isqrt(MAX_TILE_BYTES // COMPUTE_ITEMSIZE)
        raise TileSizeError(
            f"{arg('tile_size', tile_size)} makes a {tile_size}x{tile_size} float64 tile of 2 GiB or more, which "
            f"LAPACK cannot factor safely; use at most {arg('tile_size', largest)} (4096 is a good default)",
            tile_size=tile_size)
    return tile_size


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
            return read_region(self.array, r0, r1, c0, c1)
        b = self.tile_size
        if r1 <= r0 or c1 <= c0:
            return np.empty((max(r1 - r0, 0), max(c1 - c0, 0)), self.dtype)
        tr0, tr1 = r0 // b, (r1 - 1) // b
        tc0, tc1 = c0 // b, (c1 - 1) // b
        if tr0 >= tc1:  # wholly in lower tiles
            return read_region(self.array, r0, r1, c0, c1)
        if tc0 >= tr1:  # wholly in upper tiles: mirror
            return read_region(self.array, c0, c1, r0, r1).T.copy()
        lower = read_region(self.array, r0, r1, c0, c1)
        upper = read_region(self.array, c0, c1, r0, r1).T
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
                f"{describe(group)} is not a bigspec matrix store (no 'matrix' array or "
                f"'bigspec' attributes); create one with "
                + opt("bigspec.from_array(A, path)", "`bigspec import A.npy PATH`"))
        self.n = int(meta["n"])
        self.tile_size = int(meta["tile_size"])
        self.dtype = np.dtype(meta["dtype"])
        self.symmetric = bool(meta.get("symmetric", True))
        self.matrix = group["matrix"]
        #: the store had consolidated metadata when opened: it is rewritten after each write
        self.consolidated = has_consolidated(group)

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
        self.sync_metadata()

    def sync_metadata(self) -> None:
        """Keep consolidated metadata (if the store had it) in step with bigspec's writes."""
        if self.consolidated:
            refresh_consolidated(self.group)

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
        return describe(self.group)

    @property
    def local_path(self) -> str | None:
        """The store's directory when it is on a local file system (None for URLs and memory)."""
        return local_path(self.group)

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
        """Stored tiles present in the store (one listing of chunk keys, no data read)."""
        return initialized_chunks(self.matrix, self.stored_tiles())

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
                f"(they hold the NaN fill): {shown}. "
                + ("Form it again with the same kernel, data and settings: only the missing tiles are computed"
                   if self.attrs.get("source") == "form" else
                   f"Write it again with {opt('bigspec.from_array(A, path, overwrite=True)', '`bigspec import A.npy PATH --overwrite`')}"),
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
    if not isinstance(store, zarr.Group) and not is_store(store, storage_options):
        from .storage import contents, locate

        found = contents(store, storage_options)
        url = locate(store, storage_options).url
        detail = {"missing": "nothing is there: check the path",
                  "empty": "it is an empty directory",
                  "file": "it is a file",
                  "zarr": "it holds zarr data that is not a bigspec store (a plain zarr array can be given to "
                          + opt("bigspec.logdet / spectrum", "`bigspec logdet` / `spectrum`") + " as it is)",
                  "other": f"it holds other files ({', '.join(found.entries)})"}.get(found.kind, "")
        raise StoreNotFoundError(
            f"no bigspec matrix store at {url}: {detail}; create one with "
            + opt(f"bigspec.from_array(A, {str(store)!r})", f"`bigspec import A.npy {store}`"), store=str(store))
    return MatrixStore(open_group(store, mode, storage_options))


def from_array(
    A,
    store,
    *,
    tile_size: int | None = None,
    symmetric: bool = True,
    triangle: str | None = None,
    missing_chunks: str = "error",
    overwrite: bool = False,
    storage_options: dict | None = None,
    attrs: dict | None = None,
    client=None,
    progress: bool | None = None,
) -> MatrixStore:
    """Write a numpy, dask or zarr array (or a .npy file, or another store) into a new matrix store.

    ``A`` is validated first (:func:`bigspec.matrix.as_matrix`: square, finite, symmetric, every
    needed zarr chunk written); nothing is written before that passes.

    Parameters
    ----------
    A : array-like (n, n), zarr array, dask array, .npy path or MatrixStore
        float32 or float64 (float16 is stored as float32, integers as float64).
    store : str, os.PathLike or zarr.Group
        Where to write: a path, an fsspec URL (``file://``, ``s3://``, ``memory://``) or a group.
    tile_size : int, optional
        Tile edge; default: the tiles of a bigspec store given as ``A``, else ``bigspec.tile-size``
        from the config. The last tile may be ragged.
    symmetric : bool, default True
        Store only the lower tiles (readers mirror them); diagonal tiles are stored exactly
        symmetric. ``False`` stores every tile of a non-symmetric matrix as it is.
    triangle : {None, "lower", "upper"}, default None
        None: both triangles of ``A`` are given and must agree (within 1e-10 relative for
        float64). ``"upper"`` / ``"lower"``: ``A`` is given by that triangle, which is mirrored;
        the other half is neither read nor checked.
    missing_chunks : {"error", "fill"}, default "error"
        A zarr input with a needed chunk never written raises; ``"fill"`` reads it as the fill value.
    overwrite : bool, default False
        Replace what is at ``store``: a bigspec store, or (listed in an
        :class:`~bigspec.errors.OverwriteWarning` before it is deleted) anything else. A target
        that is or holds the input itself is always refused.
    storage_options : dict, optional
        fsspec options for URLs.
    attrs : dict, optional
        JSON-safe provenance recorded in the store's ``bigspec`` attributes.
    client : distributed.Client, optional
        Where a dask array's tiles are computed and written. Default: the current client,
        else Dask's threaded scheduler.
    progress : bool, optional
        Show a progress bar (default: on a terminal).

    Returns
    -------
    MatrixStore

    Raises
    ------
    InvalidMatrixError, NonFiniteError, IncompleteStoreError
        ``A`` is not square, symmetric, finite or complete (nothing is written).
    StoreExistsError
        ``store`` holds something and ``overwrite`` was not given, or it is the input.
    TypeError
        ``attrs`` is not a dict of JSON-safe values, or another argument has the wrong type.
    Interrupted
        Ctrl-C: the store is left marked incomplete; write it again with ``overwrite=True``.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> K = bigspec.from_array(np.ones((3, 3)) + np.eye(3), "memory://doc-fa.zarr", tile_size=2,
    ...                        overwrite=True)
    >>> K.n, K.tile_size, K.symmetric
    (3, 2, True)
    >>> U = np.triu(np.ones((3, 3)))              # a matrix saved as its upper triangle
    >>> float(bigspec.from_array(U, "memory://doc-fa-u.zarr", triangle="upper", overwrite=True).read(0, 3, 0, 3)[2, 0])
    1.0
    """
    from .cluster import require_visible, resolve_client
    from .matrix import as_matrix
    from .progress import want_progress
    from .runner import Runner
    from .storage import prepare_target
    from .validate import check_attrs, check_flag

    overwrite, symmetric = check_flag(overwrite, "overwrite"), check_flag(symmetric, "symmetric")
    attrs = check_attrs(attrs)
    want_progress(progress)
    client = resolve_client(client)
    m = as_matrix(A, triangle=triangle, missing_chunks=missing_chunks, symmetric=symmetric,
                  storage_options=storage_options if isinstance(A, (str, os.PathLike)) else None, client=client)
    if tile_size is None:
        tile_size = m.tile_size or config.get("tile-size")
    tile_size = min(check_tile_size(tile_size), m.n)
    group = prepare_target(store, overwrite=overwrite, storage_options=storage_options, inputs=[m.origin])
    ms = create_matrix(group, m.n, tile_size, m.dtype, symmetric, {"source": m.kind, **attrs})
    tiles = sum(1 for _ in ms.stored_tiles())

    def interrupted():
        done = len(ms.written_tiles())
        return (f"wrote {done} of {tiles} tiles of {ms.url}, which is marked incomplete: write it again with "
                f"{arg('overwrite', True)}")

    with Runner(client, progress=progress, label="bigspec import", unit="tiles", total=tiles,
                interrupted=interrupted) as runner:
        if m.kind == "dask" and ms.local_path is not None:
            require_visible(client, ms.local_path, f"the store {ms.url}",
                            "write it to storage every worker mounts at the same path, or to a URL (s3://...)")
        write_matrix(m, ms, runner)
    ms.update_attrs(complete=True)
    return ms


def write_matrix(m, ms: MatrixStore, runner=None) -> None:
    """Write the stored tiles of the validated matrix ``m`` into the (new) store ``ms``.

    A dask array's tiles are computed and written by ``runner``'s scheduler; other inputs are
    read here, one tile at a time.
    """
    if runner is None:
        from .runner import Runner

        runner = Runner(None, progress=False)
    if m.kind == "dask":
        _write_dask(m.source, ms, runner)
        return
    for i, j in ms.stored_tiles():
        r0, r1 = ms.tile_bounds(i)
        c0, c1 = ms.tile_bounds(j)
        ms.matrix[r0:r1, c0:c1] = _prepare_tile(m.source[r0:r1, c0:c1], i == j and ms.symmetric, ms.dtype, (i, j))
        runner.bar.advance(1)


def _check_finite(tile: np.ndarray, i: int, j: int, r0: int = 0, c0: int = 0) -> None:
    finite = np.isfinite(tile)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise NonFiniteError(
            f"the matrix holds {tile[r, c]} at row {r0 + r}, col {c0 + c} (tile ({i}, {j})); bigspec reserves NaN "
            f"for unwritten tiles, so fix or drop that row and column before storing it",
            tile=(i, j), row=int(r0 + r), col=int(c0 + c))


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


# --------------------------------------------------------------------------- the factor's schema
FACTOR_SCHEMA = 2
FACTOR_DTYPE = np.dtype("float64")   # tiles are factored, and L kept, in float64 whatever the storage dtype


class FactorStore:
    """The ``factor/`` group of a matrix store (or of a temporary spill directory): the exact
    factorization's checkpoint, written once per tile, so that a killed run resumes.

    Arrays: ``L`` (n x n, float64, tiles of the matrix's, uncompressed: it is read back once per
    later super-panel), ``log_d`` and ``sign_d`` (the determinant-preserving diagonal), and for
    LDL^T ``D`` (2 x n: diagonal and subdiagonal) and ``perm`` (pivot order). Attributes under
    ``"bigspec_factor"``: schema, n, tile_size, dtype, method, the scale/shift digest
    (``params``), ``columns_done`` (tile columns), ``panels_done``, ``complete`` and the
    factorization's diagnostics (``stats``). A factor made with other settings is kept unless
    ``overwrite`` (StoreExistsError says what differs).
    """

    @staticmethod
    def check(meta: dict, n, b, method, digest, overwrite):
        """(wanted metadata, whether the kept factor differs, whether to replace it) for a factor whose
        metadata is ``meta``; raises StoreExistsError where a run would refuse (a dry run asks too)."""
        want = {"schema": FACTOR_SCHEMA, "n": n, "tile_size": b, "dtype": FACTOR_DTYPE.name,
                "method": method, "params": digest}
        differs = bool(meta) and any(meta.get(k) != v for k, v in want.items())
        if differs and all(meta.get(k) == v for k, v in want.items() if k != "schema"):
            logger.info("replacing a factorization of an older bigspec (factor schema %s)", meta.get("schema"))
            overwrite = True   # bigspec's own cache in an outdated layout, same settings: recompute it
        if differs and not meta.get("complete") and not int(meta.get("columns_done", 0)):
            overwrite = True   # a factor with no column done holds nothing to lose (a failed first panel)
        if differs and not overwrite:
            names = {"method": "method", "params": "scale and shift", "tile_size": "tile_size", "n": "n",
                     "dtype": "dtype", "schema": "factor layout"}
            diff = "; ".join(f"{names[k]}: {_factor_setting(k, meta.get(k))} there, {_factor_setting(k, v)} now"
                             for k, v in want.items() if meta.get(k) != v)
            state = ("complete" if meta.get("complete") else
                     f"{min(int(meta.get('columns_done', 0)) * b, n)} of {n} columns done")
            raise StoreExistsError(
                f"the store keeps one factorization in factor/, and it was made with other settings ({diff}); "
                f"pass {arg('overwrite', True)} to replace it (it is {state}), or {arg('checkpoint', False)} to "
                f"factor without keeping this one", existing=meta)
        return want, differs, overwrite

    def __init__(self, group, n, b, method, digest, overwrite):
        self.group = group
        meta = dict(group.attrs.get("bigspec_factor", {}))
        want, differs, overwrite = self.check(meta, n, b, method, digest, overwrite)
        if not meta or overwrite or differs:
            for name in list(group.keys()):
                del group[name]
            meta = dict(want, columns_done=0, complete=False)
            # L is read back O(n / W) times: no compression, whose cost would dominate the reads
            group.create_array("L", shape=(n, n), chunks=(b, b), dtype=FACTOR_DTYPE, fill_value=np.nan,
                               dimension_names=("row", "col"), overwrite=True, compressors=None)
            group.create_array("log_d", shape=(n,), chunks=(b,), dtype="float64", fill_value=np.nan,
                               overwrite=True)
            group.create_array("sign_d", shape=(n,), chunks=(b,), dtype="int8", fill_value=0, overwrite=True)
            if method == "ldl":
                group.create_array("D", shape=(2, n), chunks=(2, b), dtype="float64",
                                   fill_value=np.nan, overwrite=True)
                group.create_array("perm", shape=(n,), chunks=(b,), dtype="int64", fill_value=-1,
                                   overwrite=True)
            group.attrs["bigspec_factor"] = meta
        self.meta = meta

    @property
    def columns_done(self) -> int:
        return int(self.meta.get("columns_done", 0))

    @property
    def stats(self) -> dict:
        """Diagnostics of the panels already factored (merged over every run)."""
        return dict(self.meta.get("stats", {}))

    def arrays(self) -> dict:
        return {"L": self.group["L"], "D": self.group["D"] if "D" in self.group else None}

    def save_columns(self, infos, k1, stats, complete, root=None):
        for (r0, r1), info in infos:
            self.group["log_d"][r0:r1] = info["log_d"]
            self.group["sign_d"][r0:r1] = info["sign_d"]
            if info["D"] is not None:
                self.group["D"][:, r0:r1] = info["D"]
                self.group["perm"][r0:r1] = info["perm"] + r0
        self.meta = dict(self.meta, columns_done=k1, complete=complete, stats=stats,
                         panels_done=int(self.meta.get("panels_done", 0)) + 1)
        self.group.attrs["bigspec_factor"] = self.meta
        if root is not None:
            root.sync_metadata()

    def load_d(self, stop) -> dict:
        """log_d, sign_d and the leading-minor mask of the first ``stop`` pivots."""
        from .determinant.tiles import leading_minors

        out = {"log_d": np.asarray(self.group["log_d"][:stop]), "sign_d": np.asarray(self.group["sign_d"][:stop])}
        if "perm" in self.group:
            out["leading_minor"] = leading_minors(self.group["perm"][:stop], self.group["D"][:, :stop])
        else:
            out["leading_minor"] = np.ones(stop, bool)
        return out


def _factor_setting(key, value):
    if key == "params" and isinstance(value, str):
        return value.replace(";", ", ")
    return f"{value}"


def _compressors():
    """Compressors of the matrix tiles from ``bigspec.compression`` (None: raw, fastest reads)."""
    name = config.get("compression", None)
    if not name:
        return None
    from zarr.codecs import BloscCodec, ZstdCodec

    return {"zstd": ZstdCodec(level=3), "blosc": BloscCodec(cname="zstd", clevel=3)}[name]


def _prepare_tile(tile: np.ndarray, diagonal: bool, dtype, index=(0, 0), origin=(0, 0)) -> np.ndarray:
    tile = np.asarray(tile, dtype=dtype)
    _check_finite(tile, *index, *origin)
    if diagonal:  # the lower triangle, mirrored: what every input path reads (not the average)
        tile = np.tril(tile) + np.tril(tile, -1).T
    return tile


def _write_tile(block, matrix, r0, r1, c0, c1, diagonal, dtype, index):
    matrix[r0:r1, c0:c1] = _prepare_tile(block, diagonal, dtype, index, (r0, c0))
    return 1


def _write_dask(A, ms: MatrixStore, runner) -> None:
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
    runner.compute(writes, tick=True)
