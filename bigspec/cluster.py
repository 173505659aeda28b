"""Find or start the Dask cluster bigspec runs on.

The Python API runs on the client it is given (``client=``), else the current
``distributed.Client`` if there is one, else Dask's threaded scheduler; it never starts a
cluster behind the user's back. :func:`resolve_client` makes that choice once, at each verb's
public entry. :func:`connect` returns a ``distributed.Client``: to a new ``LocalCluster`` sized
to the machine, to a scheduler address or scheduler file, or to new GPU workers (dask-cuda).
Like ``distributed.Client`` it works as a plain call (``client = bigspec.connect()``, then
``client.close()``) and as a context manager; closing it closes the cluster it started.

Examples
--------
>>> import bigspec
>>> with bigspec.connect(workers=1, threads=1, processes=False) as client:
...     len(client.nthreads())
1
>>> client = bigspec.connect(workers=1, threads=1, processes=False)
>>> bigspec.cluster.resolve_client(client) is client
True
>>> client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading

from .errors import BackendUnavailableError, ClusterError

logger = logging.getLogger(__name__)


def current_client():
    """The active distributed client, or None."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover
        return None
    try:
        client = get_client()
    except ValueError:
        return None
    return client if client.status == "running" else None


def resolve_client(client=None):
    """The client a verb runs on: ``client`` (checked), else the current client, else None.

    None means Dask's threaded scheduler in this process.

    Raises
    ------
    TypeError
        ``client`` is not a ``distributed.Client``.
    ClusterError
        ``client`` is closed.
    """
    if client is None:
        return current_client()
    from distributed import Client

    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client (bigspec.connect() returns one), got "
                        f"{type(client).__name__}")
    if client.status not in ("running", "connecting"):
        raise ClusterError(f"the Dask client {client} is {client.status}; connect again (bigspec.connect())")
    return client


#: seconds a computation waits for a first worker to join a cluster that has none yet
JOIN_WAIT = 30.0


def resources(client=None) -> tuple[int, int, int | None]:
    """(workers, total threads, total worker memory limit in bytes or None)."""
    if client is None:
        return 1, os.cpu_count() or 1, None
    info = workers_info(client)
    if not info:   # workers may still be joining (a LocalCluster under load, a worker restarting)
        try:
            client.wait_for_workers(1, timeout=JOIN_WAIT)
        except TimeoutError:
            pass
        info = workers_info(client)
    if not info:
        raise ClusterError(f"the Dask cluster at {client.scheduler.address} has no workers (none joined within "
                           f"{JOIN_WAIT:.0f} s); start some (dask worker {client.scheduler.address})")
    threads = sum(w["nthreads"] for w in info.values())
    limits = [w.get("memory_limit") or 0 for w in info.values()]
    memory = _capped_at_this_machine(info) if all(limits) else None
    return len(info), threads, memory


def _capped_at_this_machine(info: dict) -> int:
    """The workers' memory limits summed, those on this machine together at most its RAM.

    distributed's ``memory_limit="auto"`` gives each worker ``RAM x min(1, threads / cores)``,
    so more worker threads than cores (``--workers 8 --threads 1`` on 2 cores) sum to several
    times the RAM, and a budget taken from that sum would not fit.
    """
    import psutil

    here = {"127.0.0.1", "localhost", "::1"}
    try:
        import socket

        here |= {socket.gethostname(), *socket.gethostbyname_ex(socket.gethostname())[2]}
    except OSError:  # pragma: no cover - no resolvable host name
        pass
    local = sum(w["memory_limit"] for w in info.values() if w.get("host") in here)
    remote = sum(w["memory_limit"] for w in info.values() if w.get("host") not in here)
    return int(min(local, psutil.virtual_memory().total) + remote)


def workers_info(client) -> dict:
    """The scheduler's record of every worker (address -> nthreads, memory_limit, ...); {} without a client."""
    if client is None:
        return {}
    return client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else \
        client.scheduler_info()["workers"]


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def require_visible(client, path: str | None, what: str, fix: str) -> None:
    """Check that every worker of ``client`` sees the local directory ``path`` (workers read and write there).

    A worker on another machine that does not mount ``path`` would read a store's unwritten
    tiles as NaN, or write tiles into a directory of its own that the client never sees.

    Raises
    ------
    StoreNotFoundError
        Naming the workers that do not see ``path``, and ``fix``.
    """
    if client is None or path is None:
        return
    try:
        seen = client.run(os.path.isdir, path)
    except Exception as e:  # a worker that cannot run it: say so, do not guess
        logger.info("could not check that the workers see %s: %s", path, e)
        return
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        from .errors import StoreNotFoundError

        shown = ", ".join(blind[:4]) + (f" and {len(blind) - 4} more" if len(blind) > 4 else "")
        raise StoreNotFoundError(
            f"{what} is at {path}, a local path of this machine that {len(blind)} of {len(seen)} Dask workers "
            f"({shown}) do not see: {fix}", path=path, workers=blind)


def connect_timeout() -> float:
    """Seconds to wait for a scheduler, and for a cluster without workers (``distributed.comm.timeouts.connect``)."""
    import dask.config
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


def _scheduler_address(scheduler_file: str) -> str:
    try:
        with open(scheduler_file) as f:
            text = f.read()
    except FileNotFoundError:
        raise ClusterError(f"no scheduler file at {scheduler_file}: start a scheduler with "
                           f"`dask scheduler --scheduler-file {scheduler_file}` or give its address "
                           f"(--scheduler tcp://HOST:8786)") from None
    except OSError as e:
        raise ClusterError(f"cannot read the scheduler file {scheduler_file}: {e.strerror}") from None
    try:
        address = json.loads(text)["address"]
    except (ValueError, KeyError, TypeError):
        raise ClusterError(f"{scheduler_file} is not a Dask scheduler file (JSON with an \"address\"): it is "
                           f"written by `dask scheduler --scheduler-file {scheduler_file}`") from None
    return str(address)


async def _probe(address: str, timeout: float, security) -> dict:
    from distributed.comm import connect as comm_connect

    args = security.get_connection_args("client") if security is not None else {}
    comm = await comm_connect(address, timeout=timeout, **args)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def probe_scheduler(address: str, timeout: float | None = None, security=None) -> dict:
    """The identity of the scheduler at ``address``, or a :class:`ClusterError` within ``timeout`` seconds.

    ``distributed.Client`` waits without end on an address that accepts connections but never
    answers (a wrong port, a process that is not a scheduler); this bounds every step.
    """
    timeout = connect_timeout() if timeout is None else float(timeout)
    _refused_at_once(address)

    async def bounded():
        return await asyncio.wait_for(_probe(address, timeout, security), timeout)

    try:
        identity = _run_coroutine(bounded())
    except (asyncio.TimeoutError, TimeoutError):
        raise ClusterError(f"the Dask scheduler at {address} did not answer within {timeout:g} s "
                           f"(distributed.comm.timeouts.connect); check the address and that "
                           f"`dask scheduler` runs there") from None
    except (OSError, ValueError, TypeError) as e:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {e}{_tls_hint(address, e)}") from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        kind = identity.get("type") if isinstance(identity, dict) else None
        raise ClusterError(f"{address} is not a Dask scheduler" + (f" (it is a {kind})" if kind else "")
                           + "; give the scheduler's address (tcp://HOST:8786)")
    return identity


def _tls_hint(address: str, error: BaseException) -> str:
    """What to check when a connection failed in a way TLS explains."""
    text = str(error).lower()
    if address.startswith("tls://") and ("certificate" in text or "ssl" in text or "tls" in text):
        return (" (the scheduler refused these certificates: give the directory `bigspec certs` wrote for this "
                "cluster, whose CA signed the scheduler's and workers' certificates)")
    if address.startswith("tcp://") and ("reset" in text or "closed" in text):
        return " (a scheduler that speaks TLS resets plain connections: give its tls:// address and --tls DIR)"
    return ""


def _refused_at_once(address: str) -> None:
    """A tcp:// address where nothing listens is a ClusterError at once (distributed retries until its
    connect timeout)."""
    import socket
    from urllib.parse import urlsplit

    if not address.startswith(("tcp://", "tls://")):
        return
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        return
    if not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=2.0).close()
    except ConnectionRefusedError:
        raise ClusterError(f"nothing listens at {address}: no Dask scheduler runs there (connection refused); "
                           f"start one with `dask scheduler`, or check the address") from None
    except OSError:
        return   # unreachable or slow: the bounded probe says so


def _run_coroutine(coro):
    """Run ``coro`` to completion on a fresh event loop (in a thread when one already runs here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    out = {}

    def target():
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: B036 - re-raised in the caller's thread
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def dask_setup(worker):
    """Worker preload of the clusters bigspec starts: the worker process ignores SIGINT.

    A terminal sends Ctrl-C to every process of its foreground group, worker processes
    included, each of which would print its own traceback; the process that started the
    cluster handles the interrupt and closes the cluster.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker").addFilter(LostWorkerEcho())


class LostWorkerEcho(logging.Filter):
    """Drops distributed's own log lines about a worker that left (bigspec reports it in one line)."""

    PREFIXES = ("Removing worker", "Restarting worker", "Worker stream died during communication",
                "Worker process still alive after", "Failed to communicate with scheduler during heartbeat",
                "failed during get data")

    def filter(self, record):
        return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def workers_born_ignoring_interrupts():
    """Worker processes of the local clusters started inside fork from a server that ignores SIGINT.

    For the command line, whose process is bigspec's own: its local workers are then immune
    to the terminal's Ctrl-C from birth (a worker spawned afresh ignores it only once its
    preload has run, about a second later), and Ctrl-C is ignored only for the fraction of a
    second the fork server takes to start.
    """
    import dask.config

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        from distributed.utils import get_mp_context

        get_mp_context()                       # sets the fork server's preload (distributed)
        if threading.current_thread() is threading.main_thread() and sys.platform != "win32":
            import multiprocessing.forkserver

            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                signal.signal(signal.SIGINT, previous)
        yield


@contextlib.contextmanager
def interrupts_held_back(raise_after: bool = True):
    """Hold back Ctrl-C while a cluster starts or closes: raise it afterwards (``raise_after``), or
    drop it (a second Ctrl-C while closing after the first), so a cluster is never left half
    started or half closed."""
    if threading.current_thread() is not threading.main_thread() or not callable(signal.getsignal(signal.SIGINT)):
        yield []
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed and raise_after:
        raise KeyboardInterrupt


GUARD = ("worker processes start by importing the main script again: in a script, start the cluster under "
         "`if __name__ == \"__main__\":`")


def _start(make):
    """A cluster from ``make()``, its workers ignoring SIGINT; a Ctrl-C meanwhile closes it and is raised."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ClusterError(f"bigspec.connect() ran while a worker process was starting; {GUARD}")
    cluster, pressed = None, []
    try:
        with interrupts_held_back() as pressed:
            cluster = make()
        return _new_client(cluster)
    except RuntimeError as e:
        if pressed:
            raise KeyboardInterrupt from None       # a worker that started just then died of the Ctrl-C
        raise ClusterError(f"the local cluster could not start its workers ({e}); {GUARD}, and check the worker "
                           f"log above") from None
    except BaseException:
        if cluster is not None:
            with interrupts_held_back():
                cluster.close()
        raise


def _new_client(cluster):
    from distributed import Client

    class ClusterClient(Client):
        """A ``distributed.Client`` that closes the cluster bigspec started for it."""

        def close(self, *args, **kwargs):
            if self.status == "closed" and cluster.status.name == "closed":
                return None
            # closing after an error or a first Ctrl-C: a second one must not leave it half closed
            with interrupts_held_back(raise_after=sys.exc_info()[0] is None):
                try:
                    return super().close(*args, **kwargs)
                finally:
                    cluster.close()

    return ClusterClient(cluster)


def connect(scheduler: str | None = None, scheduler_file: str | None = None, *,
            workers: int | None = None, threads: int | None = None,
            memory_limit: str | None = "auto", gpu: bool = False, processes: bool = True,
            dashboard: bool = True, security=None):
    """A ``distributed.Client``: to ``scheduler``/``scheduler_file``, or to a new local cluster.

    Parameters
    ----------
    scheduler, scheduler_file : str, optional
        Join an existing cluster (``tcp://host:8786``, or the JSON file written by
        ``dask scheduler --scheduler-file``) instead of starting one.
    workers, threads, memory_limit :
        Size of a new ``LocalCluster`` (default: one process per core, one thread each,
        memory split evenly).
    gpu : bool
        Start a ``dask_cuda.LocalCUDACluster`` (one worker per GPU).
    processes : bool
        Workers in separate processes (default) or threads of this one.
    dashboard : bool
        Serve the dashboard of a new cluster on a free port.
    security : distributed.Security, str or os.PathLike, optional
        TLS: a ``Security``, or a directory written by ``bigspec certs`` (see
        :func:`bigspec.security.tls_security`). Needed for a ``tls://`` scheduler, unless the
        ``distributed.comm.tls.*`` config names the certificates
        (``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``, ``..._CLIENT__CERT``, ``..._CLIENT__KEY``).
        Without a scheduler, the new local cluster speaks TLS with these certificates.

    Returns
    -------
    distributed.Client
        Use it as ``with bigspec.connect() as client:`` or ``client = bigspec.connect()``
        then ``client.close()``; closing it closes a cluster that ``connect`` started.

    Raises
    ------
    ClusterError
        A missing or unreadable scheduler file, or a scheduler that does not answer within
        ``distributed.comm.timeouts.connect``; never a silent wait. A ``tls://`` scheduler without
        certificates, or one that refuses them (another CA), is a ClusterError that says so.
    ArgumentError
        ``security`` is a directory without the client's certificates.
    BackendUnavailableError
        ``gpu=True`` without dask-cuda and cupy.
    """
    from distributed import Client, LocalCluster

    if scheduler and scheduler_file:
        raise ValueError("give scheduler= or scheduler_file=, not both")
    security = _security(security)
    if scheduler or scheduler_file:
        address = scheduler or _scheduler_address(scheduler_file)
        security = _security_for(address, security)
        timeout = connect_timeout()
        probe_scheduler(address, timeout, security)
        try:
            client = Client(address=address, timeout=timeout, security=security)
        except (OSError, asyncio.TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        logger.info("connected to %s (dashboard %s)", address, client.dashboard_link)
        return client
    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as e:
            raise BackendUnavailableError(
                "--gpu needs dask-cuda and cupy: pip install \".[gpu]\" in the bigspec checkout (cupy-cuda12x, dask-cuda)"
            ) from e
        return _start(lambda: LocalCUDACluster(threads_per_worker=threads or 1, memory_limit=memory_limit,
                                               preload=[__name__]))
    cores = os.cpu_count() or 1
    n_workers = workers or (cores if processes else 1)
    n_threads = threads or max(1, cores // n_workers)
    # LocalCluster quiets the "distributed" logger while it runs and restores it when closed
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    return _start(lambda: LocalCluster(
        n_workers=n_workers, threads_per_worker=n_threads, processes=processes, memory_limit=memory_limit,
        dashboard_address=":0" if dashboard else None, preload=[__name__] if processes else None, **tls))


def _security(security):
    """``security`` as a ``distributed.Security``: a certificates directory is read with its files checked."""
    if security is None or not isinstance(security, (str, os.PathLike)):
        return security
    from .security import tls_security

    return tls_security(security)


def _security_for(address: str, security):
    """The security to reach ``address`` with: a ``tls://`` address needs certificates (given, or in the
    ``distributed.comm.tls`` config), and certificates need a ``tls://`` address."""
    tls = address.startswith("tls://")
    if security is None and tls:
        from distributed import Security

        security = Security()                     # the distributed.comm.tls.* config, if any
        if not (security.tls_ca_file and security.tls_client_cert):
            raise ClusterError(
                f"the Dask scheduler at {address} speaks TLS and no certificates were given: pass the directory "
                f"`bigspec certs` wrote (--tls DIR on the command line, security=DIR in bigspec.connect), or set "
                f"DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
                f"DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY")
    elif security is not None and getattr(security, "require_encryption", False) and not tls:
        raise ClusterError(f"TLS certificates were given but the scheduler address {address} is not a tls:// "
                           f"address: a TLS scheduler listens at tls://HOST:8786 (give that), and a plain one takes "
                           f"no certificates")
    return security


__all__ = ["connect", "current_client", "resolve_client", "resources", "probe_scheduler", "interrupts_held_back",
           "require_visible", "connect_timeout"]
