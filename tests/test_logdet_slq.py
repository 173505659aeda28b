"""SLQ log-determinant (method="slq"): against numpy's slogdet, across inputs, tiles and clusters.

Oracle: numpy.linalg.slogdet at n = 300-1000. The interval must cover the exact value, also where
few Lanczos steps leave the quadrature badly unresolved (then a warning says so).
"""

import json
import math
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr

import bigspec
from bigspec.errors import ArgumentError, ArgumentTypeError, EstimateWarning, NonFiniteError, TileSizeError
from bigspec.testing import make_indefinite, matern_matrix


def rbf_matrix(X, lengthscale, nugget):
    sq = np.einsum("ij,ij->i", X, X)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)
    K = np.exp(-d2 / (2.0 * lengthscale ** 2))
    K[np.diag_indices(len(X))] += nugget
    return (K + K.T) / 2


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(1).uniform(size=(800, 2))


@pytest.fixture(scope="module")
def K(X):
    """A Matérn 5/2 kernel with a moderate nugget (condition number ~2e3)."""
    return matern_matrix(X, nu=2.5, lengthscale=0.2, noise=0.1)


@pytest.fixture(scope="module")
def exact(K):
    return np.linalg.slogdet(K)[1]


def test_public_verb_well_conditioned(K, exact):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EstimateWarning)   # a resolved quadrature warns of nothing
        r = bigspec.logdet(K, method="slq", probes=32, lanczos_steps=30, seed=3, progress=False)
    assert r.method == "slq" and r.sign == 1 and r.n == 800 and r.warnings == ()
    assert r.covers(exact), (r.interval, exact)
    assert abs(r.logabsdet - exact) < 0.01 * abs(exact)
    assert r.relative_halfwidth < 0.02
    d = r.diagnostics
    assert d["resolved"] and d["definiteness"] == "positive definite" and d["breakdowns"] == 0
    assert d["min_ritz"] > 0.09 and d["max_ritz"] > d["min_ritz"]
    assert d["quadrature_bias"] == pytest.approx(abs(r.logabsdet - d["estimate_half_steps"]))
    low, high = r.interval   # (a) t * se plus (b) the bias, on both sides
    half = d["t_quantile"] * d["probe_std_error"] + d["quadrature_bias"]
    assert (low, high) == pytest.approx((r.logabsdet - half, r.logabsdet + half), rel=1e-9)
    assert "95% probe confidence interval" in r.interval_meaning and "est(30) - est(15)" in r.interval_meaning
    assert r.settings == {"probes": 32, "lanczos_steps": 30, "seed": 3, "reorthogonalize": False, "tile_size": 800}
    assert r.cost["entries"] == 30 * 800 * 800        # one tile, read whole, once per step
    assert r.cost["flops"] >= 2 * 32 * 30 * 800 ** 2
    assert r.curves["probe_estimates"].shape == (32,)
    assert r.curves["probe_estimates"].mean() == pytest.approx(r.logabsdet)
    json.dumps(r.to_dict())
    assert "slq" in repr(r)


def test_seed_reproduces(K):
    a = bigspec.logdet(K, method="slq", probes=8, lanczos_steps=12, seed=5, progress=False)
    b = bigspec.logdet(K, method="slq", probes=8, lanczos_steps=12, seed=5, progress=False)
    c = bigspec.logdet(K, method="slq", probes=8, lanczos_steps=12, seed=6, progress=False)
    assert a.logabsdet == b.logabsdet and a.interval == b.interval
    np.testing.assert_array_equal(a.curves["probe_estimates"], b.curves["probe_estimates"])
    assert c.logabsdet != a.logabsdet


def test_probes_independent_of_data_drawn_with_the_same_seed(K, exact):
    """X came from default_rng(1): seed=1 must not draw the same bits (2 of 16 probes would follow X's signs)."""
    r = bigspec.logdet(K, method="slq", probes=16, lanczos_steps=30, seed=1, progress=False)
    assert abs(r.logabsdet - exact) < 0.02 * abs(exact)
    assert r.relative_halfwidth < 0.03


def test_inputs_and_tile_sizes_agree(K, tmp_path):
    common = dict(method="slq", probes=12, lanczos_steps=25, seed=2, progress=False, reorthogonalize=True)
    ref = bigspec.logdet(K, tile_size=1000, **common)
    store = bigspec.from_array(K, tmp_path / "k.zarr", tile_size=96)        # ragged last tile
    z = zarr.create_array(str(tmp_path / "plain.zarr"), shape=K.shape, chunks=(100, 100), dtype="float64")
    z[:] = K
    others = [
        bigspec.logdet(z, tile_size=100, **common),
        bigspec.logdet(K, tile_size=128, **common),
        bigspec.logdet(da.from_array(K, chunks=300), tile_size=200, **common),
        bigspec.logdet(store, **common),
        bigspec.logdet(str(tmp_path / "k.zarr"), tile_size=96, **common),
    ]
    for r in others:
        assert r.logabsdet == pytest.approx(ref.logabsdet, rel=1e-10, abs=0)
        np.testing.assert_allclose(r.curves["probe_estimates"], ref.curves["probe_estimates"], rtol=1e-10)
    assert others[3].source == store.url and others[3].settings["tile_size"] == 96
    nt = -(-800 // 96)
    assert others[3].cost["entries"] == 25 * sum(min(96, 800 - 96 * i) * min(96, 800 - 96 * j)
                                                  for i in range(nt) for j in range(i + 1))


def test_same_tiles_same_bits_without_reorthogonalization(K, tmp_path):
    """The default path: a numpy array, a dask array and a store cut into the same tiles agree exactly."""
    common = dict(method="slq", probes=6, lanczos_steps=30, seed=4, progress=False)
    a = bigspec.logdet(K, tile_size=200, **common)
    b = bigspec.logdet(da.from_array(K, chunks=333), tile_size=200, **common)
    c = bigspec.logdet(bigspec.from_array(K, tmp_path / "k200.zarr", tile_size=200), **common)
    assert a.logabsdet == b.logabsdet == c.logabsdet


def test_shift_and_scale(K):
    n = K.shape[0]
    v = np.random.default_rng(0).uniform(0.01, 0.1, n)
    common = dict(method="slq", probes=16, lanczos_steps=30, seed=1, progress=False, reorthogonalize=True)
    for scale, shift in ((0.5, 0.05), (2.0, v)):
        M = scale * K + np.diag(np.broadcast_to(shift, (n,)))
        r = bigspec.logdet(K, scale=scale, shift=shift, **common)
        direct = bigspec.logdet(M, **common)      # the same probes on the formed matrix
        exact = np.linalg.slogdet(M)[1]
        assert r.logabsdet == pytest.approx(direct.logabsdet, rel=1e-10)
        assert r.covers(exact) and abs(r.logabsdet - exact) < 0.02 * abs(exact)
        assert r.scale == scale
    assert r.shift == {"vector": True, "min": float(v.min()), "max": float(v.max())}


@pytest.mark.slow
def test_local_cluster_two_processes(K, tmp_path):
    from distributed import Client, LocalCluster

    common = dict(method="slq", probes=8, lanczos_steps=20, seed=9, progress=False, reorthogonalize=True)
    path = str(tmp_path / "k.zarr")
    bigspec.from_array(K, path, tile_size=256)
    ref = bigspec.logdet(path, **common)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert len(set(client.run(lambda: __import__("os").getpid()).values())) == 2
        on_store = bigspec.logdet(path, **common)                         # the current client is used
        on_array = bigspec.logdet(K, tile_size=256, client=client, **common)   # via a temporary store
        done = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert all(count > 0 for count in done.values())
    for r in (on_store, on_array):
        assert r.logabsdet == pytest.approx(ref.logabsdet, rel=1e-10, abs=0)


def test_ill_conditioned_interval_covers_and_warns(X):
    """An RBF kernel with a tiny nugget (condition ~1e10): 20 steps leave SLQ ~50% off."""
    K = rbf_matrix(X[:600], 0.3, 1e-8)
    exact = np.linalg.slogdet(K)[1]
    with pytest.warns(EstimateWarning, match="quadrature is unresolved") as caught:
        r = bigspec.logdet(K, method="slq", probes=16, lanczos_steps=20, seed=0, progress=False)
    d = r.diagnostics
    error = abs(r.logabsdet - exact) / abs(exact)
    assert error > 0.25                       # the estimate is badly biased (upward) ...
    assert r.logabsdet > exact
    # ... the interval of (a) + (b) alone would claim far too much ...
    base_low = r.logabsdet - d["t_quantile"] * d["probe_std_error"] - d["quadrature_bias"]
    assert base_low > exact
    # ... so its low end is the Gauss-Radau bound, which covers the value
    assert r.covers(exact), (r.interval, exact)
    assert r.interval[0] == pytest.approx(d["radau_lower"], rel=0.05)
    assert not d["resolved"] and d["convergence_ratio"] > 0.5
    assert "Gauss-Radau" in r.interval_meaning and "unresolved" in r.interval_meaning
    assert len(r.warnings) == len(caught) >= 1
    assert "lanczos_steps" in str(caught[0].message) and "\x1f" not in str(caught[0].message)


def test_ritz_range_warning(X):
    """Ritz values spanning more than 1e8 name the unresolved small-eigenvalue cluster."""
    K = rbf_matrix(X[:300], 0.5, 1e-12)      # numerical rank ~30, then 270 eigenvalues at 1e-12
    exact = np.linalg.slogdet(K)[1]
    with pytest.warns(EstimateWarning, match="small eigenvalues is not resolved"):
        r = bigspec.logdet(K, method="slq", probes=8, lanczos_steps=40, seed=1, progress=False)
    d = r.diagnostics
    assert d["ritz_range"] < 1e-8 and f"ratio {d['ritz_range']:.2g}" in r.warnings[0]
    # the estimate seems to converge (the last quarter moved it less than half as much as the one
    # before) yet is ~50% off: the Ritz range alone shows it, and widens the interval to cover
    assert d["convergence_ratio"] < 0.5 and abs(r.logabsdet - exact) > 0.3 * abs(exact)
    assert r.covers(exact) and not d["resolved"]


def test_rademacher_coverage(X):
    """95% intervals over 10 seeds on a moderately conditioned kernel (condition ~2e4): at least 9 cover."""
    K = rbf_matrix(X[:500], 0.2, 1e-2)
    exact = np.linalg.slogdet(K)[1]
    covered, widths = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("error", EstimateWarning)
        for seed in range(10):
            r = bigspec.logdet(K, method="slq", probes=20, lanczos_steps=40, seed=seed, progress=False)
            covered += r.covers(exact)
            widths.append(r.relative_halfwidth)
    assert covered >= 9
    assert max(widths) < 0.05


def test_exhausted_krylov_space_is_exact():
    """Three distinct eigenvalues: every probe breaks down after 3 steps, and its quadrature is exact."""
    d = np.tile([0.5, 2.0, 7.0], 100)
    r = bigspec.logdet(np.diag(d), method="slq", probes=6, lanczos_steps=20, seed=0, progress=False)
    assert r.logabsdet == pytest.approx(np.log(d).sum(), rel=1e-12)
    assert r.diagnostics["breakdowns"] == 6 and r.diagnostics["steps_run"] == 3
    assert r.cost["entries"] == 3 * 300 * 300          # the passes stop with the recurrences
    assert r.covers(np.log(d).sum()) and r.warnings == ()


def test_singular_matrix():
    with pytest.warns(EstimateWarning, match="Ritz value is exactly 0"):
        r = bigspec.logdet(np.zeros((5, 5)), method="slq", probes=4, progress=False)
    assert (r.sign, r.logabsdet, r.interval) == (0, -math.inf, (-math.inf, -math.inf))


def test_negative_definite_and_indefinite(K):
    common = dict(method="slq", probes=8, lanczos_steps=20, seed=0, progress=False)
    pos = bigspec.logdet(K, **common)
    neg = bigspec.logdet(-K, **common)
    assert neg.sign == (-1) ** K.shape[0] and neg.logabsdet == pos.logabsdet
    assert neg.diagnostics["definiteness"] == "negative definite"
    with pytest.warns(EstimateWarning, match="indefinite"):
        r = bigspec.logdet(make_indefinite(300, seed=2), **common)
    assert r.sign == 0 and r.diagnostics["definiteness"] == "indefinite"
    assert "indefinite" in r.interval_meaning


def test_one_probe_has_no_spread(K):
    with pytest.warns(EstimateWarning) as caught:
        r = bigspec.logdet(K, method="slq", probes=1, lanczos_steps=10, progress=False)
    assert any("one probe gives no probe spread" in str(w.message) for w in caught)
    assert r.interval == (-math.inf, math.inf)
    json.dumps(r.to_dict())


@pytest.mark.parametrize("options, error, match", [
    ({"probes": 0}, ArgumentError, "probes must be at least 1"),
    ({"probes": 1.5}, ArgumentTypeError, "probes must be an integer"),
    ({"probes": True}, ArgumentTypeError, "probes"),
    ({"lanczos_steps": 1}, ArgumentError, "lanczos_steps must be at least 2"),
    ({"lanczos_steps": 301}, ArgumentError, "between 2 and 300"),
    ({"seed": -1}, ArgumentError, "seed"),
    ({"reorthogonalize": "yes"}, ArgumentTypeError, "reorthogonalize"),
    ({"tile_size": 0}, TileSizeError, "tile_size"),
    ({"shift": np.ones(3)}, ArgumentError, "shift"),
    ({"scale": 0}, ArgumentError, "scale"),
    ({"memory": "1GiB"}, ArgumentError, "memory is an option of"),
])
def test_bad_arguments(options, error, match):
    A = np.eye(300)
    with pytest.raises(error, match=match):
        bigspec.logdet(A, method="slq", progress=False, **options)


def test_slq_options_refused_by_other_methods(tmp_path):
    with pytest.raises(ArgumentError, match="probes is an option of method='slq'"):
        bigspec.logdet(np.eye(4), method="ldl", probes=8)
    store = bigspec.from_array(np.eye(40), tmp_path / "e.zarr", tile_size=16)
    with pytest.raises(TileSizeError, match="does not match the store's tiles"):
        bigspec.logdet(store, method="slq", tile_size=20, progress=False)


def test_nan_in_a_store_is_named(tmp_path):
    ms = bigspec.from_array(np.eye(40), tmp_path / "e.zarr", tile_size=16)
    ms.matrix[20, 3] = np.nan              # written behind bigspec's back, after the store was checked
    with pytest.raises(NonFiniteError, match="row 20, col 3"):
        bigspec.logdet(ms, method="slq", probes=2, lanczos_steps=3, progress=False)


def test_plot(K):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = bigspec.logdet(K, method="slq", probes=8, lanczos_steps=30, progress=False)
    ax = r.plot()
    assert ax.get_title() == "SLQ" and len(ax.lines[0].get_xdata()) == 8
    plt.close(ax.figure)


def test_kronecker_store_is_d_times_K(tmp_path):
    X = np.random.default_rng(11).uniform(size=(300, 2))
    ms = bigspec.form("matern", X, str(tmp_path / "k3.zarr"), tile_size=100, lengthscale=0.3, n_outputs=3,
                      progress=False)
    K = ms.read(0, 300, 0, 300)
    exact = 3 * np.linalg.slogdet(K + 0.1 * np.eye(300))[1]
    est = bigspec.logdet(ms, method="slq", probes=16, lanczos_steps=30, seed=0, shift=0.1, progress=False)
    assert est.kron_outputs == 3 and est.matrix_rows == 900
    assert est.covers(exact) and est.logabsdet == pytest.approx(exact, rel=0.05)
