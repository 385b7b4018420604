"""The fused backend: every normalizer on the stock kernel, every span without the seq x seq matrix.

Dense spans (full, causal, a mask) make one kernel call. Local spans (window, sink-window, chunked) cut the
queries into blocks of consecutive positions; each block gets only the keys it can see (the span's sink
prefix, then a contiguous range starting at `span.first_key(first query of the block)`), gathered into
one batched kernel call with a small per-block mask. Cost and memory are O(Lq x (block + window)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.kernels import Problem
from attnlab.attention.normalizers import Normalizer
from attnlab.attention.reference import as_4d, expand_kv
from attnlab.attention.spans import Causal, Full, MaskSpan, Span


def _bias(allowed: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Additive bias (0 / -inf) from a bool mask, and which rows see any key. Rows that see nothing are
    given key 0 so the kernel stays finite; the runner zeroes their output."""
    row_valid = allowed.any(-1, keepdim=True)
    if not bool(row_valid.all()):
        first = torch.zeros_like(allowed)
        first[..., 0] = True
        allowed = allowed | (first & ~row_valid)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
    return bias, row_valid


def fused_attention(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span,
                    scale: float) -> Tensor:
    if span.local:
        return _blocked(q, k, v, normalizer, span, scale)
    heads, q_len, kv_len = q.shape[1], q.shape[2], k.shape[2]
    k, v = expand_kv(k, heads), expand_kv(v, heads)
    row_valid = None
    if isinstance(span, Full):
        p = Problem(q, k, v, scale, None, False, torch.tensor(float(kv_len), device=q.device))
    elif isinstance(span, Causal) and q_len == kv_len:
        seen = torch.arange(1, q_len + 1, device=q.device, dtype=q.dtype).view(1, 1, q_len, 1)
        p = Problem(q, k, v, scale, None, True, seen)
    elif isinstance(span, (Causal, MaskSpan)):
        allowed = as_4d(span.mask(q_len, kv_len, q.device))
        bias, row_valid = _bias(allowed, q.dtype)
        p = Problem(q, k, v, scale, bias, False, allowed.sum(-1, keepdim=True).clamp_min(1))
    else:
        raise TypeError(f"span {span!r} is neither dense (full, causal, mask) nor local")
    out = normalizer.attend(p)
    return out if row_valid is None else out * row_valid


def _blocked(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span, scale: float) -> Tensor:
    batch, heads, q_len, _ = q.shape
    kv_heads, kv_len, dv = k.shape[1], k.shape[2], v.shape[-1]
    dev = q.device
    bq = span.block_size(q_len)
    nb = -(-q_len // bq)
    pad = nb * bq - q_len

    q_pos = torch.arange(kv_len - q_len, kv_len - q_len + nb * bq, device=dev).view(nb, bq)
    q_ok = (q_pos >= 0) & (q_pos < kv_len)
    first = span.first_key(q_pos[:, 0]).clamp_min(0)
    last = q_pos[:, -1].clamp(max=kv_len - 1)
    extent = max(1, int((last - first + 1).max()))
    win = first[:, None] + torch.arange(extent, device=dev)  # (nb, extent)
    win_ok = (win >= span.sinks) & (win < kv_len)  # sink keys come from the prefix, never twice
    n_sink = min(span.sinks, kv_len)
    if n_sink:
        pre = torch.arange(n_sink, device=dev).expand(nb, n_sink)
        k_idx = torch.cat([pre, win], dim=1)
        k_ok = torch.cat([torch.ones_like(pre, dtype=torch.bool), win_ok], dim=1)
    else:
        k_idx, k_ok = win, win_ok
    k_idx = k_idx.clamp(0, kv_len - 1)
    lkb = k_idx.shape[1]
    allowed = span.allows(q_pos[:, :, None], k_idx[:, None, :]) & k_ok[:, None, :] & q_ok[:, :, None]
    bias, row_valid = _bias(allowed, q.dtype)  # (nb, bq, lkb), (nb, bq, 1)
    seen = allowed.sum(-1, keepdim=True).clamp_min(1)

    def blocks(x: Tensor, length: int) -> Tensor:  # (B, h, nb*length, d) -> (B*nb, h, length, d)
        h, d = x.shape[1], x.shape[-1]
        return x.view(batch, h, nb, length, d).transpose(1, 2).reshape(batch * nb, h, length, d)

    qb = blocks(torch.nn.functional.pad(q, (0, 0, 0, pad)) if pad else q, bq)
    flat = k_idx.reshape(-1)
    kb = expand_kv(blocks(k[:, :, flat], lkb), heads)
    vb = expand_kv(blocks(v[:, :, flat], lkb), heads)

    def per_batch(x: Tensor) -> Tensor:  # (nb, ...) -> (B*nb, 1, ...)
        return x.unsqueeze(0).expand(batch, *x.shape).reshape(batch * nb, 1, *x.shape[1:])

    p = Problem(qb, kb, vb, scale, per_batch(bias), False, per_batch(seen))
    out = normalizer.attend(p) * per_batch(row_valid)
    out = out.view(batch, nb, heads, bq, dv).transpose(1, 2).reshape(batch, heads, nb * bq, dv)
    return out[:, :, :q_len]
