"""Softpick (Zuhri et al. 2025, "Softpick: No Attention Sink, No Massive Activations with Rectified
Softmax"): a rectified, not sum-to-one replacement for softmax,

    w_ij = relu(exp(s_ij) - 1) / (sum_j |exp(s_ij) - 1| + eps),

the sum over the keys query i sees. A score <= 0 gets exactly zero weight, so a head can attend to
nothing instead of parking its mass on a sink token; the absolute value keeps gradients flowing to those
keys through the denominator.

Stable form: with m = max(max_j s_ij, 0) (clamped at 0, so exp(-m) <= 1 never overflows), numerator and
denominator are both multiplied by exp(-m):

    w_ij = relu(exp(s_ij - m) - exp(-m)) / (sum_j |exp(s_ij - m) - exp(-m)| + eps exp(-m)),

which is the same number. A query that sees no key gets an all-zero row (numerator 0, denominator
eps exp(-m) > 0). `weights` is the reference; `attend` is the fast path. There is no log-sum-exp identity
that puts a relu of exp(s) - 1 on the stock kernel, so it runs blocks of whole query rows with a
written-out backward (softpick_rows.py, on rowblocks.py as clipped softmax does): memory O(rows x Lk), in
training too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.attention.base import Normalizer
from attnlab.attention.kernels import Problem
from attnlab.attention.registry import register_normalizer
from attnlab.attention.softpick_rows import softpick_attention


class Softpick(Normalizer):
    name = "softpick"

    def __init__(self, eps: float = 1e-8) -> None:  # the authors' code's default
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"Softpick: eps must be a finite number > 0, got {eps}")
        self.eps = float(eps)

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        masked = scores.masked_fill(~allowed, float("-inf"))
        # The shift is a constant of the row (detached, like softmax's max): the value does not depend on it.
        m = masked.amax(-1, keepdim=True).clamp_min(0.0).detach()
        floor = torch.exp(-m)
        shifted = torch.exp(masked - m) - floor  # exp(s - m) - exp(-m) = exp(-m) (exp(s) - 1)
        denom = torch.where(allowed, shifted.abs(), torch.zeros_like(shifted)).sum(-1, keepdim=True)
        return torch.relu(shifted) / (denom + self.eps * floor)

    def attend(self, p: Problem) -> Tensor:
        return softpick_attention(p, self.eps)


register_normalizer("softpick", Softpick)
