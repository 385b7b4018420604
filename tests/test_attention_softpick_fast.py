"""Softpick's fast path (SoftpickRule on rowblocks.py, in softpick_rows.py) against its reference `weights`
in float64: the written-out dS against autograd of the reference (kinks at a == 0 included), gradcheck
through `attend` on every span kind with grouped-query heads, blocks kept and recomputed, extreme scores,
rows that see no key, eps, and that the shared test matrix really runs this path, with no slow-path
warning."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _attention_cases import qkv, spans

from attnlab.attention import Chunked, SinkWindow, Window, attention
from attnlab.attention import base as attention_base
from attnlab.attention import rowblocks as rb
from attnlab.attention.kernels import Problem
from attnlab.attention.softpick_rows import SoftpickRule, softpick_attention
from attnlab.attention.variants.softpick import Softpick

pytestmark = pytest.mark.usefixtures("one_thread")

SPANS = {"causal": "causal", "full": "full", "window(3)": Window(3), "sinkwindow(1,3)": SinkWindow(1, 3),
         "chunked(4)": Chunked(4), "mask": "mask"}


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 rows, so every call crosses block edges."""
    monkeypatch.setattr(rb, "BLOCK_BYTES", 1)
    monkeypatch.setattr(rb, "MIN_ROWS", 4)


def _span(name: str, lq: int, lk: int, gen: torch.Generator) -> object:
    if name != "mask":
        return SPANS[name]
    mask = torch.rand(lq, lk, generator=gen) < 0.5
    mask[1] = False  # a query that sees no key
    return mask


def _rule_scores(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Scores as rowblocks hands them to a rule: hidden keys at the most negative finite value."""
    return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)


@pytest.mark.parametrize("kinks", [False, True], ids=["random", "kinks"])
def test_grad_scores_is_autograd_of_the_reference(gen: torch.Generator, kinks: bool) -> None:
    """The derivation in softpick_rows.py: W and dS from the rule equal the reference `weights` and its
    autograd gradient. With kinks, some scores are exactly 0 in rows whose max is <= 0 (a == 0 exactly, where
    relu and |.| have kinks): the rule takes torch's subgradients there, so the two still agree."""
    scores = torch.randn(6, 5, 9, generator=gen, dtype=torch.float64) * 3
    allowed = torch.rand(6, 5, 9, generator=gen) < 0.7
    allowed[0, 2] = False
    if kinks:
        scores[1:3] = -scores[1:3].abs()
        scores[1:3, :, ::3] = 0.0
    g = torch.randn(6, 5, 9, generator=gen, dtype=torch.float64)
    s = scores.clone().requires_grad_()
    want_w = Softpick().weights(s, allowed)
    (want_ds,) = torch.autograd.grad((want_w * g).sum(), s)
    rule = SoftpickRule(1e-8)
    w, saved = rule.weights(_rule_scores(scores, allowed), ~allowed)
    torch.testing.assert_close(w, want_w.detach(), rtol=1e-14, atol=0)
    assert torch.equal(rule.saved_weights(saved, ~allowed), w)  # the backward's W is the forward's bits
    ds = rule.grad_scores(g.clone(), saved)
    torch.testing.assert_close(ds, want_ds, rtol=1e-13, atol=1e-16)
    if kinks:
        at_kink = (scores == 0) & allowed & (scores.masked_fill(~allowed, -1).amax(-1, keepdim=True) <= 0)
        assert bool(at_kink.any()) and bool((ds[at_kink] == 0).all()) and bool((want_ds[at_kink] == 0).all())
    assert bool((ds[~allowed] == 0).all())


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, **kw: object
         ) -> list[torch.Tensor]:
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = attention(q, k, v, normalizer="softpick", **kw)
    out.backward(grad)
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("span_name", list(SPANS))
@pytest.mark.parametrize(("lq", "lk", "heads_kv"), [(13, 13, 4), (13, 13, 2), (6, 13, 1)])
def test_fused_equals_reference_with_gradients(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator,
                                               keep: bool, span_name: str, lq: int, lk: int,
                                               heads_kv: int) -> None:
    monkeypatch.setattr(rb, "SAVE_BYTES", 2**40 if keep else 0)
    q, k, v = qkv(2, lq, lk, kv_heads=heads_kv, seed=3, scale=1.5)
    span = _span(span_name, lq, lk, gen)
    grad = torch.randn(2, 4, lq, 8, generator=gen, dtype=torch.float64)
    got = _run(q, k, v, grad, span=span, backend="fused")
    want = _run(q, k, v, grad, span=span, backend="reference")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("span_name", list(SPANS))
@pytest.mark.parametrize("heads_kv", [2, 1])
def test_gradcheck_through_attend(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator, keep: bool,
                                  span_name: str, heads_kv: int) -> None:
    monkeypatch.setattr(rb, "SAVE_BYTES", 2**40 if keep else 0)
    q, k, v = qkv(1, 9, 9, kv_heads=heads_kv, dim=3, seed=4)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    span = _span(span_name, 9, 9, gen)
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, normalizer="softpick", span=span, backend="fused"), (q, k, v),
        eps=1e-6, atol=1e-6)


def _problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> Problem:
    bias = None if allowed is None else torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed,
                                                                                             -math.inf)
    return Problem(q, k, v, 1.0, bias, allowed is None, torch.ones(()))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
               eps: float = 1e-8) -> torch.Tensor:
    if allowed is None:
        allowed = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
    return Softpick(eps).weights(q @ k.transpose(-1, -2), allowed) @ v


@pytest.mark.parametrize("allowed", [None, "mask"], ids=["causal", "mask"])
@pytest.mark.parametrize("size", [30.0, 1e3], ids=["big", "huge"])
def test_very_large_scores_are_finite_and_exact(gen: torch.Generator, allowed: str | None,
                                                size: float) -> None:
    """Scores of order size^2 (up to ~1e6): exp(s) overflows without the shift; the row blocks (called on
    the Problem directly, scale 1) equal the reference, and the gradients are finite."""
    q = (torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64) * size).requires_grad_()
    k = (torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64) * size).requires_grad_()
    v = torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64).requires_grad_()
    mask = None
    if allowed == "mask":
        mask = torch.rand(1, 1, 7, 7, generator=gen) < 0.6
        mask[..., 0] = True
    out = softpick_attention(_problem(q, k, v, mask), 1e-8)
    assert float((q.detach() @ k.detach().transpose(-1, -2)).max()) > 800  # exp would overflow in float64
    torch.testing.assert_close(out, _reference(q, k, v, mask), rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    assert all(bool(torch.isfinite(x.grad).all()) for x in (q, k, v))


def test_very_negative_scores_give_zero_weights_and_zero_score_gradients(gen: torch.Generator) -> None:
    """Every score <= -50 (keys opposite the queries): every weight is exactly 0, so the output, dQ and dK
    are 0 (dS = e / D * sign(a) * sum g w, and sum g w = 0), and so is dV."""
    q = torch.randn(1, 2, 6, 4, generator=gen, dtype=torch.float64).abs().add_(5.0).requires_grad_()
    k = (-q.detach()).requires_grad_()
    v = torch.randn(1, 2, 6, 4, generator=gen, dtype=torch.float64).requires_grad_()
    out = softpick_attention(_problem(q, k, v, torch.ones(1, 1, 6, 6, dtype=torch.bool)), 1e-8)
    assert bool((out == 0).all())
    out.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype))
    assert all(bool((x.grad == 0).all()) for x in (q, k, v))


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_a_query_that_sees_no_key(gen: torch.Generator, backend: str) -> None:
    q, k, v = (x.requires_grad_() for x in qkv(1, 6, 6, seed=5))
    mask = torch.rand(6, 6, generator=gen) < 0.5
    mask[2] = False
    mask[3] = True
    out = attention(q, k, v, normalizer="softpick", span=mask, backend=backend)
    out.backward(torch.ones_like(out))
    assert bool((out[:, :, 2] == 0).all()) and bool((q.grad[:, :, 2] == 0).all())
    assert all(bool(torch.isfinite(x.grad).all()) for x in (q, k, v))


@pytest.mark.parametrize("eps", [1e-8, 0.5, 20.0])
def test_eps_joins_the_denominator_unshifted(gen: torch.Generator, eps: float) -> None:
    """eps enters as eps exp(-m) in the shifted form: the same number as the paper's + eps. Checked against
    the formula written out directly (moderate scores, so exp(s) - 1 is exact enough unshifted) and, at
    large scores (shift m ~ 40), against the reference."""
    q, k, v = (x.requires_grad_() for x in qkv(1, 8, 8, seed=6))
    s = q.detach() @ k.detach().transpose(-1, -2)
    a = torch.exp(s) - 1
    allowed = torch.ones(8, 8, dtype=torch.bool).tril()
    direct = torch.where(allowed, a.clamp_min(0), 0) / (torch.where(allowed, a.abs(), 0).sum(-1, True) + eps)
    out = softpick_attention(_problem(q, k, v, None), eps).detach()
    torch.testing.assert_close(out, direct @ v.detach(), rtol=1e-12, atol=1e-14)
    if eps > 1:  # large against these rows' sums: the output moves, so eps is really applied
        assert not torch.allclose(out, softpick_attention(_problem(q, k, v, None), 1e-8).detach())
    big = [(x.detach() * 4).requires_grad_() for x in (q, k)]
    out = softpick_attention(_problem(*big, v, None), eps)
    torch.testing.assert_close(out, _reference(*big, v, None, eps), rtol=1e-12, atol=1e-14)


def test_the_shared_matrix_runs_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every span of tests/_attention_cases.py, on the fused backend, reaches SoftpickRule and never the
    reference `weights` or the slow-path warning (so test_attention_exact.py tests this path)."""
    calls = []
    weights = SoftpickRule.weights

    def spy(self: SoftpickRule, s: torch.Tensor, masked: torch.Tensor | None) -> object:
        calls.append(s.shape)
        return weights(self, s, masked)

    def refuse(*args: object) -> None:
        raise AssertionError("softpick ran its reference code on the fused backend")

    monkeypatch.setattr(SoftpickRule, "weights", spy)
    monkeypatch.setattr(Softpick, "weights", refuse)
    monkeypatch.setattr(attention_base, "reference_attend", refuse)
    q, k, v = qkv(2, 11, 11, kv_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, span in spans(11, 11).items():
            before = len(calls)
            attention(q, k, v, normalizer="softpick", span=span, backend="fused")
            assert len(calls) > before, name
    assert Softpick.has_fast_path()
