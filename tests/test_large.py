"""Past the LAPACK limit: a matrix whose single block would be 2**31 bytes or more."""

import numpy as np
import pytest

import bigspec
from bigspec.errors import TileSizeError


def test_tile_size_is_capped_below_the_lapack_limit():
    with pytest.raises(TileSizeError, match="use at most tile_size=16383"):
        bigspec.logdet(np.eye(4), tile_size=16384)


@pytest.mark.slow
def test_matrix_larger_than_one_lapack_block(tmp_path):
    # 16500 x 16500 float64 is 2.18 GB: one potrf on it would crash threaded OpenBLAS;
    # bigspec factors it tile by tile. A diagonally dominant matrix with a known logdet:
    # A = D + u u^T  ->  logdet = sum log d + log(1 + u^T D^{-1} u)
    n = 16_500
    rng = np.random.default_rng(0)
    d = rng.uniform(1.0, 2.0, n)
    u = rng.standard_normal(n) * 0.01
    A = np.outer(u, u)
    A[np.diag_indices(n)] += d
    assert A.nbytes >= 2**31
    expected = np.sum(np.log(d)) + np.log1p(np.sum(u * u / d))
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=2048)
    del A
    r = bigspec.logdet(ms, method="cholesky", checkpoint=False)
    assert r.sign == 1 and r.logabsdet == pytest.approx(expected, rel=1e-12)
