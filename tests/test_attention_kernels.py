"""The kernel-level contract every device path must meet: `fused_pass` returns the output, the row
log-sum-exp and a backward that recomputes from the (out, lse) it is handed. The plain-matrix path (used for
float64 on CUDA and devices without a fused kernel) is checked against the CPU flash kernel here; the CUDA
kernels are checked against the reference in tests/test_attention_cuda.py on a GPU."""

from __future__ import annotations

import importlib

import pytest
import torch
from _attention_cases import normalizers, qkv, spans

from attnlab.attention import Chunked, Clipped, SinkWindow, Window, attention
from attnlab.attention.kernels import _cpu_pass, _math_backward, _math_pass

kernels = importlib.import_module("attnlab.attention.kernels")  # BlockedKV.chunks reads its CHUNK_BYTES
rowblocks = importlib.import_module("attnlab.attention.rowblocks")

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(gen: torch.Generator, heads_kv: int, lq: int, lk: int, masked: bool):
    q = torch.randn(2, 4, lq, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, heads_kv, lk, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, heads_kv, lk, 8, generator=gen, dtype=torch.float64)
    bias = None
    if masked:
        allowed = torch.rand(1, 1, lq, lk, generator=gen) < 0.6
        allowed[..., 0] = True
        bias = torch.zeros(1, 1, lq, lk, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    return q, k, v, bias


@pytest.mark.parametrize("heads_kv", [4, 2, 1])
@pytest.mark.parametrize(("lq", "lk", "masked", "causal"),
                         [(7, 7, False, True), (5, 9, True, False), (6, 6, False, False)])
def test_math_pass_matches_cpu_kernel(gen: torch.Generator, heads_kv: int, lq: int, lk: int, masked: bool,
                                      causal: bool) -> None:
    q, k, v, bias = _inputs(gen, heads_kv, lq, lk, masked)
    ref_out, ref_lse, ref_bwd = _cpu_pass(q, k, v, bias, causal, 0.3)
    out, lse, bwd = _math_pass(q, k, v, bias, causal, 0.3)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    # The backward is handed an out and lse that are not the softmax ones (as the sink identity does).
    grad = torch.randn_like(out)
    y, total = 0.7 * out, lse + torch.rand(lse.shape, generator=gen, dtype=lse.dtype)
    want = ref_bwd(grad, y, total)
    recomputed = _math_backward(q, k, v, bias, causal, 0.3)  # what CUDA's masked half-precision path uses
    for got, again, ref in zip(bwd(grad, y, total), recomputed(grad, y, total), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(again, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("norm_name", ["softmax", "sinks", "softmax1", "ssmax-per-head", "adaptive"])
@pytest.mark.parametrize("span", [Window(37), Chunked(24)], ids=repr)
def test_blocked_interior_in_chunks_matches_reference(monkeypatch: pytest.MonkeyPatch, norm_name: str,
                                                       span: object) -> None:
    """Interior blocks run one block per chunk (the chunk size forced down), batch 2, grouped-query heads,
    fewer queries than keys: outputs and every gradient (q, k, v, the normalizer's parameters) equal the
    reference in float64, so the backward's fold of overlapping key blocks is exact."""
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 1)
    results = {}
    for backend in ("fused", "reference"):
        q, k, v = (x.requires_grad_() for x in qkv(2, 250, 300, kv_heads=2))
        norm = normalizers()[norm_name]
        params = [p.requires_grad_() for p in (getattr(norm, "logits", None), getattr(norm, "s", None))
                  if isinstance(p, torch.Tensor) and p.dim() == 1]
        out = attention(q, k, v, normalizer=norm, span=span, backend=backend)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype))
        results[backend] = [out.detach(), q.grad, k.grad, v.grad] + [p.grad for p in params]
    for got, want in zip(results["fused"], results["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("span", [Window(260), SinkWindow(4, 256)], ids=repr)
@pytest.mark.parametrize("lengths", [(600, 600), (300, 650)], ids=["self", "cache"])
def test_wide_windows_forward_only_and_with_backward(span: object, lengths: tuple[int, int]) -> None:
    """Windows >= 256 use other block sizes with and without a backward to follow: both equal the
    reference (outputs, and gradients where asked)."""
    q, k, v = qkv(1, *lengths, kv_heads=2)
    ref = attention(q, k, v, normalizer="softmax1", span=span, backend="reference")
    torch.testing.assert_close(attention(q, k, v, normalizer="softmax1", span=span, backend="fused"), ref,
                               rtol=1e-10, atol=1e-10)
    grads = {}
    for backend in ("fused", "reference"):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        attention(*leaves, normalizer="softmax1", span=span, backend=backend).pow(2).sum().backward()
        grads[backend] = [x.grad for x in leaves]
    for got, want in zip(grads["fused"], grads["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("span_name", ["causal", "full", "mask", "window(3)", "chunked(4)"])
@pytest.mark.parametrize("lengths", [(70, 70), (40, 90)], ids=["self", "cache"])
def test_clipped_row_blocks_match_reference(monkeypatch: pytest.MonkeyPatch, span_name: str,
                                            lengths: tuple[int, int]) -> None:
    """Clipped on the row-block engine with 16-row blocks (forced), local spans, grouped-query heads,
    batch 2: output and gradients equal the reference's (tests/test_attention_rowblocks.py covers the
    engine itself)."""
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1)
    monkeypatch.setattr(rowblocks, "MIN_ROWS", 16)
    results = {}
    for backend in ("fused", "reference"):
        q, k, v = (x.requires_grad_() for x in qkv(2, *lengths, kv_heads=2, scale=2.0))
        span = spans(*lengths)[span_name]
        out = attention(q, k, v, normalizer=Clipped(-0.1, 1.05), span=span, backend=backend)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype))
        results[backend] = [out.detach(), q.grad, k.grad, v.grad]
    for got, want in zip(results["fused"], results["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
