"""The fused backend: every normalizer on the stock kernel, every span without the seq x seq matrix.

Dense spans (full, causal, a mask) make one kernel call. Local spans (window, sink-window, chunked) cut the
queries into blocks of `bq` consecutive positions; block b gets only the keys it can see: the span's sink
prefix, then `extent` consecutive keys from `span.first_key(first query of b)`. All blocks go to one
batched kernel call with a small (bq x keys) mask per block. Cost and memory are O(Lq x (bq + window)).

Two things keep the blocking cheap. When the first keys step by exactly `bq` from block to block (window,
sink-window, and chunked with one chunk per block), the key blocks are overlapping strided views of K and
V (`unfold`), not gathered copies. And when the span declares its pattern periodic in blocks
(`span.periodic(bq)`), the mask is computed once for an interior block and only the edge blocks (keys off
either end of the sequence or inside the sink prefix) get their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.kernels import Problem
from attnlab.attention.normalizers import Normalizer
from attnlab.attention.reference import as_4d
from attnlab.attention.spans import CAUSAL, Causal, Full, MaskSpan, Span


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where allowed, -inf where not, in one pass."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.full((), float("-inf"), dtype=dtype, device=allowed.device))


def _bias(allowed: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Additive bias (0 / -inf) from a bool mask, and which rows see any key. Rows that see nothing are
    given key 0 so the kernel stays finite; the caller zeroes their output."""
    return _unblock_empty_rows(_additive(allowed, dtype), allowed.any(-1, keepdim=True))


def _unblock_empty_rows(bias: Tensor, row_valid: Tensor) -> tuple[Tensor, Tensor]:
    if not bool(row_valid.all()):
        bias = bias.clone()  # may be an expanded view (a broadcast mask)
        bias[..., :1].masked_fill_(~row_valid, 0.0)
    return bias, row_valid


def fused_attention(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span,
                    scale: float) -> Tensor:
    """Shapes as in `attnlab.attention`; k and v may have fewer heads than q."""
    q_len, kv_len = q.shape[2], k.shape[2]
    if span.local and span.reduces_to_causal(kv_len):
        span = CAUSAL  # the window reaches every key: one unblocked causal call is exact and faster
    if span.local:
        return _blocked(q, k, v, normalizer, span, scale)
    row_valid = None
    if isinstance(span, Full):
        p = Problem(q, k, v, scale, None, False, torch.tensor(float(kv_len), device=q.device))
    elif isinstance(span, Causal) and q_len == kv_len:
        p = Problem(q, k, v, scale, None, True, lambda: torch.arange(
            1, q_len + 1, device=q.device, dtype=q.dtype).view(1, 1, q_len, 1))
    elif isinstance(span, (Causal, MaskSpan)):
        allowed = as_4d(span.mask(q_len, kv_len, q.device))
        bias, row_valid = _bias(allowed, q.dtype)
        p = Problem(q, k, v, scale, bias, False, lambda: allowed.sum(-1, keepdim=True).clamp_min(1))
    else:
        raise TypeError(f"span {span!r} is neither dense (full, causal, mask) nor local")
    out = normalizer.attend(p)
    return out if row_valid is None or bool(row_valid.all()) else out * row_valid


def _blocked(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span, scale: float) -> Tensor:
    batch, heads, q_len, _ = q.shape
    kv_len, dev = k.shape[2], q.device
    bq = span.block_size(q_len)
    start = span.block_start(kv_len - q_len, bq)  # position of the first block's first query
    lead = kv_len - q_len - start
    nb = -(-(lead + q_len) // bq)
    q_pos = torch.arange(start, start + nb * bq, device=dev).view(nb, bq)
    first = span.first_key(q_pos[:, 0])  # may be negative: those keys are padding, masked below
    extent = int((q_pos[:, -1] - first).max()) + 1
    strided = nb == 1 or bool((first[1:] - first[:-1] == bq).all())
    n_sink = min(span.sinks, kv_len)

    win = first[:, None] + torch.arange(extent, device=dev)  # (nb, extent) key positions
    win_ok = (win >= max(n_sink, 0)) & (win < kv_len)  # sink keys come from the prefix, never twice
    k_pos = torch.cat([torch.arange(n_sink, device=dev).expand(nb, n_sink), win], 1)
    k_ok = torch.cat([torch.ones(nb, n_sink, dtype=torch.bool, device=dev), win_ok], 1)
    bias, row_valid = _block_bias(span, bq, q_pos, k_pos, k_ok, q.dtype)  # (nb, bq, lkb), (nb, bq, 1)

    def key_blocks(x: Tensor) -> Tensor:  # (B, Hk, Lk, D) -> (B*nb, Hk, n_sink + extent, D)
        b, h, _, d = x.shape
        if strided:
            lo, hi = int(first[0]), int(first[0]) + (nb - 1) * bq + extent
            seg = x[:, :, max(lo, 0):min(hi, kv_len)]
            if lo < 0 or hi > kv_len:
                seg = F.pad(seg, (0, 0, max(0, -lo), max(0, hi - kv_len)))
            blocks = seg.unfold(2, extent, bq).permute(0, 2, 1, 4, 3)  # (B, nb, Hk, extent, D), a view
        else:
            idx = win.clamp(0, kv_len - 1).reshape(-1)
            blocks = x.index_select(2, idx).view(b, h, nb, extent, d).transpose(1, 2)
        if n_sink:
            blocks = torch.cat([x[:, None, :, :n_sink].expand(b, nb, h, n_sink, d), blocks], dim=3)
        return blocks.reshape(b * nb, h, blocks.shape[3], d)

    def per_batch(x: Tensor) -> Tensor:  # (nb, ...) -> (B*nb, 1, ...)
        return x.unsqueeze(0).expand(batch, *x.shape).reshape(batch * nb, 1, *x.shape[1:])

    qp = F.pad(q, (0, 0, lead, nb * bq - lead - q_len)) if nb * bq != q_len else q
    qb = qp.view(batch, heads, nb, bq, -1).transpose(1, 2).reshape(batch * nb, heads, bq, -1)
    bias_b = per_batch(bias)
    p = Problem(qb, key_blocks(k), key_blocks(v), scale, bias_b, False,
                lambda: (bias_b == 0).sum(-1, keepdim=True).to(q.dtype))
    out = normalizer.attend(p)
    if not bool(row_valid.all()):
        out = out * per_batch(row_valid)
    dv = out.shape[-1]
    out = out.view(batch, nb, heads, bq, dv).transpose(1, 2).reshape(batch, heads, nb * bq, dv)
    return out[:, :, lead:lead + q_len]


def _block_bias(span: Span, bq: int, q_pos: Tensor, k_pos: Tensor, k_ok: Tensor,
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-block additive bias (nb, bq, keys) and row validity (nb, bq, 1). With a periodic span the
    interior blocks (every key real) share one pattern, computed once."""
    nb, lkb = k_pos.shape
    interior = k_ok.all(-1)
    if not (span.periodic(bq) and bool(interior.any())):
        allowed = span.allows(q_pos[:, :, None], k_pos[:, None, :]) & k_ok[:, None, :]
        return _bias(allowed, dtype)
    rep = int(interior.nonzero()[0])
    inner = span.allows(q_pos[rep, :, None], k_pos[rep, None, :])  # (bq, lkb)
    bias = _additive(inner, dtype).expand(nb, bq, lkb).clone()
    row_valid = inner.any(-1, keepdim=True).expand(nb, bq, 1).clone()
    edge = (~interior).nonzero().flatten()
    if edge.numel():
        allowed = span.allows(q_pos[edge, :, None], k_pos[edge, None, :]) & k_ok[edge, None, :]
        bias[edge] = _additive(allowed, dtype)
        row_valid[edge] = allowed.any(-1, keepdim=True)
    return _unblock_empty_rows(bias, row_valid)
