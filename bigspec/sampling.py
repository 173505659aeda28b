"""Sampled principal submatrices: the diagonal blocks estimators read, or form from a kernel.

The estimators (``spectrum``, ``logdet(method="flodance" | "spectrum")``) see a matrix only
through principal submatrices of samples in random order: contiguous diagonal blocks of a
store (whose rows :func:`bigspec.form` shuffled), or blocks a kernel forms from subsets of
its data on the workers (the full matrix never exists). This module makes those task inputs.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import BigspecWarning


class RandomOrderWarning(BigspecWarning):
    """The store's rows are not in random order, so its diagonal blocks are not random samples."""


def warn_if_unshuffled(ms, what: str, stacklevel: int = 3) -> None:
    """Warn when a store was formed with ``shuffle=False`` (its blocks are then not random samples)."""
    perm = ms.attrs.get("permutation") if ms is not None else None
    if isinstance(perm, dict) and not perm.get("shuffle", True):
        warnings.warn(f"store {ms.url} was formed with shuffle=False: its diagonal blocks are not random samples "
                      f"and {what} may be biased; form it with shuffle=True", RandomOrderWarning,
                      stacklevel=stacklevel + 1)


def store_layout(ms, n: int) -> tuple[int, int]:
    """(rows per sample, Kronecker outputs) of an n-row matrix, from its store's kernel record.

    A store of a Kronecker kernel ``K (x) I_d`` holds K only: one row per sample, d Kronecker
    outputs. A store of a kernel with d outputs per sample held in full (an empirical NTK, rows
    sample-major) has d rows per sample, so samples are blocks of whole samples. Anything else
    (no record, or n not a multiple of d): one row per sample.
    """
    spec = (ms.attrs.get("kernel") or {}) if ms is not None else {}
    d = int(spec.get("n_outputs", 1) or 1)
    if spec.get("kron_identity"):
        return 1, d
    return (d if d > 1 and n % d == 0 else 1), 1


def diagonal_blocks(m, spans, client) -> list:
    """``A[r0:r1, r0:r1]`` for each ``(r0, r1)`` in ``spans``, as task inputs.

    An in-memory array is sliced here (a task carries its block, not the matrix); stores, zarr
    and dask arrays are read by the workers, which must see a local store
    (:func:`bigspec.cluster.require_visible`).
    """
    if m.kind == "numpy":
        return [m.block(r0, r1, r0, r1) for r0, r1 in spans]
    ms = m.store
    if ms is not None and ms.local_path is not None:
        from .cluster import require_visible

        require_visible(client, ms.local_path, f"the store {ms.url}",
                        "put the store on storage every worker mounts at the same path, or use a URL")
    widest = max((r1 - r0 for r0, r1 in spans), default=1)
    big = m.to_dask(ms.tile_size if ms is not None else min(widest, 4096))
    return [big[r0:r1, r0:r1] for r0, r1 in spans]


def as_float64(block, device: str):
    """A sampled block as a fresh float64 array on ``device`` (it may arrive as numpy, dask or cupy)."""
    from .backend import get_namespace

    xp = get_namespace(device)
    if hasattr(block, "__cuda_array_interface__"):
        return block.astype(xp.float64)
    return xp.asarray(np.array(block, dtype=np.float64))


def kernel_block(kernel, data, device: str):
    """The block ``kernel(data, data)`` formed on the task's device (numpy or cupy)."""
    from .backend import get_namespace

    x = get_namespace(device).asarray(data)
    return kernel(x, x, diagonal=True)


def on_kernel_block(fn, kernel, data, device, *args):
    """``fn(kernel_block(kernel, data, device), *args)``: a task that forms its block itself."""
    return fn(kernel_block(kernel, data, device), *args)


def bound_kernel(kernel, X, kernel_params):
    """(bound kernel, data as given, prepared float64 data): validated as :func:`bigspec.form` does."""
    from .form import _check_finite, _load_data
    from .kernels import get_kernel

    k = get_kernel(kernel, **kernel_params)
    Xa = _load_data(X)
    k = k.bind(Xa)
    _check_finite(Xa)
    return k, Xa, np.asarray(k.prepare(np.asarray(Xa, dtype=np.float64)))
