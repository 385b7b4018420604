"""Forward passes through part of a model, via hooks on its blocks (no forward is monkeypatched).

`block_output(lm, embeds, stop=i)` runs the model on input embeddings and returns the residual stream
leaving block i, stopping there (a forward hook raises a private exception), so analyses of inner states
never pay for later blocks or the vocabulary projection. With `start=j, x=X` the input of block j is
replaced by X, which makes block j ... i a function of X alone (blocks before j still run, on the
original embeddings, but nothing depends on their result).

`twice_differentiable()` routes attention through attnlab's reference backend: the fused CPU kernel
(`_scaled_dot_product_flash_attention_for_cpu`) has neither forward-mode AD nor a derivative of its
backward, both of which the Lipschitz power iteration needs. It uses `record_attention()`, the one
documented switch to the eager path (it also keeps the detached weights, which we drop).

`residual_stream(lm, ids)` reads the stream through `LoadedModel.capture()`, the one capture path; the
block input/output helpers are the adapter's (`hook_input`, `hook_output`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.models.adapter import hook_input, hook_output
from attnlab.models.hooks import record_attention

# ablate.py reads a block's residual input/output through these names.
_first_input = hook_input
_first_output = hook_output


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass early."""


def _replace_first_tensor(args: tuple, kwargs: dict, x: Tensor) -> tuple[tuple, dict]:
    if args and isinstance(args[0], Tensor):
        return (x,) + tuple(args[1:]), kwargs
    hook_input(args, kwargs)  # raises the clear error when there is no residual input
    for key in ("hidden_states", "x", "hidden"):
        if isinstance(kwargs.get(key), Tensor):
            return args, {**kwargs, key: x}
    raise AssertionError("unreachable")


def block_output(lm: Any, embeds: Tensor, stop: int, start: int | None = None,
                 x: Tensor | None = None) -> Tensor:
    """Residual stream (B, T, d) leaving block `stop`, from input embeddings (B, T, d); with `start` and
    `x`, block `start` receives `x` instead of its usual input."""
    blocks: list[nn.Module] = lm.blocks()
    if not 0 <= stop < len(blocks):
        raise ValueError(f"stop={stop} out of range: the model has blocks 0..{len(blocks) - 1}")
    if (start is None) != (x is None):
        raise ValueError("pass start and x together (x replaces the input of block start)")
    if start is not None and not 0 <= start <= stop:
        raise ValueError(f"start={start} must be in 0..stop={stop}")
    store: dict[str, Tensor] = {}
    handles = []
    if start is not None:
        def pre(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return _replace_first_tensor(args, kwargs, x)

        handles.append(blocks[start].register_forward_pre_hook(pre, with_kwargs=True))

    def post(_m: nn.Module, _args: tuple, out: Any) -> None:
        store["out"] = hook_output(out)
        raise _Stop

    handles.append(blocks[stop].register_forward_hook(post))
    try:
        lm.forward_embeds(embeds)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if "out" not in store:
        raise RuntimeError(f"block {stop} never ran during the forward pass")
    return store["out"]


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """Attention through the eager reference backend (supports forward AD and double backward)."""
    with record_attention() as store:
        yield
        store.clear()


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters set to requires_grad=False for the duration, then restored: derivatives with respect to
    inputs then build no graph for parameter gradients (less memory, faster backward)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@torch.no_grad()
def residual_stream(lm: Any, ids: Tensor) -> list[Tensor]:
    """[input of block 0, output of block 0, ..., output of block L-1], each (B, T, d), detached, captured
    by `lm.capture()` entered now (after any ablation hooks, so it sees ablated outputs); skips the final
    norm and the vocabulary projection."""
    n = len(lm.blocks())
    with lm.capture(attention=False) as cache:
        block_output(lm, lm.embed(ids), stop=n - 1)
    return [cache["blocks.0.hook_resid_pre"]] + [cache[f"blocks.{i}.hook_resid_post"] for i in range(n)]
