"""The exact logdet's plan: counted from the graphs that run, within its budget, near the left-looking bound."""

import dataclasses

import dask.utils
import numpy as np
import pytest
import zarr

import bigspec
from bigspec.determinant.graph import panel_graph
from bigspec.determinant.plan import Plan, make_plan
from bigspec.errors import ArgumentError, ArgumentTypeError
from bigspec.testing import assert_logdet_close, make_indefinite, make_spd

GiB, TiB = 2**30, 2**40


def _graph_tasks(plan):
    """Tasks of the real graphs of every panel (the same builder the run uses, on a dummy factor)."""
    factor = {"L": None, "D": None}
    return sum(len(panel_graph(plan, k0, k1, None, factor, 1.0, 0.0, "cpu", plan.write_factor,
                               plan.first_group(k0, k1)).dsk)
               for k0, k1 in plan.panels)


# (n, tile, budget in bytes, threads): ragged last tiles, in memory and out of core
PLANS = [(230, 20, 200_000, 2), (230, 20, 120_000, 3), (257, 16, 150_000, 2), (1000, 96, 2_000_000, 4),
         (1000, 125, 10**9, 4), (61, 7, 30_000, 1), (500, 64, 1_500_000, 8)]


@pytest.mark.parametrize("n,b,budget,threads", PLANS)
@pytest.mark.parametrize("method", ["cholesky", "ldl"])
def test_plan_task_count_is_the_graphs(n, b, budget, threads, method):
    plan = make_plan(n, b, 8, method, budget, threads)
    assert plan.summary()["tasks"] == _graph_tasks(plan)
    assert plan.summary()["peak_memory"] <= budget


@pytest.mark.parametrize("n,b,panels", [(230, 20, 3), (257, 16, 5), (301, 50, 1)])
@pytest.mark.parametrize("method", ["cholesky", "ldl"])
def test_plan_logdet_runs_as_planned(n, b, panels, method, tmp_path):
    A = make_spd(n, seed=4)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    budget = 10**9 if panels == 1 else None
    if budget is None:   # the largest budget that still needs `panels` super-panels
        lo, hi = 1, A.nbytes
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                ok = bigspec.plan_logdet(ms, method=method, memory=mid).n_panels >= panels
            except bigspec.MemoryBudgetError:
                ok = False
            lo, hi = (mid, hi) if ok else (lo, mid - 1)
        budget = lo
    plan = bigspec.plan_logdet(ms, method=method, memory=budget)
    assert isinstance(plan, Plan) and plan.n_panels >= panels
    assert repr(plan) == plan.describe() and "tasks:" in repr(plan)
    # dry_run returns the same plan
    assert bigspec.logdet(ms, method=method, memory=budget, dry_run=True).summary() == plan.summary()
    assert "factor" not in ms.group                                   # planning writes nothing
    r = bigspec.logdet(ms, plan=plan)
    assert r.method == method and r.super_panels == plan.n_panels
    assert r.tasks == plan.summary()["tasks"]                         # the plan counts the graphs that ran
    assert_logdet_close(r, A, rtol=1e-10)


def test_plan_is_checked_against_the_run(tmp_path):
    plan = bigspec.plan_logdet(make_spd(100), tile_size=20, memory="1GiB", method="cholesky")
    with pytest.raises(ArgumentError, match="order 100.*order 90.*plan_logdet"):
        bigspec.logdet(make_spd(90), plan=plan)
    with pytest.raises(ArgumentError, match="method='ldl' differs from the plan's"):
        bigspec.logdet(make_spd(100), plan=plan, method="ldl")
    with pytest.raises(ArgumentError, match="tile_size=10 differs"):
        bigspec.logdet(make_spd(100), plan=plan, tile_size=10)
    with pytest.raises(ArgumentTypeError, match="plan= must be a Plan.*got dict"):
        bigspec.logdet(make_spd(100), plan=plan.summary())
    r = bigspec.logdet(make_spd(100), plan=plan, memory="1GiB")
    assert r.memory_budget == plan.budget


def test_ldl_runs_as_planned_on_an_indefinite_matrix():
    A = make_indefinite(150, seed=3)
    plan = bigspec.plan_logdet(A, tile_size=25, memory="100KB")
    assert plan.n_panels > 1
    r = bigspec.logdet(A, plan=plan)
    assert_logdet_close(r, A, rtol=1e-10)


class _CountReads:
    """Bytes read from zarr arrays named ``L`` (the factor) and ``matrix`` while active: through
    zarr, and from their chunk files (:func:`bigspec.chunkio.read_region`)."""

    def __init__(self, monkeypatch):
        import bigspec.determinant.tasks
        import bigspec.store
        from bigspec import chunkio

        self.factor = self.matrix = 0
        counter = self

        def count(array, out):
            name = array.path.rsplit("/", 1)[-1]
            if name == "L":
                counter.factor += np.asarray(out).nbytes
            elif name == "matrix":
                counter.matrix += np.asarray(out).nbytes
            return out

        real = zarr.Array.__getitem__
        monkeypatch.setattr(zarr.Array, "__getitem__", lambda self, selection: count(self, real(self, selection)))

        def read_region(array, *region):
            assert chunkio.raw_layout(array) is not None    # read from the chunk files, not counted twice
            return count(array, chunkio.read_region(array, *region))

        for module in (bigspec.determinant.tasks, bigspec.store):
            monkeypatch.setattr(module, "read_region", read_region)


@pytest.mark.parametrize("n,b,memory", [(230, 20, "150KB"), (257, 16, "120KB"), (400, 64, "700KB")])
def test_measured_reads_are_the_planned_ones(n, b, memory, tmp_path, monkeypatch):
    A = make_spd(n, seed=9)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    plan = bigspec.plan_logdet(ms, method="cholesky", memory=memory)
    assert plan.n_panels >= 3
    s = plan.summary()
    reads = _CountReads(monkeypatch)
    r = bigspec.logdet(ms, plan=plan, progress=False)
    assert_logdet_close(r, A, rtol=1e-10)
    assert reads.factor == s["bytes_read_factor"] > 0
    assert reads.matrix == s["bytes_read_matrix"]
    assert r.bytes_read == s["bytes_read"]
    # each L entry a panel needs is read once: sum over panels of (n - c) * c entries
    c = [k0 * b for k0, _ in plan.panels]
    assert s["bytes_read_factor"] == 8 * sum((n - ci) * ci for ci in c)


def _widest(plan):
    """Whether one more tile column per super-panel would exceed the plan's budget."""
    w, nt = plan.panel_tiles + 1, plan.n_tiles
    wider = dataclasses.replace(plan, panel_tiles=w, panels=tuple((k0, min(k0 + w, nt)) for k0 in range(0, nt, w)))
    return any(wider.panel_memory(*p) > plan.budget for p in wider.panels[:2])


@pytest.mark.parametrize("method", ["cholesky", "ldl"])
@pytest.mark.parametrize("workers,threads_per_worker,budget", [(8, 1, 8 * 64 * GiB), (8, 16, 8 * 64 * GiB),
                                                                (32, 1, 8 * TiB), (32, 64, 8 * TiB)])
def test_the_500k_plans(method, workers, threads_per_worker, budget):
    """The job of issue 15: n = 500,000 float64, tile 4096, planned without data."""
    n, b = 500_000, 4096
    plan = make_plan(n, b, 8, method, budget, workers * threads_per_worker, workers)
    s = plan.summary()
    assert s["peak_memory"] <= budget                         # never above its own budget
    assert s["tasks"] == _graph_tasks(plan)
    triangle = n * (n + b) // 2 * 8
    if triangle * 1.5 < budget:                               # the whole lower triangle fits: one panel, in core
        assert plan.n_panels == 1 and plan.in_memory and s["bytes_read_factor"] == 0
    else:
        assert plan.n_panels > 1 and _widest(plan)            # as wide as the budget allows
        W = plan.panel_width
        bound = 8 * n ** 3 / (6 * W)
        assert s["reread_bound"] == pytest.approx(bound)
        assert s["bytes_read_factor"] <= 1.5 * bound          # re-reads near the left-looking bound


def test_plan_logdet_without_data():
    """A matrix that is not here is planned from its order: the same Plan as the planner's, and clear refusals."""
    import bigspec

    plan = bigspec.plan_logdet(n=20_000, method="cholesky", tile_size=1000, memory="400MiB", workers=2, threads=2)
    ref = make_plan(20_000, 1000, 8, "cholesky", 400 * 2 ** 20, 4, 2, pure=True)
    assert plan.summary() == ref.summary() and plan.n_panels == ref.n_panels > 1
    assert plan.summary()["peak_memory"] <= 400 * 2 ** 20
    assert plan.summary()["tasks"] == _graph_tasks(plan)
    with pytest.raises(bigspec.ArgumentError, match=r"give the budget of the cluster you plan for: memory='512GiB'"):
        bigspec.plan_logdet(n=1000)
    with pytest.raises(bigspec.ArgumentError, match=r"the matrix A or its order n"):
        bigspec.plan_logdet(np.eye(4), n=4)
    with pytest.raises(bigspec.ArgumentError, match=r"plans the exact methods"):
        bigspec.plan_logdet(n=1000, memory="1GiB", method="flodance")


@pytest.mark.parametrize("method", ["cholesky", "ldl"])
def test_task_granularities_agree_with_numpy_and_their_plans(method, tmp_path, monkeypatch):
    """tile / block / panel tasks: the same determinant, each run the graphs its plan counted, reading
    what it planned; coarser tasks are fewer, and block/panel use spans of several earlier columns."""
    import dask

    n, b = 300, 12
    A = make_spd(n, seed=21) if method == "cholesky" else make_indefinite(n, seed=21)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    plans, tasks = {}, {}
    for g in ("tile", "block", "panel"):
        with dask.config.set({"bigspec.task-granularity": g}):
            plan = bigspec.plan_logdet(ms, method=method, memory=250_000, overwrite=True)
            assert plan.granularity == g and plan.n_panels >= 3
            s = plan.summary()
            assert s["peak_memory"] <= plan.budget
            reads = _CountReads(monkeypatch)
            r = bigspec.logdet(ms, plan=plan, progress=False, overwrite=True)
            monkeypatch.undo()
        assert_logdet_close(r, A, rtol=1e-10)
        assert r.tasks == s["tasks"]                                     # the graphs that ran are the plan's
        if method == "cholesky":                                         # (LDL^T may widen its pivot groups)
            assert reads.factor == s["bytes_read_factor"] and reads.matrix == s["bytes_read_matrix"]
        plans[g], tasks[g] = plan, s["tasks"]
    assert plans["tile"].update_tiles == 1 and plans["block"].update_tiles > 1 and plans["panel"].update_tiles > 1
    assert tasks["panel"] < tasks["tile"] and tasks["block"] < tasks["tile"]
    if method == "cholesky":   # coarse: the diagonal block in one LAPACK call, as wide as memory allows
        assert plans["block"].first_group(*plans["block"].panels[1]) == 1
        assert plans["panel"].first_group(*plans["panel"].panels[1]) > 1


def test_task_granularity_is_checked():
    import dask

    with dask.config.set({"bigspec.task-granularity": "tiles"}):
        with pytest.raises(ArgumentError, match=r"bigspec.task-granularity = 'tiles' must be one of tile, block, panel"):
            bigspec.plan_logdet(make_spd(50), tile_size=10, memory="1MiB")
    with pytest.raises(ArgumentError, match=r"device='tpu' must be one of"):
        bigspec.plan_logdet(n=1000, memory="1GiB", device="tpu")
    # a GPU job planned here (no GPU needed): coarse tasks by default
    gpu = bigspec.plan_logdet(n=200_000, memory="64GiB", tile_size=4096, method="cholesky", device="gpu", workers=8)
    cpu = bigspec.plan_logdet(n=200_000, memory="64GiB", tile_size=4096, method="cholesky", workers=8)
    assert gpu.granularity == "panel" and cpu.granularity == "block"
    assert gpu.summary()["tasks"] < cpu.summary()["tasks"]


@pytest.mark.parametrize("method", ["ldl", "cholesky"])
@pytest.mark.parametrize("n,b,workers,threads", [(3000, 250, 2, 1), (1797, 256, 2, 1), (5000, 512, 1, 2)])
def test_the_suggested_minimum_memory_fits(n, b, workers, threads, method):
    with pytest.raises(bigspec.MemoryBudgetError) as e:
        bigspec.plan_logdet(n=n, tile_size=b, memory="2MiB", workers=workers, threads=threads, method=method)
    suggested = str(e.value).split("memory='")[1].split("'")[0]
    assert dask.utils.parse_bytes(suggested) >= e.value.minimum
    plan = bigspec.plan_logdet(n=n, tile_size=b, memory=suggested, workers=workers, threads=threads, method=method)
    assert plan.summary()["peak_memory"] <= dask.utils.parse_bytes(suggested)
    assert (f"on {workers} workers" in str(e.value)) == (workers > 1)
