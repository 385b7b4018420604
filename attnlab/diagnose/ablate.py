"""Ablations of a loaded model by forward hooks: MLPs removed, skip connections removed, or both.

Dong, Cordonnier & Loukas 2021 ("Attention is not all you need: pure attention loses rank doubly
exponentially with depth") prove that a stack of self-attention layers without skip connections or MLPs
converges to a rank-one output 1 x^T doubly exponentially fast, that MLPs slow the collapse, and that
skip connections prevent it. These hooks reproduce their ablations on a trained network (no forward is
rewritten; every hook is removed on exit):

- "no_mlp": a forward hook on each block's MLP (`LoadedModel.mlp(i)`) returns zeros, so block i computes
  y = x + attn(x) (+ 0). Blocks without an MLP are left as they are.
- "no_skip": a hook on each block returns its output minus its input, y' = block(x) - x. For a pre-norm
  block (Llama, GPT-2, attnlab's GPT), block(x) = x + a + m(x + a) with a = attn(LN(x)), so
  y' = a + m(x + a): the outer identity path is removed, while the MLP still reads the attention
  branch plus x inside the block (the inner skip cannot be removed without rewriting the block).
- "pure_attention": both, so y' = attn(LN(x)): Dong et al.'s self-attention network, each layer
  X_{l+1} = SAN(norm(X_l)), with the model's trained weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.diagnose._forward import _first_input, _first_output, residual_stream
from attnlab.diagnose.residual import token_norms
from attnlab.diagnose.sensitivity import _check_ids
from attnlab.diagnose.uniformity import uniformity_ratio

ABLATIONS = ("full", "no_mlp", "no_skip", "pure_attention")


def _replace_output(out: Any, new: Tensor) -> Any:
    if isinstance(out, tuple):
        return (new,) + out[1:]
    if isinstance(out, list):
        return [new] + out[1:]
    return new


@contextmanager
def ablate(lm: Any, mode: str) -> Iterator[int]:
    """Apply ablation `mode` (one of ABLATIONS) to every block while open; yields the number of blocks
    changed (for "no_mlp", blocks that have an MLP)."""
    if mode not in ABLATIONS:
        raise ValueError(f"unknown ablation {mode!r}; use one of {', '.join(ABLATIONS)}")
    handles = []
    changed = 0
    try:
        if mode in ("no_mlp", "pure_attention"):
            for i in range(lm.n_layers):
                mlp = lm.mlp(i)
                if mlp is not None:
                    handles.append(mlp.register_forward_hook(
                        lambda _m, _a, out: _replace_output(out, torch.zeros_like(_first_output(out)))))
                    changed += 1
        if mode in ("no_skip", "pure_attention"):
            changed = 0
            for block in lm.blocks():
                handles.extend(_remove_skip(block))
                changed += 1
        if mode == "full":
            changed = 0
        yield changed
    finally:
        for h in handles:
            h.remove()


def _remove_skip(block: nn.Module) -> list:
    inputs: list[Tensor] = []

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.append(_first_input(args, kwargs))

    def post(_m: nn.Module, _args: tuple, out: Any) -> Any:
        return _replace_output(out, _first_output(out) - inputs.pop())

    return [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]


@torch.no_grad()
def ablation_curves(lm: Any, ids: Tensor, modes: Sequence[str] = ABLATIONS) -> dict[str, dict[str, list]]:
    """Per mode, the uniformity ratio (mean-centred, Dong et al.; all tokens and without position 0) and
    the mean token norm of the residual stream at every depth: lists of n_layers + 1 (entry 0 the
    embeddings, entry l + 1 the output of block l). Non-finite values (a no-skip stream may overflow)
    are kept as nan/inf."""
    ids = _check_ids(ids)
    out = {}
    for mode in modes:
        with ablate(lm, mode):
            stream = residual_stream(lm, ids)
        ratio, ratio_rest, norm = [], [], []
        for x in stream:
            x = x[0]
            finite = bool(torch.isfinite(x).all())
            ratio.append(uniformity_ratio(x) if finite else float("nan"))
            ratio_rest.append(uniformity_ratio(x[1:]) if finite and x.shape[0] > 2 else float("nan"))
            norm.append(float(token_norms(x).mean()))
        out[mode] = {"ratio": ratio, "ratio_excl_first": ratio_rest, "norm": norm}
    return out
