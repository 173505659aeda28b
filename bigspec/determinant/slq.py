"""Stochastic Lanczos quadrature (SLQ): log|det| from ``lanczos_steps`` passes over the stored tiles.

log|det M| = tr log|M| is estimated as the mean over Rademacher probes z of z^T log|M| z, each
quadratic form by Gauss quadrature from the Lanczos tridiagonal that z starts (Ubaru, Chen &
Saad 2017). All probes advance together: a Lanczos step is one block product ``Y = M V``
(``V``: n x probes), one Dask graph that reads every lower tile once on the workers and applies
it and its mirror. The recurrences, the probes and the quadrature stay on the client.

The interval (see :func:`slq_logdet`, Notes) is the probe confidence interval widened by a
quadrature bias estimate from the same run; where the recurrence visibly has not converged, its
low end is the Gauss-Radau lower bound instead, and a warning says so.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
import warnings

import numpy as np

from .. import config
from ..backend import check_device, to_device, to_host
from ..cluster import resolve_client
from ..errors import NonFiniteError, TileSizeError, arg
from ..form import kron_outputs
from ..matrix import as_matrix, tile_source
from ..progress import want_progress
from ..runner import Runner
from ..store import check_tile_size
from ..validate import check_count, check_flag, check_seed
from .estimate import EstimateResult, emit
from ..validate import check_scale_shift, shift_summary
from .tasks import read_tile

#: Lanczos steps when ``lanczos_steps`` is not given (at most n)
DEFAULT_STEPS = 80
#: confidence of the probe interval (Student t over the per-probe estimates)
CONFIDENCE = 0.95
#: smallest |Ritz value| / largest below this: the small eigenvalues are not resolved (a warning)
RITZ_RANGE = 1e-8
#: Ritz values below -NEGATIVE_RTOL * max|Ritz| show the matrix is indefinite
NEGATIVE_RTOL = 1e-12
#: the last quarter of the steps must move the estimate at most this fraction of the quarter
#: before, i.e. converge clearly geometrically, for |est(l) - est(l/2)| to bound the rest (0.5 let
#: kernel matrices at n = 16384 through as resolved while 11% off: bench/logdet_estimators.py)
GEOMETRIC_RATIO = 0.25
#: a bias below this fraction of the probe half-width (or 10x the rounding allowance) is negligible
NEGLIGIBLE_BIAS = 0.1
#: rounding allowance of the interval, relative to n * sum_i w_i |log|theta_i|| (the probes' magnitude)
ROUNDING_RTOL = 1e-10


# --------------------------------------------------------------------------- tasks
def tile_products(source, r0, r1, c0, c1, V_cols, V_rows, device, index):
    """One lower tile T = A[r0:r1, c0:c1] applied to the probe block: ``(T @ V_cols, T.T @ V_rows)``.

    ``V_cols`` holds rows c0:c1 of the Lanczos vectors, ``V_rows`` rows r0:r1 (None on a
    diagonal tile, which is read whole and applied once). Float64 whatever the storage dtype.
    """
    T = to_device(np.asarray(source[r0:r1, c0:c1], dtype=np.float64), device)   # no copy of a float64 array
    lower = to_host(T @ to_device(V_cols, device))
    upper = None if V_rows is None else to_host(T.T @ to_device(V_rows, device))
    # every input was checked finite when validated; a NaN here is a tile that changed (or an
    # unwritten one) since: the products show it at the cost of b x probes, and read_tile names it
    if not (np.isfinite(lower).all() and (upper is None or np.isfinite(upper).all())):
        read_tile(source, r0, r1, c0, c1, 1.0, None, "cpu", index)
        raise NonFiniteError(f"tile {tuple(index)} (rows {r0}:{r1}, cols {c0}:{c1}) times the Lanczos vectors "
                             f"overflows float64: its entries are too large, rescale the matrix", tile=tuple(index))
    return lower, upper


def pick(pair, side):
    return pair[side]


def sum_blocks(parts):
    """The row block of ``A V``: its parts summed in the order given (the same on any cluster)."""
    out = np.array(parts[0], copy=True)
    for p in parts[1:]:
        out += p
    return out


def matvec_graph(source, bounds, V, device):
    """One Lanczos step's graph: keys of the row blocks of ``A @ V`` (in order) and the graph.

    A task per lower tile (i, j), i >= j, gives ``A_ij V_j`` to row block i and, off the
    diagonal, ``A_ij^T V_i`` to row block j; a task per row block sums its parts in a fixed order.
    The probe block travels in the graph (the scheduler can then recreate it if a worker is lost).
    """
    tok = uuid.uuid4().hex[:10]
    name = {s: f"bigspec-slq-{s}-{tok}" for s in ("v", "tile", "part", "row")}
    nt = len(bounds)
    dsk = {}
    for j, (r0, r1) in enumerate(bounds):
        dsk[(name["v"], j)] = V[r0:r1]
    parts = [[] for _ in range(nt)]
    for i in range(nt):
        for j in range(i + 1):
            key = (name["tile"], i, j)
            dsk[key] = (tile_products, source, *bounds[i], *bounds[j], (name["v"], j),
                        None if i == j else (name["v"], i), device, (i, j))
            dsk[(name["part"], i, j, 0)] = (pick, key, 0)
            parts[i].append((name["part"], i, j, 0))
            if i != j:
                dsk[(name["part"], i, j, 1)] = (pick, key, 1)
    for j in range(nt):   # row block j: A_jk V_k for k <= j, then A_ij^T V_i for i > j
        parts[j].extend((name["part"], i, j, 1) for i in range(j + 1, nt))
    rows = [(name["row"], k) for k in range(nt)]
    for k in range(nt):
        dsk[rows[k]] = (sum_blocks, parts[k])
    return dsk, rows


# --------------------------------------------------------------------------- Lanczos
def lanczos(matvec, Z, steps, reorthogonalize=False, on_step=None):
    """Block of independent Lanczos recurrences started from the columns of ``Z``.

    Parameters
    ----------
    matvec : callable
        ``matvec(V) -> M @ V`` for an (n, k) float64 block.
    Z : (n, p) float64 array
        The probes; each column is normalized (in place) to start its recurrence.
    steps : int
        Lanczos steps (matrix products) at most.
    reorthogonalize : bool
        Full reorthogonalization (twice, classical Gram-Schmidt) against each probe's basis,
        which is then kept: ``8 * n * p * steps`` bytes.
    on_step : callable, optional
        Called after each step with the number of steps done.

    Returns
    -------
    alpha, beta : (steps, p) float64 arrays
        Diagonal and off-diagonal of each probe's tridiagonal; ``beta[k]`` couples step k to k+1
        (the last one is kept for the Gauss-Radau rule).
    length : (p,) int array
        Steps each probe ran: fewer than ``steps`` where its Krylov space was exhausted
        (``beta`` below ``n * eps * ||M||``; its quadrature is then exact).
    done : int
        Matrix products made (``steps``, or fewer if every probe broke down).
    flops : float
        Flops of the vector work on the client (the products are counted by the caller).
    """
    n, p = Z.shape
    alpha = np.zeros((steps, p))
    beta = np.zeros((steps, p))
    length = np.full(p, steps)
    V = np.asarray(Z, dtype=np.float64)
    V /= np.linalg.norm(V, axis=0)
    V_prev = np.zeros_like(V)
    b_prev = np.zeros(p)
    basis = np.empty((p, steps, n)) if reorthogonalize else None
    active = np.ones(p, dtype=bool)
    anorm = 0.0
    flops = 0.0
    done = 0
    for k in range(steps):
        cols = slice(None) if active.all() else np.flatnonzero(active)
        Vk = V[:, cols]
        pa = Vk.shape[1]
        if basis is not None:
            for c, j in enumerate(np.arange(p)[cols]):
                basis[j, k] = Vk[:, c]
        W = matvec(Vk)
        done += 1
        W -= b_prev[cols] * V_prev[:, cols]
        a = np.einsum("ij,ij->j", Vk, W)
        W -= a * Vk
        flops += 8.0 * n * pa
        if basis is not None:   # the basis so far: q_1 .. q_{k+1} of each probe
            for c, j in enumerate(np.arange(p)[cols]):
                Q = basis[j, :k + 1]
                for _ in range(2):
                    W[:, c] -= Q.T @ (Q @ W[:, c])
            flops += 8.0 * n * pa * (k + 1)
        b = np.linalg.norm(W, axis=0)
        alpha[k, cols] = a
        beta[k, cols] = b
        anorm = max(anorm, float(np.max(np.abs(a) + b + b_prev[cols], initial=0.0)))
        broke = b <= n * np.finfo(np.float64).eps * anorm
        idx = np.arange(p)[cols]
        length[idx[broke]] = k + 1
        active[idx[broke]] = False
        if on_step is not None:
            on_step(done)
        if k + 1 == steps or not active.any():
            break
        flops += 2.0 * n * pa
        if isinstance(cols, slice) and not broke.any():   # every probe goes on: no copies
            V_prev, V, b_prev = V, W, b
            V /= b
            continue
        keep = ~broke
        V_prev[:, idx[keep]] = Vk[:, keep]
        V[:, idx[keep]] = W[:, keep] / b[keep]
        b_prev[idx[keep]] = b[keep]
    return alpha, beta, length, done, flops


# --------------------------------------------------------------------------- quadrature
def gauss_nodes(alpha, beta):
    """Nodes (Ritz values) and weights of the Gauss rule of a k x k tridiagonal (k = len(alpha))."""
    from scipy.linalg import eigh_tridiagonal

    if len(alpha) == 1:
        return np.asarray(alpha, dtype=float), np.ones(1)
    theta, S = eigh_tridiagonal(alpha, beta[:len(alpha) - 1])
    return theta, S[0] ** 2


def quadrature(theta, weights, n):
    """n * sum_i w_i log|theta_i|: the probe's estimate of log|det| (the probe has norm^2 n)."""
    with np.errstate(divide="ignore"):
        return float(n * np.sum(weights * np.log(np.abs(theta))))


def radau_lower(alpha, beta_k, floor, n):
    """Gauss-Radau estimate with a node fixed at ``floor``: a lower bound of z^T log(M) z / ...

    For M positive definite with no eigenvalue below ``floor`` (and log, whose odd derivatives
    are positive) the Gauss-Radau rule with a node prescribed at ``floor`` underestimates the
    integral and the Gauss rule overestimates it (Golub & Meurant 2010, *Matrices, Moments and
    Quadrature with Applications*, ch. 6). ``alpha``: the k diagonal entries, ``beta_k``: the
    k off-diagonal entries (the last couples the next, never formed, step). Returns
    ``n * sum w log(theta)`` of the (k+1)-node rule, or -inf where ``floor`` is not below the
    tridiagonal's spectrum.
    """
    from scipy.linalg import solve_banded

    k = len(alpha)
    ab = np.zeros((3, k))
    ab[0, 1:] = beta_k[:k - 1]
    ab[1] = alpha - floor
    ab[2, :-1] = beta_k[:k - 1]
    rhs = np.zeros(k)
    rhs[-1] = beta_k[k - 1] ** 2
    try:
        delta = solve_banded((1, 1), ab, rhs)
    except np.linalg.LinAlgError:
        return -math.inf
    a_ext = np.append(alpha, floor + delta[-1])
    theta, w = gauss_nodes(a_ext, beta_k[:k])
    if not np.isfinite(theta).all():
        return -math.inf
    return quadrature(np.maximum(theta, floor), w, n)


# --------------------------------------------------------------------------- inputs
def _tile_size(m, tile_size) -> int:
    """The tile edge: the store's (``tile_size`` must then match), else ``tile_size`` or the config's."""
    ms = m.store
    if ms is None:
        b = check_tile_size(config.get("tile-size") if tile_size is None else tile_size)
        return min(b, m.n)
    if tile_size is not None and check_tile_size(tile_size) != ms.tile_size:
        raise TileSizeError(
            f"{arg('tile_size', tile_size)} does not match the store's tiles ({ms.tile_size}); omit "
            f"{arg('tile_size')} to use the store's (SLQ reads each stored tile once per step)",
            tile_size=tile_size, store_tile_size=ms.tile_size)
    return ms.tile_size


# --------------------------------------------------------------------------- public
def slq_logdet(A, *, probes=64, lanczos_steps=None, seed=0, reorthogonalize=False, tile_size=None, shift=0.0,
               scale=1.0, client=None, device="cpu", progress=None, storage_options=None, triangle=None,
               missing_chunks="error"):
    r"""Estimate log|det(scale * A + diag(shift))| by stochastic Lanczos quadrature over the tiles.

    Each of ``lanczos_steps`` steps is one pass over the matrix's lower tiles on the workers,
    for all probes at once; nothing is written.

    Parameters
    ----------
    A : MatrixStore, str, os.PathLike, zarr.Group, or numpy / dask / zarr array
        The symmetric n x n matrix, validated by :func:`bigspec.matrix.as_matrix`. A store is
        read tile by tile (tiles i >= j, each applied with its mirror); arrays are cut into
        ``tile_size`` tiles (a dask array, or a numpy array on a cluster, is copied to a
        temporary store first).
    probes : int, default 64
        Rademacher probes (>= 1). The probe error falls as ``1 / sqrt(probes)``.
    lanczos_steps : int, optional
        Lanczos steps l, 2 <= l <= n: matrix passes, and quadrature nodes per probe (default
        ``min(80, n)``). The quadrature bias falls with l (not with probes).
    seed : int, default 0
        Seeds the probes: ``default_rng(SeedSequence(seed).spawn(1)[0])`` draws one
        n x probes block, a child stream, so that data drawn with ``default_rng(seed)`` is not
        correlated with the probes. The same seed gives the same probes whatever the tile
        size or the cluster (see ``reorthogonalize`` for how far the estimate then agrees).
    reorthogonalize : bool, default False
        Full reorthogonalization of each probe's Lanczos vectors. It keeps every probe's basis
        on the client: ``8 * n * probes * lanczos_steps`` bytes (n = 1e5, 64 probes, 80 steps:
        4 GB), and adds ``8 * n * probes * l^2`` flops. Either way the client holds about
        ``5 * 8 * n * probes`` bytes of Lanczos vectors and products. With it, estimates for other tile sizes, input
        kinds and worker counts agree to rounding (~1e-14 relative, measured). Without it the
        Lanczos vectors lose orthogonality once Ritz values converge, and that amplifies the
        rounding of a different summation order (tile size, BLAS threads) into differences of
        ~1e-6 relative (measured: n = 1000, 30 steps), far inside the interval; the same tile
        size gives the same bits for every input kind and worker count (measured: the
        threaded scheduler and 2 worker processes).
    tile_size : int, optional
        Tile edge for array inputs (default: config ``bigspec.tile-size``); for a store it must
        match the store's tiles.
    shift : float or (n,) float64 array, default 0.0
        Added to the diagonal; ``scale`` (float, default 1.0, nonzero) multiplies A.
    client : distributed.Client, optional
        Default: the current client, else Dask's threaded scheduler.
    device : {"cpu", "gpu"}
        ``"gpu"`` multiplies the tiles on cupy arrays.
    progress : bool, optional
        Progress bar in Lanczos steps (default: on a terminal).
    storage_options, triangle, missing_chunks :
        As in :func:`bigspec.logdet`.

    Returns
    -------
    EstimateResult
        ``method="slq"``; ``sign``: +1 where every Ritz value is positive, ``(-1)**n`` where
        every one is negative (Lanczos finds the extreme eigenvalues first; an eigenvalue of
        the other sign near 0 is not excluded), 0 where it is **unknown** (an indefinite
        matrix, see Warns) or the matrix is singular (a Ritz value exactly 0, ``logabsdet``
        -inf); ``logabsdet`` (nats, float); the
        ``interval`` (nats) and its ``interval_meaning``; ``settings`` (probes,
        lanczos_steps, seed, reorthogonalize, tile_size); ``diagnostics`` (``probe_std_error``,
        ``t_quantile``, ``quadrature_bias`` = |est(l) - est(l/2)|, ``estimate_half_steps``,
        ``estimate_three_quarter_steps``, ``convergence_ratio``, ``resolved``, ``radau_lower``,
        ``radau_floor``, ``min_ritz``, ``max_ritz``, ``ritz_range``, ``definiteness``,
        ``breakdowns``, ``steps_run``, ``confidence``; all nats or plain numbers); ``cost``
        (``entries`` read: steps x the entries of the lower tiles, diagonal tiles whole;
        ``flops``; ``seconds``) and ``curves["probe_estimates"]`` ((probes,) float64, nats).

    Raises
    ------
    ArgumentError, ArgumentTypeError
        ``probes`` not an integer >= 1, ``lanczos_steps`` not an integer in [2, n], ``seed``
        not a non-negative integer, ``reorthogonalize`` not a bool, a bad ``shift``/``scale``.
    TileSizeError
        ``tile_size`` is not a positive integer, or differs from the store's tiles.
    InvalidMatrixError, NonFiniteError, IncompleteStoreError
        As for every matrix input.
    Interrupted
        Ctrl-C (nothing is kept: SLQ writes nothing).

    Warns
    -----
    EstimateWarning
        The quadrature is unresolved after ``lanczos_steps`` (the interval's low end is then
        the Gauss-Radau bound); Ritz values spanning more than 1/``RITZ_RANGE`` (small
        eigenvalues not resolved: the estimate is likely biased upward); an indefinite matrix
        (sign unknown, no quadrature bound); a single probe (no probe spread).

    Notes
    -----
    **Estimator.** With Rademacher z_j (n x probes, float64) and q_j = z_j / sqrt(n), l
    Lanczos steps give the tridiagonal T_j with eigenvalues theta_i (Ritz values) and first
    eigenvector components tau_i, and

    .. math:: \widehat{\log|\det M|}_j = n \sum_{i=1}^{l} \tau_{ij}^2 \log|\theta_{ij}|,

    averaged over the probes. A probe whose recurrence breaks down (its Krylov space is
    exhausted, beta <= n eps ||M||) stops there: its quadrature is then exact.

    **Interval.** (a) the probe error: t * s / sqrt(probes), s the standard deviation of the
    per-probe estimates and t the Student-t quantile of ``CONFIDENCE`` (95%) with probes - 1
    degrees of freedom; (b) the quadrature bias B = |est(l) - est(l/2)|, est(l/2) from the
    leading (l/2) x (l/2) block of each tridiagonal. The interval is est -/+ (a + b). For a
    positive definite M, log has negative even derivatives, so each Gauss rule overestimates,
    and more nodes overestimate less (the Gauss rules of -1/(x + t), which log integrates, are
    monotone): est(l/2) >= est(l) >= exact, and B is a lower bound of the error of est(l/2)
    -- not of est(l). It bounds the error of est(l) where convergence is at least geometric
    with the last quarter of the steps moving the estimate at most half as much as the quarter
    before (then the remaining tail is below that last move, itself below B). That test is
    made; where it fails and B is above a tenth of (a), or the Ritz values span more
    than 1e8, the quadrature is *unresolved*: a warning says so and the low end becomes the
    Gauss-Radau lower bound (a node fixed at eps * max|theta|, the float64 resolution of the
    matrix: an eigenvalue below it is not determined by the stored entries), less its own
    probe half-width. That bound holds for any spectrum above the floor, so it is wide: it is
    what the run can vouch for. Indefinite matrices get (a) + (b) only, with a warning: log|x|
    is singular inside the spectrum and no rule bounds it.

    **Cost.** ``lanczos_steps`` passes over the lower tiles (about n^2 / 2 entries),
    ``2 * probes * lanczos_steps * n^2`` flops in the tiles; each step moves the probe
    block (8 n probes bytes) to the workers and back.

    References
    ----------
    S. Ubaru, J. Chen and Y. Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
    quadrature", SIAM J. Matrix Anal. Appl. 38(4), 1075-1099, 2017.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> from bigspec.testing import matern_matrix
    >>> K = matern_matrix(np.random.default_rng(0).uniform(size=(400, 2)), nu=2.5, lengthscale=0.2,
    ...                   noise=0.1)
    >>> est = bigspec.logdet(K, method="slq", probes=16, lanczos_steps=30, seed=1, progress=False)
    >>> exact = np.linalg.slogdet(K)[1]
    >>> est.sign, est.covers(exact), est.relative_halfwidth < 0.05, est.warnings
    (1, True, True, ())
    """
    t_start = time.perf_counter()
    probes = check_count(probes, "probes", 1)
    if lanczos_steps is not None:
        check_count(lanczos_steps, "lanczos_steps", 2)
    seed = check_seed(seed)
    reorthogonalize = check_flag(reorthogonalize, "reorthogonalize")
    if tile_size is not None:
        check_tile_size(tile_size)
    device = check_device(device)
    want_progress(progress)
    client = resolve_client(client)
    m = as_matrix(A, triangle=triangle, missing_chunks=missing_chunks, storage_options=storage_options, mode="r",
                  client=client)
    n = m.n
    if lanczos_steps is None:
        steps = min(DEFAULT_STEPS, n)
    else:
        steps = check_count(lanczos_steps, "lanczos_steps", 2, n, why=f" (the matrix has n={n} rows)")
    b = _tile_size(m, tile_size)
    scale, shift = check_scale_shift(scale, shift, n)
    bounds = [(r0, min(r0 + b, n)) for r0 in range(0, n, b)]
    issued: list[str] = []

    # a child of SeedSequence(seed), not its own stream: data drawn with default_rng(seed) (the common
    # habit, and default_rng(0) beside the default seed=0) would otherwise share the probes' bits: with
    # X = default_rng(1).uniform(size=(n, 2)) and seed=1, probe columns 7 and 15 of 16 were the signs
    # of X[:, 0] - 1/2 and X[:, 1] - 1/2, aligned with the kernel's smooth top eigenvectors, and the
    # estimate was 30% off (measured)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    Z = np.where(rng.integers(0, 2, size=(n, probes), dtype=np.int8) == 1, 1.0, -1.0)

    done = [0]
    tmp: list[str] = []
    try:
        with Runner(client, progress=progress, label="bigspec slq", unit="steps", total=steps,
                    interrupted=lambda: (f"SLQ stopped after {done[0]} of {steps} Lanczos steps; it writes nothing, "
                                         f"so nothing is kept: run it again")) as runner:
            source = tile_source(m, b, client, tmp)

            def matvec(V):
                dsk, rows = matvec_graph(source, bounds, np.ascontiguousarray(V), device)
                with warnings.catch_warnings():
                    # the probe block must reach the workers each step; in the graph it can be recreated
                    warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
                    Y = np.concatenate(runner.run(dsk, rows), axis=0)
                if scale != 1.0:
                    Y *= scale
                if shift is not None:
                    Y += (shift[:, None] if np.ndim(shift) else shift) * V
                return Y

            def on_step(k):
                done[0] = k
                runner.bar.advance(1)

            alpha, beta, length, done_steps, vector_flops = lanczos(matvec, Z, steps, reorthogonalize, on_step)
            runner.bar.advance(steps - done_steps)
    finally:
        for path in tmp:
            shutil.rmtree(path, ignore_errors=True)

    res = _assemble(alpha, beta, length, n, issued, steps=steps)
    d = kron_outputs(m.store) if m.store is not None else 1    # a store of K of K (x) I_d: d logdet K
    if d != 1:
        res["estimate"] *= d
        res["interval"] = tuple(d * v for v in res["interval"])
        res["probe_estimates"] = d * np.asarray(res["probe_estimates"])
        res["sign"] = res["sign"] ** d if res["sign"] else 0
        res["meaning"] += f"; the matrix is K (x) I_{d}, so the estimate and interval are {d} times K's"
    tile_entries = sum((r1 - r0) * (c1 - c0) for i, (r0, r1) in enumerate(bounds) for (c0, c1) in bounds[:i + 1])
    products = float(np.sum([np.count_nonzero(length > k) for k in range(done_steps)]))   # probe columns multiplied
    seconds = time.perf_counter() - t_start
    return EstimateResult(
        method="slq", sign=res["sign"], logabsdet=res["estimate"], interval=res["interval"],
        interval_meaning=res["meaning"], n=n, kron_outputs=d, scale=scale, shift=shift_summary(shift),
        settings={"probes": probes, "lanczos_steps": steps, "seed": seed, "reorthogonalize": reorthogonalize,
                  "tile_size": b},
        diagnostics=res["diagnostics"],
        cost={"entries": int(done_steps * tile_entries), "flops": float(2.0 * n * n * products + vector_flops),
              "seconds": seconds},
        warnings=tuple(issued), source=m.store.url if m.store is not None else f"{m.kind} array",
        seconds=seconds, curves={"probe_estimates": res["probe_estimates"]})


def _assemble(alpha, beta, length, n, issued, *, steps):
    """Estimate, interval, sign and diagnostics from the probes' tridiagonals (see slq_logdet, Notes)."""
    from scipy import stats

    p = alpha.shape[1]
    half = max(1, steps // 2)
    mid = half + (steps - half) // 2
    ritz = [gauss_nodes(alpha[:length[j], j], beta[:, j]) for j in range(p)]
    thetas = np.concatenate([t for t, _ in ritz])
    top = float(np.max(np.abs(thetas)))
    lowest, highest = float(thetas.min()), float(thetas.max())
    tol = NEGATIVE_RTOL * top
    if lowest >= -tol:        # a Ritz value within rounding of 0 is a (numerically) singular PSD matrix
        definiteness, sign, flip = "positive definite", 1, 1.0
    elif highest <= tol:
        definiteness, sign, flip = "negative definite", (-1) ** (n % 2), -1.0
    else:
        definiteness, sign, flip = "indefinite", 0, 1.0

    def est(j, k):
        k = min(k, int(length[j]))
        if k == length[j]:
            return quadrature(*ritz[j], n)
        return quadrature(*gauss_nodes(alpha[:k, j], beta[:, j]), n)

    G = np.array([est(j, steps) for j in range(p)])
    G_half = np.array([est(j, half) for j in range(p)])
    G_mid = np.array([est(j, mid) for j in range(p)])
    base = {"min_ritz": lowest, "max_ritz": highest, "definiteness": definiteness, "steps_run": int(length.max()),
            "breakdowns": int(np.count_nonzero(length < steps)), "confidence": CONFIDENCE}
    if not np.isfinite(G).all():     # log 0: a Ritz value is exactly 0
        singular = definiteness != "indefinite"
        emit("a Ritz value is exactly 0: " + (
            "the matrix is singular (an eigenvalue 0 at the end of its spectrum): log|det| = -inf" if singular else
            "the matrix is indefinite and a Ritz value fell on 0, where log|x| is -inf: the estimate is unusable; "
            f"use an exact method ({arg('method', 'ldl')})"), issued, stacklevel=5)
        return {"estimate": -math.inf, "sign": 0, "interval": (-math.inf, -math.inf if singular else math.inf),
                "meaning": "a Ritz value is exactly 0" + (": the matrix is singular" if singular else
                                                        ", so the estimate holds no information"),
                "diagnostics": dict(base, resolved=False), "probe_estimates": G}
    estimate = float(G.mean())
    if p > 1:
        se = float(G.std(ddof=1) / math.sqrt(p))
        t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, p - 1))
        spread = t * se
    else:
        se, t, spread = math.inf, math.inf, math.inf
        emit("one probe gives no probe spread: the interval is unbounded; use probes >= 8 (the probe error "
             "falls as 1/sqrt(probes))", issued, stacklevel=5)
    bias = abs(estimate - float(G_half.mean()))
    d1, d2 = float(np.mean(G_half - G_mid)), float(np.mean(G_mid - G))
    ratio = d2 / d1 if d1 > 0 else (0.0 if d2 <= 0 else math.inf)
    with np.errstate(divide="ignore"):
        magnitude = float(np.mean([n * np.sum(w * np.abs(np.log(np.abs(th)))) for th, w in ritz]))
    rounding = ROUNDING_RTOL * magnitude     # all probes alike (a diagonal matrix) leave only rounding
    negligible = bias <= max(NEGLIGIBLE_BIAS * spread if math.isfinite(spread) else 0.0, 10 * rounding)
    range_ratio = float(np.min(np.abs(thetas)) / top) if top > 0 else 0.0
    geometric = d2 <= GEOMETRIC_RATIO * d1 or (d1 <= 0 and d2 <= 0)
    low, high = estimate - spread - bias - rounding, estimate + spread + bias + rounding
    conf = f"{CONFIDENCE:.0%}"
    meaning = (f"{conf} probe confidence interval (Student t, {p - 1} degrees of freedom, {p} Rademacher probes) "
               f"widened on both sides by the quadrature bias estimate |est({steps}) - est({half})| = {bias:.4g} "
               f"(and {ROUNDING_RTOL:g} relative for rounding)")
    resolved = negligible or geometric
    radau_mean, floor = None, None
    ritz_small = range_ratio < RITZ_RANGE
    if definiteness == "indefinite":
        emit(f"the matrix is indefinite (Ritz values from {lowest:.4g} to {highest:.4g}): the sign of its determinant "
             f"is not estimated (sign=0 means unknown), and log|x| is singular inside its spectrum, so no "
             f"quadrature rule bounds the estimate and a Ritz value near 0 can move it far; the interval "
             f"(probe spread and |est(l) - est(l/2)|) may not cover the value: use an exact method "
             f"({arg('method', 'ldl')}) where it fits", issued, stacklevel=5)
        meaning += ("; the matrix is indefinite, so the quadrature has no bound and the interval may not cover "
                    "the value")
    elif not resolved or ritz_small:
        floor = np.finfo(np.float64).eps * top
        R = np.array([G[j] if length[j] < steps else          # broken down: its quadrature is exact
                      -math.inf if np.min(flip * ritz[j][0]) <= floor else   # no room for the floor below it
                      radau_lower(flip * alpha[:steps, j], beta[:steps, j], floor, n) for j in range(p)])
        if np.isfinite(R).all():
            radau_mean = float(R.mean())
            r_spread = t * float(R.std(ddof=1) / math.sqrt(p)) if p > 1 else math.inf
            low = min(low, radau_mean - r_spread)
        else:
            radau_mean, low = -math.inf, -math.inf
        why = []
        if not resolved:
            why.append(f"the estimate still falls as steps are added (est({half}) = {G_half.mean():.6g}, "
                       f"est({mid}) = {G_mid.mean():.6g}, est({steps}) = {estimate:.6g}: the last quarter of the "
                       + (f"steps moved it {ratio:.2f} times as much as the quarter before" if math.isfinite(ratio)
                          else "steps moved it and the quarter before did not")
                       + f", where geometric convergence would be below {GEOMETRIC_RATIO})")
        if ritz_small:
            why.append(f"the Ritz values span {np.min(np.abs(thetas)):.3g} to {top:.3g} (ratio {range_ratio:.2g} < "
                       f"{RITZ_RANGE:g}): the cluster of small eigenvalues is not resolved, so the estimate is likely "
                       f"biased upward")
        if radau_mean == -math.inf:
            bound = (f"the interval has no low end: a Ritz value lies at or below {floor:.3g}, float64's "
                     f"resolution of the largest one, so the matrix is numerically singular")
        else:
            bound = (f"the interval's low end is widened to {low:.6g}, the Gauss-Radau lower bound "
                     f"{radau_mean:.6g} less its probe half-width (it assumes no eigenvalue below {floor:.3g}, "
                     f"float64's resolution of the largest Ritz value)")
        emit(f"the Lanczos quadrature is unresolved after {arg('lanczos_steps', steps)}: " + "; ".join(why)
             + f". {bound[0].upper()}{bound[1:]}; more {arg('lanczos_steps')} narrow it, more {arg('probes')} "
             f"do not", issued, stacklevel=5)
        meaning += (f"; the quadrature is unresolved, so the low end is the Gauss-Radau lower bound ({conf} over the "
                    f"probes) assuming no eigenvalue below {floor:.3g}")
    diagnostics = dict(
        base, probe_std_error=se, t_quantile=t, quadrature_bias=bias, estimate_half_steps=float(G_half.mean()),
        estimate_three_quarter_steps=float(G_mid.mean()), convergence_ratio=ratio,
        resolved=bool(resolved and not ritz_small and definiteness != "indefinite"), radau_lower=radau_mean,
        radau_floor=floor, ritz_range=range_ratio)
    return {"estimate": estimate, "sign": int(sign), "interval": (float(low), float(high)), "meaning": meaning,
            "diagnostics": diagnostics, "probe_estimates": G}


__all__ = ["slq_logdet"]
