"""Benchmark of bigspec's free decompression against freealg 0.12.2 on the same eigenvalues.

Cases 1-6 below test free decompression on matrices with a known law; the kernel cases
(section "Kernel matrices") test spectra spanning decades, with bigspec's kernel regime.

What it measures
----------------
Free decompression estimates the spectrum of a large n x n matrix from the eigenvalues of
one random n_s x n_s principal submatrix (alpha = n / n_s). Every case below has a known
answer at the target size (an analytic law, or the full eigendecomposition), so each
method's output is scored against it:

1. ``mp``: Marchenko-Pastur. The sample is the spectrum of one 1000 x 1000 Wishart matrix
   of ratio 1/50 (``MarchenkoPastur(1/50).matrix(1000, seed=1)``); targets 8000 and 32000
   (alpha 8, 32); oracle ``MarchenkoPastur(1/50).decompress(alpha)`` (ratio 0.16, 0.64).
2. ``wigner``: GOE of size 1000, variance 1 (seed 2); targets 8000, 32000; oracle the
   semicircle of variance alpha.
3. ``mp-rank``: rank-deficient Wishart. Sample ``MarchenkoPastur(0.5)`` of size 1000
   (seed 3), target 4000: the oracle has ratio 2, i.e. an atom of mass 0.5 at 0 (the big
   matrix has rank n/2) plus a continuous part of mass 0.5.
4. ``digits-ntk``: the analytic NTK of a depth-3 ReLU MLP (bigspec's ``relu`` kernel with its
   defaults, as ``bigspec demo`` builds it: depth=3, weight_variance=2, bias_variance=0.1) on
   the 1797 scikit-learn digits scaled to [0, 1] (``bigspec.demo.digits``). The oracle is
   ``eigvalsh(K)`` of the full 1797 x 1797 K; the sample is a random principal submatrix of
   size 1797 // 8 = 224 (``default_rng(4).permutation``), decompressed to 1797.
5. ``mp-deficient``: a rank-deficient *sample*. ``MarchenkoPastur(2.0)`` of size 1000 (seed 5):
   half its eigenvalues are exactly 0. Targets 4000 and 8000; oracle ratio 8 and 16 (atom
   1 - 1/(2 alpha) at 0, bulk on (1 +- sqrt(2 alpha))^2).
6. ``--seeds N`` (default 10): cases 1, 2, 3 and 5 (at 8000) again over N fresh samples (seeds
   100..), for bigspec, freealg AlgebraicForm coeffs and FreeForm; the summary gives mean,
   median and max of W1 and L1 and on how many seeds bigspec's L1 is lower. At alpha 32 each
   method's error is set mostly by the particular sample, so this is the comparison to read.

Methods (all given the same sample eigenvalues, except ``freealg.eigvalsh``):

* ``bigspec``: ``bigspec.free_decompress(eigs, size)`` with its defaults. When the result
  carries a discrete ``table`` (its large-alpha form for heavy-tailed spectra, used by its
  own ``cdf``/``quantiles``), the table is what is scored (the density grid's W1 is kept in
  the JSON as ``w1_density_grid``).
* ``freealg FreeForm``: ``FreeForm(eigs, support=(eigs.min(), eigs.max()))``, then
  ``fit(method='jacobi', K=50, alpha=0.5, beta=0.5, projection='beta', kernel_bw=h,
  damp='jackson', continuation='pade', pade_p=1, pade_q=1)`` and
  ``decompress(size, x=grid)`` (Newton, defaults). ``h`` = 3e-3 (MP-like: mp, mp-rank,
  digits-ntk) or 1e-2 (wigner); the Plemelj offset ``ff.delta`` = 1e-4 (MP-like) or 1e-6
  (wigner). freealg 0.12.2's ``FreeForm(..., delta=)`` argument is passed on as BaseForm's
  ``log`` flag and never reaches ``self.delta`` (which stays at 1e-5), so the script sets
  ``ff.delta`` after construction. The support is the sample's range: with freealg's
  default support estimate (range widened by |edge| / n) the Beta-kernel KDE returns NaN on
  the MP sample and the Pade fit fails ("Residuals are not finite in the initial point").
* ``freealg FreeForm pade(1,0)`` (wigner only): the same with ``pade_p=1, pade_q=0``. The
  semicircle's glue function m_I + m_II = -z / s^2 is linear, which Pade (1, 0) represents
  exactly; the (1, 1) model adds a pole and decompresses the semicircle badly. (For MP the
  glue has one pole at 0, which (1, 1) represents exactly.)
* ``freealg AlgebraicForm moc`` / ``coeffs``: ``AlgebraicForm(eigs).fit(deg_m=2, deg_z=1)``,
  then ``decompress(size, x=grid, method=..., return_atoms=True)``: ``'moc'`` (freealg's
  default, method of characteristics with Newton) and ``'coeffs'`` (evolves the polynomial
  coefficients). Degree (2, 1) is exactly the algebraic degree of MP and of the semicircle,
  so on cases 1-3 this model is well specified; on the NTK it is not. freealg's numba kernels
  are compiled once beforehand on a tiny problem (untimed; ``freealg_numba_warmup_seconds``
  in the JSON, ~30-45 s), so the rows time the steady state.
* ``freealg eigvalsh``: the convenience function ``freealg.eigvalsh(A, size, seed=0)``. It
  takes the *sample matrix*, not its eigenvalues: it draws its own sub-submatrices
  (n_s = 80 (1 + ln n) rows, several of them) unless the matrix is smaller than that, fits
  a Chebyshev series, and returns ``size`` eigenvalues drawn from the decompressed density.
  Its seconds therefore include its internal eigendecompositions.
* ``sample (no decompression)``: the sample's own empirical spectral distribution (ESD)
  scored against the target-size oracle: the error of doing nothing.
* ``sample vs own law`` (cases 1-3): the sample ESD against the *sample-size* law: the
  finite-sample noise every method starts from (not a decompression).

freealg methods share one x grid (:func:`eval_grid`): 1000 points over the bulk as moved
by decompression (mean kept, spread times 1.5 sqrt(alpha)) plus 200 points out to
1.25 * alpha * max|eig| (where outliers of a low-rank part go). bigspec uses its own grid
(500 points by default).

Metrics (computed here, independent of ``bigspec.spectra.metrics``)
----------------------------------------------------------------
* ``W1`` = integral over p in (0, 1) of |Q_method(p) - Q_oracle(p)| (quantile functions,
  midpoint rule on 200000 points). A method's distribution is its continuous density on its
  grid (negative values clipped to 0, cumulative trapezoid) plus the atoms it reports. If it
  reports no atom, the oracle has one and the continuous mass is short of 1, the shortfall
  is put at the oracle's atom (marked ``implied`` in the atom column: freealg models no atom,
  so this credits it with what it left out); otherwise the distribution is normalised to
  mass 1 (the continuous mass before that is the ``mass`` column). For eigenvalue outputs
  (ESD, ``freealg.eigvalsh``) the empirical quantile function is used.
* ``W1/mean``: W1 over the oracle's mean (for the PSD cases; null for the semicircle).
* ``L1`` = integral |rho_method - rho_oracle| dx of the continuous parts (atoms excluded;
  freealg's unclipped density) on a fine common grid; only against an analytic oracle and
  only for methods that return a density.
* ``seconds``: ``time.perf_counter`` around the decompression only (for freealg: form
  construction + fit + decompress; eigenvalues of the sample excluded, except inside
  ``freealg.eigvalsh`` as said above).
* For bigspec, ``W1 (own quantile)`` is also computed from ``SpectrumResult.quantile`` as a
  cross-check of its own CDF/quantile (reported in the JSON, flagged when it disagrees).

If a freealg method takes more than 60 s on a case at alpha 8, it is skipped at alpha 32
(the row says so). Every freealg call is wrapped in try/except; a failure is recorded as
``failed: <reason>``. Timings are single runs on whatever machine runs the script; on a
shared machine they vary by several x from run to run (read them as orders of magnitude).

Kernel matrices (``--cases kernels``)
-------------------------------------
Spectra spanning decades, where bulk free decompression does not apply; bigspec's
``spectrum()`` has a kernel regime for them (:mod:`bigspec.spectra.operator`). Each case is
an n x n kernel matrix ``K = k(Xp, Xp, diagonal=True)`` with ``k = get_kernel(name,
**params).bind(X)`` and ``Xp = k.prepare(X)``, its rows and columns permuted by
``default_rng(1).permutation(n)`` (so its leading diagonal blocks are random subsets), n =
``--n`` (4000) points:

* ``matern-0.5``, ``matern-1.5``, ``matern-2.5``: Matérn, lengthscale 0.3, on
  ``default_rng(0).uniform(size=(n, 4))``;
* ``rbf-nugget``: RBF, lengthscale 0.3, on ``default_rng(0).uniform(size=(n, 3))``, plus a
  nugget 1e-2 (``shift=1e-2`` to bigspec; added to the oracle's eigenvalues);
* ``relu-ntk-r16``: the analytic ReLU NTK (``relu``, depth=3, its other defaults) on
  ``default_rng(0).standard_normal((n, 16))``;
* ``digits-relu-ntk``: the same NTK on ``bigspec.demo.digits()[0]`` (n = 1797 whatever ``--n``).

The oracle is ``np.linalg.eigvalsh(K)`` (+ nugget). The samples are the first k disjoint
diagonal blocks of s = n // alpha rows, k = 2 (4 for the digits), for each alpha in
``--alphas`` (4 and 8), decompressed to n. Methods:

* ``bigspec``: ``bigspec.spectrum(K, sample_size=s, n_samples=k, shift=nugget,
  progress=False)`` with its defaults (``regime="auto"``: kernel or bulk by its held-out
  check); the row records the regime, ``diagnostics["held_out_scaled"]`` and
  ``["held_out_by_regime"]``. Its seconds are the whole call: the samples' eigenvalues and
  their nested sub-blocks' included.
* ``bigspec regime=bulk``: the same, forced to bulk free decompression.
* ``freealg FreeForm``, ``freealg AlgebraicForm moc`` / ``coeffs``: as above (MP-like
  settings), on the pooled sample eigenvalues of the same blocks (``result.eigenvalues`` of
  the ``bigspec`` row, which already include the nugget; checked against the blocks' own
  eigvalsh), told that the sample size is s, not k s (``AlgebraicForm(eigs, n=s)``;
  FreeForm has no such argument, so ``ff.n = s`` is set after construction: otherwise both
  decompress by n / (k s)). Their grid is :func:`eval_grid`'s plus 200 log-spaced points from
  a tenth of the smallest sample eigenvalue up to its first positive point, without which a
  density on the linear grid could not place the small eigenvalues at all. ``freealg
  eigvalsh`` is not run: it takes a matrix and draws its own samples.
* ``sample (no decompression)``: the pooled sample eigenvalues' ESD (its seconds: their
  eigvalsh).

Metrics per (case, alpha, method), each against the oracle: the signed relative error of
the 10/25/50/75/90% quantiles and of the trace (a density's: n times its mean; bigspec's:
``result.trace``); ``W1 log10`` = mean over the 200000-point p grid of
|log10 Q_method(p) - log10 Q_oracle(p)|, in decades, both clipped below at 1e-12 x the
largest oracle eigenvalue; the largest relative error of the 10 largest eigenvalues (bigspec's
kernel regime: ``diagnostics["top_eigenvalues"]``; otherwise the quantiles at
p = 1 - (k - 0.5) / n); the signed relative error of the log-determinant (bigspec:
``result.logdet()[1]``; otherwise n times the mean of log Q over the p grid, n/a where the
method has mass at or below 0: an atom there, or a positive density at a grid point <= 0);
seconds. A density method's distribution is built as for W1 above (:class:`GridDistribution`).
The rows go to the ``kernels`` section of ``spectrum.json`` and to ``spectrum_kernels.md``.
A run of kernel cases only (``--cases kernels``, or some of their names) keeps the JSON's
other entries, and the kernel rows of the cases it did not run; it runs no ``--seeds``.

How to run
----------
::

    pip install --no-deps freealg==0.12.2 numba==0.68.1 llvmlite==0.50.0 tqdm colorcet texplot
    pip install matplotlib scikit-learn   # freealg imports matplotlib and texplot; the digits
    python bench/spectrum.py            # about 5 minutes + the kernel cases; writes
                                        # bench/results/spectrum.{json,md} and spectrum_kernels.md
    python bench/spectrum.py --cases mp,wigner --methods bigspec   # a subset
    python bench/spectrum.py --cases kernels                       # the kernel cases only
    python bench/spectrum.py --cases matern-1.5 --n 1000 --out /tmp/s.json   # a quick look

freealg 0.12.2 calls ``numpy.trapz`` (removed in numpy 2.4): the script aliases it to
``numpy.trapezoid`` before importing freealg. Its ``statsmodels`` requirement is not
imported by any module it loads and is not needed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings

import numpy as np

if not hasattr(np, "trapz"):  # freealg 0.12.2 still calls numpy.trapz
    np.trapz = np.trapezoid

HERE = os.path.dirname(os.path.abspath(__file__))
N_P = 200_000  # quantile-integration points
SLOW_S = 60.0  # a freealg method slower than this at alpha 8 is skipped at alpha 32


# -- distributions as quantile functions ----------------------------------------------------

def p_grid(n=N_P):
    return (np.arange(n) + 0.5) / n


def esd_quantile(eigs):
    """Quantile function of the empirical distribution of ``eigs``."""
    e = np.sort(np.asarray(eigs, float))

    def q(p):
        idx = np.clip(np.ceil(np.asarray(p) * len(e)).astype(int) - 1, 0, len(e) - 1)
        return e[idx]

    return q


class GridDistribution:
    """A distribution given by a density on a grid plus atoms: its CDF and quantile.

    ``truth_atom`` (location, mass) of the oracle: when no atom is reported and the
    continuous mass is short of 1, the shortfall is placed there (``implied``).
    """

    def __init__(self, x, rho, atoms=(), truth_atom=None):
        x = np.asarray(x, float)
        rho = np.asarray(rho, float)
        order = np.argsort(x)
        x, rho = x[order], rho[order]
        self.n_nan = int(np.count_nonzero(~np.isfinite(rho)))
        rho = np.nan_to_num(rho, nan=0.0, posinf=0.0, neginf=0.0)
        self.neg_mass = float(np.trapezoid(np.clip(-rho, 0, None), x))
        rc = np.clip(rho, 0, None)
        F = np.concatenate([[0.0], np.cumsum((rc[1:] + rc[:-1]) / 2 * np.diff(x))])
        self.cont_mass = float(F[-1])
        atoms = [(float(a), float(m)) for a, m in (atoms or []) if m > 0]
        self.implied_atom = None
        total = self.cont_mass + sum(m for _, m in atoms)
        if not atoms and truth_atom is not None and total < 1 - 1e-3:
            atoms = [(float(truth_atom[0]), 1.0 - total)]
            self.implied_atom = atoms[0]
            total = 1.0
        self.atoms = atoms
        self.total_mass = total
        xs, Fs = list(x), list(F)
        for a, m in atoms:  # two points per atom: continuous CDF before and after its jump
            Fa = float(np.interp(a, x, F, left=0.0, right=F[-1]))
            xs += [a, a]
            Fs += [Fa, Fa + m]
        xs, Fs = np.asarray(xs), np.asarray(Fs)
        for a, m in atoms:  # every point right of an atom carries its mass
            Fs[xs > a] += m
        order = np.lexsort((Fs, xs))
        self.xs, self.Fs = xs[order], np.maximum.accumulate(Fs[order]) / total

    def quantile(self, p):
        p = np.asarray(p, float)
        xs, Fs = self.xs, self.Fs
        i = np.clip(np.searchsorted(Fs, p, side="left"), 1, len(Fs) - 1)
        F0, F1 = Fs[i - 1], Fs[i]
        w = np.where(F1 > F0, (p - F0) / np.where(F1 > F0, F1 - F0, 1.0), 1.0)
        return xs[i - 1] + np.clip(w, 0, 1) * (xs[i] - xs[i - 1])


def w1(qa, qb):
    p = p_grid()
    return float(np.mean(np.abs(qa(p) - qb(p))))


def l1(x, rho, law):
    """integral |rho - rho_law| on a fine grid (the method's grid + 20001 points on the law's support)."""
    lo, hi = law.support
    xs = np.union1d(np.asarray(x, float), np.linspace(lo, hi, 20001))
    r = np.interp(xs, x, np.nan_to_num(np.asarray(rho, float)), left=0.0, right=0.0)
    return float(np.trapezoid(np.abs(r - law.density(xs)), xs))


def eval_grid(eigs, alpha, n_bulk=1000, n_tail=200):
    """A data-driven x grid for the decompressed density (freealg needs one)."""
    e = np.asarray(eigs, float)
    c = float(e.mean())
    s = math.sqrt(alpha)
    lo = c - 1.5 * s * (c - e.min()) - 1e-3 * abs(c)
    hi = c + 1.5 * s * (e.max() - c) + 1e-3 * abs(c)
    if e.min() >= 0:
        lo = max(lo, -0.05 * (hi - c))
    grid = np.linspace(lo, hi, n_bulk)
    far = 1.25 * alpha * float(np.abs(e).max())
    if far > hi:
        grid = np.union1d(grid, np.linspace(hi, far, n_tail + 1)[1:])
    if e.min() < 0 and -far < lo:
        grid = np.union1d(grid, np.linspace(-far, lo, n_tail + 1)[:-1])
    return grid


# -- methods ----------------------------------------------------------------------------------

def _short(e):
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    return msg[:200]


def _grid_fields(row, x, gd, atoms):
    """The columns every density-on-grid answer reports: its mass, NaNs, grid size and atoms."""
    row["cont_mass"] = gd.cont_mass
    row["neg_mass"] = gd.neg_mass
    row["nan_points"] = gd.n_nan
    row["grid_points"] = int(np.size(x))
    if atoms:
        row["atoms"] = [[float(a), float(m)] for a, m in atoms]


def score_density(row, x, rho, atoms, oracle):
    """Fill W1/L1/mass columns of ``row`` from a density-on-grid answer."""
    truth_atom = oracle.get("atom")
    gd = GridDistribution(x, rho, atoms, truth_atom)
    row["w1"] = w1(gd.quantile, oracle["quantile"])
    row["l1"] = l1(x, rho, oracle["law"]) if oracle.get("law") is not None else None
    _grid_fields(row, x, gd, atoms)
    if atoms:
        row["atom_mass"] = float(sum(m for _, m in atoms))
    elif gd.implied_atom is not None:
        row["atom_mass"] = None
        row["implied_atom_mass"] = gd.implied_atom[1]
    else:
        row["atom_mass"] = 0.0 if truth_atom is not None else None
    return gd


def run_bigspec(eigs, size, oracle):
    row = {"method": "bigspec"}
    try:
        import bigspec

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            res = bigspec.free_decompress(eigs, size)
            row["seconds"] = time.perf_counter() - t0
        row["warnings"] = [str(w.message) for w in caught]
    except Exception as e:  # noqa: BLE001 - a benchmark records failures
        row["status"] = f"failed: {_short(e)}"
        row["traceback"] = traceback.format_exc(limit=3)
        return row
    row["status"] = "ok"
    row["reported_seconds"] = getattr(res, "seconds", None)
    row["support"] = [float(v) for v in res.support] if getattr(res, "support", None) is not None else None
    for k in ("settings", "diagnostics"):
        if getattr(res, k, None) is not None:
            row[k] = getattr(res, k)
    diag = getattr(res, "diagnostics", None) or {}
    if "continuous_mass" in diag:  # bigspec rescales its density; this is the mass before that
        row["raw_cont_mass"] = float(diag["continuous_mass"])
    atoms = [(float(a), float(m)) for a, m in (res.atoms or [])]
    score_density(row, res.x, res.density, atoms, oracle)
    table = getattr(res, "table", None)
    if table is not None:
        # a discrete answer (bigspec's large-alpha form for heavy-tailed spectra): its cdf and
        # quantiles use this table, so it is what is scored; the density grid is kept as a side note
        v, w = (np.asarray(t, float) for t in table)
        row["w1_density_grid"] = row["w1"]
        row["table_points"] = int(v.size)
        row["table_mass"] = float(w.sum())
        order = np.argsort(v)
        v, cw = v[order], np.cumsum(w[order]) / w.sum()

        def q_table(p):
            return v[np.clip(np.searchsorted(cw, p, side="left"), 0, v.size - 1)]

        row["w1"] = w1(q_table, oracle["quantile"])
        row["scored"] = "table"
    # cross-check of bigspec's own quantiles (atoms included) against the ones built here
    try:
        own_q = getattr(res, "quantile", None) or res.quantiles
        row["w1_own_quantile"] = w1(own_q, oracle["quantile"])
        p = np.linspace(0.0, 1.0, 101)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = np.asarray(res.cdf(np.asarray(res.x)), float)
        row["own_cdf_range"] = [float(np.nanmin(c)), float(np.nanmax(c))]
        row["own_cdf_monotone"] = bool(np.all(np.diff(c) >= -1e-12))
        qv = np.asarray(own_q(p[1:-1]), float)
        row["own_quantile_nan"] = int(np.count_nonzero(~np.isfinite(qv)))
    except Exception as e:  # noqa: BLE001
        row["w1_own_quantile"] = f"failed: {_short(e)}"
    return row


def freeform_settings(kind, pade=(1, 1)):
    mp_like = kind != "wigner"
    return {"support": "(eigs.min(), eigs.max())",
            "fit": {"method": "jacobi", "K": 50, "alpha": 0.5, "beta": 0.5, "projection": "beta",
                    "kernel_bw": 3e-3 if mp_like else 1e-2, "damp": "jackson",
                    "continuation": "pade", "pade_p": pade[0], "pade_q": pade[1]},
            "delta": 1e-4 if mp_like else 1e-6,
            "decompress": {"method": "newton"}}


def run_freeform(eigs, size, oracle, grid, kind, pade=(1, 1), n_sample=None, score=score_density):
    """FreeForm on ``eigs``; ``n_sample`` is the sample size when ``eigs`` pools several samples
    (default ``len(eigs)``); ``score(row, x, rho, atoms, oracle)`` fills the metrics."""
    import freealg

    st = freeform_settings(kind, pade)
    name = "freealg FreeForm" + ("" if pade == (1, 1) else f" pade({pade[0]},{pade[1]})")
    row = {"method": name, "settings": st}
    try:
        out = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            e = np.asarray(eigs, float)
            ff = freealg.FreeForm(e, support=(float(e.min()), float(e.max())))
            ff.delta = st["delta"]  # FreeForm(delta=) does not reach self.delta in 0.12.2
            if n_sample is not None:  # FreeForm takes alpha = size / len(eigs) and has no n= argument
                ff.n = int(n_sample)
            ff.fit(**st["fit"])
            t1 = time.perf_counter()
            rho, x = ff.decompress(size, x=grid, **st["decompress"])
            row["seconds"] = time.perf_counter() - t0
        row["fit_seconds"] = t1 - t0
        row["support_used"] = [float(v) for v in ff.support]
    except Exception as e:  # noqa: BLE001
        row["status"] = f"failed: {_short(e)}"
        row["seconds"] = time.perf_counter() - t0
        return row
    row["status"] = "ok"
    score(row, x, rho, [], oracle)
    return row


def alg_settings(method):
    return {"fit": {"deg_m": 2, "deg_z": 1}, "decompress": {"method": method, "return_atoms": True}}


def run_algebraic(eigs, size, oracle, grid, method="moc", n_sample=None, score=score_density):
    """AlgebraicForm on ``eigs``; ``n_sample`` and ``score`` as in :func:`run_freeform`."""
    import freealg

    st = alg_settings(method)
    row = {"method": f"freealg AlgebraicForm {method}", "settings": st}
    try:
        out = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            af = freealg.AlgebraicForm(np.asarray(eigs, float), n=n_sample)
            af.fit(**st["fit"])
            t1 = time.perf_counter()
            rho, atoms_t = af.decompress(size, x=grid, **st["decompress"])
            row["seconds"] = time.perf_counter() - t0
        row["fit_seconds"] = t1 - t0
    except Exception as e:  # noqa: BLE001
        row["status"] = f"failed: {_short(e)}"
        row["seconds"] = time.perf_counter() - t0
        return row
    row["status"] = "ok"
    # atoms_t: [(loc, weights over the requested sizes)]
    atoms = []
    for loc, w in atoms_t or []:
        w = np.atleast_1d(np.asarray(w, float))
        atoms.append((float(np.real(loc)), float(w[-1])))
    score(row, grid, np.asarray(rho, float).ravel(), atoms, oracle)
    return row


def run_eigvalsh(matrix, size, oracle):
    import freealg

    row = {"method": "freealg eigvalsh", "settings": {"call": "freealg.eigvalsh(A_sample, size, seed=0)"}}
    try:
        out = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            ev = freealg.eigvalsh(matrix, size, seed=0)
            row["seconds"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        row["status"] = f"failed: {_short(e)}"
        row["seconds"] = time.perf_counter() - t0
        return row
    ev = np.asarray(ev, float)
    row["status"] = "ok"
    row["n_eigs"] = int(ev.size)
    row["nan_points"] = int(np.count_nonzero(~np.isfinite(ev)))
    ev = ev[np.isfinite(ev)]
    row["w1"] = w1(esd_quantile(ev), oracle["quantile"]) if ev.size else None
    row["l1"] = None
    if oracle.get("atom") is not None:
        scale = abs(oracle["mean"]) or 1.0
        row["atom_mass"] = float(np.mean(np.abs(ev - oracle["atom"][0]) <= 1e-6 * scale))
    return row


def baseline_row(method, eigs, oracle, note=None):
    row = {"method": method, "status": "ok", "seconds": None, "w1": w1(esd_quantile(eigs), oracle["quantile"]),
           "l1": None}
    if oracle.get("atom") is not None:
        scale = abs(oracle["mean"]) or 1.0
        row["atom_mass"] = float(np.mean(np.abs(np.asarray(eigs) - oracle["atom"][0]) <= 1e-8 * scale))
    if note:
        row["note"] = note
    return row


# -- cases ------------------------------------------------------------------------------------

def law_oracle(law):
    return {"law": law, "quantile": law.quantile, "atom": law.atom, "mean": law.mean,
            "support": list(law.support), "name": repr(law)}


def digits_ntk():
    from bigspec.demo import digits
    from bigspec.kernels import ReLU

    X, _ = digits()
    kern = ReLU(depth=3)
    K = kern(X, X, diagonal=True)
    return 0.5 * (K + K.T), kern


def run_case(results, case, sample_matrix, eigs, targets, oracle_at, kind, methods, slow, own_law=None):
    n_s = len(eigs)
    for size in targets:
        alpha = size / n_s
        oracle = oracle_at(size)
        grid = eval_grid(eigs, alpha)
        rows = []
        rows.append(baseline_row("sample (no decompression)", eigs, oracle))
        if own_law is not None and size == targets[0]:
            rows.append(baseline_row("sample vs own law", eigs, law_oracle(own_law),
                                     note=f"sample ESD vs the size-{n_s} law {own_law!r}: finite-sample noise"))
        if "bigspec" in methods:
            rows.append(run_bigspec(eigs, size, oracle))
        runs = [("freealg FreeForm", lambda: run_freeform(eigs, size, oracle, grid, kind))]
        if kind == "wigner":  # the semicircle's glue is linear (G = -z / s^2): Pade (1, 0) is its exact form
            runs.append(("freealg FreeForm pade(1,0)", lambda: run_freeform(eigs, size, oracle, grid, kind, (1, 0))))
        runs += [("freealg AlgebraicForm moc", lambda: run_algebraic(eigs, size, oracle, grid, "moc")),
                 ("freealg AlgebraicForm coeffs", lambda: run_algebraic(eigs, size, oracle, grid, "coeffs")),
                 ("freealg eigvalsh", lambda: run_eigvalsh(sample_matrix, size, oracle))]
        for name, fn in runs:
            if not any(name.startswith(m) for m in methods):
                continue
            if (case, name) in slow:
                rows.append({"method": name, "status": f"skipped: took {slow[(case, name)]:.0f} s > {SLOW_S:.0f} s "
                                                       "at the smaller target"})
                continue
            r = fn()
            if r.get("seconds") is not None and r["seconds"] > SLOW_S:
                slow[(case, name)] = r["seconds"]
            rows.append(r)
        for r in rows:
            r.update({"case": case, "n_sample": n_s, "size": size, "alpha": alpha, "oracle": oracle["name"]})
            if isinstance(r.get("w1"), float) and oracle["mean"] and kind != "wigner":
                r["w1_rel"] = r["w1"] / abs(oracle["mean"])
            results.append(r)
            print_row(r)


METHODS = ("bigspec", "freealg FreeForm", "freealg AlgebraicForm", "freealg eigvalsh")


def run_seeds(n_seeds, methods, first_seed=100):
    """The oracle cases again over ``n_seeds`` fresh samples: one seed is one draw of the noise.

    At alpha 32 the error of every method is dominated by the fluctuations of the particular
    1000 x 1000 sample (the single-seed rows above move by 10x between seeds), so the summary
    over seeds is the comparison that means something. Methods: bigspec (defaults), freealg
    AlgebraicForm coeffs (freealg's best on these cases), and FreeForm (Pade (1, 1) on MP,
    (1, 0) on Wigner; not on mp-rank, where it finds no atom).
    """
    from bigspec.spectra.laws import MarchenkoPastur, Wigner

    specs = [("mp", MarchenkoPastur(1 / 50), [8000, 32000]), ("wigner", Wigner(1.0), [8000, 32000]),
             ("mp-rank", MarchenkoPastur(0.5), [4000]), ("mp-deficient", MarchenkoPastur(2.0), [8000])]
    per_seed = []
    for case, law, targets in specs:
        kind = "wigner" if case == "wigner" else "mp"
        for seed in range(first_seed, first_seed + n_seeds):
            eigs = np.linalg.eigvalsh(law.matrix(1000, seed=seed))
            for size in targets:
                oracle = law_oracle(law.decompress(size / 1000))
                grid = eval_grid(eigs, size / 1000)
                runs = []
                if "bigspec" in methods:
                    runs.append(lambda: run_bigspec(eigs, size, oracle))
                if any(m.startswith("freealg AlgebraicForm") for m in methods):
                    runs.append(lambda: run_algebraic(eigs, size, oracle, grid, "coeffs"))
                if "freealg FreeForm" in methods and case not in ("mp-rank", "mp-deficient"):
                    pade = (1, 0) if case == "wigner" else (1, 1)
                    runs.append(lambda: run_freeform(eigs, size, oracle, grid, kind, pade))
                for fn in runs:
                    r = fn()
                    per_seed.append({"case": case, "size": size, "seed": seed, "method": r["method"],
                                     "status": r.get("status"), "w1": r.get("w1"), "l1": r.get("l1"),
                                     "atom_mass": r.get("atom_mass", r.get("implied_atom_mass")),
                                     "seconds": r.get("seconds")})
            print(f"  seeds: {case} seed {seed} done", flush=True)
    return per_seed, summarize_seeds(per_seed)


def summarize_seeds(per_seed):
    """Mean / median / max of W1 and L1 per (case, size, method), and bigspec's wins per seed."""
    keys = sorted({(r["case"], r["size"], r["method"]) for r in per_seed}, key=lambda k: (k[0], k[1], k[2] != "bigspec"))
    by = {(r["case"], r["size"], r["method"], r["seed"]): r for r in per_seed}
    out = []
    for case, size, method in keys:
        rows = [r for r in per_seed if (r["case"], r["size"], r["method"]) == (case, size, method)]
        ok = [r for r in rows if r["status"] == "ok" and r["w1"] is not None]
        row = {"case": case, "size": size, "method": method, "seeds": len(rows), "ok": len(ok)}
        for m in ("w1", "l1", "atom_mass", "seconds"):
            v = np.array([r[m] for r in ok if r[m] is not None], float)
            if v.size:
                row[m] = {"mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max()),
                          "min": float(v.min())}
        if method != "bigspec":
            wins = [by[(case, size, "bigspec", r["seed"])]["l1"] < r["l1"] for r in ok
                    if (case, size, "bigspec", r["seed"]) in by and by[(case, size, "bigspec", r["seed"])]["l1"] is not None
                    and r["l1"] is not None]
            row["bigspec_l1_better"] = f"{sum(wins)}/{len(wins)}"
        out.append(row)
    return out


def seeds_table(summary, n_seeds):
    cols = ("case", "size", "method", "ok", "W1 mean", "W1 median", "W1 max", "L1 mean", "L1 median", "L1 max",
            "atom mean", "s median", "bigspec L1 better")
    lines = ["", f"## Over {n_seeds} seeds (fresh samples, seeds 100-{99 + n_seeds})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary:
        def g(m, stat, spec=".2e"):
            return _fmt(r.get(m, {}).get(stat), spec)
        lines.append("| " + " | ".join([r["case"], str(r["size"]), r["method"], f"{r['ok']}/{r['seeds']}",
                                         g("w1", "mean"), g("w1", "median"), g("w1", "max"),
                                         g("l1", "mean"), g("l1", "median"), g("l1", "max"),
                                         g("atom_mass", "mean", ".4f"), g("seconds", "median", ".2f"),
                                         r.get("bigspec_l1_better", "-")]) + " |")
    lines += ["", "bigspec L1 better: on how many seeds bigspec's L1 is below that method's on the same sample.", ""]
    return "\n".join(lines)


def numba_warmup():
    """Compile freealg's numba kernels once (untimed): a tiny AlgebraicForm decompression both ways."""
    import freealg
    from bigspec.spectra.laws import Wigner

    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        af = freealg.AlgebraicForm(Wigner(1.0).eigenvalues(200, seed=99))
        af.fit(deg_m=2, deg_z=1)
        for method in ("coeffs", "moc"):
            af.decompress(400, x=np.linspace(-3, 3, 20), method=method)
    return time.perf_counter() - t0

# -- kernel matrices ("--cases kernels") ---------------------------------------------------------

#: the kernel cases, in the order they run; ``--cases kernels`` selects them all
KERNEL_CASES = ("matern-0.5", "matern-1.5", "matern-2.5", "rbf-nugget", "relu-ntk-r16", "digits-relu-ntk")
LEGACY_CASES = ("mp", "wigner", "mp-rank", "mp-deficient", "digits-ntk")
KERNEL_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
TOP_K = 10
LOG_FLOOR = 1e-12  # W1 of log10 eigenvalues: values clipped below at this times the largest oracle eigenvalue


def kernel_matrix(case, n):
    """One kernel case: (K with rows in random order, nugget, samples per alpha, description).

    K is ``get_kernel(name, **params).bind(X)`` evaluated on ``prepare(X)`` with
    ``diagonal=True``, then permuted symmetrically by ``default_rng(1).permutation``: the
    samples are its leading disjoint diagonal blocks, i.e. random subsets of the points.
    """
    from bigspec.kernels import get_kernel

    nugget, n_samples = 0.0, 2
    if case.startswith("matern-"):
        name, params = "matern", {"nu": float(case.split("-")[1]), "lengthscale": 0.3}
        X, data = np.random.default_rng(0).uniform(size=(n, 4)), f"default_rng(0).uniform(size=({n}, 4))"
    elif case == "rbf-nugget":
        name, params, nugget = "rbf", {"lengthscale": 0.3}, 1e-2
        X, data = np.random.default_rng(0).uniform(size=(n, 3)), f"default_rng(0).uniform(size=({n}, 3))"
    elif case == "relu-ntk-r16":
        name, params = "relu", {"depth": 3}
        X, data = np.random.default_rng(0).standard_normal((n, 16)), f"default_rng(0).standard_normal(({n}, 16))"
    elif case == "digits-relu-ntk":
        from bigspec.demo import digits

        name, params, n_samples = "relu", {"depth": 3}, 4  # n = 1797 only: more, smaller samples
        X, data = digits()[0], "bigspec.demo.digits()[0] (1797 x 64, pixels / 16)"
    else:
        raise ValueError(f"unknown kernel case {case!r}")
    k = get_kernel(name, **params).bind(X)
    Xp = k.prepare(X)
    K = np.asarray(k(Xp, Xp, diagonal=True))
    perm = np.random.default_rng(1).permutation(K.shape[0])
    K = np.ascontiguousarray(K[np.ix_(perm, perm)])
    args = "".join(f", {a}={b!r}" for a, b in params.items())
    desc = {"kernel": repr(k), "call": f"get_kernel({name!r}{args}).bind(X)", "data": data,
            "n": int(K.shape[0]), "nugget": nugget, "n_samples": n_samples,
            "order": "K[np.ix_(p, p)], p = default_rng(1).permutation(n)"}
    return K, nugget, n_samples, desc


def kernel_oracle(K, nugget):
    """The scored truth of a kernel case: eigvalsh of the full matrix, plus the nugget."""
    full = np.linalg.eigvalsh(K) + nugget
    top = float(full.max())
    return {"eigs": full, "n": int(full.size), "quantile": esd_quantile(full), "q_grid": esd_quantile(full)(p_grid()),
            "trace": float(full.sum()), "top": full[::-1][:TOP_K].copy(), "tol": LOG_FLOOR * top,
            "logdet": float(np.sum(np.log(full))) if full.min() > 0 else None,
            "atom": None, "law": None, "mean": float(full.mean())}


def kernel_grid(eigs, alpha, n_log=200):
    """:func:`eval_grid` plus ``n_log`` log-spaced points below its first positive point.

    A kernel spectrum spans decades below the linear grid's first step (about max / 1000):
    without these points a density returned on the grid could not place them at all.
    """
    grid = eval_grid(eigs, alpha)
    e = np.asarray(eigs, float)
    pos = grid[grid > 0]
    lo = max(float(e[e > 0].min()) / 10 if np.any(e > 0) else 0.0, LOG_FLOOR * float(e.max()))
    if pos.size and 0 < lo < pos[0]:
        grid = np.union1d(grid, np.geomspace(lo, pos[0], n_log + 1)[:-1])
    return grid


def score_kernel(row, quantile, oracle, top=None, trace=None, logdet=None, below=None):
    """Fill the kernel metrics of ``row`` from a method's quantile function.

    ``top`` (its 10 largest eigenvalues), ``trace`` and ``logdet`` override the values read
    from its quantiles (``n Q(1 - (k - 0.5) / n)``, ``n`` times its mean, ``n`` times the
    mean of log Q over the quantile grid). ``below``: its mass at or below 0 (default: the
    fraction of the quantile grid where Q <= 0); the log-determinant is n/a when it is > 0.
    """
    n = oracle["n"]
    p = p_grid()
    qm = np.asarray(quantile(p), float)
    qo = oracle["q_grid"]
    ps = np.asarray(KERNEL_QUANTILES)
    qp, qop = np.asarray(quantile(ps), float), oracle["quantile"](ps)
    row["quantiles"] = {str(a): float(b) for a, b in zip(ps, qp)}
    row["quantile_rel_err"] = {str(a): float((b - c) / c) for a, b, c in zip(ps, qp, qop)}
    tol = oracle["tol"]
    row["w1_log10"] = float(np.mean(np.abs(np.log10(np.maximum(qm, tol)) - np.log10(np.maximum(qo, tol)))))
    if top is None:
        top = quantile(1.0 - (np.arange(1, TOP_K + 1) - 0.5) / n)
        row["top_source"] = "quantiles"
    top = np.sort(np.asarray(top, float))[::-1][:TOP_K]
    row["top10"] = top.tolist()
    row["top10_rel_err"] = ((top - oracle["top"][:top.size]) / oracle["top"][:top.size]).tolist()
    row["top10_max_rel_err"] = float(np.max(np.abs(row["top10_rel_err"])))
    if trace is None:
        trace = n * float(np.mean(qm))
    row["trace"] = float(trace)
    row["trace_rel_err"] = (trace - oracle["trace"]) / oracle["trace"]
    if logdet is None:
        below = float(np.mean(qm <= 0)) if below is None else below
        row["mass_at_or_below_0"] = below
        if below > 0 or qm.min() <= 0:
            logdet = f"n/a: mass {below:.2g} at or below 0"
            if np.any(qm > 0):  # JSON only: what the positive part alone would give
                pos = n * float(np.mean(np.log(qm[qm > 0])))
                row["logdet_positive_part"] = pos
                if oracle["logdet"] is not None:
                    row["logdet_positive_part_rel_err"] = (pos - oracle["logdet"]) / abs(oracle["logdet"])
        else:
            logdet = n * float(np.mean(np.log(qm)))
    row["logdet"] = logdet
    if isinstance(logdet, str) or oracle["logdet"] is None:
        row["logdet_rel_err"] = logdet if isinstance(logdet, str) else "n/a: oracle has eigenvalues <= 0"
    else:
        row["logdet_rel_err"] = (logdet - oracle["logdet"]) / abs(oracle["logdet"])


def score_kernel_density(row, x, rho, atoms, oracle):
    """:func:`score_density`'s counterpart for the kernel cases (the ``score`` of the freealg runners)."""
    gd = GridDistribution(x, rho, atoms)
    _grid_fields(row, x, gd, atoms)
    # mass at or below 0: the density's at the grid points <= 0 (not the trapezoid's ramp across 0,
    # whose upper end is the density at the first positive point) and the atoms there
    order = np.argsort(np.asarray(x, float))
    xx = np.asarray(x, float)[order]
    rr = np.clip(np.nan_to_num(np.asarray(rho, float)[order], nan=0.0, posinf=0.0, neginf=0.0), 0, None)
    le0 = xx <= 0
    below = float(np.trapezoid(rr[le0], xx[le0])) if le0.sum() > 1 else 0.0
    below = (below + sum(m for a, m in gd.atoms if a <= 0)) / gd.total_mass
    if below == 0.0 and np.any(rr[le0] > 0):
        below = float(np.finfo(float).tiny)  # a positive density at a single grid point <= 0
    score_kernel(row, gd.quantile, oracle, below=below)
    return gd


def _small(d):
    """``d`` without its long arrays (for the JSON)."""
    return {k: v for k, v in (d or {}).items() if not (np.ndim(v) > 0 and np.size(v) > 4 * TOP_K)}


def run_bigspec_kernel(K, s, k, nugget, oracle, regime=None):
    """``bigspec.spectrum`` on the matrix's first ``k`` diagonal blocks of ``s`` rows."""
    import bigspec

    kw = {} if regime is None else {"regime": regime}
    row = {"method": "bigspec" if regime is None else f"bigspec regime={regime}",
           "call": f"bigspec.spectrum(K, sample_size={s}, n_samples={k}, shift={nugget}, progress=False"
                   + "".join(f", {a}={b!r}" for a, b in kw.items()) + ")"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            res = bigspec.spectrum(K, sample_size=s, n_samples=k, shift=nugget, progress=False, **kw)
            row["seconds"] = time.perf_counter() - t0
            sign, logdet = res.logdet()
        row["warnings"] = [str(w.message) for w in caught]
    except Exception as e:  # noqa: BLE001
        row["status"] = f"failed: {_short(e)}"
        row["traceback"] = traceback.format_exc(limit=3)
        return row, None
    row["status"] = "ok"
    diag = res.diagnostics
    row["regime"] = res.settings.get("regime")
    row["regime_reason"] = diag.get("regime_reason")
    for key in ("held_out_scaled", "held_out_decades", "held_out_by_regime"):
        row[key] = diag.get(key)
    row["settings"], row["diagnostics"] = _small(res.settings), _small(diag)
    top = None
    if row["regime"] == "kernel":
        top = [t[0] for t in diag["top_eigenvalues"]]
        row["top_source"] = 'diagnostics["top_eigenvalues"]'
    row["logdet_sign"] = int(sign)
    ld = float(logdet) if np.isfinite(logdet) else f"n/a: logdet() = ({sign}, {logdet})"
    score_kernel(row, res.quantiles, oracle, top=top, trace=res.trace, logdet=ld)
    row["trace_of_distribution_rel_err"] = (oracle["n"] * res.mean - oracle["trace"]) / oracle["trace"]
    return row, res


def run_kernel_case(results, case, K, nugget, n_samples, alphas, methods, slow, meta):
    """All methods on one kernel matrix, at each alpha (``n_samples`` blocks of ``n // alpha`` rows)."""
    t0 = time.perf_counter()
    oracle = kernel_oracle(K, nugget)
    n = oracle["n"]
    full = oracle["eigs"]
    meta.update({"oracle": f"np.linalg.eigvalsh(K) + {nugget} (full {n} x {n})",
                 "oracle_seconds": time.perf_counter() - t0,
                 "oracle_eig_min_max": [float(full.min()), float(full.max())], "oracle_trace": oracle["trace"],
                 "oracle_logdet": oracle["logdet"], "oracle_top10": oracle["top"].tolist(),
                 "oracle_quantiles": {str(p): float(oracle["quantile"](p)) for p in KERNEL_QUANTILES},
                 "alphas": {}})
    for alpha in alphas:
        s = n // alpha
        t1 = time.perf_counter()
        own = np.concatenate([np.linalg.eigvalsh(K[j * s:(j + 1) * s, j * s:(j + 1) * s]) for j in range(n_samples)])
        eig_seconds = time.perf_counter() - t1
        own = own + nugget
        rows, eigs = [], own
        if "bigspec" in methods:
            r, res = run_bigspec_kernel(K, s, n_samples, nugget, oracle)
            rows.append(r)
            if res is not None:
                # freealg gets the pooled eigenvalues of bigspec's own samples (shift already added)
                eigs = np.asarray(res.eigenvalues, float)
                meta["alphas"].setdefault(str(alpha), {})["eigenvalues_match_own_blocks"] = bool(
                    eigs.size == own.size and np.allclose(np.sort(eigs), np.sort(own), rtol=1e-9,
                                                          atol=1e-12 * float(full.max())))
            rows.append(run_bigspec_kernel(K, s, n_samples, nugget, oracle, regime="bulk")[0])
        base = {"method": "sample (no decompression)", "status": "ok", "seconds": eig_seconds,
                "note": "seconds: eigvalsh of the sample blocks (freealg's rows exclude it; bigspec's include it, "
                        "with the nested sub-blocks)"}
        score_kernel(base, esd_quantile(eigs), oracle)
        rows.insert(0, base)
        grid = kernel_grid(eigs, n / s)
        meta["alphas"].setdefault(str(alpha), {}).update(
            {"sample_size": s, "n_samples": n_samples, "sample_eig_min_max": [float(eigs.min()), float(eigs.max())],
             "sample_eigvalsh_seconds": eig_seconds, "freealg_grid_points": int(grid.size)})
        runs = [("freealg FreeForm", run_freeform, ("mp",)), ("freealg AlgebraicForm moc", run_algebraic, ("moc",)),
                ("freealg AlgebraicForm coeffs", run_algebraic, ("coeffs",))]
        for name, fn, extra in runs:
            if not any(name.startswith(m) for m in methods):
                continue
            if (case, name) in slow:
                rows.append({"method": name, "status": f"skipped: took {slow[(case, name)]:.0f} s > {SLOW_S:.0f} s "
                                                       "at the smaller alpha"})
                continue
            r = fn(eigs, n, oracle, grid, *extra, n_sample=s, score=score_kernel_density)
            if r.get("seconds") is not None and r["seconds"] > SLOW_S:
                slow[(case, name)] = r["seconds"]
            rows.append(r)
        for r in rows:
            r.update({"case": case, "n": n, "alpha": alpha, "n_sample": s, "n_samples": n_samples, "nugget": nugget})
            results.append(r)
            print_kernel_row(r)
    meta["seconds"] = time.perf_counter() - t0


def run_kernels(cases, n, alphas, methods, versions):
    """The kernel cases: their rows and the ``kernels`` section of the JSON."""
    results, slow, meta = [], {}, {}
    t0 = time.perf_counter()
    print("\n" + "  ".join(c.ljust(w) for c, w in zip(KCOLS, KWIDTHS)))
    for case in cases:
        tb = time.perf_counter()
        K, nugget, n_samples, desc = kernel_matrix(case, n)
        meta[case] = {**desc, "build_seconds": time.perf_counter() - tb,
                      "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        run_kernel_case(results, case, K, nugget, n_samples, alphas, methods, slow, meta[case])
        del K
    return {"versions": versions, "n": n, "alphas": list(alphas), "cases": meta, "results": results,
            "seconds": time.perf_counter() - t0, "w1_points": N_P, "log_floor": LOG_FLOOR,
            "settings": {"bigspec": "bigspec.spectrum(K, sample_size=s, n_samples=k, shift=nugget, progress=False)",
                         "bigspec regime=bulk": "the same with regime='bulk'",
                         "freealg FreeForm": {**freeform_settings("mp"), "n": "s (set as ff.n)"},
                         "freealg AlgebraicForm moc": {**alg_settings("moc"), "n": "s (AlgebraicForm(eigs, n=s))"},
                         "freealg AlgebraicForm coeffs": {**alg_settings("coeffs"), "n": "s"},
                         "grid": "kernel_grid: eval_grid + 200 log-spaced points below its first positive point"}}


def merge_kernels(old, new):
    """The ``kernels`` section after a run: ``new``'s cases replace ``old``'s, the others are kept."""
    if not old:
        return new
    ran = set(new["cases"])
    out = dict(new)
    order = {c: i for i, c in enumerate(KERNEL_CASES)}
    cases = {**{c: m for c, m in old.get("cases", {}).items() if c not in ran}, **new["cases"]}
    out["cases"] = dict(sorted(cases.items(), key=lambda cm: order.get(cm[0], len(order))))
    kept = [r for r in old.get("results", []) if r.get("case") not in ran]
    out["results"] = sorted(kept + new["results"], key=lambda r: order.get(r.get("case"), len(order)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "spectrum.json"))
    ap.add_argument("--cases", default=",".join(LEGACY_CASES) + ",kernels",
                    help="comma-separated: " + ", ".join(LEGACY_CASES) + "; kernels (all of: "
                         + ", ".join(KERNEL_CASES) + ") or any of those")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--seeds", type=int, default=10,
                    help="also repeat the oracle cases over this many fresh samples (0: skip; not run "
                         "when --cases names kernel cases only)")
    ap.add_argument("--n", type=int, default=4000, help="points of the kernel cases (not digits: 1797)")
    ap.add_argument("--alphas", default="4,8", help="decompression ratios n / s of the kernel cases")
    args = ap.parse_args(argv)
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(LEGACY_CASES) - set(KERNEL_CASES) - {"kernels"})
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}")
    kcases = [c for c in KERNEL_CASES if c in cases or "kernels" in cases]
    legacy = [c for c in cases if c in LEGACY_CASES]
    alphas = [int(a) for a in args.alphas.split(",")]
    methods = set(args.methods.split(","))

    import bigspec
    from bigspec.spectra.laws import MarchenkoPastur, Wigner

    versions = {"python": platform.python_version(), "numpy": np.__version__, "bigspec": bigspec.__version__}
    try:
        import scipy

        versions["scipy"] = scipy.__version__
    except ImportError:
        pass
    try:
        import freealg

        versions["freealg"] = freealg.__version__
    except Exception as e:  # noqa: BLE001
        versions["freealg"] = f"failed: {_short(e)}"
        methods -= {m for m in methods if m.startswith("freealg")}
    if not hasattr(bigspec, "free_decompress") and "bigspec" in methods:
        print("bigspec.free_decompress is not available: bigspec rows will say failed", file=sys.stderr)

    results, slow, meta_cases = [], {}, {}
    t_all = time.perf_counter()
    warmup = None
    if any(m.startswith("freealg AlgebraicForm") for m in methods):
        try:
            warmup = numba_warmup()
            print(f"freealg numba warm-up (untimed in the rows): {warmup:.1f} s")
        except Exception as e:  # noqa: BLE001
            warmup = f"failed: {_short(e)}"
    if legacy or not kcases:
        print_header()
    if "mp" in cases:
        law = MarchenkoPastur(1 / 50)
        A = law.matrix(1000, seed=1)
        eigs = np.linalg.eigvalsh(A)
        meta_cases["mp"] = {"sample": "MarchenkoPastur(1/50).matrix(1000, seed=1)", "targets": [8000, 32000]}
        run_case(results, "mp", A, eigs, [8000, 32000], lambda n: law_oracle(law.decompress(n / 1000)), "mp",
                 methods, slow, own_law=law)
    if "wigner" in cases:
        law = Wigner(1.0)
        A = law.matrix(1000, seed=2)
        eigs = np.linalg.eigvalsh(A)
        meta_cases["wigner"] = {"sample": "Wigner(1).matrix(1000, seed=2)", "targets": [8000, 32000]}
        run_case(results, "wigner", A, eigs, [8000, 32000], lambda n: law_oracle(law.decompress(n / 1000)),
                 "wigner", methods, slow, own_law=law)
    if "mp-rank" in cases:
        law = MarchenkoPastur(0.5)
        A = law.matrix(1000, seed=3)
        eigs = np.linalg.eigvalsh(A)
        meta_cases["mp-rank"] = {"sample": "MarchenkoPastur(0.5).matrix(1000, seed=3)", "targets": [4000],
                                 "oracle_atom": list(law.decompress(4).atom)}
        run_case(results, "mp-rank", A, eigs, [4000], lambda n: law_oracle(law.decompress(n / 1000)), "mp",
                 methods, slow, own_law=law)
    if "mp-deficient" in cases:
        law = MarchenkoPastur(2.0)
        A = law.matrix(1000, seed=5)
        eigs = np.linalg.eigvalsh(A)
        meta_cases["mp-deficient"] = {"sample": "MarchenkoPastur(2.0).matrix(1000, seed=5)", "targets": [4000, 8000],
                                      "sample_atom": [0.0, 0.5]}
        run_case(results, "mp-deficient", A, eigs, [4000, 8000], lambda n: law_oracle(law.decompress(n / 1000)),
                 "mp", methods, slow, own_law=law)
    if "digits-ntk" in cases:
        t0 = time.perf_counter()
        K, kern = digits_ntk()
        full = np.linalg.eigvalsh(K)
        n = K.shape[0]
        idx = np.sort(np.random.default_rng(4).permutation(n)[: n // 8])
        Ks = K[np.ix_(idx, idx)]
        eigs = np.linalg.eigvalsh(Ks)
        oracle = {"law": None, "quantile": esd_quantile(full), "atom": None, "mean": float(full.mean()),
                  "name": f"eigvalsh of the full {n}x{n} NTK"}
        meta_cases["digits-ntk"] = {
            "kernel": repr(kern), "data": "bigspec.demo.digits() (1797 x 64, pixels / 16)", "n": n,
            "sample": f"principal submatrix of size {n // 8}, default_rng(4).permutation(n)[:{n // 8}]",
            "full_eig_min_max": [float(full.min()), float(full.max())], "full_mean": float(full.mean()),
            "full_top_eig_fraction_of_trace": float(full.max() / full.sum()),
            "sample_eig_min_max": [float(eigs.min()), float(eigs.max())],
            "build_seconds": time.perf_counter() - t0}
        run_case(results, "digits-ntk", Ks, eigs, [n], lambda _n: oracle, "mp", methods, slow)

    kernels = run_kernels(kcases, args.n, alphas, methods, versions) if kcases else None

    seeds_summary = per_seed = None
    if args.seeds > 0 and (legacy or not kcases):
        print(f"\nrepeating the oracle cases over {args.seeds} seeds", flush=True)
        per_seed, seeds_summary = run_seeds(args.seeds, methods)

    total = time.perf_counter() - t_all
    previous = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
    if legacy or not kcases:
        doc = {"benchmark": "bench/spectrum.py", "versions": versions, "machine": platform.platform(),
               "cpus": os.cpu_count(), "total_seconds": total, "freealg_numba_warmup_seconds": warmup,
               "cases": meta_cases,
               "settings": {"freealg FreeForm (mp-like)": freeform_settings("mp"),
                            "freealg FreeForm (wigner)": freeform_settings("wigner"),
                            "freealg FreeForm pade(1,0) (wigner)": freeform_settings("wigner", (1, 0)),
                            "freealg AlgebraicForm moc": alg_settings("moc"),
                            "freealg AlgebraicForm coeffs": alg_settings("coeffs"),
                            "freealg eigvalsh": "freealg.eigvalsh(A_sample, size, seed=0)",
                            "bigspec": "bigspec.free_decompress(eigs, size) (defaults)",
                            "w1_points": N_P, "slow_skip_seconds": SLOW_S},
               "results": results, "seeds_summary": seeds_summary, "seeds_results": per_seed}
    else:  # a kernels-only run keeps the other cases' results as they are
        doc = previous or {"benchmark": "bench/spectrum.py"}
    if kernels is not None:
        kernels.update({"machine": platform.platform(), "cpus": os.cpu_count(),
                        "freealg_numba_warmup_seconds": warmup})
        doc["kernels"] = merge_kernels(previous.get("kernels"), kernels)
    elif previous.get("kernels") is not None:
        doc["kernels"] = previous["kernels"]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
    written = [args.out]
    if legacy or not kcases:
        md = os.path.splitext(args.out)[0] + ".md"
        with open(md, "w") as f:
            f.write(markdown_table(results, versions, total))
            if seeds_summary:
                f.write(seeds_table(seeds_summary, args.seeds))
        written.append(md)
    if kernels is not None:
        md = os.path.splitext(args.out)[0] + "_kernels.md"
        with open(md, "w") as f:
            f.write(kernel_markdown(doc["kernels"]))
        written.append(md)
    print(f"\ntotal {total:.1f} s; wrote {' and '.join(written)}")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# -- output -------------------------------------------------------------------------------------

COLS = ("case", "size", "method", "W1", "W1/mean", "L1", "atom", "mass", "seconds", "status")


def _fmt(v, spec=".3e"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def _cells(r):
    atom = "-"
    if r.get("atom_mass") is not None:
        atom = _fmt(r["atom_mass"], ".4f")
    elif r.get("implied_atom_mass") is not None:
        atom = f"({r['implied_atom_mass']:.4f} implied)"
    status = r.get("status", "")
    return [r["case"], str(r["size"]), r["method"], _fmt(r.get("w1")), _fmt(r.get("w1_rel"), ".2%"),
            _fmt(r.get("l1")), atom, _fmt(r.get("raw_cont_mass", r.get("cont_mass")), ".4f"), _fmt(r.get("seconds"), ".2f"),
            "ok" if status == "ok" else status]


WIDTHS = (10, 6, 29, 10, 8, 10, 18, 7, 8, 20)


def print_header():
    print("  ".join(c.ljust(w) for c, w in zip(COLS, WIDTHS)))


def print_row(r):
    print("  ".join(c.ljust(w) for c, w in zip(_cells(r), WIDTHS)), flush=True)


def markdown_table(results, versions, total):
    lines = ["# Free decompression: bigspec vs freealg", "",
             "Written by `python bench/spectrum.py` (see its docstring for the cases, settings and metrics). "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; total {total:.0f} s.", "",
             "| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    for r in results:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |")
    lines += ["", "W1: Wasserstein-1 to the oracle at the target size; W1/mean: relative to the oracle's mean; "
              "L1: of the continuous densities; atom: mass of the atom reported (implied: freealg reports none, "
              "the missing continuous mass is put at the oracle's atom); mass: continuous mass of the density "
              "before normalisation; seconds: the decompression call only.", ""]
    return "\n".join(lines)


KCOLS = ("case", "alpha", "method", "regime", "q10", "q25", "q50", "q75", "q90", "trace", "W1 log10",
         "top-10", "logdet", "held-out", "seconds", "status")
KWIDTHS = (15, 5, 28, 7, 8, 8, 8, 8, 8, 8, 8, 8, 8, 26, 7, 20)


def _pct(v, signed=True):
    if v is None:
        return "-"
    if isinstance(v, str):
        return "n/a"
    if not np.isfinite(v):
        return str(v)
    return f"{100 * v:{'+' if signed else ''}.3g}%"


def _held_out(r):
    by = r.get("held_out_by_regime") or {}
    parts = [f"{k} {_fmt(v, '.3f')}" for k, v in by.items()]
    if r.get("held_out_scaled") is None and not parts:
        return "-"
    return f"{_fmt(r.get('held_out_scaled'), '.3f')}" + (f" ({', '.join(parts)})" if parts else "")


def _kernel_cells(r):
    status = r.get("status", "")
    q = r.get("quantile_rel_err") or {}
    return [r["case"], str(r["alpha"]), r["method"], r.get("regime") or "-",
            *[_pct(q.get(str(p))) for p in KERNEL_QUANTILES], _pct(r.get("trace_rel_err")),
            _fmt(r.get("w1_log10"), ".3f"), _pct(r.get("top10_max_rel_err"), signed=False),
            _pct(r.get("logdet_rel_err")), _held_out(r), _fmt(r.get("seconds"), ".2f"),
            "ok" if status == "ok" else status]


def print_kernel_row(r):
    print("  ".join(c.ljust(w) for c, w in zip(_kernel_cells(r), KWIDTHS)), flush=True)


def kernel_markdown(section):
    """The markdown report of the ``kernels`` section (all its cases, whichever run wrote them)."""
    v = section["versions"]
    lines = ["# Kernel-matrix spectra: bigspec vs freealg", "",
             "Written by `python bench/spectrum.py --cases kernels` (see its docstring for the cases, methods "
             "and metrics). " + ", ".join(f"{k} {x}" for k, x in v.items())
             + f"; n = {section['n']} (digits: 1797); last run {section['seconds']:.0f} s.", "",
             "| case | kernel | X | n | nugget | samples (alpha: k x s) | oracle eigenvalues | oracle logdet |",
             "|---|---|---|---|---|---|---|---|"]
    for case, m in section["cases"].items():
        al = ", ".join(f"{a}: {d['n_samples']} x {d['sample_size']}" for a, d in m.get("alphas", {}).items()
                       if "sample_size" in d)
        lo, hi = m.get("oracle_eig_min_max", [None, None])
        lines.append(f"| {case} | `{m['call']}` | `{m['data']}` | {m['n']} | {m['nugget']:g} | {al} | "
                     f"{_fmt(lo, '.2e')} .. {_fmt(hi, '.2e')} | {_fmt(m.get('oracle_logdet'), '.6g')} |")
    lines += ["", "| " + " | ".join(KCOLS) + " |", "|" + "---|" * len(KCOLS)]
    for r in section["results"]:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _kernel_cells(r)) + " |")
    lines += ["", ("q10..q90: signed relative error of the 10/25/50/75/90% quantiles; trace: signed relative error "
              "of the trace; W1 log10: Wasserstein-1 of log10 eigenvalues, in decades (values clipped below at "
              f"{LOG_FLOOR:g} x the largest eigenvalue); top-10: largest relative error of the 10 largest "
              "eigenvalues (bigspec's kernel regime: `diagnostics[\"top_eigenvalues\"]`; otherwise the method's "
              "quantiles at p = 1 - (k - 0.5)/n); logdet: signed relative error of the log-determinant (n/a: the "
              "method puts mass at or below 0; the JSON has its positive part's); held-out: bigspec's "
              "`held_out_scaled` (the regimes' `held_out_by_regime`), decades; seconds: bigspec: the whole "
              "`spectrum()` call (sample "
              "eigenvalues and nested sub-blocks included); freealg: fit + decompress; sample: the blocks' "
              "eigvalsh."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
