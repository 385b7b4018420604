"""How much memory a training step needs, checked before the run starts.

A config that cannot fit (`--context 1000000`, `--batch-size 100000000`) otherwise hangs for minutes in the
first forward or dies in the allocator. The estimate counts, per process, in float32:

    weights + gradients + AdamW's two moments   16 bytes per trainable parameter (4 per frozen one)
    activations kept for the backward           ~ (8 + 3 mlp_ratio) d floats per token per layer
                                                  (norms, q/k/v, attention output, MLP in/out, residual)
    logits                                      3 V floats per token (logits, float copy, gradient)
    attention working set                       B H T T floats x 3 on a dense path (the eager reference,
                                                  used to train sinks/softmax1 on CUDA); O(B H T) otherwise
    the batch itself                            2 B (T + 1) int64 (indices and gathered rows)

It is a floor, not a bound (allocator slack, temporaries, kernels' workspaces come on top), so a refusal
means the run certainly does not fit; `--no-memory-check` skips it.
"""

from __future__ import annotations

from typing import Any

import torch

from attnlab.errors import ConfigError

GB = 1e9


def estimate_transformer_bytes(*, n_params: int, n_trainable: int | None = None, n_layers: int, d_model: int,
                               n_heads: int, mlp_ratio: float, vocab_size: int, batch: int, context: int,
                               dense_attention: bool = False, itemsize: int = 4) -> dict[str, float]:
    """Bytes a training step needs, by part (see the module docstring); "total" sums them."""
    trainable = n_params if n_trainable is None else n_trainable
    tokens = batch * context
    parts = {
        "weights+grads+adamw": float(16 * trainable + 4 * (n_params - trainable)),
        "activations": float(tokens * n_layers * (8 + 3 * mlp_ratio) * d_model * itemsize),
        "logits": float(tokens * vocab_size * 3 * itemsize),
        "attention": float(batch * n_heads * context * (context if dense_attention else 4) * 3 * itemsize
                           * (n_layers if dense_attention else 1)),
        "batch": float(2 * batch * (context + 1) * 8),
    }
    parts["total"] = sum(parts.values())
    return parts


def estimate_gpt_bytes(model: Any, batch: int, device: torch.device) -> dict[str, float]:
    """`estimate_transformer_bytes` for a GPTConfig, `batch` sequences per process, on `device`."""
    d, heads, layers = model.d_model, model.n_heads, model.n_layers
    kv = model.n_kv_heads or heads
    head_dim = d // heads
    mlp = model.mlp_ratio if model.mlp else 0
    n_params = (model.vocab_size * d * (1 if model.tie_embeddings else 2)
                + layers * (d * d * 2 + 2 * d * kv * head_dim + 2 * mlp * d * d + 4 * d))
    dense = device.type != "cpu" and model.normalizer in ("sinks", "softmax1")
    return estimate_transformer_bytes(n_params=n_params, n_layers=layers, d_model=d, n_heads=heads,
                                      mlp_ratio=mlp, vocab_size=model.vocab_size, batch=batch,
                                      context=model.context, dense_attention=dense)


def available_bytes(device: torch.device) -> tuple[float, str]:
    """(free bytes, what was measured) on `device`: free GPU memory, or the system's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free), f"free on {device}"
    import psutil

    return float(psutil.virtual_memory().available), "RAM available"


def check_fits(needed: dict[str, float], device: torch.device, what: str, fix: str) -> None:
    """Raise a one-line ConfigError when needed["total"] exceeds the memory available on `device`."""
    free, label = available_bytes(device)
    if needed["total"] <= free:
        return
    biggest = sorted(((v, k) for k, v in needed.items() if k != "total"), reverse=True)[:3]
    detail = ", ".join(f"{k} {_fmt(v)}" for v, k in biggest)
    raise ConfigError(f"{what} needs about {_fmt(needed['total'])} of memory per process ({detail}) but only "
                      f"{_fmt(free)} is {label}; {fix} (or pass --no-memory-check to try anyway)")


def _fmt(n: float) -> str:
    if n >= 1e15:
        return f"{n / 1e15:,.0f} PB"
    if n >= 1e12:
        return f"{n / 1e12:,.1f} TB"
    if n >= GB:
        return f"{n / GB:,.1f} GB"
    return f"{n / 1e6:,.0f} MB"


__all__ = ["available_bytes", "check_fits", "estimate_gpt_bytes", "estimate_transformer_bytes"]
