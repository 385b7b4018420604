"""Clipped softmax (Bondarenko et al. 2023, "Quantizable Transformers") on dense row blocks (rowblocks.py).

    p_ij = softmax_j(s_ij),   lin_ij = (zeta - gamma) p_ij + gamma,   w_ij = clip(lin_ij, 0, 1)  [0 where
    key j is masked],   out_i = sum_j w_ij v_j

An elementwise clip of p_ij has no identity on the stock fused kernel, so the rows run as dense blocks with
a written-out backward; per block only P is kept (W is one cheap pass from it):

    dP = (zeta - gamma) dW [tau0 < p < tau1],   dS = P (dP - rowsum(dP P))

with tau0 = -gamma / (zeta - gamma) and tau1 = (1 - gamma) / (zeta - gamma), the p where lin reaches 0 and 1.
The clip's derivative differs from torch.clamp's (which passes the gradient on the closed interval) only
exactly at those two values of p, a set gradcheck cannot see; at masked keys p = 0, so dS = 0 either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.kernels import Problem
from attnlab.attention.rowblocks import RowRule, rowblock_attention


class ClippedRule(RowRule):
    saved_per_block = 1

    def __init__(self, gamma: float, zeta: float) -> None:
        self.gamma, self.zeta = gamma, zeta
        self.dw_scale = zeta - gamma
        self.tau0, self.tau1 = -gamma / (zeta - gamma), (1.0 - gamma) / (zeta - gamma)
        self.needs_mask = gamma > 0  # gamma <= 0 clips a masked key (p = 0) to 0 by itself

    def _clip(self, p: Tensor, masked: Tensor | None) -> Tensor:
        # gamma + (zeta - gamma) p in one pass (a 0-d tensor operand keeps p's dtype), then the clip.
        w = torch.add(torch.full((), self.gamma, dtype=p.dtype), p, alpha=self.zeta - self.gamma)
        w.clamp_(0.0, 1.0)
        return w if masked is None else w.masked_fill_(masked, 0.0)

    def weights(self, s: Tensor, masked: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        p = torch.softmax(s, dim=-1)
        return self._clip(p, masked), [p]

    def saved_weights(self, saved: list[Tensor], masked: Tensor | None) -> Tensor:
        return self._clip(saved[0], masked)

    def grad_scores(self, dw: Tensor, saved: list[Tensor]) -> Tensor:
        p = saved[0]
        # dw where tau0 < p < tau1, else 0, written over dw.
        dp = torch.ops.aten.hardtanh_backward.grad_input(dw, p, self.tau0, self.tau1, grad_input=dw)
        return torch._softmax_backward_data(dp, p, -1, p.dtype)  # p * (dp - rowsum(dp * p))


def clipped_attention(p: Problem, gamma: float, zeta: float) -> Tensor:
    """Clipped-softmax attention on a Problem (shapes as in kernels.Problem); differentiable in q, k, v."""
    return rowblock_attention(p, ClippedRule(gamma, zeta))
