"""Direct chunk-file reads against zarr's own reads of the same regions (the oracle)."""

import os

import numpy as np
import pytest
import zarr

import bigspec
from bigspec.chunkio import raw_layout, read_region
from bigspec.store import FactorStore


def _array(tmp_path, shape=(37, 29), chunks=(8, 6), dtype="f8", fill=np.nan, **kw):
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                          compressors=kw.pop("compressors", None), **kw)
    return z


def _regions(shape, rng, k=60):
    yield 0, shape[0], 0, shape[1]
    for _ in range(k):
        r0, r1 = sorted(rng.integers(0, shape[0] + 1, 2))
        c0, c1 = sorted(rng.integers(0, shape[1] + 1, 2))
        yield int(r0), int(r1), int(c0), int(c1)


@pytest.mark.parametrize("dtype", ["f8", "f4", "i8", "i1", "c16"])
def test_regions_match_zarr_with_edge_and_unwritten_chunks(tmp_path, dtype):
    z = _array(tmp_path, dtype=dtype, fill=0 if dtype[0] == "i" else np.nan)
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(z.shape) * 50).astype(dtype)
    z[:24, :] = data[:24]            # chunk rows 3 and 4 (the edge row) never written
    z[32:, 12:18] = data[32:, 12:18]  # one edge chunk written
    assert raw_layout(z) is not None
    for r0, r1, c0, c1 in _regions(z.shape, rng):
        got, want = read_region(z, r0, r1, c0, c1), z[r0:r1, c0:c1]
        assert got.shape == want.shape and got.dtype == want.dtype and got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, want)


def test_raw_arrays_are_read_without_zarr(tmp_path, monkeypatch):
    z = _array(tmp_path)
    z[:] = np.arange(37 * 29.0).reshape(37, 29)
    monkeypatch.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("read through zarr"))
    np.testing.assert_array_equal(read_region(z, 8, 16, 6, 12), np.arange(37 * 29.0).reshape(37, 29)[8:16, 6:12])


@pytest.mark.parametrize("kind", ["zstd", "sharded", "big-endian", "v2"])
def test_other_layouts_are_read_through_zarr(tmp_path, kind):
    kw = {}
    if kind == "zstd":
        kw["compressors"] = zarr.codecs.ZstdCodec()
    elif kind == "sharded":
        kw["shards"] = (16, 12)
    elif kind == "big-endian":
        kw["serializer"] = zarr.codecs.BytesCodec(endian="big")
    else:
        kw["zarr_format"] = 2
    z = _array(tmp_path, **kw)
    data = np.random.default_rng(1).standard_normal(z.shape)
    z[:] = data
    assert raw_layout(z) is None
    np.testing.assert_array_equal(read_region(z, 3, 30, 5, 20), data[3:30, 5:20])


def test_a_chunk_file_of_the_wrong_size_is_left_to_zarr(tmp_path):
    z = _array(tmp_path)
    z[:] = 1.0
    with open(os.path.join(raw_layout(z).path((0, 0))), "r+b") as f:
        f.truncate(16)
    with pytest.raises(Exception):       # zarr's own error, not a silently short read
        read_region(z, 0, 8, 0, 6)


def test_bigspec_stores_take_the_direct_path(tmp_path):
    ms = bigspec.from_array(np.eye(50), str(tmp_path / "m.zarr"), tile_size=16)
    assert raw_layout(ms.matrix) is not None
    np.testing.assert_array_equal(ms.view()[10:40, 5:45], np.eye(50)[10:40, 5:45])
    f = FactorStore(zarr.open_group(str(tmp_path / "f.zarr"), mode="w"), 50, 16, "cholesky", "d", False)
    assert raw_layout(f.group["L"]) is not None
