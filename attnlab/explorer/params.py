"""What a client may ask the explorer for, and the limits the server enforces on it.

Every request field is checked here, before any model code runs: a wrong type, a value out of range, an
unknown normalizer or an unknown field raises `RequestError`, whose message names the field, the value
and the allowed range; the server returns it as `{"error": message}` with HTTP status 400.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from attnlab.attention import normalizer_names
from attnlab.errors import ConfigError

OVERRIDE_SCOPES = ("all", "layer")
# The small-multiples grid beside the heatmap: every head of the chosen layer, or every layer of the chosen
# head; "none" leaves it out of the answer (scripts that want one pattern).
GRID_VIEWS = ("none", "heads", "layers")


class RequestError(ConfigError):
    """A client request the explorer refuses; the message says what to change."""


@dataclass(frozen=True)
class Limits:
    """Server-side caps; the page reads them from /api/info to size its sliders."""

    max_chars: int = 4000
    max_tokens: int = 256
    temperature: tuple[float, float] = (0.1, 10.0)
    sink_logit: tuple[float, float] = (-10.0, 10.0)
    max_sinks: int = 16
    alpha: tuple[float, float] = (-4.0, 4.0)
    top_k: int = 10
    continuation_tokens: int = 12

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Params:
    """One validated explorer request. window == 0 means no window (plain causal attention)."""

    text: str
    layer: int = 0
    head: int = 0
    normalizer: str = "softmax"
    sink_logit: float = 0.0
    temperature: float = 1.0
    window: int = 0
    sinks: int = 0
    scope: str = "all"
    steer_layer: int = 0
    alphas: tuple[float, ...] = ()
    grid: str = "none"

    @property
    def steering(self) -> bool:
        return any(a != 0.0 for a in self.alphas)

    @property
    def overriding(self) -> bool:
        return self.normalizer != "softmax" or self.temperature != 1.0 or self.window > 0

    def baseline(self) -> Params:
        """The same text with the model's own attention and no steering."""
        return Params(text=self.text, layer=self.layer, head=self.head, steer_layer=self.steer_layer,
                      alphas=tuple(0.0 for _ in self.alphas))


_FIELDS = {f for f in Params.__dataclass_fields__}


def normalizer_menu() -> list[str]:
    """The normalizer menu: every registered normalizer, read from the registry on each call, so a
    normalizer registered before the server starts (or while it runs) is offered."""
    return normalizer_names()


def _int(obj: dict[str, Any], key: str, lo: int, hi: int, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"'{key}' must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"'{key}' must be in [{lo}, {hi}], got {value}")
    return value


def _float(obj: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"'{key}' must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"'{key}' must be in [{lo:g}, {hi:g}], got {value:g}")
    return float(value)


def parse_params(obj: object, limits: Limits, *, n_layers: int, n_heads: int, n_directions: int) -> Params:
    """Validate a decoded JSON request body into `Params`, or raise `RequestError`."""
    if not isinstance(obj, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}; known fields: "
                           f"{', '.join(sorted(_FIELDS))}")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RequestError("'text' must be a non-empty string: type some text to analyse")
    if len(text) > limits.max_chars:
        raise RequestError(f"'text' has {len(text)} characters; the limit is {limits.max_chars}: "
                           f"shorten the text")
    normalizer = obj.get("normalizer", "softmax")
    menu = normalizer_menu()
    # Registered names only: a request never makes the server import a 'module:Attr' name.
    if not isinstance(normalizer, str) or normalizer not in menu:
        raise RequestError(f"unknown normalizer {normalizer!r}; choose one of {', '.join(menu)}")
    scope = obj.get("scope", "all")
    if scope not in OVERRIDE_SCOPES:
        raise RequestError(f"'scope' must be 'all' (every layer) or 'layer' (the chosen layer), "
                           f"got {scope!r}")
    grid = obj.get("grid", "none")
    if grid not in GRID_VIEWS:
        raise RequestError(f"'grid' must be 'heads' (every head of the layer), 'layers' (every layer of "
                           f"the head) or 'none', got {grid!r}"[:300])
    alphas = obj.get("alphas", [])
    if not isinstance(alphas, list) or len(alphas) > n_directions:
        raise RequestError(f"'alphas' must be a list of at most {n_directions} numbers (one per direction), "
                           f"got {alphas!r}"[:300])
    lo, hi = limits.alpha
    parsed_alphas = tuple(_float({f"alphas[{i}]": a}, f"alphas[{i}]", lo, hi, 0.0)
                          for i, a in enumerate(alphas))
    parsed_alphas = parsed_alphas + (0.0,) * (n_directions - len(parsed_alphas))
    return Params(
        text=text,
        layer=_int(obj, "layer", 0, n_layers - 1, 0),
        head=_int(obj, "head", 0, n_heads - 1, 0),
        normalizer=normalizer,
        sink_logit=_float(obj, "sink_logit", *limits.sink_logit, 0.0),
        temperature=_float(obj, "temperature", *limits.temperature, 1.0),
        window=_int(obj, "window", 0, limits.max_tokens, 0),
        sinks=_int(obj, "sinks", 0, limits.max_sinks, 0),
        scope=scope,
        steer_layer=_int(obj, "steer_layer", 0, n_layers - 1, n_layers // 2),
        alphas=parsed_alphas,
        grid=grid,
    )
