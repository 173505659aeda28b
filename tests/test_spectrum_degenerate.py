"""Free decompression of degenerate spectra: point masses, floors, shifts, and the exact trace."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import bigspec
from bigspec.kernels import get_kernel
from bigspec.spectra import DecompressionWarning, free_decompress
from bigspec.spectra.laws import MarchenkoPastur
from bigspec.spectra.metrics import wasserstein1

Q = np.array([0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999])


def clean(*args, **kwargs):
    """free_decompress, asserting that no DecompressionWarning fires."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = free_decompress(*args, **kwargs)
    fired = [str(w.message) for w in caught if issubclass(w.category, DecompressionWarning)]
    assert fired == [] and r.diagnostics["warnings"] == []
    return r


def atom_fraction(eig, atom_tol=1e-9):
    """Fraction of the eigenvalues within atom_tol * max|x| of the smallest (free_decompress's floor rule)."""
    eig = np.concatenate([np.ravel(e) for e in eig]) if isinstance(eig, list) else eig
    return float(np.mean(eig - eig.min() <= atom_tol * np.abs(eig).max()))


@pytest.fixture(scope="module")
def rbf():
    """RBF kernel (lengthscale 0.2) on 2000 uniform points in the unit square, and 2 disjoint samples of 500."""
    X = np.random.default_rng(0).uniform(size=(2000, 2))
    K = get_kernel("rbf", lengthscale=0.2).block(X, X, diagonal=True)
    order = np.random.default_rng(1).permutation(2000)
    idx = [np.sort(order[j * 500:(j + 1) * 500]) for j in range(2)]
    return X, K, idx


# -- 1. c I is a point mass at c ----------------------------------------------------------------

@pytest.mark.parametrize("regime", ["auto", "bulk", "heavy-tailed"])
@pytest.mark.parametrize("c", [1.0, -3.0, 2.5e6, 0.0])
def test_constant_spectrum_is_a_point_mass(c, regime):
    r = clean(np.full(500, c), size=2001, regime=regime)  # a ZeroDivisionError before
    assert r.settings["regime"] == "point-mass" and r.settings["floor"] == c
    assert "equal" in r.diagnostics["regime_reason"]
    assert r.atoms == [(c, 1.0)]
    assert r.mean == c and r.variance == 0.0 and r.trace == 2001 * c
    assert np.all(r.quantiles(Q) == c)
    assert r.cdf([c - 1e-6 * (abs(c) or 1), c]).tolist() == [0.0, 1.0]
    sign, ld = r.logdet()
    if c == 0:
        assert (sign, ld) == (0, -np.inf)
    else:
        assert sign == (-1 if c < 0 else 1)  # size 2001 is odd
        assert ld == pytest.approx(2001 * np.log(abs(c)), rel=1e-14, abs=1e-12)
    json.dumps(r.to_dict())


def test_ones_decompress_to_the_identity():
    r = clean(np.ones(500), size=2000)
    assert r.atoms == [(1.0, 1.0)] and r.mean == 1.0 and r.logdet() == (1, 0.0)
    assert np.all(r.quantiles() == 1.0)


def test_eigenvalues_equal_up_to_rounding_are_a_point_mass():
    noisy = 1 + 1e-15 * np.random.default_rng(0).standard_normal(500)
    r = clean(noisy, size=2000)
    assert r.settings["regime"] == "point-mass"
    assert len(r.atoms) == 1 and r.atoms[0] == pytest.approx((1.0, 1.0), abs=1e-14)
    assert r.quantiles(Q) == pytest.approx(np.ones(Q.size), abs=1e-14)
    sign, ld = r.logdet()
    assert sign == 1 and abs(ld) < 1e-10
    # a tiny-lengthscale RBF kernel is numerically the identity: what spectrum(kernel="rbf",
    # X=X, sample_size=300, n_samples=2, lengthscale=1e-4) decompresses
    X = np.random.default_rng(0).uniform(size=(2000, 2))
    order = np.random.default_rng(np.random.SeedSequence(0)).permutation(2000)
    k = get_kernel("rbf", lengthscale=1e-4)
    eig = [np.linalg.eigvalsh(k.block(X[i], X[i], diagonal=True))
           for i in (np.sort(order[:300]), np.sort(order[300:600]))]
    r = clean(eig, size=2000)
    assert r.settings["regime"] == "point-mass"
    assert r.atoms == [pytest.approx((1.0, 1.0), abs=1e-12)]
    assert r.mean == pytest.approx(1.0, abs=1e-12) and r.quantiles([0.01, 0.5, 0.99]) == pytest.approx([1, 1, 1])
    sign, ld = r.logdet()
    assert sign == 1 and abs(ld) < 1e-8


# -- 2. a floor (the ridge of K + s I, the zeros of a rank-deficient matrix) is exact ----------

def test_ridge_floor_is_kept_exactly(rbf):
    _, K, idx = rbf
    full = K + 0.1 * np.eye(K.shape[0])
    exact = np.linalg.eigvalsh(full)
    samples = [np.linalg.eigvalsh(full[np.ix_(i, i)]) for i in idx]
    pooled = np.concatenate(samples)
    r = clean(samples, size=2000)
    assert r.settings["regime"] == "heavy-tailed"
    assert "> 20" in r.diagnostics["regime_reason"]
    # the floor: 0.1, not 0.4 (= alpha * 0.1: every eigenvalue, the ridge included, times alpha)
    assert r.settings["floor"] == pytest.approx(0.1, abs=1e-12)
    assert r.support[0] == pytest.approx(0.1, abs=1e-12)
    assert r.quantiles([1e-4])[0] == pytest.approx(0.1, abs=1e-12)
    # the atom at the floor keeps its rank: 1 - (1 - a) / alpha, and the oracle has it too
    a = atom_fraction(samples)
    loc, mass = r.atoms[0]
    assert len(r.atoms) == 1 and loc == pytest.approx(0.1, abs=1e-12)
    assert mass == pytest.approx(1 - (1 - a) / 4, abs=1e-12)
    assert mass == pytest.approx(atom_fraction(exact), abs=0.01)  # 0.9285 vs 0.9265
    # the trace: the sample mean (27% high before: the tail added to the scaled floor)
    assert r.mean == pytest.approx(pooled.mean(), rel=1e-9)
    assert r.trace == pytest.approx(exact.sum(), rel=1e-12)
    # quantiles against eigvalsh of the full matrix
    qr, qe = r.quantiles(Q), np.quantile(exact, Q, method="inverted_cdf")
    assert qr[Q <= 0.9] == pytest.approx(qe[Q <= 0.9], abs=1e-6)  # all at the floor (0.4 before)
    assert qr[Q == 0.95][0] == pytest.approx(qe[Q == 0.95][0], rel=1e-3)
    assert wasserstein1(r, exact) < 0.05  # 0.031; 0.32 before; the sample itself: 0.91
    assert wasserstein1(r, exact) < 0.05 * wasserstein1(pooled, exact)
    sign, ld = r.logdet()
    assert sign == 1 and ld == pytest.approx(np.sum(np.log(exact)), rel=1e-3)  # -1699 before, exact -4402


def test_ridge_as_a_shift_equals_the_detected_floor(rbf):
    _, K, idx = rbf
    bare = [np.linalg.eigvalsh(K[np.ix_(i, i)]) for i in idx]
    ridge = [np.linalg.eigvalsh((K + 0.1 * np.eye(K.shape[0]))[np.ix_(i, i)]) for i in idx]
    r_shift = clean(bare, size=2000, shift=0.1)
    r_floor = clean(ridge, size=2000)
    assert (r_shift.settings["floor"], r_shift.settings["shift"]) == (0.0, 0.1)
    assert r_shift.atoms == [pytest.approx(r_floor.atoms[0], abs=1e-9)]
    assert r_shift.quantiles(Q) == pytest.approx(r_floor.quantiles(Q), rel=1e-6, abs=1e-9)
    assert r_shift.trace == pytest.approx(r_floor.trace, rel=1e-12)


def test_rank_deficient_kernel_keeps_its_rank_in_the_heavy_tailed_regime(rbf):
    # K alone is numerically of low rank: the ranks beyond the sample are 0, not a power-law tail
    _, K, idx = rbf
    exact = np.linalg.eigvalsh(K)
    samples = [np.linalg.eigvalsh(K[np.ix_(i, i)]) for i in idx]
    r = clean(samples, size=2000)
    assert r.settings["regime"] == "heavy-tailed" and r.settings["floor"] == 0.0
    a = atom_fraction(samples)
    assert r.atoms == [pytest.approx((0.0, 1 - (1 - a) / 4), abs=1e-12)]  # 0.054 before
    assert r.atoms[0][1] == pytest.approx(atom_fraction(exact), abs=0.01)
    assert r.mean == pytest.approx(np.mean(samples), rel=1e-9)
    assert r.logdet() == (0, -np.inf)


def test_floor_in_the_bulk_regime():
    # a rank-deficient Wishart spectrum shifted by 0.5: its atom sits at 0.5 and keeps its rank
    law = MarchenkoPastur(2.0)
    eig = law.eigenvalues(1000, seed=5)
    r = clean(eig + 0.5, size=4000)
    assert r.settings["regime"] == "bulk" and "<= 20" in r.diagnostics["regime_reason"]
    assert r.settings["floor"] == pytest.approx(0.5, abs=1e-12)
    assert r.atoms == [pytest.approx((0.5, 1 - 0.5 / 4), abs=1e-12)]
    target = law.decompress(4).quantile((np.arange(20000) + 0.5) / 20000) + 0.5
    assert wasserstein1(r, target) < 0.005  # 4.07 before (no atom, a broken fit)
    # and the floor is what an explicit shift gives
    r_shift = clean(eig, size=4000, shift=0.5)
    assert r_shift.settings["floor"] == 0.0
    assert r_shift.x == pytest.approx(r.x, abs=1e-9)
    assert r_shift.density == pytest.approx(r.density, rel=1e-6, abs=1e-9 * r.density.max())


def test_shift_and_scale_are_exact():
    eig = MarchenkoPastur(0.1).eigenvalues(800, seed=1)
    base = clean(2.0 * eig, size=3200)
    r = clean(eig, size=3200, shift=1.0, scale=2.0)  # the law of 2 A + I
    assert (r.settings["shift"], r.settings["scale"], r.settings["floor"]) == (1.0, 2.0, 0.0)
    assert r.x == pytest.approx(base.x + 1.0, abs=1e-12)
    assert r.density == pytest.approx(base.density, rel=1e-12, abs=1e-12)
    assert r.support == pytest.approx(np.add(base.support, 1.0), abs=1e-12)
    assert r.settings["support"] == pytest.approx(np.add(base.settings["support"], 1.0), abs=1e-12)
    assert r.mean == pytest.approx(base.mean + 1.0, rel=1e-12)
    assert r.trace == pytest.approx(3200 * (2 * eig.mean() + 1), rel=1e-12)
    assert r.eigenvalues == pytest.approx(2 * eig + 1, rel=1e-15)
    # a negative scale flips the law
    flipped = clean(eig, size=3200, scale=-1.0)
    assert flipped.quantiles([0.1, 0.9]) == pytest.approx(-clean(eig, size=3200).quantiles([0.9, 0.1]), rel=0.01)
    with pytest.raises(ValueError, match="finite"):
        free_decompress(eig, size=3200, shift=np.inf)


# -- 3. the trace is n times the sample mean in every regime -------------------------------------

@pytest.mark.parametrize("kernel,params,d", [("matern", {"nu": 1.5, "lengthscale": 1.0}, 4),
                                             ("rbf", {"lengthscale": 2.0}, 6)])
def test_heavy_tailed_trace_is_exact(kernel, params, d):
    X = np.random.default_rng(0).standard_normal((2000, d))
    K = get_kernel(kernel, **params).block(X, X, diagonal=True)
    exact = np.linalg.eigvalsh(K)
    samples = [np.linalg.eigvalsh(K[np.ix_(i, i)]) for i in (np.arange(250), np.arange(250, 500))]
    r = clean(samples, size=2000)
    assert r.settings["regime"] == "heavy-tailed" and r.settings["floor"] == 0.0
    assert "power_law_exponent" in r.diagnostics  # a full-rank sample gets its power-law tail...
    # ...and the ranks from n_s / 8 down are scaled to keep the mean (8% high before, Matern)
    assert 0 < r.diagnostics["trace_factor"] < 1 and r.diagnostics["trace_factor_from_rank"] == 250 / 8
    assert r.mean == pytest.approx(np.mean(samples), rel=1e-9)
    assert r.trace == pytest.approx(2000 * np.mean(samples), rel=1e-12)
    assert r.trace == pytest.approx(np.trace(K), rel=1e-12)  # a kernel's diagonal is constant
    assert r.quantiles([0.999])[0] == pytest.approx(np.quantile(exact, 0.999), rel=0.3)  # top ranks kept
    assert wasserstein1(r, exact) < 0.5 * wasserstein1(np.concatenate(samples), exact)


def test_bulk_mean_is_checked():
    eig = MarchenkoPastur(0.1).eigenvalues(800, seed=1)
    r = clean(eig, size=3200)
    assert r.settings["regime"] == "bulk" and r.settings["floor"] == 0.0
    assert "<= 20" in r.diagnostics["regime_reason"]
    assert r.mean == pytest.approx(eig.mean(), rel=0.01)
    assert abs(r.diagnostics["mean_error"]) < 0.01
    assert r.trace == 3200 * r.diagnostics["sample_mean"] and r.diagnostics["sample_mean"] == eig.mean()
    assert json.loads(json.dumps(r.to_dict()))["trace"] == pytest.approx(3200 * eig.mean())
    # where the fit is off, the mean says so: a kernel spectrum forced into the bulk regime
    X = np.random.default_rng(0).standard_normal((250, 4))
    kern = np.linalg.eigvalsh(get_kernel("matern", nu=1.5, lengthscale=1.0).block(X, X, diagonal=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = free_decompress(kern, size=2000, regime="bulk")
    assert any(issubclass(w.category, DecompressionWarning) and "mean is off the sample mean by" in str(w.message)
               for w in caught)
    assert bad.diagnostics["regime_reason"] == "regime='bulk' requested"
    assert abs(bad.diagnostics["mean_error"]) > 0.01
    assert bad.trace == pytest.approx(2000 * kern.mean(), rel=1e-12)


def test_low_rank_sample_goes_heavy_tailed():
    eig = np.r_[np.zeros(499), 5.0]  # a rank-1 sample: the rank and the trace are kept
    r = clean(eig, size=2000)
    assert r.settings["regime"] == "heavy-tailed" and "fewer than 2" in r.diagnostics["regime_reason"]
    assert r.atoms == [pytest.approx((0.0, 1 - 1 / 2000), abs=1e-12)]
    assert r.quantiles([1.0])[0] == pytest.approx(20.0) and r.mean == pytest.approx(0.01, rel=1e-12)
    with pytest.raises(bigspec.spectra.InvalidSpectrumError, match="point masses only"):
        free_decompress(eig, size=2000, regime="bulk")


def test_two_point_masses_are_refused_with_the_reason():
    eig = np.r_[np.ones(250), 2.0 * np.ones(250)]   # e.g. I + P, P a projection: its growth depends on P
    with pytest.raises(bigspec.spectra.InvalidSpectrumError, match="point masses only.*eigenvectors"):
        free_decompress(eig, size=2000)


def _wishart(n, seed):
    Z = np.random.default_rng(seed).standard_normal((n, int(n / 0.75)))
    return Z @ Z.T / Z.shape[1]


def test_one_small_eigenvalue_is_not_an_atom():
    """A sample of 20: its smallest eigenvalue is 5% of it but is no point mass."""
    S = _wishart(60, 0)
    with pytest.warns(DecompressionWarning, match="mean is off"):     # 20 eigenvalues: a rough fit, and it says so
        r = bigspec.free_decompress(np.linalg.eigvalsh(S[:20, :20]), size=60)
    assert r.atoms == [] and r.settings["floor"] == 0.0
    assert r.quantiles([0.01])[0] < r.quantiles([0.5])[0] - 0.1        # no mass piled on one value


def test_density_below_a_positive_sample_is_flagged():
    S = _wishart(400, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bigspec.free_decompress(np.linalg.eigvalsh(S[:50, :50]), size=400)
    assert any("positive semidefinite" in str(w.message) and "below" in str(w.message) for w in caught)
    S = _wishart(2000, 2)                     # enough eigenvalues: right, and quiet
    r = clean(np.linalg.eigvalsh(S[:500, :500]), size=2000)
    assert r.support[0] > 0
