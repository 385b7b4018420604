"""Fused backend == reference backend in float64, for every normalizer x span, with and without
grouped-query attention, q_len == kv_len and q_len < kv_len, at ragged lengths (not multiples of any
block size), windows and chunks beyond the sequence, fully masked rows, and extreme logits."""

from __future__ import annotations

import pytest
import torch
from _attention_cases import normalizers, qkv, spans

from attnlab.attention import Chunked, SinkWindow, Window, attention

NORMS = list(normalizers())
SPANS = list(spans(5, 5))
# (batch, q_len, kv_len, kv_heads): self-attention, decoding with a cache, one query, GQA.
SHAPES = [(2, 11, 11, 4), (1, 7, 19, 2), (2, 1, 9, 1)]
TOL = 1e-10


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}q{}k{}h{}".format(*s))
@pytest.mark.parametrize("span_name", SPANS)
@pytest.mark.parametrize("norm_name", NORMS)
def test_fused_matches_reference(norm_name: str, span_name: str, shape: tuple[int, int, int, int]) -> None:
    batch, q_len, kv_len, kv_heads = shape
    q, k, v = qkv(batch, q_len, kv_len, kv_heads)
    norm, span = normalizers()[norm_name], spans(q_len, kv_len)[span_name]
    fused = attention(q, k, v, normalizer=norm, span=span, backend="fused")
    ref = attention(q, k, v, normalizer=norm, span=span, backend="reference")
    assert fused.shape == (batch, 4, q_len, v.shape[-1])
    torch.testing.assert_close(fused, ref, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("span", [Window(37), SinkWindow(4, 30), Chunked(24), Chunked(600), Window(129)],
                         ids=repr)
@pytest.mark.parametrize("norm_name", ["softmax", "sinks", "ssmax", "adaptive"])
@pytest.mark.parametrize("lengths", [(301, 301), (150, 333)], ids=["self", "cache"])
def test_local_spans_at_block_scale(span: object, norm_name: str, lengths: tuple[int, int]) -> None:
    """Lengths past the fused block size (128 or the chunk), so interior and edge block groups both run."""
    q, k, v = qkv(1, *lengths, kv_heads=2)
    norm = normalizers()[norm_name]
    fused = attention(q, k, v, normalizer=norm, span=span, backend="fused")
    ref = attention(q, k, v, normalizer=norm, span=span, backend="reference")
    torch.testing.assert_close(fused, ref, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("norm_name", NORMS)
def test_value_dim_differs_from_head_dim(norm_name: str) -> None:
    q, k, _ = qkv(1, 6, 9)
    v = torch.randn(1, 4, 9, 5, dtype=torch.float64)
    norm = normalizers()[norm_name]
    for span in ("causal", Window(3)):
        fused = attention(q, k, v, normalizer=norm, span=span, backend="fused")
        torch.testing.assert_close(fused, attention(q, k, v, normalizer=norm, span=span, backend="reference"))


@pytest.mark.parametrize("norm_name", NORMS)
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_fully_masked_rows_are_zero(norm_name: str, backend: str) -> None:
    q, k, v = qkv(1, 6, 6)
    mask = torch.rand(6, 6) < 0.5
    mask[2] = False
    out = attention(q, k, v, normalizer=normalizers()[norm_name], span=mask, backend=backend)
    assert torch.isfinite(out).all()
    assert out[:, :, 2].abs().max() == 0


@pytest.mark.parametrize("norm_name", NORMS)
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_extreme_logits_stay_finite(norm_name: str, backend: str, dtype: torch.dtype) -> None:
    """Scores of exactly +-1e4: q and k point along the first axis with random signs."""
    q, k, v = qkv(1, 8, 8, dtype=dtype)
    d = q.shape[-1]
    size = (1e4 * d**0.5) ** 0.5  # score = size^2 / sqrt(d) = 1e4
    q = torch.zeros_like(q).index_fill(-1, torch.tensor([0]), 1.0) * size * torch.randn(1, 4, 8, 1).sign()
    k = torch.zeros_like(k).index_fill(-1, torch.tensor([0]), 1.0) * size * torch.randn(1, 4, 8, 1).sign()
    q, k = q.to(dtype).requires_grad_(), k.to(dtype).requires_grad_()
    v = v.requires_grad_()
    norm = normalizers(dtype)[norm_name]
    out = attention(q, k, v, normalizer=norm, span="causal", backend=backend)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    ref = attention(q.double(), k.double(), v.double(), normalizer=normalizers()[norm_name], span="causal",
                    backend="reference")
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)


def test_the_matrix_covers_every_registered_normalizer() -> None:
    """A normalizer registered in the package (a built-in or a file in variants/) is in the shared cases, so
    every test above runs it."""
    from attnlab.attention import normalizer_names

    missing = sorted(set(normalizer_names()) - set(normalizers()))
    assert not missing, f"add {missing} to tests/_attention_cases.py normalizers()"
