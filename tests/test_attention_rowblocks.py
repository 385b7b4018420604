"""The dense row-block engine (attnlab/attention/rowblocks.py) and its two rules, clipped softmax and adaptive
temperature, against the reference backend in float64: several blocks (forced small), blocks kept for the
backward and recomputed in it, grouped-query heads, causal / additive-mask / full Problems, rows that see no
key, gradcheck, causal key trimming, what each mode keeps for the backward, and low precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import Adaptive, Clipped, adaptive_beta, attention
from attnlab.attention import rowblocks as rb
from attnlab.attention.adaptive import AdaptiveRule, adaptive_attention, dense_pays
from attnlab.attention.clipped import ClippedRule, clipped_attention
from attnlab.attention.kernels import Problem

pytestmark = pytest.mark.usefixtures("one_thread")

NORMS = {"clipped": Clipped(-0.1, 1.1), "clipped(gamma>0)": Clipped(0.05, 0.9), "adaptive": Adaptive()}


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 rows (6 under a causal mask of 20 rows: at least CAUSAL_BLOCKS), so every test crosses
    block edges."""
    monkeypatch.setattr(rb, "BLOCK_BYTES", 1)
    monkeypatch.setattr(rb, "MIN_ROWS", 4)


def _qkv(gen: torch.Generator, lq: int, lk: int, heads_kv: int, dtype: torch.dtype = torch.float64,
         scale: float = 2.0) -> list[torch.Tensor]:
    q = scale * torch.randn(2, 4, lq, 8, generator=gen, dtype=dtype)
    k = scale * torch.randn(2, heads_kv, lk, 8, generator=gen, dtype=dtype)
    v = torch.randn(2, heads_kv, lk, 8, generator=gen, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v)]


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, **kw: object
         ) -> list[torch.Tensor]:
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = attention(q, k, v, **kw)
    out.backward(grad)
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("norm_name", list(NORMS))
@pytest.mark.parametrize(("lq", "lk", "span"), [(20, 20, "causal"), (20, 20, "full"), (9, 20, "causal"),
                                                (20, 20, "mask")])
@pytest.mark.parametrize("heads_kv", [4, 2])
def test_matches_reference(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator, keep: bool, norm_name: str,
                           lq: int, lk: int, span: object, heads_kv: int) -> None:
    """Output and gradients equal the reference's; (9, 20, causal) is bottom-right aligned, so it reaches
    the engine as an additive mask; the random mask hides every key of two rows."""
    monkeypatch.setattr(rb, "SAVE_BYTES", 2**40 if keep else 0)
    if span == "mask":
        span = torch.rand(lq, lk, generator=gen) < 0.4
        span[0] = span[-1] = False
    q, k, v = _qkv(gen, lq, lk, heads_kv)
    grad = torch.randn(2, 4, lq, 8, generator=gen, dtype=torch.float64)
    norm = NORMS[norm_name]
    got = _run(q, k, v, grad, normalizer=norm, span=span, backend="fused")
    want = _run(q, k, v, grad, normalizer=norm, span=span, backend="reference")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def _problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, causal: bool
             ) -> Problem:
    return Problem(q, k, v, 0.7, bias, causal, torch.ones(()))


RULES = {"clipped": lambda p: clipped_attention(p, -0.1, 1.1),  # the same as NORMS
         "clipped(gamma>0)": lambda p: clipped_attention(p, 0.05, 0.9),
         "adaptive": lambda p: adaptive_attention(p, adaptive_beta)}


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bias"])
def test_gradcheck(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator, keep: bool, rule: str,
                   causal: bool) -> None:
    monkeypatch.setattr(rb, "SAVE_BYTES", 2**40 if keep else 0)
    q, k, v = _qkv(gen, 9, 9, 2, scale=1.0)
    q, k = q.detach()[:1, :, :, :3].requires_grad_(), k.detach()[:1, :, :, :3].requires_grad_()
    v = v.detach()[:1].requires_grad_()
    bias = None
    if not causal:
        allowed = torch.rand(1, 1, 9, 9, generator=gen) < 0.5
        allowed[..., 0] = True
        bias = torch.zeros(1, 1, 9, 9, dtype=torch.float64).masked_fill(~allowed, -math.inf)
    fn = RULES[rule]
    if rule == "adaptive":
        # beta(H) is taken without gradient (as in the paper and the reference), which finite differences
        # would see; a constant beta keeps the function the engine differentiates, sharpening included.
        fn = lambda p: adaptive_attention(p, lambda h: torch.full_like(h, 1.7))  # noqa: E731
    assert torch.autograd.gradcheck(lambda q, k, v: fn(_problem(q, k, v, bias, causal)), (q, k, v),
                                    eps=1e-6, atol=1e-6)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("rule", list(RULES))
def test_rows_that_see_nothing_give_zeros_and_zero_gradients(gen: torch.Generator, rule: str) -> None:
    """Called on a Problem directly (the fused runner unblocks such rows itself): zeros, not NaN."""
    q, k, v = _qkv(gen, 10, 12, 4)
    allowed = torch.rand(2, 1, 10, 12, generator=gen) < 0.5
    allowed[..., 0] = True
    allowed[0, :, 3] = False  # batch 0, row 3 sees nothing
    allowed[1, :, 7:] = False  # batch 1, rows 7-9 see nothing
    bias = torch.zeros(2, 1, 10, 12, dtype=torch.float64).masked_fill(~allowed, -math.inf)
    out = RULES[rule](_problem(q, k, v, bias, False))
    out.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype))
    empty = ~allowed.any(-1)  # (2, 1, 10)
    assert bool((out[empty.expand(2, 4, 10)] == 0).all())
    assert bool(q.grad[empty.expand(2, 4, 10)].eq(0).all())
    for x in (out, q.grad, k.grad, v.grad):
        assert bool(torch.isfinite(x).all())
    # The rows that do see keys are unaffected by the empty ones: the reference on the same mask.
    norm = NORMS[rule]
    ref = attention(q.detach(), k.detach(), v.detach(), normalizer=norm, span=allowed, scale=0.7,
                    backend="reference")
    torch.testing.assert_close(out.detach(), ref, rtol=1e-9, atol=1e-11)


def test_causal_blocks_skip_keys_above_the_diagonal() -> None:
    """Rows [lo, hi) under a top-left causal mask reach keys [0, hi) only: four blocks of 64 rows at 256
    touch 5/8 of the key-row cells."""
    q = torch.randn(1, 2, 256, 8)
    x = rb._Setup(q, q, q, None, True, 1.0)
    assert len(x.blocks) == rb.CAUSAL_BLOCKS == 4
    reached = [x.scores(lo, hi).shape for lo, hi in x.blocks]
    assert [s[-1] for s in reached] == [hi for _, hi in x.blocks]
    cells = sum(s[-2] * s[-1] for s in reached)
    assert cells == 256 * 256 * 5 // 8
    full = rb._Setup(q, q, q, None, False, 1.0)
    assert [full.scores(lo, hi).shape[-1] for lo, hi in full.blocks] == [256] * len(full.blocks)


@pytest.mark.parametrize("rule", ["clipped", "adaptive"])
def test_kept_blocks_within_budget_and_recomputed_beyond(monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """Within SAVE_BYTES the backward gets each block's (rows x keys) tensor; beyond it, only q, k, v."""
    q, k, v = (torch.randn(1, 2, 64, 8, requires_grad=True) for _ in range(3))
    p = _problem(q, k, v, None, True)
    for budget, big in ((2**40, True), (0, False)):
        monkeypatch.setattr(rb, "SAVE_BYTES", budget)
        out = RULES[rule](p)
        largest = max(t.numel() for t in out.grad_fn.saved_tensors if t is not None)
        assert (largest > q.numel()) is big
        assert rb.fits_saved(p, ClippedRule(-0.1, 1.0)) is big


def test_adaptive_uses_the_dense_blocks_only_where_they_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = (torch.randn(1, 2, 32, 8) for _ in range(3))
    assert not dense_pays(_problem(q, k, v, None, True))  # no gradient wanted: two stock-kernel passes
    qg = q.clone().requires_grad_()
    assert dense_pays(_problem(qg, k, v, None, True))
    with torch.no_grad():
        assert not dense_pays(_problem(qg, k, v, None, True))
    monkeypatch.setattr(rb, "SAVE_BYTES", 0)
    assert not dense_pays(_problem(qg, k, v, None, True))  # blocks would be recomputed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adaptive_dense_equals_stock_kernel_path(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator,
                                                 dtype: torch.dtype) -> None:
    """The two fast paths of Adaptive.attend give the same output and gradients."""
    q, k, v = _qkv(gen, 24, 24, 2, dtype=dtype)
    grad = torch.randn(2, 4, 24, 8, generator=gen, dtype=dtype)
    dense = _run(q, k, v, grad, normalizer="adaptive", backend="fused")
    monkeypatch.setattr(rb, "SAVE_BYTES", 0)  # dense_pays is then False
    stock = _run(q, k, v, grad, normalizer="adaptive", backend="fused")
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for a, b in zip(dense, stock, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("norm_name", ["clipped", "adaptive"])
def test_extreme_logits_stay_finite(norm_name: str) -> None:
    q = torch.full((1, 2, 16, 4), 50.0, dtype=torch.float64, requires_grad=True)
    k = torch.linspace(-50, 50, 2 * 16 * 4, dtype=torch.float64).view(1, 2, 16, 4).requires_grad_()
    v = torch.randn(1, 2, 16, 4, dtype=torch.float64, requires_grad=True)
    out = attention(q, k, v, normalizer=NORMS[norm_name], scale=1.0)  # scores up to +-1e4
    out.sum().backward()
    ref = attention(q, k, v, normalizer=NORMS[norm_name], scale=1.0, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)
    for x in (out, q.grad, k.grad, v.grad):
        assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm_name", ["clipped", "adaptive"])
def test_low_precision_training_path(dtype: torch.dtype, norm_name: str) -> None:
    """With gradients wanted (adaptive then takes the dense blocks): output within twice SDPA's error in the
    same dtype (plus test_attention_lowprec.py's slack), gradients finite and in the input dtype."""
    g = torch.Generator().manual_seed(0)
    lo = [torch.randn(1, 4, 64, 32, generator=g).to(dtype).requires_grad_() for _ in range(3)]
    q64, k64, v64 = (x.detach().double() for x in lo)
    norm = NORMS[norm_name]
    ref = attention(q64, k64, v64, normalizer=norm, backend="reference")
    out = attention(*lo, normalizer=norm, backend="fused")
    base = F.scaled_dot_product_attention(*(x.detach() for x in lo), is_causal=True)
    base_ref = F.scaled_dot_product_attention(q64, k64, v64, is_causal=True)
    slack = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max() <= 2 * (base.double() - base_ref).abs().max() + slack
    out.float().sum().backward()
    for x in lo:
        assert x.grad.dtype == dtype and bool(torch.isfinite(x.grad).all())


def test_rule_base_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        rb.RowRule().weights(torch.zeros(1, 1, 1), None)
    assert isinstance(AdaptiveRule(adaptive_beta), rb.RowRule)
