"""Sample random principal submatrices, take their eigenvalues on the workers, decompress.

From a store, the samples are disjoint contiguous diagonal blocks of the (randomly
ordered) matrix, and only their tiles are read. From ``kernel, X``, each sample is a seeded
random subset of the data whose kernel block is formed on a worker; the full matrix is
never formed.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np

from ..backend import check_device, get_namespace, to_host
from .free import InvalidSpectrumError, free_decompress


def _eigvalsh_block(block, device: str) -> np.ndarray:
    xp = get_namespace(device)
    a = xp.asarray(np.asarray(block, dtype=np.float64))
    return np.sort(to_host(xp.linalg.eigvalsh(a)))


def _eigvalsh_kernel(kernel, data, device: str) -> np.ndarray:
    xp = get_namespace(device)
    x = xp.asarray(data)
    return np.sort(to_host(xp.linalg.eigvalsh(xp.asarray(kernel.block(x, x, diagonal=True), dtype=xp.float64))))


def _compute(tasks, client):
    import dask

    if client is None:
        from ..cluster import current_client

        client = current_client()
    if client is not None:
        return client.compute(tasks, sync=True)
    return list(dask.compute(*tasks, scheduler="threads"))


def spectrum(A=None, *, kernel=None, X=None, sample_size=None, n_samples=1, size=None, seed=0, client=None,
             device="cpu", storage_options=None, triangle=None, missing_chunks="error", **options):
    """Eigenvalue density of a matrix too large to diagonalize, from sampled principal submatrices.

    Parameters
    ----------
    A : str, os.PathLike, zarr.Group, MatrixStore, or numpy / dask / zarr array, optional
        A store written by :func:`bigspec.form` (rows in random order) or
        :func:`bigspec.from_array`, a ``.npy`` file, a zarr array or an in-memory array (whose
        rows are taken to be in random order: permute them first if they are not), validated
        like every matrix input (:func:`bigspec.matrix.as_matrix`). Samples are its disjoint
        diagonal blocks.
    kernel, X : optional
        Instead of a store: a kernel (name or instance) and data. Each sample is a seeded
        random subset of ``sample_size`` data points; only its block is formed.
    sample_size : int
        Rows (data points, for ``kernel, X``) per sample. Default: ``min(n // n_samples, 4096)``.
    n_samples : int
        Disjoint samples, pooled into one fit.
    size : int, optional
        Size to decompress to (default: the full matrix, n).
    seed : int
        Seeds the subsets (``kernel, X``); recorded in the result.
    client : distributed.Client, optional
        Default: the current client, else Dask's threaded scheduler.
    device : {"cpu", "gpu"}
        ``"gpu"`` runs eigvalsh (and the kernel block) with cupy.
    triangle, missing_chunks :
        For array inputs, as in :func:`bigspec.logdet`.
    **options
        Passed to :func:`free_decompress` (``degree``, ``glue``, ``grid``, ``support``...).

    Returns
    -------
    SpectrumResult

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> X = np.random.default_rng(0).standard_normal((600, 4))
    >>> r = bigspec.spectrum(kernel="rbf", X=X, sample_size=150, n_samples=2, lengthscale=2.0)
    >>> r.size, r.sample_size, r.n_samples, r.settings["regime"]
    (600, 150, 2, 'heavy-tailed')
    """
    import dask

    device = check_device(device)
    kernel_params = {k: options.pop(k) for k in list(options) if k not in _DECOMPRESS_OPTIONS}
    if (A is None) == (kernel is None):
        raise TypeError("pass either a store A or kernel= and X=, not both (and not neither)")
    n_samples = int(n_samples)
    if n_samples < 1:
        raise InvalidSpectrumError(f"n_samples must be >= 1 (disjoint diagonal blocks to sample), got {n_samples}")

    if A is not None:
        from ..matrix import as_matrix

        if kernel_params:
            raise TypeError(f"unexpected options {sorted(kernel_params)}")
        m = as_matrix(A, triangle=triangle, missing_chunks=missing_chunks, storage_options=storage_options)
        n = m.n
        ms = m.store
        perm = ms.attrs.get("permutation") if ms is not None else None
        if isinstance(perm, dict) and not perm.get("shuffle", True):
            warnings.warn(
                f"store {ms.url} was formed with shuffle=False: its "
                "diagonal blocks are not random samples and the density may be biased; form it with shuffle=True",
                RandomOrderWarning, stacklevel=2)
        sample_size = check_sample_size(sample_size, n, n_samples)
        spans = [(j * sample_size, (j + 1) * sample_size) for j in range(n_samples)]
        if m.kind == "numpy":   # in memory: slice here, so a task carries its block, not the matrix
            blocks = [m.block(r0, r1, r0, r1) for r0, r1 in spans]
        else:                   # stores, zarr and dask arrays: the workers read their blocks
            big = m.to_dask(ms.tile_size if ms is not None else min(sample_size, 4096))
            blocks = [big[r0:r1, r0:r1] for r0, r1 in spans]
        tasks = [dask.delayed(_eigvalsh_block)(blk, device) for blk in blocks]
        source = ms.url if ms is not None else f"{m.kind} array"
        rows = 1  # a store holds K: K (x) I_d has K's spectrum, and sizes count K's rows
    else:
        from ..form import _check_finite, _load_data
        from ..kernels import get_kernel

        k = get_kernel(kernel, **kernel_params)
        Xa = _load_data(X)
        k.check_data(Xa)
        _check_finite(Xa)
        n = int(Xa.shape[0])
        sample_size = check_sample_size(sample_size, n, n_samples)
        order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(n)
        data = np.asarray(k.prepare(np.asarray(Xa, dtype=np.float64)))
        k_key = dask.delayed(k, pure=True)
        tasks = [dask.delayed(_eigvalsh_kernel)(k_key, data[np.sort(order[j * sample_size:(j + 1) * sample_size])],
                                                device) for j in range(n_samples)]
        source = f"kernel {k.name}"
        rows = 1 if k.kron_identity else k.n_outputs
    eigs = _compute(tasks, client)
    size = n if size is None else int(size)
    # eigenvalue arrays count matrix rows; sizes count samples (x rows per sample)
    return free_decompress(eigs, size * rows, sample_size=sample_size * rows, seed=seed, source=source, **options)


# options of free_decompress that spectrum() passes through (the rest go to the kernel)
_DECOMPRESS_OPTIONS = set(inspect.signature(free_decompress).parameters) - {"eigenvalues", "size", "sample_size",
                                                                            "seed", "source"}


def check_sample_size(sample_size, n, n_samples):
    """The rows per sample for ``n_samples`` disjoint diagonal blocks of an n x n matrix (InvalidSpectrumError)."""
    if n == 1 and n_samples == 1 and sample_size in (None, 1):
        return 1                      # the whole 1 x 1 matrix: its spectrum is exact
    if n_samples > n // 2:
        raise InvalidSpectrumError(
            f"n_samples={n_samples} disjoint samples of at least 2 rows need {2 * n_samples} rows, but the matrix has "
            f"{n}; use n_samples <= {max(n // 2, 1)}" if n >= 2 else
            f"the matrix has {n} row(s): a spectrum needs samples of at least 2 rows")
    if sample_size is None:
        sample_size = min(n // n_samples, 4096)
    sample_size = int(sample_size)
    if sample_size < 2:
        raise InvalidSpectrumError(f"sample_size must be >= 2, got {sample_size}")
    if sample_size * n_samples > n:
        raise InvalidSpectrumError(
            f"{n_samples} disjoint samples of {sample_size} rows need {sample_size * n_samples} rows, but the matrix "
            f"has {n}; lower sample_size to at most {n // n_samples}"
            + (f" or n_samples to at most {n // sample_size}" if n // sample_size >= 1 else ""))
    return sample_size


class RandomOrderWarning(UserWarning):
    """The store's rows are not in random order, so its diagonal blocks are not random samples."""
