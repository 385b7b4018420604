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

import torch
from torch import Tensor

from attnlab.attention.kernels import CHUNK_BYTES, Backward, BlockedKV, attend_with_sink, fused_pass

# BlockedKV lives beside Problem in kernels.py (no import cycle); re-exported for older imports.
__all__ = ["CHUNK_BYTES", "BlockedKV", "blocked_sink_attention"]


def blocked_sink_attention(q: Tensor, blocks: BlockedKV, sink: Tensor | float | None, scale: float) -> Tensor:
    """q (B * n, H, bq, D) -> (B * n, H, bq, Dv): softmax attention over each block's keys, with a virtual
    key of logit `sink` (per head, or one float) and value 0 when `sink` is not None. The sink and its
    gradient are kernels.py's sink identity (the one copy); this module supplies the kernel pass."""
    if sink is None:
        sink = float("-inf")
    # Without a backward to come, one call per batch row is fastest (no gradient buffers to bound).
    # (On CUDA the caching allocator already reuses buffers: no chunks there either.)
    backward = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (q, blocks.k, blocks.v, sink))
    chunked = backward and q.device.type == "cpu"
    return attend_with_sink(q, blocks.k, blocks.v, sink,
                            lambda q, k, v: _blocked_pass(q, k, v, blocks, scale, chunked))


def _blocked_pass(q: Tensor, k: Tensor, v: Tensor, blocks: BlockedKV, scale: float,
                  chunked: bool) -> tuple[Tensor, Tensor, Backward]:
    """`kernels.fused_pass`'s contract over the interior blocks: output (B * n, H, bq, Dv), row log-sum-exp
    (B * n, H, bq), and the backward, which folds each chunk's key gradients into one (B, Hk, L, D) buffer."""
    batch, heads, n = k.shape[0], q.shape[1], blocks.n
    qv = q.view(batch, n, *q.shape[1:])
    y = q.new_empty(*q.shape[:-1], v.shape[-1])
    yv = y.view(batch, n, *y.shape[1:])
    lse = torch.empty(batch, n, heads, blocks.bq, dtype=torch.promote_types(q.dtype, torch.float32),
                      device=q.device)
    runs = []
    chunks = blocks.chunks(heads, q.shape[-1], q.element_size()) if chunked else [(0, n)]
    for b in range(batch):
        for lo, hi in chunks:
            kb, vb = blocks.keys(k, b, lo, hi), blocks.keys(v, b, lo, hi)
            out, lse_c, pass_backward = fused_pass(qv[b, lo:hi], kb, vb, blocks.bias, False, scale)
            yv[b, lo:hi] = out
            lse[b, lo:hi] = lse_c
            runs.append((b, lo, hi, pass_backward))
    k_shape, v_shape, kv_dtype = k.shape, v.shape, k.dtype

    def backward(dy: Tensor, y: Tensor, total: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dy = dy.contiguous().view(batch, n, *dy.shape[1:])
        yv = y.contiguous().view(batch, n, *y.shape[1:])
        total = total.contiguous().view(batch, n, *total.shape[1:])
        dq = torch.empty_like(dy)
        tiles = -(-blocks.extent // blocks.bq)
        # Exactly k's shape, contiguous and not a view: autograd can then add another path's gradient
        # (the edge blocks') into it in place instead of allocating a third full-size tensor.
        dk = torch.zeros(k_shape, dtype=kv_dtype, device=dy.device)
        dv = torch.zeros(v_shape, dtype=kv_dtype, device=dy.device)
        for b, lo, hi, pass_backward in runs:
            dq_c, dk_c, dv_c = pass_backward(dy[b, lo:hi], yv[b, lo:hi], total[b, lo:hi])
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
        return dq.view(-1, *dq.shape[2:]), dk, dv

    return y, lse.view(batch * n, heads, blocks.bq), backward
