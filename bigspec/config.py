"""bigspec defaults in ``dask.config`` under the ``bigspec`` namespace.

Read configuration on the client and pass plain values into tasks.

Examples
--------
>>> import dask, bigspec.config
>>> with dask.config.set({"bigspec.tile-size": 512}):
...     bigspec.config.get("tile-size")
512
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_fn = os.path.join(os.path.dirname(__file__), "bigspec.yaml")
with open(_fn) as _f:
    defaults = yaml.safe_load(_f)

dask.config.update_defaults(defaults)


def get(key: str, default: Any = None) -> Any:
    """Return ``bigspec.<key>`` from dask.config (env ``DASK_BIGSPEC__<KEY>`` overrides)."""
    return dask.config.get(f"bigspec.{key}", default=default)
