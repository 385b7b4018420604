"""Softpick (attnlab/attention/variants/softpick.py) against its formula written out directly, in float64:
weights, the attention output on both backends (the fused one runs attend(): softpick_rows.py) and spans,
gradients (gradcheck), extreme logits, and rows that see no key, with no slow-path warning. Also: the
variant reached the registry by being a file in variants/, nothing else."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from attnlab.attention import Chunked, Window, attention, normalizer_names, resolve_normalizer
from attnlab.attention.variants.softpick import Softpick
from attnlab.models.gpt import GPT, GPTConfig

EPS = 1e-8


def direct(scores: torch.Tensor, allowed: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """relu(exp(s) - 1) / (sum over visible keys of |exp(s) - 1| + eps), as the paper writes it."""
    e = torch.exp(scores) - 1
    num = torch.where(allowed, torch.relu(e), torch.zeros_like(e))
    den = torch.where(allowed, e.abs(), torch.zeros_like(e)).sum(-1, keepdim=True) + eps
    return num / den


def _qkv(gen: torch.Generator, h: int = 4, hk: int = 2, lq: int = 9, lk: int = 9, d: int = 6,
         grad: bool = False) -> tuple[torch.Tensor, ...]:
    shapes = [(2, h, lq, d), (2, hk, lk, d), (2, hk, lk, d)]
    return tuple(torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(grad) for s in shapes)


def _expand(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def _direct_attention(q, k, v, allowed):  # noqa: ANN001, ANN202
    k, v = _expand(k, q.shape[1]), _expand(v, q.shape[1])
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return direct(scores, allowed) @ v


def test_registered_by_its_file_alone() -> None:
    assert "softpick" in normalizer_names()
    assert isinstance(resolve_normalizer("softpick"), Softpick)
    assert Softpick.has_fast_path()  # attend(): row blocks (softpick_rows.py), not the reference path


def test_weights_match_the_formula(gen: torch.Generator) -> None:
    scores = torch.randn(3, 4, 7, 11, generator=gen, dtype=torch.float64) * 2
    allowed = torch.rand(3, 1, 7, 11, generator=gen) < 0.7
    allowed[0, 0, 2] = False  # a row that sees no key
    w = Softpick().weights(scores, allowed)
    torch.testing.assert_close(w, direct(scores, allowed), rtol=1e-13, atol=1e-15)
    assert torch.equal(w[0, :, 2], torch.zeros_like(w[0, :, 2]))
    assert bool((w[scores <= 0] == 0).all())  # rectified: no weight at all on a score <= 0
    assert bool((w.sum(-1) < 1).all())  # not sum-to-one


def test_extreme_logits_stay_finite_and_exact() -> None:
    """exp(1000) overflows the direct formula; the shifted form gives its limit: for scores (1000, 999, -5),
    w = (1, e^-1, 0) / (1 + e^-1) up to terms of e^-999."""
    scores = torch.tensor([[1000.0, 999.0, -5.0], [-1e4, -2e4, 0.5]], dtype=torch.float64)
    allowed = torch.ones(2, 3, dtype=torch.bool)
    w = Softpick().weights(scores, allowed)
    e1 = math.exp(-1)
    torch.testing.assert_close(w[0], torch.tensor([1 / (1 + e1), e1 / (1 + e1), 0.0], dtype=torch.float64))
    torch.testing.assert_close(w[1], direct(scores[1:], allowed[1:])[0])  # small scores: direct is fine
    assert bool(torch.isfinite(w).all())


@pytest.mark.parametrize("span", ["causal", "full", Window(4), Chunked(3)], ids=str)
def test_attention_matches_the_formula_on_both_backends(gen: torch.Generator, span: object) -> None:
    q, k, v = _qkv(gen, lq=13, lk=13)
    allowed = _span_mask(span, 13, 13)
    expected = _direct_attention(q, k, v, allowed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no slow-path note: Softpick has attend()
        for backend in ("reference", "fused"):
            out = attention(q, k, v, normalizer="softpick", span=span, backend=backend)
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)


def _span_mask(span: object, lq: int, lk: int) -> torch.Tensor:
    from attnlab.attention import resolve_span

    return resolve_span(span).mask(lq, lk, torch.device("cpu"))


@pytest.mark.parametrize("backend, span", [("reference", "causal"), ("fused", "causal"),
                                           ("fused", Window(3))], ids=str)
def test_gradcheck(gen: torch.Generator, backend: str, span: object) -> None:
    q, k, v = _qkv(gen, h=2, hk=1, lq=6, lk=6, d=3, grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.autograd.gradcheck(
            lambda q, k, v: attention(q, k, v, normalizer="softpick", span=span, backend=backend), (q, k, v))


def test_gradients_match_the_formula(gen: torch.Generator) -> None:
    q, k, v = _qkv(gen, lq=5, lk=8, grad=True)
    allowed = _span_mask("causal", 5, 8)  # bottom-right: query i sits at key 3 + i
    g = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    expected = torch.autograd.grad((_direct_attention(q, k, v, allowed) * g).sum(), (q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = attention(q, k, v, normalizer="softpick", backend="fused")
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_bad_eps_fails_clearly() -> None:
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        Softpick(eps=0.0)


def test_trains_in_the_gpt() -> None:
    cfg = GPTConfig(vocab_size=32, n_layers=1, d_model=16, n_heads=2, context=16, normalizer="softpick")
    model = GPT(cfg)
    idx = torch.randint(0, 32, (2, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
