"""Kernel registry: built-in kernels plus third-party ones from the ``bigspec.kernels`` entry points.

The kernel classes are reachable here: ``RBF``, ``Matern``, ``ReLU``, and, loaded on first
use so that importing bigspec never imports torch, ``NTK`` (the empirical NTK of a torch
model) and ``Attention``.

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
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import KernelError
from .base import Kernel, KernelParameterError
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
    """A kernel instance from a name (with parameters) or an instance (returned as is)."""
    if isinstance(kernel, Kernel):
        if params:
            raise KernelParameterError(
                f"parameters {sorted(params)} were given with a kernel instance; set them on the instance instead")
        return kernel
    if callable(kernel) and hasattr(kernel, "name") and hasattr(kernel, "n_outputs"):
        return kernel  # a third-party object following the protocol
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a name or a Kernel, got {type(kernel).__name__}")
    if kernel in _BUILTIN:
        return _BUILTIN[kernel](**params)
    if kernel in _LAZY:
        from importlib import import_module

        module, cls = _LAZY[kernel].split(":")
        return getattr(import_module(module), cls)(**params)
    eps = _entry_points()
    if kernel in eps:
        return eps[kernel].load()(**params)
    raise KernelError(f"unknown kernel {kernel!r}; known kernels: {', '.join(known_kernels())}")


_LAZY_CLASSES = {"NTK": "ntk", "Attention": "attention"}


def __getattr__(name):
    if name in _LAZY_CLASSES:
        from importlib import import_module

        module, cls = _LAZY[_LAZY_CLASSES[name]].split(":")
        return getattr(import_module(module), cls)
    raise AttributeError(f"module 'bigspec.kernels' has no attribute {name!r}")


__all__ = ["Kernel", "KernelParameterError", "RBF", "Matern", "ReLU", "NTK", "Attention", "get_kernel",
           "known_kernels"]
