"""The same factorization on distributed workers: in-process (gen_cluster) and multi-process."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.utils_test import gen_cluster

import bigspec
from bigspec.testing import assert_logdet_close, make_indefinite, make_spd


# written before gen_cluster starts its thread-leak check (zarr keeps an I/O thread)
GEN_A = make_indefinite(150, seed=4)
GEN_STORE = bigspec.from_array(GEN_A, "memory://gen-cluster.zarr", tile_size=20, overwrite=True)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], clean_kwargs={"threads": False})
async def test_gen_cluster_two_workers(c, s, a, b):
    A, ms = GEN_A, GEN_STORE

    def run():
        # a cluster's plan counts the copy of a row block each update task makes: 45% is out of core
        with Client(s.address) as client:
            return bigspec.logdet(ms, memory=int(A.nbytes * 0.45), client=client, progress=False)

    with ThreadPoolExecutor(1) as pool:
        r = await asyncio.get_running_loop().run_in_executor(pool, run)
    assert r.super_panels >= 2
    assert_logdet_close(r, A, rtol=1e-10)
    # both workers did factorization work
    assert all(w.state.executed_count > 0 for w in (a, b))


@pytest.mark.slow
def test_multiprocess_local_cluster(tmp_path):
    A = make_spd(600, seed=5)
    path = str(tmp_path / "A.zarr")
    bigspec.from_array(A, path, tile_size=64)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = set(client.run(lambda: __import__("os").getpid()).values())
        assert len(pids) == 2
        # the current client is picked up without passing it
        r = bigspec.logdet(path, method="cholesky", memory=int(A.nbytes * 0.3))
        r_in = bigspec.logdet(A, method="ldl", tile_size=64)  # a numpy input goes through a temp store
    assert r.super_panels >= 2
    assert_logdet_close(r, A, rtol=1e-11)
    assert_logdet_close(r_in, A, rtol=1e-11)


def test_results_do_not_depend_on_workers_or_budget(tmp_path):
    A = make_spd(200, seed=6)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=25)
    r1 = bigspec.logdet(ms, method="cholesky", checkpoint=False)
    r2 = bigspec.logdet(ms, method="cholesky", memory=int(A.nbytes * 0.25), checkpoint=False)
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        r3 = bigspec.logdet(ms, method="cholesky", client=client, checkpoint=False)
    assert r2.super_panels > 1
    np.testing.assert_allclose([r1.logabsdet, r2.logabsdet, r3.logabsdet], np.linalg.slogdet(A)[1], rtol=1e-12)


def test_a_cluster_whose_workers_are_still_joining_is_waited_for(monkeypatch):
    """No worker yet: resources() waits up to JOIN_WAIT for one to join, then refuses clearly."""
    import bigspec.cluster as cluster

    monkeypatch.setattr(cluster, "JOIN_WAIT", 1.0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc, Client(lc) as client:
        with pytest.raises(bigspec.ClusterError, match=r"has no workers \(none joined within 1 s\)"):
            cluster.resources(client)
        monkeypatch.setattr(cluster, "JOIN_WAIT", 60.0)
        lc.scale(1)                                 # joins asynchronously: resources() waits for it
        workers, threads, _ = cluster.resources(client)
        assert workers == 1 and threads >= 1


def test_workers_memory_on_this_machine_is_capped_at_its_ram(monkeypatch):
    # distributed's memory_limit="auto" gives each of 8 one-thread workers on 2 cores half the RAM
    import psutil

    from bigspec import cluster

    ram = psutil.virtual_memory().total
    local = {f"tcp://127.0.0.1:{4000 + i}": {"nthreads": 1, "memory_limit": ram // 2, "host": "127.0.0.1"}
             for i in range(8)}
    remote = {"tcp://10.9.8.7:5000": {"nthreads": 4, "memory_limit": 64 * 2**30, "host": "10.9.8.7"}}
    monkeypatch.setattr(cluster, "workers_info", lambda client: local)
    assert cluster.resources(object()) == (8, 8, ram)
    monkeypatch.setattr(cluster, "workers_info", lambda client: {**local, **remote})
    assert cluster.resources(object()) == (9, 12, ram + 64 * 2**30)       # other machines' limits are theirs
    few = dict(list(local.items())[:1])
    monkeypatch.setattr(cluster, "workers_info", lambda client: few)
    assert cluster.resources(object()) == (1, 1, ram // 2)                # under the RAM: unchanged
