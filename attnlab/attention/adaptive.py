"""Adaptive temperature (Velickovic et al. 2024, "softmax is not enough") on dense row blocks (rowblocks.py).

Each row is sharpened by beta_i = beta(H_i), H_i the entropy of its softmax, beta taken without gradient:

    p0 = softmax(s),   H_i = lse_i - sum_j p0_ij s_ij,   w = softmax(beta_i s),
    dS = beta_i W (dW - rowsum(dW W))

The stock-kernel path (kernels.row_entropy, then a kernel call with q scaled by beta) needs two fused passes
forward; on the CPU at short lengths one score block serves both softmaxes, and its written-out backward is
as fast as the stock kernel's, so this path is cheaper there (`Adaptive.attend` chooses). The row
log-sum-exp comes from the block's maxima: lse_i = max_j s_ij - log max_j p0_ij (p0 is largest where s is,
and max_j p0_ij >= 1 / keys keeps the log well conditioned).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.attention.kernels import Problem
from attnlab.attention.rowblocks import RowRule, fits_saved, rowblock_attention


class AdaptiveRule(RowRule):
    saved_per_block = 1

    def __init__(self, beta: Callable[[Tensor], Tensor]) -> None:
        self.beta = beta

    def weights(self, s: Tensor, masked: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        p0 = torch.softmax(s, dim=-1)
        lse = s.amax(-1) - torch.log(p0.amax(-1))
        # Masked scores are finite (rowblocks.py), so p0 * s is 0 there, not NaN.
        entropy = (lse - torch.linalg.vecdot(p0, s)).clamp_min_(0.0)
        del p0
        beta = self.beta(entropy).unsqueeze(-1)
        # beta > 1 would push the masked scores past the most negative float to -inf, and a row that sees
        # no key (zeroed later) would then give NaN: keep them finite.
        w = torch.softmax(s.mul_(beta).clamp_min_(torch.finfo(s.dtype).min), dim=-1)
        return w, [w, beta]

    def saved_weights(self, saved: list[Tensor], masked: Tensor | None) -> Tensor:
        return saved[0]

    def grad_scores(self, dw: Tensor, saved: list[Tensor]) -> Tensor:
        w, beta = saved
        return torch._softmax_backward_data(dw, w, -1, w.dtype).mul_(beta)


def adaptive_attention(p: Problem, beta: Callable[[Tensor], Tensor]) -> Tensor:
    """Adaptive-temperature attention on a Problem with the inverse temperature `beta(entropy)`."""
    return rowblock_attention(p, AdaptiveRule(beta))


def dense_pays(p: Problem) -> bool:
    """Whether the dense row blocks beat the two stock-kernel passes on `p` (benchmarks/attention.py,
    benchmarks/train.py): on the CPU, when a backward follows and every block is kept for it. Forward alone,
    recomputing backwards, local-span interiors and CUDA's kernels favour the stock kernel."""
    grad = torch.is_grad_enabled() and (p.q.requires_grad or p.k.requires_grad or p.v.requires_grad)
    return grad and p.q.device.type == "cpu" and p.blocks is None and fits_saved(p, _SIZER)


_SIZER = AdaptiveRule(lambda h: h)  # fits_saved reads only how much a rule keeps per block
