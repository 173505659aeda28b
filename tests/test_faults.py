"""Faults, each with the right answer checked and nothing finished computed again.

* a worker process killed in the middle of an exact factorization (cholesky and ldl, out of core)
  and in the middle of a formation: Dask runs the lost tasks again (tasks are pure) and the job
  ends with numpy's answer;
* the process running the job killed (SIGKILL: no cleanup at all) during a formation, between two
  super-panels, and inside a super-panel of an out-of-core factorization: running it again resumes,
  and the store shows that no finished tile or super-panel was computed again (chunk files keep their
  modification times; each super-panel is recorded once).

Already covered elsewhere, not repeated here: a worker killed between super-panels from the command
line (test_runtime.test_a_lost_worker_is_reported_and_the_answer_is_right), a cluster losing all its
workers (test_runtime), a process killed after some polling (test_resume.test_killed_process_resumes),
and interrupts (Ctrl-C) at each point (test_resume, test_runtime).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from distributed import Client, LocalCluster
from test_resume import _budget          # the budget that gives a number of super-panels (tests/test_resume.py)

import bigspec
from bigspec.determinant import exact, tasks
from bigspec.errors import WorkerLostWarning
from bigspec.testing import assert_logdet_close, make_indefinite, make_spd

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# the hooks below run on worker processes, which need not import this test module: send them by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _rbf(data: np.ndarray, lengthscale: float) -> np.ndarray:
    d2 = ((data[:, None, :] - data[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * lengthscale ** 2))


def _chunk_times(array_dir: Path, columns: int | None = None) -> dict[tuple[int, int], int]:
    """Modification time (ns) of each chunk file of a zarr v3 array, by tile; only tile columns < ``columns``."""
    out = {}
    root = array_dir / "c"
    if not root.is_dir():
        return out
    for row in root.iterdir():
        for col in row.iterdir():
            if col.name.isdigit() and (columns is None or int(col.name) < columns):
                out[int(row.name), int(col.name)] = col.stat().st_mtime_ns
    return out


# -- workers killed mid-run: Dask runs their tasks again ---------------------------------------------

@pytest.fixture(scope="module")
def two_workers():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def _die_once(marker: str) -> bool:
    """In a worker: kill this worker process the first time any worker gets here (SIGKILL: no goodbye)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cholesky", "ldl"])
def test_a_worker_killed_inside_a_factorization(tmp_path, monkeypatch, two_workers, method):
    client = two_workers
    client.wait_for_workers(2, timeout=60)
    n, b = 480, 40
    A = make_spd(n, seed=21) if method == "cholesky" else make_indefinite(n, seed=21)
    path = str(tmp_path / "A.zarr")
    bigspec.from_array(A, path, tile_size=b)
    marker = str(tmp_path / "killed")
    real = tasks.write_L
    from_col = n // 2

    def write_L_then_die(L, array, r0, r1, c0, c1, *rest):
        out = real(L, array, r0, r1, c0, c1, *rest)
        if c0 >= from_col:
            _die_once(marker)        # the tile is written, the task never returns: Dask runs it again
        return out

    monkeypatch.setattr(tasks, "write_L", write_L_then_die)
    pids = set(client.run(os.getpid).values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = bigspec.logdet(path, method=method, memory=int(A.nbytes * 0.3), client=client, progress=False)
    assert os.path.exists(marker), "no worker was killed"
    assert int(Path(marker).read_text()) in pids                     # one of the cluster's worker processes
    client.wait_for_workers(2, timeout=60)                           # the nanny started another
    assert set(client.run(os.getpid).values()) != pids
    assert r.super_panels >= 3
    assert_logdet_close(r, A, rtol=1e-10)
    lost = [w for w in caught if issubclass(w.category, WorkerLostWarning)]
    assert len(lost) <= 1     # at most one report (a worker restarted between two looks may go unseen)


@pytest.mark.slow
def test_a_worker_killed_inside_a_formation(tmp_path, two_workers):
    client = two_workers
    client.wait_for_workers(2, timeout=60)
    marker, counts = str(tmp_path / "killed"), tmp_path / "calls"
    counts.mkdir()

    class DiesOnce(bigspec.kernels.RBF):
        """RBF whose sixth tile (counted over all workers) kills the worker computing it."""

        def block(self, x_rows, x_cols, *, diagonal=False):
            out = super().block(x_rows, x_cols, diagonal=diagonal)
            os.close(os.open(os.path.join(str(counts), f"{os.getpid()}-{time.monotonic_ns()}"),
                             os.O_CREAT | os.O_WRONLY))
            if len(os.listdir(str(counts))) >= 6:
                _die_once(marker)
            return out

    X = np.random.default_rng(3).random((500, 3))
    path = str(tmp_path / "K.zarr")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ms = bigspec.form(DiesOnce(lengthscale=0.4), X, path, tile_size=50, client=client, progress=False)
    assert os.path.exists(marker), "no worker was killed"
    assert len([w for w in caught if issubclass(w.category, WorkerLostWarning)]) <= 1
    assert ms.missing_tiles() == [] and ms.attrs["formed_tiles"] == 55
    data = np.asarray(ms.group["data"][:])
    K = _rbf(data, 0.4)
    np.testing.assert_allclose(ms.read(0, 500, 0, 500), K, rtol=1e-12, atol=1e-12)
    client.wait_for_workers(2, timeout=60)
    r = bigspec.logdet(ms, method="cholesky", shift=0.01, client=client, progress=False)
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(K + 0.01 * np.eye(500))[1], rel=1e-11)


# -- the job's own process killed: running it again resumes -----------------------------------------

STALL = textwrap.dedent("""
    # Runs a bigspec verb in this process and stalls for good at a chosen point, after writing MARKER;
    # the test kills the process there with SIGKILL.
    import os, sys, threading, time
    import numpy as np
    import bigspec
    from bigspec.determinant import exact, tasks

    where, marker, path = sys.argv[1], sys.argv[2], sys.argv[3]
    lock, seen = threading.Lock(), []

    def stall(note):
        with lock:
            first = not seen
            seen.append(note)
        if first:
            time.sleep(0.5)                      # tasks already running finish their writes
            with open(marker + ".tmp", "w") as f:
                f.write(str(note))
            os.replace(marker + ".tmp", marker)
        time.sleep(3600)

    if where == "form":
        calls = []

        class Stalls(bigspec.kernels.RBF):
            def block(self, x_rows, x_cols, *, diagonal=False):
                with lock:
                    calls.append(1)
                    k = len(calls)
                if k > 7 or seen:                # from the eighth tile on, every task stalls
                    stall(k)
                return super().block(x_rows, x_cols, diagonal=diagonal)

        X = np.random.default_rng(5).random((600, 3))
        bigspec.form(Stalls(lengthscale=0.4), X, path, tile_size=100, progress=False)
    else:
        method, budget, stop_after = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        done, real = [], tasks.write_L

        def after_panel(k0, k1):
            done.append(k1)
            if where == "between" and len(done) == stop_after:
                stall(k1)                        # panel saved, the next one not started

        def write_L(L, array, r0, r1, c0, c1, *rest):
            out = real(L, array, r0, r1, c0, c1, *rest)
            if where == "inside" and len(done) >= stop_after:
                stall(c0)                        # the next panel's first L tiles written, the panel unsaved
            return out

        exact._after_panel = after_panel
        tasks.write_L = write_L
        bigspec.logdet(path, method=method, memory=budget, checkpoint=True, progress=False)
    raise SystemExit("finished without stalling")
""")


def _kill_at(where: str, path: str, tmp_path: Path, *args, snapshot=None):
    """Run STALL, wait for it to stall at ``where``, take ``snapshot()``, SIGKILL it; return the snapshot."""
    marker = tmp_path / f"stalled-{where}"
    p = subprocess.Popen([sys.executable, "-c", STALL, where, str(marker), path, *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not marker.exists():
            if p.poll() is not None:
                raise AssertionError(f"the job ended before it stalled: {p.communicate()}")
            assert time.monotonic() - t0 < 120, "the job did not reach the point to kill it at"
            time.sleep(0.02)
        state = snapshot() if snapshot else None
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL
    return state


@pytest.mark.slow
def test_killed_during_formation_resumes_without_forming_a_tile_twice(tmp_path):
    path = str(tmp_path / "K.zarr")
    matrix_dir = Path(path) / "matrix"
    before = _kill_at("form", path, tmp_path, snapshot=lambda: _chunk_times(matrix_dir))
    ms = bigspec.open_matrix(path)
    total = sum(1 for _ in ms.stored_tiles())
    assert 0 < len(before) < total and set(before) == ms.written_tiles()
    assert ms.missing_tiles()                                  # unfinished, and the store says so

    X = np.random.default_rng(5).random((600, 3))
    ms = bigspec.form("rbf", X, path, tile_size=100, lengthscale=0.4, progress=False)
    assert ms.attrs["formed_tiles"] == total - len(before)     # only the missing tiles were formed
    after = _chunk_times(matrix_dir)
    assert {t: after[t] for t in before} == before             # and no finished tile was written again
    assert ms.missing_tiles() == []
    K = _rbf(np.asarray(ms.group["data"][:]), 0.4)
    np.testing.assert_allclose(ms.read(0, 600, 0, 600), K, rtol=1e-12, atol=1e-12)
    r = bigspec.logdet(ms, method="cholesky", shift=0.01, progress=False)
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(K + 0.01 * np.eye(600))[1], rel=1e-11)


def _factor_state(path: str):
    ms = bigspec.open_matrix(path)
    meta = dict(ms.group["factor"].attrs["bigspec_factor"])
    return meta, _chunk_times(Path(path) / "factor" / "L")


@pytest.mark.slow
@pytest.mark.parametrize("where, method", [("between", "cholesky"), ("inside", "ldl")])
def test_killed_during_an_out_of_core_factorization_resumes(tmp_path, where, method):
    n, b = 480, 40
    A = make_spd(n, seed=22, cond=1e3) if method == "cholesky" else make_indefinite(n, seed=22)
    path = str(tmp_path / "A.zarr")
    bigspec.from_array(A, path, tile_size=b)
    budget = _budget(n, b, 5)
    assert budget < A.nbytes                                   # the matrix does not fit: out of core
    meta, L_times = _kill_at(where, path, tmp_path, method, budget, 2, snapshot=lambda: _factor_state(path))
    done_cols, done_panels = int(meta["columns_done"]), int(meta["panels_done"])
    assert done_panels == 2 and 0 < done_cols < n // b and not meta["complete"]
    finished = {t: m for t, m in L_times.items() if t[1] < done_cols}
    assert finished and all(j < done_cols or where == "inside" for _, j in L_times)
    if where == "inside":                                      # killed with part of the next panel written
        assert any(j >= done_cols for _, j in L_times)

    r = bigspec.logdet(path, method=method, memory=budget, checkpoint=True, progress=False)
    assert_logdet_close(r, A, rtol=1e-10)
    assert r.panels_computed == r.super_panels - done_panels   # the finished super-panels were not redone
    meta, after = _factor_state(path)
    assert meta["complete"] and int(meta["panels_done"]) == r.super_panels    # each panel recorded once
    assert {t: after[t] for t in finished} == finished         # their L tiles were not written again
    for m in range(b, n + 1, 3 * b):                           # prefixes span the runs before and after
        assert r.prefix_logdet[m - 1] == pytest.approx(np.linalg.slogdet(A[:m, :m])[1], rel=1e-9, abs=1e-9)
