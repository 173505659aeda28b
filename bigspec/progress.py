"""One progress bar for bigspec's graphs, with the threaded scheduler or a distributed client.

The bar counts finished tasks against a total known before the first graph runs, so a
computation submitted in several graphs (super-panels) shows a single bar.

Examples
--------
>>> from bigspec.progress import Progress
>>> with Progress(total=2, enabled=False) as bar:
...     bar.advance(2)
>>> bar.done
2
"""

from __future__ import annotations

import logging

import contextlib
import sys
import threading
import time

from threadpoolctl import threadpool_limits

from . import config


def want_progress(progress: bool | None) -> bool:
    """``progress=None`` means: on when stderr is a terminal and the config allows it."""
    if progress is None:
        return bool(config.get("progress", True)) and sys.stderr.isatty()
    return bool(progress)


class Progress:
    """A thread-safe text progress bar on stderr."""

    def __init__(self, total: int, label: str = "bigspec", enabled: bool = True, width: int = 30):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.width = width
        self.done = 0
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._last = 0.0

    def __enter__(self):
        self._draw(force=True)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()

    def advance(self, k: int = 1) -> None:
        with self._lock:
            self.done += k
            self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width)
        sys.stderr.write(
            f"\r{self.label}: [{bar:<{self.width}}] {100 * frac:5.1f}% "
            f"{self.done}/{self.total} tiles {now - self._start:6.1f}s"
        )
        sys.stderr.flush()


#: exceptions that tasks raise on purpose (bigspec retries with pivoting, or reports them to
#: the user with its own message): workers should not log them as crashes
EXPECTED_FAILURES = ("ZeroPivot(", "NeedsPivoting(", "NotPositiveDefiniteError(", "NonFiniteError(")


class _ExpectedFailureFilter(logging.Filter):
    def filter(self, record):
        if not str(record.msg).startswith("Compute Failed") or len(record.args or ()) < 4:
            return True
        return not str(record.args[3]).startswith(EXPECTED_FAILURES)


def quiet_worker_logs():
    """Drop the workers' 'Compute Failed' log records of bigspec's expected failures (idempotent)."""
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _ExpectedFailureFilter) for f in log.filters):
        log.addFilter(_ExpectedFailureFilter())


def _quiet_expected_failures(client):
    if getattr(client, "_bigspec_quiet", False):
        return
    try:
        client.run(quiet_worker_logs)
    except Exception:  # pragma: no cover - a worker that cannot run it still computes
        pass
    client._bigspec_quiet = True


def run_graph(dsk: dict, keys: list, client=None, threads: int = 1, bar: Progress | None = None,
              blas_threads: int | None = None):
    """Compute ``keys`` of the task graph ``dsk``; return their values in order.

    With a distributed ``client`` the graph is submitted to the cluster; otherwise it runs
    on Dask's threaded scheduler with ``threads`` task threads, each BLAS call using
    ``blas_threads`` threads (default: ``bigspec.blas-threads``, else the library's own).
    """
    if client is not None:
        from distributed import as_completed

        _quiet_expected_failures(client)
        futures = client.get(dsk, keys, sync=False)
        if bar is not None:
            for _ in as_completed(futures):
                bar.advance(1)
        return client.gather(futures)
    import dask.threaded
    from dask.callbacks import Callback

    callbacks = []
    if bar is not None:
        keyset = set(keys)

        class _Tick(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in keyset:
                    bar.advance(1)

        callbacks.append(_Tick())
    # Measured on 2 cores: threaded BLAS inside each task beats one BLAS thread per task by
    # 1.6-2x (the cores share FMA units), so BLAS threads are left as configured.
    blas = config.get("blas-threads", None) or blas_threads
    with threadpool_limits(blas, user_api="blas") if blas else contextlib.nullcontext():
        if callbacks:
            with callbacks[0]:
                return dask.threaded.get(dsk, keys, num_workers=threads)
        return dask.threaded.get(dsk, keys, num_workers=threads)
