"""Infinite-width attention kernel: closed forms, a finite-width layer, PSD, MC rate, non-Gaussianity."""

import numpy as np
import pytest
from scipy.stats import kurtosis

import bigspec
from bigspec.kernels import get_kernel


def seqs(n, s, d_in, seed):
    return np.random.default_rng(seed).standard_normal((n, s, d_in))


def kernel_matrix(k, X):
    k.check_data(X)
    x = k.prepare(X)
    return k(x, x, diagonal=True)


def finite_width_attention(X, width, heads, draws, s_qk, s_vo, seed):
    """Covariance of the mean-pooled output of explicit finite-width attention layers."""
    rng = np.random.default_rng(seed)
    n, s, d_in = X.shape
    acc = np.zeros((n, n))
    for _ in range(draws):
        E = X @ (rng.standard_normal((d_in, width)) / np.sqrt(d_in))       # tokens at width n
        Y = np.zeros((n, s, width))
        for _ in range(heads):
            WQ, WK, WV, WO = (rng.standard_normal((4, width, width)) / np.sqrt(width))
            G = np.sqrt(s_qk) * (E @ WQ) @ (np.sqrt(s_qk) * (E @ WK)).transpose(0, 2, 1) / np.sqrt(width)
            A = np.exp(G - G.max(-1, keepdims=True))
            A /= A.sum(-1, keepdims=True)
            Y += s_vo * A @ E @ WV @ WO
        ybar = Y.mean(axis=1) / np.sqrt(heads)
        acc += ybar @ ybar.T / width
    return acc / draws


def test_closed_form_for_trivial_attention():
    # length-1 or repeated-token sequences: softmax averages equal rows, K = s_vo^2 Sigma exactly
    X = seqs(7, 4, 3, 0)
    X[:] = X[:, :1]                      # every sequence repeats its first token
    k = get_kernel("attention", n_draws=64, sigma_qk=2.0, sigma_vo=1.5, sigma_e=0.8)
    K = kernel_matrix(k, X)
    phi = 0.8 * X[:, 0] / np.sqrt(3)
    np.testing.assert_allclose(K, 1.5 ** 2 * phi @ phi.T, rtol=1e-10, atol=1e-12)
    one = get_kernel("attention", n_draws=32, sigma_eb=0.5)
    X1 = seqs(5, 1, 3, 1)
    phi1 = np.concatenate([X1[:, 0] / np.sqrt(3), np.full((5, 1), 0.5)], axis=1)
    np.testing.assert_allclose(kernel_matrix(one, X1), phi1 @ phi1.T, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_matches_a_wide_finite_attention_layer():
    X = seqs(6, 3, 4, 2)
    s_qk = 3.0
    limit = kernel_matrix(get_kernel("attention", n_draws=20000, sigma_qk=s_qk, heads=2), X)
    finite = finite_width_attention(X, width=256, heads=2, draws=1500, s_qk=s_qk, s_vo=1.0, seed=3)
    err = np.linalg.norm(finite - limit) / np.linalg.norm(limit)
    assert err < 0.03
    # a real check: uniform attention (s_qk = 0) is far from the simulated layer
    uniform = kernel_matrix(get_kernel("attention", n_draws=64, sigma_qk=0.0), X)
    assert np.linalg.norm(finite - uniform) / np.linalg.norm(limit) > 4 * err


def test_limit_is_non_gaussian_with_finite_heads():
    X = seqs(1, 4, 4, 4)
    k1 = get_kernel("attention", sigma_qk=3.0, heads=1)
    y1 = k1.sample_outputs(X, 200_000, seed=5)[:, 0]
    k16 = get_kernel("attention", sigma_qk=3.0, heads=16)
    y16 = k16.sample_outputs(X, 200_000, seed=6)[:, 0]
    # a scale mixture of Gaussians: positive excess kurtosis, shrinking as heads grow (kernels.md 4.3)
    assert kurtosis(y1) > 0.15
    assert kurtosis(y16) < kurtosis(y1) / 3
    # and its variance is the kernel's diagonal, whatever H is
    pos = get_kernel("attention", sigma_qk=3.0, pool="none", n_draws=50_000)
    K = kernel_matrix(pos, X)
    assert np.var(y1) == pytest.approx(K[0, 0], rel=0.02)
    assert np.var(y16) == pytest.approx(K[0, 0], rel=0.02)


def test_formed_matrix_is_psd_and_deterministic(tmp_path):
    X = seqs(40, 3, 4, 7)
    kw = dict(n_draws=300, sigma_qk=2.0)
    ms = bigspec.form("attention", X, str(tmp_path / "a.zarr"), tile_size=16, **kw)
    K = ms.to_dask().compute()
    np.testing.assert_array_equal(K, K.T)
    r = bigspec.logdet(ms, method="cholesky")   # an exact Gram matrix: Cholesky succeeds
    assert r.sign == 1 and np.isfinite(r.logabsdet)
    ms2 = bigspec.form("attention", X, str(tmp_path / "b.zarr"), tile_size=24, **kw)
    np.testing.assert_allclose(ms2.to_dask().compute(), K, rtol=1e-12)  # same draws in every tile
    pos = bigspec.form("attention", X[:10], str(tmp_path / "c.zarr"), tile_size=6, pool="none", **kw)
    assert pos.n == 30 and np.linalg.eigvalsh(pos.to_dask().compute()).min() > -1e-10


def test_monte_carlo_error_halves_when_draws_quadruple():
    X = seqs(8, 3, 4, 8)
    ref = kernel_matrix(get_kernel("attention", n_draws=65536, sigma_qk=2.0, seed=99), X)
    errs = []
    for m in (256, 1024, 4096):
        est = [kernel_matrix(get_kernel("attention", n_draws=m, sigma_qk=2.0, seed=s), X) for s in range(6)]
        errs.append(np.mean([np.linalg.norm(e - ref) for e in est]))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 1.4) & (ratios < 2.9)), ratios
