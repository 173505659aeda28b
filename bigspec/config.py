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


_MISSING = object()


def get(key: str, default: Any = None) -> Any:
    """Return ``bigspec.<key>`` from dask.config (env ``DASK_BIGSPEC__<KEY>`` overrides).

    A key missing from dask.config (a harness such as distributed's ``gen_cluster`` resets the
    config to what it was before bigspec was imported) falls back to ``default`` or, without
    one, to bigspec's packaged default, never to None.
    """
    value = dask.config.get(f"bigspec.{key}", default=_MISSING)
    if value is not _MISSING:
        return value
    if default is not None:
        return default
    node = defaults["bigspec"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def settings() -> dict:
    """Every ``bigspec.*`` setting: the packaged defaults overlaid with dask.config's (what
    :func:`get` reads key by key)."""
    merged = dask.config.merge(defaults["bigspec"], dask.config.get("bigspec", default={}) or {})
    return merged
