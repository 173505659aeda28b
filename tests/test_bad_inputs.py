"""Every public entry point against one table of bad and unusual matrix inputs.

Each case gives either the matrix it stands for (the entry must give numpy's answer) or the
error it must raise (the same class and message at every entry). Nothing the user had may
change: arrays keep their bytes, shape and flags; files keep their bytes; a refused
``from_array`` / ``import`` writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr

import bigspec
from bigspec.cli import main
from bigspec.errors import IncompleteStoreError, InvalidMatrixError, KernelError, NonFiniteError, StoreNotFoundError
from bigspec.store import open_matrix
from bigspec.testing import make_spd

A8 = make_spd(8, seed=11)
A24 = make_spd(24, seed=12)
LOCAL = ["--workers", "1", "--threads", "1", "--no-progress"]


def _zarr_full(tmp_path, A, chunks=5):
    z = zarr.create_array(str(tmp_path / "plain.zarr"), shape=A.shape, chunks=(chunks, chunks), dtype=A.dtype)
    z[...] = A
    return z


def _zarr_v2(tmp_path, missing=False):
    path = str(tmp_path / "v2.zarr")
    z = zarr.create_array(path, shape=(24, 24), chunks=(8, 8), dtype="float64", zarr_format=2)
    z[:16 if missing else 24, :] = A24[:16 if missing else 24, :]
    return path


def _zarr_missing(tmp_path):
    z = zarr.create_array(str(tmp_path / "holes.zarr"), shape=(24, 24), chunks=(8, 8), dtype="float64")
    z[:16, :] = A24[:16, :]           # the last block row was never written
    return z


def _store(tmp_path, A, consolidated=False):
    path = str(tmp_path / "K.zarr")
    bigspec.from_array(A, path, tile_size=5)
    if consolidated:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # zarr: consolidated metadata is not in the v3 spec
            zarr.consolidate_metadata(path)
    return path


def _memory(tmp_path, A=None, npy=False):
    """A bigspec store (or a .npy file) on fsspec's in-memory filesystem, one per test."""
    import fsspec

    url = f"memory://bigspec-bad-inputs/{uuid.uuid4().hex}/" + ("A.npy" if npy else "K.zarr")
    if npy:
        with fsspec.open(url, "wb") as f:
            np.save(f, A24)
    else:
        bigspec.from_array(A24, url, tile_size=5)
    return url


def _npy(tmp_path, A, name="A.npy"):
    np.save(tmp_path / name, A)
    return str(tmp_path / name)


def _nan():
    A = A8.copy()
    A[5, 2] = A[2, 5] = np.nan
    return A


def _inf():
    A = A8.copy()
    A[3, 3] = np.inf
    return A


def _asym():
    A = A8.copy()
    A[6, 1] += 0.5
    return A


def _unknown_chunks():
    keep = np.ones(24, bool)
    keep[[3, 17]] = False
    mask = da.from_array(keep, chunks=7)
    return da.from_array(A24, chunks=7)[mask][:, mask]


K_UNKNOWN = A24[np.ix_(np.r_[0:3, 4:17, 18:24], np.r_[0:3, 4:17, 18:24])]

ERR = "error"
# name: (make(tmp_path) -> input, kind of input, the matrix it stands for | (ERR, class, message regex))
CASES = {
    "1x1": (lambda p: np.array([[4.0]]), "array", np.array([[4.0]])),
    "1x1 negative": (lambda p: np.array([[-2.0]]), "array", np.array([[-2.0]])),
    "list of lists": (lambda p: [[2.0, 1.0], [1.0, 3.0]], "array", np.array([[2.0, 1.0], [1.0, 3.0]])),
    "int": (lambda p: np.array([[3, 1], [1, 2]]), "array", np.array([[3.0, 1.0], [1.0, 2.0]])),
    "float16": (lambda p: A8.astype(np.float16), "array", A8.astype(np.float16).astype(np.float64)),
    "float32": (lambda p: A8.astype(np.float32), "array", A8.astype(np.float32).astype(np.float64)),
    "fortran order": (lambda p: np.asfortranarray(A24), "array", A24),
    "non-contiguous": (lambda p: np.kron(A8, np.ones((2, 2)))[::2, ::2], "array", A8),
    "read-only": (lambda p: (lambda a: (a.setflags(write=False), a)[1])(A8.copy()), "array", A8),
    "dask": (lambda p: da.from_array(A24, chunks=7), "array", A24),
    "dask unknown chunks": (lambda p: _unknown_chunks(), "array", K_UNKNOWN),
    "zarr array": (lambda p: _zarr_full(p, A24), "array", A24),
    "zarr path": (lambda p: (_zarr_full(p, A24), str(p / "plain.zarr"))[1], "path", A24),
    "zarr v2 path": (lambda p: _zarr_v2(p), "path", A24),
    ".npy path": (lambda p: _npy(p, A24), "path", A24),
    "store": (lambda p: _store(p, A24), "path", A24),
    "consolidated store": (lambda p: _store(p, A24, consolidated=True), "path", A24),
    "file:// URL": (lambda p: (_store(p, A24), (p / "K.zarr").as_uri())[1], "path", A24),
    "memory:// URL": (lambda p: _memory(p), "url", A24),
    "remote .npy": (lambda p: _memory(p, npy=True), "url", (ERR, InvalidMatrixError, r"remote URL.*zarr")),
    "empty": (lambda p: np.zeros((0, 0)), "array", (ERR, InvalidMatrixError, r"empty")),
    "non-square": (lambda p: np.zeros((3, 4)), "array", (ERR, InvalidMatrixError, r"square.*\(3, 4\)")),
    "1-d": (lambda p: np.ones(4), "array", (ERR, InvalidMatrixError, r"square.*\(4,\)")),
    "3-d": (lambda p: np.ones((2, 2, 2)), "array", (ERR, InvalidMatrixError, r"square.*\(2, 2, 2\)")),
    "non-symmetric": (lambda p: _asym(), "array", (ERR, InvalidMatrixError, r"not symmetric.*A\[6, 1\]")),
    "non-symmetric .npy": (lambda p: _npy(p, _asym()), "path", (ERR, InvalidMatrixError, r"not symmetric")),
    "nan": (lambda p: _nan(), "array", (ERR, NonFiniteError, r"NaN.*row 2.*col(umn)? 5")),
    "inf .npy": (lambda p: _npy(p, _inf()), "path", (ERR, NonFiniteError, r"inf.*row 3.*col(umn)? 3")),
    "complex": (lambda p: A8.astype(complex), "array", (ERR, InvalidMatrixError, r"complex")),
    "strings": (lambda p: np.array([["a", "b"], ["b", "a"]]), "array", (ERR, InvalidMatrixError, r"dtype")),
    "zarr missing chunks": (lambda p: _zarr_missing(p), "array",
                            (ERR, IncompleteStoreError, r"never written.*\(2, 0\)")),
    "zarr path missing chunks": (lambda p: (_zarr_missing(p), str(p / "holes.zarr"))[1], "path",
                                 (ERR, IncompleteStoreError, r"never written.*\(2, 0\)")),
    "zarr v2 missing chunks": (lambda p: _zarr_v2(p, missing=True), "path",
                               (ERR, IncompleteStoreError, r"never written.*\(2, 0\)")),
    "missing path": (lambda p: str(p / "nothing.zarr"), "path", (ERR, StoreNotFoundError, r"nothing\.zarr")),
}


def fingerprint(obj, root):
    """What the user owns: an array's bytes, shape and flags, and every file under ``root``."""
    out = {}
    if isinstance(obj, np.ndarray):
        out["array"] = (hashlib.sha256(np.ascontiguousarray(obj).view(np.uint8).tobytes()).hexdigest(),
                        obj.shape, obj.dtype.str, obj.flags.c_contiguous, obj.flags.f_contiguous,
                        obj.flags.writeable)
    elif isinstance(obj, da.Array):
        out["dask"] = (obj.name, str(obj.chunks))
    for base, _, files in os.walk(root):
        for f in files:
            path = os.path.join(base, f)
            with open(path, "rb") as fh:
                data = fh.read()
            if f == "zarr.json" and base.endswith("K.zarr"):
                # a bigspec store records its results in its attributes (documented): all else stays
                meta = json.loads(data)
                meta["attributes"]["bigspec"].pop("results", None)
                data = json.dumps(meta, sort_keys=True).encode()
            out[os.path.relpath(path, root)] = hashlib.sha256(data).hexdigest()
    return out


def oracle_logdet(K):
    sign, logabsdet = np.linalg.slogdet(K)
    return int(sign), float(logabsdet)


def check_value(entry, result, K, tmp_path):
    if entry in ("logdet", "slogdet"):
        sign, logabsdet = result if entry == "slogdet" else (result.sign, result.logabsdet)
        assert (sign, logabsdet) == pytest.approx(oracle_logdet(K), rel=1e-12, abs=1e-13)
    elif entry == "from_array":
        assert np.array_equal(result.read(0, result.n, 0, result.n).astype(np.float64), K)
    elif entry == "spectrum":   # the whole matrix as its one sample: its eigenvalues, and the exact trace
        assert result.trace == pytest.approx(np.trace(K), rel=1e-12)
        assert np.sort(result.eigenvalues) == pytest.approx(np.linalg.eigvalsh(K), rel=1e-9, abs=1e-12)


ENTRIES = {   # entry(A, tmp_path, n): n is the size of the matrix A stands for
    "logdet": lambda A, p, n: bigspec.logdet(A, tile_size=5),
    "slogdet": lambda A, p, n: bigspec.slogdet(A, tile_size=5),
    "from_array": lambda A, p, n: bigspec.from_array(A, str(p / "out" / "copy.zarr"), tile_size=5),
    "spectrum": lambda A, p, n: bigspec.spectrum(A, sample_size=n),
}


def user_input(case, tmp_path):
    """(input, the user's folder, its fingerprint, what it stands for) for a case of the table."""
    make, _, want = CASES[case]
    user = tmp_path / "user"
    user.mkdir()
    A = make(user)
    return A, user, fingerprint(A, user), want


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("case", list(CASES))
def test_python_entries(case, entry, tmp_path):
    A, user, before, want = user_input(case, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # well-conditioned inputs: no warning either
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        # a free decompression of 8-24 eigenvalues may warn about its own fit; that is not the subject here
        warnings.filterwarnings("ignore", category=bigspec.spectra.DecompressionWarning)
        if isinstance(want, tuple):
            _, error, message = want
            with pytest.raises(error, match=message):
                ENTRIES[entry](A, tmp_path, 2)
            assert not (tmp_path / "out").exists()      # refused before anything was written
        else:
            check_value(entry, ENTRIES[entry](A, tmp_path, want.shape[0]), want, tmp_path)
    assert fingerprint(A, user) == before


def test_the_same_message_at_every_entry(tmp_path):
    """One validator: the error text does not depend on the entry point."""
    for case in ("non-symmetric", "nan", "non-square", "empty"):
        messages = set()
        for entry in ENTRIES:
            with pytest.raises(Exception) as e:
                ENTRIES[entry](CASES[case][0](tmp_path), tmp_path, 2)
            messages.add(str(e.value))
        assert len(messages) == 1, (case, messages)


def run_main(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


PATH_CASES = [c for c, (_, kind, _) in CASES.items() if kind == "path"]
VALUE_PATH_CASES = [c for c in PATH_CASES if not isinstance(CASES[c][2], tuple)]
ERROR_PATH_CASES = [c for c in PATH_CASES if isinstance(CASES[c][2], tuple)]


@pytest.mark.parametrize("case", ERROR_PATH_CASES)
def test_cli_errors(case, tmp_path, capsys):
    path, user, before, (_, error, message) = user_input(case, tmp_path)
    with pytest.raises(error, match=message) as e:
        bigspec.logdet(path)
    for args in (["import", path, str(tmp_path / "out.zarr")], ["logdet", path, *LOCAL],
                 ["spectrum", path, *LOCAL]):
        assert run_main(args) == 1, args
        err = capsys.readouterr().err
        assert e.value.cli_message() in err and "Traceback" not in err      # the same message, in CLI words
        assert "=" not in e.value.cli_message().replace(" = ", "") or "=" not in str(e.value)
    assert not (tmp_path / "out.zarr").exists()
    assert fingerprint(path, user) == before


@pytest.mark.parametrize("case", VALUE_PATH_CASES)
def test_cli_values(case, tmp_path, capsys):
    path, user, before, K = user_input(case, tmp_path)
    assert run_main(["import", path, str(tmp_path / "copy.zarr"), "--tile-size", "5"]) == 0
    assert np.array_equal(open_matrix(str(tmp_path / "copy.zarr")).read(0, 24, 0, 24), K)
    capsys.readouterr()
    assert run_main(["logdet", path, "--json", *LOCAL]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["sign"], out["logabsdet"]) == pytest.approx(oracle_logdet(K), rel=1e-12)
    assert run_main(["spectrum", path, "--sample-size", "24", "--json", *LOCAL]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["size"] == 24 and out["trace"] == pytest.approx(np.trace(K), rel=1e-12)
    assert fingerprint(path, user) == before


# -- free_decompress: the eigenvalues and sizes it is given -----------------------------------------

E200 = np.random.default_rng(0).standard_normal(200)
SPECTRUM_ERRORS = {
    "empty": (([],), {"size": 10}, r"non-empty"),
    "empty 2-d": ((np.zeros((0, 0)),), {"size": 10}, r"non-empty"),
    "the matrix itself": ((A24,), {"size": 100}, r"looks like the matrix itself.*eigvalsh"),
    "nan": ((np.r_[E200, np.nan],), {"size": 1000}, r"1 NaN"),
    "complex": ((E200 + 1j,), {"size": 1000}, r"complex.*eigvalsh"),
    "strings": ((["a", "b"],), {"size": 10}, r"numbers"),
    "3-d": ((np.ones((2, 2, 2)),), {"size": 10}, r"1-D"),
    "size below the sample": ((E200,), {"size": 100}, r"size=100 is smaller than the sample size 200"),
    "fractional size": ((E200,), {"size": 1000.5}, r"size must be an integer, got 1000.5"),
    "size None": ((E200,), {"size": None}, r"size must be an integer, got None"),
    "size text": ((E200,), {"size": "1000"}, r"size must be an integer"),
    "one eigenvalue, larger size": (([3.0],), {"size": 5}, r"at least 2 rows"),
    "samples of different sizes": (([E200[:100], E200[100:150]],), {"size": 1000}, r"different sizes \(50, 100"),
}


@pytest.mark.parametrize("case", list(SPECTRUM_ERRORS))
def test_free_decompress_errors(case):
    args, kwargs, message = SPECTRUM_ERRORS[case]
    with pytest.raises(bigspec.spectra.InvalidSpectrumError, match=message):
        bigspec.free_decompress(*args, **kwargs)


@pytest.mark.filterwarnings("ignore::bigspec.spectra.DecompressionWarning")
def test_free_decompress_unusual_but_valid():
    assert bigspec.free_decompress([3.0], size=1).atoms == [(3.0, 1.0)]             # a 1 x 1 matrix
    ints = bigspec.free_decompress(np.arange(1, 101), size=1000.0)                   # integral size, int values
    assert ints.size == 1000 and ints.trace == pytest.approx(1000 * 50.5)
    ragged = bigspec.free_decompress([E200[:100], E200[100:150]], size=1000, sample_size=75)
    assert ragged.sample_size == 75 and ragged.n_samples == 2
    e = E200.copy()
    bigspec.free_decompress(e, size=1000)
    assert np.array_equal(e, E200)                                                   # the input is not changed


# -- the other arguments: one validator each, an error naming the argument, nothing written ------------

ARGUMENT_ERRORS = [
    ("from_array", {"overwrite": "no"}, TypeError, r"overwrite must be True or False, got 'no'"),
    ("from_array", {"symmetric": "false"}, TypeError, r"symmetric must be True or False"),
    ("from_array", {"tile_size": 0}, ValueError, r"tile_size must be a positive integer"),
    ("form", {"overwrite": "no"}, TypeError, r"overwrite must be True or False"),
    ("form", {"shuffle": "no"}, TypeError, r"shuffle must be True or False"),
    ("logdet", {"checkpoint": "yes"}, TypeError, r"checkpoint must be True, False or None"),
    ("logdet", {"overwrite": 1}, TypeError, r"overwrite must be True or False"),
    ("logdet", {"dry_run": "true"}, TypeError, r"dry_run must be True or False"),
    ("logdet", {"shift": "1e-3"}, TypeError, r"shift must be a number, got '1e-3'"),
    ("logdet", {"shift": np.nan}, ValueError, r"shift must be finite"),
    ("logdet", {"scale": None}, TypeError, r"scale must be a number"),
    ("logdet", {"scale": 0}, ValueError, r"scale must be nonzero"),
    ("logdet", {"memory": "lots"}, ValueError, r"memory='lots' is not a size"),
    ("logdet", {"memory": -1}, ValueError, r"memory must be a positive size"),
    ("logdet", {"memory": True}, TypeError, r"memory must be 'auto'"),
    ("logdet", {"method": "choleski"}, ValueError, r"unknown method 'choleski'; choose one of: ldl, cholesky"),
    ("logdet", {"triangle": "up"}, ValueError, r"triangle must be None.*'lower' or 'upper'"),
    ("logdet", {"progress": "yes"}, TypeError, r"progress must be True, False or None"),
    ("logdet", {"client": "tcp://127.0.0.1:8786"}, TypeError, r"client must be a distributed.Client"),
    ("from_array", {"attrs": {"x": object()}}, TypeError, r"attrs must be a dict of JSON-safe values"),
    ("from_array", {"attrs": ["x"]}, TypeError, r"attrs must be a dict"),
    ("from_array", {"progress": 1}, TypeError, r"progress must be True, False or None"),
    ("form", {"seed": -1}, ValueError, r"seed must be a non-negative integer"),
    ("form", {"seed": "0"}, TypeError, r"seed must be a non-negative integer"),
    ("form", {"client": object()}, TypeError, r"client must be a distributed.Client"),
    ("form", {"tile_size": 7, "n_outputs": 2, "kron": False}, KernelError, r"unknown parameter"),
    ("spectrum", {"shift": "0.1"}, TypeError, r"shift must be a number, got '0.1'"),
    ("spectrum", {"degree": 1}, ValueError, r"degree must be at least 2"),
    ("spectrum", {"grid": 2.5}, TypeError, r"grid must be an integer"),
    ("spectrum", {"delta": 0}, ValueError, r"delta must be positive"),
    ("spectrum", {"atom_tol": -1}, ValueError, r"atom_tol must be in \[0, 1\)"),
    ("spectrum", {"glue": "spline"}, ValueError, r"unknown glue model 'spline'"),
    ("spectrum", {"n_samples": 1.5}, TypeError, r"n_samples must be an integer"),
    ("spectrum", {"size": "big"}, TypeError, r"size must be an integer"),
    ("spectrum", {"seed": -3}, ValueError, r"seed must be a non-negative integer"),
]


@pytest.mark.parametrize("entry,kwargs,error,message", ARGUMENT_ERRORS,
                         ids=[f"{e}-{next(iter(k))}={next(iter(k.values()))!r}" for e, k, *_ in ARGUMENT_ERRORS])
def test_argument_errors(entry, kwargs, error, message, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "thesis.tex").write_text("mine")
    call = {"from_array": lambda: bigspec.from_array(A24, str(target), **kwargs),
            "form": lambda: bigspec.form("rbf", np.random.default_rng(0).uniform(size=(20, 2)), str(target),
                                         **kwargs),
            "logdet": lambda: bigspec.logdet(A24, **kwargs),
            "spectrum": lambda: bigspec.spectrum(A24, sample_size=8, **kwargs)}[entry]
    with pytest.raises(error, match=message):
        call()
    assert sorted(os.listdir(target)) == ["thesis.tex"] and (target / "thesis.tex").read_text() == "mine"


@pytest.mark.parametrize("args", [["--memory", "lots"], ["--tile-size", "0"], ["--memory", "-5"]])
def test_cli_checks_arguments_before_starting_a_cluster(args, tmp_path, capsys):
    path = _npy(tmp_path, A24)
    assert run_main(["logdet", path, *args, *LOCAL]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "dashboard" not in err


def test_cli_spectrum_checks_sample_size_first(tmp_path, capsys):
    assert run_main(["spectrum", _npy(tmp_path, A24), "--sample-size", "0", *LOCAL]) == 1
    err = capsys.readouterr().err
    assert "--sample-size must be at least 2" in err and "dashboard" not in err
