"""numpy / cupy dispatch for tile kernels.

cupy is imported lazily, only when a GPU is asked for; a missing cupy or device raises
:class:`~bigspec.errors.BackendUnavailableError` instead of silently running on the host.

Examples
--------
>>> from bigspec.backend import get_namespace
>>> get_namespace("cpu").__name__
'numpy'
"""

from __future__ import annotations

import contextlib

import numpy as np

from .errors import ArgumentError, BackendUnavailableError, arg

DEVICES = ("cpu", "gpu")


def check_device(device: str) -> str:
    """Validate ``device`` ("cpu" or "gpu") and, for "gpu", that cupy and a device exist."""
    if device not in DEVICES:
        raise ArgumentError(f"{arg('device', device)} must be one of {', '.join(map(repr, DEVICES))}")
    if device == "gpu":
        get_namespace("gpu")
    return device


def get_namespace(device: str = "cpu"):
    """Return the array module for ``device``: numpy for "cpu", cupy for "gpu"."""
    if device == "cpu":
        return np
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(
            "device='gpu' needs cupy: install bigspec's gpu extra, "
            "`pip install \".[gpu]\"` in the bigspec checkout (cupy-cuda12x, dask-cuda)"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(f"device='gpu' but CUDA is unusable here: {e}") from e
    if count < 1:  # pragma: no cover
        raise BackendUnavailableError("device='gpu' but no CUDA device is visible")
    return cupy


def namespace_of(x):
    """The array module of ``x`` (numpy or cupy), without importing cupy for numpy arrays."""
    if not isinstance(x, np.ndarray) and type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


M_MMAP_THRESHOLD = -3
#: glibc's own adaptive mmap threshold climbs to this (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit) once a
#: process has freed blocks that large; glibc has no call that turns adaptation back on
ADAPTIVE_CEILING = 32 << 20


def set_mmap_threshold(nbytes: int) -> bool:
    """glibc ``mallopt(M_MMAP_THRESHOLD, nbytes)`` in this process; False off glibc."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def freed_tiles_leave_the_process(client=None):
    """While an out-of-core factorization runs, blocks of ``bigspec.mmap-threshold`` (1 MiB) or
    more are memory-mapped, so a freed tile leaves the process at once.

    Measured (``bench/release_memory.py``, n = 8192, tiles of 1024, threaded scheduler): with
    glibc's adaptive threshold, freed tiles stay in its per-thread heaps and the working set
    reached 1.3-1.8x the budget; with this, 0.74-1.04x. ``malloc_trim`` after each task or
    every 5 ms did not help (the peaks are momentary). The setting applies to the processes
    that run the tasks: this one on the threaded scheduler, else the client's workers. On exit
    it is set to :data:`ADAPTIVE_CEILING`, the state glibc's own adaptation brings a process to
    (glibc cannot turn adaptation back on); ``bigspec.mmap-threshold: null`` leaves malloc alone.
    """
    from . import config

    value = config.get("mmap-threshold", "1MiB")
    if value is None:
        yield
        return
    from dask.utils import parse_bytes

    threshold = parse_bytes(value) if isinstance(value, str) else int(value)

    def apply(nbytes):
        if client is None:
            set_mmap_threshold(nbytes)
            return
        try:
            client.run(set_mmap_threshold, nbytes)
        except Exception:  # pragma: no cover - a worker that cannot take it still computes
            pass

    apply(threshold)
    try:
        yield
    finally:
        apply(ADAPTIVE_CEILING)


def to_device(x: np.ndarray, device: str):
    """Move a host array to ``device`` (no-op on "cpu")."""
    return x if device == "cpu" else get_namespace("gpu").asarray(x)


def to_host(x) -> np.ndarray:
    """Move an array to host memory as numpy."""
    if isinstance(x, np.ndarray):
        return x
    return x.get()
