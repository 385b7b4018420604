"""Primitives over the stock fused kernel, shared by every normalizer's fast path.

`Problem` is one call of the stock kernel: queries, keys and values with equal head counts, an optional
additive bias (0 where a key is visible, -inf where not) or a top-left causal flag, and the number of keys
each query sees. The blocked runner in `fused.py` builds Problems; normalizers consume them.

The sink identity (DESIGN.md): with a virtual key of logit `s` per head and value 0, the sink-inclusive
log-sum-exp is L = logaddexp(lse, s), and the output is the plain softmax output times exp(lse - L) =
sigmoid(lse - s). The stock backward is exact when handed that L and the corrected output, because it
recomputes p_ij = exp(score_ij - L_i) and D_i = <dY_i, Y_i>; the sink's own gradient is
d s = -sum_i p_sink,i <dY_i, Y_i> with p_sink,i = sigmoid(s - lse_i).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_kv(x: Tensor, heads: int) -> Tensor:
    """(B, Hk, L, D) -> (B, heads, L, D) for grouped-query attention (query head h uses kv head h // g)."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


@dataclass
class Problem:
    """One kernel call. Shapes: q (N, H, Lq, D); k, v (N, Hk, Lk, D|Dv) with Hk dividing H (the CPU kernel
    takes grouped-query heads natively; other devices expand them); bias (N|1, 1, Lq, Lk) or None;
    `seen` the number of keys each query sees, broadcastable to (N, H, Lq, 1), float, >= 1, or a
    function that computes it (only scalable softmax needs it, so it is built on demand)."""

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    bias: Tensor | None
    is_causal: bool
    seen: Tensor | Callable[[], Tensor]

    @property
    def keys_seen(self) -> Tensor:
        if callable(self.seen):
            self.seen = self.seen()
        return self.seen

    def kv(self) -> tuple[Tensor, Tensor]:
        """k and v with as many heads as q (a copy under grouped-query attention)."""
        heads = self.q.shape[1]
        return expand_kv(self.k, heads), expand_kv(self.v, heads)

    def allowed(self) -> Tensor:
        """Bool mask broadcastable to (N, H, Lq, Lk); materialises Lq x Lk, so callers slice rows."""
        lq, lk = self.q.shape[-2], self.k.shape[-2]
        if self.bias is not None:
            return self.bias == 0
        if self.is_causal:
            return torch.ones(lq, lk, dtype=torch.bool, device=self.q.device).tril()
        return torch.ones(lq, lk, dtype=torch.bool, device=self.q.device)


def sdpa(p: Problem, q: Tensor | None = None, v: Tensor | None = None) -> Tensor:
    """The stock differentiable kernel on a Problem (optionally with other queries or values)."""
    return F.scaled_dot_product_attention(
        p.q if q is None else q, p.k, p.v if v is None else v,
        attn_mask=p.bias, is_causal=p.is_causal, scale=p.scale, enable_gqa=p.k.shape[1] != p.q.shape[1],
    )


def flash_forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
                  scale: float) -> tuple[Tensor, Tensor]:
    """Output and row log-sum-exp (float32 or float64) from one fused pass; no autograd."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, is_causal, attn_mask=bias, scale=scale)
        return out, lse
    if q.device.type == "cuda":
        # Untested (no GPU where this was written): the memory-efficient kernel returns the lse padded
        # to a multiple of 32 rows and wants equal head counts; its is_causal is top-left, as on CPU.
        k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        if bias is not None:
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, 0.0, is_causal, scale=scale)
        return out, lse[..., : q.shape[-2]]
    raise NotImplementedError(f"the fused backend has no kernel for device {q.device.type!r}; "
                              f"use backend='reference'")


def _flash_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    bias: Tensor | None, is_causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad.contiguous(), q, k, v, out, lse, 0.0, is_causal, attn_mask=bias, scale=scale)
    raise NotImplementedError("the sink identity's backward is implemented for the CPU kernel only; "
                              "on CUDA use backend='reference' for training with sinks")


class _SinkAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sink, bias, is_causal, scale):  # noqa: ANN001
        out, lse = flash_forward(q, k, v, bias, is_causal, scale)
        sink_b = sink.to(lse.dtype).view(1, -1, 1)
        total = torch.logaddexp(lse, sink_b)  # sink-inclusive log-sum-exp
        # exp(-inf - -inf) is NaN for fully masked rows; those rows are zeroed by the runner.
        keep = torch.exp(lse - total).nan_to_num(0.0)
        y = (out * keep.unsqueeze(-1).to(out.dtype)).to(q.dtype)
        total = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
        ctx.save_for_backward(q, k, v, y, total, sink_b, bias)
        ctx.is_causal, ctx.scale = is_causal, scale
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: ANN001
        q, k, v, y, total, sink_b, bias = ctx.saved_tensors
        dq, dk, dv = _flash_backward(dy, q, k, v, y, total, bias, ctx.is_causal, ctx.scale)
        dsink = None
        if ctx.needs_input_grad[3]:
            p_sink = torch.exp(sink_b - total)
            dsink = -(p_sink * (dy * y).sum(-1).to(p_sink.dtype)).sum(dim=(0, 2))
        return dq, dk, dv, dsink, None, None, None


def sink_attention(p: Problem, sink_logits: Tensor) -> Tensor:
    """Softmax attention with one extra virtual key of logit `sink_logits[h]` and value 0 per head."""
    sink = sink_logits.to(device=p.q.device)
    if sink.dim() == 0:
        sink = sink.expand(p.q.shape[1])
    q, k, v = p.q, p.k, p.v
    d, dv = q.shape[-1], v.shape[-1]
    # The flash kernels want one head size for q, k and v; zero columns change neither scores nor
    # outputs (the scale is passed explicitly), so pad the smaller side and slice the output back.
    if dv < d:
        v = F.pad(v, (0, d - dv))
    elif dv > d:
        q, k = F.pad(q, (0, dv - d)), F.pad(k, (0, dv - d))
    return _SinkAttention.apply(q, k, v, sink, p.bias, p.is_causal, p.scale)[..., :dv]


def row_entropy(p: Problem) -> Tensor:
    """Entropy of each softmax row, (N, H, Lq), from one fused pass with V = K (no autograd):
    H_i = lse_i - E_p[s_ij] and E_p[s_ij] = scale * q_i . (P K)_i."""
    with torch.no_grad():
        q, k, bias = p.q, p.k, p.bias
        if q.dtype in (torch.float16, torch.bfloat16):
            # beta(H) is steep, and a half-precision P K would cost ~1e-2 nats of entropy: use float32.
            q, k = q.float(), k.float()
            bias = None if bias is None else bias.float()
        pk, lse = flash_forward(q, k, k, bias, p.is_causal, p.scale)
        expected = p.scale * (q * pk).sum(-1)
        return (lse.to(expected.dtype) - expected).clamp_min(0.0)
