"""Kernels against direct dense formulas and a simulated wide network; KernelTests on each; bind, reserved names."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import bigspec
from bigspec.errors import KernelError
from bigspec.kernels import RBF, Matern, ReLU, get_kernel, known_kernels
from bigspec.testing import KernelTests


def dense_stationary(X, name, **p):
    r = cdist(X, X)
    ell, var = p.get("lengthscale", 1.0), p.get("variance", 1.0)
    if name == "rbf":
        return var * np.exp(-r ** 2 / (2 * ell ** 2))
    s = np.sqrt(2 * p["nu"]) * r / ell
    poly = {0.5: 1.0, 1.5: 1 + s, 2.5: 1 + s + s ** 2 / 3}[p["nu"]]
    return var * poly * np.exp(-s)


@pytest.mark.parametrize("name,params", [
    ("rbf", {"lengthscale": 0.7, "variance": 2.0}),
    ("matern", {"nu": 0.5, "lengthscale": 0.4}),
    ("matern", {"nu": 1.5, "lengthscale": 1.3, "variance": 0.5}),
    ("matern", {"nu": 2.5, "lengthscale": 0.9}),
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stationary_kernels_match_dense_formula(name, params, dtype, tmp_path):
    X = np.random.default_rng(1).random((73, 4)) + 100.0  # offset data: centring keeps GEMM distances exact
    ms = bigspec.form(name, X, str(tmp_path / "K.zarr"), tile_size=20, dtype=dtype, **params)
    K = ms.to_dask().compute()
    perm = ms.group["permutation"][:]
    ref = dense_stationary(X[perm], name, **params)
    np.testing.assert_allclose(K, ref, rtol=1e-6 if dtype == "float32" else 1e-11, atol=1e-7 if dtype == "float32" else 1e-12)
    assert K.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.diag(K), np.full(73, params.get("variance", 1.0), dtype=dtype))
    assert np.linalg.eigvalsh(K.astype(np.float64)).min() > -1e-6


def relu_dense_reference(X, depth, sw, sb, kind):
    """Straightforward per-pair arc-cosine recursion (no tiles, no GEMM tricks)."""
    n, d0 = X.shape
    K = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            s = sw * X[i] @ X[j] / d0 + sb
            qi = sw * X[i] @ X[i] / d0 + sb
            qj = sw * X[j] @ X[j] / d0 + sb
            t = s
            for _ in range(depth):
                c = np.clip(s / np.sqrt(qi * qj), -1.0, 1.0)
                th = 0.0 if i == j else np.arccos(c)
                e_phi = np.sqrt(qi * qj) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
                e_dphi = (np.pi - th) / (2 * np.pi)
                s = sw * e_phi + sb
                t = s + sw * e_dphi * t
                qi, qj = sw * qi / 2 + sb, sw * qj / 2 + sb
            K[i, j] = t if kind == "ntk" else s
    return K


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
@pytest.mark.parametrize("depth", [1, 3])
def test_relu_matches_pairwise_recursion(kind, depth):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((25, 6)) * rng.uniform(0.5, 2.0, (25, 1))
    X[1] = 2.5 * X[0]     # parallel pair
    X[2] = -X[3]          # antiparallel pair
    k = ReLU(depth=depth, weight_variance=2.0, bias_variance=0.1, kind=kind)
    ref = relu_dense_reference(X, depth, 2.0, 0.1, kind)
    np.testing.assert_allclose(k(X, X, diagonal=True), ref, rtol=1e-12)
    np.testing.assert_allclose(k(X[:10], X[10:]), ref[:10, 10:], rtol=1e-12)


def wide_relu_network_kernels(X, depth, sw, sb, width, seed):
    """NNGP and NTK of one random ReLU network in NTK parameterisation, width ``width``."""
    rng = np.random.default_rng(seed)
    n, d0 = X.shape
    a, fan_in, acts, pre = X, d0, [X], []
    Ws = []
    for _ in range(depth):
        W = rng.standard_normal((fan_in, width))
        b = rng.standard_normal(width)
        z = np.sqrt(sw / fan_in) * a @ W + np.sqrt(sb) * b
        Ws.append(W)
        pre.append(z)
        a = np.maximum(z, 0)
        acts.append(a)
        fan_in = width
    w_out = rng.standard_normal(fan_in)
    nngp = sw * a @ a.T / fan_in + sb
    # layerwise NTK: sum over layers of (sw/n a.a' + sb) (delta . delta')
    delta = np.broadcast_to(np.sqrt(sw / fan_in) * w_out, (n, fan_in))
    ntk = sw * acts[-1] @ acts[-1].T / fan_in + sb
    for layer in range(depth - 1, -1, -1):
        delta = delta * (pre[layer] > 0)
        fan = X.shape[1] if layer == 0 else width
        ntk = ntk + (sw * acts[layer] @ acts[layer].T / fan + sb) * (delta @ delta.T)
        delta = np.sqrt(sw / fan) * delta @ Ws[layer].T
    return nngp, ntk


def test_relu_kernels_match_a_wide_network():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 5))
    errs = {"nngp": [], "ntk": []}
    for seed in range(4):
        nngp, ntk = wide_relu_network_kernels(X, depth=2, sw=2.0, sb=0.1, width=4096, seed=seed)
        for kind, emp in (("nngp", nngp), ("ntk", ntk)):
            exact = ReLU(depth=2, kind=kind)(X, X, diagonal=True)
            errs[kind].append(np.linalg.norm(emp - exact) / np.linalg.norm(exact))
    # finite-width fluctuation is O(width^-1/2): ~0.05 at 4096 (kernels.md 3.2)
    assert np.mean(errs["nngp"]) < 0.12 and np.mean(errs["ntk"]) < 0.12
    # and it is a real comparison: a different depth is far off
    assert np.linalg.norm(ReLU(depth=4, kind="ntk")(X, X, diagonal=True) - ntk) / np.linalg.norm(ntk) > 0.3


def test_relu_diagonal_is_exact():
    X = np.random.default_rng(4).standard_normal((30, 8))
    K = ReLU(depth=5, kind="nngp", weight_variance=2.0, bias_variance=0.1)(X, X, diagonal=True)
    q = 2.0 * (X * X).sum(1) / 8 + 0.1
    for _ in range(5):
        q = 2.0 * q / 2 + 0.1
    np.testing.assert_allclose(np.diag(K), q, rtol=1e-15)


def test_registry_and_parameter_errors():
    assert {"rbf", "matern", "relu", "ntk", "attention"} <= set(known_kernels())
    assert isinstance(get_kernel("matern", nu=0.5), Matern) and isinstance(get_kernel(RBF()), RBF)
    with pytest.raises(KernelError, match="unknown kernel 'gauss'.*known kernels: attention"):
        get_kernel("gauss")
    with pytest.raises(KernelError, match="unknown parameter.*lenghtscale.*it takes: lengthscale, variance"):
        get_kernel("rbf", lenghtscale=1.0)
    with pytest.raises(KernelError, match="nu must be 0.5, 1.5 or 2.5"):
        get_kernel("matern", nu=3)
    with pytest.raises(KernelError, match="depth"):
        get_kernel("relu", depth=-1)
    with pytest.raises(KernelError, match="kind must be"):
        get_kernel("relu", kind="cnn")


# -- the public kernel test suite on every built-in kernel (bigspec.testing.KernelTests) ----------------

POINTS = np.random.default_rng(11).standard_normal((23, 3)) + 5.0   # offset: prepare() must centre


class TestRBFKernel(KernelTests):
    kernel = RBF(lengthscale=1.5, variance=2.0)
    X = POINTS


class TestMaternHalfKernel(KernelTests):
    kernel = Matern(nu=0.5, lengthscale=1.2)
    X = POINTS


class TestMaternThreeHalvesKernel(KernelTests):
    kernel = Matern(nu=1.5, lengthscale=0.8)
    X = POINTS


class TestMaternFiveHalvesKernel(KernelTests):
    kernel = Matern(nu=2.5, lengthscale=2.0, variance=0.5)
    X = POINTS


class TestReLUKernel(KernelTests):
    kernel = ReLU(depth=3)
    X = POINTS


class TestReLUTenOutputsKernel(KernelTests):
    kernel = ReLU(depth=2, kind="nngp", n_outputs=10)
    X = POINTS


class TestAttentionKernel(KernelTests):
    kernel = get_kernel("attention", n_draws=48, draw_chunk=20, sigma_qk=2.0)
    X = np.random.default_rng(12).standard_normal((14, 3, 2))


class TestAttentionPositionsKernel(KernelTests):
    kernel = get_kernel("attention", n_draws=32, pool="none", sigma_eb=0.3)
    X = np.random.default_rng(13).standard_normal((7, 3, 2))


# -- bind: a new kernel configured for the data; the caller's kernel untouched -------------------------

@pytest.mark.parametrize("kernel", [RBF(lengthscale=0.5), Matern(nu=2.5), ReLU(n_outputs=3)])
def test_bind_returns_an_equal_fresh_kernel(kernel):
    X = np.random.default_rng(5).random((9, 2))
    params = dict(kernel.params)
    bound = kernel.bind(X)
    assert type(bound) is type(kernel) and bound is not kernel and bound.params is not kernel.params
    assert bound.params == params == kernel.params and bound.n_outputs == kernel.n_outputs
    x = bound.prepare(X)
    np.testing.assert_array_equal(bound(x, x, diagonal=True), kernel(kernel.prepare(X), kernel.prepare(X),
                                                                        diagonal=True))
    bound.params["variance" if "variance" in params else "depth"] = 7
    assert kernel.params == params    # the two dicts are independent


def test_bind_checks_the_data_shape():
    with pytest.raises(KernelError, match=r"rbf kernel needs X of shape \(n_samples, n_features\)"):
        RBF().bind(np.zeros((4, 2, 2)))
    with pytest.raises(KernelError, match=r"attention kernel needs X of shape \(n_sequences, seq_len, d_in\)"):
        get_kernel("attention").bind(np.zeros((4, 6)))
    with pytest.raises(KernelError, match="seq_len=4 but X has sequences of length 3"):
        get_kernel("attention", seq_len=4).bind(np.zeros((5, 3, 2)))


# -- reserved parameter names: one meaning per option ---------------------------------------------------

def test_reserved_parameters_cover_every_verb_keyword():
    import inspect

    from bigspec.kernels import RESERVED_PARAMETERS

    for verb in (bigspec.form, bigspec.spectrum, bigspec.logdet, bigspec.free_decompress):
        named = {p.name for p in inspect.signature(verb).parameters.values() if p.kind != p.VAR_KEYWORD}
        assert named <= RESERVED_PARAMETERS, (verb.__name__, sorted(named - RESERVED_PARAMETERS))
    for name in known_kernels():
        cls = bigspec.kernels._kernel_class(name)
        assert not set(cls.defaults) & RESERVED_PARAMETERS, name


@pytest.mark.parametrize("reserved", ["seed", "tile_size", "degree", "shift", "params"])
def test_kernel_class_with_a_reserved_parameter_is_refused_at_definition(reserved):
    from bigspec.kernels import Kernel

    with pytest.raises(TypeError, match=f"kernel class Clash has parameter.s. named '{reserved}', reserved"):
        class Clash(Kernel):
            name = "clash"
            defaults = {"lengthscale": 1.0, reserved: 0}

            def block(self, x_rows, x_cols, *, diagonal=False):
                return x_rows @ x_cols.T

    class Fine(Kernel):          # and a kernel without a reserved name is defined as usual
        name = "fine"
        defaults = {"draw_seed": 0, "n_draws": 3}

        def block(self, x_rows, x_cols, *, diagonal=False):
            return x_rows @ x_cols.T

    assert Fine(draw_seed=4).params == {"draw_seed": 4, "n_draws": 3}


def test_kernel_constructor_with_a_reserved_keyword_is_refused_at_definition():
    from bigspec.kernels import Kernel

    with pytest.raises(TypeError, match="kernel class Seeded has parameter.s. named 'seed', reserved"):
        class Seeded(Kernel):
            name = "seeded"

            def __init__(self, seed=0, n_outputs=1):
                super().__init__(n_outputs=n_outputs)

            def block(self, x_rows, x_cols, *, diagonal=False):
                return x_rows @ x_cols.T


def test_attention_seed_is_draw_seed():
    with pytest.raises(KernelError, match="unknown parameter.*seed.*'seed' is now 'draw_seed'"):
        get_kernel("attention", seed=3)
    with pytest.raises(KernelError, match="'tile_size' is an option of the bigspec verbs"):
        get_kernel("rbf", tile_size=3)
    k = get_kernel("attention", draw_seed=5)
    assert k.spec()["params"]["draw_seed"] == 5 and "seed" not in k.spec()["params"]


# -- ntk from the command line; describe() ---------------------------------------------------------------

def test_ntk_without_a_model_says_python_only(tmp_path, capsys):
    from bigspec.cli import main
    from bigspec.kernels import KernelParameterError

    call = "bigspec.form(bigspec.kernels.NTK(model), X, store)"
    for params in ({}, {"model": None}, {"model": "resnet"}):
        with pytest.raises(KernelParameterError) as e:
            get_kernel("ntk", **params)
        assert "needs a torch model object" in str(e.value) and "only be formed from Python" in str(e.value)
        assert call in str(e.value)
    path = tmp_path / "X.npy"
    np.save(path, np.zeros((4, 3)))
    for extra in ([], ["--model", "resnet"]):
        with pytest.raises(SystemExit) as e:
            main(["form", "ntk", str(path), str(tmp_path / "out.zarr"), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 1 and "needs a torch model object" in err and call in err, err
        assert "NoneType" not in err
    assert not (tmp_path / "out.zarr").exists()


def test_describe_lists_every_kernel_with_its_parameters(monkeypatch):
    from bigspec.kernels import describe

    lines = describe().splitlines()
    assert [line.split(":")[0] for line in lines] == known_kernels()
    by_name = {line.split(":")[0]: line for line in lines}
    for name in ("rbf", "matern", "relu", "attention", "ntk"):
        cls = bigspec.kernels._kernel_class(name)
        for param, default in cls.defaults.items():
            assert f"{param}={default!r}" in by_name[name], (name, param)
        assert ("K (x) I_d" in by_name[name]) == cls.kron_identity, name
    assert "Python only" in by_name["ntk"] and "bigspec.form(bigspec.kernels.NTK(model), X, store)" in by_name["ntk"]
    assert "n_outputs=1" in by_name["rbf"] and "draw_seed=0" in by_name["attention"]

    class EP:  # entry points: a Kernel subclass, a factory, and one that fails to load
        def __init__(self, name, obj):
            self.name, self.obj = name, obj

        def load(self):
            if isinstance(self.obj, Exception):
                raise self.obj
            return self.obj

    class Cubic(ReLU):
        name = "cubic"
        defaults = {"power": 3}

    eps = {"cubic": EP("cubic", Cubic), "factory": EP("factory", lambda **kw: RBF(**kw)),
           "broken": EP("broken", ImportError("no module named thirdparty"))}
    monkeypatch.setattr(bigspec.kernels, "_entry_points", lambda: eps)
    by_name = {line.split(":")[0]: line for line in describe().splitlines()}
    assert sorted(by_name) == sorted({"rbf", "matern", "relu", "attention", "ntk", *eps})
    assert by_name["cubic"] == "cubic: K (x) I_d; power=3, n_outputs=1"
    assert "third-party" in by_name["factory"]
    assert "could not be loaded" in by_name["broken"] and "no module named thirdparty" in by_name["broken"]
