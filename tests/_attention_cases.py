"""Cases shared by the tests/test_attention_*.py files: every normalizer and span, and random inputs."""

from __future__ import annotations

import torch

from attnlab.attention import Chunked, Clipped, ScalableSoftmax, Sinks, SinkWindow, Window

HEADS = 4


def normalizers(dtype: torch.dtype = torch.float64) -> dict[str, object]:
    """Every registered normalizer (test_attention_exact.py checks none is missing), fresh (parameters are
    new tensors each call); a key that is not a registered name is a second setting of one that is."""
    g = torch.Generator().manual_seed(1)
    return {
        "softmax": "softmax",
        "softmax1": "softmax1",
        "sinks": Sinks(torch.randn(HEADS, generator=g, dtype=dtype)),
        "clipped": Clipped(-0.1, 1.1),
        "adaptive": "adaptive",
        "ssmax": "ssmax",
        "ssmax-per-head": ScalableSoftmax(torch.rand(HEADS, generator=g, dtype=dtype) + 0.2),
        "softpick": "softpick",
    }


def spans(q_len: int, kv_len: int) -> dict[str, object]:
    """Every span, with local sizes below, inside and beyond the sequence, and a random mask whose first
    and last query rows are fully masked."""
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(q_len, kv_len, generator=g) < 0.4
    mask[0] = False
    mask[-1] = False
    return {
        "full": "full",
        "causal": "causal",
        "window(3)": Window(3),
        "window(big)": Window(kv_len + 5),
        "sinkwindow(2,3)": SinkWindow(2, 3),
        "sinkwindow(0,4)": SinkWindow(0, 4),
        "chunked(4)": Chunked(4),
        "chunked(big)": Chunked(kv_len + 3),
        "mask": mask,
    }


def qkv(batch: int, q_len: int, kv_len: int, kv_heads: int = HEADS, dim: int = 8,
        dtype: torch.dtype = torch.float64, seed: int = 0,
        scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(batch, HEADS, q_len, dim, generator=g, dtype=dtype)
    k = scale * torch.randn(batch, kv_heads, kv_len, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=g, dtype=dtype)
    return q, k, v
