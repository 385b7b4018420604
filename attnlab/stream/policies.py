"""KV-cache policies for streaming: which past tokens a query keeps, and where RoPE puts them.

Every policy is an attention span over the *stream* (absolute token index u for the query, j for a key),
plus the bookkeeping that span implies for a bounded cache:

    visible(u, j) = span.allows(u, j)             (attnlab's span objects, bottom-right aligned)
    lo(u)         = earliest non-sink key visible  (monotone in u, so evicting j < lo(u+1) is safe)
    P(u)          = |visible(u)| - 1               (the query's slot in a compact cache)

Positions follow StreamingLLM (Xiao et al. 2024, "Efficient Streaming Language Models with Attention
Sinks", sec. 3.2): inside the cache the query sits at slot P(u) and a sink s at slot s, so RoPE sees a sink
at distance P(u) - s and never a distance beyond the cache size; a window key j sits at distance u - j (its
true distance, which is < the cache size by construction).

| policy          | span                 | keeps                                | memory      |
|-----------------|----------------------|--------------------------------------|-------------|
| full            | causal               | everything                           | grows       |
| window(W)       | Window(W)            | the last W tokens                    | W           |
| sinks(S, W)     | SinkWindow(S, W)     | the first S tokens and the last W    | S + W       |
| chunked(C)      | Chunked(C)           | the tokens of the current C-chunk    | C           |
| recompute(W)    | (no cache)           | re-runs the model on the last W      | W           |
| memory(M)       | Transformer-XL       | the last segment's keys (GPT only)   | M + segment |

`W` counts the query itself: under sinks(4, 1020) each query attends to at most 1024 keys, StreamingLLM's
"cache size 1024". Counts are kept as integers (never inferred from tensor contents, so a key that happens
to be all zeros is still a key).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
from torch import Tensor

from attnlab.attention import Causal, Chunked, SinkWindow, Span, Window
from attnlab.errors import ConfigError

POLICIES = ("full", "window", "sinks", "chunked", "recompute", "memory")


class Policy:
    """Base class. Cache policies define `span`, `sinks` and `lo`; `recompute`/`memory` are drivers."""

    name: str = "policy"
    sinks: int = 0
    uses_cache: bool = True

    @property
    def span(self) -> Span:
        raise NotImplementedError

    @property
    def capacity(self) -> int | None:
        """Most keys one query attends to (None: unbounded)."""
        return None

    def lo(self, u: Tensor) -> Tensor:
        """Earliest non-sink key visible from stream position u (elementwise, int64): where the local
        span's keys begin, never inside the sink prefix."""
        return torch.clamp(self.span.first_key(u), min=self.sinks)

    def visible(self, u: Tensor, j: Tensor) -> Tensor:
        return self.span.allows(u, j)

    def slot(self, u: Tensor) -> Tensor:
        """P(u): the query's slot in the compact cache, |visible(u)| - 1."""
        s = self.sinks
        n_sinks = torch.clamp(u + 1, max=s)
        n_window = torch.clamp(u + 1 - torch.clamp(self.lo(u), min=s), min=0)
        return n_sinks + n_window - 1

    def full_from(self) -> int | None:
        """First stream position whose slot is not its own index (sinks then need re-rotated copies in a
        multi-token step); None when that never happens."""
        return None

    def __repr__(self) -> str:
        return self.name


class FullPolicy(Policy):
    name = "full"

    @property
    def span(self) -> Span:
        return Causal()

    def lo(self, u: Tensor) -> Tensor:
        return torch.zeros_like(u)


@dataclass(frozen=True, repr=False)
class _OneSizePolicy(Policy):
    """A cache policy set by one size, its only field (`window`, `chunk`): an int >= 1 that names the
    policy, `kind(size)`, and is the most keys one query attends to."""

    kind: ClassVar[str]

    @property
    def size(self) -> int:
        return getattr(self, fields(self)[0].name)

    def __post_init__(self) -> None:
        _check_int(self.size, fields(self)[0].name, 1)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.kind}({self.size})"

    @property
    def capacity(self) -> int:
        return self.size


@dataclass(frozen=True, repr=False)
class WindowPolicy(_OneSizePolicy):
    """Keep the last `window` tokens (StreamingLLM's "window attention" baseline)."""

    window: int
    kind = "window"

    @property
    def span(self) -> Span:
        return Window(self.window)


@dataclass(frozen=True, repr=False)
class SinksPolicy(Policy):
    """StreamingLLM: the first `sinks` tokens (attention sinks) plus the last `window` tokens."""

    sinks: int = field()  # a bare annotation would take Policy.sinks (0) as its default
    window: int

    def __post_init__(self) -> None:
        _check_int(self.sinks, "sinks", 0)
        _check_int(self.window, "window", 1)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"sinks({self.sinks},{self.window})"

    @property
    def span(self) -> Span:
        return SinkWindow(self.sinks, self.window) if self.sinks else Window(self.window)

    @property
    def capacity(self) -> int:
        return self.sinks + self.window

    def full_from(self) -> int | None:
        return self.sinks + self.window if self.sinks else None


@dataclass(frozen=True, repr=False)
class ChunkedPolicy(_OneSizePolicy):
    """Chunked attention: queries see only keys of their own C-token chunk; the cache empties at each
    chunk boundary (Llama 4's local layers)."""

    chunk: int
    kind = "chunked"

    @property
    def span(self) -> Span:
        return Chunked(self.chunk)


@dataclass(frozen=True, repr=False)
class RecomputePolicy(WindowPolicy):
    """Sliding window with re-computation: for each token, run the model afresh on the last `window`
    tokens (positions 0..window-1). Exact for a model trained with that context; O(window) work per layer
    per token instead of O(1) per key, the quality and speed baseline of StreamingLLM's Table 1/Fig. 10."""

    kind = "recompute"
    uses_cache = False


@dataclass(frozen=True, repr=False)
class MemoryPolicy(Policy):
    """Transformer-XL segment memory (Dai et al. 2019): the stream is cut into segments of `segment` tokens;
    each segment attends to itself (causally) and to the cached keys/values of the last `memory` tokens of
    earlier segments, computed when those were processed (no gradient flows back). attnlab GPT only."""

    memory: int
    segment: int
    uses_cache = False

    def __post_init__(self) -> None:
        _check_int(self.memory, "memory", 1)
        _check_int(self.segment, "segment", 1)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"memory({self.memory},{self.segment})"

    @property
    def capacity(self) -> int:
        return self.memory + self.segment


def _check_int(value: object, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")


def make_policy(name: str, *, sinks: int = 4, window: int = 1020, chunk: int = 512, memory: int | None = None,
                segment: int | None = None, max_context: int | None = None) -> Policy:
    """A policy by name: full, window, sinks, chunked, recompute, memory. `max_context`, when given, is the
    model's trained context: a policy whose per-query span exceeds it is refused (RoPE would see distances
    the model never trained on, which is exactly what streaming is meant to avoid)."""
    if not isinstance(name, str) or name.lower() not in POLICIES:
        raise ConfigError(f"unknown streaming policy {name!r}; valid policies: {', '.join(POLICIES)}")
    name = name.lower()
    policy: Policy
    if name == "full":
        policy = FullPolicy()
    elif name == "window":
        policy = WindowPolicy(window)
    elif name == "sinks":
        policy = SinksPolicy(sinks, window)
    elif name == "chunked":
        policy = ChunkedPolicy(chunk)
    elif name == "recompute":
        policy = RecomputePolicy(window)
    else:
        mem = window if memory is None else memory
        policy = MemoryPolicy(mem, segment if segment is not None else max(1, mem // 2))
    cap = policy.capacity
    if max_context and cap is not None and cap > max_context:
        what = {"sinks": f"sinks + window = {sinks} + {window}", "chunked": f"chunk = {chunk}"}.get(
            name, f"{name} size {cap}")
        raise ConfigError(f"{what} = {cap} is larger than the model's context ({max_context} tokens); "
                          f"choose a smaller --window/--sinks/--chunk so the cache fits the context")
    return policy


def parse_policy(spec: str, *, sinks: int = 4, window: int = 1020, chunk: int = 512,
                 max_context: int | None = None) -> Policy:
    """A policy from a name (sizes from the keyword defaults) or a spec with its sizes: "full",
    "window(1020)", "sinks(4,1020)", "chunked(512)", "recompute(1024)", "memory(512,256)"."""
    spec = spec.strip().lower().replace(" ", "")
    if "(" not in spec:
        return make_policy(spec, sinks=sinks, window=window, chunk=chunk, max_context=max_context)
    name, _, rest = spec.partition("(")
    if not rest.endswith(")"):
        raise ConfigError(f"bad policy spec {spec!r}; write e.g. sinks(4,1020) or window(1024)")
    try:
        args = [int(a) for a in rest[:-1].split(",") if a]
    except ValueError:
        raise ConfigError(f"bad policy spec {spec!r}: sizes must be integers, e.g. sinks(4,1020)") from None
    want = {"full": 0, "window": 1, "sinks": 2, "chunked": 1, "recompute": 1, "memory": 2}.get(name)
    if want is None:
        raise ConfigError(f"unknown streaming policy {name!r}; valid policies: {', '.join(POLICIES)}")
    if len(args) != want:
        raise ConfigError(f"{name} takes {want} size(s), got {spec!r}; e.g. sinks(4,1020), window(1024)")
    if name == "sinks":
        return make_policy(name, sinks=args[0], window=args[1], max_context=max_context)
    if name == "memory":
        return make_policy(name, memory=args[0], segment=args[1], max_context=max_context)
    if name == "chunked":
        return make_policy(name, chunk=args[0], max_context=max_context)
    if name == "full":
        return make_policy(name)
    return make_policy(name, window=args[0], max_context=max_context)
