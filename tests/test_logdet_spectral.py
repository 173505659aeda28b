"""logdet(method="spectrum"): n * integral log|x| rho(x) dx of the free-decompressed density.

Oracles: the Marchenko-Pastur log-determinant in closed form (science.md 3.3: for ratio
lam < 1 and sigma = 1, E log x = -1 - ((1 - lam) / lam) ln(1 - lam)), the semicircle's
(E log|x| = ln(r / 2) - 1/2 for radius r), and numpy's slogdet of the same matrix.
"""

import json
import warnings

import numpy as np
import pytest

import bigspec
from bigspec import ArgumentError, ArgumentTypeError, DecompressionWarning, EstimateWarning, InvalidSpectrumError


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """One BLAS thread: on a small shared machine threaded BLAS on the decompression's many small
    products (chebyshev.stieltjes) is up to 10x slower; the results do not depend on it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def mp_mean_log(lam):
    """E log x under Marchenko-Pastur with ratio lam < 1 and sigma = 1."""
    return -1 - (1 - lam) / lam * np.log1p(-lam)


@pytest.fixture(scope="module")
def wishart():
    """W = Z Z^T / d, n = 2000, d = 8000 (ratio 1/4): its rows are exchangeable, so in random order."""
    n, d = 2000, 8000
    Z = np.random.default_rng(0).standard_normal((n, d))
    W = Z @ Z.T / d
    return W, np.linalg.slogdet(W)[1]


def strict(fn, *args, **kwargs):
    """Call with every EstimateWarning and DecompressionWarning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", EstimateWarning)
        warnings.simplefilter("error", DecompressionWarning)
        return fn(*args, **kwargs)


class Linear:
    """k(x, y) = x . y / p: the kernel matrix of Gaussian data is a Wishart matrix (Marchenko-Pastur)."""

    name = "linear"

    def __init__(self, n_outputs=1, kron_identity=True):
        self.n_outputs, self.kron_identity = n_outputs, kron_identity

    def __call__(self, x_rows, x_cols, *, diagonal=False):
        G = x_rows @ x_cols.T / x_rows.shape[1]
        return G if self.kron_identity else np.kron(G, np.eye(self.n_outputs))


# -- the oracle ---------------------------------------------------------------------------------

def test_marchenko_pastur_oracle_and_numpy(wishart):
    W, exact = wishart
    n, lam = 2000, 0.25
    oracle = n * mp_mean_log(lam)                            # -273.9
    assert exact == pytest.approx(oracle, rel=0.01)          # the matrix is an MP matrix
    est = strict(bigspec.logdet, W, method="spectrum", sample_size=500, n_samples=4)   # no warning here
    assert isinstance(est, bigspec.EstimateResult) and est.method == "spectrum"
    assert est.sign == 1 and est.n == n and est.matrix_rows == n and not est.warnings
    assert est.logabsdet == pytest.approx(oracle, rel=0.02)
    assert est.logabsdet == pytest.approx(exact, rel=0.02)
    assert est.covers(exact), (est.interval, exact)           # seen: -275.30 in (-278.83, -271.78); exact -275.54
    assert est.relative_halfwidth < 0.05
    assert "95%" in est.interval_meaning and "does not cover" in est.interval_meaning
    dg = est.diagnostics
    assert dg["alpha"] == 4.0 and dg["regime"] == "bulk" and len(dg["per_sample"]) == 4
    assert all(abs(p / exact - 1) < 0.05 for p in dg["per_sample"])
    assert dg["jensen_bound"] > est.interval[1] > est.interval[0]
    assert est.settings["sample_size"] == 500 and est.settings["n_samples"] == 4 and est.settings["seed"] == 0
    # the 4 samples, and their 8 halves for the held-out check
    assert est.cost["entries"] == 4 * 500 ** 2 + 8 * 250 ** 2
    assert est.cost["flops"] == pytest.approx(4 / 3 * (4 * 500 ** 3 + 8 * 250 ** 3))
    assert abs(dg["held_out_error_per_row"]) < 0.01 and dg["held_out_halfwidth"] > 0
    assert "seconds" in est.cost
    # the plot's integrand integrates to the estimate (no atoms here)
    x, f = est.curves["x"], est.curves["integrand"]
    assert np.trapezoid(f, x) == pytest.approx(est.logabsdet, rel=1e-3)
    json.dumps(est.to_dict())


def test_shift_and_scale(wishart):
    W, _ = wishart
    n = W.shape[0]
    A = 2.5 * W + 0.3 * np.eye(n)
    exact = np.linalg.slogdet(A)[1]
    est = strict(bigspec.logdet, W, method="spectrum", sample_size=500, scale=2.5, shift=0.3)
    assert est.sign == 1 and est.logabsdet == pytest.approx(exact, rel=0.01) and est.covers(exact)
    assert est.scale == 2.5 and est.shift == 0.3
    # a constant diagonal is the same shift
    same = strict(bigspec.logdet, W, method="spectrum", sample_size=500, scale=2.5, shift=np.full(n, 0.3))
    assert same.logabsdet == est.logabsdet
    # negative: every eigenvalue below 0, the sign is (-1)^n
    neg = strict(bigspec.logdet, W, method="spectrum", sample_size=500, scale=-2.5, shift=-0.3)
    assert neg.sign == int(np.linalg.slogdet(-A)[0]) == 1
    assert neg.logabsdet == pytest.approx(est.logabsdet, rel=1e-4) and neg.covers(exact)


# -- kernel= / X= and a store ---------------------------------------------------------------------

def test_kernel_mode_and_store_mode_agree_and_the_seed_reproduces(tmp_path):
    n, p = 800, 3200
    X = np.random.default_rng(1).standard_normal((n, p))
    exact = np.linalg.slogdet(X @ X.T / p)[1]
    a = strict(bigspec.logdet, kernel=Linear(), X=X, method="spectrum", sample_size=200, seed=3)
    b = strict(bigspec.logdet, kernel=Linear(), X=X, method="spectrum", sample_size=200, seed=3)
    c = strict(bigspec.logdet, kernel=Linear(), X=X, method="spectrum", sample_size=200, seed=4)
    assert (a.logabsdet, a.interval, a.diagnostics["per_sample"]) == \
        (b.logabsdet, b.interval, b.diagnostics["per_sample"])
    assert c.diagnostics["per_sample"] != a.diagnostics["per_sample"]          # other subsets
    store = bigspec.form(Linear(), X, str(tmp_path / "lin.zarr"), tile_size=200)
    s = strict(bigspec.logdet, store, method="spectrum", sample_size=200)
    for est in (a, c, s):
        assert est.method == "spectrum" and est.n == n and est.rows_per_sample == 1 and est.kron_outputs == 1
        assert est.diagnostics["regime"] == "bulk" and est.diagnostics["alpha"] == 4.0
        assert est.logabsdet == pytest.approx(exact, rel=0.03) and est.covers(exact)
    assert a.source == "kernel linear" and s.source == store.url


def test_rows_per_sample_and_kronecker_outputs(tmp_path):
    """Several rows per data point count in n; a store of K (x) I_d reports d times K's log-determinant."""
    n, p = 600, 2400
    X = np.random.default_rng(2).standard_normal((n, p))
    exact_K = np.linalg.slogdet(X @ X.T / p)[1]
    full = strict(bigspec.logdet, kernel=Linear(n_outputs=2, kron_identity=False), X=X, method="spectrum",
                  sample_size=150)
    assert full.rows_per_sample == 2 and full.n == n and full.matrix_rows == 2 * n
    assert full.settings["sample_size"] == 150 and full.cost["entries"] == 4 * 300 ** 2 + 8 * 150 ** 2
    assert full.logabsdet == pytest.approx(2 * exact_K, rel=0.03) and full.covers(2 * exact_K)
    plain = bigspec.form(Linear(), X, str(tmp_path / "k.zarr"), tile_size=150)
    kron = bigspec.form(Linear(n_outputs=3), X, str(tmp_path / "k3.zarr"), tile_size=150)
    one = strict(bigspec.logdet, plain, method="spectrum", sample_size=150)
    three = strict(bigspec.logdet, kron, method="spectrum", sample_size=150)
    assert three.kron_outputs == 3 and three.matrix_rows == 3 * n and three.n == n
    assert three.logabsdet == pytest.approx(3 * one.logabsdet, rel=1e-12)
    assert np.allclose(three.interval, 3 * np.asarray(one.interval), rtol=1e-12)
    assert three.covers(3 * exact_K)


# -- warnings -------------------------------------------------------------------------------------

def test_one_warning_for_a_numerically_singular_kernel():
    """An RBF kernel matrix without a nugget is singular to rounding: an atom at 0, -inf, ONE EstimateWarning."""
    X = np.random.default_rng(0).uniform(size=(1200, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = bigspec.logdet(kernel="rbf", X=X, lengthscale=0.3, method="spectrum", sample_size=300)
    ours = [w for w in caught if issubclass(w.category, bigspec.BigspecWarning)]
    assert [w.category for w in ours] == [EstimateWarning]                    # not a DecompressionWarning too
    msg = str(ours[0].message)
    assert "atom at 0 of mass" in msg and "pass shift" in msg
    assert est.warnings == (msg,) and ours[0].filename == __file__            # points at the caller
    assert est.sign == 0 and est.logabsdet == -np.inf and est.interval[0] == -np.inf
    # with a ridge the estimate is finite, warned about (the held-out error), and covered
    K = bigspec.kernels.get_kernel("rbf", lengthscale=0.3)(X, X, diagonal=True)
    exact = np.linalg.slogdet(K + 1e-3 * np.eye(1200))[1]
    with pytest.warns(EstimateWarning, match=r"held-out error is 0\.\d+ decades") as rec:
        ridged = bigspec.logdet(kernel="rbf", X=X, lengthscale=0.3, shift=1e-3, method="spectrum", sample_size=300)
    assert len(rec) == 1 and ridged.sign == 1 and np.isfinite(ridged.logabsdet)
    assert ridged.diagnostics["regime"] == "kernel" and ridged.covers(exact)


def test_decades_spanning_kernel_fit_warns_and_widens_by_its_held_out_error():
    """A short-lengthscale RBF kernel, spanning 4 decades: the kernel regime's held-out error is wide (0.25
    decades), so the interval takes the bound it implies, n ln(10) W1, and covers the exact value (21% off)."""
    X = np.random.default_rng(0).uniform(size=(1200, 3))
    with pytest.warns(EstimateWarning, match=r"held-out error is 0\.\d+ decades") as rec:
        est = bigspec.logdet(kernel="rbf", X=X, lengthscale=0.1, method="spectrum", sample_size=300)
    assert len(rec) == 1 and est.diagnostics["regime"] == "kernel"
    K = bigspec.kernels.get_kernel("rbf", lengthscale=0.1)(X, X, diagonal=True)
    assert est.covers(np.linalg.slogdet(K)[1])
    assert est.interval[1] <= est.diagnostics["jensen_bound"]


def test_indefinite_spectrum_warns_about_the_sign():
    """A Wigner matrix: the semicircle's E log|x| = ln(r / 2) - 1/2; the sign is a parity it cannot resolve."""
    n = 1000
    G = np.random.default_rng(5).standard_normal((n, n))
    H = (G + G.T) / np.sqrt(2 * n)                                            # radius 2
    with pytest.warns(EstimateWarning, match=r"indefinite: the density puts 0\.\d+ of its mass") as rec:
        est = bigspec.logdet(H, method="spectrum", sample_size=250)
    assert len(rec) == 1
    oracle = n * (np.log(2 / 2) - 0.5)
    assert est.logabsdet == pytest.approx(oracle, rel=0.05)
    assert est.logabsdet == pytest.approx(np.linalg.slogdet(H)[1], rel=0.05)


def test_one_sample_has_no_spread(wishart):
    W, exact = wishart
    with pytest.warns(EstimateWarning, match=r"n_samples=1: one sample has no spread"):
        est = bigspec.logdet(W, method="spectrum", sample_size=500, n_samples=1)
    assert "NO sampling error" in est.interval_meaning and est.diagnostics["per_sample"] == [est.logabsdet]
    assert est.logabsdet == pytest.approx(exact, rel=0.03)


def test_the_whole_matrix_as_its_one_sample_is_exact(wishart):
    W = wishart[0][:400, :400]
    est = strict(bigspec.logdet, W, method="spectrum", sample_size=400, n_samples=1)
    assert est.diagnostics["alpha"] == 1.0 and est.sign == 1
    assert est.logabsdet == pytest.approx(np.linalg.slogdet(W)[1], rel=1e-12) and "exact" in est.interval_meaning


# -- bad inputs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"sample_size": 5000}, InvalidSpectrumError, r"4 disjoint samples of 5000 rows need 20000 rows, but the matrix "
                                                   r"has 2000; use sample_size=500"),
    ({"n_samples": 0}, InvalidSpectrumError, r"n_samples must be at least 1"),
    ({"sample_size": 1.5}, ArgumentTypeError, r"sample_size must be an integer, got 1\.5"),
    ({"sample_size": 1, "n_samples": 1}, InvalidSpectrumError, r"sample_size must be at least 2"),
    ({"probes": 8}, ArgumentError, r"probes is an option of method='slq', not of method='spectrum'"),
    ({"lengthscale": 0.5}, ArgumentError, r"kernel parameter\(s\) lengthscale given without kernel"),
    ({"kernel": "rbf"}, ArgumentTypeError, r"either a matrix A or kernel= and X=, not both"),
    ({"shift": np.linspace(0, 1, 2000)}, ArgumentError, r"shift must be a finite scalar or a constant vector"),
    ({"shift": "0.1"}, ArgumentTypeError, r"shift must be a number"),
    ({"scale": 0}, ArgumentError, r"scale must be nonzero"),
    ({"seed": -1}, ArgumentError, r"seed must be a non-negative integer"),
])
def test_bad_inputs(kwargs, error, match):
    A = np.eye(2000)
    with pytest.raises(error, match=match):
        bigspec.logdet(A, method="spectrum", **kwargs)


def test_bad_kernel_inputs():
    X = np.random.default_rng(0).standard_normal((100, 2))
    with pytest.raises(ArgumentTypeError, match=r"needs X= \(the data points\)"):
        bigspec.logdet(kernel="rbf", method="spectrum")
    with pytest.raises(InvalidSpectrumError, match=r"need 400 rows, but the matrix has 100"):
        bigspec.logdet(kernel="rbf", X=X, method="spectrum", sample_size=100)
    with pytest.raises(bigspec.KernelError, match="unknown parameter"):
        bigspec.logdet(kernel="rbf", X=X, method="spectrum", sample_size=20, bogus=1)


def test_an_estimate_beyond_the_jensen_bound_is_never_reported():
    """Z Z^T of rank 300 in 1200 rows, sampled in full-rank blocks of 300: the decompression overshoots the
    Jensen bound n log(trace / n); the result reports the bound, inside its own interval (-inf, bound], warned."""
    Z = np.random.default_rng(0).standard_normal((1200, 300))
    W = Z @ Z.T / 300
    with pytest.warns(EstimateWarning, match=r"exceeds the Jensen bound .* so the bound itself is reported"):
        est = bigspec.logdet(W, method="spectrum", sample_size=300, n_samples=2, progress=False)
    bound = 1200 * np.log(np.mean(np.diag(W)[:600]))        # the trace as the two samples (rows 0..599) give it
    assert est.diagnostics["jensen_bound"] == pytest.approx(bound, rel=1e-9)
    assert est.logabsdet == est.diagnostics["jensen_bound"] and est.interval == (-np.inf, est.logabsdet)
    assert est.covers(np.linalg.slogdet(W)[1])
