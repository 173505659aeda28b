"""Free decompression and spectrum sampling, checked against analytic laws and eigvalsh."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import integrate

import bigspec
from bigspec.errors import InvalidMatrixError
from bigspec.spectra import DecompressionWarning, InvalidSpectrumError, free_decompress
from bigspec.spectra.chebyshev import ChebyshevDensity
from bigspec.spectra.laws import MarchenkoPastur, Wigner
from bigspec.spectra.metrics import l1, wasserstein1
from bigspec.spectra.sample import RandomOrderWarning


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecompressionWarning)
        yield


# -- the laws themselves ------------------------------------------------------------------

@pytest.mark.parametrize("law", [Wigner(1.0), Wigner(2.5, center=1.0), MarchenkoPastur(0.02), MarchenkoPastur(0.5),
                                 MarchenkoPastur(2.0, variance=3.0)])
def test_law_is_a_distribution_with_its_stieltjes_transform(law):
    lo, hi = law.support
    mass = integrate.quad(law.density, lo, hi, limit=200)[0] + (law.atom[1] if law.atom else 0)
    assert mass == pytest.approx(1.0, abs=1e-7)
    z = (lo + hi) / 2 + 0.3j * (hi - lo)
    num = integrate.quad(lambda x: (law.density(x) / (x - z)).real, lo, hi, limit=200)[0] + \
        1j * integrate.quad(lambda x: (law.density(x) / (x - z)).imag, lo, hi, limit=200)[0]
    if law.atom:
        num += law.atom[1] / (law.atom[0] - z)
    assert law.stieltjes(z) == pytest.approx(num, rel=1e-7)
    assert law.cdf(hi + 1) == pytest.approx(1.0, abs=1e-9)
    p = np.array([0.05, 0.3, 0.7, 0.95])
    F = law.cdf(law.quantile(p))
    assert np.all(F >= p - 1e-6)  # a jump at the atom covers every p below its mass
    above = p > (law.atom[1] if law.atom else 0)
    assert F[above] == pytest.approx(p[above], abs=1e-6)


def test_laws_decompress_by_their_free_cumulants():
    # mean preserved, variance times alpha (science.md 3.1)
    for law in (Wigner(1.3), MarchenkoPastur(0.1, 2.0)):
        big = law.decompress(8)
        assert big.mean == pytest.approx(law.mean, abs=1e-9)
        assert big.variance == pytest.approx(8 * law.variance, rel=1e-8)
    mp = MarchenkoPastur(1 / 50).decompress(32)
    assert mp.support == pytest.approx((0.04, 3.24), abs=1e-12)
    assert MarchenkoPastur(0.5).decompress(4).atom == pytest.approx((0.0, 0.5))


def test_law_matrices_have_the_law():
    for law in (Wigner(2.0), MarchenkoPastur(0.3)):
        assert wasserstein1(law, law.eigenvalues(1500, seed=3)) < 0.02 * np.sqrt(law.variance)


def test_principal_submatrix_of_a_wishart_matrix_is_a_wishart_matrix():
    full = MarchenkoPastur(0.25).matrix(2000, seed=0)  # ratio of the full matrix
    sub = np.linalg.eigvalsh(full[:500, :500])
    assert wasserstein1(MarchenkoPastur(0.25).decompress(0.25), sub) < 0.01


# -- the Chebyshev density ------------------------------------------------------------------

def test_chebyshev_stieltjes_and_hilbert_are_exact_for_the_series():
    rng = np.random.default_rng(0)
    rho = ChebyshevDensity(-1.0, 3.0, np.r_[2 / np.pi, 0.1 * rng.standard_normal(12)])
    x = np.linspace(-0.99, 2.99, 7)
    for z in (0.5 + 0.7j, 4.0 + 0.01j, -2.0 - 1.0j):
        re = integrate.quad(lambda s: (rho.density(np.array([s]))[0] / (s - z)).real, -1, 3, limit=400)[0]
        im = integrate.quad(lambda s: (rho.density(np.array([s]))[0] / (s - z)).imag, -1, 3, limit=400)[0]
        assert rho.stieltjes(np.array([z]))[0] == pytest.approx(re + 1j * im, rel=1e-8)
    assert rho.hilbert(x) == pytest.approx(rho.stieltjes(x + 1e-10j).real, abs=1e-6)
    m, dm = rho.stieltjes(np.array([1 + 0.5j]), derivative=True)
    h = 1e-6
    assert dm[0] == pytest.approx((rho.stieltjes(np.array([1 + 0.5j + h]))[0] -
                                   rho.stieltjes(np.array([1 + 0.5j - h]))[0]) / (2 * h), rel=1e-6)


# -- free decompression against the oracles ------------------------------------------------

@pytest.mark.parametrize("alpha", [8, 32])
def test_wigner_decompresses_to_the_wider_semicircle(alpha):
    law = Wigner(1.0)
    r = free_decompress(law.eigenvalues(1000, seed=1), size=1000 * alpha)
    target = law.decompress(alpha)
    assert wasserstein1(r, target) < 0.01 * np.sqrt(alpha)  # W1 < 1% of the spread
    assert l1(r, target) < 0.03
    assert r.variance == pytest.approx(alpha, rel=0.02)
    assert r.support == pytest.approx(target.support, abs=0.05 * np.sqrt(alpha))
    assert r.diagnostics["converged_fraction"] == 1.0


@pytest.mark.parametrize("seed", [100, 42])
def test_glue_is_not_fooled_by_sample_noise(seed):
    # on these GOE samples a far pole (pole-left) halves the linear glue's residual by fitting
    # the sample's own fluctuation; taken as the glue it bends the 32x semicircle (W1 0.095 at seed 100)
    law = Wigner(1.0)
    r = free_decompress(law.eigenvalues(1000, seed=seed), size=32_000)
    rms = r.diagnostics["glue_rms_by_model"]
    assert rms["linear"] > 1.2 * min(rms.values())  # the noise really does favour a pole here
    assert r.settings["glue"] == "linear"
    assert wasserstein1(r, law.decompress(32)) < 0.01 * np.sqrt(32)
    # a real pole (Marchenko-Pastur's at 0) still wins by far
    mp = free_decompress(MarchenkoPastur(1 / 50).eigenvalues(1000, seed=seed), size=32_000)
    assert mp.settings["glue"] in ("pole-left", "pole-at-0")
    assert abs(mp.diagnostics["glue"]["poles"][0]) < 0.05


@pytest.mark.parametrize("ratio", [1 / 50, 0.3])
def test_glue_of_an_exact_marchenko_pastur_sample_is_its_own(ratio):
    # MP's glue is m_I + m_II = -1 / ratio + (1 - ratio) / (ratio z) (variance 1). Fitted to the
    # undamped series it is exact; the Jackson-damped series would be off by ~1.5% at K = 16
    law = MarchenkoPastur(ratio)
    sample = law.quantile((np.arange(4000) + 0.5) / 4000)  # the law itself, no sampling noise
    for glue in ("pole-left", "auto"):
        g = free_decompress(sample, size=8000, glue=glue).diagnostics["glue"]
        assert g["c"] == pytest.approx(-1 / ratio, rel=2e-3)
        assert g["residues"][0] == pytest.approx((1 - ratio) / ratio, rel=2e-3)
        assert abs(g["poles"][0]) < 2e-3 * (law.support[1] - law.support[0])


@pytest.mark.parametrize("shift", [0.3, 1.0])
def test_pole_fixed_at_zero_only_where_the_rank_boundary_is(shift):
    eig = MarchenkoPastur(1 / 50).eigenvalues(1000, seed=7)
    assert free_decompress(eig, size=32_000).settings["glue"] == "pole-at-0"
    # the same spectrum shifted (a ridge): its pole moves to +shift, and fixing it at 0 would be wrong
    shifted = free_decompress(eig + shift, size=32_000)
    assert shifted.settings["glue"] == "pole-left"
    assert shifted.diagnostics["glue"]["poles"][0] == pytest.approx(shift, abs=0.08)
    target = MarchenkoPastur(1 / 50).decompress(32)
    assert shifted.mean == pytest.approx(target.mean + shift, rel=0.01)
    # and a GOE spectrum (not positive) never gets it
    assert free_decompress(Wigner(1.0).eigenvalues(1000, seed=7) + 10.0, size=8000).settings["glue"] == "linear"


@pytest.mark.parametrize("ratio,alpha,w1,l1_max", [(1 / 50, 8, 0.003, 0.01), (1 / 50, 32, 0.005, 0.015),
                                                    (0.1, 8, 0.005, 0.03)])
def test_marchenko_pastur_decompresses_to_the_larger_ratio(ratio, alpha, w1, l1_max):
    law = MarchenkoPastur(ratio)
    eig = law.eigenvalues(1000, seed=2)
    r = free_decompress(eig, size=1000 * alpha)
    target = law.decompress(alpha)
    assert wasserstein1(r, target) < w1
    assert l1(r, target) < l1_max
    assert r.atoms == []
    # and it is a real gain over reading the sample as the answer
    assert wasserstein1(r, target) < 0.1 * wasserstein1(eig, target)


def test_support_changes_shape_and_an_atom_appears():
    # ratio 0.5 -> 2: the decompressed matrix is rank deficient, with an atom of mass 1/2 at 0
    law = MarchenkoPastur(0.5)
    r = free_decompress(law.eigenvalues(1000, seed=4), size=4000)
    target = law.decompress(4)
    assert len(r.atoms) == 1
    loc, mass = r.atoms[0]
    assert mass == pytest.approx(0.5, abs=0.015)
    assert loc == 0.0  # a positive semidefinite matrix loses rank at exactly 0
    assert wasserstein1(r, target) < 0.03
    assert l1(r, target) < 0.03


@pytest.mark.parametrize("alpha", [4, 8])
def test_rank_deficient_sample_keeps_its_rank(alpha):
    law = MarchenkoPastur(2.0)  # half the sample's eigenvalues are 0
    r = free_decompress(law.eigenvalues(1000, seed=5), size=1000 * alpha)
    target = law.decompress(alpha)  # ratio 2 alpha: atom 1 - 1 / (2 alpha), bulk on (1 +- sqrt(2 alpha))^2
    assert r.atoms == [pytest.approx((0.0, 1 - 0.5 / alpha), abs=1e-9)]
    # the continuous part too: the glue carries the atom's pole at 0 as known (m_II is regular
    # there), and what is left of MP's glue, -1 / ratio + (1 - ratio) / (ratio z), is a constant
    assert r.settings["glue"] == "constant"
    assert r.diagnostics["glue"]["c"] == pytest.approx(-1.0, abs=0.02)
    assert wasserstein1(r, target) < 0.005
    assert l1(r, target) < 0.003
    assert r.support == pytest.approx(target.support, rel=0.03)
    assert r.diagnostics["converged_fraction"] == 1.0


def test_against_eigvalsh_of_an_actual_full_matrix():
    full = MarchenkoPastur(0.2).matrix(4000, seed=6)
    exact = np.linalg.eigvalsh(full)
    sub = np.linalg.eigvalsh(full[:500, :500])
    r = free_decompress(sub, size=4000)
    assert wasserstein1(r, exact) < 0.01
    assert wasserstein1(r, exact) < 0.2 * wasserstein1(sub, exact)
    sign, ld = r.logdet()
    exact_ld = np.sum(np.log(exact))
    assert sign == 1 and ld == pytest.approx(exact_ld, rel=0.02)  # log amplifies the lower edge


def test_identity_at_the_sample_size():
    eig = Wigner(1.0).eigenvalues(1000, seed=7)
    r = free_decompress(eig, size=1000)
    assert r.alpha == 1
    fit = ChebyshevDensity.from_samples(eig, *r.settings["support"], r.settings["degree"])
    inside = (r.x > fit.lo) & (r.x < fit.hi)
    assert r.density[inside] == pytest.approx(fit.density(r.x[inside]), rel=1e-3, abs=1e-6)
    assert wasserstein1(r, eig) < 0.01


def test_pooled_samples_keep_the_base_size():
    law = MarchenkoPastur(0.05)
    samples = [law.eigenvalues(500, seed=s) for s in range(4)]
    r = free_decompress(samples, size=4000)
    assert (r.sample_size, r.n_samples, r.alpha) == (500, 4, 8)
    assert wasserstein1(r, law.decompress(8)) < 0.01


def test_result_methods_agree_with_each_other():
    law = MarchenkoPastur(0.02)
    r = free_decompress(law.eigenvalues(800, seed=8), size=6400)
    q = r.quantiles([0.1, 0.5, 0.9])
    assert np.all(np.diff(q) > 0)
    assert r.cdf(q) == pytest.approx([0.1, 0.5, 0.9], abs=2e-3)
    m = r.moments(3)
    t = law.decompress(8)
    assert m[0] == pytest.approx(t.mean, rel=0.01)
    assert m[1] == pytest.approx(t.moment(2), rel=0.02)
    sign, ld = r.logdet()
    assert ld == pytest.approx(6400 * t.mean_log(), rel=0.03)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["size"] == 6400 and "x" not in d and "density" not in d
    d = r.to_dict(grid=True)
    assert len(d["x"]) == len(d["density"]) == r.settings["grid"]
    assert "glue" in d["diagnostics"] and "SpectrumResult" in repr(r)


def test_plot_linear_and_log(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    r = free_decompress(MarchenkoPastur(0.1).eigenvalues(500, seed=0), size=2000)
    ax = r.plot()
    assert len(ax.lines) == 1 and len(ax.patches) > 0
    ax = r.plot(log=True)
    assert ax.get_xlabel().startswith("log10")
    ax.figure.savefig(tmp_path / "s.png")


# -- kernel spectra: the heavy-tailed regime -------------------------------------------------

def test_kernel_spectrum_kernel_regime_beats_the_sample():
    from bigspec.kernels import get_kernel

    X = np.random.default_rng(0).standard_normal((2000, 4))
    K = get_kernel("matern", nu=1.5, lengthscale=1.0).block(X, X, diagonal=True)
    exact = np.linalg.eigvalsh(K)
    r = bigspec.spectrum(kernel="matern", X=X, sample_size=250, n_samples=2, seed=1, nu=1.5, lengthscale=1.0)
    # chosen by the held-out check: bulk free decompression misses the samples' own spectrum by ~1 decade
    held = r.diagnostics["held_out_by_regime"]
    assert r.settings["regime"] == "kernel" and held["kernel"] < 0.2 < 1.0 < held["bulk"]
    # the sampled blocks are exactly the seeded subsets
    order = np.random.default_rng(np.random.SeedSequence(1)).permutation(2000)
    idx = np.sort(order[:250])
    assert np.sort(r.eigenvalues)[-1] == pytest.approx(max(np.linalg.eigvalsh(K[np.ix_(idx, idx)]).max(),
                                                          np.linalg.eigvalsh(K[np.ix_(*[np.sort(order[250:500])] * 2)]).max()))
    assert wasserstein1(r, exact) < 0.5 * wasserstein1(r.eigenvalues, exact)
    assert r.moments(1)[0] == pytest.approx(1.0, rel=0.1)  # trace per row


# -- sampling from stores ---------------------------------------------------------------------

def _wishart_store(path, tile_size, seed=0):
    A = MarchenkoPastur(0.1).matrix(1200, seed=seed)
    return bigspec.from_array(A, str(path), tile_size=tile_size, overwrite=True), A


def test_spectrum_of_a_store_reads_its_diagonal_blocks(tmp_path):
    ms, A = _wishart_store(tmp_path / "w.zarr", 128)
    r = bigspec.spectrum(str(tmp_path / "w.zarr"), sample_size=300, n_samples=3, seed=0)
    expect = np.concatenate([np.linalg.eigvalsh(A[j * 300:(j + 1) * 300, j * 300:(j + 1) * 300]) for j in range(3)])
    assert np.sort(r.eigenvalues) == pytest.approx(np.sort(expect), abs=1e-12)
    assert (r.size, r.sample_size, r.n_samples, r.seed) == (1200, 300, 3, 0)
    assert wasserstein1(r, np.linalg.eigvalsh(A)) < 0.02


def test_independent_of_tile_size_and_workers(tmp_path):
    from distributed import Client, LocalCluster

    _wishart_store(tmp_path / "a.zarr", 100)
    _wishart_store(tmp_path / "b.zarr", 256)
    ra = bigspec.spectrum(str(tmp_path / "a.zarr"), sample_size=400, n_samples=2)
    rb = bigspec.spectrum(str(tmp_path / "b.zarr"), sample_size=400, n_samples=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        rc = bigspec.spectrum(str(tmp_path / "a.zarr"), sample_size=400, n_samples=2, client=client)
    # tiles are assembled exactly: the same blocks, bit for bit
    assert np.array_equal(ra.eigenvalues, rb.eigenvalues)
    assert np.array_equal(ra.density, rb.density)
    # worker processes run eigvalsh with their own BLAS threading: equal to rounding
    assert rc.eigenvalues == pytest.approx(ra.eigenvalues, abs=1e-12)
    assert rc.density == pytest.approx(ra.density, abs=1e-6 * ra.density.max())


def test_bad_input_is_named(tmp_path):
    eig = Wigner(1.0).eigenvalues(200, seed=0)
    with pytest.raises(InvalidSpectrumError, match="smaller than the sample size"):
        free_decompress(eig, size=100)
    with pytest.raises(InvalidSpectrumError, match="complex"):
        free_decompress(eig + 1j, size=400)
    bad = eig.copy()
    bad[3] = np.nan
    with pytest.raises(InvalidSpectrumError, match="NaN"):
        free_decompress(bad, size=400)
    A = np.arange(16.0).reshape(4, 4)
    bigspec.from_array(A, str(tmp_path / "ns.zarr"), tile_size=2, symmetric=False)
    with pytest.raises(InvalidMatrixError, match="non-symmetric"):
        bigspec.spectrum(str(tmp_path / "ns.zarr"), sample_size=2)
    _wishart_store(tmp_path / "w.zarr", 128)
    with pytest.raises(InvalidSpectrumError, match="use sample_size=600 or n_samples=1 or less"):
        bigspec.spectrum(str(tmp_path / "w.zarr"), sample_size=700, n_samples=2)
    with pytest.raises(TypeError, match="either a matrix A"):
        bigspec.spectrum()


def test_unshuffled_store_warns(tmp_path):
    X = np.random.default_rng(0).standard_normal((300, 3))
    bigspec.form("rbf", X, str(tmp_path / "k.zarr"), tile_size=64, shuffle=False, lengthscale=3.0)
    with pytest.warns(RandomOrderWarning, match="shuffle=False"):
        bigspec.spectrum(str(tmp_path / "k.zarr"), sample_size=100)


def test_cli_spectrum(tmp_path):
    from click.testing import CliRunner

    from bigspec.cli import cli

    _wishart_store(tmp_path / "w.zarr", 128)
    out = CliRunner().invoke(cli, ["spectrum", str(tmp_path / "w.zarr"), "--sample-size", "400", "--samples", "2",
                                   "--plot", str(tmp_path / "s.png"), "--json", "--workers", "1"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output[out.output.index("{"):])
    assert d["size"] == 1200 and d["n_samples"] == 2
    assert (tmp_path / "s.png").stat().st_size > 1000
    out = CliRunner().invoke(cli, ["spectrum", str(tmp_path / "w.zarr"), "--sample-size", "400", "--samples", "2",
                                   "--workers", "1"])
    assert "support" in out.output


def test_kernel_rows_per_sample_and_one_home_per_option():
    """Decompression options are spectrum's own keywords; kernel parameters go to the kernel. A kernel
    with several rows per data point (attention, pool='none': one row per token) is sampled in data
    points and decompressed in matrix rows."""
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((60, 3, 2))
    r = bigspec.spectrum(kernel="attention", X=tokens, sample_size=20, n_samples=2, pool="none", n_draws=64)
    assert r.size == 180 and r.sample_size == 60 and r.eigenvalues.size == 120
    X = rng.standard_normal((400, 3))
    r = bigspec.spectrum(kernel="rbf", X=X, sample_size=100, n_samples=2, degree=20, regime="bulk",
                         lengthscale=3.0)
    assert r.settings["degree"] == 20 and r.settings["regime"] == "bulk"
    with pytest.raises(TypeError, match="kernel parameters apply with kernel="):
        bigspec.spectrum(np.eye(10), sample_size=4, lengthscale=3.0)
    with pytest.raises(bigspec.kernels.KernelParameterError, match="unknown parameter"):
        bigspec.spectrum(kernel="rbf", X=X, sample_size=100, bogus=1)


def test_kronecker_store_spectrum_describes_the_whole_matrix_like_logdet(tmp_path):
    """A store of K (x) I_d: the density is K's, and trace and logdet() are those of the whole matrix, as
    bigspec.logdet reports it; a heavy-tailed logdet() warns that it is an extrapolation."""
    import warnings

    X = np.random.default_rng(0).random((800, 4))
    K = bigspec.form("relu", X, str(tmp_path / "r.zarr"), depth=2, n_outputs=10, tile_size=200)
    r = bigspec.spectrum(K, sample_size=200, n_samples=2, regime="bulk")
    Kn = K.read(0, 800, 0, 800)
    assert r.kron_outputs == 10 and r.size == 800 and r.matrix_rows == 8000
    assert "K (x) I_10 (8000 x 8000)" in repr(r) and r.to_dict()["matrix_rows"] == 8000
    sample_mean = np.mean(np.concatenate([np.linalg.eigvalsh(Kn[:200, :200]), np.linalg.eigvalsh(Kn[200:400, 200:400])]))
    assert r.trace == pytest.approx(10 * 800 * sample_mean, rel=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecompressionWarning)     # the bulk regime: no extrapolation warning
        try:
            sign, ld = r.logdet()
        except DecompressionWarning:
            pytest.fail("logdet() warned in the bulk regime")
    assert sign == 1 and ld == pytest.approx(10 * r._logdet()[1], rel=1e-12)
    heavy = bigspec.spectrum(K, sample_size=200, n_samples=2, regime="heavy-tailed")
    with pytest.warns(DecompressionWarning, match="heavy-tailed regime.*bigspec.logdet gives the exact value"):
        heavy.logdet()
    exact = bigspec.logdet(K).logabsdet
    assert exact == pytest.approx(10 * np.linalg.slogdet(Kn)[1], rel=1e-12)
    assert heavy.logdet()[1] == pytest.approx(exact, rel=0.2)           # the same matrix, within its error
