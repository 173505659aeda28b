"""Reading regions of local, uncompressed Zarr arrays straight from their chunk files.

Zarr's read path (zarr-python 3.1) hands each read from the calling thread to its event-loop
thread and on to a file-reading thread, then decodes and copies every chunk: about 3 ms for a
1024 x 1024 float64 tile that the page cache delivers in 0.9 ms, and several times slower while
BLAS threads hold the cores. An out-of-core factorization reads earlier columns of L
O(n / W) times (W: the panel width), so those reads cost as much core time as its GEMMs.

Where an array's chunks are plain bytes in files (a :class:`zarr.storage.LocalStore`, Zarr
format 3, a regular chunk grid, no codec but ``bytes`` in native byte order: what bigspec writes
with ``bigspec.compression: null``, its default, and always for a factor's L),
:func:`read_region` reads each chunk's rows with one ``readinto``, straight into the result
when the chunk spans its width. Every other array (compressed, sharded, remote, Zarr format 2)
is read through zarr. Writes always go through zarr: a direct write measured no faster.
"""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["read_region", "raw_layout"]


class RawLayout:
    """Where a raw array's chunks are: its directory, chunk shape, dtype and fill value."""

    __slots__ = ("root", "chunks", "dtype", "fill_value", "metadata")

    def __init__(self, root, chunks, dtype, fill_value, metadata):
        self.root, self.chunks, self.dtype = root, chunks, dtype
        self.fill_value, self.metadata = fill_value, metadata

    def path(self, coords) -> str:
        return os.path.join(self.root, *self.metadata.encode_chunk_key(coords).split("/"))


def raw_layout(array) -> RawLayout | None:
    """The chunk files of ``array`` if they hold its elements as plain bytes, else None."""
    from zarr.codecs import BytesCodec
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    meta = getattr(array, "metadata", None)
    if meta is None or getattr(meta, "zarr_format", None) != 3 or not isinstance(array.store, LocalStore):
        return None
    codecs = meta.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec) or not isinstance(meta.chunk_grid, RegularChunkGrid):
        return None
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biufc" or not dtype.isnative:
        return None
    endian = codecs[0].endian
    if dtype.itemsize > 1 and (endian is None or endian.value != sys.byteorder):
        return None
    return RawLayout(os.path.join(str(array.store.root), *filter(None, array.path.split("/"))),
                     tuple(int(c) for c in array.chunks), dtype, array.fill_value, meta)


def read_region(array, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """``array[r0:r1, c0:c1]`` of a 2-d Zarr array, as a new C-ordered, writable numpy array.

    Parameters
    ----------
    array : zarr.Array
        A 2-d array. Raw local arrays (:func:`raw_layout`) are read from their chunk files;
        any other is sliced through zarr.
    r0, r1, c0, c1 : int
        The region, ``0 <= r0 <= r1 <= rows``, ``0 <= c0 <= c1 <= cols``.

    Returns
    -------
    numpy.ndarray, shape (r1 - r0, c1 - c0), the array's dtype
        Chunks never written read as the array's fill value, as zarr reads them.

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> z = zarr.create_array(tempfile.mkdtemp() + "/a.zarr", shape=(5, 5), chunks=(2, 2), dtype="f8",
    ...                       compressors=None, fill_value=np.nan)
    >>> z[:4, :] = np.arange(20.0).reshape(4, 5)
    >>> read_region(z, 1, 5, 3, 5)
    array([[ 8.,  9.],
           [13., 14.],
           [18., 19.],
           [nan, nan]])
    """
    lay = raw_layout(array)
    if lay is None:
        return np.array(array[r0:r1, c0:c1], order="C", copy=True)
    out = np.empty((r1 - r0, c1 - c0), lay.dtype)
    if out.size and not _read_chunks(lay, out, r0, r1, c0, c1):
        return np.array(array[r0:r1, c0:c1], order="C", copy=True)   # a chunk file of another size
    return out


def _read_chunks(lay: RawLayout, out: np.ndarray, r0, r1, c0, c1) -> bool:
    br, bc = lay.chunks
    item = lay.dtype.itemsize
    chunk_bytes = br * bc * item
    for i in range(r0 // br, -(-r1 // br)):
        a0, a1 = max(r0, i * br) - i * br, min(r1, (i + 1) * br) - i * br   # rows within chunk row i
        for j in range(c0 // bc, -(-c1 // bc)):
            b0, b1 = max(c0, j * bc) - j * bc, min(c1, (j + 1) * bc) - j * bc
            dst = out[i * br + a0 - r0:i * br + a1 - r0, j * bc + b0 - c0:j * bc + b1 - c0]
            try:
                f = open(lay.path((i, j)), "rb", buffering=0)
            except FileNotFoundError:
                dst[...] = lay.fill_value
                continue
            with f:
                if os.fstat(f.fileno()).st_size != chunk_bytes:
                    return False
                f.seek(a0 * bc * item)
                whole = b0 == 0 and b1 == bc and dst.flags.c_contiguous
                buf = dst if whole else np.empty((a1 - a0, bc), lay.dtype)
                if f.readinto(memoryview(buf).cast("B")) != buf.nbytes:
                    return False
                if not whole:
                    dst[...] = buf[:, b0:b1]
    return True
