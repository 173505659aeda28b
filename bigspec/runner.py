"""One way to run bigspec's task graphs: on the verb's client or Dask's threaded scheduler.

Every verb (``form``, ``from_array``, ``logdet``, ``spectrum``) runs its graphs through one
:class:`Runner`, which gives them the same

* progress display: one bar per verb, counting the verb's own units (tiles formed, tiles
  factored, samples), and saying where a resumed run started;
* interrupt behaviour: Ctrl-C cancels what the cluster still runs for this verb and raises
  :class:`~bigspec.errors.Interrupted`, whose message says what was finished and kept and
  how to resume (the CLI prints it as one line and exits 130);
* watch on the cluster: a worker that leaves during a run is reported (one
  :class:`~bigspec.errors.WorkerLostWarning`: which worker, how many of this run's tasks Dask
  re-runs); a cluster left without workers, or a scheduler that went away, ends the run with a
  :class:`~bigspec.errors.ClusterError` within ``distributed.comm.timeouts.connect`` instead of
  waiting without end.

Examples
--------
>>> from operator import add
>>> from bigspec.runner import Runner
>>> with Runner(None, progress=False, total=2) as run:
...     run.run({"a": 1, "b": (add, "a", 1), "c": (add, "b", "b")}, ["b", "c"])
(2, 4)
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
import warnings

from threadpoolctl import threadpool_limits

from . import config
from .errors import ClusterError, Interrupted, WorkerLostWarning
from .progress import Progress, want_progress

logger = logging.getLogger(__name__)

#: seconds between two looks at the cluster's workers while a graph runs on it
HEALTH_INTERVAL = 1.0


_pressed = threading.Event()   # Ctrl-C was pressed while interrupt_handling() was active


def _on_interrupt(signum, frame):
    _pressed.set()
    raise KeyboardInterrupt


def _on_unraisable(unraisable, previous=None):
    # the Ctrl-C that a callback swallowed is raised again by check_interrupt: no traceback for it, nor
    # for distributed's gc timing callback, whose state that Ctrl-C left half updated
    echo = issubclass(unraisable.exc_type, KeyboardInterrupt) or \
        "GCDiagnosis" in getattr(unraisable.object, "__qualname__", "")
    if not (_pressed.is_set() and echo):
        (previous or sys.__unraisablehook__)(unraisable)


@contextlib.contextmanager
def interrupt_handling():
    """Remember Ctrl-C, so that it is acted on even where Python drops it.

    Ctrl-C raises KeyboardInterrupt wherever the main thread is, and Python drops one raised
    inside a garbage-collector callback (distributed installs one); while this is active a
    press is also remembered, and :func:`check_interrupt` raises it again (as each task
    finishes, every 20 ms while waiting on a cluster, between graphs). Only Python's own
    handler is replaced (a notebook's is left alone).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _pressed.clear()
    previous_hook = sys.unraisablehook
    previous = signal.signal(signal.SIGINT, _on_interrupt)
    sys.unraisablehook = lambda u: _on_unraisable(u, previous_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed while :func:`interrupt_handling` was active."""
    if _pressed.is_set():
        raise KeyboardInterrupt


class Runner:
    """Runs a verb's graphs with one progress bar, one interrupt behaviour and one cluster watch.

    Parameters
    ----------
    client : distributed.Client or None
        As resolved by :func:`bigspec.cluster.resolve_client` (None: threaded scheduler).
    progress : bool or None
        Show the bar (None: on a terminal, see :func:`bigspec.progress.want_progress`).
    label, unit : str
        What the bar says: ``"bigspec ldl"``, ``"tiles"``.
    total, done : int
        Units of the whole verb (the bar's 100%), and those done before this run (a resume).
    note : str, optional
        Shown beside the bar, e.g. where a resumed run started.
    threads, blas_threads : int, optional
        Threaded scheduler only: task threads, and BLAS threads per task
        (default ``bigspec.blas-threads``, else the BLAS library's own).
    interrupted : callable, optional
        Returns the message of :class:`~bigspec.errors.Interrupted` (what was finished and how
        to resume), called when the run is interrupted.
    """

    def __init__(self, client=None, *, progress=None, label: str = "bigspec", unit: str = "tasks", total: int = 0,
                 done: int = 0, note: str | None = None, threads: int | None = None, blas_threads: int | None = None,
                 interrupted=None):
        self.client = client
        self.threads = threads
        self.blas_threads = blas_threads
        self.interrupted = interrupted
        self.bar = Progress(total, label=label, unit=unit, note=note, done=done, enabled=want_progress(progress))
        self._futures = []
        self._workers = None
        self._reported = set()
        self._handling = None

    # -- context: the bar, and the interrupt -------------------------------------------
    def __enter__(self):
        self.bar.__enter__()
        self._handling = interrupt_handling()
        self._handling.__enter__()
        return self

    def check_interrupt(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed during this run (even if it was swallowed)."""
        check_interrupt()

    def __exit__(self, typ, exc, tb):
        if self._handling is not None:
            self._handling.__exit__(None, None, None)
            self._handling = None
        self.bar.__exit__(typ, exc, tb)
        if typ is not None and issubclass(typ, KeyboardInterrupt) and not isinstance(exc, Interrupted):
            from .cluster import interrupts_held_back

            message = "interrupted"
            with interrupts_held_back(raise_after=False):     # a second Ctrl-C must not cut this short
                self.cancel()
                if self.interrupted is not None:
                    try:
                        message = self.interrupted()
                    except Exception as e:  # the store may be unreadable mid-interrupt: still say something
                        logger.debug("could not describe the interrupted run: %s", e)
            raise Interrupted(message) from None
        return False

    def cancel(self) -> None:
        """Cancel this runner's futures still on the cluster (tasks already running finish)."""
        if self.client is not None and self._futures:
            with contextlib.suppress(Exception):
                self.client.cancel(self._futures, force=True)
        self._futures = []

    def mark(self) -> int:
        """The bar's count now, to :meth:`rewind` to when a graph is run again (pivoting retries)."""
        return self.bar.done

    def rewind(self, mark: int) -> None:
        self.bar.set(mark)

    # -- running ------------------------------------------------------------------------
    def run(self, dsk: dict, keys: list, ticks=None) -> list:
        """Compute ``keys`` of the task graph ``dsk`` and return their values in order.

        ``ticks``: the keys whose completion advances the bar by one unit (default: none).
        """
        ticks = set() if ticks is None else set(ticks)
        self.check_interrupt()
        if self.client is not None:
            futures = self.client.get(dsk, keys, sync=False)
            values = self._wait(futures, [k in ticks for k in keys])
        else:
            values = self._threaded(dsk, keys, ticks)
        self.check_interrupt()
        return values

    def compute(self, collections: list, tick: bool = False) -> list:
        """Compute dask collections (delayed objects, arrays); each delayed one advances the bar if ``tick``."""
        collections = list(collections)
        if self.client is not None:
            futures = self.client.compute(collections)
            return self._wait(futures, [tick] * len(futures))
        import dask

        ticks = {c.key for c in collections if hasattr(c, "key")} if tick else set()
        with self._local(ticks):
            return list(dask.compute(*collections, scheduler="threads", num_workers=self.threads))

    def _threaded(self, dsk, keys, ticks):
        import dask.threaded

        with self._local(ticks):
            return dask.threaded.get(dsk, keys, num_workers=self.threads)

    @contextlib.contextmanager
    def _local(self, ticks):
        """The threaded scheduler's settings: BLAS threads per task, and a bar tick per finished key."""
        from dask.callbacks import Callback

        bar, runner = self.bar, self

        class _Tick(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in ticks:
                    bar.advance(1)
                runner.check_interrupt()

        # Measured on 2 cores: threaded BLAS inside each task beats one BLAS thread per task by
        # 1.6-2x (the cores share FMA units), so BLAS threads are left as configured.
        blas = config.get("blas-threads", None) or self.blas_threads
        with threadpool_limits(blas, user_api="blas") if blas else contextlib.nullcontext(), _Tick():
            yield

    def _wait(self, futures, tick_flags):
        """Wait for ``futures`` while showing progress and watching the cluster; return their results."""
        from distributed import as_completed

        from .progress import quiet_expected_failures

        client = self.client
        quiet_expected_failures(client)
        if self._workers is None:              # the workers at the start: a loss before the first look counts
            with contextlib.suppress(Exception):
                self._workers = set(client.nthreads())
        self._futures = list(futures)
        ticking = {f.key for f, t in zip(futures, tick_flags) if t}
        done = as_completed(futures, loop=client.loop, raise_errors=False)
        next_check = time.monotonic() + HEALTH_INTERVAL
        while not done.is_empty():
            batch = done.next_batch(block=False)
            for f in batch:
                if f.status == "error":
                    self._raise_task_error(f)
                if f.key in ticking:
                    self.bar.advance(1)
            if not batch:
                self.check_interrupt()
                time.sleep(0.02)
            if time.monotonic() >= next_check:
                self._check_cluster()
                next_check = time.monotonic() + HEALTH_INTERVAL
        self._check_cluster()
        values = client.gather(futures)
        self._futures = []
        return values

    def _raise_task_error(self, future):
        from distributed import KilledWorker

        try:
            future.result()
        except KilledWorker as e:
            self.cancel()
            raise ClusterError(
                f"Dask gave up on a task after the workers running it died {e.allowed_failures + 1} times "
                f"(often: out of memory; lower memory= or give the workers more): {e}") from None
        except BaseException:
            self.cancel()       # the graph's other tasks are of no use now
            raise

    # -- the cluster's health -------------------------------------------------------------
    def _check_cluster(self) -> None:
        """Report workers that left; fail when no worker is left for the connect timeout."""
        from .cluster import connect_timeout

        client = self.client
        try:
            workers = set(client.nthreads())
        except Exception as e:
            self.cancel()
            raise ClusterError(f"lost the Dask scheduler at {client.scheduler.address}: {e}") from None
        if self._workers is not None:
            for address in sorted(self._workers - workers):
                self._report_lost(address, workers)
        self._workers = workers
        if workers:
            self._no_workers_since = None
            return
        now = time.monotonic()
        since = getattr(self, "_no_workers_since", None) or now
        self._no_workers_since = since
        timeout = connect_timeout()
        if now - since > timeout:
            self.cancel()
            raise ClusterError(
                f"every worker of the Dask cluster at {client.scheduler.address} is gone, and none came back "
                f"within {timeout:g} s (distributed.comm.timeouts.connect); start workers (dask worker "
                f"{client.scheduler.address}) and run the same command again: what was finished is kept")

    def _report_lost(self, address: str, now: set) -> None:
        if address in self._reported:
            return
        self._reported.add(address)
        rerun = None
        with contextlib.suppress(Exception):
            for _, msg in self.client.get_events(address):
                if isinstance(msg, dict) and msg.get("action") == "remove-worker":
                    keys = set(msg.get("processing-tasks", ())) | set(msg.get("lost-computed-tasks", ()))
                    rerun = sum(1 for k in keys if str(k[0] if isinstance(k, tuple) else k).startswith("bigspec-"))
        if not now:
            what = "no worker is left: the run waits for one (distributed.comm.timeouts.connect)"
        elif rerun is None:
            what = "Dask runs its tasks again on the others"
        elif rerun == 0:
            what = "it held none of this run's unfinished work"
        else:
            what = f"Dask runs {rerun} of this run's tasks again on the others"
        warnings.warn(f"worker {address} left the cluster during the run; {what}", WorkerLostWarning,
                      stacklevel=2)


__all__ = ["Runner"]
