"""Infinite-width attention kernel: closed forms, a finite-width layer, PSD, MC rate, non-Gaussianity."""

import numpy as np
import pytest
from scipy.stats import kurtosis

import bigspec
from bigspec.kernels import get_kernel


def seqs(n, s, d_in, seed):
    return np.random.default_rng(seed).standard_normal((n, s, d_in))


def kernel_matrix(k, X):
    k = k.bind(X)
    x = k.prepare(X)
    return k(x, x, diagonal=True)


def mc_oracle(X, n_draws, draw_seed, draw_chunk, s_qk=1.0, s_vo=1.0, s_e=1.0):
    """The shared-draw estimate written out draw by draw (mean pooling, no bias)."""
    n, s, d_in = X.shape
    phi = s_e * X / np.sqrt(d_in)
    feats = []
    for chunk in range(-(-n_draws // draw_chunk)):
        count = min(draw_chunk, n_draws - chunk * draw_chunk)
        M = np.random.default_rng(np.random.SeedSequence([draw_seed, chunk])).standard_normal((count, d_in, d_in))
        for m in M:
            F = np.empty((n, d_in))
            for b in range(n):
                p = s_qk * phi[b] @ m @ phi[b].T
                w = np.exp(p - p.max(axis=1, keepdims=True))
                w /= w.sum(axis=1, keepdims=True)
                F[b] = (s_vo * w @ phi[b]).mean(axis=0)
            feats.append(F)
    return sum(F @ F.T for F in feats) / n_draws


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
    ref = kernel_matrix(get_kernel("attention", n_draws=65536, sigma_qk=2.0, draw_seed=99), X)
    errs = []
    for m in (256, 1024, 4096):
        est = [kernel_matrix(get_kernel("attention", n_draws=m, sigma_qk=2.0, draw_seed=s), X) for s in range(6)]
        errs.append(np.mean([np.linalg.norm(e - ref) for e in est]))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 1.4) & (ratios < 2.9)), ratios


def test_draw_seed_seeds_the_draws():
    X = seqs(6, 3, 2, 9)
    for draw_seed in (0, 4):
        k = get_kernel("attention", n_draws=50, draw_chunk=16, sigma_qk=2.5, sigma_vo=1.3, draw_seed=draw_seed)
        ref = mc_oracle(X, 50, draw_seed, 16, s_qk=2.5, s_vo=1.3)
        np.testing.assert_allclose(kernel_matrix(k, X), ref, rtol=1e-12, atol=1e-14)
    # a real dependence: other draws give another estimate
    assert np.abs(mc_oracle(X, 50, 0, 16, s_qk=2.5) - mc_oracle(X, 50, 4, 16, s_qk=2.5)).max() > 1e-3


def test_form_takes_draw_seed_and_the_permutation_seed_apart(tmp_path):
    X = seqs(9, 3, 2, 10)
    ms = bigspec.form("attention", X, str(tmp_path / "a.zarr"), tile_size=4, seed=1, draw_seed=2, n_draws=40,
                      sigma_qk=2.0)
    spec = ms.attrs["kernel"]["params"]
    assert spec["draw_seed"] == 2 and "seed" not in spec and ms.attrs["permutation"]["seed"] == 1
    perm = ms.group["permutation"][:]
    np.testing.assert_array_equal(perm, np.random.default_rng(np.random.SeedSequence(1)).permutation(9))
    ref = mc_oracle(X[perm], 40, 2, 256, s_qk=2.0)
    np.testing.assert_allclose(ms.read(0, 9, 0, 9), ref, rtol=1e-11, atol=1e-13)


def test_bind_and_sample_outputs_leave_the_kernel_untouched():
    import copy

    X = seqs(5, 4, 3, 11)
    k = get_kernel("attention", n_draws=20, sigma_qk=2.0, pool="none")
    params, before = k.params, copy.deepcopy(k.params)
    bound = k.bind(X)
    x = bound.prepare(X)
    K = bound(x, x, diagonal=True)
    bound(x[:2], x[2:])
    k.sample_outputs(X, 10, seed=0)
    assert k.params is params and k.params == before and k.params["seq_len"] is None
    assert bound.params["seq_len"] == 4 and bound.rows_per_sample() == 4 and K.shape == (20, 20)
    # binding only sets seq_len: tiles are those of a kernel given seq_len directly, bit for bit
    explicit = get_kernel("attention", n_draws=20, sigma_qk=2.0, pool="none", seq_len=4)
    assert explicit(x, x, diagonal=True).tobytes() == K.tobytes()
    with pytest.raises(bigspec.errors.KernelError, match="bind the kernel to the data first"):
        k.rows_per_sample()
