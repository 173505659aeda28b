"""One writer at a time: a lease on a matrix store.

A writer (``bigspec run``, and :func:`hold` wherever a store is written) takes the store's
lease before it writes and gives it back when it is done. The lease is a small JSON file
beside the store, ``<store>.lease`` (``K.zarr`` -> ``K.zarr.lease``; for a URL the same key
beside it), naming its holder: host, pid, start time, the command, and when it was last
refreshed. It sits beside the store rather than inside it so that a store that does not exist
yet can be leased before it is created, and ``overwrite`` (which deletes the store's
directory) cannot delete it.

- Taken atomically: ``O_CREAT | O_EXCL`` on a local file system, fsspec's exclusive ``"xb"``
  mode for URLs where the file system supports it (local and ``memory://`` do; elsewhere the
  lease is written after a check, which narrows a race but cannot close it).
- Expired when its holder is gone: on the same host, when the holder's pid is no longer alive;
  anywhere, when it was not refreshed for ``ttl`` seconds (the holder refreshes it every
  ``ttl / 3`` seconds from a daemon thread). An expired lease is taken over, with a
  :class:`~bigspec.errors.LeaseWarning` that says whose it was.
- A live lease held by another process refuses the second writer with a
  :class:`~bigspec.errors.StoreLeaseError` naming the holder; ``force=True`` (``--force``)
  takes it over anyway, and says so (a :class:`~bigspec.errors.LeaseWarning`).
- Re-entrant within a process: a job that holds the lease can call the writing verbs, which
  take it again without waiting on themselves.

Examples
--------
>>> import tempfile, os
>>> from bigspec.lease import hold, read_lease
>>> store = os.path.join(tempfile.mkdtemp(), "K.zarr")
>>> with hold(store) as lease:
...     read_lease(store).pid == os.getpid()
True
>>> read_lease(store) is None                 # given back
True
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass

from .errors import LeaseWarning, StoreLeaseError, StoreNotWritableError, opt

logger = logging.getLogger(__name__)

#: seconds without a refresh after which a lease has expired, whoever holds it (``bigspec.lease-ttl``)
DEFAULT_TTL = 120.0
SUFFIX = ".lease"


def _now() -> float:
    return time.time()


def iso(t: float) -> str:
    """A POSIX time as ISO 8601 UTC, to the second (``2025-01-31T12:00:00Z``)."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: ``host``, ``pid``, ``started`` and ``refreshed`` (POSIX seconds), ``ttl``
    (seconds), a random ``token`` and the ``command`` that took it."""

    host: str
    pid: int
    started: float
    refreshed: float
    ttl: float
    token: str
    command: str = ""

    @classmethod
    def mine(cls, ttl: float, command: str | None = None) -> "Holder":
        t = _now()
        return cls(socket.gethostname(), os.getpid(), t, t, float(ttl), uuid.uuid4().hex,
                   command if command is not None else " ".join(os.path.basename(a) if i == 0 else a
                                                                 for i, a in enumerate(sys.argv))[:200])

    def to_dict(self) -> dict:
        """JSON-safe fields, with the times also in ISO 8601 (what ``bigspec status`` shows)."""
        return {**asdict(self), "started_iso": iso(self.started), "refreshed_iso": iso(self.refreshed)}

    @classmethod
    def from_dict(cls, d: dict) -> "Holder":
        return cls(str(d["host"]), int(d["pid"]), float(d["started"]), float(d["refreshed"]), float(d["ttl"]),
                   str(d["token"]), str(d.get("command", "")))

    def expired(self, now: float | None = None) -> str | None:
        """Why this lease no longer holds (its process is gone, or it was not refreshed in time), or None."""
        now = _now() if now is None else now
        if self.host == socket.gethostname() and not pid_alive(self.pid):
            return f"its process {self.pid} on {self.host} is gone"
        if now - self.refreshed > self.ttl:
            return f"it was not refreshed for {now - self.refreshed:.0f} s (its ttl is {self.ttl:.0f} s)"
        return None

    def describe(self, now: float | None = None) -> str:
        """``host h, pid 123, since 2025-...Z (refreshed 3 s ago), running `bigspec run job.yaml` ``."""
        now = _now() if now is None else now
        cmd = f", running `{self.command}`" if self.command else ""
        return (f"host {self.host}, pid {self.pid}, since {iso(self.started)} "
                f"(refreshed {max(now - self.refreshed, 0):.0f} s ago){cmd}")


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # alive, another user's
        return True
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:  # psutil missing or the process just ended: os.kill said it was there
        return True


class _Place:
    """Where a store's lease file lives: a local path, or a path on an fsspec file system."""

    def __init__(self, store, storage_options=None):
        from .storage import locate

        loc = locate(store, storage_options)
        if loc.protocol is None:
            raise TypeError("a lease needs a store given by path or URL, not a zarr.Group")
        self.local = loc.protocol == "file"
        self.store_url = loc.url
        self.path = loc.path.rstrip("/") + SUFFIX
        self.url = self.path if self.local else f"{loc.protocol}://{self.path.lstrip('/')}"
        self.fs = None if self.local else loc.filesystem()

    @property
    def key(self):
        return self.url

    def read(self) -> Holder | None:
        try:
            if self.local:
                with open(self.path, "rb") as f:
                    data = f.read()
            else:
                data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            return Holder.from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError):     # a torn or foreign file: treat as a dead lease
            return Holder("?", -1, 0.0, 0.0, 0.0, "unreadable", "")

    def create(self, holder: Holder) -> bool:
        """Write the lease if there is none (atomically where the file system allows); False if there is one."""
        data = json.dumps(asdict(holder)).encode()
        if self.local:
            parent = os.path.dirname(self.path)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:           # a file in the way, permission denied, a read-only file system
                raise _unwritable(self.store_url, parent, e) from None
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except OSError as e:
                raise _unwritable(self.store_url, parent, e) from None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):   # no exclusive mode here: check, then write
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
            return True
        except PermissionError as e:
            raise _unwritable(self.store_url, self.url, e) from None

    def replace(self, holder: Holder) -> None:
        """Rewrite the lease in one step (a refresh)."""
        data = json.dumps(asdict(holder)).encode()
        if self.local:
            tmp = f"{self.path}.{holder.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)

    def remove_if(self, token: str) -> bool:
        """Remove the lease if it is still the one with ``token``; True if it was removed.

        Locally the file is first renamed aside (atomic), so of two processes taking over the
        same stale lease only one removes it, and a lease renewed meanwhile is put back.
        """
        if not self.local:
            current = self.read()
            if current is None or current.token != token:
                return False
            self.fs.rm_file(self.path)
            return True
        aside = f"{self.path}.{uuid.uuid4().hex}.old"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            with open(aside, "rb") as f:
                moved = json.loads(f.read()).get("token")
        except (OSError, ValueError, AttributeError):
            moved = "unreadable"
        if moved != token:                       # not the one we meant: put it back unless replaced
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True


def _unwritable(store_url: str, where: str, e: OSError) -> StoreNotWritableError:
    reason = e.strerror or str(e)
    return StoreNotWritableError(
        f"cannot write the store {store_url}: {where} is not writable ({reason}); choose a location you can "
        f"write (a directory of yours, or a URL with write access)", store=store_url, path=where)


def read_lease(store, storage_options: dict | None = None) -> Holder | None:
    """The holder of ``store``'s lease, or None when nobody holds it (the holder may have expired:
    see :meth:`Holder.expired`)."""
    return _Place(store, storage_options).read()


class Lease:
    """A held lease on a store: refreshed in the background until :meth:`release`.

    Use :func:`hold` (a context manager); ``taken_from`` is the holder it displaced, if any.
    """

    def __init__(self, place: _Place, holder: Holder, taken_from: Holder | None = None):
        self.place = place
        self.holder = holder
        self.taken_from = taken_from
        self.lost: Holder | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name=f"bigspec-lease {place.url}", daemon=True)
        _LIVE.add(holder.token)
        self._thread.start()

    @property
    def path(self) -> str:
        """Where the lease file is (a path or URL)."""
        return self.place.url

    def refresh(self) -> bool:
        """Renew the lease now; False (and ``lost`` set) when someone else took it over."""
        current = self.place.read()
        if current is None or current.token != self.holder.token:
            if self.lost is None:
                self.lost = current
                logger.warning("the lease of %s was taken over by %s", self.place.store_url,
                               current.describe() if current else "nobody (it was removed)")
            return False
        self.holder = Holder(**{**asdict(self.holder), "refreshed": _now()})
        self.place.replace(self.holder)
        return True

    def _refresh_loop(self):
        while not self._stop.wait(max(self.holder.ttl / 3, 0.05)):
            try:
                if not self.refresh():
                    return
            except Exception as e:  # a refresh that fails must not kill the job: the ttl covers a few
                logger.info("could not refresh the lease of %s: %s", self.place.store_url, e)

    def release(self) -> None:
        """Stop refreshing and remove the lease if it is still ours."""
        self._stop.set()
        _LIVE.discard(self.holder.token)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.place.remove_if(self.holder.token)
        except OSError as e:
            logger.info("could not remove the lease of %s: %s", self.place.store_url, e)


def acquire(store, *, storage_options: dict | None = None, force: bool = False, ttl: float | None = None,
            command: str | None = None, forceable: bool = True) -> Lease:
    """Take ``store``'s lease, or raise :class:`~bigspec.errors.StoreLeaseError` naming its holder.

    Parameters
    ----------
    store : str or os.PathLike
        The store's path or URL (it need not exist yet).
    storage_options : dict, optional
        fsspec options for a URL.
    force : bool
        Take the lease over even from a live holder (a :class:`~bigspec.errors.LeaseWarning`
        says whose it was). Only when that holder is known to be gone or stopped: two writers
        at once can corrupt a factorization.
    ttl : float, optional
        Seconds without a refresh after which the lease expires (default ``bigspec.lease-ttl``,
        120).
    command : str, optional
        What holds it, for the message a second writer gets (default: this process's argv).
    forceable : bool
        Whether the caller can pass ``force`` (``bigspec run`` can; the writing verbs cannot, so
        their refusal says how the lease ends instead).

    Returns
    -------
    Lease
        Call :meth:`Lease.release` when done (or use :func:`hold`).

    Raises
    ------
    StoreLeaseError
        A live holder, and ``force`` not given.
    StoreNotWritableError
        The lease cannot be written where the store is (the store could not be either).

    Examples
    --------
    >>> import tempfile, os
    >>> from bigspec.lease import acquire
    >>> store = os.path.join(tempfile.mkdtemp(), "K.zarr")
    >>> lease = acquire(store)
    >>> lease.path.endswith("K.zarr.lease")
    True
    >>> lease.release()
    """
    from . import config

    ttl = float(config.get("lease-ttl", DEFAULT_TTL) if ttl is None else ttl)
    place = _Place(store, storage_options)
    mine = Holder.mine(ttl, command)
    for _ in range(5):                      # each round: create, or judge the holder and remove it
        if place.create(mine):
            return Lease(place, mine)
        current = place.read()
        if current is None:                 # given back between our two looks
            continue
        why = current.expired()
        if why is None and current.host == mine.host and current.pid == mine.pid and current.token not in _tokens():
            why = "it was left by this process"
        if why is None and not force:
            way_out = ("take the store over with " + opt("force=True", "--force") if forceable else
                       f"its lease ends with its process, or {current.ttl:.0f} s after its last refresh, or "
                       f"`bigspec run --force` takes it over")
            raise StoreLeaseError(
                f"the store {place.store_url} is being written by another job: {current.describe()}; its lease is "
                f"{place.url}. Wait for that job to finish; if it is gone or stopped, {way_out} (two writers at "
                f"once can corrupt the store)", store=place.store_url, holder=current.to_dict(), lease=place.url)
        if place.remove_if(current.token):
            if place.create(mine):
                lease = Lease(place, mine, taken_from=current)
                reason = (f"forced ({opt('force=True', '--force')})" if why is None else f"expired: {why}")
                warnings.warn(LeaseWarning(f"took over the lease of {place.store_url} from {current.describe()}: "
                                           f"{reason}"), stacklevel=3)
                return lease
    raise StoreLeaseError(f"could not take the lease of {place.store_url}: other processes keep taking it "
                          f"({place.url}); run one writer at a time", store=place.store_url, lease=place.url)


# leases this process holds: url -> [Lease, depth]
_HELD: dict[str, list] = {}
_HELD_LOCK = threading.Lock()


#: tokens of the leases this process holds now (acquired and not yet released)
_LIVE: set[str] = set()


def _tokens() -> set[str]:
    return set(_LIVE)


@contextlib.contextmanager
def hold(store, *, storage_options: dict | None = None, force: bool = False, ttl: float | None = None,
         command: str | None = None, forceable: bool = True):
    """Hold ``store``'s lease for the ``with`` block (see :func:`acquire`); re-entrant in a process.

    A store given as a ``zarr.Group`` or ``MatrixStore`` of no path holds no lease (yields None).

    Examples
    --------
    >>> import tempfile, os
    >>> from bigspec.lease import hold
    >>> store = os.path.join(tempfile.mkdtemp(), "K.zarr")
    >>> with hold(store) as outer, hold(store) as inner:
    ...     inner is outer
    True
    """
    try:
        place = _Place(store, storage_options)
    except TypeError:
        yield None
        return
    with _HELD_LOCK:
        entry = _HELD.get(place.key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        lease = acquire(store, storage_options=storage_options, force=force, ttl=ttl, command=command,
                        forceable=forceable)
        with _HELD_LOCK:
            entry = _HELD[place.key] = [lease, 1]
    try:
        yield entry[0]
    finally:
        with _HELD_LOCK:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                _HELD.pop(place.key, None)
        if last:
            entry[0].release()


__all__ = ["Holder", "Lease", "acquire", "hold", "read_lease", "pid_alive", "DEFAULT_TTL"]
