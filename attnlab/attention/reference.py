"""The reference backend: plain eager attention that materialises the weights. It defines correctness;
every fast path is tested against it."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.kernels import expand_kv
from attnlab.attention.normalizers import Normalizer
from attnlab.attention.spans import Span


def as_4d(mask: Tensor) -> Tensor:
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def reference_attention(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span,
                        scale: float) -> tuple[Tensor, Tensor]:
    """Returns (out (B, H, Lq, Dv), weights (B, H, Lq, Lk))."""
    heads, q_len, kv_len = q.shape[1], q.shape[2], k.shape[2]
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    qc, kc, vc = (x.to(compute) for x in (q, expand_kv(k, heads), expand_kv(v, heads)))
    scores = (qc * scale) @ kc.transpose(-1, -2)  # scale the small operand, not the Lq x Lk result
    allowed = as_4d(span.mask(q_len, kv_len, q.device))
    weights = normalizer.weights(scores, allowed)
    return (weights @ vc).to(q.dtype), weights.to(q.dtype)
