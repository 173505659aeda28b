"""The inputs of users' bug reports, each with its right value (one test per kind of fault).

Each section is one kind: the smallest input that showed it, and its oracle (numpy at small n).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr

import bigspec
from bigspec.cli import main
from bigspec.errors import (
    GrowthWarning,
    IncompleteStoreError,
    InvalidMatrixError,
    NotPositiveDefiniteError,
    OverwriteWarning,
    SingularMatrixWarning,
    StoreExistsError,
    UnstableFactorizationError,
)
from bigspec.form import permutation
from bigspec.kernels import get_kernel
from bigspec.determinant import exact
from bigspec.store import open_matrix
from bigspec.testing import make_spd

LOCAL = ["--workers", "1", "--threads", "2", "--no-progress"]


def rbf(X, lengthscale):
    return get_kernel("rbf", lengthscale=lengthscale).block(X, X, diagonal=True)


def numpy_logdet(A):
    sign, logabsdet = np.linalg.slogdet(np.asarray(A, dtype=np.float64))
    return int(sign), float(logabsdet)


def digest(path) -> dict:
    """Every file under ``path`` with the sha256 of its bytes (to show nothing was changed)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run_main(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# -- 1. symmetry is checked on every input path --------------------------------------------------

ASYMMETRIC = np.array([[2.0, 1.0], [3.0, 2.0]])


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr", "npy"])
def test_asymmetric_matrix_is_refused_on_every_path(kind, tmp_path):
    A = {"numpy": lambda: ASYMMETRIC.copy(),
         "dask": lambda: da.from_array(ASYMMETRIC, chunks=1),
         "zarr": lambda: zarr.array(ASYMMETRIC, chunks=(1, 1)),
         "npy": lambda: (np.save(tmp_path / "A.npy", ASYMMETRIC), str(tmp_path / "A.npy"))[1]}[kind]()
    for entry in (lambda: bigspec.logdet(A), lambda: bigspec.slogdet(A),
                  lambda: bigspec.from_array(A, str(tmp_path / "K.zarr")),
                  lambda: bigspec.spectrum(A, sample_size=2)):
        with pytest.raises(InvalidMatrixError) as e:
            entry()
        msg = str(e.value)
        assert "not symmetric" in msg and "A[0, 1]" in msg and "= 2" in msg, msg   # the largest asymmetry, where
        assert "(A + A.T) / 2" in msg                    # the fix for a matrix that is nearly symmetric
    assert not (tmp_path / "K.zarr").exists()            # nothing written for a refused input


def test_numpy_and_dask_read_the_same_triangle():
    L = np.tril(make_spd(60, seed=3))                    # a matrix given as its lower triangle only
    full = L + np.tril(L, -1).T
    for A in (L, da.from_array(L, chunks=25)):
        with pytest.raises(InvalidMatrixError, match="triangle='lower'"):
            bigspec.logdet(A)
        r = bigspec.logdet(A, triangle="lower", tile_size=16)
        assert (r.sign, r.logabsdet) == pytest.approx(numpy_logdet(full), rel=1e-12)
    assert bigspec.logdet(L.T, triangle="upper").logabsdet == pytest.approx(numpy_logdet(full)[1], rel=1e-12)


def test_every_path_reads_the_lower_triangle_of_a_nearly_symmetric_matrix(tmp_path):
    A = make_spd(200, seed=3)
    B = A + np.triu(np.random.default_rng(1).standard_normal((200, 200)), 1) * 1e-12 * np.abs(A).max()
    lower = np.tril(B) + np.tril(B, -1).T            # within the tolerance: accepted, read as its lower triangle
    upper = np.triu(B) + np.triu(B, 1).T
    right, other = numpy_logdet(lower)[1], numpy_logdet(upper)[1]
    assert abs(right - other) > 1e-10                # the triangles differ by more than rounding
    z = zarr.create_array(str(tmp_path / "B.zarr"), shape=B.shape, chunks=(64, 64), dtype="float64")
    z[...] = B
    ms = bigspec.from_array(B, str(tmp_path / "K.zarr"), tile_size=50)
    assert np.array_equal(ms.read(0, 200, 0, 200), lower)
    for X in (B, da.from_array(B, chunks=64), z, ms):
        assert bigspec.logdet(X, tile_size=None if X is ms else 50).logabsdet == pytest.approx(right, abs=1e-12)


def test_cli_refuses_asymmetric_npy(tmp_path, capsys):
    np.save(tmp_path / "A.npy", ASYMMETRIC)
    assert run_main(["logdet", str(tmp_path / "A.npy"), *LOCAL]) == 1
    assert "not symmetric" in capsys.readouterr().err


# -- 2. unwritten chunks are never read as zeros ----------------------------------------------------

@pytest.fixture
def upper_chunks_only(tmp_path):
    """A plain zarr array, n = 600, chunks 200, with only its upper-triangle chunks written."""
    X = np.random.default_rng(0).uniform(size=(600, 2))
    K = rbf(X, 0.3) + 0.5 * np.eye(600)
    path = str(tmp_path / "ntk_upper.zarr")
    z = zarr.create_array(path, shape=(600, 600), chunks=(200, 200), dtype="float64", fill_value=0.0)
    for i in range(3):
        for j in range(i, 3):
            z[200 * i:200 * (i + 1), 200 * j:200 * (j + 1)] = K[200 * i:200 * (i + 1), 200 * j:200 * (j + 1)]
    return path, K


def test_unwritten_chunks_are_named(upper_chunks_only):
    path, K = upper_chunks_only
    block_diagonal = numpy_logdet(np.kron(np.eye(3), np.ones((200, 200))) * K)
    assert abs(block_diagonal[1] - numpy_logdet(K)[1]) > 10     # reading zeros would be far off
    for A in (path, zarr.open_array(path, mode="r")):
        with pytest.raises(IncompleteStoreError) as e:
            bigspec.logdet(A)
        msg = str(e.value)
        assert "3 of 9 needed chunks" in msg and "triangle='upper'" in msg, msg
        for chunk in ("(1, 0) rows 200:400, cols 0:200", "(2, 0)", "(2, 1) rows 400:600, cols 200:400"):
            assert chunk in msg
        assert "A + A.T" not in msg                     # would halve the off-diagonal blocks here


def test_upper_triangle_option_gives_the_full_matrix(upper_chunks_only, tmp_path):
    path, K = upper_chunks_only
    right = numpy_logdet(K)
    r = no_warnings(bigspec.logdet, path, triangle="upper")
    assert (r.sign, r.logabsdet) == pytest.approx(right, rel=1e-12)
    ms = bigspec.from_array(path, str(tmp_path / "K.zarr"), triangle="upper", tile_size=128)
    assert np.array_equal(ms.read(0, ms.n, 0, ms.n), K)
    r = bigspec.logdet(ms, memory="2MB")
    assert r.memory_budget < K.nbytes and r.logabsdet == pytest.approx(right[1], rel=1e-11)
    # the CLI takes the same option; its import refuses the array without it
    assert run_main(["import", path, str(tmp_path / "c.zarr")]) == 1
    assert run_main(["import", path, str(tmp_path / "c.zarr"), "--triangle", "upper"]) == 0
    assert np.array_equal(open_matrix(str(tmp_path / "c.zarr")).read(0, 600, 0, 600), K)


def test_missing_diagonal_chunk_is_an_error_even_with_a_triangle(upper_chunks_only):
    path, K = upper_chunks_only
    z2 = zarr.create_array(path + "2", shape=(600, 600), chunks=(200, 200), dtype="float64", fill_value=0.0)
    z2[:200, :] = K[:200, :]
    z2[200:400, 400:] = K[200:400, 400:]
    z2[400:, 400:] = K[400:, 400:]
    with pytest.raises(IncompleteStoreError, match=r"\(1, 1\)"):
        bigspec.logdet(path + "2", triangle="upper")
    # missing_chunks="fill" reads the fill value, as the user asked by name
    ms = bigspec.from_array(path + "2", path + "-copy", triangle="upper", missing_chunks="fill")
    K_fill = K.copy()
    K_fill[200:400, 200:400] = 0.0
    assert np.array_equal(ms.read(0, 600, 0, 600), K_fill)


# -- 3. nothing the user owns is deleted ----------------------------------------------------------

def test_import_into_a_folder_of_other_files_is_refused(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    np.save(results / "K.npy", make_spd(50, seed=0))
    (results / "notes.txt").write_text("my notes")
    before = digest(results)
    assert run_main(["import", str(results / "K.npy"), str(results)]) == 1
    err = capsys.readouterr().err
    assert "K.npy" in err and "-bigspec.zarr" in err                 # says why, suggests a sibling
    assert run_main(["import", str(results / "K.npy"), str(results), "--overwrite"]) == 1   # the input itself
    assert digest(results) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.txt").write_text("b")
    assert run_main(["import", str(results / "K.npy"), str(other)]) == 1
    assert (other / "b.txt").read_text() == "b"
    with pytest.raises(StoreExistsError, match="b.txt"):
        bigspec.from_array(np.load(results / "K.npy"), str(other))
    assert run_main(["import", str(results / "K.npy"), str(other), "--overwrite"]) == 0
    assert "b.txt" in capsys.readouterr().err                        # the warning lists what was replaced
    assert digest(results) == before


def test_overwrite_warning_lists_what_it_deletes(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "a.csv").write_text("1,2")
    with pytest.warns(OverwriteWarning, match="a.csv"):
        ms = bigspec.from_array(make_spd(20, seed=0), str(target), overwrite=True)
    assert ms.n == 20 and not (target / "a.csv").exists()


# -- 4. consolidated metadata stays consistent ----------------------------------------------------

@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_consolidated_store_checkpoint_twice_and_overwrite(tmp_path):
    A = make_spd(200, seed=2)
    right = numpy_logdet(A)
    path = str(tmp_path / "K.zarr")
    bigspec.from_array(A, path, tile_size=50)
    zarr.consolidate_metadata(path)
    for kwargs in ({}, {"checkpoint": True}, {"checkpoint": True}, {"checkpoint": True, "overwrite": True},
                   {"memory": "250kB", "overwrite": True}):
        r = bigspec.logdet(path, **kwargs)
        assert (r.sign, r.logabsdet) == pytest.approx(right, rel=1e-12)
    g = zarr.open_consolidated(path)                 # what a consolidated reader sees is current
    assert "factor" in g and "logdet-ldl" in g.attrs["bigspec"]["results"]
    assert g["factor"].attrs["bigspec_factor"]["complete"]


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_consolidated_store_form_resume(tmp_path):
    X = np.random.default_rng(0).uniform(size=(150, 2))
    path = str(tmp_path / "k.zarr")
    bigspec.form("rbf", X, path, tile_size=50, lengthscale=0.5)
    zarr.consolidate_metadata(path)
    ms = bigspec.form("rbf", X, path, tile_size=50, lengthscale=0.5)     # resume of a finished store
    K = rbf(X[permutation(150, 0)], 0.5)          # in form's seeded sample order
    assert np.allclose(ms.read(0, ms.n, 0, ms.n), K, rtol=1e-12)
    right = numpy_logdet(K + 1e-2 * np.eye(150))[1]
    assert bigspec.logdet(path, shift=1e-2, checkpoint=True).logabsdet == pytest.approx(right, rel=1e-10)
    assert zarr.open_consolidated(path)["factor"].attrs["bigspec_factor"]["complete"]
    bigspec.form("rbf", X, path, tile_size=50, lengthscale=0.5, overwrite=True)   # a new store
    assert bigspec.logdet(path, shift=1e-2, checkpoint=True).logabsdet == pytest.approx(right, rel=1e-10)
    assert bigspec.logdet(path, shift=1e-2, checkpoint=True).cached


# -- 5. fsspec URLs ---------------------------------------------------------------------------------

def test_file_and_memory_urls(tmp_path):
    A = make_spd(120, seed=4)
    right = numpy_logdet(A)
    url = (tmp_path / "data" / "run1" / "K.zarr").as_uri()          # file:///.../data/run1/K.zarr
    assert url.startswith("file:///")
    bigspec.from_array(A, url, tile_size=40)
    assert (tmp_path / "data" / "run1" / "K.zarr").is_dir()          # parents created, at the local path
    assert bigspec.logdet(url, memory="150kB").logabsdet == pytest.approx(right[1], rel=1e-12)
    bigspec.from_array(A, "memory://bigspec-test/K.zarr", tile_size=40, overwrite=True)
    assert bigspec.logdet("memory://bigspec-test/K.zarr").logabsdet == pytest.approx(right[1], rel=1e-12)


# -- 6. dask arrays with unknown chunk sizes ----------------------------------------------------

def test_boolean_indexed_dask_array():
    A = make_spd(300, seed=5)
    keep = np.random.default_rng(0).uniform(size=300) < 0.7
    D = da.from_array(A, chunks=64)
    mask = da.from_array(keep, chunks=64)       # a dask mask: sizes unknown until computed
    sub = D[mask][:, mask]
    assert np.isnan(sub.shape[0])
    r = bigspec.logdet(sub, tile_size=50)
    assert (r.sign, r.logabsdet) == pytest.approx(numpy_logdet(A[np.ix_(keep, keep)]), rel=1e-12)
    assert np.isnan(sub.shape[0])                                  # the user's array is not changed


# -- 7. float32 storage, float64 arithmetic --------------------------------------------------------

@pytest.fixture(scope="module")
def rbf32():
    X = np.random.default_rng(0).uniform(size=(1500, 2))
    K32 = rbf(X, 0.5).astype(np.float32)
    # the oracle: float64 logdet of the stored entries plus the exact shift
    right = numpy_logdet(K32.astype(np.float64) + 1e-4 * np.eye(1500))
    storage_error = abs(numpy_logdet(rbf(X, 0.5) + 1e-4 * np.eye(1500))[1] - right[1])
    return K32, right, storage_error


@pytest.mark.parametrize("method", ["cholesky", "ldl"])
def test_float32_store_is_factored_in_float64(rbf32, method, tmp_path):
    K32, right, storage_error = rbf32
    assert storage_error > 1e-3                       # float32 storage itself moves the logdet
    r = no_warnings(bigspec.logdet, K32, method=method, shift=1e-4, tile_size=256)
    assert r.sign == right[0] and abs(r.logabsdet - right[1]) < 1e-7
    ms = bigspec.from_array(K32, str(tmp_path / "K32.zarr"), tile_size=256)
    assert ms.dtype == np.float32 and ms.group["matrix"].dtype == np.float32    # stored as the user chose
    r = no_warnings(bigspec.logdet, ms, method=method, shift=1e-4, memory="8MB")
    assert r.super_panels >= 2 and r.memory_budget < K32.nbytes
    assert abs(r.logabsdet - right[1]) < 1e-7
    assert ms.group["factor/L"].dtype == np.float64


# -- 8. symmetric indefinite matrices, whatever their ordering ------------------------------------

def test_two_by_two_with_zero_diagonal():
    r = no_warnings(bigspec.logdet, np.array([[0.0, 1.0], [1.0, 1.0]]), tile_size=1)
    assert (r.sign, r.logabsdet) == (-1, pytest.approx(0.0, abs=1e-15))


def kkt(m, p, seed=0):
    """A saddle-point matrix [[0, B], [B', H]] with its m constraint rows first."""
    rng = np.random.default_rng(seed)
    H = rng.standard_normal((p, p))
    H = H @ H.T / p + np.eye(p)
    B = rng.standard_normal((m, p))
    return np.block([[np.zeros((m, m)), B], [B.T, H]])


@pytest.mark.parametrize("b", [64, 128])
def test_kkt_constraints_first_in_memory(b):
    K = kkt(100, 300)
    r = no_warnings(bigspec.logdet, K, tile_size=b)
    assert (r.sign, r.logabsdet) == pytest.approx(numpy_logdet(K), rel=1e-12)
    assert r.pivot_groups and r.pivot_groups[0][0] == 0            # pivoting across tiles was needed


def test_kkt_out_of_core_resumes(tmp_path, monkeypatch):
    K = kkt(50, 950)
    right = numpy_logdet(K)
    ms = bigspec.from_array(K, str(tmp_path / "kkt.zarr"), tile_size=50)
    r = no_warnings(bigspec.logdet, ms, memory="3MB")
    assert r.memory_budget < K.nbytes and r.super_panels >= 3
    assert (r.sign, r.logabsdet) == pytest.approx(right, rel=1e-12)
    assert r.pivot_groups[0][0] == 0 and r.pivot_groups[0][1] >= 100    # across the 50 constraint rows

    class Killed(Exception):
        pass

    def kill_after_first(k0, k1):
        raise Killed

    monkeypatch.setattr(exact, "_after_panel", kill_after_first)
    with pytest.raises(Killed):
        bigspec.logdet(ms, memory="3MB", checkpoint=True, overwrite=True)
    done = ms.group["factor"].attrs["bigspec_factor"]["columns_done"]
    assert 0 < done < ms.n_tiles
    monkeypatch.setattr(exact, "_after_panel", lambda k0, k1: None)
    r = bigspec.logdet(ms, memory="3MB", checkpoint=True)
    assert r.panels_computed < r.super_panels
    assert (r.sign, r.logabsdet) == pytest.approx(right, rel=1e-12)
    prefix = r.prefix_logdet
    assert np.isnan(prefix[99])          # inside the pivot group: not a leading minor, so no number
    for m in (200, 500, 1000):           # leading minors across the resumed panels
        assert prefix[m - 1] == pytest.approx(numpy_logdet(K[:m, :m])[1], rel=1e-10)


def test_kkt_refused_when_the_budget_cannot_hold_the_pivoting(tmp_path):
    K = kkt(100, 300)
    ms = bigspec.from_array(K, str(tmp_path / "kkt.zarr"), tile_size=50)
    with pytest.raises(UnstableFactorizationError) as e:
        bigspec.logdet(ms, memory="700kB")
    msg = str(e.value)
    assert "memory=" in msg and "constraint rows last" in msg
    # the advice works: the same matrix with its constraint rows last
    order = np.r_[100:400, 0:100]
    r = no_warnings(bigspec.logdet, K[np.ix_(order, order)], tile_size=50, memory="700kB")
    assert r.logabsdet == pytest.approx(numpy_logdet(K)[1], rel=1e-12)


def test_two_by_two_blocks_across_every_other_tile_edge():
    """[[0, 1], [1, 1e-3]] blocks on the diagonal with odd tiles: every other tile edge splits a block."""
    n = 300
    S = np.zeros((n, n))
    i = np.arange(0, n, 2)
    S[i, i + 1] = S[i + 1, i] = 1.0
    S[i + 1, i + 1] = 1e-3
    for memory in (None, "400kB"):          # 400 kB < the 720 kB matrix: several super-panels
        r = no_warnings(bigspec.logdet, S, tile_size=25, memory=memory)
        assert (r.sign, r.logabsdet) == (1, pytest.approx(0.0, abs=1e-12))   # det = (-1)^150
        assert r.pivot_groups
    assert r.super_panels >= 2 and r.memory_budget < S.nbytes


@pytest.mark.parametrize("memory", [None, "70kB", "100kB", "150kB", "200kB"])
def test_pivot_retries_end_with_a_value_or_an_error(memory):
    """2x2 blocks split by three consecutive tile edges: no group layout short of 4 tiles works."""
    S = 2.0 * np.eye(80)
    for r in (15, 31, 47):
        S[r, r], S[r, r + 1], S[r + 1, r], S[r + 1, r + 1] = 0.0, 1.0, 1.0, 1e-3
    try:
        r = bigspec.logdet(S, tile_size=16, memory=memory)
    except UnstableFactorizationError as e:
        assert "memory=" in str(e)
    else:
        assert (r.sign, r.logabsdet) == pytest.approx(numpy_logdet(S), rel=1e-12)


def test_hollow_block_matrix_in_any_order():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((60, 60))
    A = np.block([[np.zeros((60, 60)), B], [B.T, np.zeros((60, 60))]])
    for perm in (np.arange(120), rng.permutation(120)):
        P = A[np.ix_(perm, perm)]
        r = no_warnings(bigspec.logdet, P, tile_size=16)
        assert (r.sign, r.logabsdet) == pytest.approx(numpy_logdet(P), rel=1e-12)


def test_exactly_singular_is_minus_inf_with_a_warning():
    A = make_spd(80, seed=1)
    A[30, :] = A[:, 30] = 0.0
    with pytest.warns(SingularMatrixWarning, match="shift="):
        r = bigspec.logdet(A, tile_size=16)
    assert (r.sign, r.logabsdet) == (0, -np.inf)


# -- 9. numerically singular matrices say so ------------------------------------------------------

def test_rank_deficient_linear_kernel_warns_under_ldl():
    X = np.random.default_rng(0).standard_normal((2000, 5))
    K = X @ X.T                                       # rank 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = bigspec.logdet(K)
    singular = [w for w in caught if issubclass(w.category, SingularMatrixWarning)]
    assert len(singular) == 1 and not any(issubclass(w.category, GrowthWarning) for w in caught)
    msg = str(singular[0].message)
    assert "numerically singular" in msg and "shift=" in msg
    ratio = r.min_abs_d / r.max_abs_d
    assert ratio < 1e-12 and f"{ratio:.3g}" in msg
    with pytest.raises(NotPositiveDefiniteError, match="shift="):
        bigspec.logdet(K, method="cholesky")


def test_tiny_pivot_under_cholesky_warns():
    with pytest.warns(SingularMatrixWarning, match="1e-20"):
        r = bigspec.logdet(np.diag([1.0, 1e-20]), method="cholesky")
    assert r.logabsdet == pytest.approx(np.log(1e-20))


def test_rbf_of_even_points_is_singular_not_unstable():
    X = np.linspace(0, 1, 100)[:, None]
    K = rbf(X, 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bigspec.logdet(K, tile_size=10)
    kinds = {w.category for w in caught}
    assert SingularMatrixWarning in kinds and GrowthWarning not in kinds
    # with a ridge it is an ordinary matrix: no warning, numpy's value
    r = no_warnings(bigspec.logdet, K, tile_size=10, shift=1e-3)
    assert r.logabsdet == pytest.approx(numpy_logdet(K + 1e-3 * np.eye(100))[1], rel=1e-10)


def test_well_conditioned_matrices_raise_no_warning():
    for method in ("ldl", "cholesky"):
        A = make_spd(200, seed=7)
        r = no_warnings(bigspec.logdet, A, method=method, tile_size=32)
        assert r.logabsdet == pytest.approx(numpy_logdet(A)[1], rel=1e-12)


def test_failed_run_leaves_no_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    A = make_spd(200, seed=1)
    A[150, 150] = -1e3                                  # not positive definite, found in a late panel
    with pytest.raises(NotPositiveDefiniteError):
        bigspec.logdet(da.from_array(A, chunks=50), method="cholesky", memory="150kB", tile_size=25)
    assert [p for p in os.listdir(tmp_path) if p.startswith("bigspec-")] == []


# -- 10. degenerate spectra (see also test_spectrum_degenerate.py) --------------------------------

def test_issue_spectra():
    r = no_warnings(bigspec.free_decompress, np.ones(500), size=2000)
    assert r.atoms == [(1.0, 1.0)] and r.settings["regime"] == "point-mass"
    X = np.random.default_rng(0).uniform(size=(400, 2))
    r = bigspec.spectrum(rbf(X, 1e-4), sample_size=100, n_samples=2)    # numerically the identity
    assert r.atoms == [(pytest.approx(1.0), 1.0)] and r.trace == pytest.approx(400.0)


# -- 11 / 12. the README's API lines, torch optional -------------------------------------------------

def test_kernel_classes_are_exported_lazily():
    code = ("import sys, bigspec, bigspec.kernels as k; assert 'torch' not in sys.modules; "
            "print(k.RBF.__name__, k.Attention.__name__, 'torch' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["RBF", "Attention", "False"]


@pytest.mark.ntk
def test_empirical_ntk_as_the_issue_names_it():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).double()
    k = bigspec.kernels.NTK(model, n_outputs=10)
    X = np.random.default_rng(0).standard_normal((5, 3))
    K = k.block(X, X, diagonal=True)
    # oracle: J J^T from torch's own Jacobian, rows (sample, output)
    params = dict(model.named_parameters())

    def f(p, x):
        return torch.func.functional_call(model, p, (x,))

    J = torch.func.jacrev(f)(params, torch.as_tensor(X))
    J = torch.cat([j.detach().reshape(50, -1) for j in J.values()], dim=1).numpy()
    assert K.shape == (50, 50) and np.allclose(K, J @ J.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("zero_at", [599, 300])
def test_exactly_singular_out_of_core_is_minus_inf(zero_at):
    """A zero row (the last, or one inside) of a matrix factored under a budget: (0, -inf) with the
    singular warning, as in memory, not an error advising more memory (found by the new-user trial)."""
    Z = np.eye(600)
    Z[zero_at, zero_at] = 0.0
    with pytest.warns(bigspec.SingularMatrixWarning, match=f"exactly singular.*row {zero_at}"):
        r = bigspec.logdet(Z, tile_size=100, memory="1MB")
    assert tuple(r) == (0, -np.inf) and r.super_panels > 1
    assert tuple(bigspec.logdet(Z, tile_size=100, memory="1MB", shift=1.0)) == pytest.approx(
        (1, np.log(1.0) * 599 + np.log(2.0) * 599 + np.log(1.0)))
