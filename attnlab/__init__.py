"""attnlab: a laboratory for the attention mechanism.

The public names below load on first use (a module `__getattr__`, PEP 562): `import attnlab` and
`attnlab --help` stay fast because torch is imported only when something that needs it is touched
(`attnlab.attention(...)`, `attnlab.Sinks`, `attnlab.load_model(...)`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from attnlab._version import __version__

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    **{name: "attnlab.attention" for name in (
        "Adaptive", "Causal", "Chunked", "Clipped", "Full", "Normalizer", "ScalableSoftmax", "SinkWindow",
        "Sinks", "Softmax", "Softmax1", "Span", "Window", "normalizer_names", "register_normalizer")},
    "retrofit": "attnlab.models.retrofit",
    "load_model": "attnlab.models.loading",
    "report": "attnlab.diagnose.report",
    "attention_pattern": "attnlab.diagnose.pattern",
}

if TYPE_CHECKING:  # what static tools and IDEs see; at run time `__getattr__` resolves these
    from attnlab.attention import (
        Adaptive,
        Causal,
        Chunked,
        Clipped,
        Full,
        Normalizer,
        ScalableSoftmax,
        Sinks,
        SinkWindow,
        Softmax,
        Softmax1,
        Span,
        Window,
        attention,
        normalizer_names,
        register_normalizer,
    )
    from attnlab.diagnose.pattern import attention_pattern
    from attnlab.diagnose.report import report
    from attnlab.models.loading import load_model
    from attnlab.models.retrofit import retrofit


_SUBPACKAGES = ("attention", "data", "diagnose", "experiments", "explorer", "io", "models", "present",
                "stream", "train", "errors")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    # `attnlab.attention` is the subpackage, which is callable (attention/__init__.py): the one object serves
    # `attnlab.attention(q, k, v)` and `import attnlab.attention.registry`.
    if name in _SUBPACKAGES:  # `import attnlab; attnlab.models.gpt...` worked when the root imported them
        return importlib.import_module(f"attnlab.{name}")
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"attention"})


__all__ = [
    "Adaptive", "Causal", "Chunked", "Clipped", "Full", "Normalizer", "ScalableSoftmax", "SinkWindow",
    "Sinks", "Softmax", "Softmax1", "Span", "Window", "attention", "attention_pattern", "load_model",
    "normalizer_names", "register_normalizer", "report", "retrofit", "__version__",
]
