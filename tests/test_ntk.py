"""Empirical NTK of torch models against J J^T from plain autograd."""

import numpy as np
import pytest

import bigspec
from bigspec.errors import KernelError, TileSizeError
from bigspec.testing import KernelTests, assert_logdet_close

pytestmark = pytest.mark.ntk  # CI's second step (after pip install ".[ntk]") runs these with -m ntk
torch = pytest.importorskip("torch")


def small_cnn(dtype=torch.float32):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():  # non-trivial running statistics: eval mode must use them
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.to(dtype)


def autograd_ntk(net, X):
    """K[(i,a),(j,b)] by one autograd.grad call per (sample, output)."""
    net = net.double().eval()
    grads = []
    for x in torch.as_tensor(X, dtype=torch.float64):
        out = net(x.unsqueeze(0))[0]
        for a in range(out.shape[0]):
            g = torch.autograd.grad(out[a], list(net.parameters()), retain_graph=True)
            grads.append(torch.cat([t.reshape(-1) for t in g]))
    J = torch.stack(grads)
    return (J @ J.T).numpy()


def test_ntk_tiles_match_autograd(tmp_path):
    X = np.random.default_rng(0).standard_normal((13, 1, 6, 6))
    net = small_cnn(torch.float64)
    k = bigspec.kernels.get_kernel("ntk", model=net, batch_size=4)
    ms = bigspec.form(k, X, str(tmp_path / "ntk.zarr"), tile_size=9)  # 3 samples x 3 outputs per tile, ragged
    assert ms.n == 39 and ms.attrs["kernel"]["n_outputs"] == 3 and not ms.attrs["kernel"]["kron_identity"]
    perm = ms.group["permutation"][:]
    ref = autograd_ntk(small_cnn(torch.float64), X[perm])
    K = ms.to_dask().compute()
    np.testing.assert_allclose(K, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(K, K.T)
    assert_logdet_close(bigspec.logdet(ms), K, rtol=1e-8)


def test_mixed_precision_is_closer_than_float32():
    X = np.random.default_rng(1).standard_normal((10, 1, 6, 6))
    ref = autograd_ntk(small_cnn(torch.float64), X)
    errs = {}
    for precision in ("mixed", "float32"):
        k = bigspec.kernels.get_kernel("ntk", model=small_cnn(torch.float32), precision=precision).bind(X)
        errs[precision] = np.abs(k(X, X, diagonal=True) - ref).max() / np.abs(ref).max()
    assert errs["mixed"] < 1e-5
    assert errs["mixed"] < errs["float32"]


def test_ntk_bad_input(tmp_path):
    net = small_cnn()
    with pytest.raises(KernelError, match=r"cannot take inputs of shape \(1, 5, 5\)"):
        bigspec.form("ntk", np.zeros((8, 1, 5, 5)), str(tmp_path / "a.zarr"), model=net)
    with pytest.raises(KernelError, match="n_outputs=4 but the model has 3 outputs"):
        bigspec.form("ntk", np.zeros((8, 1, 6, 6)), str(tmp_path / "b.zarr"), model=net, n_outputs=4)
    with pytest.raises(TileSizeError, match="multiple of 3 .matrix rows per data point."):
        bigspec.form("ntk", np.zeros((8, 1, 6, 6)), str(tmp_path / "c.zarr"), model=net, tile_size=10)
    with pytest.raises(KernelError, match="torch.nn.Module"):
        bigspec.kernels.get_kernel("ntk", model="resnet")


def model_image(net):
    """Everything a caller could notice about a module: mode flags, dtypes, devices, weight and buffer bytes."""
    return ([(name, m.training) for name, m in net.named_modules()],
            [(name, t.dtype, t.device, t.detach().cpu().numpy().tobytes()) for name, t in net.state_dict().items()])


@pytest.mark.parametrize("precision", ["mixed", "float64"])
def test_bind_and_forming_leave_the_users_model_and_kernel_untouched(tmp_path, precision):
    X = np.random.default_rng(2).standard_normal((7, 1, 6, 6))
    net = small_cnn(torch.float32)
    net.train()                                   # the user is training it: forming must not switch it
    before = model_image(net)
    k = bigspec.kernels.NTK(net, precision=precision, batch_size=4)
    params = dict(k.params)
    bound = k.bind(X)
    bound(X[:3], X[3:])
    k.check_data(X)                               # validation only
    ms = bigspec.form(k, X, str(tmp_path / "k.zarr"), tile_size=6)
    assert model_image(net) == before and net.training and net[1].training
    assert k.params == params and k.n_outputs == 1 and k._input_shape is None and k.model is net
    assert bound.n_outputs == 3 and bound._input_shape == (1, 6, 6) and bound.model is not net
    assert bound.spec() == k.bind(X).spec() == ms.attrs["kernel"]
    # evaluated in eval mode (running statistics), exactly like autograd on an eval-mode copy
    perm = ms.group["permutation"][:]
    tol = 1e-5 if precision == "mixed" else 1e-10
    ref = autograd_ntk(small_cnn(torch.float32), X[perm])
    np.testing.assert_allclose(ms.read(0, 21, 0, 21), ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_bound_tiles_equal_an_unbound_kernel_with_declared_outputs():
    X = np.random.default_rng(3).standard_normal((6, 1, 6, 6))
    net = small_cnn(torch.float64)
    bound = bigspec.kernels.NTK(net, batch_size=4).bind(X)
    declared = bigspec.kernels.NTK(net, n_outputs=3, batch_size=4)
    assert bound(X, X, diagonal=True).tobytes() == declared(X, X, diagonal=True).tobytes()
    assert bound(X[:2], X[2:]).tobytes() == declared(X[:2], X[2:]).tobytes()
    assert net.training    # the unbound kernel evaluated a private eval-mode copy too
    with pytest.raises(KernelError, match="n_outputs=1 but the model has 3 outputs; bind the kernel"):
        bigspec.kernels.NTK(net, batch_size=4)(X, X)


def test_ntk_needs_a_model_from_python():
    with pytest.raises(KernelError, match=r"only be formed from Python.*bigspec\.kernels\.NTK\(model\)"):
        bigspec.kernels.NTK()
    assert "Python only" in bigspec.kernels.describe()


class TestNTKKernel(KernelTests):
    kernel = bigspec.kernels.NTK(small_cnn(torch.float64), batch_size=3)
    X = np.random.default_rng(4).standard_normal((8, 1, 6, 6))


def test_parameter_chunks_hold_fewer_jacobians_and_give_the_same_matrix(tmp_path, monkeypatch):
    # small_cnn: conv weight 36, conv bias 4, BatchNorm 4 + 4, linear weight 432, linear bias 3
    X = np.random.default_rng(2).standard_normal((11, 1, 6, 6))
    net = small_cnn(torch.float64)
    whole = bigspec.kernels.get_kernel("ntk", model=net, batch_size=4).bind(X)
    chunked = bigspec.kernels.get_kernel("ntk", model=net, batch_size=4, parameter_chunk=40).bind(X)
    groups = chunked.parameter_groups()
    assert groups == [["0.weight", "0.bias"], ["1.weight", "1.bias"], ["4.weight"], ["4.bias"]]
    assert whole.parameter_groups() == [[k for k, _ in net.named_parameters()]]
    held = []
    real = type(chunked)._jacobians

    def spy(self, x, module, group=None):
        out = real(self, x, module, group)
        held.append(sum(v.numel() for J in out for v in J.values()) // (x.shape[0] * self.n_outputs))
        return out

    monkeypatch.setattr(type(chunked), "_jacobians", spy)
    ref = autograd_ntk(small_cnn(torch.float64), X)
    rows, cols = X[:7], X[3:]
    K = chunked(rows, cols)
    # Jacobians of at most one group's parameters (a tensor larger than the chunk: its own) at a time
    assert held and max(held) == 432 and sorted(set(held)) == [3, 8, 40, 432]
    np.testing.assert_allclose(K, ref[:21, 9:], rtol=1e-12, atol=1e-14)
    monkeypatch.undo()
    np.testing.assert_allclose(K, whole(rows, cols), rtol=1e-13, atol=1e-15)
    # a formed store: the same matrix, and a store formed without chunks resumes with them
    a = bigspec.form(whole, X, str(tmp_path / "a.zarr"), tile_size=9)
    b = bigspec.form(chunked, X, str(tmp_path / "b.zarr"), tile_size=9)
    np.testing.assert_allclose(b.to_dask().compute(), a.to_dask().compute(), rtol=1e-13, atol=1e-15)
    again = bigspec.form(chunked, X, str(tmp_path / "a.zarr"), tile_size=9)
    assert again.n == a.n


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_parameter_chunk_is_a_kernel_error(bad):
    with pytest.raises(KernelError, match="parameter_chunk"):
        bigspec.kernels.get_kernel("ntk", model=small_cnn(), parameter_chunk=bad)


def test_spectrum_of_an_ntk_with_fewer_parameters_than_rows_warns_of_its_null_space(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()  # P = 26
    X = np.random.default_rng(3).standard_normal((60, 3))
    ms = bigspec.form(bigspec.kernels.NTK(net), X, str(tmp_path / "k.zarr"), tile_size=20, progress=False)
    K = ms.to_dask().compute()
    exact_null = np.mean(np.linalg.eigvalsh(K) < 1e-9 * np.abs(K).max())
    with pytest.warns(bigspec.spectra.free.DecompressionWarning, match=r"rank is at most 26") as w:
        r = bigspec.spectrum(ms, sample_size=30, n_samples=2, progress=False)
    assert any("78.3%" in str(x.message) for x in w)                   # 1 - 26/120
    assert r.diagnostics["rank_bound"] == 26 and r.diagnostics["null_fraction"] == pytest.approx(1 - 26 / 120)
    assert exact_null >= r.diagnostics["null_fraction"] - 1e-12         # the bound holds for the real spectrum
    # the same from kernel= and X=, and no such warning where the parameters outnumber the rows
    with pytest.warns(bigspec.spectra.free.DecompressionWarning, match=r"rank is at most 26"):
        bigspec.spectrum(kernel=bigspec.kernels.NTK(net), X=X, sample_size=30, n_samples=2, progress=False)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = bigspec.spectrum(kernel=bigspec.kernels.NTK(net), X=X[:10], sample_size=5, n_samples=2, progress=False)
    assert not any("rank is at most" in str(x.message) for x in caught) and r.diagnostics["null_fraction"] is None


_PICKLED_DURING_FORWARD = []   # (kernel, results): the probe below pickles the kernel from inside a forward pass


class _PicklingProbe(torch.nn.Module):
    """A small MLP whose forward pickles the registered kernel: what a worker's comm thread may do
    while a tile runs (the kernel is a piece of data other workers fetch)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))

    def forward(self, x):
        if _PICKLED_DURING_FORWARD:
            import pickle

            kernel, results = _PICKLED_DURING_FORWARD[0]
            try:
                results.append(pickle.loads(pickle.dumps(kernel)))
            except Exception as e:          # the model's parameters swapped for torch.func's wrappers
                results.append(e)
        return self.net(x)


def test_the_kernel_pickles_while_a_tile_runs():
    torch.manual_seed(0)
    probe = _PicklingProbe().double()
    X = np.random.default_rng(5).standard_normal((6, 3))
    k = bigspec.kernels.NTK(probe).bind(X)
    reference = bigspec.kernels.NTK(probe).bind(X)(X, X, diagonal=True)
    results = []
    _PICKLED_DURING_FORWARD.append((k, results))
    try:
        during = k(X, X, diagonal=True)          # first call: its Jacobians are computed, forward runs
    finally:
        _PICKLED_DURING_FORWARD.clear()
    assert results and not [r for r in results if isinstance(r, Exception)], results[:1]
    np.testing.assert_array_equal(during, reference)
    np.testing.assert_array_equal(results[0](X, X, diagonal=True), reference)   # a copy made mid-tile is the same
