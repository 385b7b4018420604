"""Property tests (hypothesis): what each normalizer's weights must satisfy, the normalizer identities,
the span masks against their definitions, and the fused block plan on random lengths."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import Chunked, Sinks, SinkWindow, Window, attention

FAST = settings(max_examples=15, deadline=None)
lengths = st.integers(1, 12)


def _inputs(seed: int, lq: int, lk: int, d: int = 4, spread: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(spread * torch.randn(1, 2, n, d, generator=g, dtype=torch.float64) for n in (lq, lk, lk))


@FAST
@given(seed=st.integers(0, 10**6), lq=lengths, extra=st.integers(0, 5), spread=st.floats(0.1, 2.0))
def test_softmax_rows_sum_to_one_and_softmax1_rows_below_one(seed: int, lq: int, extra: int,
                                                             spread: float) -> None:
    q, k, v = _inputs(seed, lq, lq + extra, spread=spread)
    _, w = attention(q, k, v, normalizer="softmax", return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
    _, w1 = attention(q, k, v, normalizer="softmax1", return_weights=True)
    # Strictly below one (the missing mass is 1 / (1 + sum_j exp(s_j)), not rounded away at these spreads).
    assert (w1.sum(-1) < 1).all() and (w1 >= 0).all()


@FAST
@given(seed=st.integers(0, 10**6), lq=lengths, extra=st.integers(0, 5), backend=st.sampled_from(["fused",
                                                                                                "reference"]))
def test_softmax1_is_softmax_with_a_zero_key_and_value(seed: int, lq: int, extra: int, backend: str) -> None:
    """The zero key must be visible to every query: put it first, with an explicit mask, since causal
    alignment would otherwise hide it from nobody but shift every query's view by one."""
    q, k, v = _inputs(seed, lq, lq + extra)
    lk = k.shape[2]
    zeros = torch.zeros(1, 2, 1, k.shape[-1], dtype=k.dtype)
    causal = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    mask = torch.cat([torch.ones(lq, 1, dtype=torch.bool), causal], dim=1)
    want = attention(q, torch.cat([zeros, k], 2), torch.cat([zeros, v], 2), span=mask, backend=backend)
    got = attention(q, k, v, normalizer="softmax1", backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@FAST
@given(seed=st.integers(0, 10**6), lq=lengths, extra=st.integers(0, 5),
       span=st.sampled_from(["causal", "full", Window(3), SinkWindow(1, 2), Chunked(3)]))
def test_sinks_limits(seed: int, lq: int, extra: int, span: object) -> None:
    """Sinks(-inf) == softmax and Sinks(zeros) == softmax1, on both backends."""
    q, k, v = _inputs(seed, lq, lq + extra)
    minus_inf = Sinks(torch.full((2,), float("-inf"), dtype=torch.float64))
    for backend in ("fused", "reference"):
        def run(norm: object, backend: str = backend) -> torch.Tensor:
            return attention(q, k, v, normalizer=norm, span=span, backend=backend)

        torch.testing.assert_close(run(minus_inf), run("softmax"))
        torch.testing.assert_close(run(Sinks(torch.zeros(2, dtype=torch.float64))), run("softmax1"))


@settings(max_examples=30, deadline=None)
@given(lq=lengths, extra=st.integers(0, 6), size=st.integers(1, 8), sinks=st.integers(0, 4))
def test_span_masks_match_their_definitions(lq: int, extra: int, size: int, sinks: int) -> None:
    lk = lq + extra
    spans = {
        "window": (Window(size), lambda p, j: p - size < j <= p),
        "sinkwindow": (SinkWindow(sinks, size), lambda p, j: j <= p and (j < sinks or j > p - size)),
        "chunked": (Chunked(size), lambda p, j: j <= p and j // size == p // size),
    }
    for span, rule in spans.values():
        mask = span.mask(lq, lk)
        want = [[rule(lk - lq + i, j) for j in range(lk)] for i in range(lq)]
        assert mask.tolist() == want, span


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), lq=st.integers(1, 300), extra=st.integers(0, 40),
       kind=st.sampled_from(["window", "sinkwindow", "chunked"]), size=st.integers(1, 300),
       sinks=st.integers(0, 5), norm=st.sampled_from(["softmax", "softmax1", "ssmax"]))
def test_fused_block_plan_on_random_lengths(seed: int, lq: int, extra: int, kind: str, size: int, sinks: int,
                                            norm: str) -> None:
    span = {"window": Window(size), "sinkwindow": SinkWindow(sinks, size), "chunked": Chunked(size)}[kind]
    q, k, v = _inputs(seed, lq, lq + extra)
    fused = attention(q, k, v, normalizer=norm, span=span, backend="fused")
    ref = attention(q, k, v, normalizer=norm, span=span, backend="reference")
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
