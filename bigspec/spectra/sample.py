"""Sample random principal submatrices, take their eigenvalues on the workers, decompress.

From a store, the samples are disjoint contiguous diagonal blocks of the (randomly
ordered) matrix, and only their tiles are read. From ``kernel, X``, each sample is a seeded
random subset of the data whose kernel block is formed on a worker; the full matrix is
never formed.
"""

from __future__ import annotations

import math
import warnings


import numpy as np

from ..backend import check_device, get_namespace, to_host
from ..errors import ArgumentError, arg
from ..validate import check_count
from ..sampling import RandomOrderWarning, as_float64, bound_kernel, diagonal_blocks, on_kernel_block, store_layout, warn_if_unshuffled  # noqa: F401  (RandomOrderWarning: its old home)
from .free import DecompressionWarning, InvalidSpectrumError, free_decompress
from .operator import MIN_LEVEL, WIDE_DECADES, held_out, held_out_bulk, kernel_decompress, level_means, nested_eigvalsh

#: regimes of :func:`spectrum` (``"kernel"`` needs the nested samples only it computes)
REGIMES = ("auto", "bulk", "heavy-tailed", "kernel")


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
        Samples (data points) per sampled block: rows of a matrix, except for a kernel with d
        outputs per data point held in full (an empirical NTK from :func:`bigspec.form`, rows
        sample-major), whose blocks are whole data points of d rows each. Default:
        ``min(n // n_samples, 4096)``.
    n_samples : int
        Disjoint samples, pooled into one fit.
    size : int, optional
        Data points to decompress to (default: all n of the matrix).
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
    regime : {"auto", "kernel", "bulk", "heavy-tailed"}
        ``"kernel"``: the kernel-operator decompression for spectra spanning decades (kernel
        matrices, NTKs; :mod:`bigspec.spectra.operator`): each sample's nested sub-blocks of
        1/2, 1/4, ... its rows are diagonalized too (about 1/3 more work) and the operator's
        eigenvalues are fitted across sizes. ``"bulk"`` / ``"heavy-tailed"``: free
        decompression, as in :func:`bigspec.free_decompress`. ``"auto"``: for a positive
        spectrum, whichever of kernel and bulk predicts the samples' own spectrum better from
        their quarters (the held-out errors, in decades, are in
        ``diagnostics["held_out_by_regime"]``); otherwise free decompression's own choice.
    shift, scale, degree, support, damping, glue, grid, delta, atom_tol :
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
    >>> X = np.random.default_rng(0).uniform(size=(800, 3))
    >>> r = bigspec.spectrum(kernel="matern", X=X, sample_size=200, n_samples=2, nu=0.5, lengthscale=0.5)
    >>> r.size, r.sample_size, r.n_samples, r.settings["regime"]
    (800, 200, 2, 'kernel')
    >>> bool(r.diagnostics["held_out_scaled"] < 0.1)    # decades: predicting the samples from their quarters
    True
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
    if regime not in REGIMES:
        raise ArgumentError(f"unknown {arg('regime')} {regime!r}; use one of {', '.join(map(repr, REGIMES))}")
    nested = regime in ("auto", "kernel")
    decompress = dict(regime="auto" if regime == "kernel" else regime, shift=shift, scale=scale, degree=degree,
                      support=support, damping=damping, glue=glue, grid=grid, delta=delta, atom_tol=atom_tol)
    from .free import _check_options

    _check_options(damping, decompress["regime"], glue, shift, scale, degree, grid, delta, atom_tol, support)

    if A is not None:
        from ..matrix import as_matrix

        if kernel_params:
            raise TypeError(f"spectrum() got unexpected keyword argument(s) {', '.join(sorted(kernel_params))}: "
                            f"kernel parameters apply with kernel= and X=")
        m = as_matrix(A, triangle=triangle, missing_chunks=missing_chunks, storage_options=storage_options,
                      client=client)
        ms = m.store
        # a store of K (x) I_d holds K, whose spectrum it has (d-fold); one of an NTK with d outputs
        # per sample held in full is sampled in whole samples of d rows; sizes count samples
        rows, kron = store_layout(ms, m.n)
        n = m.n // rows
        warn_if_unshuffled(ms, "the density")
        sample_size = check_sample_size(sample_size, n, n_samples)
        spans = [(j * sample_size * rows, (j + 1) * sample_size * rows) for j in range(n_samples)]
        blocks = diagonal_blocks(m, spans, client)
        extra = (device, rows) if nested else (device,)
        tasks = [dask.delayed(nested_eigvalsh if nested else _eigvalsh)(blk, *extra) for blk in blocks]
        source = ms.url if ms is not None else f"{m.kind} array"
        n_parameters = ((ms.attrs.get("kernel") or {}).get("params") or {}).get("n_parameters") if ms else None
    else:
        k, Xa, data = bound_kernel(kernel, X, kernel_params)
        n = int(Xa.shape[0])
        sample_size = check_sample_size(sample_size, n, n_samples)
        order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(n)
        k_key = dask.delayed(k, pure=True)
        rows = k.rows_per_sample()     # matrix rows per data point (K (x) I_d stores K: 1)
        extra = (device, rows) if nested else (device,)
        tasks = [dask.delayed(on_kernel_block)(nested_eigvalsh if nested else _eigvalsh, k_key,
                                               data[np.sort(order[j * sample_size:(j + 1) * sample_size])], device,
                                               *extra)
                 for j in range(n_samples)]
        source = f"kernel {k.name}"
        kron = k.n_outputs if k.kron_identity else 1
        n_parameters = (k.spec().get("params") or {}).get("n_parameters")
    with Runner(client, progress=progress, label="bigspec spectrum", unit="samples", total=n_samples,
                interrupted=lambda: "no spectrum was computed; a spectrum writes nothing, so run it again") as runner:
        eigs = runner.compute(tasks, tick=True)
    # eigenvalue arrays count matrix rows; sizes count samples (x rows per sample)
    size = n if size is None else int(size)
    if nested:
        res = decompress_nested(eigs, size * rows, sample_size * rows, regime, decompress, seed, source)
    else:
        res = free_decompress(eigs, size * rows, sample_size=sample_size * rows, seed=seed, source=source,
                              **decompress)
    import dataclasses

    trace_se = trace_standard_error(eigs, nested, n * rows if size == n else None, sample_size * rows * n_samples)
    scale_f = float(decompress["scale"]) if np.ndim(decompress["scale"]) == 0 else 1.0
    # sizes of the result count matrix rows; rows_per_sample turns them back into data points
    null = _null_fraction(n_parameters, size * rows, sample_size * rows, decompress["shift"])
    return dataclasses.replace(res, kron_outputs=int(kron), settings={**res.settings, "rows_per_sample": int(rows)},
                               diagnostics={**res.diagnostics, "trace_se": None if trace_se is None else
                                            float(kron * size * rows * abs(scale_f) * trace_se[0]),
                                            "trace_dof": None if trace_se is None else trace_se[1],
                                            "rank_bound": None if null is None else int(n_parameters),
                                            "null_fraction": null})


def _null_fraction(n_parameters, N: int, m: int, shift) -> float | None:
    """The fraction of eigenvalues an empirical NTK (``J J^T``, J of ``n_parameters`` columns) of
    ``N`` rows has at exactly zero (+ ``shift``): at least ``1 - P / N`` where ``P < N``; None
    otherwise. Warns (:class:`DecompressionWarning`): blocks of ``m <= P`` rows have full rank,
    so a density fitted to them cannot see that atom."""
    if not n_parameters or int(n_parameters) >= N:
        return None
    P = int(n_parameters)
    frac = 1.0 - P / N
    where = "0" if not np.ndim(shift) and float(shift) == 0 else "the shift"
    seen = (f"the sampled blocks ({m} rows, at most {P} of rank) show it only in part" if m > P else
            f"the sampled blocks ({m} rows <= {P}) have full rank and do not show it")
    warnings.warn(f"the matrix is J J^T with J of {P:,} parameter columns and {N:,} rows: its rank is at most "
                  f"{P:,}, so at least {frac:.1%} of its eigenvalues are exactly at {where}; {seen}, and the "
                  f"density, its quantiles below {frac:.1%} and their intervals do not account for that atom",
                  DecompressionWarning, stacklevel=3)
    return frac


def trace_standard_error(eigs, nested: bool, n_rows: int | None, sampled_rows: int) -> tuple[float, int] | None:
    """(standard error of the mean diagonal entry, degrees of freedom) from the samples.

    Rows are in random order, so the means of disjoint blocks are independent estimates of the
    matrix's mean diagonal entry: the smallest nested sub-blocks of every sample (the kernel
    regime's many small blocks), else the samples themselves. ``n_rows`` (the whole matrix,
    when the result describes it) adds the finite-population correction. None with one block.
    """
    if nested:
        m = min(set.intersection(*[set(d) for d in eigs]))
        means = np.concatenate([np.asarray(d[m]).sum(axis=1) / m for d in eigs])
    else:
        means = np.array([float(np.mean(e)) for e in eigs])
    if means.size < 2:
        return None
    se = float(np.std(means, ddof=1) / np.sqrt(means.size))
    if n_rows:
        se *= math.sqrt(max(1.0 - sampled_rows / n_rows, 0.0))
    return se, int(means.size - 1)


def check_counts(sample_size, n_samples) -> int:
    """``n_samples`` (an integer >= 1) and ``sample_size`` (None or an integer), before n is known."""
    check_count(n_samples, "n_samples", low=None, allow_none=True)    # the type here, the range below
    check_count(sample_size, "sample_size", low=None, allow_none=True)
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




def decompress_nested(per_sample, size, sample_size, regime, decompress, seed, source):
    """Decompress from nested sample eigenvalues: the kernel regime, or (``"auto"``) whichever of
    it and bulk free decompression predicts the samples' own spectrum from their quarters better."""
    eigs = [d[max(d)][0] for d in per_sample]
    opts = {k: v for k, v in decompress.items() if k not in ("regime",)}
    if regime == "kernel":
        return kernel_decompress(per_sample, size, scale=opts["scale"], shift=opts["shift"], grid=opts["grid"],
                                 atom_tol=opts["atom_tol"], seed=seed, source=source)
    pooled = opts["scale"] * np.concatenate(eigs)
    top = float(np.max(np.abs(pooled)))
    positive = top > 0 and float(pooled.min()) >= -1e-8 * top
    equal = float(pooled.max() - pooled.min()) <= opts["atom_tol"] * top
    if not positive or equal:
        return free_decompress(eigs, size, sample_size=sample_size, seed=seed, source=source, **decompress)
    mean = float(pooled.mean())
    scaled = [{m: opts["scale"] * v for m, v in d.items()} for d in per_sample]
    # both measured on the spectrum the result describes (shift added, rounding below atom_tol as 0),
    # as the kernel regime reports its own
    errors = {"kernel": held_out(level_means(scaled), mean, opts["atom_tol"], offset=opts["shift"]),
              "bulk": held_out_bulk(per_sample, opts["scale"], opts["shift"], opts["atom_tol"])}
    known = {k: v for k, v in errors.items() if v is not None}
    if known.get("kernel") is not None and (known.get("bulk") is None or known["kernel"] <= known["bulk"]):
        reason = (f"held-out error {known['kernel']:.3g} decades in the kernel regime"
                  + (f" against {known['bulk']:.3g} in the bulk regime" if "bulk" in known else ""))
        return kernel_decompress(per_sample, size, scale=opts["scale"], shift=opts["shift"], grid=opts["grid"],
                                 atom_tol=opts["atom_tol"], seed=seed, source=source, reason=reason,
                                 held_out_by_regime=errors)
    res = free_decompress(eigs, size, sample_size=sample_size, seed=seed, source=source,
                          **{**decompress, "regime": "bulk" if "bulk" in known else "auto"})
    if "bulk" in known:
        import dataclasses

        why = f"held-out error {known['bulk']:.3g} decades in the bulk regime" + (
            f" against {known['kernel']:.3g} in the kernel regime" if "kernel" in known else "")
        issued = []
        if errors["kernel"] is None and known["bulk"] > WIDE_DECADES:
            issued.append(f"the kernel regime's held-out check needs samples of at least {8 * MIN_LEVEL} rows (got "
                          f"{max(per_sample[0])}), so bulk free decompression was used, whose held-out error is "
                          f"{known['bulk']:.3g} decades: for a kernel or NTK spectrum take larger samples")
            warnings.warn(issued[0], DecompressionWarning, stacklevel=3)
        res = dataclasses.replace(res, diagnostics={
            **res.diagnostics, "held_out_by_regime": errors, "regime_reason": "auto: " + why,
            "warnings": list(res.diagnostics.get("warnings", [])) + issued})
    return res
