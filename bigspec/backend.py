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

import numpy as np

from .errors import BackendUnavailableError

DEVICES = ("cpu", "gpu")


def check_device(device: str) -> str:
    """Validate ``device`` ("cpu" or "gpu") and, for "gpu", that cupy and a device exist."""
    if device not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
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


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def trim_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``); False off glibc.

    Freed tiles otherwise stay on glibc's heaps (its mmap threshold adapts up to 32 MiB), and a
    budgeted factorization's RSS reached 1.5x its working set. Unlike ``mallopt``, which would
    change how the user's whole process allocates for the rest of its life, a trim changes
    nothing after it returns.
    """
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


def release_freed_memory(client=None) -> None:
    """After a super-panel out of core: trim this process's heap and (with a client) the workers'."""
    trim_heap()
    if client is not None:
        try:
            client.run(trim_heap)
        except Exception:  # pragma: no cover - a worker that cannot trim still computes
            pass


def to_device(x: np.ndarray, device: str):
    """Move a host array to ``device`` (no-op on "cpu")."""
    return x if device == "cpu" else get_namespace("gpu").asarray(x)


def to_host(x) -> np.ndarray:
    """Move an array to host memory as numpy."""
    if isinstance(x, np.ndarray):
        return x
    return x.get()
