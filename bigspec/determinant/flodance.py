"""FLODANCE: the log-determinant of an n-sample matrix from the ladder of its leading blocks.

One factorization of a leading block of s samples gives the exact ``l(m) = log|det K_m|`` for
every m <= s (its prefix log-pivots); a scaling law fitted to the ladder's per-sample
increments is extrapolated to n (Ameli, van der Heide, Hodgkinson, Roosta & Mahoney 2025,
"Determinant Estimation under Memory Constraints and Neural Scaling Laws", ICML,
arXiv:2503.04424). The fit (model, window, interval) is :func:`~.ladder_fit.fit_ladder`.

Where the blocks come from:

* a store or array: ``n_ladders`` disjoint diagonal blocks of the (randomly ordered) matrix,
  the first being the leading block whose ladder the extrapolation starts from; only their
  tiles are read;
* ``kernel, X`` (impalpable): seeded random subsets of the data whose blocks are formed on the
  workers; the full matrix never exists.

Each block is factored in a few random sample orders as well (``orders``): the same entries,
more ladders, less noise in the fitted increments. Pivots below ``pseudo_tol * max|diag|`` are
numerical zeros and are dropped (the ladder is then of pseudo-determinants, as for an NTK with
a null space).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..backend import check_device, get_namespace, to_host
from ..errors import ArgumentError, ArgumentTypeError, EstimateError, arg, kw, opt
from ..sampling import as_float64, bound_kernel, diagonal_blocks, on_kernel_block, store_layout, warn_if_unshuffled
from .estimate import EstimateResult, emit
from .ladder_fit import fit_ladder
from ..validate import check_count

MIN_SAMPLES = 40           # a ladder shorter than this cannot show a scaling law
ORDERS_MAX_ROWS = 8192     # blocks up to this many rows are also factored in other orders
#: sample orders per block: 8 rather than 4 took the mean |error| at s = 2000 of n = 16384 from
#: 0.79% to 0.67% (nugget 1e-6) and 0.54% to 0.34% (1e-3) over 6 seeds, for twice the ladder flops
ORDERS = 8
#: default ladders: at s = 2000 of n = 16384, 8 ladders rather than 3 took the mean error from
#: 1.1-1.3% to 0.2-0.4% on Matérn-3/2 kernels (bench ground-truth ladders, 4 seeds), for 8 s^2 entries
LADDERS = 8
CONCAVE_T = -3.0          # a curvature t below this: the increments fall ever faster (refused)
CONVEX_T = 2.0            # below this the ladder does not show a scaling law's convex decline (warned)
WIDE = 0.10               # a half-width above this fraction of the estimate is worth a warning


# --------------------------------------------------------------------------- tile kernels
def ladder_pivots(A, tol: float, nb: int = 256):
    """Pivots of an unpivoted LDL^T of a symmetric block, dropping numerical zeros.

    Blocked right-looking: Cholesky of each ``nb`` diagonal block (LAPACK), falling back to a
    column loop over that block only where a pivot is not clearly positive; triangular solves
    and one GEMM update the rest. A pivot with ``|d| <= tol`` is dropped: its column of L is
    zero, so later minors are those of the matrix without that row (the pseudo-determinant
    convention of semidefinite Cholesky).

    Parameters
    ----------
    A : (r, r) float64 array (numpy or cupy)
        Overwritten.
    tol : float
        Absolute drop tolerance.

    Returns
    -------
    d : (r,) float64 numpy array
        The pivots (0 where dropped).
    """
    xp = get_namespace("gpu" if type(A).__module__.startswith("cupy") else "cpu")
    solve = _solve_triangular(xp)
    r = A.shape[0]
    d = xp.zeros(r, dtype=xp.float64)
    for k0 in range(0, r, nb):
        k1 = min(k0 + nb, r)
        A11 = A[k0:k1, k0:k1]
        Lu, dk = _diagonal_ldl(xp, A11, tol)
        d[k0:k1] = dk
        if k1 == r:
            break
        A21 = A[k1:, k0:k1]
        W = solve(Lu, A21.T, lower=True, unit_diagonal=True)          # D L21^T
        keep = dk != 0
        inv = xp.where(keep, 1.0 / xp.where(keep, dk, 1.0), 0.0)
        L21 = (W * inv[:, None]).T
        A[k1:, k1:] -= L21 @ W
    return to_host(d)


def _diagonal_ldl(xp, A11, tol):
    """(unit lower L, pivots) of one diagonal block: LAPACK Cholesky, else a column loop with drops."""
    try:
        L = xp.linalg.cholesky(A11)
        diag = xp.diagonal(L)
        if bool(xp.all(xp.isfinite(diag))) and bool(xp.all(diag * diag > tol)):
            return L / diag[None, :], diag * diag
    except Exception:   # numpy raises LinAlgError; cupy may return NaN instead
        pass
    B = A11.copy()
    m = B.shape[0]
    L = xp.eye(m, dtype=xp.float64)
    d = xp.zeros(m, dtype=xp.float64)
    for j in range(m):
        p = float(B[j, j])
        if abs(p) <= tol:
            continue                                  # a numerical zero: dropped
        d[j] = p
        col = B[j + 1:, j] / p
        L[j + 1:, j] = col
        B[j + 1:, j + 1:] -= xp.outer(col, B[j + 1:, j])
    return L, d


def _solve_triangular(xp):
    if xp is np:
        from scipy.linalg import solve_triangular
    else:  # pragma: no cover - GPU
        from cupyx.scipy.linalg import solve_triangular
    return solve_triangular


def ladder_task(block, rows: int, scale: float, shift, orders: int, seed: int, tol_rel: float, device: str):
    """Per-sample log-pivot sums of one block in ``orders`` sample orders (the first: as stored).

    Returns a dict: ``log_d`` (orders, s) float64 per-sample sums of log|pivot| over kept
    pivots, ``kept`` (orders, s) int pivots kept per sample, ``negative`` (orders, s) int
    negative pivots per sample, and ``diag_max`` (the scale of the drop tolerance).
    """
    xp = get_namespace(device)
    B = as_float64(block, device)
    if scale != 1.0:
        B = B * scale
    if shift is not None:
        idx = xp.arange(B.shape[0])
        B[idx, idx] += xp.asarray(shift)
    r = B.shape[0]
    s = r // rows
    diag_max = float(xp.max(xp.abs(xp.diagonal(B)))) if r else 0.0
    tol = tol_rel * diag_max
    projected = 0
    if rows > 1:
        B, rows, projected = _project_common_null(xp, B, s, rows, tol_rel)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    out = {"log_d": [], "kept": [], "negative": [], "diag_max": diag_max, "projected": projected}
    for k in range(orders):
        if k == 0:
            A = B.copy()
        else:
            q = rng.permutation(s)
            p = (q[:, None] * rows + np.arange(rows)[None, :]).ravel()
            p = xp.asarray(p)
            A = B[p][:, p]
        d = ladder_pivots(xp.asfortranarray(A) if xp is np else A, tol)
        kept = d != 0
        with np.errstate(divide="ignore"):
            logd = np.where(kept, np.log(np.abs(d)), 0.0)
        out["log_d"].append(logd.reshape(s, rows).sum(axis=1))
        out["kept"].append(kept.reshape(s, rows).sum(axis=1))
        out["negative"].append((d < 0).reshape(s, rows).sum(axis=1))
    for key in ("log_d", "kept", "negative"):
        out[key] = np.stack(out[key])
    return out


def _project_common_null(xp, B, s, rows, tol_rel):
    """Project out output directions u that every sample's d x d diagonal block annihilates.

    With ``B = (I (x) U) B' (I (x) U)^T`` (U: an orthonormal basis of the other directions),
    the nonzero eigenvalues of B are B''s, so log det B' is log pdet B: a c-class network's
    NTK has such a null vector (softmax outputs sum to one). The pivots of B itself would
    instead sum to log pdet plus a term linear in the samples.
    Returns (B', rows', directions projected out).
    """
    blocks = B.reshape(s, rows, s, rows)
    S = xp.einsum("iaib->ab", blocks)                 # sum of the samples' diagonal blocks (PSD)
    w, V = xp.linalg.eigh((S + S.T) / 2)
    keep = w > tol_rel * float(xp.max(xp.abs(w))) * rows
    k = int(rows - int(xp.sum(keep)))
    if k == 0 or k == rows:
        return B, rows, 0
    U = V[:, keep]
    Bp = xp.einsum("ap,iajb,bq->ipjq", U, blocks, U).reshape(s * (rows - k), s * (rows - k))
    return xp.ascontiguousarray(Bp), rows - k, k


# --------------------------------------------------------------------------- the verb
def flodance_logdet(A=None, *, kernel=None, X=None, sample_size=None, n_ladders=None, seed=0, memory=None,
                    tile_size=None, pseudo_tol=None, shift=0.0, scale=1.0, client=None, device="cpu",
                    progress=None, storage_options=None, triangle=None, missing_chunks="error", **kernel_params):
    """FLODANCE estimate of log|det(scale * A + diag(shift))| from leading-block ladders.

    Parameters
    ----------
    A : store, path, or numpy / dask / zarr array, optional
        The matrix, rows in random order (as :func:`bigspec.form` writes them). Only the
        ``n_ladders`` diagonal blocks of ``sample_size`` samples are read.
    kernel, X : optional
        Instead of ``A``: a kernel (name or instance) and its data, n samples; only the
        sampled blocks are formed, on the workers (the matrix is never formed).
    sample_size : int
        Samples (data points; a sample is ``rows_per_sample`` rows for a kernel with several
        outputs) in each ladder. At least 40 and at most n. Default: ``min(n // 4, 2000)``.
    n_ladders : int, optional
        Independent ladders (disjoint blocks / independent subsets). Default: as many as fit,
        up to 8 (each costs ``s^3 / 3`` flops per order and ``s^2`` entries).
    seed : int
        Seeds the subsets of X and the extra sample orders.
    memory : str or int, optional
        Refuse blocks larger than this (bytes of one float64 block); default: no limit
        beyond the workers' own.
    tile_size : int, optional
        Accepted for array inputs (the blocks are read whole; tiles do not change the result).
    pseudo_tol : float, optional
        Pivots below ``pseudo_tol * max(diag)`` are dropped (pseudo-determinant).
        Default: ``rows * eps`` of the block.
    shift, scale, client, device, progress, storage_options, triangle, missing_chunks :
        As in :func:`bigspec.logdet`.
    **kernel_params
        Parameters of a kernel given by name.

    Returns
    -------
    EstimateResult
        ``logabsdet`` and ``interval`` in nats for the whole matrix (``matrix_rows`` rows);
        ``diagnostics`` holds the chosen model, window, held-out error, alternatives, slope,
        dropped pivots; ``curves`` the ladders and the fit for ``plot()``.

    Raises
    ------
    ArgumentError, ArgumentTypeError
        ``sample_size`` out of [40, n], ``n_ladders`` that do not fit, options of the wrong kind.
    EstimateError
        The ladder is not in a regime a scaling law can extrapolate: negative pivots (an
        indefinite matrix), a mean increment that grows with m (rows not in random order), or
        a rank that stops growing.

    Warns
    -----
    EstimateWarning
        A pseudo-determinant (pivots dropped), saturation at the nugget floor, a wide interval.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> X = np.random.default_rng(1).uniform(size=(2000, 2))
    >>> est = bigspec.logdet(kernel="rbf", X=X, lengthscale=0.2, shift=1e-2, method="flodance", sample_size=400)
    >>> K = bigspec.kernels.get_kernel("rbf", lengthscale=0.2)
    >>> exact = np.linalg.slogdet(K(X, X, diagonal=True) + 1e-2 * np.eye(2000))[1]
    >>> bool(est.interval[0] <= exact <= est.interval[1])
    True
    """
    import dask

    from ..cluster import resolve_client
    from ..progress import want_progress
    from ..runner import Runner
    from ..validate import check_number, check_scale_shift, check_seed

    t0 = time.perf_counter()
    device = check_device(device)
    want_progress(progress)
    seed = check_seed(0 if seed is None else seed)
    sample_size = check_count(sample_size, "sample_size", low=None, allow_none=True)   # its range: _check_sizes
    n_ladders = check_count(n_ladders, "n_ladders", allow_none=True)
    if pseudo_tol is not None:
        pseudo_tol = check_number(pseudo_tol, "pseudo_tol")
        if not 0 <= pseudo_tol < 1:
            raise ArgumentError(f"{arg('pseudo_tol')} must be in [0, 1), got {pseudo_tol}")
    limit = None
    if memory is not None:
        from ..validate import check_memory

        check_memory(memory)
        if memory != "auto":
            from dask.utils import parse_bytes

            limit = parse_bytes(memory) if isinstance(memory, str) else int(memory)
    client = resolve_client(client)
    if (A is None) == (kernel is None):
        raise ArgumentTypeError(opt("logdet(method='flodance') takes either a matrix A or kernel= and X=, not both "
                                    "(and not neither)",
                                    "give either a MATRIX or --kernel and --data, not both (and not neither)"))
    if kernel is not None and X is None:
        raise ArgumentTypeError(f"{kw('kernel')} needs the data {kw('X')} too")
    if A is not None:
        from ..matrix import as_matrix

        if kernel_params:
            raise ArgumentTypeError(f"logdet() got unexpected keyword argument(s) {', '.join(sorted(kernel_params))}: "
                                    f"kernel parameters apply with kernel= and X=")
        m = as_matrix(A, triangle=triangle, missing_chunks=missing_chunks, storage_options=storage_options,
                      client=client)
        ms = m.store
        rows, kron = store_layout(ms, m.n)
        n = m.n // rows
        source = ms.url if ms is not None else f"{m.kind} array"
        warn_if_unshuffled(ms, "a scaling-law extrapolation from them", stacklevel=4)
    else:
        k, Xa, data = bound_kernel(kernel, X, kernel_params)
        n = int(Xa.shape[0])
        rows = k.rows_per_sample()
        kron = k.n_outputs if k.kron_identity else 1
        source = f"kernel {k.name}"
    scale, shift = check_scale_shift(scale, shift, n * rows)
    sample_size, n_ladders = _check_sizes(sample_size, n_ladders, n, disjoint_only=A is not None)
    block_rows = sample_size * rows
    if limit is not None and block_rows ** 2 * 8 > limit:
        raise ArgumentError(
            f"one ladder's block ({block_rows} x {block_rows} float64, {block_rows ** 2 * 8} bytes) is larger than "
            f"{arg('memory', memory)}; use a smaller {arg('sample_size')} or a larger {arg('memory')}")
    orders = ORDERS if block_rows <= ORDERS_MAX_ROWS else 1
    tol_rel = pseudo_tol if pseudo_tol is not None else block_rows * np.finfo(np.float64).eps
    # each ladder's extra sample orders (and, with kernel= beyond disjoint subsets, its subset)
    seeds = [int(v) for v in np.random.default_rng(np.random.SeedSequence(seed)).integers(0, 2 ** 31, size=n_ladders)]

    def shift_of(idx_rows):
        if shift is None or np.ndim(shift) == 0:
            return shift
        return shift[idx_rows]

    tasks = []
    if A is not None:
        disjoint = True
        spans = [(j * block_rows, (j + 1) * block_rows) for j in range(n_ladders)]
        blocks = diagonal_blocks(m, spans, client)
        for (r0, r1), blk, sd in zip(spans, blocks, seeds):
            tasks.append(dask.delayed(ladder_task)(blk, rows, scale, shift_of(slice(r0, r1)), orders, sd, tol_rel,
                                                   device))
        entries = n_ladders * block_rows ** 2
    else:
        from ..form import permutation

        order = permutation(n, seed)       # the order bigspec.form(..., seed=seed) stores: the same ladders
        disjoint = n_ladders * sample_size <= n
        k_key = dask.delayed(k, pure=True)
        for j, sd in enumerate(seeds):
            idx = order[j * sample_size:(j + 1) * sample_size] if disjoint else \
                np.random.default_rng(sd).permutation(n)[:sample_size]
            idx_rows = (idx[:, None] * rows + np.arange(rows)[None, :]).ravel()
            tasks.append(dask.delayed(on_kernel_block)(ladder_task, k_key, data[idx], device, rows, scale,
                                                       shift_of(idx_rows), orders, sd, tol_rel, device))
        entries = n_ladders * block_rows ** 2
    with Runner(client, progress=progress, label="bigspec flodance", unit="ladders", total=n_ladders,
                interrupted=lambda: "no estimate was computed; FLODANCE writes nothing, so run it again") as runner:
        results = runner.compute(tasks, tick=True)
    return _estimate(results, n=n, s=sample_size, rows=rows, kron=kron, scale=scale, shift=shift, seed=seed,
                     n_ladders=n_ladders, orders=orders, disjoint=disjoint, tol_rel=tol_rel, source=source,
                     entries=entries, t0=t0, block_rows=block_rows)


def _check_sizes(sample_size, n_ladders, n, disjoint_only=False):
    if n < MIN_SAMPLES:
        raise ArgumentError(f"the matrix has {n} samples; FLODANCE needs ladders of at least {MIN_SAMPLES} samples: "
                            f"compute the exact log-determinant ({arg('method', 'ldl')}) instead")
    if sample_size is None:
        sample_size = min(max(n // 4, MIN_SAMPLES), 2000)
    if sample_size < MIN_SAMPLES:
        raise ArgumentError(f"{arg('sample_size', sample_size)} is too small to fit a scaling law: the ladder needs "
                            f"at least {MIN_SAMPLES} samples")
    if sample_size > n:
        raise ArgumentError(f"{arg('sample_size', sample_size)} is larger than the matrix's {n} samples; use at most "
                            f"{arg('sample_size', n)} (at n the estimate is the exact value: "
                            f"{arg('method', 'ldl')} computes it)")
    fit = max(n // sample_size, 1)
    if n_ladders is None:
        n_ladders = min(LADDERS, fit)
    elif disjoint_only and n_ladders > fit:
        raise ArgumentError(
            f"{arg('n_ladders', n_ladders)} disjoint diagonal blocks of {sample_size} samples need "
            f"{n_ladders * sample_size} samples, but the matrix has {n}; use {arg('n_ladders', fit)} or a smaller "
            f"{arg('sample_size')} (from {kw('kernel')} and {kw('X')}, ladders may also be independent subsets)")
    return sample_size, n_ladders


def _estimate(results, *, n, s, rows, kron, scale, shift, seed, n_ladders, orders, disjoint, tol_rel, source,
              entries, t0, block_rows):
    issued: list[str] = []
    first = results[0]
    anchor_all = [float(r["log_d"][0].sum()) for r in results]
    anchor = anchor_all[0] if disjoint else float(np.mean(anchor_all))
    inc = np.concatenate([r["log_d"] for r in results])           # (ladders * orders, s)
    kept = np.concatenate([r["kept"] for r in results])
    negative = int(sum(int(r["negative"][0].sum()) for r in results))
    projected = int(first.get("projected", 0))
    if projected:
        emit(f"a pseudo-determinant: every sample's outputs share {projected} null direction(s), projected out "
             f"before factoring (each sample keeps {rows - projected} of {rows} rows); the estimate is log pdet",
             issued)
        block_rows = block_rows // rows * (rows - projected)
        rows_kept = rows - projected
    else:
        rows_kept = rows
    dropped = int(block_rows * len(results) - sum(int(r["kept"][0].sum()) for r in results))
    # rank per sample along the ladder: constant for a pseudo-determinant we can extrapolate
    kept_mean = kept.mean(axis=0)
    lo_rank, hi_rank = float(kept_mean[: s // 2].mean()), float(kept_mean[s // 2:].mean())
    rows_full, rows = rows, rows_kept
    if dropped:
        if hi_rank < lo_rank - max(0.05 * rows, 0.02):
            raise EstimateError(
                f"the rank stops growing along the ladder: {lo_rank:.3g} pivots kept per sample in its first half, "
                f"{hi_rank:.3g} in its second (of {rows}); the matrix is of low rank (a finite network's NTK has rank "
                f"at most its parameter count), so its pseudo-determinant does not follow a scaling law; compute it "
                f"exactly ({arg('method', 'ldl')}) or add a nugget with {arg('shift')}")
        emit(f"a pseudo-determinant: {dropped} of {block_rows * len(results)} pivots were below "
             f"{tol_rel:.3g} x max(diag) and were dropped ({hi_rank:.3g} of {rows} kept per sample); the estimate is "
             f"log pdet assuming the rank grows by that much per sample", issued)
    sign = 1
    if negative:
        raise EstimateError(
            f"{negative} negative pivots in the ladder (beyond {tol_rel:.3g} x max(diag)): the matrix is not positive "
            f"semidefinite, so the scaling law of kernel matrices does not apply and neither its sign nor its "
            f"log|det| can be extrapolated; compute it exactly ({arg('method', 'ldl')})")
    floor = None
    if shift is not None and np.ndim(shift) == 0 and shift > 0 and not negative:
        floor = rows * math.log(shift)                # every increment >= d log(sigma^2)
    fit = fit_ladder(inc, anchor=anchor, n=n, floor=floor, rows=rows)
    slope_top = fit["slope"]
    # rows as stored (each block's first order): the random orders within a block hide sorted rows
    stored = np.stack([r["log_d"][0] for r in results]).mean(axis=0)
    top = np.arange(1, s + 1) >= s / 4
    stored_slope = float(np.polyfit(np.log(np.arange(1, s + 1)[top]), stored[top], 1)[0])
    growth = max(slope_top, stored_slope)
    if growth > 0.05 and fit["high"] - fit["low"] > 0:
        raise EstimateError(
            f"the mean per-sample increment of the ladder grows with m (slope {growth:.3g} per log m up to m = {s}): "
            f"for a positive semidefinite matrix in random order it can only shrink, so this is not a kernel matrix "
            f"in random order (sorted rows, or an indefinite matrix); compute it exactly ({arg('method', 'ldl')})")
    t_curv = fit["curvature_t"]
    if t_curv < CONCAVE_T:
        raise EstimateError(
            f"the ladder's per-sample increments fall ever faster (their curvature in m over the top 3/4 of the "
            f"ladder has t = {t_curv:.3g}), which no scaling law does: the matrix behaves like a Gram matrix of "
            f"finitely many features (Z Z^T with a few more columns than rows), whose log-determinant FLODANCE cannot "
            f"extrapolate; use {arg('method', 'slq')} or an exact method ({arg('method', 'ldl')})")
    if t_curv < CONVEX_T:
        emit(f"the ladder does not show the ever slower decline of a scaling law (curvature t = {t_curv:.3g} in m, "
             f"below {CONVEX_T}): the extrapolation rests on the matrix being a kernel or NTK matrix; for a Gram matrix "
             f"of finitely many features (Z Z^T) it can be too high, beyond its interval, with no sign in the ladder; "
             f"a larger {arg('sample_size')} shows more of the curve", issued)
    d = kron
    est, low, high = d * fit["estimate"], d * fit["low"], d * fit["high"]
    width = (high - low) / 2
    if fit["saturation_m"] is not None and fit["saturation_m"] < n:
        emit(f"saturation: the extrapolated increments reach the nugget floor "
             f"{'' if rows == 1 else f'{rows} x '}log({shift:.3g}) = {floor:.4g} "
             f"at about m = {fit['saturation_m']} samples, below n = {n}: the power law bends there, and the interval "
             f"includes the floor", issued)
    if abs(est) > 0 and width / abs(est) > WIDE:
        emit(f"a wide interval: +-{100 * width / abs(est):.3g}% ({width:.4g} nats); the ladder of {s} samples "
             f"extrapolated {n / s:.3g}x does not pin the scaling law down (held-out error {fit['held_out_error']:.3g} "
             f"nats over the top of the ladder); a larger {arg('sample_size')} or more {arg('n_ladders')} narrow it",
             issued)
    inc_mean = inc.mean(axis=0)
    crosses = bool(np.any(inc_mean[s // 10:] > 0) and np.any(inc_mean[s // 10:] < 0))
    flops = n_ladders * orders * block_rows ** 3 / 3 * 2
    ladders = [np.cumsum(r["log_d"][0]) for r in results]
    curve_m = fit["curve"][0]
    # the fitted l(m): anchored at l(s) and integrated both ways along the curve
    cm = curve_m
    lad0 = ladders[0]
    fit_y = np.full(cm.shape, np.nan)
    inside = cm <= s
    fit_y[inside] = lad0[cm[inside].astype(np.int64) - 1]
    if 0 < n - s <= 5_000_000:      # (s = n: the ladder is the whole matrix, nothing ahead)
        steps = np.cumsum(fit["mean_increment"](np.arange(s + 1, n + 1, dtype=np.float64)))
        # the chosen model's shape, scaled to end at the estimate (an average over the models)
        if steps[-1] != 0:
            steps *= (fit["estimate"] - anchor) / steps[-1]
        ahead = anchor + steps
        fit_y[~inside] = ahead[cm[~inside].astype(np.int64) - s - 1]
    ok = np.isfinite(fit_y)
    frac = np.clip((cm - s) / max(n - s, 1), 0, 1)
    band_low = fit_y + frac * (fit["low"] - fit["estimate"])
    band_high = fit_y + frac * (fit["high"] - fit["estimate"])
    diagnostics = dict(
        model=fit["model"], window=fit["window"], held_out_error=fit["held_out_error"],
        held_out_scaled=fit["held_out_scaled"], std_error=fit["std_error"], alternatives=fit["alternatives"],
        slope=slope_top, top_increment=fit["top_increment"], monotone_bound=d * fit["monotone_bound"],
        ladder_logdet=[d * a for a in anchor_all], dropped_pivots=dropped, projected_directions=projected, negative_pivots=negative,
        rank_per_sample=hi_rank, increments_change_sign=crosses, saturation_m=fit["saturation_m"],
        floor=floor, extrapolation=n / s, curvature_t=t_curv,
        interval_parts={k: (tuple(d * v for v in x) if isinstance(x, tuple) else d * x)
                        for k, x in fit["interval_parts"].items()})
    meaning = ("FLODANCE interval: the near-best models' spread, widened by 2 standard errors of the chosen fit and "
               "by its held-out extrapolation error scaled to n, capped above by the monotone bound "
               "l(s) + (n - s) * (top increment)" + (" and below by the nugget floor" if floor is not None else "")
               + "; it covers the model and sampling uncertainty the ladder shows, not a change of regime beyond it"
               + (" (log pdet: dropped pivots assumed to continue at the same rate)" if dropped else ""))
    return EstimateResult(
        method="flodance", sign=sign, logabsdet=float(est), interval=(float(low), float(high)),
        interval_meaning=meaning, n=n, rows_per_sample=rows_full, kron_outputs=kron, scale=scale,
        shift=0.0 if shift is None else (float(shift) if np.ndim(shift) == 0 else "vector"),
        settings=dict(sample_size=s, n_ladders=n_ladders, orders=orders, disjoint=disjoint, seed=seed,
                      pseudo_tol=tol_rel),
        diagnostics=diagnostics,
        cost=dict(entries=int(entries), flops=float(flops), seconds=time.perf_counter() - t0),
        warnings=tuple(issued), source=source, seconds=time.perf_counter() - t0,
        curves=dict(ladders=ladders, fit_x=cm[ok], fit_y=fit_y[ok], band_low=band_low[ok], band_high=band_high[ok]),
    )
