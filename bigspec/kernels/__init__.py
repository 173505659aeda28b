"""Kernel registry: built-in kernels plus third-party ones from the ``bigspec.kernels`` entry points.

The kernel classes are reachable here: ``RBF``, ``Matern``, ``ReLU``, and, loaded on first
use so that importing bigspec never imports torch, ``NTK`` (the empirical NTK of a torch
model) and ``Attention``. :func:`describe` lists them with their parameters. What a
third-party kernel must provide is in :mod:`bigspec.kernels.base`; ``bigspec.testing.KernelTests``
is a test suite it can run.

Examples
--------
>>> from bigspec.kernels import get_kernel, known_kernels
>>> "matern" in known_kernels()
True
>>> get_kernel("matern", nu=2.5).params["nu"]
2.5
>>> import bigspec
>>> bigspec.kernels.Attention.__name__, bigspec.kernels.NTK.__module__
('Attention', 'bigspec.kernels.ntk')
>>> print(describe().splitlines()[0])  # doctest: +ELLIPSIS
attention: K (x) I_d; sigma_e=1.0, sigma_eb=0.0, ...
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import KernelError
from .base import RESERVED_PARAMETERS, Kernel, KernelParameterError, ProtocolKernel
from .relu import ReLU
from .stationary import RBF, Matern

_BUILTIN = {"rbf": RBF, "matern": Matern, "relu": ReLU}
_LAZY = {"ntk": "bigspec.kernels.ntk:NTK", "attention": "bigspec.kernels.attention:Attention"}


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group="bigspec.kernels")}


def known_kernels() -> list[str]:
    """Names accepted by :func:`get_kernel` (built in and registered by entry points)."""
    return sorted({*_BUILTIN, *_LAZY, *_entry_points()})


def get_kernel(kernel, **params) -> Kernel:
    """A kernel from a name (with parameters), a :class:`Kernel` (returned as is) or a protocol object.

    Parameters
    ----------
    kernel : str, Kernel or object
        A name from :func:`known_kernels`; a :class:`Kernel` instance; or any object with a
        str ``name`` and ``__call__(x_rows, x_cols, *, diagonal=False)`` (the protocol of
        :mod:`bigspec.kernels.base`), wrapped in a :class:`ProtocolKernel` that supplies the
        optional parts.
    **params
        Parameters of a named kernel.

    Returns
    -------
    Kernel
        Not yet bound to data: call ``.bind(X)`` before forming.

    Raises
    ------
    KernelError
        Unknown name, or an object lacking what the protocol requires (the message names it).
    KernelParameterError
        Unknown or invalid parameters, or parameters given with an instance.

    Examples
    --------
    >>> import numpy as np
    >>> from bigspec.kernels import get_kernel
    >>> get_kernel("matern", nu=0.5)
    Matern(nu=0.5, lengthscale=1.0, variance=1.0, n_outputs=1)
    >>> class Dot:
    ...     name = "dot"
    ...     def __call__(self, x_rows, x_cols, *, diagonal=False):
    ...         return x_rows @ x_cols.T
    >>> get_kernel(Dot()).bind(np.eye(2)).spec()["kron_identity"]
    True
    >>> get_kernel(len)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bigspec.errors.KernelError: builtin_function_or_method object is not a kernel: it lacks name; ...
    """
    if isinstance(kernel, Kernel):
        if params:
            raise KernelParameterError(
                f"parameters {sorted(params)} were given with a kernel instance; set them on the instance instead")
        return kernel
    if isinstance(kernel, type):
        if issubclass(kernel, Kernel):
            return kernel(**params)
        raise KernelError(f"kernel is the class {kernel.__qualname__}: pass an instance of it")
    if not isinstance(kernel, str):
        if kernel is None or isinstance(kernel, (bool, int, float, complex, bytes)):
            raise TypeError(f"kernel must be a name, a bigspec.kernels.Kernel or an object with a name and "
                            f"__call__, got {type(kernel).__name__}")
        if params:
            raise KernelParameterError(
                f"parameters {sorted(params)} were given with a kernel object; set them on the object instead")
        return ProtocolKernel(kernel)
    if kernel in _BUILTIN:
        return _BUILTIN[kernel](**params)
    if kernel == "ntk" and params.get("model") is None:
        from .ntk import NEEDS_MODEL  # torch-free import: the message, before torch is needed

        raise KernelParameterError(NEEDS_MODEL)
    if kernel in _LAZY:
        from importlib import import_module

        module, cls = _LAZY[kernel].split(":")
        return getattr(import_module(module), cls)(**params)
    eps = _entry_points()
    if kernel in eps:
        return eps[kernel].load()(**params)
    raise KernelError(f"unknown kernel {kernel!r}; known kernels: {', '.join(known_kernels())}")


def _kernel_class(name):
    """The class registered under ``name``, or the entry point's object (may be a factory)."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name in _LAZY:
        from importlib import import_module

        module, cls = _LAZY[name].split(":")
        return getattr(import_module(module), cls)
    return _entry_points()[name].load()


def _describe_one(name) -> str:
    try:
        cls = _kernel_class(name)
    except Exception as e:  # a broken third-party entry point must not break --help
        return f"{name}: (third-party; could not be loaded: {type(e).__name__}: {e})"
    if not (isinstance(cls, type) and issubclass(cls, Kernel)):
        target = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', type(cls).__name__)}"
        return f"{name}: third-party ({target}); parameters as it documents"
    kind = "K (x) I_d" if cls.kron_identity else "full (n*d x n*d)"
    args = [f"{k}={v!r}" for k, v in cls.defaults.items()]
    if name == "ntk":
        return (f"{name}: {kind}; model=<torch.nn.Module> (required: Python only, "
                f"bigspec.form(bigspec.kernels.NTK(model), X, store)), {', '.join(args)}, "
                f"n_outputs=<from the model>")
    return f"{name}: {kind}; {', '.join([*args, 'n_outputs=1'])}"


def describe() -> str:
    """Every known kernel, one line each: its layout and its parameters with their defaults.

    ``K (x) I_d`` marks Kronecker kernels (only K, n x n, is stored; ``n_outputs`` is d);
    ``full`` kernels store all n*d rows. For ``bigspec form --help``.

    Examples
    --------
    >>> from bigspec.kernels import describe
    >>> print(describe())  # doctest: +ELLIPSIS
    attention: K (x) I_d; sigma_e=1.0, ..., draw_seed=0, ...
    matern: K (x) I_d; nu=1.5, lengthscale=1.0, variance=1.0, n_outputs=1
    ntk: full (n*d x n*d); model=<torch.nn.Module> (required: Python only, ...
    rbf: K (x) I_d; lengthscale=1.0, variance=1.0, n_outputs=1
    relu: K (x) I_d; depth=2, weight_variance=2.0, bias_variance=0.1, kind='ntk', n_outputs=1
    """
    return "\n".join(_describe_one(name) for name in known_kernels())


_LAZY_CLASSES = {"NTK": "ntk", "Attention": "attention"}


def __getattr__(name):
    if name in _LAZY_CLASSES:
        from importlib import import_module

        module, cls = _LAZY[_LAZY_CLASSES[name]].split(":")
        return getattr(import_module(module), cls)
    raise AttributeError(f"module 'bigspec.kernels' has no attribute {name!r}")


__all__ = ["Kernel", "KernelParameterError", "ProtocolKernel", "RESERVED_PARAMETERS", "RBF", "Matern", "ReLU",
           "NTK", "Attention", "describe", "get_kernel", "known_kernels"]
