"""float16 / bfloat16: the fused backend's error against a float64 reference is at most 2x (plus a small
absolute slack) the error of plain PyTorch SDPA in the same dtype against the same reference, the rule of
flash-attention's tests. Fixed tolerances are used only in float64 (the other test files)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _attention_cases import normalizers

from attnlab.attention import Window, attention

SLACK = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm_name", ["softmax", "softmax1", "sinks", "adaptive", "ssmax", "clipped"])
@pytest.mark.parametrize("span", ["causal", Window(16)], ids=str)
def test_low_precision_within_twice_sdpa_error(dtype: torch.dtype, norm_name: str, span: object) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 64, 32, generator=g, dtype=torch.float64) for _ in range(3))
    lo = [x.to(dtype) for x in (q, k, v)]
    # The float64 reference sees the same rounded inputs, so only the arithmetic differs.
    q64, k64, v64 = (x.double() for x in lo)
    norm = normalizers()[norm_name]
    ref = attention(q64, k64, v64, normalizer=norm, span=span, backend="reference")
    out = attention(*lo, normalizer=normalizers(dtype)[norm_name], span=span, backend="fused")
    assert out.dtype == dtype
    mask = (span if isinstance(span, Window) else Window(64)).mask(64, 64)  # Window(64) is causal here
    base = F.scaled_dot_product_attention(*lo, attn_mask=mask)
    base_ref = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask)
    assert _error(out, ref) <= 2 * _error(base, base_ref) + SLACK[dtype]
