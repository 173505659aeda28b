"""Empirical NTK of a torch ``nn.Module`` by Jacobian contraction.

Jacot, Gabriel & Hongler 2018 (arXiv:1806.07572); Novak, Sohl-Dickstein & Schoenholz 2022
(arXiv:2206.08720) for the contraction.

``K[(i, a), (j, b)] = <d f_a(x_i) / d theta, d f_b(x_j) / d theta>``, rows sample-major
(row = sample * d + output). The model runs in eval mode (BatchNorm running statistics,
no dropout) through ``torch.func.functional_call``, on a private copy: the caller's module
is never switched to eval mode, moved or cast. ``bind(X)`` snapshots the weights (a deep
copy) and infers the output count and input shape. Per-sample Jacobians come from
``vmap(jacrev)`` in fixed-size sub-batches (ragged ones padded), so a tile is a pure function
of the weights and its own data rows. A tile keeps its row Jacobians and streams the column
ones sub-batch by sub-batch. With ``parameter_chunk`` it does so one group of parameter
tensors at a time (``K = sum_g J_g J_g^T``, the groups consecutive in ``named_parameters``
order, so every entry sums the same products in the same order): a tile then holds the
Jacobians of at most ``parameter_chunk`` parameters (or of its largest tensor) instead of all
of them, at the cost of one Jacobian pass per group. ``precision="mixed"`` (default) runs the model in its own dtype
and contracts in float64: the all-float32 path measured 100x worse log-determinants.

Needs the ``ntk`` extra (torch), and a model object: it is formed from Python only
(``bigspec.form(bigspec.kernels.NTK(model), X, store)``), not from the command line.

Examples
--------
>>> import numpy as np, torch
>>> from bigspec.kernels import get_kernel
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
>>> x = np.random.default_rng(0).random((5, 3))
>>> k = get_kernel("ntk", model=net).bind(x)
>>> k.n_outputs, k(x, x, diagonal=True).shape, net.training
(2, (10, 10), True)
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict

import numpy as np

from ..errors import BackendUnavailableError, KernelError
from .base import Kernel, KernelParameterError

PRECISIONS = ("mixed", "float64", "float32")
# torch.func transforms are not safe in concurrent Python threads (functorch's interpreter
# stack asserts); tiles of one process take turns, each using torch's own intra-op threads.
_TORCH_FUNC_LOCK = threading.Lock()

NEEDS_MODEL = ("the ntk kernel needs a torch model object (model=<torch.nn.Module>), so it can only be formed from "
               "Python, not from the command line: bigspec.form(bigspec.kernels.NTK(model), X, store)")


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(
            "the 'ntk' kernel needs torch: pip install torch, or pip install \".[ntk]\" in the bigspec checkout") from e
    return torch


class NTK(Kernel):
    """Empirical NTK of ``model`` with ``n_outputs`` outputs (inferred from the model if omitted).

    Parameters
    ----------
    model : torch.nn.Module
        Mapping a batch (b, *input_shape) to (b, n_outputs). Never modified: bigspec
        evaluates a private copy in eval mode.
    n_outputs : int, optional
        Checked against the model's output count when bound; inferred if omitted.
    precision : {"mixed", "float64", "float32"}
        ``"mixed"``: the model in its own dtype, contraction in float64.
    batch_size : int
        Samples per Jacobian sub-batch.
    cache_bytes : int
        Per-process budget for cached column Jacobians.
    parameter_chunk : int, optional
        Most parameters whose Jacobians a tile holds at once: the parameter tensors are taken in
        consecutive groups of at most this many entries (a larger tensor is a group of its own)
        and the tile is summed over the groups. None (default): all at once. A tile of ``r``
        rows then holds ``r x parameter_chunk`` Jacobian entries instead of ``r x P``, and
        computes ``ceil``-many more Jacobian passes (one per group). It changes neither the
        matrix nor its store's identity (a store formed with one value resumes with another).
    """

    name = "ntk"
    kron_identity = False
    defaults = {"precision": "mixed", "batch_size": 8, "cache_bytes": 512 * 2**20, "parameter_chunk": None}

    def __init__(self, model=None, n_outputs: int | None = None, **params):
        if model is None:
            raise KernelParameterError(NEEDS_MODEL)
        if isinstance(model, (str, bytes, int, float)):   # e.g. --model resnet on the command line
            raise KernelParameterError(f"{NEEDS_MODEL}; got model={model!r}")
        torch = _torch()
        if not isinstance(model, torch.nn.Module):
            raise KernelParameterError(f"{NEEDS_MODEL}; got model of type {type(model).__name__}")
        self.model = model            # the caller's: read (weights, spec), never evaluated or changed
        self._private = False         # True once self.model is this kernel's own copy (bind)
        self._declared_outputs = n_outputs
        super().__init__(n_outputs=n_outputs or 1, **params)
        self._input_shape = None

    def check_params(self):
        if self.params["precision"] not in PRECISIONS:
            raise KernelParameterError(
                f"ntk kernel: precision must be one of {', '.join(PRECISIONS)}, got {self.params['precision']!r}")
        if int(self.params["batch_size"]) < 1:
            raise KernelParameterError("ntk kernel: batch_size must be a positive integer")
        chunk = self.params["parameter_chunk"]
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
            raise KernelParameterError(f"ntk kernel: parameter_chunk must be a positive integer (parameters per "
                                       f"group) or None, got {chunk!r}")

    # -- metadata ---------------------------------------------------------------------
    def _model_dtype(self):
        torch = _torch()
        if self.params["precision"] == "float64":
            return torch.float64
        if self.params["precision"] == "float32":
            return torch.float32
        first = next(self.model.parameters(), None)
        return first.dtype if first is not None else torch.float32

    def spec(self) -> dict:
        spec = super().spec()
        h = hashlib.sha1()
        for name, t in self.model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        spec["params"].update({"model": type(self.model).__name__, "weights_sha1": h.hexdigest(),
                               "n_parameters": int(sum(p.numel() for p in self.model.parameters())),
                               "model_dtype": str(self._model_dtype()).replace("torch.", "")})
        return spec

    def check_data(self, X) -> None:
        """Run (a copy of) the model on one sample: clear errors for wrong shapes or output counts.

        Validation only; :meth:`bind` returns the kernel configured for X.
        """
        self.bind(X)

    def bind(self, X) -> NTK:
        """A new kernel with a private copy of the model's weights, its output count and input shape.

        Runs the copy on one sample, so wrong shapes fail here with a clear error.
        """
        torch = _torch()
        if not hasattr(X, "shape") or not hasattr(X, "ndim"):
            X = np.asarray(X)
        if X.ndim < 2:
            raise KernelError(f"ntk kernel: X must have shape (n_samples, *input_shape), got {X.shape}")
        bound = copy.copy(self)       # __getstate__: no caches shared with self
        bound.params = dict(self.params)
        bound.model = copy.deepcopy(self.model)
        bound._private = True
        x = torch.as_tensor(np.asarray(X[:1]), dtype=bound._model_dtype())
        try:
            with torch.no_grad():
                out = bound._module()(x)
        except Exception as e:
            raise KernelError(
                f"ntk kernel: the model cannot take inputs of shape {tuple(X.shape[1:])} "
                f"(X has shape {X.shape}): {e}") from e
        if out.ndim != 2 or out.shape[0] != 1:
            raise KernelError(f"ntk kernel: the model must map (batch, ...) to (batch, n_outputs); "
                              f"it returned shape {tuple(out.shape)}")
        d = int(out.shape[1])
        if self._declared_outputs not in (None, d):
            raise KernelError(f"ntk kernel: n_outputs={self._declared_outputs} but the model has {d} outputs")
        bound.n_outputs = d
        bound._input_shape = tuple(X.shape[1:])
        return bound

    # -- computation ------------------------------------------------------------------
    def _module(self, device=None):
        """The module evaluated: this kernel's own eval-mode copy, in the compute dtype, on ``device``."""
        dtype = self._model_dtype()
        cache = self.__dict__.get("_cache")
        key = (str(device), dtype)
        if cache is None or cache[0] != key:
            # always a copy, even of this kernel's private model: functional_call swaps the evaluated
            # module's parameters for torch.func's wrapper tensors while a tile runs, and a worker may
            # pickle this kernel (the model, not the copy: see __getstate__) to send it to another
            # worker meanwhile ("Could not serialize object of type NTK", once in a suite's demo run)
            module = copy.deepcopy(self.model).to(dtype=dtype, device=device)
            self._cache = (key, module.eval())   # never the caller's module (see bind)
        return self._cache[1]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_cache", None)
        state.pop("_jac_cache", None)
        return state

    def _cached(self, key, compute):
        """Per-process LRU of sub-batch Jacobians: tiles of one worker share their columns' work."""
        cache = self.__dict__.setdefault("_jac_cache", OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key][0]
        value = compute()
        size = sum(v.numel() * v.element_size() for v in value.values())
        limit = int(self.params["cache_bytes"])
        if size <= limit:
            cache[key] = (value, size)
            while sum(s for _, s in cache.values()) > limit:
                cache.popitem(last=False)
        return value

    def parameter_groups(self, module=None) -> list[list[str]]:
        """The parameter names of each group a tile is summed over (``parameter_chunk``), in
        ``named_parameters`` order; one group of all of them without a chunk."""
        module = self.model if module is None else module
        named = [(k, v.numel()) for k, v in module.named_parameters()]
        chunk = self.params["parameter_chunk"]
        if chunk is None:
            return [[k for k, _ in named]]
        groups, size = [], 0
        for k, numel in named:
            if not groups or size + numel > int(chunk):
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += numel
        return groups

    def _jacobians(self, x, module, group=None):
        """Per-sample Jacobians {param name: (b, d, *shape)} in fixed sub-batches (padded), with
        respect to the parameters named in ``group`` (all without)."""
        torch = _torch()
        from torch.func import functional_call, jacrev, vmap

        named = {k: v.detach() for k, v in module.named_parameters()}
        params = named if group is None else {k: named[k] for k in group}
        fixed = {} if group is None else {k: v for k, v in named.items() if k not in params}
        buffers = {k: v.detach() for k, v in module.named_buffers()}

        def f(p, xi):
            return functional_call(module, ({**fixed, **p}, buffers), (xi.unsqueeze(0),)).squeeze(0)

        bs = int(self.params["batch_size"])
        tag = None if group is None else (group[0], len(group))
        chunks = []
        for s in range(0, x.shape[0], bs):
            xb = x[s:s + bs]
            real = xb.shape[0]
            if real < bs:  # pad so every call sees the same shapes (bitwise-reproducible tiles)
                xb = torch.cat([xb, xb[-1:].expand(bs - real, *xb.shape[1:])])
            key = (hashlib.sha1(xb.detach().cpu().numpy().tobytes()).hexdigest(), str(xb.device), real, tag)
            J = self._cached(key, lambda xb=xb: vmap(jacrev(f), in_dims=(None, 0))(params, xb))
            chunks.append({k: v[:real] for k, v in J.items()})
        return chunks

    def block(self, x_rows, x_cols, *, diagonal=False):
        with _TORCH_FUNC_LOCK:
            return self._block(x_rows, x_cols, diagonal)

    def _block(self, x_rows, x_cols, diagonal):
        torch = _torch()
        on_gpu = not isinstance(x_rows, np.ndarray)
        device = "cuda" if on_gpu else None
        module = self._module(device)
        dtype = self._model_dtype()
        shape = self._input_shape or tuple(x_rows.shape[1:])
        xr = torch.as_tensor(x_rows, device=device).to(dtype).reshape(-1, *shape)
        xc = xr if diagonal else torch.as_tensor(x_cols, device=device).to(dtype).reshape(-1, *shape)
        contract = torch.float32 if self.params["precision"] == "float32" else torch.float64
        d = self.n_outputs
        out = torch.zeros((xr.shape[0] * d, xc.shape[0] * d), dtype=contract, device=device)
        bs = int(self.params["batch_size"])
        groups = self.parameter_groups(module) if self.params["parameter_chunk"] is not None else [None]
        for group in groups:      # consecutive groups: each entry sums the same products in the same order
            rows = self._jacobians(xr, module, group)
            d_model = next(iter(rows[0].values())).shape[1] if rows and rows[0] else d
            if d_model != d:
                raise KernelError(f"ntk kernel: n_outputs={d} but the model has {d_model} outputs; bind the kernel "
                                  f"to the data first (kernel.bind(X)) to take the count from the model")
            for cj, s in enumerate(range(0, xc.shape[0], bs)):
                Jc = rows[cj] if diagonal else self._jacobians(xc[s:s + bs], module, group)[0]
                c0, c1 = s * d, (s + next(iter(Jc.values())).shape[0]) * d
                r0 = 0
                for Jr in rows:
                    nr = next(iter(Jr.values())).shape[0] * d
                    acc = out[r0:r0 + nr, c0:c1]
                    for name in Jr:  # named_parameters order: a fixed summation order
                        acc += Jr[name].reshape(nr, -1).to(contract) @ Jc[name].reshape(c1 - c0, -1).to(contract).T
                    r0 += nr
            del rows
        if on_gpu:  # pragma: no cover - needs a GPU
            import cupy

            return cupy.from_dlpack(out.detach().to(torch.float64))
        return out.detach().to(torch.float64).cpu().numpy()
