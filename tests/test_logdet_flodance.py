"""FLODANCE (method="flodance") against exact log-determinants, and its honesty checks."""

import warnings

import numpy as np
import pytest

import bigspec
from bigspec.determinant.flodance import ladder_pivots, ladder_task
from bigspec.determinant.ladder_fit import fit_ladder
from bigspec.kernels import get_kernel


def kernel_matrix(name, X, **params):
    k = get_kernel(name, **params).bind(X)
    P = k.prepare(X)
    return np.asarray(k(P, P, diagonal=True))


def exact(K, shift=0.0):
    sign, value = np.linalg.slogdet(K + shift * np.eye(len(K)))
    assert sign == 1
    return value


@pytest.fixture(scope="module")
def matern():
    X = np.random.default_rng(0).uniform(size=(3000, 2))
    return X, kernel_matrix("matern", X, lengthscale=0.1)


def quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bigspec.EstimateWarning)
        return bigspec.logdet(**kwargs)


# ------------------------------------------------------------------ the ladder (tile kernel)
@pytest.mark.parametrize("nb", [1, 7, 64, 500])
def test_ladder_pivots_are_leading_minors(nb):
    rng = np.random.default_rng(1)
    G = rng.standard_normal((300, 300))
    A = G @ G.T / 300 + 0.1 * np.eye(300)
    d = ladder_pivots(np.asfortranarray(A.copy()), tol=1e-14, nb=nb)
    prefix = np.cumsum(np.log(d))
    for m in (1, 2, 63, 64, 65, 299, 300):
        assert prefix[m - 1] == pytest.approx(np.linalg.slogdet(A[:m, :m])[1], rel=1e-10, abs=1e-10)


def test_ladder_pivots_drop_numerical_zeros_of_a_semidefinite_matrix():
    rng = np.random.default_rng(2)
    F = rng.standard_normal((200, 60))
    A = F @ F.T                                   # rank 60
    d = ladder_pivots(np.asfortranarray(A.copy()), tol=1e-9 * np.abs(np.diag(A)).max(), nb=32)
    assert int(np.count_nonzero(d)) == 60
    assert np.all(d[:60] > 0) and np.all(d[60:] == 0)   # random rows: the first 60 span the range
    # the kept pivots are the leading 60 x 60 minor
    assert np.sum(np.log(d[:60])) == pytest.approx(np.linalg.slogdet(A[:60, :60])[1], rel=1e-9)


def test_ladder_task_groups_rows_per_sample_and_orders_share_the_endpoint():
    rng = np.random.default_rng(3)
    G = rng.standard_normal((120, 120))
    A = G @ G.T / 120 + np.eye(120)
    out = ladder_task(A, rows=3, scale=2.0, shift=0.5, orders=3, seed=0, tol_rel=1e-14, device="cpu")
    assert out["log_d"].shape == (3, 40)
    B = 2.0 * A + 0.5 * np.eye(120)
    ladder = np.cumsum(out["log_d"][0])
    for m in (1, 10, 40):                          # per sample: 3 rows each
        assert ladder[m - 1] == pytest.approx(np.linalg.slogdet(B[:3 * m, :3 * m])[1], rel=1e-10)
    ends = out["log_d"].sum(axis=1)                 # every order ends at the whole block
    np.testing.assert_allclose(ends, ends[0], rtol=1e-10)
    assert not np.allclose(out["log_d"][1], out["log_d"][0])


# ------------------------------------------------------------------ the fit (pure function)
def test_fit_recovers_a_power_law_and_covers_it():
    rng = np.random.default_rng(4)
    m = np.arange(1, 1001)
    truth_inc = lambda x: -0.7 * np.log(x) + 0.3 + 2.0 / x  # noqa: E731
    inc = truth_inc(m) + rng.normal(0, 0.3, (4, m.size))
    anchor = float(inc[0].sum())
    fit = fit_ladder(inc, anchor=anchor, n=20000)
    truth = anchor + truth_inc(np.arange(1001, 20001)).sum()
    assert fit["low"] <= truth <= fit["high"]
    assert abs(fit["estimate"] - truth) / abs(truth) < 0.01


@pytest.mark.parametrize("rows", [1, 3])
def test_learning_curve_bends_to_the_nugget_like_the_self_consistent_sum(rows):
    """The floored model against Sollich's self-consistent learning curve, summed over a
    power-law spectrum lambda_k = c k^-2 (no continuum approximation): far above the nugget the
    slope is the noise-free one (-1), near it the noisy one (-1/2)."""
    from scipy.optimize import brentq

    from bigspec.determinant.ladder_fit import _design, _Fit

    c, eta = 0.5, 1e-6
    lam = c * np.arange(1, 2_000_001, dtype=float) ** -2.0

    def eps(m):
        def tail(t):   # the sum beyond the array, as its integral from k = 2e6 + 1/2
            r = np.sqrt(t / (m * c))
            return c * t / np.sqrt(t * m * c) * (np.pi / 2 - np.arctan((lam.size + 0.5) * r))

        return brentq(lambda e: e - np.sum(lam * (eta + e) / (eta + e + m * lam)) - tail(eta + e), 1e-14, 10.0)

    f = _Fit.__new__(_Fit)
    f.model, f.terms, f.floor, f.rows, f.bend = "power", 0, rows * np.log(eta), rows, "learning"
    f.coef = np.array([rows * np.log((np.pi / 2) ** 2 * c), -1.0 * rows])   # noise-free eps = (pi/2)^2 c / m
    for m in (100.0, 3e4, 1e6, 3e7):
        want = rows * np.log(eta + eps(m))
        got = float(f._learning_curve(_design(np.array([m]), 0), f.coef)[0])
        assert got == pytest.approx(want, abs=0.03 * rows), m
    above = lambda m: np.log(np.exp(f.mean_increment(np.array([m]))[0] / rows) - eta)   # noqa: E731
    assert (above(20.0) - above(10.0)) / np.log(2) == pytest.approx(-1.0, abs=0.01)
    assert (above(2e12) - above(1e12)) / np.log(2) == pytest.approx(-0.5, abs=0.01)


def test_flodance_within_1_5_percent_on_a_matern_kernel_with_a_nugget():
    """Matérn-3/2 on uniform points in [0, 1]^3 with nugget 1e-3 (the benchmark's kind, n = 8000):
    from 1000 samples extrapolated 8x, within 1.5% of numpy's slogdet and covered."""
    X = np.random.default_rng(1).uniform(size=(8000, 3))
    K = kernel_matrix("matern", X, nu=1.5, lengthscale=0.2)
    truth = exact(K, 1e-3)
    est = quiet(A=K, method="flodance", sample_size=1000, shift=1e-3)
    assert est.settings["n_ladders"] == 8
    assert abs(est.logabsdet - truth) / abs(truth) < 0.015
    assert est.covers(truth)


def test_fit_caps_the_interval_with_the_nugget_floor_and_the_monotone_bound():
    rng = np.random.default_rng(5)
    m = np.arange(1, 801)
    floor = np.log(1e-3)
    inc = np.logaddexp(floor, -1.0 * np.log(m)) + rng.normal(0, 0.2, (3, m.size))
    fit = fit_ladder(inc, anchor=float(inc[0].sum()), n=50000, floor=floor)
    assert fit["low"] >= float(inc[0].sum()) + (50000 - 800) * floor - 1e-6
    assert fit["high"] <= fit["monotone_bound"] + 1e-6
    truth = float(inc[0].sum()) + np.logaddexp(floor, -np.log(np.arange(801, 50001))).sum()
    assert fit["low"] <= truth <= fit["high"]
    assert fit["saturation_m"] is not None and fit["saturation_m"] < 50000


# ------------------------------------------------------------------ the verb against the exact value
def test_flodance_interval_contains_exact_and_error_shrinks_with_sample_size(matern):
    X, K = matern
    truth = exact(K, 1e-2)
    errors = []
    for s in (150, 1000):
        est = quiet(kernel="matern", X=X, lengthscale=0.1, shift=1e-2, method="flodance", sample_size=s)
        assert est.method == "flodance" and est.matrix_rows == 3000 and est.sign == 1
        assert est.covers(truth), (s, est.interval, truth)
        errors.append(abs(est.logabsdet - truth))
    assert errors[1] < errors[0]
    assert errors[1] / abs(truth) < 0.02


def test_store_and_impalpable_modes_agree_and_match_tile_size(tmp_path, matern):
    X, K = matern
    kw = dict(method="flodance", sample_size=400, shift=1e-2, seed=7)
    ests = []
    for b in (128, 300):
        ms = bigspec.form("matern", X, str(tmp_path / f"m{b}.zarr"), tile_size=b, lengthscale=0.1, seed=7,
                          progress=False)
        ests.append(quiet(A=ms, **kw))
    ests.append(quiet(kernel="matern", X=X, lengthscale=0.1, **kw))
    for e in ests[1:]:
        # the blocks agree to rounding (kernel tiles differ); the fit keeps it within 1e-5
        assert e.logabsdet == pytest.approx(ests[0].logabsdet, rel=1e-5)
        np.testing.assert_allclose(e.interval, ests[0].interval, rtol=1e-5)
    assert ests[0].covers(exact(K, 1e-2))


def test_seeds_reproduce_and_differ(matern):
    X, _ = matern
    kw = dict(kernel="matern", X=X, lengthscale=0.1, shift=1e-2, method="flodance", sample_size=300)
    a, b, c = quiet(seed=1, **kw), quiet(seed=1, **kw), quiet(seed=2, **kw)
    assert a.logabsdet == b.logabsdet and a.interval == b.interval
    assert a.logabsdet != c.logabsdet


def test_numpy_input_scale_and_kron_outputs(tmp_path):
    X = np.random.default_rng(6).uniform(size=(1200, 3))
    K = kernel_matrix("rbf", X, lengthscale=0.3)
    perm = np.random.default_rng(0).permutation(1200)
    Kp = K[np.ix_(perm, perm)]
    est = quiet(A=Kp, method="flodance", sample_size=300, shift=1e-3, scale=2.0)
    assert est.covers(exact(2.0 * Kp, 1e-3))
    # a Kronecker store K (x) I_4: four times K's log-determinant, like the exact result
    ms = bigspec.form("rbf", X, str(tmp_path / "k4.zarr"), tile_size=200, lengthscale=0.3, n_outputs=4,
                      progress=False)
    e4 = quiet(A=ms, method="flodance", sample_size=300, shift=1e-3, scale=2.0)
    assert e4.kron_outputs == 4 and e4.matrix_rows == 4800
    assert e4.covers(4 * exact(2.0 * K, 1e-3))
    assert e4.logabsdet == pytest.approx(4 * quiet(A=ms, method="flodance", sample_size=300, shift=1e-3,
                                                   scale=2.0).logabsdet / 4 * 1.0, rel=1e-12)


class TwoOutput:
    """A multi-output kernel (not K (x) I): rows sample-major, d = 2."""

    name = "two-output"
    n_outputs = 2
    kron_identity = False

    def __call__(self, x_rows, x_cols, *, diagonal=False):
        d2 = ((x_rows[:, None, :] - x_cols[None, :, :]) ** 2).sum(-1)
        K1, K2 = np.exp(-d2 / 0.18), np.exp(-np.sqrt(d2) / 0.4)
        B1, B2 = np.array([[1.0, 0.6], [0.6, 1.0]]), np.array([[0.5, -0.2], [-0.2, 0.3]])
        return np.kron(K1, B1) + np.kron(K2, B2)


def test_several_outputs_per_sample_ladder_in_samples():
    X = np.random.default_rng(7).uniform(size=(1000, 2))
    K = TwoOutput()(X, X)
    truth = exact(K, 1e-3)
    est = quiet(kernel=TwoOutput(), X=X, method="flodance", sample_size=250, shift=1e-3)
    assert est.rows_per_sample == 2 and est.n == 1000 and est.matrix_rows == 2000
    assert est.settings["sample_size"] == 250
    assert est.covers(truth), (est.interval, truth)


# ------------------------------------------------------------------ pitfalls: warn or refuse
class NullOutput:
    """K (x) B with B = [[.5, -.5], [-.5, .5]]: every sample has the output null vector (1, 1)."""

    name = "null-output"
    n_outputs = 2
    kron_identity = False

    def __call__(self, x_rows, x_cols, *, diagonal=False):
        d2 = ((x_rows[:, None, :] - x_cols[None, :, :]) ** 2).sum(-1)
        K = np.exp(-np.sqrt(d2) / 0.2) + (1e-2 * np.eye(len(x_rows)) if diagonal else 0.0)
        return np.kron(K, np.array([[0.5, -0.5], [-0.5, 0.5]]))


def test_pseudo_determinant_warns_and_covers_log_pdet():
    X = np.random.default_rng(8).uniform(size=(1200, 2))
    K = NullOutput()(X, X, diagonal=True)[::2, ::2] * 2      # the K of K (x) B; pdet(K (x) B) = det K
    with pytest.warns(bigspec.EstimateWarning, match="pseudo-determinant"):
        est = bigspec.logdet(kernel=NullOutput(), X=X, method="flodance", sample_size=300, pseudo_tol=1e-10)
    assert est.rows_per_sample == 2 and est.matrix_rows == 2400
    assert est.diagnostics["projected_directions"] == 1 and est.diagnostics["dropped_pivots"] == 0
    assert est.covers(exact(K))


def test_rows_that_lose_rank_along_the_ladder_are_refused():
    # the same matrix as a plain array: rows are not grouped by sample, so pairs complete as the
    # ladder grows and the rank per row falls from ~1 to 1/2
    X = np.random.default_rng(8).uniform(size=(600, 2))
    A = NullOutput()(X, X, diagonal=True)
    with pytest.raises(bigspec.EstimateError, match="rank stops growing"):
        bigspec.logdet(A, method="flodance", sample_size=400, pseudo_tol=1e-10)


def test_rank_that_stops_growing_is_refused():
    F = np.random.default_rng(9).standard_normal((1000, 150))
    with pytest.raises(bigspec.EstimateError, match="rank stops growing"):
        bigspec.logdet(F @ F.T, method="flodance", sample_size=400)


def test_increments_that_grow_are_refused():
    A = np.diag(np.arange(1.0, 2001.0) ** 0.8)      # sorted: the pivots grow along the ladder
    with pytest.raises(bigspec.EstimateError, match="grows with m"):
        bigspec.logdet(A, method="flodance", sample_size=500)


def test_a_well_pinned_ladder_gives_a_narrow_interval_and_no_warning(matern):
    X, K = matern
    with warnings.catch_warnings():
        warnings.simplefilter("error", bigspec.EstimateWarning)
        est = bigspec.logdet(kernel="matern", X=X, lengthscale=0.1, shift=1e-4, method="flodance",
                             sample_size=1500, n_ladders=2)
    assert est.covers(exact(K, 1e-4))
    assert est.relative_halfwidth < 0.05


def test_saturation_warning_names_the_floor(matern):
    X, _ = matern
    with pytest.warns(bigspec.EstimateWarning, match="saturation"):
        bigspec.logdet(kernel="matern", X=X, lengthscale=0.1, shift=0.3, method="flodance", sample_size=300)


# ------------------------------------------------------------------ result object and bad input
def test_result_reports_cost_settings_and_plots(matern):
    X, _ = matern
    est = quiet(kernel="matern", X=X, lengthscale=0.1, shift=1e-2, method="flodance", sample_size=200, n_ladders=2)
    d = est.to_dict()
    assert d["cost"]["entries"] == 2 * 200 ** 2 and d["cost"]["flops"] > 0 and "seconds" in d["cost"]
    assert d["settings"]["n_ladders"] == 2 and d["diagnostics"]["model"]
    assert "interval" in repr(est) and "FLODANCE" in est.interval_meaning
    assert "flodance" in est._repr_html_()
    import json

    json.dumps(d)
    import matplotlib

    matplotlib.use("Agg")
    ax = est.plot()
    assert ax.get_xscale() == "log" and len(ax.lines) >= 2


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sample_size=5000), bigspec.ArgumentError, "larger than the matrix"),
    (dict(sample_size=10), bigspec.ArgumentError, "too small"),
    (dict(sample_size=1.5), bigspec.ArgumentTypeError, "integer"),
    (dict(n_ladders=0), bigspec.ArgumentError, "at least 1"),
    (dict(probes=8), bigspec.ArgumentError, "option of method='slq'"),
    (dict(checkpoint=True), bigspec.ArgumentError, "option of method='ldl'"),
    (dict(pseudo_tol=2.0), bigspec.ArgumentError, "pseudo_tol"),
])
def test_bad_input(matern, kwargs, error, match):
    X, _ = matern
    with pytest.raises(error, match=match):
        bigspec.logdet(kernel="matern", X=X, lengthscale=0.1, method="flodance", **kwargs)


def test_estimator_options_with_an_exact_method_and_kernel_without_flodance(matern):
    X, K = matern
    with pytest.raises(bigspec.ArgumentError, match="sample_size is an option of method='flodance'"):
        bigspec.logdet(K, method="ldl", sample_size=100)
    with pytest.raises(bigspec.ArgumentError, match="never formed"):
        bigspec.logdet(kernel="matern", X=X, method="slq")
    with pytest.raises(bigspec.ArgumentError, match="unknown method"):
        bigspec.logdet(K, method="flodanse")
    with pytest.raises(TypeError, match="not both"):
        bigspec.logdet(K, kernel="matern", X=X, method="flodance")


@pytest.mark.slow
def test_same_estimate_on_two_worker_processes(tmp_path, matern):
    from distributed import Client, LocalCluster

    X, K = matern
    ms = bigspec.form("matern", X, str(tmp_path / "m.zarr"), tile_size=250, lengthscale=0.1, progress=False)
    kw = dict(method="flodance", sample_size=300, shift=1e-2)
    local = quiet(A=ms, **kw)
    impalpable = quiet(kernel="matern", X=X, lengthscale=0.1, **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        on_store = quiet(A=ms, client=client, **kw)
        formed_there = quiet(kernel="matern", X=X, lengthscale=0.1, client=client, **kw)
    # the ladders agree to rounding (BLAS threads differ); the nonlinear fit keeps that within 1e-5
    assert on_store.logabsdet == pytest.approx(local.logabsdet, rel=1e-5)
    assert formed_there.logabsdet == pytest.approx(impalpable.logabsdet, rel=1e-5)
    assert on_store.covers(exact(K, 1e-2))


def test_disjoint_ladders_must_fit_a_matrix_but_not_a_kernel(matern):
    X, K = matern
    with pytest.raises(bigspec.ArgumentError, match="disjoint diagonal blocks"):
        bigspec.logdet(K, method="flodance", sample_size=1000, n_ladders=4)
    est = quiet(kernel="matern", X=X, lengthscale=0.1, shift=1e-2, method="flodance", sample_size=1000, n_ladders=4)
    assert est.settings["n_ladders"] == 4 and not est.settings["disjoint"]      # independent subsets instead
    assert est.covers(exact(K, 1e-2))


def test_an_indefinite_matrix_is_refused():
    rng = np.random.default_rng(12)
    G = rng.standard_normal((800, 800))
    A = (G + G.T) / np.sqrt(1600)                   # GOE: half its eigenvalues negative
    with pytest.raises(bigspec.EstimateError, match="negative pivots"):
        bigspec.logdet(A, method="flodance", sample_size=200)


@pytest.mark.gpu
@pytest.mark.parametrize("method, options", [("flodance", dict(sample_size=300)),
                                             ("spectrum", dict(sample_size=300, n_samples=2)),
                                             ("slq", dict(probes=8, lanczos_steps=20))])
def test_estimators_on_a_gpu_match_the_cpu(xp, matern, method, options):
    if xp is np:
        pytest.skip("GPU-only test")
    X, K = matern
    source = dict(A=K) if method == "slq" else dict(kernel="matern", X=X, lengthscale=0.1)
    cpu = quiet(method=method, shift=1e-2, **source, **options)
    gpu = quiet(method=method, shift=1e-2, device="gpu", **source, **options)
    assert gpu.logabsdet == pytest.approx(cpu.logabsdet, rel=1e-5)
    assert gpu.covers(exact(K, 1e-2)) == cpu.covers(exact(K, 1e-2))


def test_a_kernel_needs_an_estimator_named():
    X = np.random.default_rng(13).uniform(size=(200, 2))
    with pytest.raises(bigspec.ArgumentError, match="choose method='flodance' or method='spectrum'"):
        bigspec.logdet(kernel="rbf", X=X)


def test_wishart_ladders_are_refused_or_warned():
    # a Gram matrix of p features (p a little above n): its increments log(1 - m/p) fall ever faster
    Z = np.random.default_rng(0).standard_normal((2000, 2200))
    A = Z @ Z.T / 2200
    with pytest.raises(bigspec.EstimateError, match="fall ever faster"):
        bigspec.logdet(A, method="flodance", sample_size=1000)
    with pytest.warns(bigspec.EstimateWarning, match="ever slower decline"):
        bigspec.logdet(A, method="flodance", sample_size=300)


def test_cli_estimator_errors_speak_in_flags(tmp_path, capsys):
    from bigspec.cli import main

    np.save(tmp_path / "X.npy", np.random.default_rng(14).uniform(size=(300, 2)))
    cases = [
        (["--kernel", "rbf", "--data", str(tmp_path / "X.npy"), "--method", "slq"], ["--kernel", "bigspec form"]),
        (["--kernel", "rbf", "--data", str(tmp_path / "X.npy"), "--method", "flodance", "--probes", "3"],
         ["--probes is an option of --method slq", "--pseudo-tol"]),
        (["--kernel", "rbf", "--data", str(tmp_path / "X.npy"), "--method", "flodance", "--sample-size", "500"],
         ["--sample-size 500 is larger"]),
    ]
    for args, needles in cases:
        with pytest.raises(SystemExit) as e:
            main(["logdet", *args])
        err = capsys.readouterr().err
        assert e.value.code == 1, err
        for needle in needles:
            assert needle in err, (needle, err)
        assert "kernel=" not in err and "sample_size=" not in err


def test_the_users_matrix_is_not_changed(matern):
    _, K = matern
    before = K.copy()
    quiet(A=K, method="flodance", sample_size=300, shift=1e-2)      # scale 1: the shift goes on the block
    np.testing.assert_array_equal(K, before)


def test_sample_size_n_is_the_exact_value_and_small_sizes_say_the_minimum():
    """sample_size = n: the ladder is the whole matrix, so the estimate is its exact log-determinant (it
    crashed on the empty extrapolation); sample_size=0 names the real minimum, not 'at least 1'."""
    X = np.random.default_rng(9).uniform(size=(600, 3))
    K = kernel_matrix("matern", X, nu=1.5, lengthscale=0.3)
    est = quiet(A=K, method="flodance", sample_size=600, n_ladders=1, shift=1e-3)
    assert est.logabsdet == pytest.approx(exact(K, 1e-3), rel=1e-9) and est.covers(exact(K, 1e-3))
    with pytest.raises(bigspec.ArgumentError, match=r"sample_size=0 is too small .* at least 40"):
        bigspec.logdet(K, method="flodance", sample_size=0)
