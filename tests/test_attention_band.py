"""The compiled window kernel (attnlab/attention/band.py, csrc/band.cpp) against the reference backend in
float64: random shapes, grouped-query heads, fewer queries than keys, windows of 1 and wider than the
sequence, every normalizer it serves, gradcheck (sink logits included), +-1e4 logits, float32, and that the
fused backend routes plain windows to it and falls back to the block path when it is unavailable."""

from __future__ import annotations

import shutil

import pytest
import torch

from attnlab.attention import ScalableSoftmax, Sinks, Softmax1, Window, attention, fused
from attnlab.attention import band as band_mod
from attnlab.attention.band import band_attention

pytestmark = pytest.mark.usefixtures("one_thread")

HAVE_CXX = shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture(autouse=True)
def _kernel() -> None:
    if not HAVE_CXX:
        pytest.skip("no C++ compiler: the fused backend uses its block path (tested elsewhere)")
    assert band_mod.available(), band_mod.why_unavailable()


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
               sink: torch.Tensor | float | None = None) -> torch.Tensor:
    """The reference backend (plain masked softmax; a sink is one extra key of value 0)."""
    norm = "softmax" if sink is None else Sinks(sink)
    return attention(q, k, v, normalizer=norm, span=Window(window), scale=scale, backend="reference")


def _qkv(gen: torch.Generator, b: int, h: int, hk: int, lq: int, lk: int, d: int,
         dtype: torch.dtype = torch.float64, scale: float = 1.0) -> list[torch.Tensor]:
    q = scale * torch.randn(b, h, lq, d, generator=gen, dtype=dtype)
    k = scale * torch.randn(b, hk, lk, d, generator=gen, dtype=dtype)
    v = torch.randn(b, hk, lk, d, generator=gen, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v)]


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, inputs, grad))


SHAPES = [  # b, h, hk, lq, lk, d, window
    (2, 4, 2, 37, 37, 8, 5),
    (1, 2, 1, 70, 100, 16, 33),  # fewer queries than keys: bottom-right aligned
    (1, 3, 3, 130, 130, 4, 64),  # several 64-row blocks, window = one block
    (2, 2, 1, 200, 200, 8, 300),  # window wider than the sequence
    (1, 1, 1, 1, 9, 8, 3),  # one decoding query
    (1, 2, 2, 65, 65, 8, 1),  # window 1: each query sees itself only
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("with_sink", [False, True], ids=["softmax", "sink"])
def test_matches_reference_float64(gen: torch.Generator, shape: tuple[int, ...], with_sink: bool) -> None:
    b, h, hk, lq, lk, d, window = shape
    q, k, v = _qkv(gen, b, h, hk, lq, lk, d)
    sink = torch.randn(h, generator=gen, dtype=torch.float64).requires_grad_() if with_sink else None
    inputs = [q, k, v] + ([sink] if with_sink else [])
    out, ref = band_attention(q, k, v, window, 0.3, sink), _reference(q, k, v, window, 0.3, sink)
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(_grads(out, inputs, grad), _grads(ref, inputs, grad), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)


def test_random_shapes(gen: torch.Generator) -> None:
    """Twenty random problems, with and without a constant float sink (softmax1 is sink 0)."""
    for trial in range(20):
        lk = int(torch.randint(1, 160, (1,), generator=gen))
        lq = int(torch.randint(1, lk + 1, (1,), generator=gen))
        hk = int(torch.randint(1, 3, (1,), generator=gen))
        h = hk * int(torch.randint(1, 3, (1,), generator=gen))
        window = int(torch.randint(1, 2 * lk + 1, (1,), generator=gen))
        q, k, v = _qkv(gen, 1, h, hk, lq, lk, 8, scale=2.0)
        sink = 0.0 if trial % 2 else None
        out = band_attention(q, k, v, window, 0.35, sink)
        ref = _reference(q, k, v, window, 0.35, sink)
        grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12, msg=f"trial {trial}")
        for a, r in zip(_grads(out, [q, k, v], grad), _grads(ref, [q, k, v], grad), strict=True):
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11, msg=f"trial {trial}")


def test_gradcheck_with_sink_logits(gen: torch.Generator) -> None:
    q, k, v = _qkv(gen, 1, 2, 1, 20, 24, 4)
    sink = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, s: band_attention(q, k, v, 7, 0.5, s), (q, k, v, sink))


def test_extreme_logits_stay_finite(gen: torch.Generator) -> None:
    """Scores of +-1e4: one key takes all the weight, nothing overflows, gradients stay finite."""
    q, k, v = _qkv(gen, 1, 2, 2, 50, 50, 4)
    with torch.no_grad():
        q.mul_(100.0)
        k.mul_(100.0)
    for dtype in (torch.float64, torch.float32):
        qd, kd, vd = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
        out = band_attention(qd, kd, vd, 9, 1.0, 0.0)
        out.sum().backward()
        assert all(bool(torch.isfinite(t).all()) for t in (out, qd.grad, kd.grad, vd.grad))
        ref = _reference(qd.double(), kd.double(), vd.double(), 9, 1.0, 0.0)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_float32_within_tolerance(gen: torch.Generator) -> None:
    q, k, v = _qkv(gen, 2, 4, 2, 300, 300, 32)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    out = band_attention(q32, k32, v32, 100, 32 ** -0.5, None)
    ref = _reference(q, k, v, 100, 32 ** -0.5)
    grad = torch.randn(out.shape, generator=gen)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)
    for a, r in zip(_grads(out, [q32, k32, v32], grad), _grads(ref, [q, k, v], grad.double()), strict=True):
        torch.testing.assert_close(a.double(), r, rtol=0, atol=2e-5)


NORMALIZERS = {"softmax": "softmax", "softmax1": "softmax1", "sinks": None, "ssmax": ScalableSoftmax(0.4)}


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_fused_backend_routes_windows_here(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator,
                                           name: str) -> None:
    """attention(..., span=Window) on the fused backend calls the kernel, and equals the reference backend
    (outputs and gradients, learned sink logits included)."""
    calls = []
    real = band_mod._call
    monkeypatch.setattr(band_mod, "_call", lambda *a, **kw: (calls.append(a[0]), real(*a, **kw))[1])
    logits = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    norm = NORMALIZERS[name] if name != "sinks" else Sinks(logits)
    q, k, v = _qkv(gen, 2, 4, 2, 40, 90, 8)
    inputs = [q, k, v] + ([logits] if name == "sinks" else [])
    out = attention(q, k, v, normalizer=norm, span=Window(17), backend="fused")
    ref = attention(q, k, v, normalizer=norm, span=Window(17), backend="reference")
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(_grads(out, inputs, grad), _grads(ref, inputs, grad), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)
    assert calls.count("band_forward") == 1 and calls.count("band_backward") == 1


def test_other_spans_and_normalizers_keep_the_block_path(monkeypatch: pytest.MonkeyPatch,
                                                         gen: torch.Generator) -> None:
    """Half precision, adaptive / clipped, and sink windows are not the kernel's: they never reach it."""
    monkeypatch.setattr(band_mod, "_call", lambda *a, **kw: pytest.fail("the band kernel was called"))
    q, k, v = _qkv(gen, 1, 2, 2, 30, 30, 8)
    with torch.no_grad():
        attention(q, k, v, normalizer="adaptive", span=Window(8), backend="fused")
        attention(q, k, v, normalizer="clipped", span=Window(8), backend="fused")
        attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), span=Window(8), backend="fused")
        from attnlab.attention import SinkWindow

        attention(q, k, v, span=SinkWindow(2, 8), backend="fused")


def test_falls_back_when_unavailable(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    """Without the kernel (no compiler, or ATTNLAB_BAND=0) windows run on the block path, same result."""
    q, k, v = _qkv(gen, 1, 2, 1, 70, 70, 8)
    with_kernel = attention(q, k, v, normalizer="softmax1", span=Window(20), backend="fused")
    monkeypatch.setattr(band_mod, "_state", {"lib": None, "why": "test"})
    assert not fused._band_serves(q, k, v, Softmax1(), Window(20))
    without = attention(q, k, v, normalizer="softmax1", span=Window(20), backend="fused")
    torch.testing.assert_close(with_kernel, without, rtol=1e-10, atol=1e-12)


def test_build_is_cached(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The shared library is built once per source, flags, compiler and CPU, and reused."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    first = band_mod._build()
    stamp = first.stat().st_mtime_ns
    assert band_mod._build() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary files left behind


def test_several_workers_match_one(gen: torch.Generator) -> None:
    """With two workers, tasks (query heads forward, kv heads backward) run concurrently: same numbers as
    one worker, bit for bit (each task owns its outputs, so there is no race and no reordering)."""
    q, k, v = _qkv(gen, 2, 4, 2, 150, 150, 8)
    grad = torch.randn(2, 4, 150, 8, generator=gen, dtype=torch.float64)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = band_attention(q, k, v, 40, 0.3, 0.5)
            results.append([out, *_grads(out, [q, k, v], grad)])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
