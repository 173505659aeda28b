"""Third-party kernels: plain objects following the minimal protocol, through the adapter and form."""

import subprocess
import sys

import numpy as np
import pytest

import bigspec
from bigspec.errors import KernelError
from bigspec.kernels import RBF, Kernel, KernelParameterError, ProtocolKernel, get_kernel
from bigspec.testing import KernelTests


class Linear:
    """The least a kernel needs: a name and __call__."""

    name = "linear"

    def __call__(self, x_rows, x_cols, *, diagonal=False):
        return x_rows @ x_cols.T


COUPLING = np.array([[2.0, 0.5], [0.5, 1.0]])


class Coupled:
    """Every optional part: two coupled outputs (not Kronecker), params, prepare, check_data."""

    name = "coupled"
    n_outputs = 2
    kron_identity = False

    def __init__(self, gamma=0.5):
        self.params = {"gamma": gamma}

    def prepare(self, X):
        return X - X.mean(axis=0)

    def check_data(self, X):
        if X.ndim != 2 or X.shape[1] != 3:
            raise KernelError(f"coupled kernel needs X of shape (n, 3), got {X.shape}")

    def __call__(self, x_rows, x_cols, *, diagonal=False):
        d2 = ((x_rows[:, None, :] - x_cols[None, :, :]) ** 2).sum(-1)
        return np.kron(np.exp(-self.params["gamma"] * d2), COUPLING)   # row = sample * 2 + output


def coupled_oracle(X, gamma):
    Xc = X - X.mean(axis=0)
    n = len(X)
    K = np.empty((2 * n, 2 * n))
    for i in range(n):
        for j in range(n):
            K[2 * i:2 * i + 2, 2 * j:2 * j + 2] = np.exp(-gamma * np.sum((Xc[i] - Xc[j]) ** 2)) * COUPLING
    return K


DATA = np.random.default_rng(21).standard_normal((17, 3))


class TestLinearProtocolKernel(KernelTests):
    kernel = Linear()
    X = DATA
    psd_rtol = 1e-12


class TestCoupledProtocolKernel(KernelTests):
    kernel = Coupled(gamma=0.3)
    X = DATA


def test_adapter_supplies_the_defaults():
    duck = Linear()
    k = get_kernel(duck)
    assert isinstance(k, ProtocolKernel) and isinstance(k, Kernel) and k.obj is duck
    assert (k.name, k.n_outputs, k.kron_identity, k.params) == ("linear", 1, True, {})
    bound = k.bind(DATA)
    assert bound.rows_per_sample() == 1 and bound.prepare(DATA) is DATA
    assert bound.spec() == {"name": "linear", "n_outputs": 1, "kron_identity": True, "params": {},
                            "class": f"{__name__}.Linear"}
    np.testing.assert_allclose(bound(DATA[:5], DATA[5:]), np.einsum("ik,jk->ij", DATA[:5], DATA[5:]), rtol=1e-13)
    with pytest.raises(KernelError, match=r"linear kernel needs X of shape \(n_samples, n_features\)"):
        k.bind(np.zeros((3, 2, 2)))
    assert get_kernel(k) is k


def test_adapter_uses_the_optional_parts():
    k = get_kernel(Coupled(gamma=0.7)).bind(DATA)
    assert (k.n_outputs, k.kron_identity, k.rows_per_sample(), k.spec()["params"]) == (2, False, 2, {"gamma": 0.7})
    x = k.prepare(DATA)
    np.testing.assert_allclose(k(x, x, diagonal=True), coupled_oracle(DATA, 0.7), rtol=1e-12, atol=1e-15)
    with pytest.raises(KernelError, match=r"coupled kernel needs X of shape \(n, 3\)"):
        get_kernel(Coupled()).bind(np.zeros((4, 2)))


def test_protocol_kernel_forms_like_a_builtin(tmp_path):
    duck = Coupled(gamma=0.4)
    ms = bigspec.form(duck, DATA, str(tmp_path / "c.zarr"), tile_size=6, seed=3)   # shuffled, ragged
    perm = ms.group["permutation"][:]
    assert ms.n == 34 and ms.attrs["kernel"]["name"] == "coupled" and not ms.attrs["kernel"]["kron_identity"]
    np.testing.assert_allclose(ms.read(0, 34, 0, 34), coupled_oracle(DATA[perm], 0.4), rtol=1e-12, atol=1e-14)
    assert duck.params == {"gamma": 0.4}


def test_missing_protocol_parts_are_named():
    class Nameless:
        def __call__(self, x_rows, x_cols, *, diagonal=False):
            return x_rows @ x_cols.T

    class NotCallable:
        name = "nc"

    for obj, missing in ((Nameless(), r"lacks name;"), (NotCallable(), r"lacks __call__;"),
                         (object(), r"lacks name, __call__;")):
        with pytest.raises(KernelError, match=missing) as e:
            get_kernel(obj)
        assert "subclass bigspec.kernels.Kernel" in str(e.value)
    Nameless.name = 3
    with pytest.raises(KernelError, match=r"lacks name \(a non-empty str\)"):
        get_kernel(Nameless())


def test_adapter_refuses_unclear_or_clashing_objects():
    class Multi(Linear):
        n_outputs = 3

    with pytest.raises(KernelError, match="n_outputs=3 but no kron_identity attribute"):
        get_kernel(Multi())
    Multi.kron_identity = True
    assert get_kernel(Multi()).bind(DATA).spec()["n_outputs"] == 3
    Multi.n_outputs = 0
    with pytest.raises(KernelParameterError, match="n_outputs must be a positive integer, got 0"):
        get_kernel(Multi())

    class Seeded(Linear):
        params = {"seed": 1, "gamma": 2.0, "grid": 3}

    with pytest.raises(KernelParameterError, match=r"named 'grid', 'seed', reserved .*RESERVED_PARAMETERS"):
        get_kernel(Seeded())
    with pytest.raises(KernelParameterError, match="given with a kernel object"):
        get_kernel(Linear(), gamma=1.0)


def test_classes_and_non_kernels():
    assert isinstance(get_kernel(RBF, lengthscale=2.0), RBF) and get_kernel(RBF, lengthscale=2.0).params[
        "lengthscale"] == 2.0
    with pytest.raises(KernelError, match="kernel is the class Linear: pass an instance"):
        get_kernel(Linear)
    for bad in (None, 3, 2.5):
        with pytest.raises(TypeError, match="kernel must be a name"):
            get_kernel(bad)


def test_kernel_tests_catch_a_kernel_that_breaks_the_rules():
    class Asymmetric(Linear):
        name = "asymmetric"

        def __call__(self, x_rows, x_cols, *, diagonal=False):
            return x_rows @ (x_cols + 0.1).T

    class Indefinite(Linear):
        name = "indefinite"

        def __call__(self, x_rows, x_cols, *, diagonal=False):
            return -(x_rows @ x_cols.T)

    class Mutating(Linear):
        name = "mutating"

        def __init__(self):
            self.params = {"calls": 0}

        def __call__(self, x_rows, x_cols, *, diagonal=False):
            self.params["calls"] += 1
            return x_rows @ x_cols.T

    class CentresInPlace(Linear):
        name = "centres-in-place"

        def prepare(self, X):
            X -= X.mean(axis=0)
            return X

    class TupleSpec(Linear):
        name = "tuple-spec"
        params = {"shape": (1, 2)}

    def suite(kernel):
        return type("Suite", (KernelTests,), {"kernel": kernel, "X": DATA.copy()})()

    with pytest.raises(AssertionError, match="differs from K.y, x.\\^T"):
        suite(Asymmetric()).test_transpose_symmetry()
    with pytest.raises(AssertionError, match="diagonal tile is not symmetric"):
        suite(Asymmetric()).test_diagonal_tile_symmetric()
    with pytest.raises(AssertionError, match="has eigenvalue"):
        suite(Indefinite()).test_positive_semidefinite()
    with pytest.raises(AssertionError, match=r"changed the kernel's attribute\(s\) \['params'\]"):
        suite(Mutating()).test_no_mutation()
    with pytest.raises(AssertionError, match="wrote into the caller's X"):
        suite(CentresInPlace()).test_no_mutation()
    class TupleSpecKernel(RBF):
        def spec(self):
            return {**super().spec(), "shape": (1, 2)}

    with pytest.raises(AssertionError, match="spec.. changes through JSON"):
        suite(TupleSpecKernel()).test_spec_json()
    # the adapter records a tuple parameter as its repr: JSON-stable
    suite(TupleSpec()).test_spec_json()
    assert get_kernel(TupleSpec()).spec()["params"] == {"shape": "(1, 2)"}
    with pytest.raises(pytest.skip.Exception):
        s = suite(Indefinite())
        s.positive_semidefinite = False
        s.test_positive_semidefinite()


def test_kernel_tests_does_not_import_pytest():
    code = ("import sys, bigspec, bigspec.testing, bigspec.kernels; from bigspec.testing import KernelTests; "
            "print('pytest' in sys.modules, KernelTests.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "KernelTests"]
