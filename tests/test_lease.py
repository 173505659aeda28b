"""The store lease: one writer at a time, refused with the holder named, expired when the holder is gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bigspec.errors import LeaseWarning, StoreLeaseError, StoreNotWritableError
from bigspec.lease import acquire, hold, pid_alive, read_lease


def plant(store, pid, host=None, refreshed=None, ttl=120.0, token="theirs", command="bigspec run other.yaml"):
    """A lease file as another writer would have left it."""
    now = time.time()
    lease = {"host": host or socket.gethostname(), "pid": pid, "started": now - 60,
             "refreshed": now if refreshed is None else refreshed, "ttl": ttl, "token": token, "command": command}
    with open(f"{store}.lease", "w") as f:
        json.dump(lease, f)


@pytest.fixture
def live_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


@pytest.fixture
def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid)
    return p.pid


def test_second_writer_is_refused_with_the_holder_named(tmp_path, live_pid):
    store = str(tmp_path / "K.zarr")
    plant(store, live_pid)
    with pytest.raises(StoreLeaseError) as e:
        acquire(store)
    said = str(e.value)
    assert f"pid {live_pid}" in said and socket.gethostname() in said and "bigspec run other.yaml" in said
    assert "force=True" in said and e.value.cli_message().count("--force") == 1
    assert read_lease(store).pid == live_pid                   # untouched


def test_lease_held_in_this_process_refuses_another_acquire(tmp_path):
    store = str(tmp_path / "K.zarr")
    with hold(store) as lease:
        with pytest.raises(StoreLeaseError, match=f"pid {os.getpid()}"):
            acquire(store)
        assert read_lease(store).token == lease.holder.token
    assert read_lease(store) is None


def test_lease_of_a_dead_process_is_taken_over(tmp_path, dead_pid):
    store = str(tmp_path / "K.zarr")
    plant(store, dead_pid)
    with pytest.warns(LeaseWarning, match=f"process {dead_pid} .* is gone"):
        lease = acquire(store)
    try:
        assert lease.taken_from.pid == dead_pid and read_lease(store).pid == os.getpid()
    finally:
        lease.release()
    assert read_lease(store) is None


def test_lease_not_refreshed_within_its_ttl_expires(tmp_path, live_pid):
    store = str(tmp_path / "K.zarr")
    plant(store, live_pid, host="elsewhere", refreshed=time.time() - 1000, ttl=60)
    with pytest.warns(LeaseWarning, match="not refreshed for"):
        with hold(store) as lease:
            assert lease.taken_from.host == "elsewhere"


def test_force_takes_over_a_live_lease_and_says_so(tmp_path, live_pid):
    store = str(tmp_path / "K.zarr")
    plant(store, live_pid)
    with pytest.warns(LeaseWarning, match=f"pid {live_pid}.*forced"):
        lease = acquire(store, force=True)
    assert read_lease(store).token == lease.holder.token
    # the displaced holder's release (by token) leaves the new lease alone
    plant_token = "theirs"
    from bigspec.lease import _Place

    assert _Place(store).remove_if(plant_token) is False
    assert read_lease(store).token == lease.holder.token
    lease.release()


def test_holder_refreshes_and_notices_a_takeover(tmp_path):
    store = str(tmp_path / "K.zarr")
    lease = acquire(store, ttl=0.3)
    try:
        first = read_lease(store).refreshed
        time.sleep(0.5)
        assert read_lease(store).refreshed > first                # refreshed by its thread
        plant(store, os.getpid() + 10**6, host="elsewhere", token="new")   # someone forced it away
        assert lease.refresh() is False and lease.lost.token == "new"
    finally:
        lease.release()
    assert read_lease(store).token == "new"                       # not ours to remove


def test_hold_is_reentrant_and_works_on_fsspec_urls(tmp_path):
    store = "memory://lease-test/K.zarr"
    with hold(store) as outer:
        with hold(store) as inner:
            assert inner is outer
        assert read_lease(store).pid == os.getpid()
        with pytest.raises(StoreLeaseError):
            acquire(store)
    assert read_lease(store) is None


def test_unwritable_location(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreNotWritableError, match="cannot write the store"):
        acquire(str(tmp_path / "afile" / "K.zarr"))


def test_the_writing_verbs_take_the_lease(tmp_path, live_pid):
    """bigspec.form (and the exact logdet, which writes the factor) refuse a store a live job holds; their
    message says how the lease ends (they take no force=); nothing is written."""
    import numpy as np

    import bigspec

    store = str(tmp_path / "K.zarr")
    plant(store, live_pid)
    X = np.random.default_rng(0).uniform(size=(60, 2))
    with pytest.raises(StoreLeaseError, match=r"its lease ends with its process, or 120 s after its last refresh, "
                                              r"or `bigspec run --force` takes it over") as e:
        bigspec.form("rbf", X, store, tile_size=20, progress=False)
    assert "force=True" not in str(e.value) and not os.path.exists(store)
    os.remove(f"{store}.lease")
    ms = bigspec.form("rbf", X, store, tile_size=20, progress=False)         # free: formed, lease given back
    assert read_lease(store) is None and ms.n == 60


def test_the_exact_logdet_takes_the_lease_and_never_returns_nan(tmp_path, live_pid, monkeypatch):
    """The exact logdet writes the factor into the store: a live job's store is refused; and pivots that are
    not numbers (two writers once, damaged tiles) are an error, never a NaN result."""
    import numpy as np

    import bigspec
    from bigspec.determinant import exact

    X = np.random.default_rng(0).uniform(size=(60, 2))
    store = str(tmp_path / "K.zarr")
    bigspec.form("rbf", X, store, tile_size=20, progress=False)
    plant(store, live_pid)
    with pytest.raises(StoreLeaseError, match=r"being written by another job: .* its lease ends with its process"):
        bigspec.logdet(store, method="cholesky", shift=1e-2, checkpoint=True, progress=False)
    assert "factor" not in bigspec.open_matrix(store, mode="r").group
    os.remove(f"{store}.lease")
    real = exact._run

    def nan_pivots(*args, **kwargs):
        run = real(*args, **kwargs)
        return {**run, "log_d": np.where(np.arange(run["log_d"].size) == 7, np.nan, run["log_d"])}

    monkeypatch.setattr(exact, "_run", nan_pivots)
    with pytest.raises(bigspec.CorruptFactorError, match=r"log\|det\| = nan: pivots that are not numbers"):
        bigspec.logdet(store, method="cholesky", shift=1e-2, progress=False)
    monkeypatch.setattr(exact, "_run", real)
    r = bigspec.logdet(store, method="cholesky", shift=1e-2, progress=False, overwrite=True)
    K = bigspec.open_matrix(store, mode="r").read(0, 60, 0, 60)
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(K + 1e-2 * np.eye(60))[1], rel=1e-12)
    assert read_lease(store) is None
