"""The reference backend: plain eager attention that materialises the weights. It defines correctness;
every fast path is tested against it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.attention.kernels import expand_kv
from attnlab.attention.nonfinite import all_finite, poison, select_finite
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
    allowed = as_4d(span.mask(q_len, kv_len, q.device))
    bad = None
    if not all_finite(kc, vc):
        # Masked scores are selected away, but 0 * NaN in W V (and in the backward's dS K) is not: run on
        # finite K and V and mark what could see a non-finite entry, as the fused backend does (nonfinite.py).
        (kc, bad_k), (vc, bad_v) = select_finite(kc), select_finite(vc)
        sees_key = (allowed & bad_k.any(-1).unsqueeze(-2)).any(-1, keepdim=True)  # (B, H, Lq, 1)
        bad = sees_key, (allowed.to(compute) @ bad_v.to(compute)) > 0  # (B, H, Lq, Dv)
    if not all_finite(qc):
        # A query with a non-finite entry has no meaningful scores: its whole row is NaN, whatever the
        # normalizer would make of +-inf (softmax1 can turn a -inf score row into zeros).
        qc, bad_q = select_finite(qc)
        rows = bad_q.any(-1, keepdim=True)
        bad = (rows, rows) if bad is None else (bad[0] | rows, bad[1])
    scores = (qc * scale) @ kc.transpose(-1, -2)  # scale the small operand, not the Lq x Lk result
    weights = normalizer.weights(scores, allowed)
    out = weights @ vc
    if bad is not None:
        out, weights = poison(out, *bad), weights.masked_fill(bad[0], math.nan)
    return out.to(q.dtype), weights.to(q.dtype)
