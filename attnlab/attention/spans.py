"""Spans: which keys a query may see.

A span is a small object with one predicate, `allows(q_pos, k_pos)`, evaluated elementwise on broadcast
integer positions (as FlexAttention's mask_mod). Positions are absolute: with `q_len` queries and `kv_len`
keys, query i sits at position `kv_len - q_len + i` (bottom-right alignment, as when decoding with a
cache), and key j at position j.

Local spans (Window, SinkWindow, Chunked) also say, through `first_key(q_pos)`, the earliest non-sink key a
query may see, and `sinks`, how many leading keys every query may see besides. That is all the fused
backend needs to give each block of queries only the keys it can see, so their cost is
O(seq x window) rather than O(seq^2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


class Span:
    """Base class: subclasses define `allows`; local spans also `first_key` and `sinks`."""

    name: str = "span"
    sinks: int = 0
    local: bool = False

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        raise NotImplementedError

    def first_key(self, q_pos: Tensor) -> Tensor:
        """Earliest non-sink key position visible from q_pos (local spans only); monotone in q_pos."""
        raise NotImplementedError

    def block_size(self, q_len: int, backward: bool = True) -> int:
        """Queries per block in the fused backend (local spans only); `backward`: a backward pass will
        follow (the best size differs, see `_window_block`)."""
        return q_len

    def block_start(self, q_start: int, bq: int) -> int:
        """Position (<= q_start) where the fused backend's first block of queries begins; the queries
        before q_start are padding, dropped from the output."""
        return q_start

    def periodic(self, bq: int) -> bool:
        """True if, for blocks of `bq` queries whose keys all exist and lie past the sink prefix, the
        allowed pattern relative to the block is the same for every block (the fused backend then builds
        it once)."""
        return False

    def reduces_to_causal(self, kv_len: int) -> bool:
        """True if, with `kv_len` keys, this span allows exactly what causal allows."""
        return False

    def mask(self, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> Tensor:
        """Bool (q_len, kv_len): True where query i may attend to key j."""
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        return self.allows(q_pos, k_pos)

    def __repr__(self) -> str:
        return self.name


class Full(Span):
    name = "full"

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape)
        return torch.ones(shape, dtype=torch.bool, device=q_pos.device)


class Causal(Span):
    name = "causal"

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return k_pos <= q_pos


def _check_size(value: int, what: str, cls: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{cls}: {what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{cls}: {what} must be >= 1, got {value}; use a positive number of keys")
    return value


@dataclass(frozen=True, repr=False)
class _SizedSpan(Span):
    """A local span set by one size, `size` keys (a window, a chunk), named `kind(size)`."""

    size: int
    local = True
    kind: ClassVar[str]

    def __post_init__(self) -> None:
        _check_size(self.size, "size", type(self).__name__)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.kind}({self.size})"

    def reduces_to_causal(self, kv_len: int) -> bool:
        return self.size >= kv_len  # one window or chunk holds every key


@dataclass(frozen=True, repr=False)
class Window(_SizedSpan):
    """Sliding window: query at p sees keys j with p - size < j <= p (the key at p included)."""

    kind = "window"

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return (k_pos <= q_pos) & (k_pos > q_pos - self.size)

    def first_key(self, q_pos: Tensor) -> Tensor:
        return q_pos - self.size + 1

    def block_size(self, q_len: int, backward: bool = True) -> int:
        return _window_block(self.size, q_len, backward)

    def periodic(self, bq: int) -> bool:
        return True  # the pattern depends on key minus query position only


def _window_block(window: int, q_len: int, backward: bool = True) -> int:
    """Queries per block for a window: the kernel's work per query is bq + window - 1 keys, so small blocks
    waste less, but very small ones cost per-block overhead. Measured at seq 8192, window 512 (2-core CPU):
    forward alone is fastest at 64, forward+backward at 128 (the backward's per-block cost is higher)."""
    if window >= 256:
        return max(1, min(q_len, 128 if backward else 64))
    return max(1, min(q_len, max(32, window)))


class SinkWindow(Span):
    """StreamingLLM's span: the first `sinks` keys, plus the sliding window p - window < j <= p."""

    local = True

    def __init__(self, sinks: int, window: int) -> None:
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"SinkWindow: sinks must be an int >= 0, got {sinks!r}")
        _check_size(window, "window", "SinkWindow")
        self.sinks, self.window = sinks, window

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SinkWindow) and (self.sinks, self.window) == (other.sinks, other.window)

    def __hash__(self) -> int:
        return hash(("sinkwindow", self.sinks, self.window))

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"sinkwindow({self.sinks},{self.window})"

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        causal = k_pos <= q_pos
        return causal & ((k_pos < self.sinks) | (k_pos > q_pos - self.window))

    def first_key(self, q_pos: Tensor) -> Tensor:
        return q_pos - self.window + 1

    def block_size(self, q_len: int, backward: bool = True) -> int:
        return _window_block(self.window, q_len, backward)

    def periodic(self, bq: int) -> bool:
        return True  # past the prefix, sink keys are always visible and the window is relative

    def reduces_to_causal(self, kv_len: int) -> bool:
        return self.sinks + self.window >= kv_len  # no key falls between the prefix and the window


@dataclass(frozen=True, repr=False)
class Chunked(_SizedSpan):
    """Chunked attention: keys in the same chunk (j // size == p // size) and j <= p."""

    kind = "chunked"

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return (k_pos <= q_pos) & (torch.div(k_pos, self.size, rounding_mode="floor") == torch.div(
            q_pos, self.size, rounding_mode="floor"))

    def first_key(self, q_pos: Tensor) -> Tensor:
        return torch.div(q_pos, self.size, rounding_mode="floor") * self.size

    def block_size(self, q_len: int, backward: bool = True) -> int:
        # One chunk per block: each block then sees exactly its own chunk (no wasted keys), and the key
        # blocks are strided views. Larger chunks are cut into 256-query blocks to bound the mask.
        return self.size if self.size <= 512 else 256

    def block_start(self, q_start: int, bq: int) -> int:
        return q_start - q_start % self.size if bq == self.size else q_start

    def periodic(self, bq: int) -> bool:
        return bq == self.size


class MaskSpan(Span):
    """An explicit boolean mask, broadcastable to (batch, heads, q_len, kv_len); True means may attend."""

    name = "mask"

    def __init__(self, mask: Tensor) -> None:
        if mask.dtype != torch.bool:
            raise TypeError(f"a mask span must be a bool tensor (True = may attend), got dtype {mask.dtype}")
        if mask.dim() < 2 or mask.dim() > 4:
            raise ValueError(f"a mask span must have 2 to 4 dims broadcastable to (batch, heads, q, kv), "
                             f"got shape {tuple(mask.shape)}")
        self.tensor = mask

    def mask(self, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> Tensor:
        if self.tensor.shape[-2:] != (q_len, kv_len) and not (
            self.tensor.shape[-2] in (1, q_len) and self.tensor.shape[-1] in (1, kv_len)
        ):
            raise ValueError(f"mask of shape {tuple(self.tensor.shape)} does not broadcast to "
                             f"(q_len={q_len}, kv_len={kv_len}); pass a mask whose last two dims are "
                             f"({q_len}, {kv_len})")
        return self.tensor.to(device)

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        raise TypeError("MaskSpan has no positional rule; use .mask(q_len, kv_len)")


FULL = Full()
CAUSAL = Causal()
SPAN_NAMES = ("full", "causal", "window(W)", "sinkwindow(S,W)", "chunked(C)", "a bool mask tensor")

_PATTERN = re.compile(r"^\s*(window|sinkwindow|sinks|chunked)\s*[\(:]\s*([\d\s,]+?)\s*\)?\s*$")


def resolve_span(span: object) -> Span:
    """A Span object from a name ('causal', 'window(512)', 'sinkwindow(4,1020)', 'chunked(64)'),
    a Span, or a bool mask tensor."""
    if isinstance(span, Span):
        return span
    if isinstance(span, Tensor):
        return MaskSpan(span)
    if isinstance(span, str):
        key = span.strip().lower()
        if key == "full":
            return FULL
        if key == "causal":
            return CAUSAL
        match = _PATTERN.match(key)
        if match:
            kind, args = match.group(1), [int(a) for a in match.group(2).split(",") if a.strip()]
            try:
                if kind == "window" and len(args) == 1:
                    return Window(args[0])
                if kind == "chunked" and len(args) == 1:
                    return Chunked(args[0])
                if kind in ("sinkwindow", "sinks") and len(args) == 2:
                    return SinkWindow(args[0], args[1])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bad span {span!r}: {exc}") from None
        raise ValueError(f"unknown span {span!r}; valid spans: {', '.join(SPAN_NAMES)}")
    raise TypeError(f"span must be a name, a Span object or a bool mask tensor, got {type(span).__name__}; "
                    f"valid spans: {', '.join(SPAN_NAMES)}")
