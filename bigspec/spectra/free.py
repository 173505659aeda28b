"""Free decompression: the spectral density of a large matrix from the eigenvalues of a small one.

Steps (Ameli et al. 2025, arXiv:2506.11994), each with a closed form where one exists:

1. an atom of the sample (exact zeros of a rank-deficient matrix) is split off;
2. the continuous part is a damped Chebyshev-U series on its support
   (:mod:`bigspec.spectra.chebyshev`), so its Stieltjes transform m_I and its Hilbert
   transform are exact;
3. the glue G = m_I + m_II, analytic across the support, is fitted on the support by
   ``c [+ D z] [+ r / (z - a)]`` with a real pole outside it (variable projection; the
   simplest model within 3x of the best residual, its parameters fitted to the undamped
   series; for a positive semidefinite sample a left pole is fixed at the rank boundary 0
   where the data allow); the secondary branch is ``m_II(z) = G(z) - conj(m_I(conj z))``
   below the real axis. A sample atom is a pole of m_I only, so its pole in the glue of the
   continuous part is known and not fitted;
4. for every grid point x the characteristic equation ``z0 + (1 - alpha) / m(z0) = x + i delta``
   is solved by Newton with the analytic derivative, continued in alpha from 1 (where
   z0 = x) with warm starts, and the density is ``Im m(z0) / (alpha pi)``;
5. an atom of the large matrix sits at each real pole p of m_II with residue r where
   ``(alpha - 1 - r) / alpha > 0``: that is its mass (rank is preserved: an atom of mass a
   at size n_s has mass ``1 - (1 - a) / alpha`` at size n).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from ..errors import ArgumentError, BigspecError, BigspecWarning, arg
from .chebyshev import DAMPING, ChebyshevDensity
from ..validate import check_count

# -- the glue function ------------------------------------------------------------------


class Glue:
    """``G(z) = c + D z + sum_j r_j / (z - a_j)``: the rational continuation of the cut."""

    def __init__(self, c, D, poles, residues, rms):
        self.c, self.D = float(c), float(D)
        self.poles = np.asarray(poles, float)
        self.residues = np.asarray(residues, float)
        self.rms = float(rms)

    def __call__(self, z, derivative=False):
        z = np.asarray(z, dtype=complex)
        g = self.c + self.D * z
        dg = np.full_like(z, self.D)
        for a, r in zip(self.poles, self.residues):
            g = g + r / (z - a)
            dg = dg - r / (z - a) ** 2
        return (g, dg) if derivative else g

    def to_dict(self):
        return {"c": self.c, "D": self.D, "poles": self.poles.tolist(),
                "residues": self.residues.tolist(), "rms": self.rms}


def _design(x, poles, linear):
    cols = [np.ones_like(x)] + ([x] if linear else []) + [1 / (x - a) for a in poles]
    return np.column_stack(cols)


def fit_glue(rho: ChebyshevDensity, side: int, linear: bool, n_points: int = 300,
             interior: float = 0.97, weight_power: float = 1.0, known=None, pole=None) -> Glue:
    """Fit G = 2H on the support: ``c [+ D z] [+ r / (z - a)]`` (plus ``known(x)`` if given).

    ``side`` is 0 (no pole), -1 (a pole left of the support) or +1 (right); ``pole`` fixes
    its position instead of fitting it. Residuals are
    weighted by ``(1 - t^2)^weight_power``: near the edges the sample's density is least
    certain (powers 0, 0.5, 1, 2, 3 were compared over 7 samples each of MP(1/50) at 8x and
    32x, GOE at 8x and 32x, and MP(0.5) at 4x; power 1 gave the lowest mean L1 on every case).
    """
    from scipy.optimize import least_squares  # here, not at import: scipy.optimize costs ~0.5 s

    lo, hi, h = rho.lo, rho.hi, rho.span / 2
    t = np.cos((np.arange(n_points) + 0.5) * np.pi / n_points) * interior
    x = (lo + hi) / 2 + h * t
    y = 2 * rho.hilbert(x) - (known(x) if known is not None else 0.0)
    weights = (1 - t * t) ** weight_power

    def solve(poles):
        A = _design(x, poles, linear)
        coef, *_ = np.linalg.lstsq(A * weights[:, None], y * weights, rcond=None)
        return coef, (y - A @ coef) * weights

    poles = [] if pole is None else [float(pole)]
    if side and pole is None:
        # pole at distance h e^s from the near edge, at least 2% of the half-span away
        def pole(s):
            return lo - h * np.exp(s[0]) if side < 0 else hi + h * np.exp(s[0])
        grid = np.linspace(np.log(0.02), np.log(50.0), 40)
        s0 = grid[np.argmin([np.sum(solve([pole([g])])[1] ** 2) for g in grid])]
        fit = least_squares(lambda s: solve([pole(s)])[1], [s0], bounds=(np.log(0.02), np.log(1e4)))
        poles = [pole(fit.x)]
    coef, res = solve(poles)
    c, D = coef[0], (coef[1] if linear else 0.0)
    return Glue(c, D, poles, coef[2 if linear else 1:], np.sqrt(np.mean(res ** 2)))


GLUE_MODELS = {  # name: (pole side, linear term)
    "constant": (0, False),  # e.g. the continuous part of a rank-deficient MP sample, past its known pole
    "linear": (0, True),
    "pole-left": (-1, False),
    "pole-right": (1, False),
    "linear+pole-left": (-1, True),
    "linear+pole-right": (1, True),
}


GLUE_TOLERANCE = 3.0  # see choose_glue
POLE_AT_0_TOLERANCE = 1.3
POLE_AT_0_DISTANCE = 0.15


def choose_glue(rho: ChebyshevDensity, models="auto", known=None, psd=False,
                fit_to: ChebyshevDensity | None = None) -> tuple[str, Glue, dict]:
    """Fit the candidate glue models and pick the simplest that fits (see below).

    ``psd``: the sample is positive semidefinite, so a pole left of it may be the rank
    boundary at exactly 0 (see ``pole-at-0``). ``fit_to``: the series whose Hilbert transform
    the chosen model's parameters are fitted to (default ``rho``). The model is chosen on the
    damped ``rho``, whose smooth Hilbert transform makes residual ratios measure misfit; its
    parameters are best fitted to the undamped series: Jackson damping shrinks the low
    coefficients by 1 - g_k (1.5% for k = 1 at K = 16), which on a perfect MP(1/50) sample
    moves the pole by 0.013 and costs L1 0.017 at 32x, while a 2-3 parameter fit averages the
    undamped series' ringing out.
    """
    names = ["constant", "linear", "pole-left", "pole-right"] if models == "auto" else \
        ["pole-left"] if models == "pole-at-0" else [models]
    for name in names:
        if name not in GLUE_MODELS:
            raise ValueError(f"unknown glue model {name!r}; use 'auto', 'pole-at-0' or one of {sorted(GLUE_MODELS)}")
    fits = {name: fit_glue(rho, *GLUE_MODELS[name], known=known) for name in names}
    best = min(g.rms for g in fits.values())
    # the simplest model (fewest parameters) within a factor 3 of the best residual: the glue is
    # an extrapolation, and extra parameters fitted to noise on the support extrapolate badly.
    # On 140 GOE samples of 300 and 1000 rows a (spurious) pole cut the linear fit's residual by
    # at most 1.8x; on 40 Marchenko-Pastur samples (ratio 0.005, 0.02), where the pole is real,
    # by 7.6-35x.
    n_params = {name: 1 + GLUE_MODELS[name][1] + 2 * bool(GLUE_MODELS[name][0]) for name in names}
    chosen = next(name for name in sorted(names, key=lambda k: n_params[k]) if fits[name].rms <= GLUE_TOLERANCE * best)
    if models == "pole-at-0" or (models == "auto" and psd and chosen == "pole-left" and rho.lo > 0):
        # Marchenko-Pastur's glue is c + r / z: for a Gram or covariance matrix the pole sits at
        # the rank boundary, exactly 0, and a free fit only finds it to +-6% of its distance from
        # the support (1000-row MP(1/50) samples), which sets most of the error at 32x. So it is
        # fixed at 0 where the unbiased (undamped) fit puts it within 15% of that distance (at
        # most 6% on MP(1/50) and 4% on MP(0.5) samples; 17-25% for MP(1/50) shifted by 0.2)
        # at under 30% cost in residual.
        base = fit_to or rho
        free = fits["pole-left"] if base is rho else fit_glue(base, -1, False, known=known)
        at0 = fit_glue(base, -1, False, known=known, pole=0.0)
        fits["pole-at-0"] = at0
        if models == "pole-at-0" or (abs(free.poles[0]) <= POLE_AT_0_DISTANCE * rho.lo
                                     and at0.rms <= POLE_AT_0_TOLERANCE * free.rms):
            chosen = "pole-at-0"
    rms = {name: fit.rms for name, fit in fits.items()}  # pole-at-0's on the undamped series
    if chosen == "pole-at-0" or fit_to is None:
        return chosen, fits[chosen], rms
    return chosen, fit_glue(fit_to, *GLUE_MODELS[chosen], known=known), rms


# -- the two sheets -----------------------------------------------------------------------


class Sheets:
    """m on the principal sheet above the real axis and the secondary sheet below it.

    A sample atom of mass a at p is a pole of m_I only: m_II is regular there (the rank of
    the matrix lives on the principal sheet; for Marchenko-Pastur with ratio > 1 this is
    exact). So the glue of the continuous part carries the known pole ``(a / w) / (z - p)``,
    which the fit takes as given (``atom_pole``), and below the axis the atom term and that
    pole cancel: m_II = w (G_free - conj m_c(conj z)).
    """

    def __init__(self, rho: ChebyshevDensity, glue: Glue, atom=None):
        self.rho, self.glue = rho, glue
        self.atom = atom  # (location, mass) or None
        self.weight = 1.0 - (atom[1] if atom else 0.0)

    def __call__(self, z):
        """(m, dm/dz) on m_II: the principal sheet for Im z >= 0, the continuation below."""
        z = np.asarray(z, dtype=complex)
        below = z.imag < 0
        # one evaluation serves both: below the axis m_II needs m_I at conj(z)
        mc, dmc = self.rho.stieltjes(np.where(below, np.conj(z), z), derivative=True)
        m = np.where(below, -np.conj(mc), mc)
        dm = np.where(below, -np.conj(dmc), dmc)
        if np.any(below):
            g, dg = self.glue(z[below], derivative=True)
            m[below] += g
            dm[below] += dg
        m, dm = self.weight * m, self.weight * dm
        if self.atom:
            loc, mass = self.atom
            above = ~below
            m[above] += mass / (loc - z[above])
            dm[above] += mass / (loc - z[above]) ** 2
        return m, dm

    @staticmethod
    def atom_pole(atom):
        """The glue's pole at the sample's atom ``(loc, mass)``, fixed by it (None without one)."""
        if not atom:
            return None
        loc, mass = atom
        r = mass / (1.0 - mass)
        return lambda x: r / (np.asarray(x) - loc)

    def atoms_after(self, alpha: float) -> list[tuple[float, float]]:
        """Candidate atoms of the decompressed law.

        The sample's own atom keeps its rank: mass ``1 - (1 - a) / alpha`` (its path crosses
        the real axis at the atom, on the principal sheet). A real pole p of the glue with
        residue r gives mass ``(alpha - 1 - r) / alpha`` where that is positive; poles near
        the sample's atom belong to it and are skipped.
        """
        atoms = []
        if self.atom:
            loc, mass = self.atom
            atoms.append((loc, 1 - (1 - mass) / alpha))
        for p, r in zip(self.glue.poles, self.glue.residues):
            if self.atom and abs(p - self.atom[0]) < 0.05 * self.rho.span:
                continue
            mass = (alpha - 1 - self.weight * r) / alpha
            if mass > 1e-12:
                atoms.append((float(p), float(mass)))
        return atoms


# -- characteristics --------------------------------------------------------------------


def solve_characteristics(sheets: Sheets, x, alpha: float, delta: float, steps: int = 12,
                          newton: int = 16, tol: float = 1e-11):
    """Solve ``z0 + (1 - alpha)/m(z0) = x + i delta`` for every x; return (m(z0)/alpha, residual, converged)."""
    if alpha == 1:
        m, _ = sheets(np.asarray(x, float) + 1j * delta)
        return m, np.zeros(len(x)), np.ones(len(x), bool)
    scale = max(sheets.rho.span, 1e-300)

    # homotopy: grow alpha at a height delta_0 above the axis (no square-root bifurcations
    # where the support's edges sweep past x), then lower the height to delta
    delta_0 = max(0.02 * scale, delta)
    path = [(a, delta_0) for a in np.geomspace(1.0, alpha, steps + 1)[1:]]
    path += [(alpha, d) for d in np.geomspace(delta_0, delta, steps // 2 + 1)[1:]]
    x = np.asarray(x, float)
    z0 = x + 1j * delta_0
    for a, d in path:
        target = x + 1j * d
        m, dm = sheets(z0)
        F = z0 + (1 - a) / m - target
        active = np.ones(len(z0), bool)
        for _ in range(newton):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            step = F[idx] / (1 - (1 - a) * dm[idx] / (m[idx] * m[idx]))
            lam = np.ones(idx.size)
            for _ in range(5):  # backtrack where a full step does not lower |F|
                trial = z0[idx] - lam * step
                mt, dmt = sheets(trial)
                Ft = trial + (1 - a) / mt - target[idx]
                worse = ~(np.abs(Ft) <= np.abs(F[idx])) & (lam > 0.05)
                if not worse.any():
                    break
                lam = np.where(worse, lam / 2, lam)
            z0[idx], m[idx], dm[idx], F[idx] = trial, mt, dmt, Ft
            active[idx] = np.abs(lam * step) > tol * scale
    residual = np.abs(z0 + (1 - alpha) / m - (x + 1j * delta)) / scale
    return m / alpha, residual, residual < 1e-8


# -- the public entry -------------------------------------------------------------------


def _pool(eigenvalues, sample_size):
    """Validate and pool eigenvalues: 1-D (one sample) or a list / 2-D array of samples."""
    if isinstance(eigenvalues, (list, tuple)) and eigenvalues and np.ndim(eigenvalues[0]) == 1:
        samples = [np.asarray(e) for e in eigenvalues]
    else:
        arr = np.asarray(eigenvalues)
        if arr.ndim == 2 and arr.size == 0:
            raise InvalidSpectrumError(f"eigenvalues must be non-empty, got shape {arr.shape}")
        if arr.ndim == 2 and arr.shape[0] == arr.shape[1] > 1 and arr.dtype.kind in "biuf" and \
                np.array_equal(arr, arr.T):
            raise InvalidSpectrumError(
                f"eigenvalues has shape {arr.shape} and is symmetric: that looks like the matrix itself, not its "
                f"eigenvalues; pass numpy.linalg.eigvalsh(A) (or bigspec.spectrum(A) to sample it); several "
                f"samples are rows (n_samples, sample_size) of eigenvalues")
        samples = list(arr) if arr.ndim == 2 else [arr]
    for e in samples:
        if e.dtype.kind not in "biufc":
            raise InvalidSpectrumError(f"eigenvalues must be numbers, got dtype {e.dtype}")
        if e.ndim != 1 or e.size < 1:
            raise InvalidSpectrumError(f"eigenvalues must be non-empty 1-D arrays, got shape {e.shape}")
        if np.iscomplexobj(e):
            if np.any(e.imag != 0):
                raise InvalidSpectrumError(
                    "eigenvalues are complex; free decompression needs the real eigenvalues of a symmetric "
                    "matrix: use numpy.linalg.eigvalsh, not eig")
        if not np.all(np.isfinite(e)):
            raise InvalidSpectrumError(
                f"eigenvalues hold {int(np.sum(~np.isfinite(e)))} NaN or infinite value(s); "
                "check the sampled matrix for NaN/inf entries")
    pooled = np.concatenate([np.real(e).astype(float) for e in samples])
    if sample_size is None:
        sizes = sorted({e.size for e in samples})
        if len(sizes) > 1:
            raise InvalidSpectrumError(
                f"the samples have different sizes ({', '.join(map(str, sizes))} eigenvalues): free decompression "
                f"scales by size / sample_size, so pass sample_size= (the rows of each submatrix) or samples of "
                f"one size")
        sample_size = sizes[0]
    return pooled, _integer(sample_size, "sample_size", 1), len(samples)


def _check_options(damping, regime, glue, shift, scale, degree, grid, delta, atom_tol, support):
    """Every option of :func:`free_decompress`, checked before any work (ArgumentError / ArgumentTypeError)."""
    from ..validate import check_number, check_scale

    if damping not in DAMPING:
        raise ArgumentError(f"unknown damping {damping!r}; use one of {sorted(DAMPING)}")
    if regime == "kernel":
        raise ArgumentError("regime='kernel' needs the eigenvalues of nested sub-blocks of each sample, which "
                            "bigspec.spectrum computes; free_decompress takes eigenvalues only: use 'auto', 'bulk' "
                            "or 'heavy-tailed'")
    if regime not in ("auto", "bulk", "heavy-tailed"):
        raise ArgumentError(f"unknown {arg('regime')} {regime!r}; use 'auto', 'bulk' or 'heavy-tailed'")
    if glue != "auto" and glue != "pole-at-0" and glue not in GLUE_MODELS:
        raise ArgumentError(f"unknown glue model {glue!r}; use 'auto', 'pole-at-0' or one of {sorted(GLUE_MODELS)}")
    shift, scale = check_number(shift, "shift"), check_scale(scale)
    if degree is not None:
        degree = check_count(degree, "degree", 2)
    if np.ndim(grid) == 0:
        grid = check_count(grid, "grid", 3)
    else:
        grid = np.asarray(grid)
        if grid.ndim != 1 or grid.size < 3 or grid.dtype.kind not in "iuf" or not np.isfinite(grid).all():
            raise ArgumentError(f"grid must be a number of points (>= 3) or a 1-D array of at least 3 finite "
                                f"values, got shape {grid.shape} of {grid.dtype}")
    delta = check_number(delta, "delta")
    if not delta > 0:
        raise ArgumentError(f"delta must be positive (the height above the real axis, relative to the span), got "
                            f"{delta}")
    atom_tol = check_number(atom_tol, "atom_tol")
    if not 0 <= atom_tol < 1:
        raise ArgumentError(f"atom_tol must be in [0, 1) (relative to max|x|), got {atom_tol}")
    if support is not None:
        try:
            lo, hi = (check_number(v, "support") for v in support)
        except (TypeError, ValueError):
            raise ArgumentError(f"support must be (lo, hi), two finite numbers, got {support!r}") from None
        if not hi > lo:
            raise ArgumentError(f"support must be (lo, hi) with lo < hi, got {support!r}")
        support = (lo, hi)
    return shift, scale, degree, grid, delta, atom_tol, support


def _integer(value, name, minimum):
    """A count argument: an integer (or integral float) >= minimum, else InvalidSpectrumError."""
    try:
        as_int = int(value)
        exact = as_int == value
    except (TypeError, ValueError):
        exact = False
    if not exact or isinstance(value, bool):
        raise InvalidSpectrumError(f"{name} must be an integer, got {value!r}")
    if as_int < minimum:
        raise InvalidSpectrumError(f"{name} must be >= {minimum}, got {as_int}")
    return as_int


def free_decompress(eigenvalues, size, *, sample_size=None, support=None, degree=None, damping="jackson",
                    glue="auto", grid=500, delta=1e-9, atom_tol=1e-9, regime="auto", shift=0.0, scale=1.0,
                    seed=None, source=None):
    """The eigenvalue density of the size-``size`` matrix from eigenvalues of its principal submatrices.

    Parameters
    ----------
    eigenvalues : array or list of arrays
        Eigenvalues of one random principal submatrix, or of several of equal size (pooled
        into one fit; the base size stays ``sample_size``).
    size : int
        The size n of the large matrix (``size == sample_size`` returns the sample's density).
    sample_size : int, optional
        The size n_s of each submatrix (default: the length of each eigenvalue array).
    support : (lo, hi), optional
        Support of the sample's continuous spectrum, in the result's coordinates (``scale``
        and ``shift`` applied); default: the range of the eigenvalues above the floor,
        widened by span / (number of eigenvalues).
    degree : int, optional
        Chebyshev degree K of the sample density (default ``clip(N^(1/2) / 2, 16, 60)`` for N
        pooled eigenvalues).
    damping : {"jackson", "fejer", "lanczos", "none"}
        Damping of the Chebyshev series (Jackson keeps it positive).
    glue : {"auto", "constant", "linear", "pole-left", "pole-right", "pole-at-0", "linear+pole-left", "linear+pole-right"}
        Rational model of the glue function that continues the Stieltjes transform through
        the support. ``"auto"`` takes the simplest of constant / linear / pole-left / pole-right within
        3x of the best residual, and for a positive semidefinite sample fixes a left pole at 0
        when that costs under 30% in residual (see :func:`choose_glue`).
    grid : int or array
        Number of grid points on the decompressed support, or the grid itself (in the
        result's coordinates).
    delta : float
        Height above the real axis of the evaluation points, relative to the span.
    regime : {"auto", "bulk", "heavy-tailed"}
        ``"bulk"``: the full free decompression above. ``"heavy-tailed"``: its large-alpha
        form for positive spectra dominated by their large eigenvalues (kernels, NTKs): the
        k-th largest eigenvalue scales by alpha (rank order is kept), the eigenvalues beyond
        rank n_s follow a power law fitted to the sample's decay (or are 0 where the sample
        is rank deficient), and the ranks from n_s / 8 down are rescaled so that the trace is
        exact. ``"auto"`` picks heavy-tailed for positive spectra (above their floor) whose
        largest eigenvalue exceeds 20 times the mean of the nonzero ones, or that have fewer
        than 2 eigenvalues above the floor. Either way a spectrum whose eigenvalues are all
        equal (``c I`` up to rounding) is a point mass at c (regime ``"point-mass"``).
        ``settings["regime"]`` and ``diagnostics["regime_reason"]`` record the choice.
    atom_tol : float
        Eigenvalues within ``atom_tol * max|x|`` of the smallest form an atom there, the floor,
        when they are at least 1% of the sample: the zero eigenvalues of a rank-deficient
        matrix, or the ridge s of ``K + s I``. A shift is exact under free decompression,
        so the spectrum above the floor is decompressed and the floor added back; the atom
        keeps its rank (mass ``1 - (1 - a) / alpha`` for mass a in the sample).
        ``settings["floor"]`` records it (0.0 without one).
    shift, scale : float
        The result is the law of ``scale * A + shift * I``: the eigenvalues are multiplied by
        ``scale`` before the decompression and ``shift`` is added to the result (both are
        exact under free decompression).

    Returns
    -------
    SpectrumResult
        Its mean is the pooled sample mean (``trace`` is exactly ``size`` times that): to
        rounding in the point-mass and heavy-tailed regimes, checked in the bulk regime (a
        ``DecompressionWarning`` where it is off by over 1% of the spread). Its ``x``,
        ``support``, ``atoms`` and ``table`` include the floor and ``shift``; the fit's own
        diagnostics (the glue's poles) are those of ``scale * eigenvalues - floor``.

    Notes
    -----
    Reliable for bulk spectra with a connected support and square-root (or hard) edges,
    decompressed by up to ~32x: Marchenko-Pastur and Wigner laws are recovered to
    Wasserstein-1 well below 1% of the spread. Not reliable: spectra spanning many decades
    (kernel and NTK matrices), where the linear-scale fit cannot resolve the mass near 0 and
    the large eigenvalues are too few to fit; read such densities on a log scale as a trend,
    and check ``diagnostics["warnings"]``.

    Examples
    --------
    >>> import bigspec
    >>> from bigspec.spectra.laws import Wigner
    >>> eig = Wigner(1.0).eigenvalues(1000, seed=0)
    >>> r = bigspec.free_decompress(eig, size=8000)
    >>> round(r.variance / 8, 1), round(r.support[1] / (2 * 8 ** 0.5), 1)   # semicircle, radius 2 sqrt(8)
    (1.0, 1.0)
    >>> bigspec.free_decompress([2.0] * 100, size=800).atoms   # 2 I stays 2 I
    [(2.0, 1.0)]
    """
    t_start = time.perf_counter()
    pooled, n_s, n_samples = _pool(eigenvalues, sample_size)
    size = _integer(size, "size", 1)
    if size < n_s:
        raise InvalidSpectrumError(
            f"size={size} is smaller than the sample size {n_s}: free decompression only grows a spectrum; "
            f"pass size >= {n_s} (the size of the full matrix)")
    if n_s < 2 and size != n_s:
        raise InvalidSpectrumError(
            f"a sample of {n_s} eigenvalue(s) per submatrix cannot be decompressed to size {size}: sample "
            f"submatrices of at least 2 rows (only a 1 x 1 matrix is its own 1-row sample)")
    shift, scale, degree, grid, delta, atom_tol, support = _check_options(
        damping, regime, glue, shift, scale, degree, grid, delta, atom_tol, support)
    alpha = size / n_s
    pooled = scale * pooled
    mean = float(np.mean(pooled))
    top = float(np.max(np.abs(pooled)))

    cluster = pooled - pooled.min() <= atom_tol * top
    floor, cont = 0.0, pooled
    if cluster.all():  # c I up to rounding: every principal submatrix, and the matrix, is c I
        floor, regime, reason = mean, "point-mass", "all eigenvalues are equal to within atom_tol"
    elif cluster.mean() >= 0.01 and cluster.sum() >= 2:   # one eigenvalue is not an atom, however small the sample
        floor = float(pooled.min()) if abs(pooled.min()) > atom_tol * top else 0.0
        # what is left of the atom is rounding, or eigenvalues below the resolution
        cont = np.where(cluster, 0.0, pooled - floor)
    if regime == "auto":
        regime, reason = _choose_regime(cont, atom_tol)
    elif regime != "point-mass":
        reason = f"regime={regime!r} requested"
    offset = floor + shift
    if regime == "point-mass":
        fit = {"x": np.zeros(1), "density": np.zeros(1), "support": (0.0, 0.0), "atoms": [(0.0, 1.0)],
               "table": (np.zeros(1), np.ones(1)), "settings": {}, "diagnostics": {"warnings": []}}
    elif regime == "heavy-tailed":
        fit = _heavy_tailed(cont, mean - floor, n_s, n_samples, size, grid)
    else:
        fit = _bulk(cont, mean - floor, alpha, None if support is None else np.subtract(support, offset), degree,
                    damping, glue, grid if np.ndim(grid) == 0 else np.asarray(grid, float) - offset, delta, atom_tol)
    for w in fit["diagnostics"]["warnings"]:
        warnings.warn(w, DecompressionWarning, stacklevel=2)

    from .result import SpectrumResult

    settings = {"regime": regime, **fit["settings"], "floor": floor, "shift": shift, "scale": scale,
                "atom_tol": atom_tol}
    if "support" in settings:  # like the option, in the result's coordinates
        settings["support"] = [float(s + offset) for s in settings["support"]]
    table = fit.get("table")
    return SpectrumResult(
        x=fit["x"] + offset, density=fit["density"], support=tuple(float(s + offset) for s in fit["support"]),
        atoms=[(float(p + offset), float(m)) for p, m in fit["atoms"]],
        size=size, sample_size=n_s, n_samples=n_samples, alpha=alpha, seed=seed, source=source,
        settings=settings, diagnostics={"regime_reason": reason, "sample_mean": mean + shift, **fit["diagnostics"]},
        seconds=time.perf_counter() - t_start, eigenvalues=pooled + shift,
        table=None if table is None else (table[0] + offset, table[1]),
    )


def _choose_regime(cont, atom_tol):
    """``regime="auto"`` for the spectrum above the floor: (regime, reason)."""
    if np.count_nonzero(cont) < 2:
        return "heavy-tailed", "fewer than 2 eigenvalues above the floor (a low-rank spectrum)"
    ratio = _top_over_mean(cont, atom_tol)
    if ratio is None:
        return "bulk", "not a positive spectrum"
    heavy = ratio > HEAVY_TAILED_RATIO
    than = ">" if heavy else "<="
    reason = f"largest eigenvalue {ratio:.3g} x the mean of the nonzero ones ({than} {HEAVY_TAILED_RATIO:g})"
    return ("heavy-tailed" if heavy else "bulk"), reason


def _bulk(cont, mean, alpha, support, degree, damping, glue, grid, delta, atom_tol):
    """The full free decompression of ``cont`` (mean ``mean``): the fields of the result."""
    warn = []
    # 1. an atom at 0 (exact zeros of a rank-deficient matrix)
    top = float(np.max(np.abs(cont)))
    zero = np.abs(cont) <= atom_tol * top
    atom = None
    if zero.mean() >= 0.01 and zero.sum() >= 2:
        atom = (0.0, float(zero.mean()))
    spread = math.sqrt(alpha * float(np.var(cont)))  # the second free cumulant scales by alpha
    cont = cont[~zero] if atom else cont
    if cont.size < 2 or np.ptp(cont) <= atom_tol * top:
        raise InvalidSpectrumError(
            "the sample's eigenvalues are point masses only (a floor, or 0, and one value above it): free "
            "decompression grows a continuous part, and how point masses spread in a larger matrix depends on "
            "its eigenvectors, which the eigenvalues do not show; sample larger submatrices, or pass "
            "regime='heavy-tailed' if the matrix is a low-rank kernel whose top eigenvalues grow with n")

    # 2. the sample's continuous density
    if support is None:
        lo, hi = float(cont.min()), float(cont.max())
        pad = (hi - lo) / cont.size
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = map(float, support)
        if not hi > lo:
            raise ValueError(f"support must be (lo, hi) with lo < hi, got {support!r}")
    if degree is None:
        degree = int(np.clip(np.sqrt(cont.size) / 2, 16, 60))
    raw = ChebyshevDensity.from_samples(cont, lo, hi, int(degree), "none")
    rho = ChebyshevDensity(lo, hi, raw.coef * DAMPING[damping](int(degree)))
    if cont.min() > 0 and cont.max() / cont.min() > 1e3:
        warn.append("the spectrum spans more than 3 decades: the density near the lower edge is not resolved on "
                    "a linear scale; trust the large eigenvalues and the moments, or use regime='heavy-tailed'")
    if alpha > 64:
        warn.append(f"alpha = {alpha:.3g} > 64: errors grow polynomially with n / n_s; sample larger submatrices")

    # 3. glue and sheets
    glue_name, g, glue_rms = choose_glue(rho, glue, known=Sheets.atom_pole(atom), psd=cont.min() >= -1e-9 * top,
                                       fit_to=raw)
    sheets = Sheets(rho, g, atom)

    # 4. a coarse pass finds the new support, then the fine grid
    if np.ndim(grid) == 0:
        m_lo, m_hi = (sheets.weight * rho.stieltjes(np.array([lo - 1e-9 * rho.span, hi + 1e-9 * rho.span]) + 0j)).real
        c_mean, var = float(np.mean(cont)), float(np.var(cont))
        a = min(lo - (alpha - 1) / m_lo if m_lo > 0 else lo, c_mean - 3 * np.sqrt(alpha * var), lo)
        b = max(hi - (alpha - 1) / m_hi if m_hi < 0 else hi, c_mean + 3 * np.sqrt(alpha * var), hi)
        coarse = np.linspace(a, b, 240)
        mc, _, ok = solve_characteristics(sheets, coarse, alpha, delta * rho.span)
        dc = np.where(ok, mc.imag / np.pi - _lorentzians(coarse, sheets.atoms_after(alpha), delta * rho.span), 0.0)
        pos = np.flatnonzero(dc > 1e-5 * dc.max())
        h = coarse[1] - coarse[0]
        a, b = coarse[max(pos[0] - 1, 0)] - h, coarse[min(pos[-1] + 1, coarse.size - 1)] + h
        x = np.linspace(a, b, int(grid))
    else:
        x = np.sort(np.asarray(grid, float))
    m, residual, converged = solve_characteristics(sheets, x, alpha, delta * rho.span)
    density = np.maximum(m.imag / np.pi, 0.0)
    if not converged.all():
        warn.append(f"the characteristic equation did not converge at {int((~converged).sum())} of {x.size} "
                    "grid points (their density is set to 0)")
        density[~converged] = 0.0

    # 5. atoms, checked on the physical branch: eps * Im m(p + i eps) -> the atom's mass
    atoms = []
    for p, mass in sheets.atoms_after(alpha):
        eps = 1e-7 * rho.span
        mp, _, ok = solve_characteristics(sheets, np.array([p]), alpha, eps)
        if (sheets.atom and p == sheets.atom[0]) or (ok[0] and eps * mp.imag[0] > 0.5 * mass):
            atoms.append((p, mass))
    # an atom's own Lorentzian tail (width delta) is not continuous density
    density = np.maximum(density - _lorentzians(x, atoms, delta * rho.span), 0.0)
    # a positive semidefinite sample loses rank at exactly 0: a pole fitted within 5% of the
    # span from 0 is that rank deficiency, and its offset is fit noise
    if cont.min() >= -1e-9 * top:
        atoms = [(0.0 if abs(p) < 0.05 * rho.span else p, mass) for p, mass in atoms]
    atom_mass = sum(m_ for _, m_ in atoms)
    raw_mass = float(np.trapezoid(density, x))
    if raw_mass > 0:
        density = density * ((1 - atom_mass) / raw_mass)
    if not abs(raw_mass - (1 - atom_mass)) < 0.05:
        warn.append(f"the continuous density has mass {raw_mass:.3f}, expected {1 - atom_mass:.3f}: "
                    "the decompression is unreliable here (the density was rescaled to that mass)")
    # the mean is preserved by free decompression: a drift measures the error of the fit
    fit_mean = float(np.trapezoid(x * density, x)) + sum(p * m_ for p, m_ in atoms)
    mean_error = (fit_mean - mean) / spread
    if not abs(mean_error) <= 0.01:
        warn.append(f"the density's mean is off the sample mean by {fit_mean - mean:+.4g}, {mean_error:+.3g} x the "
                    f"spread {spread:.4g}: the decompression is unreliable here (``trace`` is still exact)")

    if cont.min() >= -1e-9 * top:
        # principal submatrices of a positive semidefinite matrix are too; their
        # decompression should stay at or above their lower edge
        neg = x < -1e-6 * rho.span
        below = float(np.trapezoid(density[neg], x[neg])) if neg.sum() > 1 else 0.0
        below += sum(m_ for p, m_ in atoms if p < -1e-6 * rho.span)
        if below > 0.01:
            lowest = float(x[np.argmax(density > 1e-3 * density.max())]) if density.max() > 0 else float(x[0])
            warn.append(f"the sample is positive semidefinite (above its floor) but the decompressed density puts "
                        f"{below:.1%} of its mass below that edge (down to {lowest:.4g} from it): the decompression "
                        f"is unreliable here; sample larger submatrices, or more of them (n_samples)")
    nz = density > 1e-3 * density.max() if density.max() > 0 else density > 0
    return {
        "x": x, "density": density,
        "support": (float(x[nz][0]), float(x[nz][-1])) if nz.any() else (float(x[0]), float(x[-1])),
        "atoms": atoms,
        "settings": {"support": [lo, hi], "degree": int(degree), "damping": damping, "glue": glue_name,
                     "grid": int(x.size), "delta": delta},
        "diagnostics": {"glue": g.to_dict(), "glue_rms_by_model": glue_rms,
                        "glue_rms_relative": g.rms / max(float(np.max(np.abs(2 * rho.hilbert(x[(x > lo) & (x < hi)])),
                                                                    initial=1e-300)), 1e-300),
                        "converged_fraction": float(converged.mean()), "max_residual": float(residual.max()),
                        "continuous_mass": raw_mass, "mean_error": mean_error,
                        "sample_atom": list(atom) if atom else None, "warnings": warn},
    }


def _lorentzians(x, atoms, height):
    """What atoms of mass w at p add to Im m(x + i height) / pi: w height / (pi ((x - p)^2 + height^2))."""
    out = np.zeros(np.shape(x))
    for p, w in atoms:
        out += w * height / (np.pi * ((np.asarray(x) - p) ** 2 + height ** 2))
    return out


HEAVY_TAILED_RATIO = 20.0  # see is_heavy_tailed


def _top_over_mean(eigenvalues, atom_tol):
    """Largest eigenvalue over the mean of the nonzero ones; None unless positive up to rounding."""
    top = float(np.max(eigenvalues))
    if top <= 0 or np.min(eigenvalues) < -1e-6 * top:
        return None
    return top / float(np.mean(eigenvalues[np.abs(eigenvalues) > atom_tol * top]))


def is_heavy_tailed(eigenvalues, atom_tol=1e-9) -> bool:
    """Positive (up to rounding) with the largest eigenvalue over 20 times the mean of the nonzero ones.

    Bulk laws stay far below: Marchenko-Pastur has max / mean = (1 + sqrt(ratio))^2 <= 4
    for ratio <= 1 (and about the same on its nonzero part above 1).
    """
    ratio = _top_over_mean(eigenvalues, atom_tol)
    return ratio is not None and ratio > HEAVY_TAILED_RATIO


def _heavy_tailed(pooled, mean, n_s, n_samples, size, grid):
    """Large-alpha free decompression: rank order kept, each of the top eigenvalues times alpha.

    With several samples, sample j's k-th eigenvalue stands for rank k, so each sorted
    eigenvalue gets mass 1 / (n_samples * size). Ranks n_s+1..size follow a power law
    lambda_k = C k^-g fitted on the sample's ranks n_s/8..0.9 n_s (never above the
    smallest sampled eigenvalue), evaluated at up to 4096 representative ranks; they are 0
    where at least 1% of the sample is (rank is preserved). The scaled sample alone already
    has the sample's mean, so the ranks from n_s/8 down, the tail included, are rescaled to
    make the mean ``mean`` (the trace n times it) exactly.
    """
    alpha = size / n_s
    lam = np.sort(np.maximum(pooled, 0.0))[::-1]
    k = (np.arange(lam.size) + 0.5) / n_samples + 0.5  # rank at the original sample size
    values = [alpha * lam]
    weights = [np.full(lam.size, 1.0 / (n_samples * size))]
    fit = {}
    if size > n_s:
        sel = (k > n_s / 8) & (k < 0.9 * n_s) & (lam > 1e-12 * lam[0])
        edges = np.unique(np.geomspace(n_s + 1, size + 1, min(4097, size - n_s + 1)).astype(np.int64))
        kk = np.sqrt(edges[:-1] * edges[1:].astype(float))
        tail = np.zeros(kk.size)
        if sel.sum() >= 4 and np.mean(lam == 0) < 0.01:
            g, c = np.polyfit(np.log(k[sel]), np.log(lam[sel]), 1)
            tail = np.minimum(np.exp(c + g * np.log(kk)), lam[lam > 0][-1])
            fit = {"power_law_exponent": float(-g), "power_law_fit_ranks": [float(k[sel][0]), float(k[sel][-1])]}
        values.append(alpha * tail)
        weights.append(np.diff(edges) / size)
    v = np.concatenate(values)
    w = np.concatenate(weights)
    w = w / w.sum()
    lower = np.concatenate([k > n_s / 8, np.ones(v.size - lam.size, bool)])
    factor, warn = 1.0, []
    low_mean = float(np.sum((w * v)[lower]))
    if low_mean > 0:
        factor = (mean - float(np.sum((w * v)[~lower]))) / low_mean
        if factor > 0:
            v = np.where(lower, factor * v, v)
        else:
            warn.append("the top eigenvalues alone exceed the sample mean (negative eigenvalues clipped to 0?): "
                        "the trace is not preserved")
    out = table_density(v, w, grid)
    out["diagnostics"] = {"warnings": warn, **fit, "trace_factor": float(factor), "trace_factor_from_rank": n_s / 8,
                          "note": "large-alpha form of free decompression (rank order kept); the density is a "
                                  "log-scale KDE: read it on a log axis"}
    return out


def table_density(v, w, grid) -> dict:
    """A discrete spectrum (values, weights) as a result's pieces: the table sorted, its zero
    eigenvalues as an atom, and a density on a log-spaced grid (a weighted KDE of log10 of the
    positive values: read it on a log axis)."""
    from scipy.stats import gaussian_kde

    order = np.argsort(v)
    v, w = v[order], w[order]
    pos = v > 0
    x, density = np.zeros(1), np.zeros(1)
    if pos.any():
        lo, hi = np.log10(v[pos][0]), np.log10(v[pos][-1])
        x = np.logspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), int(grid) if np.ndim(grid) == 0 else len(grid))
        density = np.zeros(x.size)
        if hi > lo:
            kde = gaussian_kde(np.log10(v[pos]), weights=w[pos], bw_method=0.05)
            density = kde(np.log10(x)) / (x * np.log(10)) * w[pos].sum()
    zero_mass = float(w[~pos].sum())
    return {"x": x, "density": density, "support": (float(v[0]), float(v[-1])),
            "atoms": [(0.0, zero_mass)] if zero_mass > 0 else [], "table": (v, w), "settings": {"grid": int(x.size)}}


class InvalidSpectrumError(BigspecError, ValueError):
    """Eigenvalues or sizes that free decompression cannot use."""


class DecompressionWarning(BigspecWarning):
    """The decompressed density is outside the regime where it is reliable."""
