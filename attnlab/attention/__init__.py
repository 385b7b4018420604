"""Attention with pluggable normalizers and spans; imports nothing else of attnlab."""

from attnlab.attention.api import BACKENDS, attention
from attnlab.attention.normalizers import (
    NORMALIZER_NAMES,
    Adaptive,
    Clipped,
    Normalizer,
    ScalableSoftmax,
    Sinks,
    Softmax,
    Softmax1,
    adaptive_beta,
    resolve_normalizer,
)
from attnlab.attention.spans import (
    SPAN_NAMES,
    Causal,
    Chunked,
    Full,
    MaskSpan,
    SinkWindow,
    Span,
    Window,
    resolve_span,
)

__all__ = [
    "BACKENDS", "NORMALIZER_NAMES", "SPAN_NAMES", "Adaptive", "Causal", "Chunked", "Clipped", "Full",
    "MaskSpan", "Normalizer", "ScalableSoftmax", "SinkWindow", "Sinks", "Softmax", "Softmax1", "Span",
    "Window", "adaptive_beta", "attention", "resolve_normalizer", "resolve_span",
]
