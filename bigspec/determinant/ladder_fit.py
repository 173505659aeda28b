"""FLODANCE's fit: a scaling law for the mean per-sample increment of a log-determinant ladder.

A pure function of the ladder (testable without Dask). With data in random order, the leading
minors ``l(m) = log|det K_m|`` of an n-sample kernel matrix grow by increments
``Delta_m = l(m) - l(m - 1)``, the log of the Gaussian-process posterior variance (the Schur
complement) at the m-th sample given the earlier ones. Their mean follows a neural scaling
law, ``E Delta_m ~ nu log m + c`` (Ameli, van der Heide, Hodgkinson, Roosta & Mahoney 2025,
"Determinant Estimation under Memory Constraints and Neural Scaling Laws", arXiv:2503.04424),
so ``l(n) = l(s) + sum_{m=s+1..n} E Delta_m`` is extrapolated from a ladder of s samples.

What this module adds to the published fit:

* the increments, not the cumulative curve, are fitted (their noise is nearly independent, so
  least squares and its standard errors mean what they say), by column-scaled ``lstsq``;
* the candidate models (power law with 0-2 Laurent corrections, and with a known nugget floor
  ``log(floor + C m^nu)``) and their windows are scored by held-out extrapolation (fit on the
  lower part, predict the top), the best is chosen and the near-best are kept as alternatives;
* the interval joins the alternatives' spread, the chosen fit's standard error and its
  held-out error scaled to the real extrapolation length, and is capped by what is known for
  certain: the posterior variance never grows with more samples, so ``E Delta_m`` is
  nonincreasing and ``l(n) <= l(s) + (n - s) E Delta_s``; with a known nugget ``sigma^2``,
  ``Delta_m >= d log sigma^2``.

Examples
--------
>>> import numpy as np
>>> from bigspec.determinant.ladder_fit import fit_ladder
>>> m = np.arange(1, 801)
>>> inc = -0.5 * np.log(m) + 0.1 + np.random.default_rng(0).normal(0, 0.05, m.size)
>>> fit = fit_ladder(inc[None, :], anchor=inc.sum(), n=8000)
>>> truth = inc.sum() + np.sum(-0.5 * np.log(np.arange(801, 8001)) + 0.1)
>>> bool(fit["low"] <= truth <= fit["high"]), bool(abs(fit["estimate"] - truth) / abs(truth) < 0.01)
(True, True)
"""

from __future__ import annotations

import math

import numpy as np

#: models: name -> number of Laurent terms after (1, log m). Tried and left out (bench/gt
#: ladders of Matérn and ReLU-NTK matrices at n = 16384): a (log m)^2 term and a term linear in
#: m (a rank near n) won held-out scores they did not deserve and doubled the errors (2% -> 6-16%)
MODELS = {"power": 0, "power+1/m": 1, "power+1/m+1/m^2": 2}


def _n_params(terms: int) -> int:
    return 2 + terms
WINDOWS = (0.05, 0.1, 0.25)     # fit from this fraction of the ladder (burn-in)
HELD_OUT = (0.5, 0.7)           # fit up to this fraction, score the prediction of the rest
Z = 2.0                         # standard errors in the interval (about 95% for the statistical part)
FLOOR_GUESSES = (0.5, 1.0, 2.0, 4.0)   # floors tried this many nats below the top increments
GUESS_PRIOR = 0.25                     # their prior weight, together, against 1 for each other model
HELD_OUT_FACTOR = 1.0           # scaled held-out error enters the interval this many times
TAIL = 0.025                    # each tail of the interval's mixture of candidates


def _design(m, terms: int) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    cols = [np.ones_like(m), np.log(m)]
    cols += [m ** -(i + 1) for i in range(terms)]
    return np.stack(cols, axis=1)


def _sum_design(a: int, b: int, terms: int) -> np.ndarray:
    """Column sums of the design over m = a+1..b (closed forms beyond ~2e6 terms)."""
    if b <= a:
        return np.zeros(_n_params(terms))
    if b - a <= 2_000_000:
        m, w = _grid(a, b)
        return (_design(m, terms) * w[:, None]).sum(axis=0)
    from scipy.special import gammaln, polygamma, psi

    out = [b - a, gammaln(b + 1.0) - gammaln(a + 1.0)]
    if terms >= 1:
        out.append(psi(b + 1.0) - psi(a + 1.0))
    if terms >= 2:
        out.append(polygamma(1, a + 1.0) - polygamma(1, b + 1.0))
    return np.asarray(out, dtype=np.float64)


class _Fit:
    """One candidate: a model fitted on m in [lo, hi] to the mean increments."""

    def __init__(self, model: str, m, y, w, floor, rows: int = 1, bend: str | None = None):
        self.model, self.floor, self.rows, self.bend = model, floor, rows, bend
        self.terms = MODELS[model]
        if floor is None:
            A = _design(m, self.terms) * w[:, None]
            s = np.abs(A).max(axis=0)
            s[s == 0] = 1.0
            coef, *_ = np.linalg.lstsq(A / s, y * w, rcond=None)
            self.coef = coef / s
            resid = (y - _design(m, self.terms) @ self.coef) * w
            dof = max(len(m) - A.shape[1], 1)
            sigma2 = float(resid @ resid) / dof
            try:
                cov = np.linalg.pinv((A / s).T @ (A / s)) * sigma2
                self.cov = cov / np.outer(s, s)
            except np.linalg.LinAlgError:
                self.cov = np.full((A.shape[1], A.shape[1]), np.inf)
        else:
            self._fit_floor(m, y, w, floor)

    def _fit_floor(self, m, y, w, floor):
        """The learning curve of Gaussian-process regression with a floor (the nugget).

        Per output row, a pivot is the nugget ``eta`` plus the posterior variance ``eps`` of the
        noise-free function at the new sample. For kernel eigenvalues decaying like ``k^-alpha``
        the self-consistent learning curve (Sollich 1999, "Learning curves for Gaussian
        processes", NIPS 11) is ``eps = A ((eta + eps) / m)^p`` with ``p = 1 - 1/alpha``: far
        above the nugget ``eps ~ m^(-p / (1 - p))`` (the power law ``nu log m + c`` of the noise-free
        ladder, ``nu = -p / (1 - p)``), near it ``eps ~ (eta / m)^p``, a slower decay. The
        parameters are those of the noise-free model (so its Laurent terms keep their meaning);
        the bend follows from them and the known floor. ``bend="sharp"`` keeps the noise-free
        slope down to the floor, ``log(eta + C m^nu)``: the limit of a spectrum that decays
        faster than any power (RBF). Alone it was 1.3-2% low at s = 2000 on a Matérn-3/2 kernel
        with nugget 1e-3 (bench ground-truth ladders), where the learning curve was 0.2% off.
        """
        from scipy.optimize import least_squares

        X = _design(m, self.terms)
        self.floor = float(floor)
        start, *_ = np.linalg.lstsq(X, y, rcond=None)

        def resid(th):
            return (self._learning_curve(X, th) - y) * w

        r = least_squares(resid, start, method="lm" if len(m) > len(start) else "trf", xtol=1e-12, ftol=1e-12,
                          gtol=1e-12)
        self.coef = r.x
        dof = max(len(m) - len(start), 1)
        sigma2 = float(r.fun @ r.fun) / dof
        J = r.jac
        try:
            self.cov = np.linalg.pinv(J.T @ J) * sigma2
        except np.linalg.LinAlgError:
            self.cov = np.full((len(start), len(start)), np.inf)

    def _learning_curve(self, X, th) -> np.ndarray:
        """Mean increments (per sample) of the floored model at design rows ``X`` (``log m`` in column 1)."""
        rows = self.rows
        eta = self.floor / rows                     # log nugget per output row
        free = (X @ th) / rows                      # noise-free log posterior variance per row
        if self.bend == "sharp":
            return rows * np.logaddexp(eta, free)
        nu = min(float(th[1]) / rows, 0.0)          # slope of a row's log posterior variance in log m
        p = min(-nu / (1.0 - nu), 0.999)
        log_m = X[:, 1]
        # u = (1 - p) (free + p/(1-p) log m) + p (log(eta + e^u) - log m), solved by Newton from u = free
        base = (1.0 - p) * free + p * log_m
        u = np.maximum(free, eta - 50.0)
        for _ in range(100):
            a = np.logaddexp(eta, u)
            F = u - base - p * (a - log_m)
            step = F / (1.0 - p * np.exp(u - a))
            u = u - step
            if np.max(np.abs(step)) < 1e-12:
                break
        return rows * np.logaddexp(eta, u)

    def mean_increment(self, m, clamp: float | None = None) -> np.ndarray:
        X = _design(m, self.terms)
        value = X @ self.coef if self.floor is None else self._learning_curve(X, self.coef)
        return value if clamp is None else np.maximum(value, clamp)

    def future(self, a: int, b: int, clamp: float | None = None) -> tuple[float, float]:
        """(sum of the mean increments over m = a+1..b, its standard error).

        ``clamp``: a known floor of every increment; predictions below it count as the floor.
        """
        if b <= a:
            return 0.0, 0.0
        if self.floor is None and clamp is None:
            g = _sum_design(a, b, self.terms)
            return float(g @ self.coef), float(math.sqrt(max(g @ self.cov @ g, 0.0)))
        m, weight = _grid(a, b)
        X = _design(m, self.terms)
        if self.floor is None:
            value = X @ self.coef
            below = value < clamp
            g = (X * (weight * ~below)[:, None]).sum(axis=0)
            total = float(np.sum(weight * np.where(below, clamp, value)))
        else:
            total = float(np.sum(weight * self._learning_curve(X, self.coef)))
            g = np.empty(self.coef.size)
            for i in range(self.coef.size):         # gradient of the sum by central differences
                h = 1e-6 * max(1.0, abs(self.coef[i]))
                up, dn = self.coef.copy(), self.coef.copy()
                up[i] += h
                dn[i] -= h
                g[i] = np.sum(weight * (self._learning_curve(X, up) - self._learning_curve(X, dn))) / (2 * h)
        return total, float(math.sqrt(max(g @ self.cov @ g, 0.0)))


def _weighted_range(weights, values, tail: float) -> tuple[float, float]:
    """The ``tail`` and ``1 - tail`` weighted quantiles of ``values`` (inclusive: a value whose
    weight straddles the quantile is in the range)."""
    order = np.argsort(values)
    v, c = values[order], np.cumsum(weights[order])
    lo = v[min(int(np.searchsorted(c, tail)), v.size - 1)]
    hi = v[min(int(np.searchsorted(c, 1.0 - tail)), v.size - 1)]
    return float(lo), float(hi)


def _grid(a: int, b: int):
    """(points, weights) summing a smooth function over m = a+1..b (exact below 2e6 terms)."""
    if b - a <= 2_000_000:
        return np.arange(a + 1, b + 1, dtype=np.float64), np.ones(b - a)
    edges = np.unique(np.geomspace(a + 0.5, b + 0.5, 200_001))
    return np.sqrt(edges[:-1] * edges[1:]), np.diff(edges)


def _extrapolation_weight(lo: int, hi: int) -> float:
    """sum over m = lo+1..hi of log(m / lo): how far a fit ending at lo reaches into (lo, hi]."""
    m, w = _grid(lo, hi)
    return float(np.sum(w * np.log(m / lo)))


def curvature_t(y) -> float:
    """t-statistic of the curvature in m of mean increments over the top 3/4 of a ladder.

    A scaling law ``nu log m + c`` (nu < 0), with or without a floor, declines ever more slowly:
    convex in m (t > 0; measured 1.4-35 on Matérn and ReLU-NTK ladders of 250-4000 samples). A
    Gram matrix of p features declines like ``log(1 - m/p)``, ever faster: concave (t < 0; -13 at
    p = 2200, s = 1000), which no scaling law can extrapolate.
    """
    y = np.asarray(y, dtype=np.float64)
    s = y.size
    m = np.arange(1, s + 1, dtype=np.float64)
    sel = m >= s / 4
    u = (m[sel] - m[sel].mean()) / s
    A = np.stack([np.ones_like(u), u, u * u], axis=1)
    coef, *_ = np.linalg.lstsq(A, y[sel], rcond=None)
    r = y[sel] - A @ coef
    s2 = float(r @ r) / max(int(sel.sum()) - 3, 1)
    var = float(np.linalg.pinv(A.T @ A)[2, 2]) * s2
    return float(coef[2] / math.sqrt(var)) if var > 0 else math.copysign(math.inf, coef[2])


def fit_ladder(increments, *, anchor: float, n: int, floor: float | None = None, rows: int = 1,
               windows=WINDOWS, held_out=HELD_OUT) -> dict:
    """Extrapolate a log-determinant ladder from s samples to n.

    Parameters
    ----------
    increments : (L, s) float64 array
        Per-sample increments ``l(m) - l(m - 1)`` (nats; m = 1..s) of L ladders (independent
        blocks or orders); their mean over ladders is fitted, their spread sizes the noise.
    anchor : float
        The exact ``l(s)`` the extrapolation starts from (nats).
    n : int
        Samples of the whole matrix (n >= s).
    floor : float, optional
        A known lower bound of every increment (``d log sigma^2`` for a nugget ``sigma^2``):
        adds the saturating models (a learning curve that bends to the floor) and caps the
        interval.
    rows : int
        Output rows per sample (d): a floored model bends per row, at ``floor / rows``.

    Returns
    -------
    dict
        ``estimate``, ``low``, ``high`` (nats), ``model``, ``window`` (first m fitted),
        ``held_out_error`` (nats, the chosen fit's worst held-out prediction error),
        ``held_out_scaled`` (that error scaled to the extrapolation), ``std_error``,
        ``alternatives`` (near-best candidates: model, window, estimate, score),
        ``slope`` (nu at the top of the ladder, per log m), ``top_increment``,
        ``monotone_bound`` (the upper cap), ``interval_parts`` (the model spread, two
        standard errors and the scaled held-out error, nats), ``curve`` (m and fitted mean
        increments), ``mean_increment`` (the chosen fit, a callable of m),
        ``saturation_m`` (where the extrapolated increments reach the floor, or None).
    """
    D = np.atleast_2d(np.asarray(increments, dtype=np.float64))
    L, s = D.shape
    n = int(n)
    if s < 20:
        raise ValueError(f"a ladder of {s} samples is too short to fit a scaling law (at least 20)")
    y_all = D.mean(axis=0)
    m_all = np.arange(1, s + 1, dtype=np.float64)
    # noise of one mean increment: spread of the increments about a smooth trend (local differences)
    resid = np.diff(y_all[s // 10:])
    noise = float(np.std(resid) / math.sqrt(2)) if resid.size > 2 else 1.0
    noise = max(noise, 1e-12)
    w_all = np.ones(s)

    models = list(MODELS)
    # a known floor (the nugget), and floors a little below the top of the ladder: a kernel's own
    # smallest eigenvalue floors its increments too (measured: the digits NTK's at log 0.07),
    # unknown until the ladder bends. A fitted floor is not identified where no bend shows (a
    # 1e-14 change of the ladder moved its extrapolation by 14 nats), so fixed offsets are tried
    # and scored like the models
    top_mean = float(y_all[int(0.9 * s):].mean())
    # With a known floor (the nugget) the learning curve bending to it is the model: it holds the
    # unfloored laws as its limit far above the floor, and near it they keep a slope the physics
    # rules out; guessed floors above a known nugget pulled the estimate 2-4% high at s = 500-1000
    # (bench ground-truth ladders, Matérn-3/2 with nuggets 1e-3 and 1e-6, 4 orders each)
    # rules out. How a curve bends depends on the spectrum: a power-law one (Matérn, NTK) bends
    # like the learning curve, an exponential one (RBF) keeps its steep slope down to the floor
    # ("sharp"); both are scored. Guessed floors (no nugget known) bend sharply.
    guesses = [top_mean - g for g in FLOOR_GUESSES] if floor is None else []
    floors = [(None, None)] + [(g, "sharp") for g in guesses] if floor is None else [
        (floor, "learning"), (floor, "sharp")]
    candidates = []
    for fl, bend in floors:
        for model in models:
            for frac in windows:
                lo = max(int(frac * s), 5)
                scores = []
                for h_frac in held_out:
                    h = int(h_frac * s)
                    sel = (m_all >= lo) & (m_all <= h)
                    if sel.sum() < 3 * _n_params(MODELS[model]) or h >= s:
                        scores = None
                        break
                    f = _Fit(model, m_all[sel], y_all[sel], w_all[sel], fl, rows, bend)
                    pred, pred_se = f.future(h, s, clamp=floor)
                    err = pred - float(y_all[h:].sum())
                    se = math.sqrt(pred_se ** 2 + noise ** 2 * (s - h))   # the held-out sum is noisy too
                    scores.append((err, se, h))
                if scores is None:
                    continue
                sel = m_all >= lo
                if sel.sum() < 3 * _n_params(MODELS[model]):
                    continue
                f = _Fit(model, m_all[sel], y_all[sel], w_all[sel], fl, rows, bend)
                fut, fut_se = f.future(s, n, clamp=floor)
                # held-out error per unit of log-distance, scaled to the real extrapolation
                scaled = max(abs(e) / _extrapolation_weight(h, s) for e, _, h in scores) * _extrapolation_weight(s, n)
                z = math.sqrt(np.mean([(e / se) ** 2 for e, se, _ in scores]))
                name = (model if fl is None else f"{model} + floor {fl:.4g}" if fl != floor
                        else f"{model} + floor" + (" (learning curve)" if bend == "learning" else " (sharp)"))
                # the guessed floors share a quarter of one prior weight: together they are one hypothesis
                # (a bend not yet seen), less likely than the law the ladder shows; the interval still
                # spans them where they score near the best
                prior = GUESS_PRIOR / len(guesses) if fl is not None and fl != floor else 1.0
                candidates.append(dict(model=name, window=lo, fit=f, prior=prior,
                                       estimate=anchor + fut, std_error=fut_se, held_out_error=max(
                                           abs(e) for e, _, _ in scores), held_out_scaled=scaled, score=z,
                                       n_params=_n_params(MODELS[model]) + (fl is not None and fl != floor)))
    if not candidates:
        raise ValueError("no model could be fitted to the ladder")
    # the best scores lowest; among scores within 0.5 of it, the simplest (fewest parameters)
    best_score = min(c["score"] for c in candidates)
    near = [c for c in candidates if c["score"] <= best_score + 1.0]
    best = min((c for c in near if c["score"] <= best_score + 0.5),
               key=lambda c: (c["n_params"], c["score"]))
    # Bayesian-style averaging over the candidates by their held-out score: selecting one
    # candidate by a noisy score is itself noisy (measured: 1-5% swings at s = 2000)
    wts = np.array([c["prior"] * math.exp(-0.5 * (c["score"] ** 2 - best_score ** 2)) / c["n_params"]
                    for c in candidates])
    wts /= wts.sum()
    est = float(sum(w * c["estimate"] for w, c in zip(wts, candidates)))
    # the models' spread: the weighted 2.5-97.5% range of the candidates' estimates. The range of
    # the near-best alone was too narrow where the held-out score could not tell the bends apart
    # (an RBF kernel with a nugget, s = 300 of 1200: candidates 0-1.4% off, interval +0.5..+1.8%)
    centers = np.array([c["estimate"] for c in candidates])
    spread_lo, spread_hi = _weighted_range(wts, centers, TAIL)
    spread_lo = min(spread_lo, min(c["estimate"] for c in near))
    spread_hi = max(spread_hi, max(c["estimate"] for c in near))
    width = math.sqrt((Z * best["std_error"]) ** 2 + (HELD_OUT_FACTOR * best["held_out_scaled"]) ** 2)
    low, high = min(spread_lo, est) - width, max(spread_hi, est) + width
    parts = dict(model_spread=(spread_lo - est, spread_hi - est), two_std_errors=Z * best["std_error"],
                 held_out_scaled=HELD_OUT_FACTOR * best["held_out_scaled"])

    # what is known for certain (in expectation): E Delta is nonincreasing, and >= floor
    top = y_all[int(0.9 * s):]
    top_mean = float(top.mean())
    top_se = float(noise / math.sqrt(max(top.size, 1)) * 1.0)
    bound = anchor + (n - s) * (top_mean + Z * top_se)
    high = min(high, bound)
    if floor is not None:
        low = max(low, anchor + (n - s) * floor)
    low = min(low, est)
    high = max(high, est)
    saturation = None
    if floor is not None:
        mm = np.geomspace(s, max(n, s + 1), 200)
        close = best["fit"].mean_increment(mm) < floor + 0.5
        if close.any():
            saturation = int(mm[np.argmax(close)])
    f = best["fit"]
    curve_m = np.unique(np.geomspace(1, n, 300).astype(np.int64)).astype(np.float64)
    slope = float(np.gradient(f.mean_increment(np.array([0.9 * s, s])), np.log([0.9 * s, s]))[-1])
    return dict(
        estimate=float(est), low=float(low), high=float(high), model=best["model"], window=int(best["window"]),
        held_out_error=float(best["held_out_error"]), held_out_scaled=float(best["held_out_scaled"]),
        std_error=float(best["std_error"]), score=float(best["score"]),
        alternatives=[dict(model=c["model"], window=int(c["window"]), estimate=float(c["estimate"]),
                           score=float(c["score"])) for c in sorted(near, key=lambda c: c["score"])],
        slope=slope, top_increment=top_mean, monotone_bound=float(bound), noise=noise,
        curvature_t=curvature_t(y_all),
        curve=(curve_m, f.mean_increment(curve_m, floor)),
        mean_increment=lambda m: f.mean_increment(m, floor), saturation_m=saturation,
        ladders=L, interval_parts=parts,
        candidates=[dict(model=c["model"], window=int(c["window"]), estimate=float(c["estimate"]),
                         score=float(c["score"]), weight=float(w)) for c, w in zip(candidates, wts)],
    )
