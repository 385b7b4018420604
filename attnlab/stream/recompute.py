"""The one recompute loop: each scored position u gets its logits from a fresh forward over its last W tokens
(positions 0..W-1), StreamingLLM's "sliding window with re-computation" baseline (Xiao et al. 2024, Table 1).

Both `StreamRunner` (token by token, `RecomputePolicy.drive`) and `stream_eval` (every k-th position, several
windows per forward, `RecomputePolicy.score`) run this loop, so the two cannot drift apart.

    window(u) = ids[:, max(0, u - W + 1) : u + 1]         logits(u) = model(window(u))[:, -1]

With `warm`, every u < W - 1 (whose window starts at token 0) is read from one causal forward over the first
W tokens instead: a causal forward scores each prefix exactly, so this is the same function in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


def is_hf(module: nn.Module) -> bool:
    """A Hugging Face causal LM (it takes position_ids and logits_to_keep) rather than attnlab's GPT."""
    return hasattr(module, "config") and hasattr(module.config, "_attn_implementation")


def window_logits(module: nn.Module, ids: Tensor) -> Tensor:
    """Last-position logits (B, 1, V) of a fresh forward over ids (B, L) at positions 0..L-1."""
    if is_hf(module):
        pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        return module(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1).logits
    return module(ids)[0][:, -1:]


def recompute_logits(module: nn.Module, ids: Tensor, window: int, positions: Sequence[int], *, per: int = 1,
                     warm: bool = False) -> Iterator[tuple[list[int], Tensor]]:
    """Yield (positions us, logits (len(us), B, V)) for the given stream positions of ids (B, n), in order:
    each from a forward over its last `window` tokens; `per` full windows stacked into one forward (B = 1
    then, or any B with per = 1); with `warm`, the positions before `window - 1` from one causal forward."""
    W = window
    rest = list(positions)
    if warm:
        first = [u for u in rest if u < W - 1]
        rest = [u for u in rest if u >= W - 1]
        if first:
            x = ids[:, :W]
            logits = module(input_ids=x, use_cache=False).logits if is_hf(module) else module(x)[0]
            yield first, logits[:, torch.tensor(first)].transpose(0, 1)  # (b, B, V)
    for i in range(0, len(rest), per):
        us = rest[i:i + per]
        B = ids.shape[0]
        x = torch.cat([ids[:, max(0, u - W + 1):u + 1] for u in us])  # (b * B, L): equal L unless per = 1
        yield us, window_logits(module, x)[:, -1].view(len(us), B, -1)
