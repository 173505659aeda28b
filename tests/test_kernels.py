"""Kernels against direct dense formulas and a simulated wide network."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import bigspec
from bigspec.errors import KernelError
from bigspec.kernels import RBF, Matern, ReLU, get_kernel, known_kernels


def dense_stationary(X, name, **p):
    r = cdist(X, X)
    ell, var = p.get("lengthscale", 1.0), p.get("variance", 1.0)
    if name == "rbf":
        return var * np.exp(-r ** 2 / (2 * ell ** 2))
    s = np.sqrt(2 * p["nu"]) * r / ell
    poly = {0.5: 1.0, 1.5: 1 + s, 2.5: 1 + s + s ** 2 / 3}[p["nu"]]
    return var * poly * np.exp(-s)


@pytest.mark.parametrize("name,params", [
    ("rbf", {"lengthscale": 0.7, "variance": 2.0}),
    ("matern", {"nu": 0.5, "lengthscale": 0.4}),
    ("matern", {"nu": 1.5, "lengthscale": 1.3, "variance": 0.5}),
    ("matern", {"nu": 2.5, "lengthscale": 0.9}),
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stationary_kernels_match_dense_formula(name, params, dtype, tmp_path):
    X = np.random.default_rng(1).random((73, 4)) + 100.0  # offset data: centring keeps GEMM distances exact
    ms = bigspec.form(name, X, str(tmp_path / "K.zarr"), tile_size=20, dtype=dtype, **params)
    K = ms.to_dask().compute()
    perm = ms.group["permutation"][:]
    ref = dense_stationary(X[perm], name, **params)
    np.testing.assert_allclose(K, ref, rtol=1e-6 if dtype == "float32" else 1e-11, atol=1e-7 if dtype == "float32" else 1e-12)
    assert K.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.diag(K), np.full(73, params.get("variance", 1.0), dtype=dtype))
    assert np.linalg.eigvalsh(K.astype(np.float64)).min() > -1e-6


def relu_dense_reference(X, depth, sw, sb, kind):
    """Straightforward per-pair arc-cosine recursion (no tiles, no GEMM tricks)."""
    n, d0 = X.shape
    K = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            s = sw * X[i] @ X[j] / d0 + sb
            qi = sw * X[i] @ X[i] / d0 + sb
            qj = sw * X[j] @ X[j] / d0 + sb
            t = s
            for _ in range(depth):
                c = np.clip(s / np.sqrt(qi * qj), -1.0, 1.0)
                th = 0.0 if i == j else np.arccos(c)
                e_phi = np.sqrt(qi * qj) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
                e_dphi = (np.pi - th) / (2 * np.pi)
                s = sw * e_phi + sb
                t = s + sw * e_dphi * t
                qi, qj = sw * qi / 2 + sb, sw * qj / 2 + sb
            K[i, j] = t if kind == "ntk" else s
    return K


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
@pytest.mark.parametrize("depth", [1, 3])
def test_relu_matches_pairwise_recursion(kind, depth):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((25, 6)) * rng.uniform(0.5, 2.0, (25, 1))
    X[1] = 2.5 * X[0]     # parallel pair
    X[2] = -X[3]          # antiparallel pair
    k = ReLU(depth=depth, weight_variance=2.0, bias_variance=0.1, kind=kind)
    ref = relu_dense_reference(X, depth, 2.0, 0.1, kind)
    np.testing.assert_allclose(k(X, X, diagonal=True), ref, rtol=1e-12)
    np.testing.assert_allclose(k(X[:10], X[10:]), ref[:10, 10:], rtol=1e-12)


def wide_relu_network_kernels(X, depth, sw, sb, width, seed):
    """NNGP and NTK of one random ReLU network in NTK parameterisation, width ``width``."""
    rng = np.random.default_rng(seed)
    n, d0 = X.shape
    a, fan_in, acts, pre = X, d0, [X], []
    Ws = []
    for _ in range(depth):
        W = rng.standard_normal((fan_in, width))
        b = rng.standard_normal(width)
        z = np.sqrt(sw / fan_in) * a @ W + np.sqrt(sb) * b
        Ws.append(W)
        pre.append(z)
        a = np.maximum(z, 0)
        acts.append(a)
        fan_in = width
    w_out = rng.standard_normal(fan_in)
    nngp = sw * a @ a.T / fan_in + sb
    # layerwise NTK: sum over layers of (sw/n a.a' + sb) (delta . delta')
    delta = np.broadcast_to(np.sqrt(sw / fan_in) * w_out, (n, fan_in))
    ntk = sw * acts[-1] @ acts[-1].T / fan_in + sb
    for layer in range(depth - 1, -1, -1):
        delta = delta * (pre[layer] > 0)
        fan = X.shape[1] if layer == 0 else width
        ntk = ntk + (sw * acts[layer] @ acts[layer].T / fan + sb) * (delta @ delta.T)
        delta = np.sqrt(sw / fan) * delta @ Ws[layer].T
    return nngp, ntk


def test_relu_kernels_match_a_wide_network():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 5))
    errs = {"nngp": [], "ntk": []}
    for seed in range(4):
        nngp, ntk = wide_relu_network_kernels(X, depth=2, sw=2.0, sb=0.1, width=4096, seed=seed)
        for kind, emp in (("nngp", nngp), ("ntk", ntk)):
            exact = ReLU(depth=2, kind=kind)(X, X, diagonal=True)
            errs[kind].append(np.linalg.norm(emp - exact) / np.linalg.norm(exact))
    # finite-width fluctuation is O(width^-1/2): ~0.05 at 4096 (kernels.md 3.2)
    assert np.mean(errs["nngp"]) < 0.12 and np.mean(errs["ntk"]) < 0.12
    # and it is a real comparison: a different depth is far off
    assert np.linalg.norm(ReLU(depth=4, kind="ntk")(X, X, diagonal=True) - ntk) / np.linalg.norm(ntk) > 0.3


def test_relu_diagonal_is_exact():
    X = np.random.default_rng(4).standard_normal((30, 8))
    K = ReLU(depth=5, kind="nngp", weight_variance=2.0, bias_variance=0.1)(X, X, diagonal=True)
    q = 2.0 * (X * X).sum(1) / 8 + 0.1
    for _ in range(5):
        q = 2.0 * q / 2 + 0.1
    np.testing.assert_allclose(np.diag(K), q, rtol=1e-15)


def test_registry_and_parameter_errors():
    assert {"rbf", "matern", "relu", "ntk", "attention"} <= set(known_kernels())
    assert isinstance(get_kernel("matern", nu=0.5), Matern) and isinstance(get_kernel(RBF()), RBF)
    with pytest.raises(KernelError, match="unknown kernel 'gauss'.*known kernels: attention"):
        get_kernel("gauss")
    with pytest.raises(KernelError, match="unknown parameter.*lenghtscale.*it takes: lengthscale, variance"):
        get_kernel("rbf", lenghtscale=1.0)
    with pytest.raises(KernelError, match="nu must be 0.5, 1.5 or 2.5"):
        get_kernel("matern", nu=3)
    with pytest.raises(KernelError, match="depth"):
        get_kernel("relu", depth=-1)
    with pytest.raises(KernelError, match="kind must be"):
        get_kernel("relu", kind="cnn")
