"""The built-in normalizers: how scores become weights (the contract is in base.py).

Each is one small object with `weights(scores, allowed)` (the reference) and `attend(problem)` (the fast
path on the stock fused kernel, never materialising Lq x Lk; Clipped materialises one block of query rows
at a time). They register themselves at the bottom of this file, the same way a user's normalizer does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.attention.adaptive import adaptive_attention, dense_pays
from attnlab.attention.base import Normalizer
from attnlab.attention.clipped import clipped_attention
from attnlab.attention.kernels import Problem, row_entropy
from attnlab.attention.paths import sdpa, sink_attention
from attnlab.attention.registry import NORMALIZER_NAMES, register_normalizer, resolve_normalizer


def _masked(scores: Tensor, allowed: Tensor) -> Tensor:
    return scores.masked_fill(~allowed, float("-inf"))


def _softmax(scores: Tensor, allowed: Tensor) -> Tensor:
    w = torch.softmax(_masked(scores, allowed), dim=-1)
    if bool(allowed.any(-1).all()):  # the common case: skip a full-size pass and allocation
        return w
    return torch.where(allowed, w, torch.zeros_like(w))  # NaN rows (nothing visible) become zeros


class Softmax(Normalizer):
    name = "softmax"
    supports_band = True

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        return _softmax(scores, allowed)

    def attend(self, p: Problem) -> Tensor:
        return sdpa(p)


class Sinks(Normalizer):
    """Learned attention sinks (gpt-oss): one logit per head joins every row's denominator,
    w_ij = exp(s_ij) / (exp(sink_h) + sum_j exp(s_ij)). `Sinks(zeros)` is softmax1; `Sinks(-inf)` is softmax.
    Pass an `nn.Parameter` to learn the logits; gradients flow through both backends."""

    name = "sinks"
    supports_band = True

    @classmethod
    def learned_parameters(cls, heads: int) -> dict[str, Tensor]:
        return {"logits": torch.zeros(heads)}  # starts as softmax1

    def __init__(self, logits: Tensor | float) -> None:
        if not isinstance(logits, Tensor):
            logits = torch.tensor(float(logits))
        if logits.dim() > 1:
            raise ValueError(f"Sinks: logits must be a scalar or one value per head (shape (heads,)), "
                             f"got shape {tuple(logits.shape)}")
        self.logits = logits

    def check_heads(self, heads: int) -> None:
        if self.logits.dim() == 1 and self.logits.shape[0] != heads:
            raise ValueError(f"Sinks: got {self.logits.shape[0]} logits for {heads} query heads; "
                             f"pass one logit per query head")

    def _per_head(self, like: Tensor) -> Tensor:
        s = self.logits.to(device=like.device, dtype=like.dtype)
        return s.view(1, -1, 1, 1) if s.dim() == 1 else s

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        sink = self._per_head(scores)
        masked = _masked(scores, allowed)
        # The max must include the sink (never just the row max): otherwise adding exp(sink) after
        # subtracting the max is wrong, the trap DESIGN.md warns of.
        m = torch.maximum(masked.amax(-1, keepdim=True), sink).detach()
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = torch.exp(masked - m)
        return e / (torch.exp(sink - m) + e.sum(-1, keepdim=True))

    def attend(self, p: Problem) -> Tensor:
        return sink_attention(p, self.logits)


class Softmax1(Sinks):
    """Off-by-one softmax (Evan Miller, "Attention Is Off By One"): exp(s_i) / (1 + sum_j exp(s_j))."""

    name = "softmax1"

    @classmethod
    def learned_parameters(cls, heads: int) -> dict[str, Tensor]:
        return {}  # the sink logit is the constant 0

    def __init__(self) -> None:
        super().__init__(torch.tensor(0.0))


class Clipped(Normalizer):
    """Clipped softmax (Bondarenko et al. 2023, "Quantizable Transformers"):
    clip((zeta - gamma) * softmax + gamma, 0, 1). gamma < 0 lets a head give exactly zero weight."""

    def __init__(self, gamma: float = -0.03, zeta: float = 1.0) -> None:
        if not (math.isfinite(gamma) and math.isfinite(zeta)) or zeta <= gamma:
            raise ValueError(f"Clipped: need finite gamma < zeta, got gamma={gamma}, zeta={zeta}")
        self.gamma, self.zeta = float(gamma), float(zeta)
        self.name = f"clipped({self.gamma:g},{self.zeta:g})"

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        w = ((self.zeta - self.gamma) * _softmax(scores, allowed) + self.gamma).clamp(0.0, 1.0)
        return torch.where(allowed, w, torch.zeros_like(w))

    def attend(self, p: Problem) -> Tensor:
        # No kernel identity for an elementwise clip of p_ij: blocks of whole query rows with a written-out
        # backward (clipped.py); long rows are recomputed there, so memory stays O(rows x Lk) in training too.
        return clipped_attention(p, self.gamma, self.zeta)


def adaptive_beta(entropy: Tensor) -> Tensor:
    """Inverse temperature from Velickovic et al. 2024 ("softmax is not enough"), coefficients highest
    power first: beta = max(poly(H), 1) where H > 0.5, else 1."""
    coeffs = (-0.037, 0.481, -2.3, 4.917, -1.791)
    poly = torch.zeros_like(entropy)
    for c in coeffs:
        poly = poly * entropy + c
    return torch.where(entropy > 0.5, poly.clamp_min(1.0), torch.ones_like(entropy))


class Adaptive(Normalizer):
    """Adaptive temperature (Velickovic et al. 2024): sharpen each row by beta(H_i), H_i that row's
    softmax entropy. beta is computed without gradient, as a temperature schedule, so both backends
    differentiate the same function."""

    name = "adaptive"

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        with torch.no_grad():
            p = _softmax(scores, allowed)
            entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1, keepdim=True)
            beta = adaptive_beta(entropy)
        return _softmax(scores * beta, allowed)

    def attend(self, p: Problem) -> Tensor:
        if dense_pays(p):  # training at short lengths on the CPU: one score block serves both softmaxes
            return adaptive_attention(p, adaptive_beta)
        # Two stock-kernel passes: every row's entropy (V = K), then the output with q_i * beta_i.
        beta = adaptive_beta(row_entropy(p)).unsqueeze(-1).to(p.q.dtype)
        return sdpa(p, q=p.q * beta)


_SSMAX_DEFAULT_S = 1.0 / math.log(512)


class ScalableSoftmax(Normalizer):
    """Scalable softmax (Nakanishi 2025): logits times s * log(n_i), n_i the number of keys query i sees
    (i + 1 under a causal mask, not the sequence length). `s` is a float or one value per head; the
    default keeps a query that sees 512 keys at temperature 1."""

    supports_band = True

    @classmethod
    def learned_parameters(cls, heads: int, context: int = 512) -> dict[str, Tensor]:
        """One s per head, 1/log(context): a query that sees the whole (training) context starts at
        temperature 1."""
        return {"s": torch.full((heads,), 1.0 / math.log(max(context, 2)))}

    def __init__(self, s: Tensor | float = _SSMAX_DEFAULT_S) -> None:
        if isinstance(s, Tensor) and s.dim() > 1:
            raise ValueError(f"ScalableSoftmax: s must be a scalar or shape (heads,), got {tuple(s.shape)}")
        self.s = s
        self.name = "ssmax" if not isinstance(s, Tensor) else "ssmax(per-head)"

    def check_heads(self, heads: int) -> None:
        if isinstance(self.s, Tensor) and self.s.dim() == 1 and self.s.shape[0] != heads:
            raise ValueError(f"ScalableSoftmax: got {self.s.shape[0]} values of s for {heads} query heads")

    def factor(self, keys_seen: Tensor, like: Tensor) -> Tensor:
        s = self.s
        if isinstance(s, Tensor):
            s = s.to(device=like.device, dtype=like.dtype)
            s = s.view(1, -1, 1, 1) if s.dim() == 1 else s
        return s * torch.log(keys_seen.to(like.dtype).clamp_min(1.0))

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        n = allowed.sum(-1, keepdim=True)
        return _softmax(scores * self.factor(n, scores), allowed)

    def attend(self, p: Problem) -> Tensor:
        return sdpa(p, q=p.q * self.factor(p.keys_seen, p.q))


SOFTMAX = Softmax()

# The built-ins, registered as a user's normalizer is. Order is the menus' order.
for _name, _factory in (("softmax", Softmax), ("softmax1", Softmax1), ("sinks", Sinks), ("clipped", Clipped),
                        ("adaptive", Adaptive), ("ssmax", ScalableSoftmax)):
    register_normalizer(_name, _factory)

__all__ = ["NORMALIZER_NAMES", "SOFTMAX", "Adaptive", "Clipped", "Normalizer", "ScalableSoftmax", "Sinks",
           "Softmax", "Softmax1", "adaptive_beta", "resolve_normalizer"]
