"""Gradients: torch.autograd.gradcheck in float64 on small shapes for both backends (q, k, v, the Sinks
logits, ScalableSoftmax's per-head s), and fused gradients == reference gradients for every normalizer.
Adaptive temperature treats beta as a schedule (no gradient through the entropy), checked explicitly."""

from __future__ import annotations

import pytest
import torch
from _attention_cases import normalizers, qkv, spans

from attnlab.attention import ScalableSoftmax, Sinks, Window, adaptive_beta, attention

GRADCHECK = [("softmax1", "causal"), ("sinks", "causal"), ("sinks", "window(3)"),
             ("ssmax-per-head", "causal"), ("softmax", "sinkwindow(2,3)"), ("clipped", "causal"),
             ("softmax1", "mask")]


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize(("norm_name", "span_name"), GRADCHECK)
def test_gradcheck(norm_name: str, span_name: str, backend: str) -> None:
    q, k, v = (x.requires_grad_() for x in qkv(1, 5, 6, kv_heads=2, dim=3))
    span = spans(5, 6)[span_name]
    norm = normalizers()[norm_name]
    params = []
    if isinstance(norm, Sinks):
        params = [norm.logits.clone().requires_grad_()]
    elif isinstance(norm, ScalableSoftmax):
        params = [norm.s.clone().requires_grad_()]

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *p: torch.Tensor) -> torch.Tensor:
        n = norm
        if isinstance(norm, Sinks):
            n = Sinks(p[0])
        elif isinstance(norm, ScalableSoftmax):
            n = ScalableSoftmax(p[0])
        return attention(q, k, v, normalizer=n, span=span, backend=backend)

    # fast_mode checks random projections u^T J v (numerical vs analytical): the same test, far cheaper.
    assert torch.autograd.gradcheck(f, (q, k, v, *params), eps=1e-6, atol=1e-6, fast_mode=True)


def _grads(norm_name: str, span: object, backend: str,
           shape: tuple[int, int, int, int]) -> list[torch.Tensor]:
    batch, q_len, kv_len, kv_heads = shape
    q, k, v = (x.requires_grad_() for x in qkv(batch, q_len, kv_len, kv_heads))
    norm = normalizers()[norm_name]
    leaves = [q, k, v]
    if isinstance(norm, Sinks):
        norm = Sinks(norm.logits.requires_grad_())
        leaves.append(norm.logits)
    elif isinstance(norm, ScalableSoftmax):
        norm = ScalableSoftmax(norm.s.requires_grad_())
        leaves.append(norm.s)
    out = attention(q, k, v, normalizer=norm, span=span, backend=backend)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype))
    return [x.grad for x in leaves]


@pytest.mark.parametrize("span_name", ["causal", "full", "window(3)", "sinkwindow(2,3)", "chunked(4)",
                                       "mask"])
@pytest.mark.parametrize("norm_name", list(normalizers()))
def test_fused_grads_match_reference(norm_name: str, span_name: str) -> None:
    for shape in [(2, 9, 9, 2), (1, 5, 12, 4)]:
        span = spans(shape[1], shape[2])[span_name]
        for a, b in zip(_grads(norm_name, span, "fused", shape), _grads(norm_name, span, "reference", shape)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fully_masked_rows_have_zero_finite_gradients() -> None:
    q, k, v = (x.requires_grad_() for x in qkv(1, 6, 6))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    mask[3] = False
    for norm in ("softmax", "softmax1", "adaptive", "ssmax"):
        for backend in ("fused", "reference"):
            q.grad = k.grad = v.grad = None
            attention(q, k, v, normalizer=norm, span=mask, backend=backend).sum().backward()
            assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
            assert q.grad[:, :, 3].abs().max() == 0


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_adaptive_gradient_treats_beta_as_a_schedule(backend: str) -> None:
    """d out / d q equals that of softmax(beta * scores) with beta computed once and held fixed."""
    q, k, v = qkv(1, 7, 7, scale=0.3)  # high-entropy rows, so beta > 1 somewhere
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        p = torch.softmax((scale * q @ k.transpose(-1, -2)).masked_fill(
            ~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf")), -1)
        beta = adaptive_beta(-(p * p.clamp_min(1e-300).log()).sum(-1, keepdim=True))
    assert (beta > 1).any()
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    attention(q1, k, v, normalizer="adaptive", backend=backend).sum().backward()
    attention(q2 * beta, k, v, normalizer="softmax", backend=backend).sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-9, atol=1e-10)


def test_sink_logit_gradient_flows_through_local_spans() -> None:
    q, k, v = qkv(1, 40, 40)
    for backend in ("fused", "reference"):
        logits = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        attention(q, k, v, normalizer=Sinks(logits), span=Window(7), backend=backend).sum().backward()
        assert logits.grad is not None and logits.grad.abs().min() > 0
