"""Interior blocks of a local span as one autograd function, run in chunks of blocks.

The fused backend cuts the queries of a window / chunked span into blocks of `bq`; interior blocks all see
`extent` consecutive keys starting `bq` further on per block, through one shared (bq x extent) bias. Left to
autograd, their keys are overlapping strided views of K and V, and the kernel's backward writes one
(blocks, heads, extent, dim) gradient buffer per tensor: at seq 8192 and window 512 that is ~80 MB, above
glibc's largest heap-reused size, so every step page-faults it in (measured: 40% of forward+backward).

Here the blocks run in chunks sized so each chunk's buffers stay small (`CHUNK_BYTES`), and the backward
folds each chunk's key gradients straight into one (B, Hk, L, D) buffer: a block's `extent` keys are
ceil(extent / bq) consecutive `bq`-key tiles, so the fold is that many strided adds, never an overlapping
write. The normalizer is softmax with an optional virtual sink key of value 0 (the sink identity in
kernels.py): softmax, softmax1, Sinks, and everything that reaches softmax by rescaling queries
(scalable softmax, adaptive temperature) run through it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.attention.kernels import fused_pass

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


def blocked_sink_attention(q: Tensor, blocks: BlockedKV, sink: Tensor | float | None, scale: float) -> Tensor:
    """q (B * n, H, bq, D) -> (B * n, H, bq, Dv): softmax attention over each block's keys, with a virtual
    key of logit `sink` (per head, or one float) and value 0 when `sink` is not None."""
    if sink is None:
        sink = float("-inf")
    return _BlockedAttention.apply(q, blocks.k, blocks.v, sink, blocks, scale)


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sink, blocks, scale):  # noqa: ANN001
        batch, heads, n = k.shape[0], q.shape[1], blocks.n
        qv = q.view(batch, n, *q.shape[1:])
        y = q.new_empty(*q.shape[:-1], v.shape[-1])
        yv = y.view(batch, n, *y.shape[1:])
        lse = torch.empty(batch, n, heads, blocks.bq, dtype=torch.promote_types(q.dtype, torch.float32),
                          device=q.device)
        runs = []
        # Without a backward to come, one call per batch row is fastest (no gradient buffers to bound).
        # (On CUDA the caching allocator already reuses buffers: no chunks there either.)
        chunked = any(ctx.needs_input_grad[:4]) and q.device.type == "cpu"
        chunks = blocks.chunks(heads, q.shape[-1], q.element_size()) if chunked else [(0, n)]
        for b in range(batch):
            for lo, hi in chunks:
                kb, vb = blocks.keys(k, b, lo, hi), blocks.keys(v, b, lo, hi)
                out, lse_c, backward = fused_pass(qv[b, lo:hi], kb, vb, blocks.bias, False, scale)
                if isinstance(sink, Tensor) or sink != float("-inf"):
                    sink_b = sink.to(lse_c.dtype).view(1, -1, 1) if isinstance(sink, Tensor) else sink
                    out = out * torch.sigmoid(lse_c - sink_b).unsqueeze(-1).to(out.dtype)
                yv[b, lo:hi] = out
                lse[b, lo:hi] = lse_c
                runs.append((b, lo, hi, backward))
        ctx.runs, ctx.blocks = runs, blocks
        ctx.k_shape, ctx.v_shape, ctx.kv_dtype = k.shape, v.shape, k.dtype
        ctx.save_for_backward(y, lse, sink if isinstance(sink, Tensor) else None)
        ctx.sink = sink
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: ANN001
        y, lse, sink_t = ctx.saved_tensors
        blocks: BlockedKV = ctx.blocks
        sink = ctx.sink if sink_t is None else sink_t.to(lse.dtype).view(1, 1, -1, 1)
        batch, n = lse.shape[:2]
        total = torch.logaddexp(lse, torch.as_tensor(sink, dtype=lse.dtype, device=lse.device))
        dy = dy.contiguous().view(batch, n, *dy.shape[1:])
        yv = y.view(batch, n, *y.shape[1:])
        dq = torch.empty_like(dy)
        tiles = -(-blocks.extent // blocks.bq)
        # Exactly k's shape, contiguous and not a view: autograd can then add another path's gradient
        # (the edge blocks') into it in place instead of allocating a third full-size tensor.
        dk = torch.zeros(ctx.k_shape, dtype=ctx.kv_dtype, device=dy.device)
        dv = torch.zeros(ctx.v_shape, dtype=ctx.kv_dtype, device=dy.device)
        for b, lo, hi, backward in ctx.runs:
            dq_c, dk_c, dv_c = backward(dy[b, lo:hi], yv[b, lo:hi], total[b, lo:hi])
            dq[b, lo:hi] = dq_c
            for acc, grad in ((dk, dk_c), (dv, dv_c)):
                for t in range(tiles):
                    # Tile t of blocks lo..hi-1 lands at start + (i + t) bq: hi - lo strided slabs of `width`.
                    width = min(blocks.bq, blocks.extent - t * blocks.bq)
                    first = blocks.start + (lo + t) * blocks.bq
                    dst = acc[b, :, first:first + (hi - lo - 1) * blocks.bq + width]
                    step = dst.stride(1)
                    dst = dst.as_strided((dst.shape[0], hi - lo, width, dst.shape[-1]),
                                         (dst.stride(0), blocks.bq * step, step, dst.stride(2)))
                    dst += grad[:, :, t * blocks.bq:t * blocks.bq + width].transpose(0, 1).to(acc.dtype)
        dsink = None
        if ctx.needs_input_grad[3]:
            p_sink = torch.exp(sink - total)
            dsink = -(p_sink * (dy * yv).sum(-1).to(p_sink.dtype)).sum(dim=(0, 1, 3))
        return (dq.view(-1, *dq.shape[2:]), dk, dv, dsink,
                None, None)
