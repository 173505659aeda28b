"""Public test helpers: oracle matrices and assertions.

Examples
--------
>>> from bigspec.testing import make_spd
>>> make_spd(4, seed=0).shape
(4, 4)
"""

from .matrices import assert_logdet_close, make_indefinite, make_spd, matern_matrix

__all__ = ["assert_logdet_close", "make_indefinite", "make_spd", "matern_matrix"]
