"""Softpick (Zuhri et al. 2025; the normalizer is variants/softpick.py) on dense row blocks (rowblocks.py).

With m = max(max_j s_ij, 0) per row (a constant of the row: the value does not depend on it),

    e_ij = exp(s_ij - m),  a_ij = e_ij - exp(-m),  D_i = sum_j |a_ij| + eps exp(-m),  w_ij = relu(a_ij) / D_i

the sums over the keys query i sees (a_ij = 0 at a hidden key). A relu of exp(s) - 1 has no identity on the
stock fused kernel, so the rows run as dense blocks with a written-out backward. Per block only E is kept
(plus exp(-m) and D, one number per row); W is one pass from it, and E is exactly 0 at a hidden key (its
score is the most negative finite value), so neither W nor the backward needs the mask again. With
g = dL/dW and c_i = sum_j g_ij w_ij:

    dS_ik = e_ik / D_i * (g_ik [a_ik > 0] - sign(a_ik) c_i)

At a_ik == 0 exactly (e_ik == exp(-m) after rounding; s_ik = 0 up to an ulp) relu and |.| have kinks. The
rule takes the subgradients torch takes there, relu'(0) = 0 and sign(0) = 0, so dS_ik = 0 and the fused
gradient equals autograd's of the reference `weights` even on the kink; a set gradcheck cannot see (its
finite differences straddle it). At a hidden key e = 0, so dS = 0 whatever the sign.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.kernels import Problem
from attnlab.attention.rowblocks import RowRule, rowblock_attention


class SoftpickRule(RowRule):
    needs_mask = True  # a hidden key has e = 0 but a = -exp(-m): it must be left out of D
    saved_per_block = 1  # E; exp(-m) and D are one number per row

    def __init__(self, eps: float) -> None:
        self.eps = eps

    @staticmethod
    def _weights(e: Tensor, floor: Tensor, denom: Tensor) -> Tensor:
        # Forward and backward build W with the same operations, so it is the same bits in both.
        return torch.sub(e, floor).clamp_min_(0.0).div_(denom)

    def weights(self, s: Tensor, masked: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        m = s.amax(-1, keepdim=True).clamp_min_(0.0)
        e = s.sub_(m).exp_()
        floor = torch.exp(m.neg_())
        a = torch.sub(e, floor)
        if masked is not None:
            a.masked_fill_(masked, 0.0)
        denom = torch.linalg.vector_norm(a, ord=1, dim=-1, keepdim=True).add_(floor, alpha=self.eps)
        return a.clamp_min_(0.0).div_(denom), [e, floor, denom]

    def saved_weights(self, saved: list[Tensor], masked: Tensor | None) -> Tensor:
        return self._weights(*saved)

    def grad_scores(self, dw: Tensor, saved: list[Tensor]) -> Tensor:
        e, floor, denom = saved
        a = torch.sub(e, floor)
        c = torch.linalg.vecdot(a.clamp_min(0.0).div_(denom), dw).unsqueeze_(-1)
        dw.mul_(a > 0).addcmul_(a.sign_(), c, value=-1.0)
        return dw.mul_(e).div_(denom)


def softpick_attention(p: Problem, eps: float) -> Tensor:
    """Softpick attention on a Problem (shapes as in kernels.Problem); differentiable in q, k, v."""
    return rowblock_attention(p, SoftpickRule(eps))
