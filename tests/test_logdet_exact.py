"""Exact logdet against numpy/scipy oracles: sizes, ragged tiles, dtypes, budgets, prefixes."""

import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import bigspec
from bigspec.errors import (InvalidMatrixError, MemoryBudgetError, NonFiniteError, NotPositiveDefiniteError,
                            SingularMatrixWarning, StoreExistsError, TileSizeError)
from bigspec.determinant.exact import local_threads
from bigspec.determinant.plan import make_plan
from bigspec.testing import assert_logdet_close, make_indefinite, make_spd


def budget_for(n, b, panels, itemsize=8, method="ldl"):
    """The largest memory budget (bytes) that still needs at least ``panels`` super-panels."""
    threads = local_threads(os.cpu_count() or 1)[0]

    def count(budget):
        try:
            return make_plan(n, b, itemsize, method, budget, threads).n_panels
        except MemoryBudgetError:
            return 10**9
    lo, hi = 1, n * n * itemsize
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) >= panels:
            lo = mid
        else:
            hi = mid - 1
    return lo


CASES = [(1, 1), (2, 1), (17, 5), (17, 17), (70, 16), (70, 7), (257, 64), (257, 50), (1000, 125), (1000, 96)]


@pytest.mark.parametrize("n,b", CASES)
@pytest.mark.parametrize("kind", ["spd", "indefinite"])
def test_in_memory_matches_numpy(n, b, kind):
    A = make_spd(n, seed=n) if kind == "spd" else make_indefinite(n, seed=n)
    for method in (["ldl", "cholesky"] if kind == "spd" else ["ldl"]):
        r = bigspec.logdet(A, tile_size=b, method=method)
        assert r.super_panels == 1
        assert_logdet_close(r, A, rtol=1e-10)


@pytest.mark.parametrize("n,b", [(70, 7), (257, 16), (1000, 96)])
@pytest.mark.parametrize("panels", [2, 4, 7])
@pytest.mark.parametrize("method", ["ldl", "cholesky"])
def test_out_of_core_budgets(n, b, panels, method, tmp_path):
    A = make_spd(n, seed=3) if method == "cholesky" else make_indefinite(n, seed=3)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    budget = budget_for(n, b, panels, method=method)
    assert budget < A.nbytes  # the budget is smaller than the matrix
    r = bigspec.logdet(ms, method=method, memory=budget)
    assert r.super_panels >= panels
    assert r.peak_memory_estimate <= budget
    assert_logdet_close(r, A, rtol=1e-10)
    # the factor checkpoint is complete and a rerun returns the cached answer
    again = bigspec.logdet(ms, method=method, memory=budget)
    assert again.cached and again.panels_computed == 0
    assert (again.sign, again.logabsdet) == (r.sign, r.logabsdet)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ["ldl", "cholesky"])
def test_dtypes_are_factored_in_float64(dtype, method, tmp_path):
    # a float32 store is factored in float64: the answer is the float64 logdet of its entries
    A = make_spd(200, seed=5, cond=1e2).astype(dtype)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=48)
    assert ms.dtype == dtype
    r = bigspec.logdet(ms, method=method, memory=budget_for(200, 48, 3, 8, method))
    assert r.super_panels >= 3
    assert_logdet_close(r, A.astype(np.float64), rtol=1e-11)
    assert ms.group["factor"]["L"].dtype == np.float64


@pytest.mark.parametrize("method", ["ldl", "cholesky"])
@pytest.mark.parametrize("panels", [1, 3])
def test_prefix_logdets_are_leading_minors(method, panels, tmp_path):
    n, b = 120, 16
    A = make_spd(n, seed=7) if method == "cholesky" else make_indefinite(n, seed=7)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    r = bigspec.logdet(ms, method=method, memory=budget_for(n, b, panels, method=method) if panels > 1 else None)
    prefix, signs = r.prefix_logdet, r.prefix_sign
    assert prefix.shape == (n,)
    known = np.isfinite(prefix)
    assert known.tolist() == r.leading_minor.tolist()
    if method == "cholesky":
        assert known.all()
    else:  # LDL: NaN where pivoting made a prefix not a leading minor, never a wrong number
        assert known[b - 1::b].all() and not known.all()
        assert (signs[~known] == 0).all()
    for m in np.flatnonzero(known) + 1:
        s, ref = np.linalg.slogdet(A[:m, :m])
        assert signs[m - 1] == s
        assert abs(prefix[m - 1] - ref) <= 1e-9 * max(1.0, abs(ref)), m


def test_shift_and_scale_scalar_and_vector():
    A = make_indefinite(90, seed=8)
    shift = np.linspace(5, 12, 90)
    for method, s_, sh in [("ldl", 2.5, 0.0), ("ldl", 1.0, 3.0), ("cholesky", 0.5, shift), ("ldl", -1.0, shift)]:
        r = bigspec.logdet(A, tile_size=32, method=method, scale=s_, shift=sh)
        assert_logdet_close(r, s_ * A + np.diag(np.broadcast_to(sh, (90,))), rtol=1e-10)
    with pytest.raises(ValueError, match="length n=90"):
        bigspec.logdet(A, shift=np.ones(5))


def test_shift_out_of_core_keeps_store_and_factor_per_setting(tmp_path):
    A = make_spd(100, seed=9)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=20)
    budget = budget_for(100, 20, 3, method="cholesky")
    r1 = bigspec.logdet(ms, method="cholesky", memory=budget, shift=0.5)
    assert_logdet_close(r1, A + 0.5 * np.eye(100))
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        bigspec.logdet(ms, method="cholesky", memory=budget, shift=1.0)
    r2 = bigspec.logdet(ms, method="cholesky", memory=budget, shift=1.0, overwrite=True)
    assert_logdet_close(r2, A + np.eye(100))
    r3 = bigspec.logdet(ms, method="cholesky", memory=budget, shift=2.0, checkpoint=False)
    assert_logdet_close(r3, A + 2 * np.eye(100))
    np.testing.assert_array_equal(ms.to_dask().compute(), A)  # the matrix is never rewritten


def test_not_positive_definite_names_tile_and_pivot():
    A = make_spd(60, seed=10)
    A[37, 37] = -5.0
    with pytest.raises(NotPositiveDefiniteError, match=r"row 37 \(tile \(2, 2\).*method='ldl'") as e:
        bigspec.logdet(A, tile_size=16, method="cholesky")
    assert e.value.tile == (2, 2) and e.value.pivot == 37
    assert_logdet_close(bigspec.logdet(A, tile_size=16, method="ldl"), A)


def test_not_positive_definite_out_of_core(tmp_path):
    A = make_spd(80, seed=11)
    A[70, 70] = -1.0
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=10)
    with pytest.raises(NotPositiveDefiniteError, match=r"tile \(7, 7\)"):
        bigspec.logdet(ms, method="cholesky", memory=budget_for(80, 10, 4, method="cholesky"))


def test_singular_matrix_gives_minus_inf_with_warning():
    A = make_indefinite(40, seed=12)
    A[:, 25] = 0.0
    A[25, :] = 0.0
    with pytest.warns(SingularMatrixWarning, match="zero pivot at row 25"):
        r = bigspec.logdet(A, tile_size=8)
    assert r.sign == 0 and r.logabsdet == -math.inf and r.singular_at == 25
    assert np.linalg.slogdet(A)[1] == -math.inf


def test_two_by_two_pivots_and_growth():
    # a zero diagonal forces Bunch-Kaufman 2x2 pivots in every tile
    A = make_indefinite(100, seed=13)
    A[np.diag_indices(100)] = 0.0
    D = bigspec.logdet(A, tile_size=25, checkpoint=False)
    assert_logdet_close(D, A, rtol=1e-9)
    assert D.max_abs_L < 1e4


def test_structurally_singular_leading_tile_is_stepped_over():
    # [[0, B], [B^T, 0]] is nonsingular, but its leading tiles (of it and of a random
    # permutation of it) are singular: pivoting across tiles steps over them
    rng = np.random.default_rng(13)
    B = rng.standard_normal((50, 50))
    A = np.block([[np.zeros((50, 50)), B], [B.T, np.zeros((50, 50))]])
    p = rng.permutation(100)
    for M in (A, A[p][:, p]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = bigspec.logdet(M, tile_size=25)
        assert_logdet_close(r, M, rtol=1e-12)
        assert r.pivot_groups == ((0, 100),)


def test_bad_input_errors(tmp_path):
    with pytest.raises(InvalidMatrixError, match="square"):
        bigspec.logdet(np.ones((3, 2)))
    with pytest.raises(InvalidMatrixError, match="unsupported dtype"):
        bigspec.logdet(np.eye(3, dtype=np.complex64))
    with pytest.raises(ValueError, match="method must be one of|unknown method"):
        bigspec.logdet(np.eye(3), method="lu")
    A = np.eye(4)
    A[1, 1] = np.inf
    with pytest.raises(NonFiniteError):
        bigspec.logdet(A)
    ms = bigspec.from_array(make_spd(30), str(tmp_path / "A.zarr"), tile_size=10)
    with pytest.raises(TileSizeError, match=r"tile_size=8 does not match the store's tiles \(10\)"):
        bigspec.logdet(ms, tile_size=8)
    with pytest.raises(MemoryBudgetError, match="minimum is") as e:
        bigspec.logdet(ms, memory="1kB")
    assert e.value.minimum > 1000
    with pytest.raises(ValueError, match="is not a size"):
        bigspec.logdet(ms, memory="lots")
    with pytest.raises(bigspec.StoreNotFoundError):
        bigspec.logdet(str(tmp_path / "missing.zarr"))
    ns = bigspec.from_array(np.arange(9.0).reshape(3, 3), str(tmp_path / "ns.zarr"), symmetric=False)
    with pytest.raises(InvalidMatrixError, match="non-symmetric"):
        bigspec.logdet(ns)


def test_dry_run_reports_plan(tmp_path):
    ms = bigspec.from_array(make_spd(200), str(tmp_path / "A.zarr"), tile_size=25)
    plan = bigspec.logdet(ms, memory=budget_for(200, 25, 4), dry_run=True)
    s = plan.summary()
    assert s["super_panels"] >= 4 and s["tasks"] > 0 and s["peak_memory"] <= plan.budget
    assert s["flops"] == pytest.approx(200 ** 3 / 3, rel=0.3)
    assert "factor" not in ms.group  # nothing computed or written
    assert "peak memory" in plan.describe()


def test_result_object_renders():
    r = bigspec.logdet(make_spd(20), tile_size=8)
    d = r.to_dict()
    import json
    json.dumps(d)
    assert d["n"] == 20 and d["method"] == "ldl" and "log_d" not in d
    assert "LogdetResult(sign=1" in repr(r) and "<table>" in r._repr_html_()
    assert bigspec.slogdet(make_spd(20), tile_size=8) == (r.sign, r.logabsdet)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), b=st.integers(1, 24), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]), spd=st.booleans())
def test_hypothesis_against_numpy(n, b, seed, dtype, spd):
    A = (make_spd(n, seed=seed, cond=10.0) if spd else make_indefinite(n, seed=seed)).astype(dtype)
    r = bigspec.logdet(A, tile_size=b, method="cholesky" if spd else "ldl")
    ref_sign, ref = np.linalg.slogdet(A.astype(np.float64))
    assert r.sign == ref_sign
    # float32 entries are factored in float64: the oracle is the float64 logdet of the same entries
    assert abs(r.logabsdet - ref) <= 1e-9 * max(1.0, abs(ref)) or not np.isfinite(ref)


@pytest.mark.parametrize("method", ["ldl", "cholesky"])
@pytest.mark.parametrize("write", [True, False])
def test_plan_task_count_is_the_graph_size(method, write, tmp_path):
    """--dry-run's task count is the size of the graphs that run (pivoting inside each tile)."""
    from bigspec.store import FactorStore as _Factor
    from bigspec.determinant.graph import panel_graph
    from bigspec.determinant.plan import make_plan

    n, b = 230, 20
    ms = bigspec.from_array(make_spd(n, seed=2), str(tmp_path / "A.zarr"), tile_size=b)
    plan = make_plan(n, b, 8, method, 200_000, 2, write_factor=write)
    factor = _Factor(ms.group.require_group("factor"), n, b, method, "x", True).arrays()
    assert plan.n_panels >= 2
    for k0, k1 in plan.panels:
        g = panel_graph(plan, k0, k1, ms.view(), factor, 1.0, 0.0, "cpu", write)
        assert plan.panel_tasks(k0, k1) == len(g.dsk), (k0, k1)


def test_dry_run_of_a_complete_factor_says_it_is_cached(tmp_path):
    ms = bigspec.from_array(make_spd(60, seed=1), str(tmp_path / "A.zarr"), tile_size=20)
    bigspec.logdet(ms, checkpoint=True)
    plan = bigspec.logdet(ms, dry_run=True, checkpoint=True)
    assert "nothing to compute" in str(plan) and "cached" in plan.describe()
    fresh = bigspec.logdet(ms, dry_run=True, checkpoint=True, overwrite=True)
    assert fresh.n_panels >= 1 and "tasks:" in str(fresh)


def test_names_of_the_errors_and_warnings_are_exported():
    import bigspec.errors

    for name in ("UnstableFactorizationError", "GrowthWarning", "OverwriteWarning", "SingularMatrixWarning",
                 "NonFiniteError"):
        assert getattr(bigspec, name) is getattr(bigspec.errors, name)
    assert bigspec.DecompressionWarning is bigspec.spectra.DecompressionWarning
    assert len(bigspec.__all__) == len(set(bigspec.__all__))


def _snapshot(x):
    """Bytes of every array inside ``x`` (lists, tuples, a DiagonalFactor's fields)."""
    if isinstance(x, np.ndarray):
        return (x.shape, x.dtype.str, x.tobytes())
    if isinstance(x, (list, tuple)):
        return tuple(_snapshot(v) for v in x)
    if hasattr(x, "__dataclass_fields__"):
        return tuple(_snapshot(getattr(x, f)) for f in x.__dataclass_fields__)
    return None


def _run_checking_inputs(dsk, keys):
    """Run a task graph in topological order and return (values, keys of tasks that changed an input)."""
    cache, changed = {}, []

    def is_key(x):
        try:
            return x in dsk
        except TypeError:
            return False

    def resolve(x):
        if isinstance(x, list):
            return [resolve(v) for v in x]
        return compute(x) if is_key(x) else x

    def compute(key):
        if key not in cache:
            task = dsk[key]
            if isinstance(task, tuple) and task and callable(task[0]):
                args = [resolve(a) for a in task[1:]]
                before = [_snapshot(a) for a in args]
                cache[key] = task[0](*args)
                if [_snapshot(a) for a in args] != before:
                    changed.append(key)
            else:
                cache[key] = resolve(task)
        return cache[key]

    return [compute(k) for k in keys], changed


@pytest.mark.parametrize("method, group", [("cholesky", 1), ("ldl", 1), ("ldl", 3)])
def test_pure_graphs_leave_every_task_input_as_it_was(method, group, tmp_path):
    """On a cluster Dask runs a task again, from the same inputs, when its worker dies: with
    pure=True no task changes an input (the threaded scheduler's graphs update tiles in place,
    and a lost worker once made a re-run apply an update twice: a wrong log-determinant)."""
    from bigspec.store import FactorStore as _Factor
    from bigspec.determinant.graph import panel_graph
    from bigspec.determinant.plan import make_plan

    n, b = 230, 20
    A = make_spd(n, seed=7) if method == "cholesky" else make_indefinite(n, seed=7)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    plan = make_plan(n, b, 8, method, 160_000, 2)
    assert plan.n_panels >= 3
    for pure in (False, True):
        factor = _Factor(ms.group.require_group("factor"), n, b, method, "x", True)
        logs, changed = [], []
        for k0, k1 in plan.panels:
            g = panel_graph(plan, k0, k1, ms.view(), factor.arrays(), 1.0, None, "cpu", True,
                            group=min(group, k1 - k0), pure=pure)
            values, bad = _run_checking_inputs(g.dsk, g.keys)
            changed += bad
            infos = values[:len(g.infos)]
            logs += [i["log_d"] for i in infos]
            bounds = [(g0 * b, min(g1 * b, n)) for g0, g1 in g.groups]
            factor.save_columns(list(zip(bounds, infos)), k1, {}, complete=k1 == plan.n_tiles)
        assert np.concatenate(logs).sum() == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-11)
        if pure:
            assert changed == [], f"tasks that changed an input: {changed[:5]}"
        else:
            assert changed                          # the checker sees in-place updates where they are made
