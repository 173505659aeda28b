"""How bigspec behaves around its answers: clients, interrupts, dead clusters, lost workers, temp files.

The interrupt and cluster tests run the real command line in a subprocess and send it real
signals (SIGINT to its whole process group, as a terminal's Ctrl-C does; SIGKILL to workers).
"""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
from distributed import Client, LocalCluster

import bigspec
from bigspec.errors import ClusterError, Interrupted, StoreNotFoundError, WorkerLostWarning
from bigspec.testing import make_spd

ENV = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s", "PYTHONUNBUFFERED": "1"}

# Runs `bigspec ARGS` in this process with a hook after each finished super-panel: it writes the
# number of panels done to MARKER (and, with KILL=1, kills one worker process 0.2 s later).
HOOKED_CLI = textwrap.dedent("""
    import os, pathlib, signal, sys, threading, time
    import bigspec.determinant.exact as exact
    marker, kill = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
    panels = []

    def hook(k0, k1):
        panels.append(k1)
        if kill and len(panels) == 1:
            from distributed import get_client
            pids = get_client().run(os.getpid)
            victim = sorted(pids)[0]
            def later():
                time.sleep(0.2)
                os.kill(pids[victim], signal.SIGKILL)
            threading.Thread(target=later, daemon=True).start()
        marker.write_text(str(len(panels)))

    exact._after_panel = hook
    from bigspec.cli import main
    main(sys.argv[3:])
""")


def _store(tmp_path, n=3000, b=250, seed=1):
    A = make_spd(n, seed=seed)
    path = str(tmp_path / "K.zarr")
    bigspec.from_array(A, path, tile_size=b)
    return A, path


def _hooked(tmp_path, args, kill=False):
    marker = tmp_path / "panels"
    p = subprocess.Popen([sys.executable, "-c", HOOKED_CLI, str(marker), "1" if kill else "0", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    return p, marker


def _wait_for(marker, p, at_least=1, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if marker.exists() and marker.read_text() and int(marker.read_text()) >= at_least:
            return
        if p.poll() is not None:
            raise AssertionError(f"the command ended early: {p.communicate()}")
        time.sleep(0.01)
    raise AssertionError("no super-panel finished in time")


# -- 1. hangs: every wait is bounded -----------------------------------------------------------

def test_missing_or_bad_scheduler_file_exits_3_at_once(tmp_path):
    _, path = _store(tmp_path, n=100, b=50)
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a scheduler file"}')
    for flag, file, words in [("--scheduler-file", "/no/such.json", "no scheduler file at /no/such.json"),
                              ("--scheduler-file", str(bad), "is not a Dask scheduler file"),
                              ("--scheduler", "tcp://127.0.0.1:1", "nothing listens at tcp://127.0.0.1:1")]:
        t0 = time.monotonic()
        r = subprocess.run(["bigspec", "logdet", path, flag, file], capture_output=True, text=True,
                           env=ENV, timeout=60)
        assert r.returncode == 3 and words in r.stderr and "Traceback" not in r.stderr
        assert time.monotonic() - t0 < 20            # no connect timeout (3 s here) waited out either


def test_a_scheduler_that_never_answers_exits_3_within_the_timeout(tmp_path):
    _, path = _store(tmp_path, n=100, b=50)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    accepted = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()) for _ in range(20)], daemon=True).start()
    t0 = time.monotonic()
    r = subprocess.run(["bigspec", "logdet", path, "--scheduler", f"tcp://127.0.0.1:{silent.getsockname()[1]}"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "did not answer within 3 s" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 30                  # 3 s connect timeout + start-up, never a silent wait
    silent.close()


@pytest.fixture
def scheduler(tmp_path):
    """A real `dask scheduler` and one `dask worker` (no nanny: killing it leaves no worker), as processes."""
    file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(["dask", "scheduler", "--scheduler-file", str(file), "--port", "0",
                               "--dashboard-address", ":0", "--no-show"], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    t0 = time.monotonic()
    while not (file.exists() and file.read_text()):
        assert time.monotonic() - t0 < 60, "the scheduler did not start"
        time.sleep(0.1)
    procs.append(subprocess.Popen(["dask", "worker", "--scheduler-file", str(file), "--no-nanny", "--nthreads", "2",
                                   "--no-dashboard"], env=ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True))
    with Client(scheduler_file=str(file), timeout=30) as c:
        c.wait_for_workers(1, timeout=60)
    yield str(file), procs[1]
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.mark.slow
def test_a_cluster_whose_workers_all_died_exits_3(tmp_path, scheduler):
    file, worker = scheduler
    A, path = _store(tmp_path, n=2000, b=200)
    p, marker = _hooked(tmp_path, ["logdet", path, "--scheduler-file", file, "--memory", "10MB", "--no-progress"])
    _wait_for(marker, p)
    os.killpg(worker.pid, signal.SIGKILL)              # the only worker dies mid-run; none comes back
    t0 = time.monotonic()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, err
    assert "every worker of the Dask cluster" in err and "within 3 s" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_user_errors_exit_1_under_a_remote_scheduler(tmp_path, scheduler):
    file, _ = scheduler
    A, path = _store(tmp_path, n=200, b=50)
    bigspec.logdet(path, checkpoint=True)                                       # a factor with shift 0
    r = subprocess.run(["bigspec", "logdet", path, "--scheduler-file", file, "--shift", "1", "--checkpoint",
                        "--no-progress"], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "other settings" in r.stderr and "shift=1.0 now" in r.stderr and "--overwrite" in r.stderr
    assert "cannot reach" not in r.stderr
    r = subprocess.run(["bigspec", "logdet", path, "--scheduler-file", file, "--shift", "1", "--no-checkpoint",
                        "--json", "--no-progress"], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["logabsdet"] == pytest.approx(np.linalg.slogdet(A + np.eye(200))[1], rel=1e-12)


# -- 2. Ctrl-C ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_prints_one_line_keeps_the_store_and_resumes(tmp_path):
    A, path = _store(tmp_path)
    p, marker = _hooked(tmp_path, ["logdet", path, "--memory", "16MB", "--workers", "2", "--threads", "1",
                                   "--no-progress"])
    _wait_for(marker, p, at_least=2)
    os.killpg(p.pid, signal.SIGINT)                    # what a terminal's Ctrl-C does: the whole group
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) <= 2, err     # the dashboard line, then one line
    said = lines[-1]
    assert said.startswith("interrupted: factored ") and "run the same command again to resume from column" in said
    done = int(said.split("factored ")[1].split(" of ")[0])
    assert 0 < done < 3000 and done % 250 == 0
    # the store is consistent: its factor says what the line said, and a rerun resumes from there
    import zarr

    meta = zarr.open_group(path + "/factor", mode="r").attrs["bigspec_factor"]
    assert meta["columns_done"] * 250 == done and not meta["complete"]
    r = subprocess.run(["bigspec", "logdet", path, "--memory", "16MB", "--workers", "1", "--json",
                        "--no-progress"], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["logabsdet"] == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    assert res["panels_computed"] < res["super_panels"]


@pytest.mark.slow
def test_ctrl_c_while_the_cluster_starts_and_twice_in_a_row(tmp_path):
    """A Ctrl-C pressed while the local cluster starts is acted on once it has started (the cluster is
    closed, nothing runs); two in quick succession end in the same one line and exit 130, not a hang."""
    A, path = _store(tmp_path)
    p = subprocess.Popen(["bigspec", "logdet", path, "--memory", "16MB", "--workers", "2", "--threads", "1",
                          "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         start_new_session=True)
    time.sleep(0.8)                                   # importing, or starting the cluster
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "logabsdet" not in out and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted")
    p, marker = _hooked(tmp_path, ["logdet", path, "--memory", "16MB", "--workers", "2", "--threads", "1",
                                   "--no-progress"])
    _wait_for(marker, p)
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "interrupted: factored " in err and "resume from column" in err


def test_dask_cli_plugin_has_the_same_exit_codes_and_messages(tmp_path):
    _, path = _store(tmp_path, n=100, b=50)
    for args, code, words in [(["--tile-size", "0"], 1, "--tile-size must be a positive integer"),
                              (["--scheduler-file", "/no/such.json"], 3, "no scheduler file")]:
        r = subprocess.run(["dask", "bigspec", "logdet", path, *args], capture_output=True, text=True, env=ENV,
                           timeout=60)
        assert r.returncode == code and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_interrupted_form_keeps_its_tiles_and_resumes(tmp_path):
    X = np.random.default_rng(0).random((600, 3))
    path = str(tmp_path / "k.zarr")
    seen = []

    class Slow(bigspec.kernels.RBF):
        def block(self, x_rows, x_cols, *, diagonal=False):
            seen.append(1)
            if len(seen) == 5:       # the fifth tile: interrupt the main thread, as Ctrl-C would
                import _thread

                _thread.interrupt_main()
            time.sleep(0.02)
            return super().block(x_rows, x_cols, diagonal=diagonal)

    with pytest.raises(Interrupted, match=r"formed at least \d+ of 21 tiles of .*which are kept; call it again") as e:
        bigspec.form(Slow(lengthscale=0.5), X, path, tile_size=100, progress=False)
    assert isinstance(e.value, KeyboardInterrupt)                    # except Exception does not swallow it
    # a task the threaded scheduler had started finishes its tile after the interrupt ("at least"):
    # count once the writes have settled (under load one landed after an immediate count)
    written, settled = -1, time.monotonic()
    while time.monotonic() - settled < 0.5:
        now = len(bigspec.open_matrix(path).written_tiles())
        if now != written:
            written, settled = now, time.monotonic()
        time.sleep(0.05)
    assert 0 < written < 21
    ms = bigspec.form(bigspec.kernels.RBF(lengthscale=0.5), X, path, tile_size=100, progress=False)
    assert ms.attrs["formed_tiles"] == 21 - written                 # only the missing tiles were formed
    perm = np.asarray(ms.group["permutation"][:])
    Xp = X[perm]
    K = np.exp(-0.5 * ((Xp[:, None] - Xp[None]) ** 2).sum(-1) / 0.25)
    np.testing.assert_allclose(ms.read(0, 600, 0, 600), K, rtol=1e-12, atol=1e-14)


def test_interrupt_removes_the_temporary_copies(tmp_path, monkeypatch):
    """A numpy matrix under a client is copied to a temp store; an error or Ctrl-C removes every copy."""
    from bigspec.determinant import exact

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    A = make_spd(400, seed=3)

    def ours():   # what bigspec left in the temporary directory (Dask keeps its own scratch space there)
        return [p.name for p in tmp.iterdir() if p.name.startswith("bigspec-")]

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        bad = A.copy()
        bad[3, 5] = bad[5, 3] = np.nan
        with pytest.raises(bigspec.NonFiniteError, match="row 3, col 5|row 5, col 3"):
            bigspec.logdet(bad, client=c, tile_size=100)
        assert ours() == []                   # validated before anything was copied

        def stop(k0, k1):
            raise KeyboardInterrupt

        monkeypatch.setattr(exact, "_after_panel", stop)
        with pytest.raises(Interrupted, match="nothing is kept"):
            bigspec.logdet(A, client=c, tile_size=50, memory=int(A.nbytes * 0.4), progress=False)
        assert ours() == []                   # the matrix copy and the spilled factor are gone
        monkeypatch.setattr(exact, "_after_panel", lambda k0, k1: None)
        with pytest.raises(bigspec.NotPositiveDefiniteError):
            bigspec.logdet(-A, client=c, tile_size=100, method="cholesky")
        assert ours() == []
        r = bigspec.logdet(A, client=c, tile_size=50, memory=int(A.nbytes * 0.4))
        assert r.logabsdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
        assert ours() == []


# -- 3. a worker dying mid-run ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_lost_worker_is_reported_and_the_answer_is_right(tmp_path):
    A, path = _store(tmp_path, n=3000, b=250)
    p, marker = _hooked(tmp_path, ["logdet", path, "--memory", "16MB", "--workers", "2", "--threads", "1",
                                   "--json", "--no-progress"], kill=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    lost = [ln for ln in err.splitlines() if "left the cluster during the run" in ln]
    assert len(lost) == 1 and lost[0].startswith("warning: worker tcp://127.0.0.1:"), err
    assert re.search(r"Dask runs \d+ of this run's tasks again|it held none of this run's unfinished work", lost[0])
    assert json.loads(out)["logabsdet"] == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)


def test_lost_worker_warning_in_python(tmp_path):
    A = make_spd(1200, seed=2)
    path = str(tmp_path / "K.zarr")
    bigspec.from_array(A, path, tile_size=100)
    from bigspec.determinant import exact

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        killed = []

        def kill_one(k0, k1):
            if not killed:
                pids = client.run(os.getpid)
                address = sorted(pids)[0]
                killed.append(address)
                os.kill(pids[address], signal.SIGKILL)
                time.sleep(1.5)        # the scheduler notices; the next panel's watch reports it

        orig, exact._after_panel = exact._after_panel, kill_one
        try:
            with pytest.warns(WorkerLostWarning, match="left the cluster during the run") as w:
                r = bigspec.logdet(path, client=client, memory=int(A.nbytes * 0.3), progress=False)
        finally:
            exact._after_panel = orig
    assert any(killed[0] in str(x.message) for x in w)
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)


# -- 4. one client, one runner ------------------------------------------------------------------

def test_every_verb_runs_on_a_client_that_is_not_the_default(tmp_path):
    import dask.array as da

    A = make_spd(300, seed=4)
    X = np.random.default_rng(1).random((300, 2))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        c = Client(cluster, set_as_default=False)
        assert bigspec.cluster.current_client() is not c
        worker = next(iter(cluster.workers.values()))
        before = worker.state.executed_count if hasattr(worker, "state") else 0
        ms = bigspec.from_array(da.from_array(A, chunks=100), str(tmp_path / "A.zarr"), tile_size=60, client=c)
        r = bigspec.logdet(ms, client=c, memory=int(A.nbytes * 0.6), progress=True)
        K = bigspec.form("rbf", X, str(tmp_path / "k.zarr"), tile_size=64, client=c, progress=True, lengthscale=0.5)
        s = bigspec.spectrum(ms, sample_size=100, n_samples=2, client=c, progress=True)
        assert worker.state.executed_count > before + 20          # the work ran on c's worker
        c.close()
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    assert K.attrs["complete"] and s.size == 300


def test_connect_is_a_client_as_a_call_and_as_a_context(tmp_path):
    A = make_spd(200, seed=5)
    client = bigspec.connect(workers=1, threads=1, processes=False, dashboard=False)
    try:
        from distributed import Client as DClient

        assert isinstance(client, DClient) and client.status == "running"
        r = bigspec.logdet(A, client=client, tile_size=50)
        assert r.logabsdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
        cluster = client.cluster
    finally:
        client.close()
    assert cluster.status.name == "closed"                 # closing the client closed the cluster it started
    with bigspec.connect(workers=1, threads=1, processes=False, dashboard=False) as c2:
        assert bigspec.cluster.resolve_client(c2) is c2
    assert c2.status == "closed"
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        bigspec.logdet(A, client="tcp://127.0.0.1:8786")
    with pytest.raises(ClusterError, match="closed"):
        bigspec.logdet(A, client=c2)


def test_connect_and_logdet_leave_logging_and_malloc_as_they_were(monkeypatch):
    """connect() does not change the distributed logger for the rest of the process; an out-of-core
    logdet memory-maps blocks from 1 MiB up only while it runs (its budget needs it: see
    bench/release_memory.py), in the process that runs its tasks, then sets glibc's adaptive ceiling."""
    import dask

    from bigspec import backend

    log = logging.getLogger("distributed")
    levels = (log.level, [h.level for h in log.handlers])
    with bigspec.connect(workers=1, threads=1, processes=False, dashboard=False):
        pass
    assert (log.level, [h.level for h in log.handlers]) == levels

    calls = []
    real = backend.set_mmap_threshold
    monkeypatch.setattr(backend, "set_mmap_threshold", lambda nbytes: calls.append(nbytes) or real(nbytes))
    A = make_spd(600, seed=1)
    bigspec.logdet(A, tile_size=100, memory=int(A.nbytes * 0.3), progress=False)         # out of core
    assert calls == [1 << 20, backend.ADAPTIVE_CEILING]
    calls.clear()
    bigspec.logdet(A, tile_size=100, progress=False)                                     # in memory
    with dask.config.set({"bigspec.mmap-threshold": None}):
        r = bigspec.logdet(A, tile_size=100, memory=int(A.nbytes * 0.3), progress=False)
    assert calls == [] and r.super_panels > 1
    monkeypatch.setattr(backend, "set_mmap_threshold", real)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        run = c.run
        c.run = lambda fn, *args, **kw: calls.append((fn.__name__, *args)) or run(fn, *args, **kw)
        bigspec.logdet(A, tile_size=100, memory=int(A.nbytes * 0.5), client=c, progress=False)
    mine = [x for x in calls if x[0] == "set_mmap_threshold"]
    assert mine == [("set_mmap_threshold", 1 << 20), ("set_mmap_threshold", backend.ADAPTIVE_CEILING)]


def test_workers_must_see_a_local_store():
    class FakeClient:   # two workers, one of which does not mount the path
        def run(self, fn, path):
            return {"tcp://10.0.0.1:1": True, "tcp://10.0.0.2:1": False}

    with pytest.raises(StoreNotFoundError, match=r"1 of 2 Dask workers \(tcp://10.0.0.2:1\) do not see"):
        bigspec.cluster.require_visible(FakeClient(), "/data/K.zarr", "the store /data/K.zarr", "use shared storage")
    bigspec.cluster.require_visible(None, "/data/K.zarr", "x", "y")            # no cluster: nothing to check


# -- 12. output that reads well ---------------------------------------------------------------------

def test_progress_counts_the_store_tiles_and_says_where_a_resume_started(tmp_path, capsys):
    from bigspec.determinant import exact

    A = make_spd(800, seed=6)
    path = str(tmp_path / "K.zarr")
    bigspec.from_array(A, path, tile_size=50)                       # 16 x 16 tiles: 136 lower tiles
    capsys.readouterr()

    def stop(k0, k1):
        if k1 >= 6:
            raise KeyboardInterrupt

    orig, exact._after_panel = exact._after_panel, stop
    try:
        with pytest.raises(Interrupted):
            bigspec.logdet(path, memory=int(A.nbytes * 0.3), progress=True)
    finally:
        exact._after_panel = orig
    capsys.readouterr()
    r = bigspec.logdet(path, memory=int(A.nbytes * 0.3), progress=True)
    frames = capsys.readouterr().err.split("\r")[1:]
    done = int(frames[-1].split("(resumed at column ")[1].split(")")[0])
    assert "136/136 tiles" in frames[-1] and done >= 300 and done % 50 == 0
    first = int(frames[0].split("/136 tiles")[0].split()[-1])
    assert first == sum(16 - k for k in range(done // 50))        # it starts where the first run stopped
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    bigspec.logdet(path, memory=int(A.nbytes * 0.3), progress=True, overwrite=True, method="cholesky")
    assert "136/136 tiles" in capsys.readouterr().err.split("\r")[-1]


def test_kron_factor_is_shown(tmp_path):
    X = np.random.default_rng(0).random((120, 3))
    K = bigspec.form("relu", X, str(tmp_path / "k.zarr"), depth=2, n_outputs=10, tile_size=40)
    r = bigspec.logdet(K)
    Kn = K.read(0, 120, 0, 120)
    assert r.logabsdet == pytest.approx(10 * np.linalg.slogdet(Kn)[1], rel=1e-12)
    assert "kron_outputs=10" in repr(r) and "K (x) I_10 (1200 x 1200; K is 120 x 120" in repr(r)
    assert "K (x) I_10" in r._repr_html_()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["n"] == 120 and d["kron_outputs"] == 10 and d["matrix_rows"] == 1200
    assert "kron_outputs" not in repr(bigspec.logdet(Kn))


def test_verbs_and_packages_do_not_shadow_each_other():
    import importlib

    m = importlib.import_module("bigspec.spectra")
    assert m.__name__ == "bigspec.spectra" and callable(bigspec.spectrum) and callable(bigspec.logdet)
    import bigspec.determinant as d
    import bigspec.spectra.laws as laws

    assert d.__name__ == "bigspec.determinant" and laws.MarchenkoPastur
    r = subprocess.run([sys.executable, "-c", "import bigspec.spectra as m; import bigspec.determinant as d; "
                        "print(type(m).__name__, type(d).__name__)"], capture_output=True, text=True)
    assert r.stdout.split() == ["module", "module"]
