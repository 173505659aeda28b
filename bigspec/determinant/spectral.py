"""``logdet(method="spectrum")``: the log-determinant as n times the integral of log|x| against a
free-decompressed eigenvalue density.

:func:`bigspec.spectrum` samples ``n_samples`` disjoint principal submatrices (diagonal blocks of
a randomly ordered store, or kernel blocks of random subsets of the data), takes their
eigenvalues on the workers and decompresses them, pooled, to the whole matrix's size n. The
estimate is ``n * integral log|x| rho(x) dx`` of that density (its atoms included); the sign
is the parity of the number of eigenvalues the density puts below 0. Each sample's
eigenvalues are then decompressed alone, and the spread of those per-sample estimates gives
the interval (Ameli, van der Heide, Hodgkinson & Mahoney 2025, "Spectral Estimation with Free
Decompression", arXiv:2506.11994; the method's notes are in ``science.md``, sections 3-4).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from ..errors import ArgumentError, ArgumentTypeError, arg, kw, opt
from .estimate import EstimateResult, emit

#: the interval's confidence (two-sided t-quantile of the per-sample spread)
CONFIDENCE = 0.95
#: above this decompression factor n / sample_size the log-determinant is not reliable
#: (free decompression is checked to ~32x: :func:`bigspec.free_decompress`'s Notes)
ALPHA_LIMIT = 32.0
#: |x| below this fraction of the largest |eigenvalue| is "near zero", where log|x| amplifies
#: the density's errors
NEAR_ZERO = 1e-3


def spectral_logdet(A=None, *, kernel=None, X=None, sample_size=None, n_samples=4, seed=0, shift=0.0, scale=1.0,
                    client=None, device="cpu", progress=None, storage_options=None, triangle=None,
                    missing_chunks="error", **kernel_params) -> EstimateResult:
    """Estimate log|det(scale * A + shift * I)| from the free-decompressed spectrum of sampled blocks.

    Called by :func:`bigspec.logdet` with ``method="spectrum"``. The matrix is never read
    beyond ``n_samples`` diagonal blocks of ``sample_size`` rows (or, from ``kernel, X``, never
    formed beyond those blocks); their eigenvalues are decompressed to the whole size n by
    :func:`bigspec.spectrum`, and the estimate is ``n * integral log|x| rho(x) dx``.

    Parameters
    ----------
    A : MatrixStore, str, os.PathLike, zarr.Group, or numpy / dask / zarr array, optional
        The (n, n) symmetric matrix, rows in random order (:func:`bigspec.form` shuffles
        them); as in :func:`bigspec.spectrum`. Give either ``A`` or ``kernel`` and ``X``.
    kernel : str or Kernel, optional
        A kernel (name or instance); with ``X``, each sample is the kernel block of a seeded
        random subset of ``sample_size`` data points.
    X : array-like (n, ...) or path, optional
        The n data points of ``kernel``.
    sample_size : int, optional
        Data points (rows of ``A``) per sample, at least 2 and at most ``n // n_samples``.
        Default: ``min(n // n_samples, 4096)``.
    n_samples : int
        Disjoint samples (default 4): pooled into the estimate, and their spread makes the
        interval (with 1 there is no spread: see Warns).
    seed : int
        Seeds the random subsets of ``X`` (a store's samples are its leading diagonal blocks).
    shift, scale : float
        The estimate is of ``scale * A + shift * I`` (the eigenvalues are scaled, then shifted;
        both are exact under free decompression). A constant vector ``shift`` is taken as its
        value; a varying diagonal is refused (use an exact method or ``"flodance"``).
    client, device, progress, storage_options, triangle, missing_chunks :
        As in :func:`bigspec.spectrum` (the last three for ``A`` only).
    **kernel_params
        Parameters of the kernel (with ``kernel=`` only).

    Returns
    -------
    EstimateResult
        ``method="spectrum"``; ``sign`` (+1, -1, or 0 for a singular estimate) and
        ``logabsdet`` (nats) of the whole matrix: ``n * rows_per_sample * kron_outputs``
        rows, a Kronecker store ``K (x) I_d`` counting d times K's log-determinant.
        ``interval`` (nats) with ``interval_meaning``; ``settings`` (``sample_size``,
        ``n_samples``, ``seed``, ``regime``, ...); ``diagnostics`` (``alpha = n /
        sample_size``, ``regime``, ``per_sample`` estimates, ``support``, ``atoms``, ``fit_error``,
        ``jensen_bound``, ...); ``cost`` (``entries`` read or formed, ``flops`` of the
        eigendecompositions, ``seconds``); ``curves`` (``x``, the eigenvalue grid, and
        ``integrand = n log|x| rho(x)``, for ``plot()``).

        The interval is ``estimate +- (t * sd / sqrt(k) + |estimate - mean of per-sample| +
        |fit_error| + held-out)``: the t-quantile (95%, k - 1 degrees of freedom) of the k
        per-sample estimates' standard deviation, widened by how much the pooled fit differs
        from the per-sample ones, by ``fit_error``, the density fit's error on the samples'
        own, exactly known log-determinant, scaled to n, and by the held-out decompression
        error: the halves of the same samples (2k blocks of half the size, a quarter of the
        eigendecomposition flops more) decompressed to the samples' size, where the answer is
        known, their error per row times n rows and log2(alpha) doublings. Its upper end is
        capped at the Jensen bound ``n log(trace / n)`` (spectra of one sign; the trace from
        the sampled eigenvalues). See ``interval_meaning``.

    Raises
    ------
    ArgumentTypeError
        Neither or both of ``A`` and ``kernel`` / ``X``; ``sample_size`` or ``n_samples`` not
        an integer; ``shift`` or ``scale`` not a number.
    ArgumentError
        Kernel parameters without ``kernel=``; a varying ``shift`` vector; ``scale=0``.
    InvalidSpectrumError
        ``n_samples < 1``, ``sample_size < 2``, or ``n_samples * sample_size > n`` (the message
        says what fits).
    InvalidMatrixError, NonFiniteError, IncompleteStoreError, KernelError
        As :func:`bigspec.spectrum`.

    Warns
    -----
    EstimateWarning
        One warning (with every reason, each with the number that shows it) when the estimate
        is outside the regime where decompression is reliable: the heavy-tailed regime
        (kernel and NTK spectra spanning decades), ``alpha > 32``, an atom at 0 (the matrix is
        singular: ``logabsdet = -inf``), mass near 0 or below 0 (the sign is then a parity the
        density does not resolve), sample eigenvalues spanning more than 3 decades, a fit
        that fails its own checks or exceeds the Jensen bound (the interval is then widened to
        ``(-inf, bound)``), or ``n_samples=1`` (no spread, so the interval holds no sampling
        error). The decompression's own ``DecompressionWarning``\\ s are folded into it.

    Notes
    -----
    Cost: ``n_samples * sample_size^2`` entries read (or formed) and ``n_samples * (4/3)
    sample_size^3`` flops of eigenvalue-only ``eigvalsh`` (tridiagonal reduction), plus a
    decompression of ``n_samples + 2`` fits (well under a second each). Reliable for bulk
    spectra (Wishart / covariance, Wigner-like) decompressed up to ~32x; the log amplifies
    errors at the lower edge, and kernel spectra spanning many decades are outside its reach
    (use an exact method or ``"flodance"``).

    Source: Ameli, van der Heide, Hodgkinson & Mahoney 2025, "Spectral Estimation with Free
    Decompression", arXiv:2506.11994.

    Examples
    --------
    A Wishart matrix (Marchenko-Pastur, ratio 1/4), from 4 blocks of 100 of its 400 rows:

    >>> import numpy as np, bigspec
    >>> Z = np.random.default_rng(0).standard_normal((400, 1600))
    >>> W = Z @ Z.T / 1600
    >>> est = bigspec.logdet(W, method="spectrum", sample_size=100, n_samples=4)
    >>> exact = np.linalg.slogdet(W)[1]
    >>> est.sign, est.diagnostics["alpha"], bool(abs(est.logabsdet / exact - 1) < 0.03), est.covers(exact)
    (1, 4.0, True, True)
    """
    from ..spectra.free import DecompressionWarning
    from ..spectra.sample import check_counts, check_sample_size, spectrum
    from ..validate import check_scale, check_seed

    t_start = time.perf_counter()
    # -- validation, before any work ---------------------------------------------------------
    n_samples = check_counts(sample_size, n_samples)
    seed = check_seed(seed)
    scale = check_scale(scale)
    shift, shift_rows = _scalar_shift(shift)
    if kernel is None and kernel_params:
        raise ArgumentError(f"kernel parameter(s) {', '.join(sorted(kernel_params))} given without "
                            f"{kw('kernel')}: they apply to a kernel given with {kw('kernel')} and {kw('X')}")
    if A is not None and (kernel is not None or X is not None):
        raise ArgumentTypeError(f"logdet(method='spectrum') takes either a matrix A or {kw('kernel')} and "
                                f"{kw('X')}, not both")
    if A is None and (kernel is None or X is None):
        missing = f"A (or {kw('kernel')} and {kw('X')})" if kernel is None and X is None else \
            kw("X") + " (the data points)" if X is None else kw("kernel")
        raise ArgumentTypeError(f"logdet(method='spectrum') needs {missing}")
    n_points = None
    if A is None:
        from ..form import _load_data

        X = _load_data(X)     # loaded once here: spectrum() takes the array as it is
        if np.ndim(X) < 1:
            raise ArgumentTypeError(f"{arg('X')} must hold data points along its first axis, got {X!r}")
        n_points = int(np.shape(X)[0])
        check_sample_size(sample_size, n_points, n_samples)
    # -- the pooled spectrum (one warning later, not the decompression's own) ------------------
    caught: list = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = spectrum(A, kernel=kernel, X=X, sample_size=sample_size, n_samples=n_samples, seed=seed,
                       client=client, device=device, progress=progress, storage_options=storage_options,
                       triangle=triangle, missing_chunks=missing_chunks, shift=shift, scale=scale, **kernel_params)
    for w in rec:
        if issubclass(w.category, DecompressionWarning):
            caught.append(str(w.message))
        else:                                    # not the decompression's: pass it on as it was
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    rows = int(res.settings.get("rows_per_sample", 1))           # matrix rows per data point
    n = res.size // rows                                         # data points (rows of A)
    if shift_rows is not None and shift_rows not in (res.size, res.size * res.kron_outputs):
        raise ArgumentError(f"{arg('shift')} must be a scalar or a vector of length n={res.size}, got length "
                            f"{shift_rows}")
    d = int(res.kron_outputs)
    m = int(res.sample_size)                                     # matrix rows per sample
    alpha = float(res.alpha)
    regime = res.settings["regime"]
    ev = np.asarray(res.eigenvalues, dtype=float)                # scale * eigenvalues + shift, pooled
    if ev.size != n_samples * m:  # SpectrumResult pools the samples in order, each m eigenvalues
        raise RuntimeError(f"internal: {ev.size} pooled eigenvalues for {n_samples} samples of {m} rows")

    sign_p, value = res._logdet()
    sign = (sign_p ** d if sign_p else 0)
    logabsdet = d * float(value)
    if alpha == 1:   # the one sample is the whole matrix: its eigenvalues give the exact value
        with np.errstate(divide="ignore"):
            logabsdet = d * float(np.sum(np.log(np.abs(ev))))
        sign = 0 if np.any(ev == 0) else (-1 if np.count_nonzero(ev < 0) % 2 else 1) ** d

    if regime == "kernel":
        per, unfit, fitted, per_warnings, held_out, held_out_term, half_rows = _kernel_pieces(
            res, n_samples, shift, d, alpha)
    else:
        per, unfit, fitted, per_warnings, held_out, held_out_term, half_rows = _free_pieces(
            res, n_samples, shift, d, alpha, m, rows, regime, ev, A=A, kernel=kernel, X=X, seed=seed, client=client,
            device=device, storage_options=storage_options, triangle=triangle, missing_chunks=missing_chunks,
            scale=scale, kernel_params=kernel_params)
    per = np.array(per if per else [logabsdet], dtype=float)
    with np.errstate(divide="ignore"):
        sample_mean_log = float(np.mean(np.log(np.abs(ev))))
    fit_error = d * res.size * (float(fitted) / m - sample_mean_log) if np.isfinite(sample_mean_log) and \
        np.isfinite(fitted) and alpha > 1 else math.nan
    return _assemble(res=res, ev=ev, d=d, alpha=alpha, regime=regime, logabsdet=logabsdet, sign=sign, per=per,
                     unfit=unfit, fit_error=fit_error, held_out=held_out, held_out_term=held_out_term,
                     half_rows=half_rows, n_samples=n_samples, m=m, rows=rows, n=n, shift=shift, scale=scale, seed=seed,
                     device=device, caught=caught, per_warnings=per_warnings, t_start=t_start)


def _kernel_pieces(res, n_samples, shift, d, alpha):
    """The kernel regime's per-sample estimates and held-out error (from the nested samples)."""
    from ..spectra.free import DecompressionWarning
    from ..spectra.operator import held_out_logdet, kernel_decompress

    floor = float(res.settings.get("floor", 0.0))
    per = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        if n_samples > 1:
            for one in res.nested:
                per.append(d * float(kernel_decompress([one], res.size, shift=shift)._logdet()[1]))
        per_warnings = sum(issubclass(w.category, DecompressionWarning) for w in rec)
    tol = float(res.settings.get("atom_tol", 1e-9))
    held_out = held_out_logdet(list(res.nested), shift, floor, tol)
    held_out = math.nan if held_out is None else held_out
    held_out_term = d * res.size * abs(held_out) * max(math.log(alpha) / math.log(4.0), 1.0) \
        if np.isfinite(held_out) and alpha > 1 else 0.0
    # the held-out log-determinant error can cancel where the spectrum's does not (a ReLU NTK at
    # alpha 8: +3.1% off with an interval of +-0.9%), so the interval also takes the bound the
    # spectrum's own held-out error gives: |sum log lambda - sum log lambda_hat| <= n ln(10) W1(log10)
    wide = res.diagnostics.get("held_out_scaled")
    if wide is not None and alpha > 1:
        held_out_term = max(held_out_term, d * res.size * math.log(10) * wide)
    return per, [], math.nan, per_warnings, held_out, held_out_term, 0


def _free_pieces(res, n_samples, shift, d, alpha, m, rows, regime, ev, *, A, kernel, X, seed, client, device,
                 storage_options, triangle, missing_chunks, scale, kernel_params):
    """Free decompression's per-sample estimates, its fit at the samples' own size, and the held-out halves."""
    from ..spectra.free import DecompressionWarning, InvalidSpectrumError, free_decompress
    from ..spectra.sample import spectrum
    # -- each sample alone, and the fit at the samples' own size ------------------------------
    one = regime if regime in ("bulk", "heavy-tailed") else "auto"
    samples = np.split(ev - shift, n_samples)    # each sample's scale * eigenvalues (sorted)
    per, unfit, fitted = [], [], math.nan
    from threadpoolctl import threadpool_limits

    # one BLAS thread: the fits' products are small (grid x degree), and on a busy machine threaded BLAS
    # made them up to 10x slower; the eigendecompositions (in spectrum() above) keep their threads
    with warnings.catch_warnings(record=True) as rec, threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("always")
        for j, s in enumerate(samples if n_samples > 1 else []):
            try:
                per.append(d * float(free_decompress(s, res.size, sample_size=m, shift=shift, regime=one)
                                     ._logdet()[1]))
            except InvalidSpectrumError as e:
                per.append(math.nan)
                unfit.append(f"sample {j}: {e}")
        try:
            fitted = free_decompress(samples, m, sample_size=m, shift=shift, regime=one)._logdet()[1]
        except InvalidSpectrumError:
            pass
        per_warnings = sum(issubclass(w.category, DecompressionWarning) for w in rec)

    # -- held out: the halves of the same samples decompressed to the samples' size, where the
    # answer is known exactly (their eigenvalues); the error per row, grown by log2(alpha)
    # doublings, sizes the decompression's bias at n (the FLODANCE held-out idea, science.md 4)
    held_out, held_out_term, half_rows = math.nan, 0.0, 0
    ss = m // rows                                   # data points (or rows of A) per sample
    if alpha > 1 and ss >= 16:
        half_rows = ss // 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                hres = spectrum(A, kernel=kernel, X=X, sample_size=half_rows, n_samples=2 * n_samples, size=ss,
                                seed=seed, client=client, device=device, progress=False,
                                storage_options=storage_options, triangle=triangle, missing_chunks=missing_chunks,
                                shift=shift, scale=scale, **kernel_params)
                with np.errstate(divide="ignore"):
                    exact_per_row = float(np.mean(np.log(np.abs(ev))))
                held_out = float(hres._logdet()[1]) / m - exact_per_row       # nats per row at alpha = 2
                if np.isfinite(held_out):
                    held_out_term = d * res.size * abs(held_out) * max(math.log2(alpha), 1.0)
            except InvalidSpectrumError:
                pass
    return per, unfit, fitted, per_warnings, held_out, held_out_term, half_rows


def _assemble(*, res, ev, d, alpha, regime, logabsdet, sign, per, unfit, fit_error, held_out, held_out_term,
              half_rows, n_samples, m, rows, n, shift, scale, seed, device, caught, per_warnings, t_start):
    """The interval, the one warning and the result, from the pieces of either regime."""
    # -- what the spectrum shows ---------------------------------------------------------------
    top = float(np.max(np.abs(ev)))
    smallest_over_largest = float(np.min(np.abs(ev)) / top) if top > 0 else math.nan
    mean = float(np.mean(ev))
    one_sign = bool(np.all(ev > 0) or np.all(ev < 0))
    jensen = d * res.size * math.log(abs(mean)) if one_sign else math.inf
    floor = float(res.settings.get("floor", 0.0)) + shift
    reach = max(top, max((abs(s) for s in res.support), default=0.0))
    eps = NEAR_ZERO * reach
    zero_atom = sum(mass for loc, mass in res.atoms if abs(loc) <= 1e-300)
    floor_atoms = sum(mass for loc, mass in res.atoms if loc == floor and abs(loc) > 1e-300)
    near = float(res.cdf(eps) - res.cdf(-eps)) if eps > 0 else 0.0
    # the floor's atom sits at a known value (the ridge s of K + s I): it is not "near zero" noise
    near = max(near - zero_atom - (floor_atoms if abs(floor) <= eps else 0.0), 0.0)
    below = float(res.cdf(-1e-300 if reach == 0 else -1e-12 * reach))
    diag = res.diagnostics
    cont_mass_off = abs(diag.get("continuous_mass", 1.0) - (1 - sum(mass for _, mass in res.atoms))) \
        if regime == "bulk" and "continuous_mass" in diag else 0.0
    mean_error = diag.get("mean_error", 0.0) if regime == "bulk" else 0.0

    # -- the interval ----------------------------------------------------------------------------
    k = n_samples
    finite = np.isfinite(logabsdet) and np.all(np.isfinite(per))
    sd = float(np.std(per, ddof=1)) if k > 1 and finite else math.nan
    from scipy.stats import t as student_t

    tq = float(student_t.ppf(0.5 + CONFIDENCE / 2, k - 1)) if k > 1 else math.nan
    sampling = tq * sd / math.sqrt(k) if k > 1 and finite else 0.0
    spread_gap = abs(float(np.mean(per)) - logabsdet) if finite else 0.0
    fit_term = abs(fit_error) if np.isfinite(fit_error) else 0.0
    half = sampling + spread_gap + fit_term + held_out_term
    failed = []       # the decompression visibly failed: only the bound is left
    if np.isfinite(jensen) and logabsdet > jensen:
        failed.append(f"the estimate {logabsdet:.6g} exceeds the Jensen bound n log(trace / n) = {jensen:.6g} that "
                      f"every spectrum of one sign obeys, so the bound itself is reported")
    if cont_mass_off >= 0.05:
        failed.append(f"the decompressed density's continuous mass is off by {cont_mass_off:.3f}")
    if mean_error is not None and abs(mean_error) > 0.01:
        failed.append(f"its mean is off the sample mean by {mean_error:+.3g} x the spread")
    if unfit:
        failed.append("a sample could not be decompressed alone, so there is no spread (" + "; ".join(unfit) + ")")
    if one_sign and ev.min() > 0 and below * res.size >= 0.5:
        failed.append(f"the sampled eigenvalues are all positive but the density puts {below:.2%} of its mass "
                      f"below 0")
    if alpha == 1:    # exact: nothing of the fit matters
        failed, caught = [], []
        # rounding: eigvalsh moves each eigenvalue by up to ~ m eps max|x|, so log|x_i| by that over |x_i|
        with np.errstate(divide="ignore"):
            rounding = d * float(np.sum(m * np.finfo(float).eps * top / np.abs(ev)))
        interval = (logabsdet - rounding, logabsdet + rounding) if np.isfinite(logabsdet) else (-math.inf, -math.inf)
        meaning = (f"exact up to rounding: the one sample is the whole {res.size}-row matrix, whose log-determinant "
                   f"is the sum of log|eigenvalue| (no decompression); the interval is the rounding of eigvalsh "
                   f"(m eps max|x| / |x| for each eigenvalue x)")
    elif sign == 0 or not np.isfinite(logabsdet) or failed:
        interval = (-math.inf, jensen if np.isfinite(jensen) else math.inf)
        if np.isfinite(jensen) and logabsdet > jensen:
            logabsdet = jensen        # an impossible value is not reported: the largest possible one, said so
        meaning = ("no interval from the samples: " + ("the decompressed spectrum is singular (an atom at 0)"
                   if not np.isfinite(logabsdet) else "the decompression failed its own checks")
                   + (", so only the Jensen bound n log(trace / n) (trace from the sampled eigenvalues) is left"
                      if np.isfinite(jensen) else ", so no bound is left"))
    else:
        interval = (logabsdet - half, min(logabsdet + half, jensen))
        fit_part = (f"the density fit's error on the samples' own, exactly known log-determinant, scaled to n "
                    f"(|fit_error| = {fit_term:.3g})")
        if k > 1:
            meaning = (f"{CONFIDENCE:.0%} t-interval (t = {tq:.3g}, {k - 1} degrees of freedom) of the sampling "
                       f"spread: the standard deviation {sd:.4g} of the {k} disjoint samples' estimates (each sample "
                       f"decompressed alone) over sqrt({k}); widened by |pooled - mean of the per-sample estimates| "
                       f"= {spread_gap:.3g} and by {fit_part}")
        else:
            meaning = ("n_samples=1: one sample has no spread, so this interval holds NO sampling error; it is only "
                       + fit_part)
        if held_out_term and regime == "kernel":
            meaning += (f"; and by the held-out error: the kernel fit from the samples' quarters and smaller nested "
                        f"sub-blocks misses the samples' own exact log-determinant by {held_out:+.3g} nats per row, "
                        f"times n rows and log4(alpha) = {max(math.log(alpha) / math.log(4), 1):.3g} "
                        f"({held_out_term:.3g} nats)")
        elif held_out_term:
            meaning += (f"; and by the held-out decompression error: the samples' halves decompressed to the samples' "
                        f"own size miss their exact log-determinant by {held_out:+.3g} nats per row, times n rows and "
                        f"log2(alpha) = {math.log2(alpha):.3g} doublings ({held_out_term:.3g} nats)")
        meaning += (("; capped above at the Jensen bound n log(trace / n)" if np.isfinite(jensen) else "")
                    + f". It does not cover the decompression's own bias beyond these (lower-edge errors growing with "
                    f"alpha = {alpha:.3g}" + (", and the extrapolated small eigenvalues of the heavy-tailed regime"
                                              if regime == "heavy-tailed" else "") + ")")

    # -- one warning, with every reason and its number -------------------------------------------
    reasons = _reasons(alpha=alpha, sign=sign, logabsdet=logabsdet, regime=regime, reason=diag.get("regime_reason"),
                       zero_atom=zero_atom, near=near, reach=reach, size=res.size, below=below, one_sign=one_sign,
                       smallest_over_largest=smallest_over_largest, failed=failed, jensen=jensen, k=k)
    # the decompression's own warnings, less those said above with their numbers
    said = [("alpha =", alpha > ALPHA_LIMIT),
            ("the spectrum spans more than 3 decades", any("decades" in r for r in reasons)),
            ("the continuous density has mass", cont_mass_off >= 0.05),
            ("the density's mean is off", mean_error is not None and abs(mean_error) > 0.01)]
    own = [c for c in dict.fromkeys(caught) if not any(c.startswith(head) and dup for head, dup in said)]
    if own:
        reasons.append(f"the decompression {'also ' if reasons else ''}reported: " + " | ".join(own))
    issued: list = []
    if reasons:
        emit(opt("logdet(method='spectrum')", "--method spectrum") + " is outside the regime where free "
             "decompression is reliable: " + "; ".join(reasons) + f". An exact method ({arg('method', 'ldl')}, "
             f"{arg('method', 'cholesky')}) or {arg('method', 'flodance')} gives a checked value",
             issued, stacklevel=5)

    seconds = time.perf_counter() - t_start
    with np.errstate(divide="ignore", invalid="ignore"):
        integrand = d * res.size * np.where(res.x != 0, np.log(np.abs(res.x)), 0.0) * res.density
    dec = {k_: v for k_, v in res.settings.items() if k_ not in ("regime",)}
    return EstimateResult(
        method="spectrum", sign=int(sign), logabsdet=float(logabsdet), interval=tuple(map(float, interval)),
        interval_meaning=meaning, n=int(n), rows_per_sample=int(rows), kron_outputs=d, scale=scale, shift=shift,
        settings={"sample_size": m // rows, "n_samples": k, "seed": seed, "regime": regime, "confidence": CONFIDENCE,
                  "device": device, "decompression": _plain(dec)},
        diagnostics={"alpha": alpha, "regime": regime, "regime_reason": diag.get("regime_reason"),
                     "per_sample": per.tolist(), "per_sample_sd": sd, "t_quantile": tq, "sampling_halfwidth": sampling,
                     "pooled_minus_per_sample": spread_gap, "fit_error": fit_error,
                     "held_out_error_per_row": held_out, "held_out_halfwidth": held_out_term, "support": list(res.support),
                     "atoms": [list(a) for a in res.atoms], "trace": float(res.trace), "jensen_bound": jensen,
                     "smallest_over_largest": smallest_over_largest, "mass_near_zero": near, "mass_below_zero": below,
                     "sample_rows": m, "continuous_mass": diag.get("continuous_mass"),
                     "mean_error": diag.get("mean_error"), "decompression_warnings": list(dict.fromkeys(caught)),
                     "per_sample_warnings": int(per_warnings), "spectrum_seconds": float(res.seconds)},
        cost={"entries": int(k * m * m + (2 * k * (half_rows * rows) ** 2 if half_rows else 0)),
              # the kernel regime also diagonalizes each sample's nested sub-blocks: sum_j 2^j / 8^j < 1/3 more
              "flops": float(k * (4 / 3) * m ** 3 * (sum(4.0 ** -j for j in range(len(res.nested[0])))
                                                     if regime == "kernel" else 1.0)
                             + (2 * k * (4 / 3) * (half_rows * rows) ** 3 if half_rows else 0)),
              "seconds": seconds},
        warnings=tuple(issued), source=res.source, seconds=seconds,
        curves={"x": np.asarray(res.x), "integrand": np.asarray(integrand)},
    )


def _reasons(*, alpha, sign, logabsdet, regime, reason, zero_atom, near, reach, size, below, one_sign,
             smallest_over_largest, failed, jensen, k) -> list:
    """Why the estimate is outside the regime where decompression is reliable, each with its number."""
    ridge = f"pass {arg('shift')} (a ridge) for the log-determinant of A + shift I"
    if alpha == 1:
        return [f"the matrix is singular: the one sample, the whole matrix, has an eigenvalue 0 (log|det| = -inf); "
                f"{ridge}"] if sign == 0 else []
    out = []
    if regime == "heavy-tailed":
        out.append(f"the spectrum is heavy-tailed ({reason}): it is decompressed by its large-alpha form, whose small "
                   f"eigenvalues are an extrapolation, so the log-determinant can be off by 10% or more (a ReLU NTK's "
                   f"was 12% off), beyond the interval")
    if alpha > ALPHA_LIMIT:
        out.append(f"alpha = n / sample_size = {alpha:.3g} > {ALPHA_LIMIT:g}: the decompression's errors grow with "
                   f"alpha; sample larger blocks")
    if zero_atom > 0:
        out.append(f"the decompressed spectrum has an atom at 0 of mass {zero_atom:.4g} (sample eigenvalues below "
                   f"atom_tol x the largest): the matrix is singular, log|det| = -inf; {ridge}")
    finite = math.isfinite(logabsdet)
    if finite and near * size >= 1 and regime != "kernel":   # the kernel regime reads the small ones on a log scale
        out.append(f"the density puts {near:.3g} of its mass (about {near * size:.0f} eigenvalues) within "
                   f"{NEAR_ZERO:g} x the largest |eigenvalue| ({reach:.4g}) of 0, where log|x| amplifies its errors")
    elif regime == "bulk" and 0 < smallest_over_largest < NEAR_ZERO:
        out.append(f"the sampled eigenvalues span {-math.log10(smallest_over_largest):.1f} decades (smallest / largest "
                   f"|eigenvalue| = {smallest_over_largest:.3g}): the linear-scale fit does not resolve the lower "
                   f"edge that the log weighs")
    if finite and not one_sign and 0.5 <= below * size <= size - 0.5:
        out.append(f"the spectrum is indefinite: the density puts {below:.3g} of its mass (about {below * size:.0f} "
                   f"eigenvalues) below 0, and the sign is the parity of that count, which the density does not "
                   f"resolve to one eigenvalue")
    out += failed
    if failed:
        out.append(f"the interval is widened to (-inf, {jensen:.6g})")
    if k == 1:
        out.append(f"n_samples=1: one sample has no spread, so the interval holds no sampling error; pass "
                   f"{arg('n_samples', 4)} (or more) for one")
    return out


def _scalar_shift(shift) -> tuple[float, int | None]:
    """``(value, length)`` of a number (length None) or of a constant 1-D vector."""
    from ..validate import check_number

    if np.ndim(shift) == 0:
        return check_number(shift, "shift"), None
    arr = np.asarray(shift)
    if arr.dtype.kind not in "biuf" or arr.ndim != 1:
        raise ArgumentTypeError(f"{arg('shift')} must be a number (or a constant vector), got "
                                f"{'dtype ' + str(arr.dtype) if arr.ndim == 1 else 'shape ' + str(arr.shape)}")
    if arr.size == 0 or not np.isfinite(arr).all() or np.ptp(arr) != 0:
        raise ArgumentError(
            f"{arg('method', 'spectrum')} shifts every eigenvalue by one number: {arg('shift')} must be a finite "
            f"scalar or a constant vector; a diagonal that varies is not a shift of the spectrum (use "
            f"{arg('method', 'ldl')} or {arg('method', 'flodance')})")
    return float(arr[0]), int(arr.size)


def _plain(d: dict) -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


__all__ = ["spectral_logdet"]
