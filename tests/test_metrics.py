"""Unit tier: the diagnostics' metrics are plain functions of tensors; invariants, reference twins, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.diagnose import attention_stats as A
from attnlab.diagnose import outliers as O
from attnlab.diagnose import residual as R
from attnlab.diagnose import uniformity as U
from attnlab.diagnose.metrics import cache_metrics

# -- helpers ---------------------------------------------------------------------------------------------


def _rand(t: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _causal_softmax(h: int, q: int, k: int, seed: int, temp: float = 1.0) -> torch.Tensor:
    s = torch.randn(h, q, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * temp
    allowed = torch.ones(q, k, dtype=torch.bool).tril(diagonal=k - q)
    return torch.softmax(s.masked_fill(~allowed, -math.inf), dim=-1)


shapes = st.tuples(st.integers(2, 24), st.integers(1, 20), st.integers(0, 10_000))

# -- uniformity -------------------------------------------------------------------------------------------


def _composite_reference(x: torch.Tensor) -> float:
    t, d = x.shape
    col = max(sum(abs(float(x[i, j])) for i in range(t)) for j in range(d))
    row = max(sum(abs(float(x[i, j])) for j in range(d)) for i in range(t))
    return math.sqrt(col * row)


def test_composite_norm_matches_loops():
    x = _rand(5, 3, 0)
    assert float(U.composite_norm(x)) == pytest.approx(_composite_reference(x), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(shapes, st.floats(0.01, 100.0))
def test_uniformity_ratio_ranges(shape, scale):
    t, d, seed = shape
    x = _rand(t, d, seed, scale)
    x[0] *= 1 + seed % 50  # a dominant first token, as with massive activations
    r_mean, r_best = U.uniformity_ratio(x), U.uniformity_ratio(x, center="best")
    assert 0.0 <= r_mean <= 2 * (1 - 1 / t) + 1e-12
    assert 0.0 <= r_best <= 1.0 + 1e-12
    assert r_best <= r_mean + 1e-12


def test_mean_centred_ratio_exceeds_one_with_a_dominant_token():
    # One token carries a big value in one feature: centring spreads it over every token.
    x = torch.zeros(8, 4, dtype=torch.float64)
    x[0, 0] = 100.0
    x[1:, 1:] = 0.1 * _rand(7, 3, 1)
    assert U.uniformity_ratio(x) > 1.2
    assert U.uniformity_ratio(x, center="best") <= 1.0


def test_rank_one_rows_give_zero_ratio_rank_one_and_cosine_one():
    x = torch.ones(6, 1, dtype=torch.float64) * _rand(1, 5, 2)
    assert U.uniformity_ratio(x) == pytest.approx(0.0, abs=1e-12)
    assert U.effective_rank(x) == pytest.approx(1.0, abs=1e-6)
    assert U.stable_rank(x) == pytest.approx(1.0, abs=1e-9)
    assert U.mean_pairwise_cosine(x) == pytest.approx(1.0, abs=1e-12)


def test_orthonormal_tokens_have_full_rank_and_zero_cosine():
    x = torch.eye(4, 6, dtype=torch.float64) * 3.0
    assert U.effective_rank(x) == pytest.approx(4.0, rel=1e-9)
    assert U.stable_rank(x) == pytest.approx(4.0, rel=1e-9)
    assert U.mean_pairwise_cosine(x) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_ranks_bounded_by_min_dim(shape):
    t, d, seed = shape
    x = _rand(t, d, seed)
    er, sr = U.effective_rank(x), U.stable_rank(x)
    assert 1.0 - 1e-9 <= er <= min(t, d) + 1e-9
    assert 1.0 - 1e-9 <= sr <= min(t, d) + 1e-9
    assert sr <= er + 1e-9  # the stable rank never exceeds the entropy-based one


@pytest.mark.parametrize("t,d", [(7, 5), (5, 7), (12, 12)])
def test_gram_singular_values_match_svd(t, d):
    x = _rand(t, d, t * d)
    ref = torch.linalg.svdvals(x)
    assert torch.allclose(U.singular_values(x)[: ref.numel()], ref, rtol=1e-8, atol=1e-10)


def test_mean_pairwise_cosine_matches_pairwise_reference():
    x = _rand(9, 4, 3)
    x[2] = 0.0  # a zero row counts as orthogonal
    n = x.norm(dim=-1, keepdim=True)
    u = torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))
    cos = u @ u.T
    ref = (cos.sum() - cos.diagonal().sum()) / (9 * 8)
    assert U.mean_pairwise_cosine(x) == pytest.approx(float(ref), abs=1e-12)


def test_zero_matrix_measures_zero():
    z = torch.zeros(4, 3)
    assert U.uniformity_ratio(z) == 0.0 and U.effective_rank(z) == 0.0 and U.stable_rank(z) == 0.0


def test_uniformity_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="unknown center"):
        U.uniformity_ratio(torch.ones(3, 2), center="median")
    with pytest.raises(ValueError, match=r"shape \(tokens, features\)"):
        U.uniformity_ratio(torch.ones(2, 3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        U.uniformity_ratio(torch.ones(3, 2, dtype=torch.long))


# -- residual norms ---------------------------------------------------------------------------------------


def test_norm_summary_reports_token_zero_apart():
    x = torch.zeros(4, 2, dtype=torch.float64)
    x[0] = torch.tensor([30.0, 40.0])
    x[1:] = torch.tensor([3.0, 4.0])
    s = R.norm_summary(x)
    assert s["first"] == pytest.approx(50.0) and s["mean"] == pytest.approx(5.0)
    assert s["median"] == pytest.approx(5.0) and s["max"] == pytest.approx(5.0)


def test_growth_of_geometric_norms_is_recovered_exactly():
    norms = [2.0 * 1.07 ** i for i in range(10)]
    assert R.fitted_growth(norms) == pytest.approx(1.07, rel=1e-12)
    assert R.growth_factors(norms) == pytest.approx([1.07] * 9, rel=1e-12)
    assert R.fitted_growth([100.0] + norms[1:], skip_first=1) == pytest.approx(1.07, rel=1e-12)


def test_growth_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="at least 2 norms"):
        R.growth_factors([1.0])
    with pytest.raises(ValueError, match="positive norms"):
        R.fitted_growth([1.0, 0.0, 2.0])


# -- outliers ---------------------------------------------------------------------------------------------


def test_kurtosis_matches_moment_formula_and_gaussian_is_three():
    x = _rand(3, 7, 4)
    c = x - x.mean(-1, keepdim=True)
    ref = (c ** 4).mean(-1) / ((c ** 2).mean(-1) ** 2)
    assert torch.allclose(O.kurtosis(x), ref, rtol=1e-12)
    big = _rand(4, 200_000, 5)
    assert O.kurtosis(big).mean().item() == pytest.approx(3.0, abs=0.05)
    assert O.kurtosis(torch.ones(2, 5)).tolist() == [0.0, 0.0]


def test_massive_activation_is_found_with_its_token_and_dim():
    x = _rand(16, 32, 6)
    x[3, 17] = -500.0
    m = O.massive_activations(x, k=3)
    assert m["top"][0] == {"value": -500.0, "abs": 500.0, "token": 3, "dim": 17}
    assert m["ratio"] == pytest.approx(500.0 / m["median_abs"])
    assert [t["abs"] for t in m["top"]] == sorted((t["abs"] for t in m["top"]), reverse=True)
    with pytest.raises(ValueError, match="positive int"):
        O.massive_activations(x, k=0)


# -- attention statistics ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 16), st.integers(0, 8), st.floats(0.1, 30.0), st.integers(0, 9999))
def test_entropy_bounded_by_log_keys_seen(h, q, extra, temp, seed):
    k = q + extra
    p = _causal_softmax(h, q, k, seed, temp)
    n = A.keys_seen(q, k).double()
    ent = A.attention_entropy(p)
    assert bool((ent >= -1e-12).all()) and bool((ent <= n.log() + 1e-9).all())
    ne = A.normalized_entropy(p)
    finite = ne[~ne.isnan()]
    assert bool((finite >= -1e-12).all()) and bool((finite <= 1 + 1e-9).all())
    assert bool(ne[..., n == 1].isnan().all())


def test_entropy_of_subnormalised_rows_is_renormalised():
    p = _causal_softmax(2, 6, 6, 1)
    assert torch.allclose(A.attention_entropy(0.5 * p), A.attention_entropy(p))  # e.g. softmax1 rows


def test_uniform_rows_have_normalised_entropy_one_and_one_hot_zero():
    q = 6
    uniform = torch.ones(q, q, dtype=torch.float64).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).unsqueeze(0)
    assert torch.allclose(A.normalized_entropy(uniform)[0, 1:], torch.ones(q - 1, dtype=torch.float64))
    onehot = torch.zeros(1, q, q, dtype=torch.float64)
    onehot[..., 0] = 1.0
    assert torch.allclose(A.normalized_entropy(onehot)[0, 1:], torch.zeros(q - 1, dtype=torch.float64))
    # max weight of a uniform row is exactly 1/n (dispersion's floor)
    assert torch.allclose(A.max_weight(uniform)[0], 1 / A.keys_seen(q, q).double())


def test_first_token_attention_and_sink_rate():
    q = 5
    p = torch.zeros(3, q, q, dtype=torch.float64)
    p[0, :, 0] = 1.0  # a pure sink head
    p[1] = torch.eye(q, dtype=torch.float64)  # attends to itself only: token 0 weight is 0 for queries >= 1
    p[2, :, 0] = 0.25
    p[2] += torch.eye(q, dtype=torch.float64) * 0.75
    p[2, 0, 0] = 1.0
    first = A.first_token_attention(p)
    assert first.tolist() == pytest.approx([1.0, 0.0, 0.25])  # query 0 (forced to 1) is left out
    assert A.sink_rate(first) == pytest.approx(1 / 3)
    assert A.sink_rate(first, threshold=0.2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        A.sink_rate(first, threshold=2.0)


def test_attention_summary_shapes_and_bins():
    p = _causal_softmax(3, 40, 40, 2).unsqueeze(0)
    s = A.attention_summary(p, max_bins=8)
    assert len(s["entropy"]) == len(s["first_token"]) == len(s["max_weight"]) == 3
    curve = s["max_weight_by_position"]
    assert len(curve["keys_seen"]) == len(curve["value"]) <= 8
    bins = A.log_bins(40, 8)
    assert bins[0][0] == 0 and bins[-1][1] == 40 and all(a[1] == b[0] for a, b in zip(bins, bins[1:]))


def test_attention_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="more queries"):
        A.attention_entropy(torch.ones(1, 5, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., heads, queries, keys\)"):
        A.attention_entropy(torch.ones(4, 4))


# -- the cache analysis -----------------------------------------------------------------------------------


def test_cache_metrics_reads_a_cache_without_a_model():
    t, d, h, n_layers = 10, 6, 2, 3
    cache = {}
    x = _rand(t, d, 0).unsqueeze(0)
    for i in range(n_layers):
        cache[f"blocks.{i}.hook_resid_pre"] = x
        x = x * 1.5 + 0.1 * _rand(t, d, i + 1).unsqueeze(0)
        cache[f"blocks.{i}.hook_resid_post"] = x
        cache[f"blocks.{i}.attn.pattern"] = _causal_softmax(h, t, t, i).unsqueeze(0)
    timings: dict[str, float] = {}
    m = cache_metrics(cache, n_layers, timings=timings)
    assert [e["index"] for e in m["layers"]] == [0, 1, 2]
    for e in m["layers"]:
        assert e["residual"]["growth"] == pytest.approx(1.5, rel=0.1)
        assert set(e) >= {"residual", "uniformity", "uniformity_excl_first", "outliers", "attention"}
        assert len(e["attention"]["entropy"]) == h
    assert set(timings) == {"residual_norm", "uniformity", "outliers", "attention"}
    del cache["blocks.1.hook_resid_post"]
    with pytest.raises(ValueError, match="blocks.1.hook_resid_post"):
        cache_metrics(cache, n_layers)
