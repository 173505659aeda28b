"""A killed factorization resumes from the last finished super-panel without redoing it."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bigspec
from bigspec.determinant import exact, tasks
from bigspec.determinant.exact import local_threads
from bigspec.determinant.plan import make_plan
from bigspec.testing import assert_logdet_close, make_spd


class Killed(Exception):
    pass


def _budget(n, b, panels):
    threads = local_threads(os.cpu_count() or 1)[0]
    for budget in np.linspace(n * n * 8, n * b * 8, 400).astype(int):
        try:
            if make_plan(n, b, 8, "cholesky", budget, threads).n_panels >= panels:
                return int(budget)
        except bigspec.MemoryBudgetError:
            break
    raise AssertionError("no budget gives that many panels")


@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_after_interrupt_skips_finished_panels(tmp_path, monkeypatch, stop_after):
    n, b = 240, 20
    A = make_spd(n, seed=1)
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    budget = _budget(n, b, 6)
    done = []

    def interrupt(k0, k1):
        done.append((k0, k1))
        if len(done) == stop_after:
            raise Killed

    monkeypatch.setattr(exact, "_after_panel", interrupt)
    with pytest.raises(Killed):
        bigspec.logdet(ms, method="cholesky", memory=budget)
    finished_columns = done[-1][1]
    assert ms.group["factor"].attrs["bigspec_factor"]["columns_done"] == finished_columns

    written = []
    real_write = tasks.write_L

    def counting_write(L, array, r0, r1, c0, c1, *rest):
        written.append(c0 // b)
        return real_write(L, array, r0, r1, c0, c1, *rest)

    monkeypatch.setattr(exact, "_after_panel", lambda k0, k1: None)
    monkeypatch.setattr(tasks, "write_L", counting_write)
    r = bigspec.logdet(ms, method="cholesky", memory=budget)
    assert_logdet_close(r, A, rtol=1e-11)
    assert min(written) == finished_columns          # finished tile columns were not recomputed
    assert r.panels_computed == r.super_panels - stop_after
    for m in range(b, n + 1, b):                     # prefixes span old and new panels
        assert abs(r.prefix_logdet[m - 1] - np.linalg.slogdet(A[:m, :m])[1]) < 1e-9


@pytest.mark.slow
def test_killed_process_resumes(tmp_path):
    n, b = 2400, 120
    A = make_spd(n, seed=2, cond=1e2)
    path = str(tmp_path / "A.zarr")
    bigspec.from_array(A, path, tile_size=b)
    budget = _budget(n, b, 8)
    code = (f"import bigspec; bigspec.logdet({path!r}, method='ldl', memory={budget}, checkpoint=True)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    ms = bigspec.open_matrix(path, mode="r")
    deadline = time.time() + 120
    columns = 0
    while time.time() < deadline and proc.poll() is None:
        if "factor" in ms.group:
            columns = dict(ms.group["factor"].attrs).get("bigspec_factor", {}).get("columns_done", 0)
            if columns > 0:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if columns == 0 or columns == ms.n_tiles:
        pytest.skip("the job finished before it could be killed mid-way")
    r = bigspec.logdet(path, method="ldl", memory=budget)
    assert r.panels_computed < r.super_panels
    assert_logdet_close(r, A, rtol=1e-10)


def test_diagnostics_merge_over_every_run_of_a_resumed_job(tmp_path, monkeypatch):
    """Growth and pivot diagnostics after a resume are those of all panels, not just the last run's:
    the smallest pivot and the largest multiplier here sit in the first panel, factored before the
    interruption."""
    n, b = 240, 20
    s = np.ones(n)
    s[:b] = 1e-3                   # rows of the first tile scaled down: tiny pivots and large multipliers
    A = make_spd(n, seed=3) * s[:, None] * s[None, :]
    ms = bigspec.from_array(A, str(tmp_path / "A.zarr"), tile_size=b)
    budget = _budget(n, b, 6)
    whole = bigspec.logdet(ms, memory=budget, checkpoint=False)
    assert whole.super_panels >= 4

    def interrupt(k0, k1):
        raise KeyboardInterrupt

    monkeypatch.setattr(exact, "_after_panel", interrupt)
    with pytest.raises(bigspec.errors.Interrupted):
        bigspec.logdet(ms, memory=budget, checkpoint=True)
    monkeypatch.setattr(exact, "_after_panel", lambda k0, k1: None)
    resumed = bigspec.logdet(ms, memory=budget, checkpoint=True)
    assert resumed.panels_computed == resumed.super_panels - 1
    assert_logdet_close(resumed, A, rtol=1e-10)
    for key in ("min_abs_d", "max_abs_d", "max_abs_L", "growth"):
        assert getattr(resumed, key) == pytest.approx(getattr(whole, key), rel=1e-12), key
    later = bigspec.logdet(A[b:, b:], tile_size=b)           # what the later panels alone would show
    assert whole.min_abs_d < 1e-3 * later.min_abs_d and whole.max_abs_L > 10 * later.max_abs_L
    cached = bigspec.logdet(ms, memory=budget, checkpoint=True)       # the cached answer says the same
    assert cached.cached and cached.min_abs_d == resumed.min_abs_d and cached.max_abs_L == resumed.max_abs_L
