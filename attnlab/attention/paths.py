"""Which kernel runs a `Problem`: the stock kernel, band.py's compiled window kernel, or blocked.py's
interior blocks. The normalizers' fast paths call these two functions and never pick a kernel themselves.

This module sits above kernels.py, band.py and blocked.py (all of which build on kernels.py), so none of
them has to import another lazily to avoid an import cycle.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.band import band_attention
from attnlab.attention.blocked import blocked_sink_attention
from attnlab.attention.kernels import Problem, attend_with_sink, fused_pass


def sdpa(p: Problem, q: Tensor | None = None, v: Tensor | None = None) -> Tensor:
    """The stock differentiable kernel on a Problem (optionally with other queries or values)."""
    if p.band is not None:
        return band_attention(p.q if q is None else q, p.k, p.v if v is None else v, p.band, p.scale)
    if p.blocks is not None and v is None and p.q.shape[-1] == p.v.shape[-1]:
        return blocked_sink_attention(p.q if q is None else q, p.blocks, None, p.scale)
    return F.scaled_dot_product_attention(
        p.q if q is None else q, p.k, p.v if v is None else v,
        attn_mask=p.bias, is_causal=p.is_causal, scale=p.scale, enable_gqa=p.k.shape[1] != p.q.shape[1],
    )


def sink_attention(p: Problem, sink_logits: Tensor | float) -> Tensor:
    """Softmax attention with one extra virtual key of logit `sink_logits[h]` (or one float for every head)
    and value 0 per head."""
    sink = sink_logits
    if isinstance(sink, Tensor):
        if sink.dim() == 0 and not sink.requires_grad:
            sink = float(sink)  # no per-call host-to-device copy for a constant logit
        else:
            sink = sink.to(device=p.q.device)
            if sink.dim() == 0:
                sink = sink.expand(p.q.shape[1])
    q, k, v = p.q, p.k, p.v
    d, dv = q.shape[-1], v.shape[-1]
    if p.band is not None:
        return band_attention(q, k, v, p.band, p.scale, sink)
    if p.blocks is not None and d == dv:
        return blocked_sink_attention(q, p.blocks, sink, p.scale)
    # The flash kernels want one head size for q, k and v; zero columns change neither scores nor
    # outputs (the scale is passed explicitly), so pad the smaller side and slice the output back.
    if dv < d:
        v = F.pad(v, (0, d - dv))
    elif dv > d:
        q, k = F.pad(q, (0, dv - d)), F.pad(k, (0, dv - d))
    out = attend_with_sink(q, k, v, sink, lambda q, k, v: fused_pass(q, k, v, p.bias, p.is_causal, p.scale))
    return out if dv == d else out[..., :dv]


__all__ = ["sdpa", "sink_attention"]
