"""Tile kernels on numpy and (where a GPU is lent) cupy, against dense oracles."""

import numpy as np
import pytest

from bigspec.backend import get_namespace, to_host
from bigspec.errors import BackendUnavailableError, NotPositiveDefiniteError
from bigspec.determinant import tiles
from bigspec.testing import make_indefinite, make_spd


def _tiled_slogdet(xp, A, b, method):
    n = A.shape[0]
    nt = -(-n // b)
    bd = [(i * b, min(n, (i + 1) * b)) for i in range(nt)]
    T = {(i, j): xp.asarray(A[slice(*bd[i]), slice(*bd[j])].copy()) for i in range(nt) for j in range(i + 1)}
    sign, logdet = 1, 0.0
    for k in range(nt):
        F = tiles.factor_diagonal(T[k, k], method, (k, k), bd[k][0])
        sign *= F.sign
        logdet += F.logabsdet
        L = {i: tiles.solve_below(T[i, k], F) for i in range(k + 1, nt)}
        for j in range(k + 1, nt):
            LD = tiles.scale_by_D(L[j], F.D)
            for i in range(j, nt):
                T[i, j] = tiles.update(T[i, j], L[i], LD, i == j, method == "cholesky")
    return sign, logdet


@pytest.mark.parametrize("method", ["cholesky", "ldl"])
@pytest.mark.parametrize("n,b", [(13, 5), (40, 40), (64, 16)])
def test_tile_kernels_give_the_determinant(xp, method, n, b):
    A = make_spd(n, seed=n) if method == "cholesky" else make_indefinite(n, seed=n)
    sign, logdet = _tiled_slogdet(xp, A, b, method)
    ref = np.linalg.slogdet(A)
    assert sign == ref[0] and abs(logdet - ref[1]) < 1e-10 * max(1, abs(ref[1]))


def test_solve_and_update_match_dense(xp):
    rng = np.random.default_rng(0)
    S = make_indefinite(12, seed=1)
    F = tiles.factor_diagonal(xp.asarray(S.copy()), "ldl")
    Lt = to_host(F.L)[np.argsort(F.perm)]
    D = np.diag(F.D[0]) + np.diag(F.D[1][:-1], -1) + np.diag(F.D[1][:-1], 1)
    np.testing.assert_allclose(Lt @ D @ Lt.T, S, atol=1e-12)
    B = rng.standard_normal((7, 12))
    X = to_host(tiles.solve_below(xp.asarray(B.copy()), F))
    np.testing.assert_allclose(X @ D @ Lt.T, B, atol=1e-10)
    C = rng.standard_normal((7, 5))
    Lj = rng.standard_normal((5, 12))
    out = to_host(tiles.update(xp.asarray(C.copy()), xp.asarray(X), xp.asarray(Lj), False, False))
    np.testing.assert_allclose(out, C - X @ Lj.T, atol=1e-12)


def test_cholesky_reports_pivot(xp):
    A = make_spd(10, seed=2)
    A[6, 6] = -1.0
    with pytest.raises(NotPositiveDefiniteError) as e:
        tiles.factor_diagonal(xp.asarray(A), "cholesky", (3, 3), 100)
    assert e.value.pivot == 106 and e.value.tile == (3, 3)


def test_gpu_unavailable_is_an_error_not_a_fallback(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    with pytest.raises(BackendUnavailableError, match=r"pip install \"\.\[gpu\]\""):
        get_namespace("gpu")
    import bigspec
    with pytest.raises(BackendUnavailableError):
        bigspec.logdet(np.eye(3), device="gpu")


@pytest.mark.gpu
def test_gpu_logdet_matches_cpu(xp, tmp_path):
    if xp is np:
        pytest.skip("GPU-only test")
    import bigspec
    A = make_spd(500, seed=3)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=64)
    for method in ("cholesky", "ldl"):
        r = bigspec.logdet(ms, method=method, device="gpu", memory=int(A.nbytes * 0.3), checkpoint=False)
        assert r.super_panels > 1 and r.device == "gpu"
        assert abs(r.logabsdet - np.linalg.slogdet(A)[1]) < 1e-9 * abs(np.linalg.slogdet(A)[1])
