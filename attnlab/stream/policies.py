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

Each is registered by name in `attnlab.stream.registry` (`register_policy`), as a user's policy is.

`W` counts the query itself: under sinks(4, 1020) each query attends to at most 1024 keys, StreamingLLM's
"cache size 1024". Counts are kept as integers (never inferred from tensor contents, so a key that happens
to be all zeros is still a key).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnlab.attention import Causal, Chunked, SinkWindow, Span, Window
from attnlab.errors import ConfigError
from attnlab.stream.recompute import recompute_logits


class Policy:
    """Base class. A policy says what it needs, and the runner, `stream_eval` and `StreamingCache` ask it
    (never its class):

    * `uses_cache`: it keeps a KV cache, defined by `span`, `sinks` and `lo` (RunnerCache, GPT's KVCache);
    * `drives_model`: it feeds the model itself (`start` makes its state, `drive` yields the logits);
    * `model_kinds`: the models it runs on; ("attnlab",) when it needs the model's own segments (GPT's cache
      holds keys before RoPE), which `check_model` reports;
    * `strides`: its positions are scored independently (`score`), so stream_eval may score every k-th.

    Register a new one by name with `attnlab.stream.register_policy(name, factory)`."""

    name: str = "policy"
    sinks: int = 0
    uses_cache: bool = True
    drives_model: bool = False
    model_kinds: tuple[str, ...] = ("hf", "attnlab")
    strides: bool = False

    @property
    def span(self) -> Span:
        raise NotImplementedError

    @property
    def capacity(self) -> int | None:
        """Most keys one query attends to (None: unbounded)."""
        return None

    def check_model(self, kind: str) -> None:
        """Refuse a model kind ("hf" or "attnlab") this policy cannot run on, naming what to use instead."""
        if kind not in self.model_kinds:
            raise ConfigError(f"the {self.name} policy runs on {' and '.join(self.model_kinds)} models only, "
                              f"not {kind}; choose another --policy")

    def start(self, runner: Any) -> Any:
        """A driving policy's state for a new stream (held as `runner.cache`); None: nothing to hold."""
        return None

    def drive(self, runner: Any, ids: Tensor) -> Iterator[Tensor]:
        """A driving policy feeds `ids` (B, q) through `runner.module`, advancing `runner.t`; yields logits
        (B, q_i, V) whose q_i sum to q."""
        raise NotImplementedError(f"{type(self).__name__} sets drives_model but defines no drive()")

    def score(self, module: nn.Module, ids: Tensor, positions: Sequence[int],
              per: int) -> Iterator[tuple[list[int], Tensor]]:
        """A striding policy's logits (len(us), B, V) for stream positions us of ids (B, n), independently."""
        raise NotImplementedError(f"{type(self).__name__} sets strides but defines no score()")

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
    drives_model = True
    strides = True

    def drive(self, runner: Any, ids: Tensor) -> Iterator[Tensor]:
        # The runner keeps the last `window` tokens (runner._history); each new token's window ends at it.
        past = runner._history
        seen = ids if past is None else torch.cat([past, ids], dim=1)
        first = seen.shape[1] - ids.shape[1]
        for us, logits in recompute_logits(runner.module, seen, self.window, range(first, seen.shape[1])):
            runner.t += len(us)
            runner._history = seen[:, max(0, us[-1] + 1 - self.window):us[-1] + 1].clone()
            yield logits.transpose(0, 1)  # (B, 1, V)

    def score(self, module: nn.Module, ids: Tensor, positions: Sequence[int],
              per: int) -> Iterator[tuple[list[int], Tensor]]:
        return recompute_logits(module, ids, self.window, positions, per=per, warm=True)


@dataclass(frozen=True, repr=False)
class MemoryPolicy(Policy):
    """Transformer-XL segment memory (Dai et al. 2019): the stream is cut into segments of `segment` tokens;
    each segment attends to itself (causally) and to the cached keys/values of the last `memory` tokens of
    earlier segments, computed when those were processed (no gradient flows back). attnlab GPT only."""

    memory: int
    segment: int
    uses_cache = False
    drives_model = True
    model_kinds = ("attnlab",)

    def check_model(self, kind: str) -> None:
        if kind not in self.model_kinds:
            raise ConfigError("the memory policy (Transformer-XL segment memory) needs attnlab's GPT, whose "
                              "cache holds keys before RoPE; for Hugging Face models use sinks, window, "
                              "chunked, recompute or full")

    def start(self, runner: Any) -> Any:
        from attnlab.models.gpt_parts import KVCache

        return KVCache.empty(len(runner.module.blocks))

    def drive(self, runner: Any, ids: Tensor) -> Iterator[Tensor]:
        """Segments attend causally to themselves and to the cached last `memory` tokens."""
        M, seg = self.memory, self.segment
        cache = runner.cache
        while ids.shape[1]:
            # Fill up the current segment: a segment boundary falls every `seg` tokens of the stream.
            room = seg - (runner.t % seg)
            chunk, ids = ids[:, :room], ids[:, room:]
            n_mem = len(cache)
            if runner.t % seg == 0 and n_mem > M:
                for layer in range(len(cache.keys)):
                    cache.keys[layer] = cache.keys[layer][:, :, -M:].clone()
                    cache.values[layer] = cache.values[layer][:, :, -M:].clone()
                n_mem = M
            cache.positions = torch.arange(n_mem, device=chunk.device)
            logits = runner.module(chunk, cache=cache, positions=torch.arange(
                n_mem, n_mem + chunk.shape[1], device=chunk.device))[0]
            runner.t += chunk.shape[1]
            yield logits

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


def __getattr__(name: str) -> object:
    # make_policy, parse_policy and POLICIES moved to registry.py (which imports this module); older imports
    # from here still find them.
    if name in ("POLICIES", "make_policy", "parse_policy"):
        from attnlab.stream import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
