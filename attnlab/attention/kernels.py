"""Primitives over the stock fused kernel, shared by every normalizer's fast path.

`Problem` is one call of the stock kernel: queries, keys and values with equal head counts, an optional
additive bias (0 where a key is visible, -inf where not) or a top-left causal flag, and the number of keys
each query sees. The blocked runner in `fused.py` builds Problems; normalizers consume them, through
`paths.py`, which picks the kernel (this one, band.py's or blocked.py's: all three build on this module).

The sink identity (DESIGN.md): with a virtual key of logit `s` per head and value 0, the sink-inclusive
log-sum-exp is L = logaddexp(lse, s), and the output is the plain softmax output times exp(lse - L) =
sigmoid(lse - s). The stock backward is exact when handed that L and the corrected output, because it
recomputes p_ij = exp(score_ij - L_i) and D_i = <dY_i, Y_i>; the sink's own gradient is
d s = -sum_i p_sink,i <dY_i, Y_i> with p_sink,i = sigmoid(s - lse_i).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_kv(x: Tensor, heads: int) -> Tensor:
    """(B, Hk, L, D) -> (B, heads, L, D) for grouped-query attention (query head h uses kv head h // g)."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


CHUNK_BYTES = 16 * 2**20


@dataclass
class BlockedKV:
    """Keys and values for `n` interior blocks of `bq` queries: block i sees keys
    [start + i * bq, start + i * bq + extent) of k and v (B, Hk, L, D), through `bias` (1, 1, bq, extent)."""

    k: Tensor
    v: Tensor
    start: int
    n: int
    bq: int
    extent: int
    bias: Tensor

    def keys(self, x: Tensor, b: int, lo: int, hi: int) -> Tensor:
        """(hi - lo, Hk, extent, D) strided view: the keys of blocks [lo, hi) of batch row b; no copy."""
        first = self.start + lo * self.bq
        seg = x[b, :, first:first + (hi - lo - 1) * self.bq + self.extent]
        return seg.unfold(1, self.extent, self.bq).permute(1, 0, 3, 2)

    def chunks(self, heads: int, dim: int, itemsize: int) -> list[tuple[int, int]]:
        per_block = heads * self.extent * dim * itemsize
        size = max(1, CHUNK_BYTES // max(1, per_block))
        return [(lo, min(lo + size, self.n)) for lo in range(0, self.n, size)]


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
    blocks: BlockedKV | None = None  # interior blocks of a local span: k and v are then their strided views
    band: int | None = None  # a sliding window of this size over whole q, k, v, run by band.py's kernel

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


def flash_forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
                  scale: float) -> tuple[Tensor, Tensor]:
    """Output and row log-sum-exp (float32 or float64) from one fused pass; no autograd."""
    out, lse, _ = fused_pass(q, k, v, bias, is_causal, scale)
    return out, lse


Backward = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def fused_pass(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
               scale: float) -> tuple[Tensor, Tensor, Backward]:
    """One stock-kernel pass: output, row log-sum-exp (N, H, Lq), and the matching backward
    `backward(grad_out, out, lse) -> (dq, dk, dv)`. The backward recomputes p_ij = exp(s_ij - lse_i) and
    D_i = <grad_i, out_i> from what it is handed, which is what lets the sink identity reuse it.

    CPU: the flash kernel (grouped-query heads native). CUDA: the flash kernel for fp16/bf16 without a
    bias, else the memory-efficient kernel (fp32 too, with a bias). Anything else (float64 on CUDA, odd
    head sizes, other devices): plain matrix products, exact but O(Lq x Lk) memory."""
    if q.device.type == "cpu":
        return _cpu_pass(q, k, v, bias, is_causal, scale)
    if q.device.type == "cuda" and _cuda_kernel_ok(q, v):
        return _cuda_pass(q, k, v, bias, is_causal, scale)
    return _math_pass(q, k, v, bias, is_causal, scale)


def _cpu_pass(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
              scale: float) -> tuple[Tensor, Tensor, Backward]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, is_causal, attn_mask=bias, scale=scale)

    def backward(grad: Tensor, y: Tensor, total: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad.contiguous(), q, k, v, y, total, 0.0, is_causal, attn_mask=bias, scale=scale)

    return out, lse, backward


def _cuda_kernel_ok(q: Tensor, v: Tensor) -> bool:
    d, dv = q.shape[-1], v.shape[-1]
    return q.dtype in (torch.float16, torch.bfloat16, torch.float32) and d == dv and d % 8 == 0 and d <= 256


def _fold_groups(dx: Tensor, heads_kv: int) -> Tensor:
    """Gradient of `expand_kv`: sum each group of query heads back onto its kv head."""
    n, h, length, d = dx.shape
    return dx if h == heads_kv else dx.view(n, heads_kv, h // heads_kv, length, d).sum(2)


def _cuda_pass(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
               scale: float) -> tuple[Tensor, Tensor, Backward]:
    heads_kv, lq = k.shape[1], q.shape[2]
    k0, v0 = k, v
    k, v = expand_kv(k, q.shape[1]).contiguous(), expand_kv(v, q.shape[1]).contiguous()
    q = q.contiguous()
    if bias is None and q.dtype != torch.float32:
        out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, is_causal, False, scale=scale)

        def backward(grad: Tensor, y: Tensor, total: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
                grad.contiguous(), q, k, v, y.contiguous(), total.contiguous(), cq, ck, mq, mk, 0.0,
                is_causal, seed, offset, scale=scale)
            return dq, _fold_groups(dk, heads_kv), _fold_groups(dv, heads_kv)

        return out, lse, backward
    mask = bias
    if bias is not None:
        # The kernel wants the bias in q's dtype, all four dims, and its rows 16-element aligned.
        lk = k.shape[2]
        bias = F.pad(bias.to(q.dtype), (0, -lk % 16))[..., :lk].expand(q.shape[0], q.shape[1], lq, lk)
    out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, 0.0, is_causal, scale=scale)
    if bias is not None and q.dtype != torch.float32:
        # On an H200 (torch 2.11) this kernel's half-precision backward, handed another output and lse,
        # gave wrong dq with a mask while float32 was exact; until that is understood, the backward here
        # is the plain-matrix one (exact, O(Lq x Lk) memory). The forward above was checked exact.
        return out, lse[..., :lq], _math_backward(q, k0, v0, mask, is_causal, scale)
    padded = lse  # rows padded to a multiple of 32; the backward gets that layout back, padding as it came

    def backward(grad: Tensor, y: Tensor, total: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        total = torch.cat([total.to(torch.float32), padded[..., lq:]], dim=-1).contiguous()
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            grad.contiguous(), q, k, v, bias, y.contiguous(), total, seed, offset, 0.0,
            [True, True, True, False], is_causal, scale=scale)
        return dq, _fold_groups(dk, heads_kv), _fold_groups(dv, heads_kv)

    return out, lse[..., :lq], backward


def _math_scores(q: Tensor, k: Tensor, bias: Tensor | None, is_causal: bool, scale: float) -> Tensor:
    """Scaled, masked scores in float32 (float64 for float64 inputs); k already has q's head count."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.to(acc)
    if is_causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1), -math.inf)
    return scores


def _math_backward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
                   scale: float, scores: Tensor | None = None) -> Backward:
    """The flash backward's formulas in plain matrix products; scores are recomputed unless given."""
    heads_kv = k.shape[1]

    def backward(grad: Tensor, y: Tensor, total: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ke, ve = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        s = _math_scores(q, ke, bias, is_causal, scale) if scores is None else scores
        acc = s.dtype
        p = torch.exp(s - total.to(acc).unsqueeze(-1)).nan_to_num(0.0)
        g = grad.to(acc)
        dv = p.transpose(-1, -2) @ g
        ds = p * (g @ ve.to(acc).transpose(-1, -2) - (g * y.to(acc)).sum(-1, keepdim=True))
        dq = (ds @ ke.to(acc)) * scale
        dk = (ds.transpose(-1, -2) @ q.to(acc)) * scale
        dk, dv = _fold_groups(dk, heads_kv), _fold_groups(dv, heads_kv)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)

    return backward


def _math_pass(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
               scale: float) -> tuple[Tensor, Tensor, Backward]:
    """The same contract in plain matrix products."""
    scores = _math_scores(q, expand_kv(k, q.shape[1]), bias, is_causal, scale)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0) @ expand_kv(v, q.shape[1]).to(scores.dtype)
    return out.to(q.dtype), lse, _math_backward(q, k, v, bias, is_causal, scale, scores)


Pass = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Backward]]


class _SinkAttention(torch.autograd.Function):
    """`sink` is a (H,) tensor or a float (the same logit for every head, no gradient; -inf: no sink).
    `run(q, k, v)` is one kernel pass with `fused_pass`'s contract (output, lse, backward)."""

    @staticmethod
    def forward(ctx, q, k, v, sink, run):  # noqa: ANN001
        out, lse, ctx.kernel_backward = run(q, k, v)
        ctx.has_sink = isinstance(sink, Tensor) or sink != float("-inf")
        # Few, whole-tensor ops: at short lengths this path's cost is per-op overhead. lse is finite here
        # (the runner gives rows that see nothing a key), so sigmoid(lse - s) needs no NaN guard.
        sink_b = sink.to(lse.dtype).view(1, -1, 1) if isinstance(sink, Tensor) else sink
        y = out * torch.sigmoid(lse - sink_b).unsqueeze(-1).to(out.dtype) if ctx.has_sink else out
        ctx.save_for_backward(y, lse, sink_b if isinstance(sink, Tensor) else None)
        ctx.sink = sink_b
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: ANN001
        y, lse, sink_t = ctx.saved_tensors
        sink_b = ctx.sink if sink_t is None else sink_t
        total = lse
        if ctx.has_sink:
            total = torch.logaddexp(lse, torch.as_tensor(sink_b, dtype=lse.dtype, device=lse.device))
        dq, dk, dv = ctx.kernel_backward(dy, y, total)
        dsink = None
        if ctx.needs_input_grad[3]:
            p_sink = torch.exp(sink_b - total)
            dsink = -(p_sink * (dy * y).sum(-1).to(p_sink.dtype)).sum(dim=(0, 2))
        return dq, dk, dv, dsink, None


def attend_with_sink(q: Tensor, k: Tensor, v: Tensor, sink: Tensor | float, run: Pass) -> Tensor:
    """Differentiable softmax attention from one kernel pass `run`, with a virtual key of logit `sink`
    (per head, or one float; -inf for none) and value 0, by the sink identity."""
    return _SinkAttention.apply(q, k, v, sink, run)


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
