"""Hostile inputs to `attnlab.attention`: bad scales and head sizes fail clearly, and NaN or inf in keys or
values a query may not see never reach that query (masks select, they do not add or multiply by zero).

What is guaranteed (docs/attention.md, attnlab/attention/nonfinite.py): a query whose span hides every
non-finite key and value gets exactly the output (and gradients) it would get with finite ones there; a
query that may see a non-finite key gets a NaN row, and a non-finite value entry v_jd makes column d NaN
for every query that may see key j, on both backends.
"""

from __future__ import annotations

import math

import _attention_cases as cases
import pytest
import torch

from attnlab.attention import Chunked, Clipped, Sinks, SinkWindow, Window, attention, resolve_span
from attnlab.attention.clipped import clipped_attention
from attnlab.attention.kernels import Problem

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend

HEADS, KV_HEADS, DIM = 4, 2, 8
LENGTH = 70  # long enough for the window path's interior (shared) blocks and the chunked strided views
POISONED = (40, LENGTH - 1)  # a key in the middle and the last (future for every other query)
COL = 3  # the entry of the poisoned key or value


def _normalizers() -> dict[str, object]:
    return {
        "softmax": "softmax",
        "softmax1": "softmax1",
        "sinks": Sinks(torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)),
        "clipped": Clipped(-0.03, 1.0),
        "clipped(+gamma)": Clipped(0.01, 1.0),  # gamma > 0: masked keys are zeroed by the mask, not the clip
        "adaptive": "adaptive",
        "ssmax": "ssmax",
    }


SPANS = {"causal": "causal", "window(4)": Window(4), "sinkwindow(1,4)": SinkWindow(1, 4),
         "chunked(4)": Chunked(4)}


def _qkv(q_len: int = LENGTH, kv_len: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, HEADS, q_len, DIM, generator=g, dtype=torch.float64)
    k = torch.randn(2, KV_HEADS, kv_len, DIM, generator=g, dtype=torch.float64)
    v = torch.randn(2, KV_HEADS, kv_len, DIM, generator=g, dtype=torch.float64)
    return q, k, v


def _poison(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    for j in POISONED:
        x[:, :, j, COL] = value
    return x


def _sees_poison(span: object, q_len: int, kv_len: int) -> torch.Tensor:
    """(q_len,) bool: which queries may see a poisoned key."""
    return resolve_span(span).mask(q_len, kv_len)[:, list(POISONED)].any(-1)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("span_name", list(SPANS))
@pytest.mark.parametrize("norm_name", list(_normalizers()))
def test_hidden_nonfinite_keys_and_values_do_not_leak(norm_name: str, span_name: str, backend: str) -> None:
    span = SPANS[span_name]
    q, k, v = _qkv()
    clean = attention(q, k, v, normalizer=_normalizers()[norm_name], span=span, backend=backend)
    sees = _sees_poison(span, LENGTH, LENGTH)
    assert 0 < int(sees.sum()) < LENGTH - 10  # the case hides the poison from most queries
    for bad in (math.nan, math.inf, -math.inf):
        for where in ("k", "v"):
            kb, vb = (_poison(k, bad), v) if where == "k" else (k, _poison(v, bad))
            out = attention(q, kb, vb, normalizer=_normalizers()[norm_name], span=span, backend=backend)
            hidden = out[:, :, ~sees]
            assert torch.isfinite(hidden).all(), f"{bad} in {where} leaked into a query that may not see it"
            torch.testing.assert_close(hidden, clean[:, :, ~sees], rtol=0, atol=1e-12)
            if math.isnan(bad):  # a query that may see a NaN is not silently given a number
                seen = out[:, :, sees]
                assert torch.isnan(seen if where == "k" else seen[..., COL]).all()
                if where == "v":
                    other = [c for c in range(DIM) if c != COL]
                    torch.testing.assert_close(seen[..., other], clean[:, :, sees][..., other],
                                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("norm_name", ["softmax", "softmax1", "clipped", "adaptive"])
def test_hidden_nan_keeps_gradients_of_other_queries(norm_name: str, backend: str) -> None:
    q, k, v = _qkv()

    def grads(k0: torch.Tensor, v0: torch.Tensor) -> list[torch.Tensor]:
        leaves = [x.clone().requires_grad_() for x in (q, k0, v0)]
        out = attention(*leaves, normalizer=_normalizers()[norm_name], span="causal", backend=backend)
        out[:, :, :POISONED[0]].square().sum().backward()  # the queries before the first poisoned key
        return [x.grad for x in leaves]

    clean = grads(k, v)
    for got, want in zip(grads(_poison(k, math.nan), _poison(v, math.nan)), clean, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_decoding_with_a_mask_and_fewer_queries_than_keys() -> None:
    # A KV cache whose slots past the fill are garbage: the queries (bottom-right aligned) may not see them.
    q, k, v = _qkv(q_len=5, kv_len=LENGTH)
    mask = torch.ones(5, LENGTH, dtype=torch.bool)
    mask[:, -10:] = False  # the unfilled tail
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, -10:], v_bad[:, :, -10:] = math.nan, math.inf
    for backend in ("reference", "fused"):
        clean = attention(q, k, v, span=mask, normalizer="softmax1", backend=backend)
        out = attention(q, k_bad, v_bad, span=mask, normalizer="softmax1", backend=backend)
        torch.testing.assert_close(out, clean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_row_blocks_select_masked_scores(causal: bool) -> None:
    # The dense row-block kernel (clipped, and adaptive's training path) below the entry point: its own
    # masking must select, so a NaN key it is handed never reaches a query that may not see it.
    q, k, v = (x[:1, :2, :12] for x in _qkv())
    k_bad = k.clone()
    k_bad[:, :, 11, COL] = math.nan  # the last key: every query but the last may not see it
    bias = None
    if not causal:
        allowed = torch.ones(12, 12, dtype=torch.bool).tril()
        bias = torch.zeros(1, 1, 12, 12, dtype=q.dtype).masked_fill(~allowed, -math.inf)

    def run(keys: torch.Tensor) -> torch.Tensor:
        return clipped_attention(Problem(q, keys, v, 0.3, bias, causal, torch.ones(())), 0.01, 1.0)

    torch.testing.assert_close(run(k_bad)[:, :, :11], run(k)[:, :, :11], rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [0.0, -0.125, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_scale_that_is_not_finite_and_positive_fails_clearly(scale: float, backend: str) -> None:
    q, k, v = _qkv(8, 8)
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got"):
        attention(q, k, v, scale=scale, backend=backend)
    with pytest.raises(TypeError, match=r"scale must be a number"):
        attention(q, k, v, scale="0.5", backend=backend)  # type: ignore[arg-type]
    assert torch.isfinite(attention(q, k, v, scale=1e-3, backend=backend)).all()  # small is fine


def test_head_dim_zero_fails_clearly() -> None:
    q = torch.randn(1, 2, 4, 0)
    with pytest.raises(ValueError, match=r"head_dim is 0"):
        attention(q, q, torch.randn(1, 2, 4, 3))
    with pytest.raises(ValueError, match=r"head_dim is 0"):
        attention(q, q, torch.randn(1, 2, 4, 3), scale=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("norm_name", list(cases.normalizers()))
def test_fused_gives_nan_rows_where_the_reference_does(norm_name: str, where: str,
                                                      dtype: torch.dtype) -> None:
    # Every normalizer x span, one NaN or inf entry in q, k or v: the fused paths (dense, blocked, the
    # compiled band kernel for plain windows in float32/64) mark exactly the outputs the reference marks.
    # The CPU flash kernel on its own gives a NaN query a finite row (0.0 under causal).
    length = 70  # long enough for the blocked paths' interior groups
    for span_name, span in cases.spans(length, length).items():
        for bad in (math.nan, math.inf, -math.inf):
            q, k, v = (x.to(dtype) for x in cases.qkv(2, length, length, kv_heads=2))
            x = {"q": q, "k": k, "v": v}[where]
            x[:, :, length // 2, COL] = bad
            norm = cases.normalizers(dtype)[norm_name]
            ref = attention(q, k, v, normalizer=norm, span=span, backend="reference")
            out = attention(q, k, v, normalizer=norm, span=span, backend="fused")
            marked = ~torch.isfinite(ref)
            if where == "q" or (where == "k" and span_name != "mask"):
                assert marked.any(), f"{span_name}: the case must reach some query"
            assert torch.equal(~torch.isfinite(out), marked), f"{span_name}, {bad} in {where}"
            tol = 1e-5 if dtype == torch.float32 else 1e-10
            torch.testing.assert_close(out[~marked], ref[~marked], rtol=tol, atol=tol)


def test_a_nan_query_row_keeps_the_other_rows_and_their_gradients() -> None:
    q, k, v = _qkv()
    q_bad = q.clone()
    q_bad[:, :, 10, COL] = math.nan
    leaves = [x.clone().requires_grad_() for x in (q_bad, k, v)]
    out = attention(*leaves, normalizer="softmax1", span="causal", backend="fused")
    assert torch.isnan(out[:, :, 10]).all()
    others = [i for i in range(LENGTH) if i != 10]
    clean = attention(q, k, v, normalizer="softmax1", span="causal", backend="fused")
    torch.testing.assert_close(out[:, :, others], clean[:, :, others], rtol=0, atol=1e-12)
    out[:, :, others].sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_meta_tensors_fail_clearly(backend: str) -> None:
    q = torch.empty(1, 2, 4, 8, device="meta")
    with pytest.raises(ValueError, match=r"are on the meta device .* materialise the model"):
        attention(q, q, q, backend=backend)
    with pytest.raises(ValueError, match=r"must be on one device"):  # one of them on meta: the device check
        attention(torch.randn(1, 2, 4, 8), q, torch.randn(1, 2, 4, 8), backend=backend)


@pytest.mark.parametrize("norm_name", list(cases.normalizers()))
def test_a_nan_decoding_query_gets_a_nan_row(norm_name: str) -> None:
    # One query against a cache (the decoding path that skips the K check): its own NaN still shows.
    q, k, v = (x.float() for x in cases.qkv(1, 1, 40, kv_heads=2))
    q[:, 1, 0, 2] = math.nan
    for span in ("causal", "full", Window(64)):
        norm = cases.normalizers(torch.float32)[norm_name]
        out = attention(q, k, v, normalizer=norm, span=span, backend="fused")
        ref = attention(q, k, v, normalizer=norm, span=span, backend="reference")
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out[:, 1]).all()
        assert torch.isfinite(out[:, [0, 2, 3]]).all()
