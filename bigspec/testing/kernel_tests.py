"""A test suite any bigspec kernel can run: subclass :class:`KernelTests` in a pytest module.

pytest is imported only by the test that skips (``positive_semidefinite = False``), so this
module imports without it.
"""

from __future__ import annotations

import copy
import json
import pickle
import uuid

import numpy as np


def _dumps(obj) -> bytes:
    """Pickle as Dask ships objects to workers: pickle, falling back to cloudpickle."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle  # a dependency of dask

        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _state(obj) -> dict:
    """A byte image of each attribute of ``obj`` (or of ``obj`` itself), to detect mutation."""
    attrs = vars(obj) if hasattr(obj, "__dict__") and not isinstance(obj, type) else {"<object>": obj}
    out = {}
    for key, value in attrs.items():
        try:
            out[key] = _dumps(value)
        except Exception:        # not picklable: its repr is the best available image
            out[key] = repr(value).encode()
    return out


def _bits(a) -> bytes:
    a = np.asarray(a)
    return a.dtype.str.encode() + repr(a.shape).encode() + np.ascontiguousarray(a).tobytes()


class KernelTests:
    """Tests every bigspec kernel should pass; subclass it in a pytest module to run them on yours.

    Set ``kernel`` (a :class:`bigspec.kernels.Kernel` instance, or any object that
    :func:`bigspec.kernels.get_kernel` accepts) and ``X`` (data points, first axis = samples, at
    least 4 of them; about 20 to 60 keeps the suite fast) as class attributes. pytest collects
    the ``test_*`` methods of a subclass whose name starts with ``Test``; each method also runs
    by hand. The tests:

    * ``test_block_shape``: a block of b1 x b2 points is ``(b1 * r, b2 * r)``, r =
      ``rows_per_sample()``, a finite numpy array for numpy inputs;
    * ``test_diagonal_tile_symmetric``: ``k(x, x, diagonal=True)`` is symmetric to rounding;
    * ``test_transpose_symmetry``: ``k(x, y)`` equals ``k(y, x).T`` to rounding;
    * ``test_positive_semidefinite``: the Gram matrix of X has no eigenvalue below
      ``-psd_rtol * max|eigenvalue|`` (set ``positive_semidefinite = False`` to skip);
    * ``test_deterministic``: the same tile twice, and from a second ``bind``, is bit-identical;
    * ``test_pickle_round_trip``: a pickled and unpickled kernel (as Dask ships it to workers)
      gives bit-identical tiles;
    * ``test_spec_json``: ``spec()`` survives a JSON round trip unchanged (a store records it and
      compares it when a formation resumes);
    * ``test_no_mutation``: binding and evaluating leave the kernel object (every attribute,
      its ``params``, a model it holds) and the caller's X unchanged;
    * ``test_form_matches_whole``: ``bigspec.form`` with ``shuffle=False`` and a ragged last
      tile stores the kernel evaluated on all of X at once, to ``rtol`` relative to the largest
      entry, and records the bound kernel's ``spec()``.

    Attributes
    ----------
    kernel : Kernel or object
        The kernel under test (never modified by the tests).
    X : array-like
        Its data, shape (n_samples, ...), n_samples >= 4.
    rtol : float
        Formed matrix vs whole evaluation, relative to the largest entry (default 1e-12).
    symmetry_rtol : float
        Symmetry of tiles, relative to the largest entry (default 1e-12).
    positive_semidefinite : bool
        Whether the kernel is PSD (default True).
    psd_rtol : float
        Allowed negative eigenvalues relative to the largest in magnitude (default 1e-10).
    tile_size : int, optional
        Tile edge of the formation test; by default about a third of the matrix, chosen so that
        the last tile is ragged.

    Examples
    --------
    In a test module, ``class TestMyKernel(KernelTests): ...`` is all it takes; pytest then
    runs every test below. By hand:

    >>> import numpy as np
    >>> from bigspec.kernels import Matern
    >>> from bigspec.testing import KernelTests
    >>> class TestMatern(KernelTests):
    ...     kernel = Matern(nu=2.5, lengthscale=0.5)
    ...     X = np.random.default_rng(0).random((30, 3))
    >>> suite = TestMatern()
    >>> suite.test_transpose_symmetry()
    >>> suite.test_pickle_round_trip()
    >>> [name for name in dir(KernelTests) if name.startswith("test_")]  # doctest: +NORMALIZE_WHITESPACE
    ['test_block_shape', 'test_deterministic', 'test_diagonal_tile_symmetric', 'test_form_matches_whole',
     'test_no_mutation', 'test_pickle_round_trip', 'test_positive_semidefinite', 'test_spec_json',
     'test_transpose_symmetry']

    A kernel that breaks a rule fails with the reason:

    >>> class Drifting:
    ...     name = "drifting"
    ...     calls = 0
    ...     def __call__(self, x_rows, x_cols, *, diagonal=False):
    ...         type(self).calls += 1
    ...         return (x_rows @ x_cols.T) * (1.0 + 1e-9 * type(self).calls)
    >>> class TestDrifting(KernelTests):
    ...     kernel = Drifting()
    ...     X = np.random.default_rng(0).random((10, 2))
    >>> TestDrifting().test_deterministic()
    Traceback (most recent call last):
    ...
    AssertionError: drifting kernel: the same tile computed twice is not bit-identical
    """

    kernel = None
    X = None
    rtol = 1e-12
    symmetry_rtol = 1e-12
    positive_semidefinite = True
    psd_rtol = 1e-10
    tile_size = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the kernel and X as the subclass defined them, before any test ran (they are shared by all)
        cls._defined_state = None if cls.kernel is None else _state(cls.kernel)
        cls._defined_X = None if cls.X is None else _bits(cls.X)

    # -- helpers (not tests) ----------------------------------------------------------
    def _data(self):
        if self.kernel is None or self.X is None:
            raise TypeError(f"{type(self).__name__} must set the class attributes kernel and X")
        X = self.X if hasattr(self.X, "shape") else np.asarray(self.X)
        if X.ndim < 1 or X.shape[0] < 4:
            raise ValueError(f"{type(self).__name__}.X needs at least 4 samples (first axis), got shape {X.shape}")
        return X

    def _bind(self):
        from ..kernels import get_kernel

        X = self._data()
        return get_kernel(self.kernel).bind(X), X

    def _prepared(self):
        k, X = self._bind()
        return k, np.asarray(k.prepare(np.array(X, dtype=np.float64)))

    @staticmethod
    def _split(x):
        return max(1, x.shape[0] // 3)

    @staticmethod
    def _scale(a) -> float:
        return float(np.max(np.abs(a), initial=0.0)) or 1.0

    def _ragged_tile_size(self, n_samples: int, per: int) -> int:
        if self.tile_size is not None:
            return int(self.tile_size)
        # samples per tile: the one nearest a third of the data that leaves a ragged last tile
        for spt in sorted(range(1, n_samples), key=lambda s: (abs(s - n_samples // 3), s)):
            if n_samples % spt:
                return spt * per
        raise ValueError(f"cannot make a ragged tiling of {n_samples} samples")

    # -- tests ------------------------------------------------------------------------
    def test_block_shape(self):
        k, x = self._prepared()
        per = k.rows_per_sample()
        m = self._split(x)
        for rows, cols, diagonal in ((x[:m], x[m:], False), (x[m:], x[:m], False), (x, x, True)):
            block = k(rows, cols, diagonal=diagonal)
            assert isinstance(block, np.ndarray), \
                f"{k.name} kernel: numpy inputs must give a numpy block, got {type(block).__name__}"
            want = (rows.shape[0] * per, cols.shape[0] * per)
            assert block.shape == want, \
                f"{k.name} kernel: a block of {rows.shape[0]} x {cols.shape[0]} points has shape {block.shape}, " \
                f"expected {want} (rows_per_sample() = {per})"
            assert np.isfinite(block).all(), f"{k.name} kernel: the block holds NaN or infinite values"

    def test_diagonal_tile_symmetric(self):
        k, x = self._prepared()
        K = np.asarray(k(x, x, diagonal=True), dtype=np.float64)
        err = float(np.max(np.abs(K - K.T)))
        assert err <= self.symmetry_rtol * self._scale(K), \
            f"{k.name} kernel: a diagonal tile is not symmetric: max |K - K^T| = {err:.3g}"

    def test_transpose_symmetry(self):
        k, x = self._prepared()
        m = self._split(x)
        A = np.asarray(k(x[:m], x[m:]), dtype=np.float64)
        B = np.asarray(k(x[m:], x[:m]), dtype=np.float64)
        assert A.shape == B.T.shape, f"{k.name} kernel: K(x, y) has shape {A.shape}, K(y, x) {B.shape}"
        err = float(np.max(np.abs(A - B.T)))
        assert err <= self.symmetry_rtol * self._scale(A), \
            f"{k.name} kernel: K(x, y) differs from K(y, x)^T by {err:.3g}"

    def test_positive_semidefinite(self):
        if not self.positive_semidefinite:
            import pytest

            pytest.skip("positive_semidefinite = False")
        k, x = self._prepared()
        K = np.asarray(k(x, x, diagonal=True), dtype=np.float64)
        eig = np.linalg.eigvalsh((K + K.T) / 2)
        floor = -self.psd_rtol * self._scale(eig)
        assert eig.min() >= floor, \
            f"{k.name} kernel: the Gram matrix of X has eigenvalue {eig.min():.3g} < {floor:.3g} " \
            f"(set positive_semidefinite = False if the kernel is indefinite)"

    def test_deterministic(self):
        k, x = self._prepared()
        m = self._split(x)
        k2, x2 = self._prepared()
        assert _bits(x) == _bits(x2), f"{k.name} kernel: prepare() is not deterministic"
        for rows, cols, diagonal in ((x[:m], x[m:], False), (x, x, True)):
            first = _bits(k(rows, cols, diagonal=diagonal))
            assert first == _bits(k(rows, cols, diagonal=diagonal)), \
                f"{k.name} kernel: the same tile computed twice is not bit-identical"
            assert first == _bits(k2(rows, cols, diagonal=diagonal)), \
                f"{k.name} kernel: the same tile from a second bind(X) is not bit-identical"

    def test_pickle_round_trip(self):
        k, x = self._prepared()
        m = self._split(x)
        shipped = pickle.loads(_dumps(k))
        from ..kernels import get_kernel

        rebound = get_kernel(pickle.loads(_dumps(self.kernel))).bind(self._data())
        for rows, cols, diagonal in ((x[:m], x[m:], False), (x, x, True)):
            want = _bits(k(rows, cols, diagonal=diagonal))
            assert _bits(shipped(rows, cols, diagonal=diagonal)) == want, \
                f"{k.name} kernel: a pickled and unpickled bound kernel gives other tile bytes"
            assert _bits(rebound(rows, cols, diagonal=diagonal)) == want, \
                f"{k.name} kernel: a pickled and unpickled kernel, then bound, gives other tile bytes"
        assert shipped.spec() == k.spec(), f"{k.name} kernel: spec() changes through pickling"

    def test_spec_json(self):
        k, _ = self._bind()
        spec = k.spec()
        try:
            text = json.dumps(spec, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise AssertionError(f"{k.name} kernel: spec() is not JSON-serialisable: {e}") from e
        assert json.loads(text) == spec, \
            f"{k.name} kernel: spec() changes through JSON (tuples, non-str keys?): {spec!r}"
        assert spec.get("name") == k.name, f"{k.name} kernel: spec()['name'] is {spec.get('name')!r}"

    def test_no_mutation(self):
        from ..kernels import get_kernel

        X = self._data()
        X_bits = _bits(X)
        flags = X.flags.writeable if hasattr(X, "flags") else None
        before = _state(self.kernel)
        params = copy.deepcopy(getattr(self.kernel, "params", None))
        k = get_kernel(self.kernel).bind(X)
        x = k.prepare(np.asarray(X, dtype=np.float64))   # may be X itself: prepare must not write it
        m = self._split(x)
        k(x, x, diagonal=True)
        k(x[:m], x[m:])
        k.spec()
        k.rows_per_sample()
        after = _state(self.kernel)
        name = getattr(self.kernel, "name", type(self.kernel).__name__)
        defined = type(self).__dict__.get("_defined_state")
        if defined is not None:   # another test of the suite (a bind, an evaluation, form) changed it
            earlier = sorted(key for key in {*defined, *before} if defined.get(key) != before.get(key))
            assert not earlier, \
                f"{name} kernel: its attribute(s) {earlier} changed since the test class was defined " \
                f"(bind, evaluation or bigspec.form in another test of this suite)"
            assert type(self).__dict__.get("_defined_X") in (None, X_bits), \
                f"{name} kernel: the caller's X changed since the test class was defined"
        changed = sorted(key for key in {*before, *after} if before.get(key) != after.get(key))
        assert not changed, f"{name} kernel: bind or evaluation changed the kernel's attribute(s) {changed}"
        assert getattr(self.kernel, "params", None) == params, f"{name} kernel: its params dict changed"
        assert _bits(X) == X_bits, f"{name} kernel: bind, prepare or evaluation wrote into the caller's X"
        if flags is not None:
            assert X.flags.writeable == flags, f"{name} kernel: the caller's X changed its writeable flag"

    def test_form_matches_whole(self):
        import bigspec

        k, x = self._prepared()
        X = self._data()
        n, per = int(X.shape[0]), k.rows_per_sample()
        t = self._ragged_tile_size(n, per)
        url = f"memory://bigspec-kerneltests-{uuid.uuid4().hex}.zarr"
        try:
            ms = bigspec.form(self.kernel, X, url, tile_size=t, shuffle=False, overwrite=True, progress=False)
            K = np.asarray(ms.read(0, ms.n, 0, ms.n), dtype=np.float64)
            recorded = ms.attrs["kernel"]
        finally:
            _remove_memory_store(url)
        ref = np.asarray(k(x, x, diagonal=True), dtype=np.float64)
        assert K.shape == ref.shape == (n * per, n * per), \
            f"{k.name} kernel: formed {K.shape}, whole evaluation {ref.shape}, expected {(n * per, n * per)}"
        err = float(np.max(np.abs(K - ref)))
        assert err <= self.rtol * self._scale(ref), \
            f"{k.name} kernel: the matrix formed in tiles of {t} differs from the whole evaluation by {err:.3g} " \
            f"(largest entry {self._scale(ref):.3g}, rtol {self.rtol:g})"
        assert recorded == json.loads(json.dumps(k.spec())), \
            f"{k.name} kernel: the store records {recorded!r}, not the bound kernel's spec() {k.spec()!r}"


def _remove_memory_store(url: str) -> None:
    try:
        import fsspec

        fs = fsspec.filesystem("memory")
        path = url.split("://", 1)[1]
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception:  # cleanup only
        pass


__all__ = ["KernelTests"]
