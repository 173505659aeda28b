"""Analytic NNGP and NTK of a deep fully connected ReLU network.

Cho & Saul 2009 (arc-cosine kernels); Jacot, Gabriel & Hongler 2018 (arXiv:1806.07572);
Arora et al. 2019 (arXiv:1904.11955).

Architecture: Dense -> [ReLU -> Dense] x depth in NTK parameterisation,
``z^{l+1} = (sigma_w / sqrt(n_l)) W a^l + sigma_b b``. With d outputs the kernel is K (x) I_d.
On diagonal tiles the arc-cosine recursion is evaluated at theta_ii = 0 exactly (the generic
formula is only sqrt(eps)-accurate there).

Examples
--------
>>> import numpy as np
>>> from bigspec.kernels import ReLU
>>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
>>> K = ReLU(depth=1, kind="nngp")(x, x, diagonal=True)
>>> bool(np.allclose(K, K.T))
True
"""

from __future__ import annotations

import math

from ..backend import namespace_of
from .base import Kernel, KernelParameterError


class ReLU(Kernel):
    """NTK (``kind="ntk"``) or NNGP (``kind="nngp"``) of a ReLU MLP with ``depth`` hidden layers."""

    name = "relu"
    kron_identity = True
    defaults = {"depth": 2, "weight_variance": 2.0, "bias_variance": 0.1, "kind": "ntk"}

    def check_params(self):
        p = self.params
        if int(p["depth"]) != p["depth"] or p["depth"] < 0:
            raise KernelParameterError(f"relu kernel: depth must be a non-negative integer, got {p['depth']!r}")
        self._positive("weight_variance")
        if not (math.isfinite(p["bias_variance"]) and p["bias_variance"] >= 0):
            raise KernelParameterError(f"relu kernel: bias_variance must be >= 0, got {p['bias_variance']!r}")
        if p["kind"] not in ("ntk", "nngp"):
            raise KernelParameterError(f"relu kernel: kind must be 'ntk' or 'nngp', got {p['kind']!r}")

    def block(self, x_rows, x_cols, *, diagonal=False):
        xp = namespace_of(x_rows)
        p = self.params
        sw, sb = float(p["weight_variance"]), float(p["bias_variance"])
        d0 = x_rows.shape[1]
        sigma = sw * (x_rows @ x_cols.T) / d0 + sb
        q1 = sw * (x_rows * x_rows).sum(axis=1) / d0 + sb
        q2 = sw * (x_cols * x_cols).sum(axis=1) / d0 + sb
        theta_k = sigma
        idx = xp.arange(sigma.shape[0]) if diagonal else None
        for _ in range(int(p["depth"])):
            qq = q1[:, None] * q2[None, :]
            if diagonal:
                sigma[idx, idx] = q1
            root = xp.sqrt(xp.maximum(qq - sigma * sigma, 0.0))
            theta = xp.arctan2(root, sigma)
            if diagonal:
                theta[idx, idx] = 0.0
                root[idx, idx] = 0.0
            e_phi = (root + (math.pi - theta) * sigma) / (2.0 * math.pi)
            e_dphi = (math.pi - theta) / (2.0 * math.pi)
            sigma = sw * e_phi + sb
            theta_k = sigma + sw * e_dphi * theta_k
            q1 = sw * q1 / 2.0 + sb
            q2 = sw * q2 / 2.0 + sb
        return theta_k if p["kind"] == "ntk" else sigma
