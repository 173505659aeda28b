"""bigspec.form: permutation, resume, determinism across workers, distributed, CLI, bad input."""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from distributed import Client
from distributed.utils_test import gen_cluster

import bigspec
from bigspec.errors import KernelError, NonFiniteError, StoreExistsError, StoreNotFoundError
from bigspec.form import form_tile, permutation
from bigspec.kernels import ReLU
from bigspec.testing import assert_logdet_close

X0 = np.random.default_rng(0).standard_normal((90, 5))


def test_permutation_is_recorded_and_leading_blocks_follow_it(tmp_path):
    ms = bigspec.form("relu", X0, str(tmp_path / "K.zarr"), tile_size=16, seed=7, depth=2)
    perm = ms.group["permutation"][:]
    np.testing.assert_array_equal(perm, permutation(90, 7))
    assert sorted(perm) == list(range(90)) and not np.array_equal(perm, np.arange(90))
    assert ms.attrs["permutation"] == {"seed": 7, "shuffle": True}
    K = ms.to_dask().compute()
    ref = ReLU(depth=2)(X0[perm], X0[perm], diagonal=True)
    for m in (1, 16, 40, 90):  # leading submatrices are the kernel of the first m permuted points
        np.testing.assert_allclose(K[:m, :m], ref[:m, :m], rtol=1e-13)
    np.testing.assert_array_equal(ms.group["data"][:], X0[perm])
    plain = bigspec.form("relu", X0, str(tmp_path / "P.zarr"), tile_size=16, shuffle=False, depth=2)
    np.testing.assert_array_equal(plain.group["permutation"][:], np.arange(90))


def test_resume_computes_only_missing_tiles(tmp_path):
    path = str(tmp_path / "K.zarr")
    ms = bigspec.form("matern", X0, path, tile_size=20, nu=2.5)
    full = ms.to_dask().compute()
    assert ms.attrs["formed_tiles"] == 15
    # an interrupted form: three tiles never written
    for i, j in [(4, 0), (3, 3), (2, 1)]:
        os.remove(os.path.join(path, "matrix", "c", str(i), str(j)))
    again = bigspec.form("matern", X0, path, tile_size=20, nu=2.5)
    assert again.attrs["formed_tiles"] == 3 and again.missing_tiles() == []
    np.testing.assert_array_equal(again.to_dask().compute(), full)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        bigspec.form("matern", X0, path, tile_size=20, nu=1.5)
    assert bigspec.form("matern", X0, path, tile_size=20, nu=1.5, overwrite=True).attrs["formed_tiles"] == 15


TILE_CODE = """
import hashlib, sys, numpy as np, bigspec
from bigspec.form import form_tile
ms = bigspec.open_matrix(sys.argv[1])
k = bigspec.kernels.get_kernel(ms.attrs["kernel"]["name"], **ms.attrs["kernel"]["params"])
class Sink:
    chunks = ms.matrix.chunks
    def __setitem__(self, key, value):
        self.value = value
sink = Sink()
form_tile(k, ms.group["data"], sink, 3, 1, (60, 80), (20, 40), np.float64, "cpu")
print(hashlib.sha256(sink.value.tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_a_tile_is_bit_identical_whichever_process_and_thread_count(tmp_path):
    path = str(tmp_path / "K.zarr")
    ms = bigspec.form("relu", np.random.default_rng(1).standard_normal((100, 300)), path, tile_size=20, depth=3)
    stored = hashlib.sha256(np.ascontiguousarray(ms.matrix[60:80, 20:40]).tobytes()).hexdigest()
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", TILE_CODE, path], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert digests == {stored}


GEN_X = np.random.default_rng(2).random((120, 3))


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], clean_kwargs={"threads": False})
async def test_form_on_two_workers(c, s, a, b):
    def run():
        with Client(s.address) as client:
            ms = bigspec.form("rbf", GEN_X, "memory://form-gen.zarr", tile_size=16, lengthscale=0.3,
                              overwrite=True, client=client, progress=False)
            return ms, bigspec.logdet(ms, client=client, progress=False)

    with ThreadPoolExecutor(1) as pool:
        ms, r = await asyncio.get_running_loop().run_in_executor(pool, run)
    K = ms.to_dask().compute(scheduler="threads")
    perm = ms.group["permutation"][:]
    d2 = ((GEN_X[perm][:, None] - GEN_X[perm][None]) ** 2).sum(-1)
    np.testing.assert_allclose(K, np.exp(-d2 / (2 * 0.3 ** 2)), rtol=1e-12, atol=1e-14)
    assert all(w.state.executed_count > 0 for w in (a, b))
    assert_logdet_close(r, K, rtol=1e-9)


def test_kronecker_kernel_logdet_counts_every_output(tmp_path):
    ms = bigspec.form("relu", X0, str(tmp_path / "K.zarr"), tile_size=32, n_outputs=10, depth=2)
    assert ms.n == 90  # K is stored once, not K (x) I_10
    K = ms.to_dask().compute()
    r = bigspec.logdet(ms, method="cholesky")
    assert r.kron_outputs == 10
    assert r.logabsdet == pytest.approx(10 * np.linalg.slogdet(K)[1], rel=1e-12)
    assert r.prefix_logdet[39] == pytest.approx(10 * np.linalg.slogdet(K[:40, :40])[1], rel=1e-12)


def test_bad_input(tmp_path):
    X = X0.copy()
    X[17, 2] = np.nan
    with pytest.raises(NonFiniteError, match="row 17"):
        bigspec.form("rbf", X, str(tmp_path / "a.zarr"))
    with pytest.raises(KernelError, match=r"shape \(n_samples, n_features\)"):
        bigspec.form("rbf", np.zeros((4, 3, 2)), str(tmp_path / "b.zarr"))
    with pytest.raises(KernelError, match="unknown kernel"):
        bigspec.form("laplace", X0, str(tmp_path / "c.zarr"))
    with pytest.raises(KernelError, match="unknown parameter"):
        bigspec.form("matern", X0, str(tmp_path / "d.zarr"), length_scale=1.0)
    assert not os.path.exists(tmp_path / "a.zarr")  # nothing half-written on bad input


def test_data_path_that_is_missing_or_holds_no_data_points(tmp_path):
    """A path as X is checked before anything is written: a missing one names the path and X (a
    FileNotFoundError too), one that holds no data points says what it holds; nothing appears at the store."""
    store = tmp_path / "K.zarr"
    missing = tmp_path / "no" / "such.npy"
    with pytest.raises(StoreNotFoundError, match=rf"the data file {missing} \(X\) does not exist; X must be a "
                                                 rf"\.npy file") as e:
        bigspec.form("rbf", str(missing), str(store))
    assert isinstance(e.value, FileNotFoundError) and e.value.path == str(missing)
    assert "DATA" in e.value.cli_message() and "(X)" not in e.value.cli_message()    # `bigspec form KERNEL DATA`
    with pytest.raises(FileNotFoundError, match=r"such\.zarr \(X\) does not exist"):
        bigspec.form("rbf", tmp_path / "such.zarr", store)
    with pytest.raises(StoreNotFoundError, match=r"such\.npy \(X\) does not exist"):    # estimates from X too
        bigspec.spectrum(kernel="rbf", X=str(missing), sample_size=20)
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("x")
    (tmp_path / "garbage.npy").write_bytes(b"not a .npy file")
    np.save(tmp_path / "short.npy", X0)
    with open(tmp_path / "short.npy", "r+b") as f:
        f.truncate(300)
    np.save(tmp_path / "words.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object))
    bigspec.form("rbf", X0, str(tmp_path / "S.zarr"), tile_size=32)
    for name, words in [("empty", "is an empty directory"), ("other", r"is a directory of other files \(a\.txt\)"),
                        ("garbage.npy", "is not a .npy file: it does not start with the .npy header"),
                        ("short.npy", "shorter than its header says"),
                        ("words.npy", r"X holds <U1 values, not numbers"),
                        ("objects.npy", "holds Python objects, not numbers"),
                        ("S.zarr", "a bigspec store, is not data")]:
        with pytest.raises(KernelError, match=words):
            bigspec.form("rbf", str(tmp_path / name), str(store))
    assert not store.exists() and not any(p.name.startswith("K.zarr") for p in tmp_path.iterdir())


def test_cli_form_then_logdet(tmp_path, capsys):
    from bigspec.cli import main

    np.save(tmp_path / "X.npy", X0)
    store = str(tmp_path / "K.zarr")
    local = ["--workers", "1", "--threads", "2", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(["form", "relu", str(tmp_path / "X.npy"), store, "--tile-size", "32", "--depth", "3",
              "--param", "bias_variance=0.2", "--json", *local])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kernel"]["params"]["depth"] == 3 and out["kernel"]["params"]["bias_variance"] == 0.2
    with pytest.raises(SystemExit) as e:
        main(["logdet", store, "--json", *local])
    assert e.value.code == 0
    K = bigspec.open_matrix(store).to_dask().compute()
    assert json.loads(capsys.readouterr().out)["logabsdet"] == pytest.approx(np.linalg.slogdet(K)[1], rel=1e-12)
    with pytest.raises(SystemExit) as e:
        main(["form", "relu", str(tmp_path / "X.npy"), store, *local])
    assert e.value.code == 1  # a store of other kernel parameters exists: a user error naming --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_form_picks_a_tile_size_its_budget_can_factor(tmp_path):
    """Without tile_size, form gives a store tiles that the exact factorization can hold one column
    of within the memory budget, so the store can always be factored out of core."""
    import dask

    X = np.random.default_rng(0).random((3000, 2))
    with dask.config.set({"bigspec.memory": "6MB"}):          # the matrix is 72 MB
        K = bigspec.form("matern", X, str(tmp_path / "k.zarr"), nu=1.5, lengthscale=0.3)
        assert 32 <= K.tile_size < 1024
        r = bigspec.logdet(K)
        assert r.super_panels > 1 and r.memory_budget == 6_000_000
        full = bigspec.form("matern", X, str(tmp_path / "k1024.zarr"), tile_size=1024, nu=1.5, lengthscale=0.3)
        with pytest.raises(bigspec.MemoryBudgetError, match="tile_size="):   # what the default avoids
            bigspec.logdet(full)
    dense = K.read(0, 3000, 0, 3000)
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-11)
    assert bigspec.form("rbf", X[:500], str(tmp_path / "small.zarr")).tile_size == 500   # one tile fits
