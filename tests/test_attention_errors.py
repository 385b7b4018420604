"""Bad input fails clearly: each error names the problem (and the fix where there is one)."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import Chunked, Clipped, ScalableSoftmax, Sinks, SinkWindow, Window, attention


def _qkv(h: int = 4, hk: int = 4, lq: int = 5, lk: int = 5, d: int = 8) -> tuple[torch.Tensor, ...]:
    return torch.randn(1, h, lq, d), torch.randn(1, hk, lk, d), torch.randn(1, hk, lk, d)


def test_mismatched_shapes_fail_clearly() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="head_dim differ"):
        attention(q, torch.randn(1, 4, 5, 7), torch.randn(1, 4, 5, 7))
    with pytest.raises(ValueError, match="must agree in heads and sequence length"):
        attention(q, k, torch.randn(1, 4, 6, 8))
    with pytest.raises(ValueError, match="batch sizes differ"):
        attention(q, torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8))
    with pytest.raises(ValueError, match="must be 4-D"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, span=torch.ones(3, 5, dtype=torch.bool))


def test_heads_not_divisible_fail_clearly() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        attention(*_qkv(h=4, hk=3))


@pytest.mark.parametrize("make", [lambda: Window(0), lambda: Chunked(-1), lambda: SinkWindow(2, 0)],
                         ids=["window", "chunked", "sinkwindow"])
def test_sizes_below_one_fail_clearly(make: object) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        make()
    with pytest.raises(ValueError, match="must be >= 1"):
        attention(*_qkv(), span="window(0)")


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown normalizer 'softmax2'.*softmax1.*adaptive"):
        attention(*_qkv(), normalizer="softmax2")
    with pytest.raises(ValueError, match=r"unknown span 'diagonal'.*causal.*window"):
        attention(*_qkv(), span="diagonal")
    with pytest.raises(ValueError, match=r"unknown backend 'flash'.*reference"):
        attention(*_qkv(), backend="flash")
    with pytest.raises(ValueError, match="needs its logits"):
        attention(*_qkv(), normalizer="sinks")
    with pytest.raises(TypeError, match="valid normalizers"):
        attention(*_qkv(), normalizer=3)


def test_mixed_devices_and_dtypes_fail_clearly() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="one device.*meta"):
        attention(q, k.to("meta"), v)
    with pytest.raises(TypeError, match="share a dtype"):
        attention(q, k.double(), v)
    with pytest.raises(TypeError, match="floating-point"):
        attention(q.long(), k.long(), v.long())
    with pytest.raises(TypeError, match="bool tensor"):
        attention(q, k, v, span=torch.ones(5, 5))


def test_return_weights_with_fused_backend_fails_clearly() -> None:
    with pytest.raises(ValueError, match="fused backend never builds the weight matrix.*reference"):
        attention(*_qkv(), backend="fused", return_weights=True)
    out, w = attention(*_qkv(), return_weights=True)
    assert w.shape == (1, 4, 5, 5)


def test_wrong_number_of_per_head_parameters_fails_clearly() -> None:
    with pytest.raises(ValueError, match="3 logits for 4 query heads"):
        attention(*_qkv(), normalizer=Sinks(torch.zeros(3)))
    with pytest.raises(ValueError, match="must be a scalar or one value per head"):
        Sinks(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="2 values of s for 4 query heads"):
        attention(*_qkv(), normalizer=ScalableSoftmax(torch.ones(2)))
    with pytest.raises(ValueError, match="gamma < zeta"):
        Clipped(1.0, 0.5)
