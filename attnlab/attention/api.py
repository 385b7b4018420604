"""`attention(q, k, v, normalizer=..., span=...)`: the one public entry point.

Shapes: q (batch, heads, q_len, head_dim); k (batch, kv_heads, kv_len, head_dim); v (batch, kv_heads,
kv_len, v_dim). kv_heads divides heads (grouped-query attention). With q_len < kv_len, query i sits at
key position kv_len - q_len + i (bottom-right alignment, as when decoding with a cache).
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor

from attnlab.attention.fused import fused_attention
from attnlab.attention.normalizers import Normalizer, resolve_normalizer
from attnlab.attention.reference import reference_attention
from attnlab.attention.spans import Span, resolve_span

BACKENDS = ("auto", "reference", "fused")


def _validate(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (batch, heads, seq, head_dim), "
                             f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"attention: {name} must be a floating-point tensor, got {x.dtype}")
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}; "
                        f"cast them with .to(dtype)")
    if len({q.device, k.device, v.device}) != 1:
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}; "
                         f"move them with .to(device)")
    if q.is_meta:
        # Checked up front: the kernels would fail deep inside on a tensor with no data to read.
        raise ValueError("attention: q, k, v are on the meta device (a shape with no data); "
                         "materialise the model first (load its weights, or model.to_empty(device='cpu') "
                         "then load_state_dict)")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"attention: batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must agree in heads and "
                         f"sequence length")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q and k head_dim differ ({q.shape[-1]} vs {k.shape[-1]})")
    if q.shape[-1] == 0:
        raise ValueError(f"attention: head_dim is 0 (q {tuple(q.shape)}); queries and keys need at least one "
                         f"feature")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"attention: {q.shape[1]} query heads are not divisible by {k.shape[1]} key/value "
                         f"heads; grouped-query attention needs heads % kv_heads == 0")
    if k.shape[2] == 0:
        raise ValueError("attention: k and v have no keys (kv_len == 0)")


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"attention: scale must be a number (or None for 1/sqrt(head_dim)), "
                        f"got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        # The stock CPU kernel scales after applying its causal mask: -inf * 0 and -inf * (negative) are
        # NaN rows where the reference is finite. Constant or inverted scores are a mistake anyway.
        raise ValueError(f"attention: scale must be a finite number > 0, got {scale}; pass None for "
                         f"1/sqrt(head_dim), or divide by a temperature > 0")
    return float(scale)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    normalizer: str | Normalizer = "softmax",
    span: str | Span | Tensor = "causal",
    scale: float | None = None,
    backend: str = "auto",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention with a pluggable normalizer and span.

    Args:
        normalizer: "softmax", "softmax1", "adaptive", "ssmax", "clipped", or an object
            (Sinks(logits), Clipped(gamma, zeta), ScalableSoftmax(s), ...).
        span: "causal", "full", Window(w), SinkWindow(s, w), Chunked(c), their names
            ("window(512)", ...), or a bool mask broadcastable to (batch, heads, q_len, kv_len).
        scale: score scale, a finite number > 0; default 1/sqrt(head_dim).
        backend: "auto" (fused, or reference when weights are asked for), "reference", "fused".
        return_weights: also return the (batch, heads, q_len, kv_len) weights (reference backend).

    Returns:
        out (batch, heads, q_len, v_dim), or (out, weights) when return_weights.
    """
    _validate(q, k, v)
    norm = resolve_normalizer(normalizer)
    sp = resolve_span(span)
    norm.check_heads(q.shape[1])
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if return_weights and backend == "fused":
        raise ValueError("the fused backend never builds the weight matrix; use backend='reference' "
                         "(or 'auto') with return_weights=True")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else _check_scale(scale)
    if backend == "reference" or return_weights:
        out, weights = reference_attention(q, k, v, norm, sp, scale)
        return (out, weights) if return_weights else out
    return fused_attention(q, k, v, norm, sp, scale)


__all__ = ["attention", "BACKENDS"]
