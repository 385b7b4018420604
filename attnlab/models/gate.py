"""A per-head output gate for attention (Qiu et al. 2025, "Gated Attention for Large Language Models",
headwise variant; Bondarenko et al. 2023, "Quantizable Transformers", gated attention).

Each query head's output is scaled by a scalar computed from the attention layer's input x (the block's
normed hidden state at that position):

    out_h(x) = g_h(x) * attention_h(x),   g_h(x) = 2 * sigmoid(x . w_h + b_h)

with W = (w_h) of shape (heads, hidden) and b of shape (heads,), both zero at init. The factor 2 makes the
gate *exactly* 1 at init (2 * sigmoid(0) = 1, and x . 0 = 0 exactly), so a retrofitted model starts as the
pretrained one bit for bit, while the gate can still close (g -> 0) or open to at most 2. The papers use a
plain sigmoid in (0, 1); with it, starting at the identity needs a large bias, which saturates the sigmoid
and starves the gradient. Here the gradient at init is 2 * sigmoid'(0) * x = x / 2 per unit of output error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HeadGate(nn.Module):
    """g(x) = 2 * sigmoid(x W^T + b), one gate per query head; W (heads, hidden) and b (heads,) start at 0."""

    def __init__(self, hidden: int, heads: int, *, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(heads, hidden, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(heads, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, hidden) -> gate (B, heads, L, 1), ready to scale an attention output (B, heads, L, D)."""
        g = 2.0 * torch.sigmoid(F.linear(x, self.weight, self.bias))  # (B, L, heads)
        return g.transpose(1, 2).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"hidden={self.weight.shape[1]}, heads={self.weight.shape[0]}, gate=2*sigmoid(x W^T + b)"
