"""attnlab: a laboratory for the attention mechanism."""

__version__ = "0.1.0"

from attnlab.attention import (  # noqa: E402
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
)


def load_model(name_or_path: str = "smollm2-135m", **kwargs):  # noqa: ANN201
    """Load a model for diagnostics and streaming; see `attnlab.models.loading.load_model`."""
    from attnlab.models.loading import load_model as _load

    return _load(name_or_path, **kwargs)


__all__ = [
    "Adaptive", "Causal", "Chunked", "Clipped", "Full", "Normalizer", "ScalableSoftmax", "SinkWindow",
    "Sinks", "Softmax", "Softmax1", "Span", "Window", "attention", "load_model", "__version__",
]
