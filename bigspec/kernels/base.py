"""The kernel protocol: what ``bigspec.form`` and ``bigspec.spectrum`` need from a kernel.

Two ways to bring a kernel:

**Subclass** :class:`Kernel` (recommended). Set ``name``, ``defaults`` (parameter name ->
default value) and ``kron_identity``, implement :meth:`Kernel.block`, and, where needed,
``check_params``, ``check_data``, ``prepare``, ``rows_per_sample`` and ``_configure``.

**Any object** following the minimal protocol, which :func:`bigspec.kernels.get_kernel`
wraps in an adapter :class:`Kernel` supplying the defaults:

==================  ========  =====================================================================
attribute           needed    meaning (default)
==================  ========  =====================================================================
``name``            required  a non-empty ``str``, recorded in the store
``__call__``        required  ``obj(x_rows, x_cols, *, diagonal=False)`` returns the block
``n_outputs``       optional  d, outputs per data point (1)
``kron_identity``   optional  the full kernel is ``K (x) I_d`` and only K is stored (True); an
                              object with ``n_outputs > 1`` must state it
``params``          optional  dict of its parameters, recorded in the store (``{}``)
``prepare``         optional  ``prepare(X)``: whole-data preprocessing before tiling (unchanged)
``check_data``      optional  ``check_data(X)``: raise if X does not fit (X must be 2-D)
==================  ========  =====================================================================

The block between ``b1`` row points and ``b2`` column points has shape ``(b1, b2)`` for a
Kronecker kernel (``kron_identity``: the full kernel is ``K (x) I_d`` and only K, n x n, is
stored) and ``(b1 * d, b2 * d)`` otherwise, in sample-major order (row = sample * d +
output). It is computed on the array module of its inputs (numpy, or cupy on a GPU).
``diagonal=True`` means the rows and the columns are the same points.

Before a matrix is formed the kernel is **bound** to the data: ``k.bind(X)`` validates X
and returns a new kernel configured for it (e.g. the attention kernel's sequence length, the
empirical NTK's output count), leaving ``k``, its ``params`` and anything it holds (a torch
model) untouched. The bound kernel's ``prepare``, ``rows_per_sample()``, ``spec()`` and
``k(x_rows, x_cols, diagonal=...)`` are then what forming uses.

A kernel parameter cannot take the name of an option of ``bigspec.form``,
``bigspec.spectrum``, ``bigspec.logdet`` or ``bigspec.free_decompress``
(:data:`RESERVED_PARAMETERS`), as those options would capture it.

Examples
--------
>>> import numpy as np
>>> from bigspec.kernels import get_kernel
>>> k = get_kernel("rbf", lengthscale=2.0)
>>> k(np.zeros((2, 3)), np.ones((1, 3))).shape
(2, 1)

A plain object with a ``name`` and ``__call__`` is a kernel too:

>>> class Linear:
...     name = "linear"
...     def __call__(self, x_rows, x_cols, *, diagonal=False):
...         return x_rows @ x_cols.T
>>> lin = get_kernel(Linear()).bind(np.ones((4, 2)))
>>> lin.spec()["name"], lin.n_outputs, lin.kron_identity, lin.rows_per_sample()
('linear', 1, True, 1)
>>> lin(np.ones((2, 2)), np.ones((3, 2)))
array([[2., 2., 2.],
       [2., 2., 2.]])
"""

from __future__ import annotations

import copy
import inspect
import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..backend import namespace_of
from ..errors import KernelError

#: Keywords of ``bigspec.form``, ``bigspec.spectrum``, ``bigspec.logdet`` and
#: ``bigspec.free_decompress``: no kernel parameter may take one of these names, since those
#: verbs pass their remaining keywords to the kernel and would keep these for themselves.
RESERVED_PARAMETERS = frozenset({
    "kernel", "X", "store", "A", "tile_size", "dtype", "seed", "shuffle", "client", "overwrite", "device",
    "progress", "storage_options", "sample_size", "n_samples", "size", "support", "degree", "damping", "glue",
    "grid", "delta", "atom_tol", "regime", "shift", "scale", "method", "memory", "checkpoint", "dry_run",
    "triangle", "missing_chunks", "source", "eigenvalues", "params", "n_ladders", "pseudo_tol", "probes",
    "lanczos_steps", "reorthogonalize", "cross_check", "plan", "profile",
})


class KernelParameterError(KernelError):
    """Unknown or invalid kernel parameter."""


def _reserved_message(names, owner: str) -> str:
    return (f"{owner} has parameter(s) named {', '.join(map(repr, names))}, reserved for the options of "
            f"bigspec.form / spectrum / logdet / free_decompress (bigspec.kernels.RESERVED_PARAMETERS): "
            f"given to those verbs it would be taken as their own option, so the kernel could never receive "
            f"it; rename it (e.g. 'draw_seed' rather than 'seed')")


class Kernel(ABC):
    """Base class of bigspec kernels. Subclasses set ``name`` and implement :meth:`block`.

    Parameters
    ----------
    n_outputs : int
        d, outputs per data point.
    **params
        The kernel's parameters: any of the keys of the class attribute ``defaults``.

    Notes
    -----
    Subclass attributes: ``name`` (str), ``defaults`` (dict of parameter defaults; no key may
    be in :data:`RESERVED_PARAMETERS`, checked when the class is defined), ``kron_identity``.
    Data-dependent settings belong to the kernel returned by :meth:`bind`: override
    ``check_data`` to validate X (raise, never modify ``self``) and ``_configure(X)`` to set
    such settings on the new instance.

    Examples
    --------
    >>> import numpy as np
    >>> from bigspec.kernels import Kernel
    >>> class Cosine(Kernel):
    ...     name = "cosine"
    ...     defaults = {"variance": 1.0}
    ...     def block(self, x_rows, x_cols, *, diagonal=False):
    ...         a = x_rows / np.linalg.norm(x_rows, axis=1, keepdims=True)
    ...         b = x_cols / np.linalg.norm(x_cols, axis=1, keepdims=True)
    ...         return self.params["variance"] * (a @ b.T)
    >>> Cosine(variance=2.0)(np.array([[3.0, 4.0]]), np.array([[4.0, 3.0]]))
    array([[1.92]])
    >>> class Bad(Kernel):  # doctest: +ELLIPSIS
    ...     name = "bad"
    ...     defaults = {"seed": 0}
    ...     def block(self, x_rows, x_cols, *, diagonal=False):
    ...         return x_rows @ x_cols.T
    Traceback (most recent call last):
    ...
    TypeError: kernel class Bad has parameter(s) named 'seed', reserved ...
    """

    name: str = "kernel"
    kron_identity: bool = True
    defaults: dict[str, Any] = {}
    #: old parameter name -> new name, for a helpful message when an old name is given
    _renamed: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names = set(cls.defaults) if isinstance(cls.defaults, dict) else set()
        init = cls.__dict__.get("__init__")
        if init is not None:
            kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            try:
                params = list(inspect.signature(init).parameters.values())[1:]
            except (TypeError, ValueError):   # no introspectable signature: only defaults are checked
                params = []
            names |= {p.name for p in params if p.kind in kinds}
        clash = sorted(names & RESERVED_PARAMETERS)
        if clash:
            raise TypeError(_reserved_message(clash, f"kernel class {cls.__name__}"))

    def __init__(self, n_outputs: int = 1, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            hints = [f"{u!r} is now {self._renamed[u]!r}" for u in unknown if u in self._renamed]
            hints += [f"{u!r} is an option of the bigspec verbs, not a kernel parameter"
                      for u in unknown if u in RESERVED_PARAMETERS and u not in self._renamed]
            raise KernelParameterError(
                f"unknown parameter(s) {', '.join(unknown)} for kernel {self.name!r}; "
                f"it takes: {', '.join(sorted(self.defaults)) or 'none'} and n_outputs"
                + (f" ({'; '.join(hints)})" if hints else "")
            )
        self.n_outputs = _check_n_outputs(n_outputs)
        self.params = {**self.defaults, **params}
        self.check_params()

    def check_params(self) -> None:
        """Validate ``self.params``; raise :class:`KernelParameterError` naming the bad one."""

    def _positive(self, *names):
        for name in names:
            value = self.params[name]
            if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
                raise KernelParameterError(f"{self.name} kernel: {name} must be a positive number, got {value!r}")

    def spec(self) -> dict:
        """JSON-safe description recorded in the store's attributes."""
        return {"name": self.name, "n_outputs": self.n_outputs, "kron_identity": self.kron_identity,
                "params": {k: _jsonable(v) for k, v in self.params.items()}}

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Whole-data preprocessing before tiling (e.g. centring); default: unchanged."""
        return X

    def check_data(self, X) -> None:
        """Raise a clear :class:`KernelError` if ``X`` has the wrong shape for this kernel.

        Validation only: it never changes the kernel (see :meth:`bind`).
        """
        if X.ndim != 2:
            raise KernelError(f"{self.name} kernel needs X of shape (n_samples, n_features), got shape {X.shape}")

    def bind(self, X) -> Kernel:
        """Validate ``X`` and return a new kernel configured for it; ``self`` is left untouched.

        Parameters
        ----------
        X : array-like
            The data points (first axis = samples), as given to ``bigspec.form``.

        Returns
        -------
        Kernel
            A copy with its own ``params`` dict and any data-dependent settings (sequence
            length, output count, input shape) set.

        Examples
        --------
        >>> import numpy as np
        >>> from bigspec.kernels import get_kernel
        >>> k = get_kernel("attention", n_draws=8)
        >>> bound = k.bind(np.zeros((5, 3, 2)))
        >>> bound.params["seq_len"], k.params["seq_len"], bound is k
        (3, None, False)
        """
        if not hasattr(X, "shape") or not hasattr(X, "ndim"):
            X = np.asarray(X)
        self.check_data(X)
        bound = copy.copy(self)          # honours __getstate__: per-process caches are not shared
        bound.params = dict(self.params)
        bound._configure(X)
        return bound

    def _configure(self, X) -> None:
        """Set data-dependent settings on a fresh copy (called by :meth:`bind` only)."""

    def rows_per_sample(self) -> int:
        """Stored matrix rows per data point: 1 for Kronecker kernels, else n_outputs."""
        return 1 if self.kron_identity else self.n_outputs

    def __call__(self, x_rows, x_cols, *, diagonal: bool = False):
        return self.block(x_rows, x_cols, diagonal=diagonal)

    @abstractmethod
    def block(self, x_rows, x_cols, *, diagonal: bool = False):
        """The kernel block between two sets of data rows, on their array module."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args}, n_outputs={self.n_outputs})"


_PROTOCOL_HELP = ("a kernel needs a str `name` and `__call__(x_rows, x_cols, *, diagonal=False)` returning the block "
                  "(optional: n_outputs, kron_identity, params, prepare, check_data); or subclass "
                  "bigspec.kernels.Kernel, which supplies the rest")


class ProtocolKernel(Kernel):
    """Adapter: a :class:`Kernel` around an object following the minimal protocol (module doc).

    Made by :func:`bigspec.kernels.get_kernel`; the wrapped object is kept as ``obj`` and is
    never modified by bigspec.

    Examples
    --------
    >>> import numpy as np
    >>> from bigspec.kernels import get_kernel
    >>> class Poly:
    ...     name = "poly"
    ...     params = {"power": 2}
    ...     def __call__(self, x_rows, x_cols, *, diagonal=False):
    ...         return (1.0 + x_rows @ x_cols.T) ** self.params["power"]
    >>> k = get_kernel(Poly())
    >>> type(k).__name__, k.spec()["params"]
    ('ProtocolKernel', {'power': 2})
    """

    name = "protocol"

    def __init__(self, obj):
        missing = []
        name = getattr(obj, "name", None)
        if not (isinstance(name, str) and name):
            missing.append("name (a non-empty str)" if name is not None else "name")
        if not callable(obj):
            missing.append("__call__")
        if missing:
            raise KernelError(f"{type(obj).__name__} object is not a kernel: it lacks {', '.join(missing)}; "
                              + _PROTOCOL_HELP)
        n_outputs = _check_n_outputs(getattr(obj, "n_outputs", 1), f"kernel {name!r}: ")
        if hasattr(obj, "kron_identity"):
            kron = obj.kron_identity
            if not isinstance(kron, (bool, np.bool_)):
                raise KernelParameterError(f"kernel {name!r}: kron_identity must be True or False, got {kron!r}")
        elif n_outputs > 1:
            raise KernelError(
                f"kernel {name!r} has n_outputs={n_outputs} but no kron_identity attribute: state whether the "
                f"full kernel is K (x) I_d (kron_identity = True: blocks are (b1, b2), only K is stored) or not "
                f"(False: blocks are (b1*d, b2*d), sample-major)")
        else:
            kron = True
        params = getattr(obj, "params", None)
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise KernelParameterError(f"kernel {name!r}: params must be a dict, got {type(params).__name__}")
        clash = sorted(set(params) & RESERVED_PARAMETERS)
        if clash:
            raise KernelParameterError(_reserved_message(clash, f"kernel {name!r}"))
        self.obj = obj
        self.name = name
        self.n_outputs = int(n_outputs)
        self.kron_identity = bool(kron)
        self.params = dict(params)

    def spec(self) -> dict:
        spec = super().spec()
        spec["class"] = f"{type(self.obj).__module__}.{type(self.obj).__qualname__}"
        return spec

    def prepare(self, X):
        prepare = getattr(self.obj, "prepare", None)
        return X if prepare is None else prepare(X)

    def check_data(self, X) -> None:
        check = getattr(self.obj, "check_data", None)
        if check is None:
            super().check_data(X)
        else:
            check(X)

    def block(self, x_rows, x_cols, *, diagonal=False):
        return self.obj(x_rows, x_cols, diagonal=diagonal)

    def __repr__(self) -> str:
        return f"ProtocolKernel({self.obj!r})"


def _check_n_outputs(n_outputs, who: str = "") -> int:
    try:
        ok = int(n_outputs) == n_outputs and n_outputs >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise KernelParameterError(f"{who}n_outputs must be a positive integer, got {n_outputs!r}")
    return int(n_outputs)


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def squared_distances(x_rows, x_cols, diagonal: bool):
    """Pairwise squared distances by GEMM, clamped at 0, exactly 0 on a diagonal tile."""
    xp = namespace_of(x_rows)
    a = (x_rows * x_rows).sum(axis=1)
    b = (x_cols * x_cols).sum(axis=1)
    d2 = a[:, None] + b[None, :] - 2.0 * (x_rows @ x_cols.T)
    d2 = xp.maximum(d2, 0.0)
    if diagonal:
        d2[xp.arange(d2.shape[0]), xp.arange(d2.shape[0])] = 0.0
    return d2
