"""Kernel and NTK spectra across sizes: the integral operator's eigenvalues, fitted over nested samples.

For a kernel matrix K_m of m random points, ``lambda_k(K_m) / m`` tends to the k-th
eigenvalue ``mu_k`` of the kernel's integral operator (Koltchinskii & Giné 2000, "Random
matrix approximation of spectra of integral operators", Bernoulli 6(1)), so the top of the
spectrum grows like m, while ranks near m fall below ``m mu_k`` by a finite-size factor that
depends on the relative rank ``k / m``. Free decompression in its bulk form cannot follow a
spectrum spanning many decades; this module decompresses it the way the operator view
suggests, checked on held-out sizes:

* each sample block of s rows is split into nested disjoint diagonal sub-blocks of s/2,
  s/4, ... rows (on the workers, beside the sample's own eigenvalues, ~1/3 more work);
* the rank-averaged eigenvalues of each size m fit ``log(lambda_k(K_m) / m) = log mu_k +
  rho(k / m)`` by least squares (``mu_k`` free per rank, ``rho`` piecewise linear in
  ``log(k / m)``, 0 at the top, smooth);
* the top ranks, whose eigenvalues in near-degenerate groups spread like ``m^(-1/2)``, fit
  ``lambda_k(K_m) / m = mu_k + delta_k m^(-1/2)`` instead;
* beyond rank s, ``mu_k`` follows the power law fitted to ranks s/8..s (its exponent and an
  interval are reported);
* the size-n spectrum is ``n mu_k exp(rho(k / n))``; its trace is made exactly n times the
  samples' mean diagonal by scaling the ranks between the top and n/16, where the fit is
  least constrained (measured deficit before: 1-12%);
* the held-out check: the same fit from the sizes up to s/4 predicts the sample's own
  spectrum at s; that error (Wasserstein-1 of log10 eigenvalues, in decades), scaled from the
  4x step to the real ``n / s``, is reported and warned about above 0.1 decades;
* quantile intervals: every nested size predicted from its halves' and quarters' sub-blocks
  gives one held-out relative error per quantile; scaled to the real ``n / s`` they set a
  Student-t prediction interval (:func:`quantile_halfwidths`).

Examples
--------
>>> import numpy as np
>>> from bigspec.spectra.operator import nested_eigvalsh, fit_operator, level_means
>>> lam = 1.0 / np.arange(1, 801) ** 2                      # a power-law operator
>>> Z = np.random.default_rng(0).standard_normal((800, 800))
>>> K = (Z * lam) @ Z.T                                     # its Gaussian-equivalent kernel matrix
>>> fit = fit_operator(level_means([nested_eigvalsh(K[:400, :400])]), n=800, mean=float(np.mean(np.diag(K))))
>>> bool(abs(np.log10(fit["values"][0] / np.linalg.eigvalsh(K)[-1])) < 0.05)
True
"""

from __future__ import annotations

import math

import numpy as np

MIN_LEVEL = 16          # smallest sub-block, rows
LEVELS = 5              # halvings below the sample
HEAD = 32               # top ranks fitted with the m^(-1/2) spread of near-degenerate groups
KNOTS = 20              # knots of rho on log(k / m) in [log(1 / s), 0]
SMOOTH = 1.0            # weight of rho's second differences
TAIL_FIT = (1 / 8, 1.0)  # ranks (fractions of s) the power law beyond s is fitted on
REPAIR_TO = 1 / 16      # the trace repair scales ranks HEAD+1 .. n * REPAIR_TO
EXACT_RANKS = 8192      # ranks evaluated one by one; beyond, geometric bins with weights
WIDE_DECADES = 0.1      # held-out error (scaled) above which the result warns
INTERVAL_LEVEL = 0.95   # level of the quantile intervals in ``diagnostics``
INTERVAL_P = (0.1, 0.25, 0.5, 0.75, 0.9)   # their probabilities
WHOLE = 200              # relative positions a held-out error is averaged over (its floor)


def levels_for(s: int, rows: int = 1) -> list[int]:
    """Sub-block sizes (rows) below a sample of ``s`` rows: s/2, s/4, ... down to MIN_LEVEL rows."""
    out, m = [], s // rows
    for _ in range(LEVELS):
        m //= 2
        if m * rows < MIN_LEVEL:
            break
        out.append(m * rows)
    return out


def nested_eigvalsh(block, device: str = "cpu", rows: int = 1) -> dict:
    """Descending eigenvalues of a sample block and of its disjoint nested diagonal sub-blocks.

    Returns ``{m: (count, m) float64 array}`` for m = s, s/2, s/4, ... (rows; whole samples
    of ``rows`` rows each). Runs on a worker.
    """
    from ..backend import get_namespace, to_host
    from ..sampling import as_float64

    xp = get_namespace(device)
    B = as_float64(block, device)
    s = B.shape[0]
    out = {s: np.sort(to_host(xp.linalg.eigvalsh(B)))[::-1][None, :]}
    for m in levels_for(s, rows):
        out[m] = np.stack([np.sort(to_host(xp.linalg.eigvalsh(B[j:j + m, j:j + m])))[::-1]
                           for j in range(0, s - m + 1, m)])
    return out


def level_means(per_sample: list[dict]) -> dict:
    """Rank-averaged descending eigenvalues per size, pooled over the samples' sub-blocks."""
    sizes = sorted(set.intersection(*[set(d) for d in per_sample]))
    return {m: np.concatenate([d[m] for d in per_sample]).mean(axis=0) for m in sizes}


def _hats(u, knots):
    """Piecewise-linear hat functions at ``knots`` evaluated at ``u`` (clamped to the knots)."""
    u = np.clip(u, knots[0], knots[-1])
    H = np.zeros((u.size, knots.size))
    i = np.clip(np.searchsorted(knots, u) - 1, 0, knots.size - 2)
    w = (u - knots[i]) / (knots[i + 1] - knots[i])
    H[np.arange(u.size), i] = 1 - w
    H[np.arange(u.size), i + 1] += w
    return H


def _fit_profile(L: dict, tol: float):
    """log mu_k (k = 1..s) and rho's knot values from the levels, by least squares.

    The normal equations have a diagonal block for the ranks, eliminated exactly (Schur
    complement), so the cost is linear in s.
    """
    s = max(L)
    knots = np.linspace(math.log(1.0 / s), 0.0, KNOTS)
    idx, H, y = [], [], []
    for m, lam in L.items():
        k = np.arange(1, m + 1)
        ok = lam > tol
        idx.append(k[ok] - 1)
        H.append(_hats(np.log((k[ok] - 0.5) / m), knots)[:, 1:])     # rho = 0 at the first knot
        y.append(np.log(lam[ok] / m))
    idx, H, y = np.concatenate(idx), np.vstack(H), np.concatenate(y)
    counts = np.bincount(idx, minlength=s).astype(float)
    seen = counts > 0
    D = np.where(seen, counts, 1.0)
    r_mu = np.bincount(idx, weights=y, minlength=s)
    Bt = np.stack([np.bincount(idx, weights=H[:, j], minlength=s) for j in range(H.shape[1])])   # (p, s)
    C = H.T @ H
    second = np.zeros((KNOTS - 3, KNOTS - 1))
    for i in range(KNOTS - 3):
        second[i, i:i + 3] = (1.0, -2.0, 1.0)
    C = C + SMOOTH * second.T @ second
    r_rho = H.T @ y
    S = C - (Bt / D) @ Bt.T
    rho = np.linalg.lstsq(S, r_rho - Bt @ (r_mu / D), rcond=None)[0]
    log_mu = (r_mu - Bt.T @ rho) / D
    log_mu[~seen] = np.nan
    return log_mu, knots, np.concatenate([[0.0], rho])


def _head(L: dict, n: int, tol: float) -> np.ndarray:
    """Top ranks: ``lambda_k(K_m) / m = mu_k + delta_k m^(-1/2)`` over the sizes of at least 4 HEAD rows."""
    sizes = [m for m in sorted(L) if m >= 4 * HEAD]
    if len(sizes) < 2:
        return np.zeros(0)
    M = np.asarray(sizes, float)
    A = np.stack([np.ones_like(M), M ** -0.5], axis=1)
    Y = np.stack([L[m][:HEAD] / m for m in sizes])
    coef = np.linalg.lstsq(A, Y, rcond=None)[0]
    head = n * (coef[0] + coef[1] / math.sqrt(n))
    return np.where(np.all(Y > tol / M[:, None], axis=0), head, np.nan)


def _ranks(n: int):
    """(rank centers, weights): 1..EXACT_RANKS one by one, then geometric bins up to n."""
    if n <= EXACT_RANKS:
        return np.arange(1, n + 1, dtype=float), np.ones(n)
    edges = np.unique(np.geomspace(EXACT_RANKS + 0.5, n + 0.5, 4097))
    k = np.concatenate([np.arange(1, EXACT_RANKS + 1, dtype=float), np.sqrt(edges[:-1] * edges[1:])])
    w = np.concatenate([np.ones(EXACT_RANKS), np.diff(edges)])
    return k, w


def fit_operator(L: dict, n: int, mean: float, tol_rel: float = 1e-10) -> dict:
    """The size-n spectrum from rank-averaged eigenvalues of nested sizes (``level_means``).

    Parameters
    ----------
    L : dict
        ``{m: descending eigenvalues}`` for sizes m (rows), the largest being the sample.
    n : int
        Rows of the matrix to decompress to (n >= the largest m).
    mean : float
        The matrix's mean diagonal entry (the trace is n times it).

    Returns
    -------
    dict
        ``values`` (descending, at the ranks ``ranks`` with ``weights`` eigenvalues each),
        ``rank`` (nonzero eigenvalues: n, or the sample's rank if it is rank deficient),
        ``exponent`` and ``exponent_interval`` (of ``mu_k ~ k^-a`` beyond rank s),
        ``trace_repair`` (the factor the repaired ranks were scaled by), ``head`` (the top
        ranks' values, before the repair).
    """
    s = max(L)
    top = float(L[s][0])
    tol = tol_rel * abs(top)
    rank_s = int(np.sum(L[s] > tol))
    log_mu, knots, rho_c = _fit_profile(L, tol)
    k_s = np.arange(1, s + 1, dtype=float)
    ok = np.isfinite(log_mu)

    def power(lo_frac, hi_frac):
        sel = ok & (k_s >= max(lo_frac * min(s, rank_s), 2)) & (k_s <= hi_frac * min(s, rank_s))
        if sel.sum() < 4:
            return None
        A = np.stack([np.ones(sel.sum()), np.log(k_s[sel])], axis=1)
        coef, res, *_ = np.linalg.lstsq(A, log_mu[sel], rcond=None)
        r = log_mu[sel] - A @ coef
        se = math.sqrt(float(r @ r) / max(sel.sum() - 2, 1) * np.linalg.pinv(A.T @ A)[1, 1])
        return coef, se

    main = power(*TAIL_FIT)
    halves = [power(TAIL_FIT[0], 0.5), power(0.5, 1.0)]
    if main is None:
        coef, exponent, interval = None, float("nan"), (float("nan"), float("nan"))
    else:
        coef, se = main
        exponent = -float(coef[1])
        spread = max([abs(-h[0][1] - exponent) for h in halves if h is not None] + [0.0])
        half = math.sqrt((2 * se) ** 2 + spread ** 2)
        interval = (exponent - half, exponent + half)
    deficient = rank_s < 0.99 * s
    rank_n = rank_s if deficient else n
    k, w = _ranks(n)
    known = np.interp(k, k_s[ok], log_mu[ok])
    beyond = k > s
    if coef is not None:
        known = np.where(beyond, coef[0] + coef[1] * np.log(k), known)
    rho = _hats(np.log((k - 0.5) / n), knots) @ rho_c
    values = n * np.exp(known + rho)
    head = _head(L, n, tol)
    profile_head = values[:HEAD].copy()
    if head.size:
        h = min(head.size, values.size)
        values[:h] = np.where(np.isfinite(head[:h]) & (head[:h] > 0), head[:h], values[:h])
    values = np.where(k <= rank_n, values, 0.0)
    # the trace: exactly n * mean, by scaling the ranks between the top and n / 16
    repair = (k > HEAD) & (k <= max(REPAIR_TO * n, HEAD + 1)) & (values > 0)
    factor = 1.0
    if repair.any():
        rest = n * mean - float(np.sum((w * values)[~repair]))
        here = float(np.sum((w * values)[repair]))
        if rest > 0 and here > 0:
            factor = rest / here
            values = np.where(repair, values * factor, values)
    return dict(ranks=k, weights=w, values=values, rank=int(rank_n), exponent=exponent,
                exponent_interval=tuple(float(v) for v in interval), trace_repair=float(factor),
                head=head, profile_head=profile_head, rank_deficient=bool(deficient))


def held_out(L: dict, mean: float, tol_rel: float = 1e-10, offset: float = 0.0) -> float | None:
    """Wasserstein-1 (decades) between the sample's spectrum and its prediction from sizes <= s/4.

    Both are compared as the spectrum the result describes: eigenvalues under ``tol_rel`` x the
    largest count as 0 (rounding), then ``offset`` (a floor or shift) is added.
    """
    s = max(L)
    sub = {m: v for m, v in L.items() if m <= s // 4}
    if len(sub) < 2:
        return None
    tol = tol_rel * float(L[s][0])
    pred = fit_operator(sub, s, mean, tol_rel)["values"]
    pred = np.where(pred > tol, pred, 0.0) + offset
    obs = np.where(L[s] > tol, L[s], 0.0) + offset
    pos = (pred > 0) & (obs > 0)
    if pos.sum() < 2:
        return None
    return float(np.mean(np.abs(np.log10(np.sort(pred[pos])) - np.log10(np.sort(obs[pos])))))


def _log_ratio(a, b):
    """``|log(a / b)|`` elementwise: 0 where a == b (both 0 included), inf where the ratio is not positive."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(np.log(a / b))
    return np.where(a == b, 0.0, np.where(np.isfinite(out), out, np.inf))


def _nonzero_quantile(values, u, tol):
    """Table quantiles at ``u`` (in [0, 1]) of the values above ``tol`` (equal weights); NaN without any."""
    v = np.sort(np.asarray(values)[np.asarray(values) > tol])
    if v.size == 0:
        return np.full(np.shape(u), np.nan)
    return v[np.clip(np.ceil(np.asarray(u) * v.size - 1e-9).astype(np.int64) - 1, 0, v.size - 1)]


def held_out_replicates(L: dict, u, size: int, tol_rel: float = 1e-10, offset: float = 0.0) -> np.ndarray:
    """Held-out relative errors of quantiles, scaled to a decompression to ``size`` rows: ``(k, len(u))``.

    Each nested size m (the sample's s rows, s/2, ...) is predicted by :func:`fit_operator` from its
    sub-blocks of at most m/2 rows, and again from those of at most m/4 (wherever at least 2 sizes are
    left). At the relative positions ``u`` in the nonzero eigenvalues (``u = 0.5``: their median),
    ``|log(predicted / observed)|`` of the spectrum the result describes (``offset``, a floor or a
    shift, added, as :func:`held_out` compares them), at least its mean over the whole spectrum
    (the prediction's held-out Wasserstein-1, in nats: a quantile where the signed error happens to
    cross 0 is not taken as exact), times ``log(size / s) / log(step)`` (at least 1, as for
    ``held_out_scaled``, and also when ``size == s``: the fit smooths the samples' own spectrum,
    4% off at the median of a Matérn kernel's), is one row. A prediction without nonzero
    eigenvalues where the observation has them gives ``inf``. No rows for samples under 64 rows.

    Without the floor, the exact 10-90% quantiles of a 6-d RBF kernel + 1e-4 I (n = 3000, 2
    samples of n/4) fell outside the 95% intervals of :func:`quantile_halfwidths` at 25%, where the
    held-out errors crossed 0 and the estimate was 62% off, and those of the digits NTK at 90%.
    """
    s = max(L)
    tol = tol_rel * abs(float(L[s][0]))
    alpha = size / s
    both = np.concatenate([np.ravel(u), (np.arange(WHOLE) + 0.5) / WHOLE])    # at u, and over the spectrum
    rows = []
    for step in (2, 4):
        grow = max(math.log(alpha) / math.log(step), 1.0)      # one step's worth at least, also at size s
        for m in sorted(L, reverse=True):
            sub = {k: v for k, v in L.items() if k <= m // step}
            if len(sub) < 2:
                continue
            pred = fit_operator(sub, m, float(np.mean(L[m])), tol_rel)["values"]
            err = _log_ratio(_nonzero_quantile(pred, both, tol) + offset, _nonzero_quantile(L[m], both, tol) + offset)
            rows.append(np.maximum(err[:np.size(u)], np.mean(err[np.size(u):])) * grow)
    return np.array(rows).reshape(len(rows), np.size(u))


def quantile_halfwidths(per_sample: list[dict], size: int, mean: float, p, *, level: float = INTERVAL_LEVEL,
                        tol_rel: float = 1e-10, offset: float = 0.0, fit: dict | None = None,
                        each: list | None = None) -> tuple[np.ndarray, int]:
    """Half-widths, in log units, of prediction intervals of the size-``size`` quantiles at ``p``.

    The interval of a quantile ``q`` (``offset`` included) is ``q exp(-h) .. q exp(h)`` with

        h^2 = (t_k((1 + level) / 2) RMS_j e_j)^2 + (z((1 + level) / 2) se)^2,

    ``e_j`` the k held-out errors of :func:`held_out_replicates` at the same relative position in
    the nonzero eigenvalues, ``t_k`` Student's t with k degrees of freedom, ``z`` the normal's, and
    ``se`` the standard error of log q over the samples' own fits (0 with one sample). If the
    decompression's log-error at ``p`` is distributed like the held-out ones (normal, mean 0),
    ``error / RMS_j e_j`` follows t_k, which makes the first term a prediction interval at
    ``level``; the replicates share their data, so read the level as nominal (the measured
    coverage is in :meth:`~bigspec.spectra.result.SpectrumResult.quantile_intervals`).

    Parameters
    ----------
    per_sample : list of dict
        ``{m: (count, m) descending eigenvalues}`` per sample, the floor taken off (as
        :func:`kernel_decompress` fits them).
    size : int
        Rows of the decompressed matrix.
    mean : float
        Its mean diagonal entry, the floor taken off.
    p : array_like, shape (q,)
        Probabilities in [0, 1].
    level : float
        Nominal coverage, in (0, 1).
    tol_rel : float
        Eigenvalues under ``tol_rel`` x the largest are 0 (rounding).
    offset : float
        The floor and shift the result adds to the fitted eigenvalues.
    fit, each : dict, list of dict, optional
        :func:`fit_operator` of all the samples, and of each alone, to ``size`` (computed when not
        given).

    Returns
    -------
    (h, k) : (ndarray, shape (q,), int)
        Half-widths in log units (0 inside the atom at 0 of a rank-deficient fit, whose rank the
        samples fix; ``inf`` without replicates) and the number k of replicates.
    """
    from scipy.stats import norm, t

    p = np.atleast_1d(np.asarray(p, float))
    L = level_means(per_sample)
    s = max(L)
    tol = tol_rel * abs(float(L[s][0]))
    fit = fit or fit_operator(L, size, mean, tol_rel)
    v, w = fit["values"], fit["weights"] / size
    zero = float(np.sum(w[v <= tol]))
    u = np.clip((p - zero) / (1.0 - zero), 0.0, 1.0) if zero < 1 else np.zeros_like(p)
    reps = held_out_replicates(L, u, size, tol_rel, offset)
    k = reps.shape[0]
    held = np.full(p.size, np.inf)
    if k:
        with np.errstate(over="ignore", invalid="ignore"):
            held = float(t.ppf((1 + level) / 2, k)) * np.sqrt(np.mean(reps ** 2, axis=0))
    se = np.zeros(p.size)
    if len(per_sample) >= 2:
        each = each or [fit_operator(level_means([d]), size, mean, tol_rel) for d in per_sample]
        qs = []
        for f in each:
            order = np.argsort(f["values"])
            vals, cum = f["values"][order], np.cumsum(f["weights"][order]) / size
            qs.append(vals[np.clip(np.searchsorted(cum, p, side="left"), 0, vals.size - 1)])
        qs = np.where(np.array(qs) > tol, qs, 0.0) + offset
        spread = np.array([_log_ratio(q, qs[0]) for q in qs])          # log q - log q_0, up to sign
        signed = spread * np.sign(qs - qs[0])
        with np.errstate(invalid="ignore"):
            se = np.std(signed, axis=0, ddof=1) / math.sqrt(len(each))
        se = np.where(np.isfinite(se), se, np.inf)
    h = np.hypot(held, float(norm.ppf((1 + level) / 2)) * se)
    order = np.argsort(v)                      # the estimate, as SpectrumResult.quantiles takes it
    estimate = v[order][np.clip(np.searchsorted(np.cumsum(w[order]), p, side="left"), 0, v.size - 1)]
    atom = (estimate <= tol) & fit["rank_deficient"]
    return np.where(atom, 0.0, h), k


def kernel_table(per_sample: list[dict], size: int, mean: float):
    """(values ascending, weights summing to 1, fit dict, held-out decades) for ``size`` rows."""
    L = level_means(per_sample)
    fit = fit_operator(L, size, mean)
    order = np.argsort(fit["values"])
    v, w = fit["values"][order], fit["weights"][order] / size
    return v, w, fit, held_out(L, mean)


def _top_intervals(per_sample: list[dict], fit: dict, size: int, mean: float, k: int = 10, L: dict | None = None):
    """(value, low, high) of the top-k eigenvalues: two standard errors between samples (when
    there are several) joined with the gap between the head model and the profile fit, and with
    the held-out error of the top ranks: the samples' own top-k predicted from their sub-blocks
    of at most s/2 rows, its relative error (per rank, at least the median over the k) times
    the doublings of the decompression. Without that term, 2 samples of 250 rows
    decompressed 16x gave intervals that covered 0-1 of the top 10 (Matérn, ReLU NTK)."""
    values = np.sort(fit["values"])[::-1][:k]
    held = np.zeros(values.size)
    if L is not None:
        s = max(L)
        sub = {m: v for m, v in L.items() if m <= s // 2}
        if len(sub) >= 2:
            pred = np.sort(fit_operator(sub, s, mean)["values"])[::-1][:values.size]
            obs = np.resize(L[s][:values.size], pred.size)
            with np.errstate(divide="ignore", invalid="ignore"):
                err = np.abs(np.log(pred / obs))
            err = np.where(np.isfinite(err), err, np.inf)
            grow = max(math.log(size / s) / math.log(2.0), 1.0) if size > s else 0.0
            held = np.resize(np.maximum(err, np.median(err)) * grow, values.size)
    model = np.abs(np.nan_to_num(fit["head"][:k] - fit["profile_head"][:k])) if fit["head"].size else np.zeros(k)
    model = np.resize(model, values.size)
    se = np.zeros(values.size)
    if len(per_sample) >= 2:
        each = [np.sort(fit_operator(level_means([d]), size, mean)["values"])[::-1][:k] for d in per_sample]
        each = np.stack([np.resize(e, values.size) for e in each])
        se = each.std(axis=0, ddof=1) / math.sqrt(len(per_sample))
    half = np.sqrt((2 * se) ** 2 + model ** 2)
    with np.errstate(over="ignore"):
        return [(float(v), float(max(min(v - h, v * math.exp(-e)), 0.0)), float(max(v + h, v * math.exp(min(e, 700)))))
                for v, h, e in zip(values, half, held)]


def kernel_decompress(per_sample: list[dict], size: int, *, scale: float = 1.0, shift: float = 0.0, grid=500,
                      atom_tol: float = 1e-9, seed=None, source=None, reason: str | None = None,
                      held_out_by_regime: dict | None = None):
    """The size-``size`` spectrum from nested sample eigenvalues (:func:`nested_eigvalsh` per sample).

    Returns a :class:`~bigspec.spectra.result.SpectrumResult` in the ``"kernel"`` regime: a
    discrete table (values, weights), its log-scale density, an atom at the floor for a
    rank-deficient matrix, and in ``diagnostics``: ``held_out_decades`` (the 4x held-out
    error), ``held_out_scaled`` (scaled to ``size / sample_size``), ``tail_exponent`` and its
    interval, ``top_eigenvalues`` ((value, low, high) of the 10 largest), ``quantile_intervals``
    ((p, low, estimate, high) at p = 10, 25, 50, 75, 90%: :meth:`SpectrumResult.quantile_intervals`
    at ``quantile_interval_level`` 0.95), ``trace_repair``.

    Warns
    -----
    DecompressionWarning
        The scaled held-out error is above 0.1 decades, or cannot be measured (samples
        under 4 x 3 x 16 rows).
    """
    import dataclasses
    import time
    import warnings

    from .free import DecompressionWarning, table_density
    from .result import SpectrumResult

    t0 = time.perf_counter()
    per = [{m: scale * np.asarray(v, dtype=np.float64) for m, v in d.items()} for d in per_sample]
    per_scaled = list(per)
    s = max(per[0])
    pooled = np.concatenate([d[s][0] for d in per])
    mean = float(pooled.mean())
    top = float(np.max(np.abs(pooled)))
    cluster = pooled - pooled.min() <= atom_tol * top
    floor = 0.0
    if cluster.mean() >= 0.01 and cluster.sum() >= 2 and abs(pooled.min()) > atom_tol * top:
        floor = float(pooled.min())      # a ridge stored in the matrix (K + s I): exact under decompression
    if floor:
        per = [{m: np.maximum(v - floor, 0.0) for m, v in d.items()} for d in per]
    L = level_means(per)
    fit = fit_operator(L, size, mean - floor, atom_tol)   # eigenvalues under atom_tol x the largest are 0
    order = np.argsort(fit["values"])
    v, w = fit["values"][order], fit["weights"][order] / size
    held = held_out(L, mean - floor, atom_tol, offset=floor + shift)
    alpha = size / s
    scaled = None if held is None else held * max(math.log(alpha) / math.log(4.0), 1.0 if alpha > 1 else 0.0)
    issued = []
    if held is None:
        issued.append(f"samples of {s} rows are too small for the held-out check of the kernel regime (it needs "
                      f"sub-blocks of s/4 and s/8 rows of at least {MIN_LEVEL}): its error is not known")
    elif scaled > WIDE_DECADES:
        issued.append(f"the kernel regime's held-out error is {scaled:.3g} decades (Wasserstein-1 of log10 "
                      f"eigenvalues, predicting the samples' own spectrum from their quarters, scaled to the "
                      f"{alpha:.3g}x decompression): a typical eigenvalue may be off by a factor "
                      f"{10 ** scaled:.2g}, the smallest ones and single quantiles by much more, and the top "
                      f"intervals may not cover; larger samples narrow it")
    for msg in issued:
        warnings.warn(msg, DecompressionWarning, stacklevel=4)   # the caller of bigspec.spectrum
    out = table_density(v, w, grid)
    offset = floor + shift
    tops = _top_intervals(per, fit, size, mean - floor, L=L)
    settings = {"regime": "kernel", **out["settings"], "floor": floor, "shift": shift, "scale": scale,
                "atom_tol": atom_tol, "levels": sorted(int(m) for m in L)}
    diagnostics = {
        "regime_reason": reason or "regime='kernel' requested", "sample_mean": mean + shift,
        "held_out_decades": held, "held_out_scaled": scaled, "held_out_by_regime": held_out_by_regime or {},
        "tail_exponent": fit["exponent"], "tail_exponent_interval": fit["exponent_interval"],
        "top_eigenvalues": [(a + offset, lo + offset, hi + offset) for a, lo, hi in tops],
        "trace_repair": fit["trace_repair"], "rank": fit["rank"], "warnings": issued,
        "note": "kernel-operator decompression: the operator's eigenvalues fitted over nested samples; the "
                "density is a log-scale KDE: read it on a log axis",
    }
    res = SpectrumResult(
        x=out["x"] + offset, density=out["density"], support=tuple(float(p + offset) for p in out["support"]),
        atoms=[(float(p + offset), float(m)) for p, m in out["atoms"]], size=size, sample_size=s,
        n_samples=len(per), alpha=alpha, seed=seed, source=source, settings=settings, diagnostics=diagnostics,
        seconds=time.perf_counter() - t0, eigenvalues=pooled + shift, table=(v + offset, w), nested=tuple(per_scaled))
    low, est, high = res._quantile_intervals(np.asarray(INTERVAL_P), INTERVAL_LEVEL, per=per, fit=fit)
    rows = [(float(q), float(a), float(b), float(c)) for q, a, b, c in zip(INTERVAL_P, low, est, high)]
    return dataclasses.replace(res, diagnostics={**diagnostics, "quantile_intervals": rows,
                                                 "quantile_interval_level": INTERVAL_LEVEL},
                               seconds=time.perf_counter() - t0)


def held_out_bulk(per_sample: list[dict], scale: float = 1.0, shift: float = 0.0,
                  tol_rel: float = 1e-12) -> float | None:
    """The same held-out check for bulk free decompression: the quarters' eigenvalues decompressed
    to the sample size, against the sample's own (Wasserstein-1 of log10 eigenvalues, decades)."""
    import warnings

    from .free import free_decompress
    from .metrics import quantile_function

    s = max(per_sample[0])
    quarter = [m for m in per_sample[0] if m <= s // 4]
    if not quarter:
        return None
    q = max(quarter)                     # s / 4 rows, or the nearest whole number of samples below it
    quarters = [scale * row for d in per_sample for row in d[q]]
    observed = np.concatenate([scale * d[s][0] for d in per_sample])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = free_decompress(quarters, s, sample_size=q, regime="bulk")
    except Exception:   # a fit that fails is a regime that does not apply
        return None
    p = (np.arange(2000) + 0.5) / 2000
    tol = tol_rel * float(np.max(np.abs(observed)))

    def log10(q):   # rounding (under tol) is 0; the shift is added; 0 compares equal to 0
        return np.log10(np.maximum(np.where(q > tol, q, 0.0) + shift, tol))

    return float(np.mean(np.abs(log10(quantile_function(pred, p)) - log10(quantile_function(observed, p)))))


def held_out_logdet(per_sample: list[dict], shift: float = 0.0, floor: float = 0.0,
                    tol_rel: float = 1e-9) -> float | None:
    """Nats per row by which the fit from sizes <= s/4 misses the samples' own mean log|eigenvalue|
    (of ``eigenvalues + shift``; ``per_sample`` as in :attr:`SpectrumResult.nested`, ``floor`` the
    ridge found in them, ``settings["floor"]``)."""
    s = max(per_sample[0])
    L = level_means([{m: np.maximum(v - floor, 0.0) for m, v in d.items()} for d in per_sample])
    sub = {m: v for m, v in L.items() if m <= s // 4}
    if len(sub) < 2:
        return None
    pooled = np.concatenate([d[s][0] for d in per_sample])
    pred = fit_operator(sub, s, float(pooled.mean()) - floor, tol_rel)["values"] + floor
    with np.errstate(divide="ignore"):
        exact = float(np.mean(np.log(np.abs(pooled + shift))))
        guess = float(np.mean(np.log(np.abs(pred + shift))))
    return guess - exact if np.isfinite(exact) and np.isfinite(guess) else None
