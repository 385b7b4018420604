"""Attention with pluggable normalizers and spans; imports nothing else of attnlab.

This package is also the function: `attnlab.attention(q, k, v, ...)` calls `api.attention`, while its
submodules import as usual (`import attnlab.attention.registry as reg`).
"""

import sys
import types
from typing import Any

from attnlab.attention import variants  # noqa: F401  (each variant registers itself on import)
from attnlab.attention.api import BACKENDS, attention
from attnlab.attention.normalizers import (
    Adaptive,
    Clipped,
    Normalizer,
    ScalableSoftmax,
    Sinks,
    Softmax,
    Softmax1,
    adaptive_beta,
)
from attnlab.attention.registry import (
    NORMALIZER_NAMES,
    create_normalizer,
    is_normalizer,
    learned_parameters,
    normalizer_keywords,
    normalizer_names,
    register_normalizer,
    resolve_normalizer,
    unregister_normalizer,
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
    "Window", "adaptive_beta", "attention", "create_normalizer", "is_normalizer", "learned_parameters",
    "normalizer_keywords", "normalizer_names", "register_normalizer", "resolve_normalizer", "resolve_span",
    "unregister_normalizer",
]


class _CallablePackage(types.ModuleType):
    # One name for the package and the entry point, with no swap of the parent's attribute: the import
    # system binds `attnlab.attention` to this module, so dotted submodule imports resolve through it.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__wrapped__ = attention  # inspect.signature(attnlab.attention) and help() show the function's signature
