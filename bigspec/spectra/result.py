"""SpectrumResult: a decompressed eigenvalue density and what it was computed from.

Examples
--------
>>> import bigspec
>>> from bigspec.spectra.laws import MarchenkoPastur
>>> r = bigspec.free_decompress(MarchenkoPastur(0.1).eigenvalues(800, seed=1), size=3200)
>>> round(r.mean, 2), r.atoms
(1.0, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..results import ResultMixin

#: the quantiles a summary reports
QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass(frozen=True, repr=False)
class SpectrumResult(ResultMixin):
    """Density of the eigenvalues of a size-``size`` matrix, decompressed from samples.

    ``density`` is the continuous part on the grid ``x``; ``atoms`` lists point masses
    ``(location, mass)`` (the zero eigenvalues of a rank-deficient matrix, the floor s of
    ``K + s I``, or the single value of ``c I``). ``cdf``, ``quantiles``, ``moments`` and
    ``logdet`` include both. ``settings["regime"]`` is ``"bulk"``, ``"heavy-tailed"`` or
    ``"point-mass"`` (``diagnostics["regime_reason"]`` says why); ``eigenvalues`` are the
    pooled sample eigenvalues with ``scale`` and ``shift`` applied. In the ``"kernel"`` regime,
    :meth:`quantile_intervals` gives quantiles with held-out prediction intervals (those at 10,
    25, 50, 75 and 90% are in ``diagnostics["quantile_intervals"]`` and the repr): a quantile can
    be off by more than the spectrum's overall held-out error, and its interval shows by how much.
    """

    x: np.ndarray
    density: np.ndarray
    support: tuple
    atoms: list
    size: int
    sample_size: int
    n_samples: int
    alpha: float
    seed: object
    source: object
    settings: dict
    diagnostics: dict
    seconds: float
    eigenvalues: np.ndarray = field(default=None, repr=False, compare=False)
    #: (values, weights) of a discrete representation (heavy-tailed and point-mass regimes); when set it
    #: defines cdf, quantiles, moments and logdet exactly, and ``density`` is its log-KDE (0 for a point mass)
    table: tuple = field(default=None, repr=False, compare=False)
    #: d when the matrix is K (x) I_d and the density is K's (each eigenvalue d times): ``size``
    #: counts K's rows, and ``trace`` and ``logdet()`` are those of the whole K (x) I_d, as in
    #: :class:`~bigspec.results.LogdetResult`
    kron_outputs: int = 1
    #: the kernel regime's input: per sample, ``{rows m: (count, m) descending eigenvalues}`` of its
    #: nested diagonal sub-blocks (``scale`` applied, not ``shift``)
    nested: tuple = field(default=None, repr=False, compare=False)

    _headline = ("size", "kron_outputs", "sample_size", "n_samples", "alpha", "support", "atoms", "seconds")

    @property
    def matrix_rows(self) -> int:
        """Order of the matrix described: ``size * kron_outputs``."""
        return self.size * self.kron_outputs

    def __repr__(self) -> str:
        d = self.to_dict()
        keys = [k for k in self._headline if k != "kron_outputs" or self.kron_outputs != 1]
        head = ", ".join(f"{k}={d[k]!r}" for k in keys)
        kron = (f"; the matrix is K (x) I_{self.kron_outputs} ({self.matrix_rows} x {self.matrix_rows}), whose "
                f"density is K's ({self.size} x {self.size})" if self.kron_outputs != 1 else "")
        rows = self.diagnostics.get("quantile_intervals")
        spans = ""
        if rows:
            level = self.diagnostics.get("quantile_interval_level", 0.95)
            spans = f"; quantiles with {level:.0%} held-out intervals: " + ", ".join(
                f"{p:.0%} {q:.4g} [{lo:.4g}, {hi:.4g}]" for p, lo, q, hi in rows)
        return f"SpectrumResult({head}){kron}{spans}"

    def to_dict(self, grid: bool = False) -> dict:
        """JSON-safe summary (what ``--json`` prints); the density on its grid (``x``,
        ``density``, ``grid`` points each) only with ``grid=True`` (CLI ``--grid``)."""
        d = super().to_dict()
        del d["x"], d["density"]
        if grid:
            d["x"], d["density"] = self.x.tolist(), self.density.tolist()
        d["mean"], d["variance"], d["trace"] = self.mean, self.variance, self.trace
        interval = self.trace_interval
        d["trace_interval"] = None if interval is None else [float(v) for v in interval]
        d["matrix_rows"] = self.matrix_rows
        d["quantiles"] = {str(q): float(v) for q, v in zip(QUANTILES, self.quantiles(QUANTILES))}
        d["effective_rank"], d["condition_number"] = self.effective_rank, self.condition_number
        d["top_eigenvalues"] = self.top_eigenvalues(min(10, self.size)).tolist()
        return d

    # -- distribution ------------------------------------------------------------------
    def density_at(self, x):
        """The continuous density at ``x`` (linear interpolation on the grid, 0 outside)."""
        return np.interp(np.asarray(x, float), self.x, self.density, left=0.0, right=0.0)

    def _cdf_continuous(self):
        steps = np.diff(self.x) * (self.density[1:] + self.density[:-1]) / 2
        return np.concatenate([[0.0], np.cumsum(steps)])

    def cdf(self, x):
        """Cumulative distribution at ``x``, atoms included."""
        x = np.asarray(x, float)
        if self.table is not None:
            v, w = self.table
            return np.concatenate([[0.0], np.cumsum(w)])[np.searchsorted(v, x, side="right")]
        out = np.interp(x, self.x, self._cdf_continuous(), left=0.0)
        for loc, mass in self.atoms:
            out = out + mass * (x >= loc)
        return out

    def quantiles(self, q=(0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)):
        """Quantiles of the decompressed distribution (atoms included); ``q`` in [0, 1].

        Raises ArgumentError for probabilities outside [0, 1] or not finite.
        """
        from ..validate import check_probabilities

        q = check_probabilities(q, "quantiles(q)")
        if self.table is not None:
            v, w = self.table
            return v[np.clip(np.searchsorted(np.cumsum(w), q, side="left"), 0, v.size - 1)]
        # each atom is a jump: the CDF just below it, then at it
        below = [loc - 1e-9 * (self.x[-1] - self.x[0]) for loc, _ in self.atoms]
        pts = np.union1d(self.x, [loc for loc, _ in self.atoms] + below)
        F = np.maximum.accumulate(self.cdf(pts))
        idx = np.clip(np.searchsorted(F, q, side="left"), 0, pts.size - 1)
        lo = np.clip(idx - 1, 0, None)
        span = np.where(F[idx] > F[lo], F[idx] - F[lo], 1.0)
        w = np.clip((q - F[lo]) / span, 0, 1)
        w = np.where(np.isin(pts[idx], [loc for loc, _ in self.atoms]), 1.0, w)  # inside a jump: the atom
        return np.where(idx == lo, pts[idx], pts[lo] + w * (pts[idx] - pts[lo]))

    def quantile_intervals(self, p=(0.1, 0.25, 0.5, 0.75, 0.9), level: float = 0.95):
        """Quantiles with held-out prediction intervals: ``(low, estimate, high)`` (kernel regime).

        A single quantile can be off by more than the spectrum's overall held-out error says
        (Matérn-5/2's 75% quantile 22% low, the ReLU NTK's 90% 24% high, both at 4x): these
        intervals show by how much. Each nested size of the samples (s rows, s/2, ...) is
        predicted from its sub-blocks of at most a half and of at most a quarter of its rows, as
        the whole matrix is from the samples; each prediction's relative error at the same
        relative position in the nonzero eigenvalues (at least its mean over the whole spectrum),
        scaled from its size step to ``size / sample_size`` as ``held_out_scaled`` is, is one
        held-out replicate. The interval is ``q exp(-h) .. q exp(h)``, ``h`` Student's t quantile
        for ``level`` (k degrees of freedom) times the RMS of the k replicates, joined in
        quadrature with the spread of the samples' own fits, cut at the floor and shift of a
        positive semidefinite spectrum and widened by the rounding tolerance (``atom_tol``); see
        :func:`bigspec.spectra.operator.quantile_halfwidths`.

        The level is nominal, and the intervals conservative. Against the full eigvalsh of
        Matérn 1/2, 3/2, 5/2 (n = 4000, 4-d), RBF + nugget, a ReLU NTK and the digits NTK (1797
        points), from 2 samples of n/4 rows (4 for the digits) in 4 row orders: all 120 exact
        10-90% quantiles inside the 95% intervals, and all 60 from 2 samples of n/16 (Matérn 1/2,
        3/2, ReLU NTK); on six other kernels (Matérn in 2, 3 and 8 dimensions, RBF + 1e-4 I in 6,
        ReLU NTKs of depth 2 and 5; n = 3000, 4x and 8x) all 60. At a nominal 50% they covered
        75-89%. The median relative half-width ``(high - low) / (2 q)`` over a case's five was
        0.16-0.66 at 4x (0 for RBF + nugget, whose quantiles to 75% are the nugget), 0.58-2.3 at
        16x, and 1.5-2.4 for the 6-d RBF, whose held-out error (0.21-0.25 decades) warns.
        ``diagnostics["quantile_intervals"]`` holds them at 10, 25, 50, 75 and 90% as
        ``(p, low, estimate, high)``.

        Parameters
        ----------
        p : float or array_like, shape (q,)
            Probabilities in [0, 1].
        level : float
            Nominal coverage in (0, 1): 0.95 for a 95% interval.

        Returns
        -------
        (low, estimate, high) : tuple of ndarray, each of the shape of ``p``
            Eigenvalues, in the units of the matrix (``scale`` and ``shift`` applied); ``estimate``
            is :meth:`quantiles`. ``low`` and ``high`` are the estimate itself (up to the rounding
            tolerance) inside the atom at the floor of a rank-deficient matrix, whose rank the
            samples fix, and ``high`` is ``inf`` where there are no held-out replicates (samples
            under 64 rows).

        Raises
        ------
        ArgumentError
            Probabilities outside [0, 1], a level outside (0, 1), or a result that is not in the
            kernel regime (the intervals need the nested sub-blocks only
            :func:`bigspec.spectrum` computes, for ``regime="kernel"`` or ``"auto"``).
        ArgumentTypeError
            ``p`` or ``level`` is not numbers.

        Examples
        --------
        >>> import numpy as np, bigspec
        >>> X = np.random.default_rng(0).uniform(size=(800, 3))
        >>> r = bigspec.spectrum(kernel="matern", X=X, sample_size=200, n_samples=2, nu=0.5, lengthscale=0.5)
        >>> low, median, high = r.quantile_intervals(0.5)
        >>> bool(low < median < high), bool(high / low < 3)         # samples of 200 rows: +-40% here
        (True, True)
        """
        from ..errors import ArgumentError
        from ..validate import check_level, check_probabilities

        p = check_probabilities(p, "quantile_intervals(p)")
        level = check_level(level)
        if self.settings.get("regime") != "kernel" or self.nested is None:
            raise ArgumentError(
                f"quantile intervals need the kernel regime's nested sub-blocks, and this spectrum was decompressed "
                f"in the {self.settings.get('regime')!r} regime: for a positive spectrum (a kernel matrix, an NTK) "
                f"bigspec.spectrum(..., regime='kernel') gives them; this one's held-out error is in "
                f"diagnostics['held_out_by_regime'] where bigspec.spectrum measured it")
        low, est, high = self._quantile_intervals(p.ravel(), level)
        return low.reshape(p.shape), est.reshape(p.shape), high.reshape(p.shape)

    def _quantile_intervals(self, p, level, per=None, fit=None):
        """:meth:`quantile_intervals` for checked 1-D ``p``; ``per`` (the floor taken off) and ``fit``
        are the kernel regime's own, where it has them."""
        from .operator import quantile_halfwidths

        floor, shift = float(self.settings["floor"]), float(self.settings["shift"])
        offset, tol_rel = floor + shift, float(self.settings["atom_tol"])
        if per is None:
            per = [{m: np.maximum(v - floor, 0.0) for m, v in d.items()} for d in self.nested]
        mean = float(self.diagnostics["sample_mean"]) - shift - floor
        h, _ = quantile_halfwidths(per, self.size, mean, p, level=level, tol_rel=tol_rel, offset=offset, fit=fit)
        est = np.asarray(self.quantiles(p), float)
        rounding = tol_rel * float(np.max(np.abs(self.table[0] - offset)))    # eigenvalues under it count as 0
        with np.errstate(over="ignore", invalid="ignore"):
            a, b = est * np.exp(-h), est * np.exp(np.where(np.isinf(h), 0.0, h))
            b = np.where(np.isinf(h), np.sign(est) * np.inf, b)
        low, high = np.minimum(a, b), np.maximum(a, b)
        low, high = np.where((est == 0) & (h > 0), -np.inf, low), np.where((est == 0) & (h > 0), np.inf, high)
        if self.eigenvalues is not None and self.eigenvalues.min() >= offset - rounding:
            low = np.maximum(low, offset)   # a positive semidefinite spectrum above its floor and shift
        return low - rounding, est, high + rounding

    def moments(self, k: int = 4) -> np.ndarray:
        """Raw moments E[x^j], j = 1..k (atoms included)."""
        if self.table is not None:
            v, w = self.table
            return np.array([float(np.sum(w * v ** j)) for j in range(1, k + 1)])
        out = []
        for j in range(1, k + 1):
            val = float(np.trapezoid(self.x ** j * self.density, self.x))
            val += sum(mass * loc ** j for loc, mass in self.atoms)
            out.append(val)
        return np.array(out)

    @property
    def mean(self) -> float:
        return float(self.moments(1)[0])

    @property
    def trace(self) -> float:
        """Trace of the size-``size`` matrix: exactly ``size`` times the pooled sample mean.

        Free decompression preserves the mean, and a random principal submatrix's mean
        eigenvalue (its mean diagonal entry) is an unbiased estimate of the large matrix's,
        so this does not depend on the fit (``mean`` is the fit's, equal to it up to
        rounding except in the bulk regime, where it is checked to 1% of the spread). For
        ``K (x) I_d`` it is ``d`` times K's.
        """
        return self.kron_outputs * self.size * float(self.diagnostics["sample_mean"])

    @property
    def trace_interval(self) -> tuple[float, float] | None:
        """A 95% interval of the trace (Student t over the means of disjoint sampled blocks: the
        kernel regime's smallest nested sub-blocks, else the samples; with the finite-population
        correction, so samples that hold every row give a zero-width interval). None where there
        is a single block. The trace estimate is a sample mean: 500 of 4000 rows of a ReLU NTK on
        Gaussian data put it 2.8% off, inside this interval."""
        se, dof = self.diagnostics.get("trace_se"), self.diagnostics.get("trace_dof")
        if se is None or not dof:
            return None
        from scipy.stats import t

        half = float(t.ppf(0.975, dof)) * se + 64 * np.finfo(float).eps * abs(self.trace)   # and rounding
        return (self.trace - half, self.trace + half)

    @property
    def variance(self) -> float:
        m1, m2 = self.moments(2)
        return float(m2 - m1 ** 2)

    @property
    def effective_rank(self) -> float:
        """The participation ratio ``(sum lambda)^2 / sum lambda^2`` of the size-``size`` matrix:
        ``size * mean^2 / E[x^2]``; the number of eigenvalues of equal size with the same trace and
        Frobenius norm (for ``K (x) I_d``, d times K's)."""
        m1, m2 = self.moments(2)
        return float(self.kron_outputs * self.size * m1 ** 2 / m2) if m2 > 0 else 0.0

    @property
    def condition_number(self) -> float:
        """Largest over smallest |eigenvalue| of the decompressed spectrum (``inf`` with an atom at 0).

        Its smallest eigenvalue is the extrapolated end of the spectrum: for kernel matrices it
        was off by 3-10x against the full eigendecomposition (a Matérn kernel, 4x decompressed);
        read it as an order of magnitude. A nugget (``shift``) bounds it exactly."""
        if self.table is not None:
            v = np.abs(self.table[0][self.table[1] > 0])
        else:
            v = np.abs(np.concatenate([self.quantiles([0.0, 1.0]), [loc for loc, _ in self.atoms]]))
        return float(v.max() / v.min()) if v.size and v.min() > 0 else float("inf")

    def top_eigenvalues(self, k: int = 10) -> np.ndarray:
        """The k largest eigenvalues of the size-``size`` matrix (descending), from the discrete
        table or the quantiles; in the kernel regime ``diagnostics["top_eigenvalues"]`` also
        gives their intervals."""
        from ..validate import check_count

        k = check_count(k, "k", 1, self.size, why=f" (the matrix has {self.size} eigenvalues)")
        if self.table is not None:
            v, w = self.table
            counts = np.maximum(np.round(w * self.size).astype(np.int64), 1)
            return np.repeat(v[::-1], counts[::-1])[:k]
        return self.quantiles(1.0 - (np.arange(k) + 0.5) / self.size)

    def logdet(self) -> tuple[int, float]:
        """(sign, log|det|) of the size-``size`` matrix: ``size * integral log|x| rho(x) dx``.

        For ``K (x) I_d`` (``kron_outputs = d``) it is the whole matrix's, ``d`` times K's, as
        :func:`bigspec.logdet` reports it. An atom at 0 gives ``-inf``. The sign counts the mass
        below 0. Errors at the lower edge are amplified by the log (Ameli et al. 2025,
        arXiv:2506.11994).

        Warns
        -----
        DecompressionWarning
            In the heavy-tailed regime, whose small eigenvalues are an extrapolation (a ReLU
            NTK's came out 12% off): :func:`bigspec.logdet` gives the exact value.
        """
        wide = self.diagnostics.get("held_out_scaled")
        if self.settings.get("regime") == "kernel" and self.alpha > 1 and (wide is None or wide > 0.1):
            import warnings

            from .free import DecompressionWarning

            warnings.warn(
                f"this kernel-regime spectrum's held-out error is {'unknown' if wide is None else f'{wide:.3g} decades'}"
                f": its log-determinant can be off by up to n ln(10) x that; logdet(method='spectrum') gives it with "
                f"an interval, bigspec.logdet the exact value", DecompressionWarning, stacklevel=2)
        if self.settings.get("regime") == "heavy-tailed" and self.alpha > 1:
            import warnings

            from .free import DecompressionWarning

            warnings.warn(
                "this spectrum was decompressed in the heavy-tailed regime, where the density of the small "
                "eigenvalues is an extrapolation: its log-determinant can be off by 10% or more (a ReLU NTK's was "
                "12% off); bigspec.logdet gives the exact value", DecompressionWarning, stacklevel=2)
        sign, value = self._logdet()
        d = self.kron_outputs
        return (sign ** d if sign else 0), d * value

    def _logdet(self) -> tuple[int, float]:
        if any(abs(loc) <= 1e-300 and mass > 0 for loc, mass in self.atoms):
            return 0, -np.inf
        if self.table is not None:
            v, w = self.table
            return (-1 if round(self.size * w[v < 0].sum()) % 2 else 1), self.size * float(np.sum(w * np.log(np.abs(v))))
        with np.errstate(divide="ignore"):
            logx = np.log(np.abs(self.x))
        ok = np.isfinite(logx)
        val = float(np.trapezoid((logx * self.density)[ok], self.x[ok]))
        val += sum(mass * np.log(abs(loc)) for loc, mass in self.atoms)
        neg = float(np.trapezoid(self.density[self.x < 0], self.x[self.x < 0])) if (self.x < 0).sum() > 1 else 0.0
        neg += sum(mass for loc, mass in self.atoms if loc < 0)
        sign = -1 if round(self.size * neg) % 2 else 1
        return sign, self.size * val

    # -- pictures ----------------------------------------------------------------------
    def plot(self, ax=None, log: bool = False, bins: int = 60):
        """Histogram of the sample eigenvalues and the decompressed density.

        ``log=True`` draws both as densities of log10(x) (for positive spectra spanning many
        decades, as kernel and NTK spectra do); atoms are marked with their mass.
        """
        from ..results import pyplot

        plt = pyplot()

        if ax is None:  # constrained layout keeps the labels inside the figure however it is saved
            _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
        ev = self.eigenvalues
        if log:
            pos = self.x > 0
            if ev is not None and np.any(ev > 0):
                ax.hist(np.log10(ev[ev > 0]), bins=bins, density=True, alpha=0.35,
                        label=f"sample ({self.sample_size} x {self.n_samples})")
            ax.plot(np.log10(self.x[pos]), self.density[pos] * self.x[pos] * np.log(10), lw=1.6,
                    label=f"decompressed to {self.size}")
            ax.set_xlabel("log10 eigenvalue")
        else:
            if ev is not None:
                ax.hist(ev, bins=bins, density=True, alpha=0.35, label=f"sample ({self.sample_size} x {self.n_samples})")
            ax.plot(self.x, self.density, lw=1.6, label=f"decompressed to {self.size}")
            ax.set_xlabel("eigenvalue")
        for loc, mass in self.atoms:
            ax.annotate(f"atom {mass:.3f} at {loc:.3g}", xy=(0.02, 0.92), xycoords="axes fraction", fontsize=8)
        ax.set_ylabel("density of log10 eigenvalue" if log else "density")
        ax.legend(fontsize=8)
        return ax
