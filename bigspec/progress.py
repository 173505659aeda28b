"""One progress bar for bigspec's verbs, with the threaded scheduler or a distributed client.

The bar counts the verb's own units (tiles formed, tiles factored, samples) against a total
known before the first graph runs, so a computation submitted in several graphs
(super-panels) shows a single bar; :class:`bigspec.runner.Runner` drives it.

Examples
--------
>>> from bigspec.progress import Progress
>>> with Progress(total=2, unit="tiles", enabled=False) as bar:
...     bar.advance(2)
>>> bar.done, bar.text(now=0.0)
(2, 'bigspec: [##############################] 100.0% 2/2 tiles    0.0s')
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from . import config


def want_progress(progress: bool | None) -> bool:
    """``progress=None`` means: on when stderr is a terminal and the config allows it."""
    from .validate import check_flag

    progress = check_flag(progress, "progress", allow_none=True)
    if progress is None:
        return bool(config.get("progress", True)) and sys.stderr.isatty()
    return progress


class Progress:
    """A thread-safe text progress bar on stderr: ``label: [###   ] 40.0% 54/136 tiles  3.2s (note)``."""

    def __init__(self, total: int, label: str = "bigspec", enabled: bool = True, width: int = 30,
                 unit: str = "tasks", note: str | None = None, done: int = 0):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.width = width
        self.unit = unit
        self.note = note
        self.done = int(done)                  # already done before this run (a resume)
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

    def set(self, done: int) -> None:
        """Set the count (a graph run again after a pivoting retry counts its tiles once)."""
        with self._lock:
            self.done = int(done)
            self._draw()

    def text(self, now: float | None = None) -> str:
        elapsed = (time.perf_counter() if now is None else now + self._start) - self._start
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width)
        note = f" ({self.note})" if self.note else ""
        return (f"{self.label}: [{bar:<{self.width}}] {100 * frac:5.1f}% {self.done}/{self.total} {self.unit} "
                f"{elapsed:6.1f}s{note}")

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        sys.stderr.write("\r" + self.text())
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


def quiet_expected_failures(client):
    """Install :func:`quiet_worker_logs` on the client's workers (once per client)."""
    if getattr(client, "_bigspec_quiet", False):
        return
    try:
        client.run(quiet_worker_logs)
    except Exception:  # pragma: no cover - a worker that cannot run it still computes
        pass
    client._bigspec_quiet = True
