"""One door for every attention call inside a model, so analyses can watch and steer it.

attnlab's GPT and Hugging Face models loaded with `attn_implementation="attnlab"` both send each layer's
attention through `attend(layer, q, k, v, ...)`. Outside any context it is plain `attnlab.attention`.
Inside `record_attention()` it also stores the weights under TransformerLens-style names
(`blocks.{layer}.attn.pattern`, shape (batch, heads, q_len, kv_len)), and with `scores=True` the
pre-normalizer logits scale * q . k (`blocks.{layer}.attn.scores`, same shape, -inf where the span hides
the key); inside `attention_override(...)`
it swaps the normalizer, span or temperature at inference, for every layer or some. Inside `tap_attention(fn)`
(the TransformerLens hook points of `attnlab.models.hookpoints`) `fn(layer, kind, tensor)` sees, and may
replace, q / k / v as they enter, the weights (`kind` "pattern"; the output is then recomputed as weights @ v,
exact for every normalizer since the null key's value is zero) and the output z; inside `key_padding(mask)`
keys where the (batch, keys) mask is False are hidden from every query (right-padded batches of attnlab's
GPT, whose own forward takes no mask).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnlab.attention import MaskSpan, Normalizer, Span, attention, resolve_normalizer, resolve_span
from attnlab.attention.kernels import expand_kv


@dataclass
class _Override:
    normalizer: Normalizer | None = None
    span: Span | None = None
    temperature: float = 1.0
    layers: frozenset[int] | None = None

    def applies(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers


@dataclass
class _Recorder:
    store: dict[str, Tensor] = field(default_factory=dict)
    layers: frozenset[int] | None = None
    scores: bool = False


@dataclass
class _Tap:
    fn: Callable[[int, str, Tensor], Tensor]
    kinds: Callable[[int], frozenset[str]]  # which of q, k, v, scores, pattern, z layer i wants


_override: ContextVar[_Override | None] = ContextVar("attnlab_override", default=None)
_recorder: ContextVar[_Recorder | None] = ContextVar("attnlab_recorder", default=None)
_tap: ContextVar[_Tap | None] = ContextVar("attnlab_tap", default=None)
_padding: ContextVar[Tensor | None] = ContextVar("attnlab_padding", default=None)


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.pattern"


def scores_name(layer: int) -> str:
    return f"blocks.{layer}.attn.scores"


def _scores(q: Tensor, k: Tensor, span: str | Span | Tensor, scale: float | None) -> Tensor:
    """(B, H, Lq, Lk) logits scale * q . k before any normalizer (ssmax's s log n, adaptive's beta come
    after), computed in float32 at least, -inf where the span hides the key."""
    compute = torch.promote_types(q.dtype, torch.float32)
    kk = expand_kv(k, q.shape[1]).to(compute)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.to(compute) * scale) @ kk.transpose(-1, -2)
    allowed = resolve_span(span).mask(q.shape[-2], k.shape[-2], q.device)
    return s.masked_fill(~allowed, float("-inf")).detach()


def _combine(model_span: Span | Tensor | str, override: Span, q_len: int, kv_len: int) -> Span | Tensor | str:
    """The override span intersected with the model's own mask (padding must survive a swap)."""
    if isinstance(model_span, Tensor):
        return MaskSpan(model_span & override.mask(q_len, kv_len, model_span.device))
    if isinstance(model_span, MaskSpan):
        return MaskSpan(model_span.tensor & override.mask(q_len, kv_len, model_span.tensor.device))
    return override


def attend(layer: int, q: Tensor, k: Tensor, v: Tensor, *, normalizer: str | Normalizer = "softmax",
           span: str | Span | Tensor = "causal", scale: float | None = None, backend: str = "auto") -> Tensor:
    """Attention for layer `layer` of a model; shapes as in `attnlab.attention`."""
    ov = _override.get()
    if ov is not None and ov.applies(layer):
        if ov.normalizer is not None:
            normalizer = ov.normalizer
        if ov.span is not None:
            span = _combine(span, ov.span, q.shape[-2], k.shape[-2])
        if ov.temperature != 1.0:
            scale = (scale if scale is not None else q.shape[-1] ** -0.5) / ov.temperature
    pad = _padding.get()
    if pad is not None and pad.shape[-1] == k.shape[-2] and not bool(pad.all()):
        mask = resolve_span(span).mask(q.shape[-2], k.shape[-2], q.device) if not isinstance(span, Tensor) \
            else span
        span = MaskSpan(mask & pad.to(q.device)[:, None, None, :])  # (B, 1, Lq, Lk)
    tap = _tap.get()
    kinds = tap.kinds(layer) if tap is not None else frozenset()
    if kinds:
        return _attend_tapped(layer, q, k, v, tap, kinds, normalizer=normalizer, span=span, scale=scale,
                              backend=backend)
    rec = _recorder.get()
    if rec is not None and (rec.layers is None or layer in rec.layers):
        out, weights = attention(q, k, v, normalizer=normalizer, span=span, scale=scale, return_weights=True)
        rec.store[pattern_name(layer)] = weights.detach()
        if rec.scores:
            rec.store[scores_name(layer)] = _scores(q, k, span, scale)
        return out
    return attention(q, k, v, normalizer=normalizer, span=span, scale=scale, backend=backend)


def _attend_tapped(layer: int, q: Tensor, k: Tensor, v: Tensor, tap: _Tap, kinds: frozenset[str], *,
                   normalizer: str | Normalizer, span: str | Span | Tensor, scale: float | None,
                   backend: str) -> Tensor:
    """`attend` with hook points: q (B, H, Lq, D), k and v (B, Hkv, Lk, D) may be replaced before, the
    weights (B, H, Lq, Lk) and the output z (B, H, Lq, D) after."""
    for kind in ("q", "k", "v"):
        if kind in kinds:
            new = tap.fn(layer, kind, {"q": q, "k": k, "v": v}[kind])
            q, k, v = (new if kind == "q" else q), (new if kind == "k" else k), (new if kind == "v" else v)
    if "scores" in kinds:
        tap.fn(layer, "scores", _scores(q, k, span, scale))
    rec = _recorder.get()
    recording = rec is not None and (rec.layers is None or layer in rec.layers)
    if "pattern" in kinds or recording:
        out, weights = attention(q, k, v, normalizer=normalizer, span=span, scale=scale, return_weights=True)
        if "pattern" in kinds:
            patched = tap.fn(layer, "pattern", weights)
            if patched is not weights:  # the null key's value is 0, so out = weights @ v for every normalizer
                weights = patched
                out = (patched.to(v.dtype) @ expand_kv(v, q.shape[1])).to(out.dtype)  # (B, H, Lq, D)
        if recording:
            rec.store[pattern_name(layer)] = weights.detach()
            if rec.scores:
                rec.store[scores_name(layer)] = _scores(q, k, span, scale)
    else:
        out = attention(q, k, v, normalizer=normalizer, span=span, scale=scale, backend=backend)
    if "z" in kinds:
        out = tap.fn(layer, "z", out)
    return out


@contextmanager
def tap_attention(fn: Callable[[int, str, Tensor], Tensor],
                  kinds: Callable[[int], frozenset[str]]) -> Iterator[None]:
    """Inside the block, `attend` calls fn(layer, kind, tensor) for each kind in kinds(layer) ("q", "k",
    "v", "scores", "pattern", "z"; shapes as in `_attend_tapped`) and uses what it returns."""
    token = _tap.set(_Tap(fn=fn, kinds=kinds))
    try:
        yield
    finally:
        _tap.reset(token)


@contextmanager
def key_padding(mask: Tensor | None) -> Iterator[None]:
    """Hide the keys where `mask` (batch, keys), True = real token, is False from every query."""
    token = _padding.set(None if mask is None else mask.to(torch.bool))
    try:
        yield
    finally:
        _padding.reset(token)


@contextmanager
def record_attention(layers: Iterable[int] | None = None, scores: bool = False
                     ) -> Iterator[dict[str, Tensor]]:
    """Record attention weights of the given layers (all by default) into the yielded dict; with scores,
    also their pre-normalizer logits (`scores_name(layer)`)."""
    rec = _Recorder(layers=None if layers is None else frozenset(layers), scores=scores)
    token = _recorder.set(rec)
    try:
        yield rec.store
    finally:
        _recorder.reset(token)


@contextmanager
def attention_override(normalizer: str | Normalizer | None = None, span: str | Span | None = None,
                       temperature: float = 1.0, layers: Iterable[int] | None = None) -> Iterator[None]:
    """Swap the normalizer, span, or temperature (scores divided by it) of the given layers."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ov = _Override(
        normalizer=None if normalizer is None else resolve_normalizer(normalizer),
        span=None if span is None else resolve_span(span),
        temperature=float(temperature),
        layers=None if layers is None else frozenset(layers),
    )
    token = _override.set(ov)
    try:
        yield
    finally:
        _override.reset(token)
