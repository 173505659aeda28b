"""Find or start the Dask cluster bigspec runs on.

The Python API uses the current ``distributed.Client`` if there is one, else Dask's
threaded scheduler; it never starts a cluster behind the user's back. :func:`connect`
(a context manager, used by the CLI) starts a ``LocalCluster`` sized to the machine, joins
a scheduler address or scheduler file, or starts GPU workers with dask-cuda.

Examples
--------
>>> import bigspec
>>> with bigspec.connect(workers=1, threads=1, processes=False) as client:
...     len(client.nthreads())
1
"""

from __future__ import annotations

import contextlib
import logging
import os

from .errors import BackendUnavailableError, ClusterError

logger = logging.getLogger(__name__)


def current_client():
    """The active distributed client, or None."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover
        return None
    try:
        return get_client()
    except ValueError:
        return None


def resources(client=None) -> tuple[int, int, int | None]:
    """(workers, total threads, total worker memory limit in bytes or None)."""
    if client is None:
        return 1, os.cpu_count() or 1, None
    info = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else \
        client.scheduler_info()["workers"]
    if not info:
        raise ClusterError("the Dask cluster has no workers; start some (dask worker ADDRESS)")
    threads = sum(w["nthreads"] for w in info.values())
    limits = [w.get("memory_limit") or 0 for w in info.values()]
    memory = sum(limits) if all(limits) else None
    return len(info), threads, memory


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


@contextlib.contextmanager
def connect(scheduler: str | None = None, scheduler_file: str | None = None, *,
            workers: int | None = None, threads: int | None = None,
            memory_limit: str | None = "auto", gpu: bool = False, processes: bool = True,
            dashboard: bool = True):
    """Yield a ``distributed.Client``: to ``scheduler``/``scheduler_file``, or a new local cluster.

    Parameters
    ----------
    scheduler, scheduler_file : str, optional
        Join an existing cluster instead of starting one.
    workers, threads, memory_limit :
        Size of a new ``LocalCluster`` (default: one process per core, one thread each,
        memory split evenly).
    gpu : bool
        Start a ``dask_cuda.LocalCUDACluster`` (one worker per GPU).
    """
    from distributed import Client, LocalCluster

    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("distributed").setLevel(logging.WARNING)

    try:
        if scheduler or scheduler_file:
            import dask.config

            timeout = dask.config.get("distributed.comm.timeouts.connect")
            with Client(address=scheduler, scheduler_file=scheduler_file, timeout=timeout) as client:
                logger.info("connected to %s (dashboard %s)", client.scheduler.address, client.dashboard_link)
                yield client
            return
    except OSError as e:
        raise ClusterError(f"cannot reach the Dask scheduler {scheduler or scheduler_file}: {e}") from e
    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as e:
            raise BackendUnavailableError(
                "--gpu needs dask-cuda and cupy: pip install \".[gpu]\" in the bigspec checkout (cupy-cuda12x, dask-cuda)"
            ) from e
        cluster_cm = LocalCUDACluster(threads_per_worker=threads or 1, memory_limit=memory_limit)
    else:
        cores = os.cpu_count() or 1
        n_workers = workers or (cores if processes else 1)
        n_threads = threads or max(1, cores // n_workers)
        cluster_cm = LocalCluster(
            n_workers=n_workers, threads_per_worker=n_threads, processes=processes,
            memory_limit=memory_limit, dashboard_address=":0" if dashboard else None,
        )
    with cluster_cm as cluster, Client(cluster) as client:
        yield client
