"""Public test helpers: oracle matrices and assertions, and a test suite for kernels.

``KernelTests`` (in :mod:`bigspec.testing.kernel_tests`, loaded on first use) is a
pytest-style base class: subclass it to run bigspec's kernel checks on a kernel of your own.

Examples
--------
>>> from bigspec.testing import make_spd
>>> make_spd(4, seed=0).shape
(4, 4)
>>> from bigspec.testing import KernelTests
>>> KernelTests.__module__
'bigspec.testing.kernel_tests'
"""

from .matrices import assert_logdet_close, make_indefinite, make_spd, matern_matrix

__all__ = ["KernelTests", "assert_logdet_close", "make_indefinite", "make_spd", "matern_matrix"]


def __getattr__(name):
    if name == "KernelTests":
        from .kernel_tests import KernelTests

        return KernelTests
    raise AttributeError(f"module 'bigspec.testing' has no attribute {name!r}")
