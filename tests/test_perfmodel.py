"""The performance model: predictions against hand-computed oracles, profiles, calibration, dry runs.

Timings are never asserted: the oracles are the model's own arithmetic, done by hand.
"""

import math
import os

import dask.config
import msgspec
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import bigspec
from bigspec.cli import cli
from bigspec.errors import ArgumentError, StoreExistsError
from bigspec.perfmodel import (PROFILES, MachineProfile, calibrate, diagonal_blocks, predict, profile_path,
                               resolve_profile, save_profile)

PROF = MachineProfile(name="test", gemm=50e9, potrf=10e9, sytrf=8e9, trsm=30e9, trsm_ldl=20e9, store_read=2e9,
                      store_write=1e9,
                      task_overhead=1e-4, task_overhead_distributed=1e-3, network=1e9,
                      formation={"rbf": 2e-8, "matern": 3e-8, "relu": 1e-8}, formation_dim=16, ntk=20e9)

SUMMARY = {"verb": "logdet", "n": 4096, "tile_size": 1024, "method": "cholesky", "tasks": 120, "flops": 2.5e10,
           "factor_flops": 1.5e9, "factor_block": 1024, "solve_flops": 3e9, "bytes_read_matrix": 80_000_000,
           "bytes_read_factor": 20_000_000, "bytes_written": 50_000_000, "workers": 1, "threads": 2}


@pytest.fixture(autouse=True)
def no_user_profile(tmp_path, monkeypatch):
    """Each test sees no profile of the user's, and leaves none behind."""
    monkeypatch.setenv("DASK_CONFIG", str(tmp_path / "dask"))
    with dask.config.set({"bigspec.profile": None, "bigspec.calibration": None}):
        yield


def test_prediction_of_a_summary_is_the_hand_computed_sum():
    s = SUMMARY
    gemm = s["flops"] - s["factor_flops"] - s["solve_flops"]
    compute = gemm / (2 * PROF.gemm) + s["solve_flops"] / (2 * PROF.trsm) + s["factor_flops"] / (2 * PROF.potrf)
    reads = (s["bytes_read_matrix"] + s["bytes_read_factor"]) / PROF.store_read
    writes = s["bytes_written"] / PROF.store_write
    scheduling = s["tasks"] * PROF.task_overhead
    p = predict(s, PROF)
    assert p.terms == pytest.approx({"compute": compute, "store_read": reads, "store_write": writes,
                                     "scheduling": scheduling})
    assert p.seconds == pytest.approx(compute + reads + writes + scheduling)
    assert p.bottleneck == "compute"
    assert p.tasks_per_compute_second == pytest.approx(s["tasks"] / compute)
    # LDL^T factors its diagonal blocks at the sytrf rate; on 2 workers the network joins in
    ldl = predict({**s, "method": "ldl", "workers": 2}, PROF)
    assert ldl.terms["compute"] == pytest.approx(gemm / (2 * PROF.gemm) + s["solve_flops"] / (2 * PROF.trsm_ldl)
                                                 + s["factor_flops"] / (2 * PROF.sytrf))   # tiles: on every thread
    # half of the tile kernels' inputs (3 tiles per 2 b^3 flops) come from the other worker
    assert ldl.terms["network"] == pytest.approx(0.5 * 12 * (s["flops"] - s["factor_flops"]) / 1024
                                                 / (2 * PROF.network))
    assert ldl.terms["scheduling"] == pytest.approx(s["tasks"] * PROF.task_overhead_distributed)


@pytest.mark.parametrize("method", ["cholesky", "ldl"])
def test_prediction_of_a_plan_sums_its_panels(method):
    plan = bigspec.plan_logdet(n=3000, method=method, tile_size=250, memory="24MiB", threads=2, profile=PROF)
    assert plan.n_panels > 1
    expected = 0.0
    for cost, (k0, k1) in zip(plan.panel_costs, plan.panels):
        g = plan.first_group(k0, k1)
        blocks = [(g0 * 250, min(min(g0 + g, k1) * 250, 3000) - g0 * 250) for g0 in range(k0, k1, g)]
        fl = sum(P ** 3 / 3 for _, P in blocks)
        solve = sum((3000 - r0 - P) * P * P for r0, P in blocks)       # the rows below each block
        rate = PROF.sytrf if method == "ldl" else PROF.potrf     # PROF has no potrf-blocks: the tile rate
        trsm = PROF.trsm_ldl if method == "ldl" else PROF.trsm
        expected += ((cost.flops - fl - solve) / (2 * PROF.gemm) + solve / (2 * trsm) + fl / (2 * rate)
                     + (cost.read_matrix + cost.read_factor) / PROF.store_read + cost.written / PROF.store_write
                     + cost.tasks * PROF.task_overhead)
    p = predict(plan, PROF)
    assert p.seconds == pytest.approx(expected)
    s = plan.summary()
    assert s["predicted_seconds"] == pytest.approx(expected)
    assert s["factor_flops"] == pytest.approx(sum(P ** 3 / 3 for panel in diagonal_blocks(plan) for _, P in panel))
    assert "predicted:" in repr(plan) and "the test profile" in repr(plan)


def test_slower_profile_predicts_more_and_tiny_bandwidth_is_the_bottleneck():
    base = predict(SUMMARY, PROF)
    for key in ("gemm", "potrf", "trsm", "store_read", "store_write", "task_overhead"):
        slower = msgspec.structs.replace(PROF, **{key: getattr(PROF, key) * (0.5 if key != "task_overhead" else 2)})
        assert predict(SUMMARY, slower).seconds > base.seconds, key
    assert base.bottleneck == "compute"
    assert predict(SUMMARY, msgspec.structs.replace(PROF, store_read=1e6)).bottleneck == "store_read"
    assert predict(SUMMARY, msgspec.structs.replace(PROF, store_write=1e6)).bottleneck == "store_write"
    assert predict(SUMMARY, msgspec.structs.replace(PROF, task_overhead=1.0)).bottleneck == "scheduling"


def test_block_factor_time_interpolates_the_calibrated_sizes_and_grows_as_a_cubic():
    a, b = 1e-11, 3e-8                       # seconds of a P-row Cholesky on one thread: a P^3 + b P^2

    def seconds(P):
        return a * P ** 3 + b * P ** 2

    def rate(P):
        return P ** 3 / 3 / seconds(P)

    p = msgspec.structs.replace(PROF, potrf_blocks=((2048, rate(2048)), (8192, rate(8192))), tile_size=1024)
    for P in (2048, 8192, 12000, 30000):      # at the calibrated sizes, and beyond the widest: the cubic
        assert p.factor_seconds("cholesky", P, threads=2) == pytest.approx(seconds(P) / 2)
    k = math.log(seconds(8192) / seconds(2048)) / math.log(4)        # between them: a power of P
    assert p.factor_seconds("cholesky", 4096, 1) == pytest.approx(seconds(2048) * 2 ** k)
    assert p.factor_seconds("cholesky", 1024, 2) == pytest.approx(1024 ** 3 / 3 / (2 * p.potrf))   # a tile
    assert p.factor_seconds("ldl", 8192, 1) == pytest.approx(8192 ** 3 / 3 / p.sytrf)
    one = msgspec.structs.replace(PROF, potrf_blocks=((4096, 40e9),))
    assert one.factor_seconds("cholesky", 3000, 1) < one.factor_seconds("cholesky", 4096, 1) == \
        pytest.approx(4096 ** 3 / 3 / 40e9)


def test_form_prediction_and_dry_run_write_nothing(tmp_path):
    X = np.random.default_rng(0).standard_normal((300, 20))
    path = tmp_path / "K.zarr"
    plan = bigspec.form("relu", X, str(path), tile_size=128, dry_run=True, profile=PROF, depth=3)
    assert not path.exists()
    sizes = [128, 128, 44]
    entries = sum(sizes[i] * sizes[j] for i in range(3) for j in range(i + 1))
    assert (plan.tiles, plan.tiles_to_form, plan.entries, plan.bytes_written) == (6, 6, entries, 8 * entries)
    per_entry = PROF.formation["relu"] * (3 + 1) + 2 * (20 - 16) / PROF.gemm
    p = predict(plan, PROF)
    assert p.terms["formation"] == pytest.approx(entries * per_entry / plan.threads)
    assert p.terms["store_write"] == pytest.approx(8 * entries / PROF.store_write)
    assert "form plan" in repr(plan) and "predicted:" in repr(plan)
    # a store of the same matrix half formed: only its missing tiles are planned
    bigspec.form("relu", X, str(path), tile_size=128, depth=3, progress=False)
    again = bigspec.form("relu", X, str(path), tile_size=128, dry_run=True, depth=3)
    assert again.tiles_to_form == 0 and again.action == "resume"
    with pytest.raises(StoreExistsError):   # another matrix there: refused as form would
        bigspec.form("rbf", X, str(path), tile_size=128, dry_run=True)
    with pytest.raises(ArgumentError, match="profile"):
        bigspec.form("rbf", X, str(tmp_path / "B.zarr"), tile_size=128, profile="h100")   # needs dry_run


def test_empirical_ntk_formation_counts_padded_sub_batches_and_jacobians():
    prof = msgspec.structs.replace(PROF, ntk=10e9, ntk_pair=1e-4, ntk_jacobian=2e-9)
    s = {"verb": "form", "kernel": {"name": "ntk", "n_outputs": 10, "params": {"n_parameters": 5000,
                                                                             "batch_size": 8}},
         "n_samples": 400, "tile_size": 500, "tiles_to_form": 36, "tasks": 36, "entries": 4000 * 4001 // 2,
         "bytes_written": 8 * 4000 * 4001 // 2, "workers": 1, "threads": 2}
    batches = 7                                          # 50 samples a tile side, in sub-batches of 8 (padded to 56)
    per_tile = (batches * 8 * 10) ** 2 * 2 * 5000 / prof.ntk + batches ** 2 * prof.ntk_pair
    jacobians = 400 * 10 * 5000 * prof.ntk_jacobian
    p = predict(s, prof)
    assert p.terms["formation"] == pytest.approx((36 * per_tile + jacobians) / 2)
    assert p.bottleneck == "formation"
    # parameter groups of at most 1200 parameters: at least 5 Jacobian passes, the contraction unchanged
    s["kernel"]["params"]["parameter_chunk"] = 1200
    assert predict(s, prof).terms["formation"] == pytest.approx((36 * per_tile + 5 * jacobians) / 2)


def test_uncalibrated_plans_say_how_to_calibrate():
    plan = bigspec.plan_logdet(n=2000, tile_size=500, memory="1GiB")
    assert plan.summary()["predicted_seconds"] is None
    assert "uncalibrated" in repr(plan) and "calibrate" in repr(plan)
    assert "`bigspec calibrate`" in plan.describe("cli") and "--profile h100" in plan.describe("cli")
    h100 = bigspec.plan_logdet(n=2000, tile_size=500, memory="1GiB", profile="h100")
    assert h100.summary()["predicted_seconds"] > 0 and "h100" in h100.summary()["profile"]
    with dask.config.set({"bigspec.profile": "cpu-node"}):   # the config names the default profile
        assert "cpu-node" in bigspec.plan_logdet(n=2000, tile_size=500, memory="1GiB").summary()["profile"]
    with dask.config.set({"bigspec.profile": "h200"}):       # a bad one in the config: a plan, and why no prediction
        bad = bigspec.plan_logdet(n=2000, tile_size=500, memory="1GiB")
        assert bad.summary()["predicted_seconds"] is None and "h200" in repr(bad) and "tasks:" in repr(bad)


@pytest.mark.parametrize("bad,words", [("h200", "h100"), ({"gemm": 1.0}, "potrf"), (3, "name"),
                                       ("calibrated", "calibrate()"), ("nope.yaml", "no such file")])
def test_bad_profiles_are_argument_errors_naming_profile(bad, words):
    with pytest.raises((ArgumentError, TypeError)) as e:
        resolve_profile(bad)
    assert "profile" in str(e.value) and words in str(e.value)
    with pytest.raises((ArgumentError, TypeError), match="profile"):
        bigspec.plan_logdet(n=1000, memory="1GiB", profile=bad)


@pytest.mark.parametrize("key,value", [("gemm", -1.0), ("store_read", math.inf), ("task_overhead", -1e-3),
                                       ("device", "tpu")])
def test_bad_rates_name_their_key(key, value):
    d = PROF.to_dict()
    d[key.replace("_", "-")] = value
    with pytest.raises(ArgumentError, match=key.replace("_", "-") if key != "device" else "device"):
        resolve_profile(d)


@pytest.mark.filterwarnings("ignore:while bigspec calibrated")   # a busy machine: lower rates, still positive
def test_calibrate_stores_positive_rates_that_later_plans_use(tmp_path):
    prof = calibrate(quick=True, kernels=("rbf",), seconds=0.01, tile_size=64)
    path = profile_path()
    assert path == os.path.join(str(tmp_path / "dask"), "bigspec-profile.yaml") and os.path.exists(path)
    with open(path) as f:
        stored = yaml.safe_load(f)["bigspec"]["calibration"]
    for key in ("gemm", "potrf", "sytrf", "trsm", "trsm-ldl", "store-read", "store-write", "task-overhead"):
        assert math.isfinite(stored[key]) and stored[key] > 0, key
    assert len(stored["potrf-blocks"]) == 2 and all(rows > 0 and r > 0 for rows, r in stored["potrf-blocks"])
    assert stored["formation"]["rbf"] > 0 and resolve_profile("calibrated") == prof
    plan = bigspec.plan_logdet(n=2000, tile_size=500, memory="1GiB")
    assert "calibrated" in plan.summary()["profile"] and plan.summary()["predicted_seconds"] > 0
    # nothing of the user's is replaced without overwrite, and the refusal comes before any measurement
    with pytest.raises(StoreExistsError, match="overwrite"):
        calibrate(quick=True)
    with pytest.raises(StoreExistsError):
        save_profile("h100")
    save_profile("h100", overwrite=True)
    assert "h100" in bigspec.plan_logdet(n=2000, tile_size=500, memory="1GiB").summary()["profile"]


def test_calibrate_help_and_logdet_profile_needs_dry_run(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["calibrate", "--help"])
    assert r.exit_code == 0 and "--overwrite" in r.output and "--profile" in r.output
    r = runner.invoke(cli, ["calibrate", "--profile", "h100"])
    assert r.exit_code == 0 and os.path.exists(profile_path())
    r = runner.invoke(cli, ["calibrate", "--profile", "cpu-node"])
    assert r.exit_code == 1 and "--overwrite" in r.output
    np.save(tmp_path / "A.npy", np.eye(4))
    r = runner.invoke(cli, ["logdet", str(tmp_path / "A.npy"), "--profile", "h100"])
    assert r.exit_code == 2 and "--dry-run" in r.output


def test_cli_form_dry_run_writes_nothing(tmp_path):
    X = np.random.default_rng(1).standard_normal((200, 4))
    np.save(tmp_path / "X.npy", X)
    store = tmp_path / "K.zarr"
    r = CliRunner().invoke(cli, ["form", "rbf", str(tmp_path / "X.npy"), str(store), "--tile-size", "64",
                                 "--dry-run", "--profile", "cpu-node", "--workers", "1", "--threads", "1",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "form plan" in r.output and "predicted:" in r.output and "nothing was written" in r.output
    assert not store.exists()


def test_published_profiles_are_valid_and_a_gpu_moves_tiles_to_the_device():
    for prof in PROFILES.values():
        assert resolve_profile(prof.name) is prof and predict(SUMMARY, prof).seconds > 0
    terms = predict(SUMMARY, PROFILES["h100"]).terms
    assert terms["host_device"] == pytest.approx(150_000_000 / PROFILES["h100"].host_device)
    assert "host_device" not in predict(SUMMARY, PROFILES["cpu-node"]).terms


def test_graph_efficiency_scales_compute_store_and_network_not_scheduling():
    summary = {**SUMMARY, "workers": 2, "distributed": True}
    base = predict(summary, PROF)
    slow = predict(summary, msgspec.structs.replace(PROF, graph_efficiency=2.0))
    for term in ("compute", "store_read", "store_write", "network"):
        assert slow.terms[term] == pytest.approx(2 * base.terms[term]), term
    assert slow.terms["scheduling"] == pytest.approx(base.terms["scheduling"])
    # a cluster's own efficiency is used on a cluster, the threaded one elsewhere
    both = msgspec.structs.replace(PROF, graph_efficiency=2.0, graph_efficiency_distributed=3.0)
    assert predict(summary, both).terms["compute"] == pytest.approx(3 * base.terms["compute"])
    assert predict(SUMMARY, both).terms["compute"] == pytest.approx(2 * predict(SUMMARY, PROF).terms["compute"])
    with pytest.raises(ArgumentError, match="graph-efficiency"):
        msgspec.structs.replace(PROF, graph_efficiency=0.0)


@pytest.mark.filterwarnings("ignore:while bigspec calibrated")
def test_calibrate_cluster_measures_the_distributed_scheduler_network_and_efficiency():
    from distributed import Client, LocalCluster

    from bigspec.perfmodel import calibrate_cluster

    prof = calibrate(quick=True, kernels=("rbf",), seconds=0.01, tile_size=64, save=False)
    assert math.isfinite(prof.graph_efficiency) and prof.graph_efficiency > 0
    assert prof.network is None and prof.task_overhead_distributed is None
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client:
        cl = calibrate_cluster(prof, client, quick=True)
    assert cl.network > 0 and cl.task_overhead_distributed > 0 and cl.graph_efficiency_distributed > 0
    assert cl.gemm == prof.gemm and cl.store_read == prof.store_read   # this machine's rates are kept
    assert not os.path.exists(profile_path())                          # save=False wrote nothing


@pytest.mark.filterwarnings("ignore:while bigspec calibrated")
def test_cli_calibrate_says_each_stage_on_stderr(tmp_path):
    r = CliRunner().invoke(cli, ["calibrate", "--quick", "--tile-size", "64", "--workers", "1", "--threads", "1",
                                 "--json"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if line.startswith("calibrating")]
    for stage in ("tile kernels", "store reads and writes", "kernel formation", "small factorization", "the cluster"):
        assert any(stage in line for line in lines), (stage, r.stderr)
    assert "calibrating" not in r.stdout and os.path.exists(profile_path())   # stdout stays the JSON
