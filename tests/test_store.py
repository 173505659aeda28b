import os

import dask.array as da
import numpy as np
import pytest
import zarr

import bigspec
from bigspec.errors import (IncompleteStoreError, InvalidMatrixError, NonFiniteError, StoreExistsError,
                            StoreNotFoundError, TileSizeError)
from bigspec.testing import make_indefinite


@pytest.mark.parametrize("n,b", [(1, 1), (5, 2), (17, 5), (64, 16), (70, 16)])
def test_roundtrip_mirrors_upper_tiles(store_path, n, b):
    A = make_indefinite(n, seed=n)
    ms = bigspec.from_array(A, store_path, tile_size=b)
    assert (ms.n, ms.tile_size, ms.n_tiles) == (n, b, -(-n // b))
    np.testing.assert_array_equal(ms.to_dask().compute(), A)
    # only the lower tiles are stored
    assert ms.written_tiles() == set(ms.stored_tiles())
    assert len(ms.written_tiles()) == ms.n_tiles * (ms.n_tiles + 1) // 2
    # arbitrary unaligned reads
    np.testing.assert_array_equal(ms.read(1, n, 0, max(n - 1, 1)), A[1:n, 0:max(n - 1, 1)])
    arr = zarr.open_group(store_path, mode="r")["matrix"]
    assert arr.metadata.dimension_names == ("row", "col")
    assert np.isnan(arr.metadata.fill_value)


def test_attributes_document_the_store(store_path):
    ms = bigspec.from_array(np.eye(7, dtype=np.float32), store_path, tile_size=3)
    meta = bigspec.open_matrix(store_path).attrs
    assert meta["n"] == 7 and meta["tile_size"] == 3 and meta["dtype"] == "float32"
    assert meta["symmetric"] is True and meta["complete"] is True and meta["schema"] == 1
    assert ms.dtype == np.float32


def test_inputs_dask_zarr_memory_url_and_group(tmp_path):
    A = make_indefinite(30, seed=1)
    ms1 = bigspec.from_array(da.from_array(A, chunks=7), str(tmp_path / "a.zarr"), tile_size=8)
    np.testing.assert_array_equal(ms1.to_dask().compute(), A)
    z = zarr.create_array(str(tmp_path / "raw.zarr"), shape=A.shape, chunks=(11, 11), dtype="f8")
    z[:] = A
    ms2 = bigspec.from_array(z, "memory://test-inputs.zarr", tile_size=8, overwrite=True)
    np.testing.assert_array_equal(bigspec.open_matrix("memory://test-inputs.zarr").to_dask().compute(), A)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    ms3 = bigspec.from_array(A, g, tile_size=8)
    assert bigspec.open_matrix(g).n == 30 and ms2.n == ms3.n == 30
    # integers are stored as float64
    assert bigspec.from_array(np.eye(3, dtype=int), str(tmp_path / "i.zarr")).dtype == np.float64


def test_diagonal_tiles_are_exactly_symmetric(store_path):
    A = make_indefinite(9, seed=2)
    A[0, 1] += 1e-13  # within tolerance: symmetrized on write
    bigspec.from_array(A, store_path, tile_size=9)
    T = zarr.open_group(store_path)["matrix"][:]
    np.testing.assert_array_equal(T, T.T)


def test_errors(tmp_path, store_path):
    with pytest.raises(StoreNotFoundError, match="no bigspec matrix store"):
        bigspec.open_matrix(str(tmp_path / "nothing.zarr"))
    with pytest.raises(InvalidMatrixError, match="square"):
        bigspec.from_array(np.ones((3, 4)), store_path)
    with pytest.raises(InvalidMatrixError, match="unsupported dtype complex128"):
        bigspec.from_array(np.eye(3, dtype=complex), store_path)
    with pytest.raises(InvalidMatrixError, match="not symmetric.*triangle='upper'"):
        bigspec.from_array(np.triu(np.ones((4, 4))), store_path)
    with pytest.raises(NonFiniteError, match=r"NaN at row 0, col 3"):
        A = np.eye(4)
        A[3, 0] = A[0, 3] = np.nan
        bigspec.from_array(A, store_path, tile_size=2)
    assert not os.path.exists(store_path)           # nothing is written before validation passes
    with pytest.raises(TileSizeError, match="use at most tile_size=16383"):
        bigspec.from_array(np.eye(3), store_path, tile_size=20000)
    with pytest.raises(TileSizeError, match="positive integer"):
        bigspec.from_array(np.eye(3), store_path, tile_size=0)
    bigspec.from_array(np.eye(3), store_path)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        bigspec.from_array(np.eye(3), store_path)
    bigspec.from_array(2 * np.eye(3), store_path, overwrite=True)
    assert bigspec.open_matrix(store_path).read(0, 3, 0, 3)[0, 0] == 2.0


def test_unfinished_store_names_missing_tiles(store_path):
    ms = bigspec.from_array(np.eye(6), store_path, tile_size=2)
    # delete one tile's chunk: it reads back as the NaN fill, as if never written
    os.remove(os.path.join(store_path, "matrix", "c", "2", "1"))
    assert ms.missing_tiles() == [(2, 1)]
    with pytest.raises(IncompleteStoreError, match=r"\(2, 1\)"):
        bigspec.logdet(store_path)
