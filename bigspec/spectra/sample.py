"""Sample random principal submatrices, take their eigenvalues on the workers, decompress.

From a store, the samples are disjoint contiguous diagonal blocks of the (randomly
ordered) matrix, and only their tiles are read. From ``kernel, X``, each sample is a seeded
random subset of the data whose kernel block is formed on a worker; the full matrix is
never formed.
"""

from __future__ import annotations


import numpy as np

from ..backend import check_device, get_namespace, to_host
from ..errors import ArgumentTypeError, arg
from ..sampling import RandomOrderWarning, as_float64, bound_kernel, diagonal_blocks, on_kernel_block, warn_if_unshuffled  # noqa: F401  (RandomOrderWarning: its old home)
from .free import InvalidSpectrumError, free_decompress


def _eigvalsh(block, device: str) -> np.ndarray:
    """Sorted eigenvalues (float64, host) of one sampled block, computed on ``device``."""
    return np.sort(to_host(get_namespace(device).linalg.eigvalsh(as_float64(block, device))))


def spectrum(A=None, *, kernel=None, X=None, sample_size=None, n_samples=1, size=None, seed=0, client=None,
             device="cpu", progress=None, storage_options=None, triangle=None, missing_chunks="error",
             regime="auto", shift=0.0, scale=1.0, degree=None, support=None, damping="jackson", glue="auto",
             grid=500, delta=1e-9, atom_tol=1e-9, **kernel_params):
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
    progress : bool, optional
        Progress bar over the samples (default: on a terminal).
    triangle, missing_chunks :
        For array inputs, as in :func:`bigspec.logdet`.
    regime, shift, scale, degree, support, damping, glue, grid, delta, atom_tol :
        The decompression's options, as in :func:`bigspec.free_decompress`.
    **kernel_params
        Parameters of a kernel given by name (with ``kernel=`` only).

    Returns
    -------
    SpectrumResult

    Raises
    ------
    InvalidSpectrumError
        ``sample_size`` / ``n_samples`` do not fit the matrix.
    TypeError
        Both or neither of ``A`` and ``kernel``, or kernel parameters without ``kernel=``.
    Interrupted
        Ctrl-C (nothing is kept: a spectrum writes nothing).

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> X = np.random.default_rng(0).standard_normal((600, 4))
    >>> r = bigspec.spectrum(kernel="rbf", X=X, sample_size=150, n_samples=2, lengthscale=2.0)
    >>> r.size, r.sample_size, r.n_samples, r.settings["regime"]
    (600, 150, 2, 'heavy-tailed')
    """
    import dask

    from ..cluster import resolve_client
    from ..progress import want_progress
    from ..runner import Runner
    from ..validate import check_seed

    device = check_device(device)
    want_progress(progress)
    seed = check_seed(seed)
    client = resolve_client(client)
    if (A is None) == (kernel is None):
        raise TypeError("pass either a matrix A or kernel= and X=, not both (and not neither)")
    n_samples = check_counts(sample_size, n_samples)
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))):
        raise TypeError(f"size must be an integer (the order of the matrix to decompress to), got {size!r}")
    decompress = dict(regime=regime, shift=shift, scale=scale, degree=degree, support=support, damping=damping,
                      glue=glue, grid=grid, delta=delta, atom_tol=atom_tol)

    if A is not None:
        from ..matrix import as_matrix

        if kernel_params:
            raise TypeError(f"spectrum() got unexpected keyword argument(s) {', '.join(sorted(kernel_params))}: "
                            f"kernel parameters apply with kernel= and X=")
        m = as_matrix(A, triangle=triangle, missing_chunks=missing_chunks, storage_options=storage_options,
                      client=client)
        n = m.n
        ms = m.store
        warn_if_unshuffled(ms, "the density")
        sample_size = check_sample_size(sample_size, n, n_samples)
        spans = [(j * sample_size, (j + 1) * sample_size) for j in range(n_samples)]
        blocks = diagonal_blocks(m, spans, client)
        tasks = [dask.delayed(_eigvalsh)(blk, device) for blk in blocks]
        source = ms.url if ms is not None else f"{m.kind} array"
        rows = 1  # a store holds K: K (x) I_d has K's spectrum, and sizes count K's rows
        from ..form import kron_outputs

        kron = kron_outputs(ms) if ms is not None else 1
    else:
        k, Xa, data = bound_kernel(kernel, X, kernel_params)
        n = int(Xa.shape[0])
        sample_size = check_sample_size(sample_size, n, n_samples)
        order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(n)
        k_key = dask.delayed(k, pure=True)
        tasks = [dask.delayed(on_kernel_block)(_eigvalsh, k_key, data[np.sort(order[j * sample_size:(j + 1) *
                                                                                   sample_size])], device, device)
                 for j in range(n_samples)]
        source = f"kernel {k.name}"
        rows = k.rows_per_sample()     # matrix rows per data point (K (x) I_d stores K: 1)
        kron = k.n_outputs if k.kron_identity else 1
    with Runner(client, progress=progress, label="bigspec spectrum", unit="samples", total=n_samples,
                interrupted=lambda: "no spectrum was computed; a spectrum writes nothing, so run it again") as runner:
        eigs = runner.compute(tasks, tick=True)
    # eigenvalue arrays count matrix rows; sizes count samples (x rows per sample)
    size = n if size is None else int(size)
    res = free_decompress(eigs, size * rows, sample_size=sample_size * rows, seed=seed, source=source, **decompress)
    if kron != 1:
        import dataclasses

        res = dataclasses.replace(res, kron_outputs=int(kron))
    return res


def check_counts(sample_size, n_samples) -> int:
    """``n_samples`` (an integer >= 1) and ``sample_size`` (None or an integer), before n is known."""
    for name, value in (("n_samples", n_samples), ("sample_size", sample_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ArgumentTypeError(f"{arg(name)} must be an integer, got {value!r}")
    if n_samples is None or int(n_samples) < 1:
        raise InvalidSpectrumError(f"{arg('n_samples')} must be at least 1 (disjoint diagonal blocks to sample), got "
                                   f"{n_samples}")
    return int(n_samples)


def check_sample_size(sample_size, n, n_samples):
    """The rows per sample for ``n_samples`` disjoint diagonal blocks of an n x n matrix.

    Raises
    ------
    InvalidSpectrumError
        The samples do not fit the matrix; the message says what would.
    ArgumentTypeError
        ``sample_size`` or ``n_samples`` is not an integer.
    """
    n_samples = check_counts(sample_size, n_samples)
    if n == 1 and n_samples == 1 and sample_size in (None, 1):
        return 1                      # the whole 1 x 1 matrix: its spectrum is exact
    if n < 2:
        raise InvalidSpectrumError(f"the matrix has {n} row(s): a spectrum needs samples of at least 2 rows")
    if n_samples > n // 2:
        raise InvalidSpectrumError(
            f"{arg('n_samples', n_samples)} disjoint samples of at least 2 rows need {2 * n_samples} rows, but the "
            f"matrix has {n}; use at most {arg('n_samples', n // 2)}")
    if sample_size is None:
        sample_size = min(n // n_samples, 4096)
    sample_size = int(sample_size)
    if sample_size < 2:
        raise InvalidSpectrumError(f"{arg('sample_size')} must be at least 2, got {sample_size}")
    if sample_size * n_samples > n:
        fixes = [arg("sample_size", n // n_samples)]
        if n // sample_size >= 1:
            fixes.append(arg("n_samples", n // sample_size))
        raise InvalidSpectrumError(
            f"{n_samples} disjoint sample{'s' if n_samples > 1 else ''} of {sample_size} rows "
            f"need{'' if n_samples > 1 else 's'} "
            f"{sample_size * n_samples} rows, but the matrix has {n}; use " + " or ".join(fixes) + " or less")
    return sample_size


