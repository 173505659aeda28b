"""Log-determinants: exact (tiled LDL^T / Cholesky) and estimated (FLODANCE, SLQ, spectral), one verb."""

from __future__ import annotations

EXACT_METHODS = ("ldl", "cholesky")
ESTIMATE_METHODS = ("flodance", "slq", "spectrum")
METHODS = EXACT_METHODS + ESTIMATE_METHODS

#: the options each method takes besides the common ones (shift, scale, client, device,
#: progress, storage_options, triangle, missing_chunks)
METHOD_OPTIONS = {
    "ldl": ("memory", "tile_size", "checkpoint", "overwrite", "dry_run", "plan"),
    "cholesky": ("memory", "tile_size", "checkpoint", "overwrite", "dry_run", "plan"),
    "flodance": ("sample_size", "n_ladders", "seed", "memory", "tile_size", "pseudo_tol"),
    "slq": ("probes", "lanczos_steps", "seed", "reorthogonalize", "tile_size"),
    "spectrum": ("sample_size", "n_samples", "seed"),
}
#: methods that take ``kernel=, X=`` instead of a matrix (the matrix is never formed)
IMPALPABLE = ("flodance", "spectrum")


def logdet(A=None, *, method=None, kernel=None, X=None, memory=None, tile_size=None, shift=0.0, scale=1.0,
           client=None, checkpoint=None, overwrite=None, device="cpu", progress=None, dry_run=None,
           storage_options=None, triangle=None, missing_chunks="error", sample_size=None, n_ladders=None,
           seed=None, pseudo_tol=None, probes=None, lanczos_steps=None, reorthogonalize=None, n_samples=None,
           cross_check=None, plan=None, **kernel_params):
    """Log-determinant of ``scale * A + diag(shift)``: exact, or estimated from a fraction of the matrix.

    One verb for every method: the exact tiled factorizations (``"ldl"``, ``"cholesky"``) and
    three estimators, picked by budget (science and costs in the Notes). An estimate is an
    :class:`~bigspec.determinant.estimate.EstimateResult`: the value, an ``interval`` whose
    meaning it states, the method's diagnostics and its ``cost``.

    Parameters
    ----------
    A : MatrixStore, str, os.PathLike, zarr.Group, or numpy / dask / zarr array, optional
        The matrix: a store (path or fsspec URL) written by :func:`bigspec.from_array` or
        :func:`bigspec.form`, a ``.npy`` file or zarr array (or its path), or an array. Every
        kind is validated the same way first (:func:`bigspec.matrix.as_matrix`: square,
        finite, symmetric, no zarr chunk left unwritten). Estimators take its rows to be in
        random order (``form`` shuffles them).
    method : {"ldl", "cholesky", "flodance", "slq", "spectrum"}
        ``"ldl"`` (default): LDL^T with Bunch-Kaufman pivoting, for symmetric, possibly
        indefinite or semidefinite matrices; pivoting starts inside each tile and reaches
        across many tiles (the whole panel where memory allows) where the element growth or a
        zero pivot shows it must. ``"cholesky"``: SPD only, fastest. Both compute in float64,
        whatever the storage dtype.
        ``"flodance"``: exact log-determinants of the leading ``sample_size``-sample blocks
        (one factorization each), a scaling law fitted to them and extrapolated to n
        (Ameli et al. 2025, arXiv:2503.04424); the model and its window are chosen by held-out
        extrapolation. ``"slq"``: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017),
        each Lanczos step one pass over the stored tiles. ``"spectrum"``: n times the integral
        of log|x| against the free-decompressed density of :func:`bigspec.spectrum` (Ameli et
        al. 2025, arXiv:2506.11994).
    kernel, X : optional
        For ``"flodance"`` and ``"spectrum"`` (name one: without a matrix there is no exact
        method), instead of ``A``: a kernel (name or instance) and its data (n samples); only
        the sampled blocks are formed, on the workers. Kernel parameters (``depth=3``) follow
        as keywords.
    memory : "auto" or size like "4GiB"
        Exact methods: the factorization's working-set budget across all workers.
        FLODANCE: the budget for one ladder's block (above it the block is factored out of core).
    tile_size : int, optional
        Exact methods, FLODANCE and SLQ: the tile edge for array inputs; for a store it must
        match the store's tiles.
    shift, scale : float or (n,) array, float
        Work on ``scale * A + diag(shift)`` without rewriting the store (a ridge or jitter),
        for every method.
    client : distributed.Client, optional
        Default: the current client, else Dask's threaded scheduler.
    checkpoint, overwrite, dry_run :
        Exact methods: keep the factor in ``<store>/factor`` to resume; replace one made with
        other settings; return the :class:`~bigspec.determinant.plan.Plan` without computing
        (the same as :func:`bigspec.plan_logdet`).
    plan : Plan, optional
        Exact methods: run this plan of :func:`bigspec.plan_logdet` (its method, tile size,
        budget, threads and super-panel width); ``method``, ``tile_size`` and ``memory``
        may be omitted, and must agree with it where given.
    device : {"cpu", "gpu"}
        ``"gpu"`` runs the tile kernels on cupy arrays.
    triangle : {None, "lower", "upper"}, default None
        For array inputs: None checks that both triangles agree; ``"upper"`` / ``"lower"``
        reads the matrix from that triangle only.
    missing_chunks : {"error", "fill"}, default "error"
        For zarr arrays: refuse chunks that were never written, or read them as the fill value.
    sample_size : int
        ``"flodance"``: samples (data points) in each ladder; ``"spectrum"``: rows per sample.
    n_ladders : int
        ``"flodance"``: independent ladders (disjoint diagonal blocks of a store, independent
        random subsets of ``X``); their spread is part of the interval. Default: as many as
        fit, up to 8.
    seed : int
        Seeds the probes (SLQ) and the subsets of ``X`` (default 0).
    pseudo_tol : float
        ``"flodance"``: pivots below ``pseudo_tol * max|d|`` are numerical zeros; the ladder is
        then of pseudo-determinants (default ``n_rows * eps``).
    probes, lanczos_steps, reorthogonalize :
        ``"slq"``: Rademacher probes (default 64), Lanczos steps (default ``min(80, n)``) and full
        reorthogonalization (default False).
    n_samples : int
        ``"spectrum"``: disjoint samples pooled into the density (default 4).
    cross_check : {"flodance", "spectrum", "slq"}, optional
        Estimators: a second, independent estimate by this method on the same matrix (its
        own defaults, the same ``sample_size`` and ``seed`` where it takes them), reported in
        ``diagnostics["cross_check"]`` (method, sign, logabsdet, interval, seconds, whether
        the two intervals overlap; or ``refused`` with the second method's reason, also
        warned). Intervals that do not overlap mean one of the two is wrong: an
        :class:`EstimateWarning` says so with both intervals.

    Returns
    -------
    LogdetResult or EstimateResult or Plan
        Exact methods: ``sign``, ``logabsdet`` (nats), timings (seconds), I/O (bytes), pivot
        diagnostics and ``prefix_logdet``. Estimators: ``sign``, ``logabsdet``, ``interval``
        (nats) with ``interval_meaning``, ``settings``, ``diagnostics``, ``cost`` and ``plot()``.

    Raises
    ------
    InvalidMatrixError, NonFiniteError, IncompleteStoreError
        The matrix is not square, symmetric, finite or fully written.
    NotPositiveDefiniteError
        ``method="cholesky"`` met a non-positive pivot (names the row and tile).
    UnstableFactorizationError
        LDL^T needs pivoting across more columns than the memory budget allows.
    MemoryBudgetError
        The budget cannot hold one tile column.
    StoreExistsError
        The store keeps one factorization in ``factor/``, and it was made with other settings
        (method, shift, scale): pass ``overwrite=True`` to replace it, or ``checkpoint=False``
        to factor without keeping it (out of core it then spills to a temporary directory).
    ArgumentError, ArgumentTypeError
        An unknown method, an option of another method (``probes=`` with ``method="ldl"``), or
        an argument of the wrong kind or range (``sample_size`` above n, ``probes=0``).
    EstimateError
        An estimator refuses: the ladder is not in a regime it can extrapolate (the message
        names the number that shows it).

    Warns
    -----
    SingularMatrixWarning
        An exact zero pivot (log|det| = -inf), or pivots below ``n * eps`` of the largest.
    GrowthWarning
        Large element growth even with pivoting across the whole remaining matrix.
    EstimateWarning
        An estimate whose assumptions visibly fail (saturation, a pseudo-determinant, an
        unresolved quadrature); the interval is widened to match.

    Notes
    -----
    Costs for an n-row matrix: the exact methods n^3/3 flops and every entry read once (out
    of core: more, see the plan); FLODANCE ``n_ladders * (s^3/3)`` flops on blocks of
    ``s = sample_size`` rows; SLQ ``2 * probes * lanczos_steps * n^2`` flops in
    ``lanczos_steps`` passes over the matrix; the spectral estimate ``n_samples`` dense
    eigendecompositions of ``sample_size`` rows.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> A = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    >>> r = bigspec.logdet(A, tile_size=2)
    >>> bool(np.isclose(r.logabsdet, np.linalg.slogdet(A)[1]))
    True
    >>> bool(np.isclose(bigspec.logdet(A, shift=1.0).logabsdet, np.linalg.slogdet(A + np.eye(3))[1]))
    True
    >>> tuple(bigspec.logdet(np.array([[0.0, 1.0], [1.0, 1.0]]), tile_size=1))   # pivots across tiles
    (-1, 0.0)
    >>> X = np.random.default_rng(0).uniform(size=(3000, 2))
    >>> est = bigspec.logdet(kernel="matern", X=X, lengthscale=0.1, shift=1e-2, method="flodance",
    ...                      sample_size=600)
    >>> est.method, est.n, est.interval[0] < est.logabsdet < est.interval[1]
    ('flodance', 3000, True)
    """
    from ..errors import ArgumentError, ArgumentTypeError, arg

    if method is not None and not isinstance(method, str):
        raise ArgumentTypeError(f"{arg('method')} must be a string, one of {', '.join(METHODS)}; got {method!r}")
    from ..errors import kw, opt

    if method is None and plan is not None and hasattr(plan, "method"):
        method = plan.method
    if method is None and (kernel is not None or X is not None):
        raise ArgumentError(f"{kw('kernel')} and {kw('X')} never form the matrix, so its log-determinant can only be "
                            f"estimated: choose {arg('method', 'flodance')} or {arg('method', 'spectrum')}")
    method = method or None
    if method is not None and method not in METHODS:
        raise ArgumentError(f"unknown {arg('method')} {method!r}; choose one of: {', '.join(METHODS)}")
    options = dict(memory=memory, tile_size=tile_size, checkpoint=checkpoint, overwrite=overwrite, dry_run=dry_run,
                   sample_size=sample_size, n_ladders=n_ladders, seed=seed, pseudo_tol=pseudo_tol, probes=probes,
                   lanczos_steps=lanczos_steps, reorthogonalize=reorthogonalize, n_samples=n_samples, plan=plan)
    name = method or "ldl"
    check_options(name, {k: v for k, v in options.items() if v is not None})
    if (kernel is not None or X is not None or kernel_params) and name not in IMPALPABLE:
        what = "kernel parameters " + ", ".join(sorted(kernel_params)) if kernel_params and kernel is None \
            and X is None else f"{kw('kernel')} and {kw('X')}"
        raise ArgumentError(f"{what} (a matrix that is never formed) work with {arg('method', 'flodance')} or "
                            f"{arg('method', 'spectrum')}; {arg('method', name)} needs the matrix: form it first "
                            f"with " + opt("bigspec.form(kernel, X, store)", "`bigspec form KERNEL DATA STORE`"))
    common = dict(shift=shift, scale=scale, client=client, device=device, progress=progress,
                  storage_options=storage_options, triangle=triangle, missing_chunks=missing_chunks)
    given = {k: v for k, v in options.items() if v is not None}
    if cross_check is not None:
        if name not in ESTIMATE_METHODS:
            raise ArgumentError(f"{arg('cross_check')} compares two estimates; {arg('method', name)} is exact, so it "
                                f"needs no cross-check")
        if cross_check not in ESTIMATE_METHODS or cross_check == name:
            others = [m for m in ESTIMATE_METHODS if m != name]
            raise ArgumentError(f"{arg('cross_check')} must be another estimator than {arg('method', name)}: one of "
                                f"{', '.join(map(repr, others))}; got {cross_check!r}")
        if cross_check == "slq" and A is None:
            raise ArgumentError(f"{arg('cross_check', 'slq')} needs the matrix A: SLQ reads all of it, and "
                                f"{kw('kernel')} with {kw('X')} never forms it")
    # dispatched here, not in a helper: the estimators' warnings point at the caller of logdet
    if name in EXACT_METHODS:
        from .exact import exact_logdet

        if A is None:
            raise ArgumentTypeError("logdet() needs the matrix A (a store, a path or an array)")
        given.setdefault("overwrite", False)
        given.setdefault("dry_run", False)
        return exact_logdet(A, method=name, **common, **given)
    if name == "flodance":
        from .flodance import flodance_logdet

        result = flodance_logdet(A, kernel=kernel, X=X, **common, **given, **kernel_params)
    elif name == "slq":
        from .slq import slq_logdet

        if A is None:
            raise ArgumentTypeError("logdet(method='slq') needs the matrix A (a store, a path or an array)")
        result = slq_logdet(A, **common, **given)
    else:
        from .spectral import spectral_logdet

        result = spectral_logdet(A, kernel=kernel, X=X, **common, **given, **kernel_params)
    if cross_check is None:
        return result
    shared = {k: v for k, v in given.items() if k in METHOD_OPTIONS[cross_check] and k != "n_ladders"}
    if cross_check == "spectrum" and "sample_size" in shared:    # as many disjoint samples as fit, up to 4
        shared["n_samples"] = max(1, min(4, result.n // shared["sample_size"]))
    return _attach_cross_check(result, cross_check, lambda: logdet(
        A, method=cross_check, kernel=kernel, X=X, **common, **shared, **kernel_params))


def _attach_cross_check(result, method: str, run):
    """``result`` with a second method's estimate in ``diagnostics["cross_check"]`` (a warning where they disagree)."""
    import dataclasses

    from .estimate import emit

    import warnings

    from ..errors import EstimateError

    refused = None
    with warnings.catch_warnings(record=True) as caught:     # the second method's warnings, at the caller
        warnings.simplefilter("always")
        try:
            other = run()
        except EstimateError as e:                           # its refusal is a finding, not a failure of the first
            refused = e
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    if refused is not None:
        issued = list(result.warnings)
        emit(f"the cross-check by method={method!r} refused: {refused}", issued, stacklevel=4)
        return dataclasses.replace(result, warnings=tuple(issued), diagnostics={
            **result.diagnostics, "cross_check": dict(method=method, refused=str(refused))})
    overlap = bool(max(result.interval[0], other.interval[0]) <= min(result.interval[1], other.interval[1]))
    issued = list(result.warnings)
    if not overlap:
        emit(f"the {result.method} estimate {result.logabsdet:.6g} in ({result.interval[0]:.6g}, "
             f"{result.interval[1]:.6g}) and the {other.method} estimate {other.logabsdet:.6g} in "
             f"({other.interval[0]:.6g}, {other.interval[1]:.6g}) do not overlap: at least one interval misses the "
             f"log-determinant; compute it exactly (method='ldl') or raise sample_size", issued, stacklevel=4)
    check = dict(method=other.method, sign=other.sign, logabsdet=other.logabsdet, interval=tuple(other.interval),
                 interval_meaning=other.interval_meaning, seconds=other.seconds, overlap=overlap,
                 warnings=list(other.warnings))
    return dataclasses.replace(result, diagnostics={**result.diagnostics, "cross_check": check},
                               warnings=tuple(issued))


def check_options(method: str, given: dict) -> None:
    """Refuse options that ``method`` does not take, naming the method(s) that do.

    Examples
    --------
    >>> check_options("slq", {"probes": 8})
    >>> check_options("ldl", {"probes": 8})
    Traceback (most recent call last):
    ...
    bigspec.errors.ArgumentError: probes is an option of method='slq', not of method='ldl' (which takes memory, tile_size, checkpoint, overwrite, dry_run, plan)
    """
    from ..errors import ArgumentError, arg, opt

    for key in given:
        if key in METHOD_OPTIONS[method]:
            continue
        owners = [m for m in METHODS if key in METHOD_OPTIONS[m]]
        raise ArgumentError(
            f"{arg(key)} is an option of " + " or ".join(arg("method", m) for m in owners)
            + f", not of {arg('method', method)} (which takes {', '.join(arg(k) for k in METHOD_OPTIONS[method])})")


def slogdet(A, **kwargs) -> tuple[int, float]:
    """``(sign, logabsdet)`` like :func:`numpy.linalg.slogdet`; options as :func:`logdet`.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> sign, logabsdet = bigspec.slogdet(np.diag([-2.0, 3.0]))
    >>> sign, round(logabsdet, 12)
    (-1, 1.791759469228)
    """
    r = logdet(A, **kwargs)
    return r.sign, r.logabsdet


def plan_logdet(A=None, *, method=None, memory=None, tile_size=None, shift=0.0, scale=1.0, client=None,
                checkpoint=None, overwrite=False, storage_options=None, triangle=None, missing_chunks="error", n=None,
                dtype="float64", workers=1, threads=1, device="cpu", profile=None):
    """Plan the exact log-determinant of ``scale * A + diag(shift)`` without computing it.

    Planning is a verb of its own (as opt_einsum's ``contract_path`` is for ``contract``):
    the returned :class:`~bigspec.determinant.plan.Plan` says what
    :func:`bigspec.logdet` would do under this memory budget (super-panels and their width,
    tasks, flops, bytes read and written, re-reads of earlier factor columns, peak memory
    per worker), and ``bigspec.logdet(A, plan=plan)`` runs exactly that plan. Its counts
    come from the task graphs themselves, built without data. Nothing is computed, copied
    or written. ``logdet(..., dry_run=True)`` and ``bigspec logdet --dry-run`` return and
    print the same plan.

    Parameters
    ----------
    A : MatrixStore, str, os.PathLike, zarr.Group, or numpy / dask / zarr array
        The matrix, as for :func:`bigspec.logdet`.
    method : {"ldl", "cholesky"}, default bigspec.method ("ldl")
        The factorization.
    memory : "auto" or size like "16GiB" or int, default "auto"
        The working-set budget across all workers (``"auto"``: ``bigspec.memory-fraction``
        of the workers' memory).
    tile_size : int, optional
        The tile edge for array inputs; for a store it must match the store's tiles.
    shift, scale : float or (n,) array, float, default 0.0 and 1.0
        Plan for ``scale * A + diag(shift)`` (a resumable factor must match them).
    client : distributed.Client, optional
        Plan for this cluster's workers; default: the current client, else the threaded
        scheduler on this machine.
    checkpoint, overwrite : bool, optional
        As for :func:`bigspec.logdet`: keep the factor in the store (the plan then resumes
        after the columns a previous run kept), or plan to factor again from the start.
    storage_options, triangle, missing_chunks :
        As for :func:`bigspec.logdet`.
    n, dtype, workers, threads : optional
        Without ``A``: plan for a matrix of order ``n`` (``dtype`` its storage dtype; it is
        factored in float64) stored in tiles of ``tile_size`` (default: as
        :func:`bigspec.form` would choose), on ``workers`` workers of ``threads`` threads each
        sharing ``memory`` (a size, required): a job too large to run here (the 500,000-row
        NTK on 8 workers) is planned without its data.
    device : {"cpu", "gpu"}, default "cpu"
        Where the tiles are factored; it sets the default task granularity
        (``bigspec.task-granularity``: coarse "panel" tasks on GPU workers).
    profile : str, dict, path or MachineProfile, optional
        The machine whose rates predict the plan's seconds (:mod:`bigspec.perfmodel`):
        ``"calibrated"`` (measured here by ``bigspec calibrate``), a published-peak profile
        (``"h100"``, ``"cpu-node"``), a YAML file or dict of rates. Default: the dask config's
        ``bigspec.profile``, else the calibrated one if any (uncalibrated: no prediction).

    Returns
    -------
    Plan
        Its ``repr`` is the report; ``summary()`` the numbers as a dict (what
        ``--dry-run --json`` prints).

    Raises
    ------
    MemoryBudgetError
        The budget cannot hold one tile column (the message gives the minimum).
    ArgumentError, TileSizeError
        An unknown method, or a tile size that does not match the store's.

    Examples
    --------
    >>> import bigspec
    >>> from bigspec.testing import make_spd
    >>> plan = bigspec.plan_logdet(make_spd(300), method="cholesky", tile_size=50, memory="400KiB")
    >>> plan.n_panels > 1, plan.summary()["peak_memory"] <= plan.budget
    (True, True)
    >>> print(plan)                                                  # doctest: +ELLIPSIS
    exact logdet plan: n=300, tile_size=50, method=cholesky
      super-panels: ...
    >>> r = bigspec.logdet(make_spd(300), plan=plan)
    >>> r.tasks == plan.summary()["tasks"]
    True

    Without data, the 500,000-row float64 NTK on 8 workers of 16 threads sharing 512 GiB:

    >>> big = bigspec.plan_logdet(n=500_000, method="cholesky", tile_size=4096, memory="512GiB", workers=8,
    ...                           threads=16)
    >>> big.n_panels, round(big.summary()["bytes_read_factor"] / big.summary()["reread_bound"], 2) <= 1.5
    (7, True)
    """
    import dataclasses

    from ..perfmodel import resolve_profile
    from .exact import plan_logdet as plan_exact

    machine = resolve_profile(profile) if profile is not None else None   # a bad profile fails before planning
    if A is None:
        plan = _plan_without_data(n, method, memory, tile_size, dtype, workers, threads, device)
    elif n is not None:
        from ..errors import ArgumentError

        raise ArgumentError("plan_logdet takes the matrix A or its order n (to plan without data), not both")
    else:
        plan = plan_exact(A, method=method, memory=memory, tile_size=tile_size, shift=shift, scale=scale,
                          client=client, checkpoint=checkpoint, overwrite=overwrite, storage_options=storage_options,
                          triangle=triangle, missing_chunks=missing_chunks, device=device)
    return plan if machine is None else dataclasses.replace(plan, profile=machine)


def _plan_without_data(n, method, memory, tile_size, dtype, workers, threads, device="cpu"):
    """The Plan for a matrix of order n that is not here (see :func:`plan_logdet`)."""
    import numpy as np

    from .. import config
    from ..errors import ArgumentError, arg
    from ..store import check_tile_size
    from ..validate import check_count, check_memory
    from ..backend import DEVICES
    from .plan import fit_tile_size, make_plan, task_granularity

    if n is None:
        raise ArgumentError("plan_logdet needs the matrix A, or its order n to plan without data")
    n = check_count(n, "n", low=1)
    if device not in DEVICES:   # planned here, run elsewhere: no GPU needed to plan for one
        raise ArgumentError(f"{arg('device', device)} must be one of {', '.join(map(repr, DEVICES))}")
    workers = check_count(workers, "workers", low=1)
    threads = check_count(threads, "threads", low=1)
    budget = check_memory(memory)
    if budget is None or budget == "auto":
        raise ArgumentError(f"without a matrix, give the budget of the cluster you plan for: {arg('memory', '512GiB')}")
    method = method or config.get("method", "ldl")
    if method not in ("ldl", "cholesky"):
        raise ArgumentError(f"plan_logdet plans the exact methods: {arg('method', 'ldl')} or "
                            f"{arg('method', 'cholesky')}; got {method!r}")
    b = fit_tile_size(n, budget, workers * threads, method=method) if tile_size is None else check_tile_size(tile_size)
    return make_plan(n, min(b, n), 8, method, budget, workers * threads, workers,
                     max_tasks=int(config.get("max-graph-tasks", 100_000)),
                     storage_itemsize=np.dtype(dtype).itemsize, store_tiles=False, pure=workers > 1,
                     granularity=task_granularity(device))


__all__ = ["logdet", "plan_logdet", "slogdet"]
