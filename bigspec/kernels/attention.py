"""Infinite-width limit of one multi-head attention layer (Hron et al. 2020, arXiv:2006.10540).

Standard 1/sqrt(n) attention with finitely many heads H: at infinite width the scores
``p^a`` stay random (Gaussian, ``Cov(p_ij, p_kl) = s_qk^2 Sigma_ik Sigma_jl``) and the output
is a non-Gaussian scale mixture, but its covariance is a kernel that does not depend on H:

    K(X, X') = s_vo^2 E[softmax(p) Sigma_XX' softmax(p')^T].

It has no closed form, so it is computed by Monte Carlo with **shared draws**: with token
features ``Phi_X`` (a factor of Sigma), draws ``M_m ~ N(0, I)`` (r x r) from one seed
(the parameter ``draw_seed``), and
``F_m(X) = s_vo softmax(s_qk Phi_X M_m Phi_X^T) Phi_X``, the estimate
``(1/M) sum_m F_m(X) F_m(X')^T`` is unbiased and an exact Gram matrix (positive
semidefinite). Every tile regenerates the same draws, so the assembled matrix is one Gram
matrix and tiles are deterministic. Independent draws per tile would make it indefinite.

Inputs: X of shape (n, s, d_in), n sequences of s tokens. ``pool="mean"`` averages over
positions (an n x n kernel); ``pool="none"`` keeps positions (row = sequence * s + position).
The kernel is ``K (x) I_d`` over output coordinates. ``bind(X)`` records the sequence length
``seq_len`` on the bound kernel; ``prepare`` flattens X to (n, s * d_in), the layout of tiles.

Examples
--------
>>> import numpy as np
>>> from bigspec.kernels import get_kernel
>>> X = np.random.default_rng(0).standard_normal((4, 3, 2))
>>> k = get_kernel("attention", n_draws=256, draw_seed=7).bind(X)
>>> x = k.prepare(X)
>>> K = k(x, x, diagonal=True)
>>> K.shape, bool(np.all(np.linalg.eigvalsh(K) > -1e-12))
((4, 4), True)
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import namespace_of
from ..errors import KernelError
from .base import Kernel, KernelParameterError


class Attention(Kernel):
    """Infinite-width single attention layer kernel (shared-draw Monte Carlo, see module doc).

    Parameters
    ----------
    sigma_e, sigma_eb, sigma_qk, sigma_vo : float
        Embedding scale and bias, query-key and value-output scales.
    heads : int
        Heads H (recorded; the kernel does not depend on it, only :meth:`sample_outputs` does).
    n_draws : int
        Monte-Carlo draws M of the scores.
    draw_seed : int
        Seed of those draws: the same draws in every tile (a data permutation seed is
        ``bigspec.form``'s ``seed``, a different thing).
    pool : {"mean", "none"}
        Mean over positions (n x n) or one row per position (n s x n s).
    seq_len : int, optional
        Tokens per sequence; set by :meth:`bind` from X (a given value must match X).
    draw_chunk : int
        Draws evaluated together (memory only; the result does not depend on it).
    n_outputs : int
        d of ``K (x) I_d``.
    """

    name = "attention"
    kron_identity = True
    defaults = {"sigma_e": 1.0, "sigma_eb": 0.0, "sigma_qk": 1.0, "sigma_vo": 1.0, "heads": 1,
                "n_draws": 4096, "draw_seed": 0, "pool": "mean", "seq_len": None, "draw_chunk": 256}
    _renamed = {"seed": "draw_seed"}

    def check_params(self):
        p = self.params
        self._positive("sigma_e", "sigma_vo")
        for name in ("sigma_qk", "sigma_eb"):
            v = p[name]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
                    not (math.isfinite(v) and v >= 0):
                raise KernelParameterError(f"attention kernel: {name} must be a number >= 0, got {v!r}")
        for name, least in (("heads", 1), ("n_draws", 1), ("draw_chunk", 1), ("draw_seed", 0)):
            v = p[name]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
                what = "a positive integer" if least else "a non-negative integer"
                raise KernelParameterError(f"attention kernel: {name} must be {what}, got {v!r}")
        if p["pool"] not in ("mean", "none"):
            raise KernelParameterError(f"attention kernel: pool must be 'mean' or 'none', got {p['pool']!r}")
        if p["seq_len"] is not None and not (isinstance(p["seq_len"], (int, np.integer)) and p["seq_len"] >= 1):
            raise KernelParameterError(f"attention kernel: seq_len must be a positive integer, got {p['seq_len']!r}")

    # -- data layout: form stores X flattened to (n, s * d_in); seq_len recovers the tokens
    def check_data(self, X) -> None:
        if X.ndim != 3:
            raise KernelError(
                f"attention kernel needs X of shape (n_sequences, seq_len, d_in), got shape {X.shape}")
        s = self.params["seq_len"]
        if s is not None and int(s) != X.shape[1]:
            raise KernelError(f"attention kernel: seq_len={s} but X has sequences of length {X.shape[1]} "
                              f"(X has shape {X.shape}); leave seq_len unset to take it from X")

    def _configure(self, X) -> None:
        self.params["seq_len"] = int(X.shape[1])

    def prepare(self, X):
        return X.reshape(X.shape[0], -1)

    def rows_per_sample(self) -> int:
        if self.params["pool"] != "none":
            return 1
        if self.params["seq_len"] is None:
            raise KernelError("attention kernel with pool='none': the rows per sequence are its length; "
                              "bind the kernel to the data first (kernel.bind(X))")
        return int(self.params["seq_len"])

    def features(self, x):
        """Token features Phi (b, s, r): sigma_e u / sqrt(d_in), with sigma_eb appended as a bias."""
        xp = namespace_of(x)
        s = self.params["seq_len"] or 1
        tokens = x.reshape(x.shape[0], s, -1)
        phi = self.params["sigma_e"] * tokens / math.sqrt(tokens.shape[-1])
        if self.params["sigma_eb"] > 0:
            bias = xp.full(tokens.shape[:-1] + (1,), float(self.params["sigma_eb"]), dtype=phi.dtype)
            phi = xp.concatenate([phi, bias], axis=-1)
        return phi

    def draws(self, chunk: int, r: int, xp=np):
        """The ``chunk``-th block of score draws M (c, r, r): the same on every worker."""
        p = self.params
        start = chunk * p["draw_chunk"]
        count = min(p["draw_chunk"], p["n_draws"] - start)
        rng = np.random.default_rng(np.random.SeedSequence([int(p["draw_seed"]), chunk]))
        return xp.asarray(rng.standard_normal((count, r, r)))

    def _pooled_features(self, phi, M):
        xp = namespace_of(phi)
        scores = self.params["sigma_qk"] * xp.einsum("bsr,crt,bqt->bcsq", phi, M, phi)
        scores -= scores.max(axis=-1, keepdims=True)
        w = xp.exp(scores)
        w /= w.sum(axis=-1, keepdims=True)
        F = self.params["sigma_vo"] * xp.einsum("bcsq,bqr->bcsr", w, phi)   # (b, c, s, r)
        if self.params["pool"] == "mean":
            return F.mean(axis=2).reshape(F.shape[0], -1)                   # (b, c*r)
        return F.transpose(0, 2, 1, 3).reshape(F.shape[0] * F.shape[2], -1)  # (b*s, c*r)

    def block(self, x_rows, x_cols, *, diagonal=False):
        xp = namespace_of(x_rows)
        phi_r = self.features(x_rows)
        phi_c = phi_r if diagonal else self.features(x_cols)
        r = phi_r.shape[-1]
        n_chunks = -(-int(self.params["n_draws"]) // int(self.params["draw_chunk"]))
        out = None
        for chunk in range(n_chunks):
            M = self.draws(chunk, r, xp)
            fr = self._pooled_features(phi_r, M)
            fc = fr if diagonal else self._pooled_features(phi_c, M)
            part = fr @ fc.T
            out = part if out is None else out + part
        return out / float(self.params["n_draws"])

    def sample_outputs(self, X, n_samples: int, seed: int = 1) -> np.ndarray:
        """Draws of the limiting layer output y (one coordinate) for sequences X (n, s, d_in).

        y = H^{-1/2} sum_a softmax(p^a) Z^a with independent scores p^a and values
        Z^a ~ N(0, s_vo^2 Sigma) per head: the non-Gaussian law whose covariance is this kernel.
        ``seed`` seeds these output draws (not the kernel's ``draw_seed``). Returns
        (n_samples, n * s). The kernel is not modified.
        """
        X = np.asarray(X, dtype=np.float64)
        k = self.bind(X)
        phi = k.features(X)                                                 # (n, s, r)
        n, s, r = phi.shape
        flat = phi.reshape(n * s, r)
        rng = np.random.default_rng(seed)
        H = int(k.params["heads"])
        out = np.zeros((n_samples, n * s))
        for _ in range(H):
            M = rng.standard_normal((n_samples, r, r))
            scores = k.params["sigma_qk"] * np.einsum("bsr,crt,bqt->cbsq", phi, M, phi)
            w = np.exp(scores - scores.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            Z = k.params["sigma_vo"] * (rng.standard_normal((n_samples, r)) @ flat.T).reshape(n_samples, n, s)
            out += np.einsum("cbsq,cbq->cbs", w, Z).reshape(n_samples, n * s)
        return out / math.sqrt(H)
