"""`summarize(cache, keys=...)`: a subset of the summary keys, each the value the full call gives, without
the work of the keys not asked for (the SVDs of effective rank and uniformity above all)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from attnlab.data.tokenizers import ByteTokenizer
from attnlab.diagnose import summary
from attnlab.diagnose.summary import ATTENTION_KEYS, GROUPS, KEYS, summarize
from attnlab.models.adapter import from_gpt
from attnlab.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# What attnlab/experiments/compare/measure.py reads from one window's summary.
MEASURE_KEYS = ("first_token_attn", "sink_rate", "null_sink_mass", "max_abs", "first_token_layer",
                "null_sink_mass_layer", "first_token_heads", "null_sink_mass_heads")


@pytest.fixture(scope="module")
def cache() -> dict[str, torch.Tensor]:
    """A random tiny GPT in float64 (softmax1, so the null-sink keys are not all zero), two sequences."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, context=64,
                        normalizer="softmax1"))
    lm = from_gpt(gpt.eval().double(), ByteTokenizer(), "gpt", "memory")
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        captured = lm.run_with_cache(ids)[1]
    names = [f"blocks.{layer}.{point}" for layer in range(3) for point in ("hook_resid_post", "attn.pattern")]
    return {name: captured[name] for name in names}  # what summarize reads (attn.pattern: an alias)


def _same(a: Any, b: Any) -> bool:
    """Equal to the bit, nan equal to nan, through lists and dicts."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_keys_are_every_key_the_full_call_gives(cache) -> None:
    full = summarize(cache)
    assert set(KEYS) == set(full) and set(ATTENTION_KEYS) <= set(KEYS)
    assert full["null_sink_mass"] > 0 and not math.isnan(full["uniformity_excl_first_last"])
    assert _same(summarize(cache, keys=KEYS), full)


@pytest.mark.parametrize("keys", [MEASURE_KEYS, *[(k,) for k in KEYS], *GROUPS.values(),
                                  ("max_abs", "entropy_norm", "kurtosis_mean"), ()],
                         ids=lambda keys: ",".join(keys) or "none")
def test_a_subset_is_the_full_result_s_entries(cache, keys) -> None:
    full = summarize(cache)
    part = summarize(cache, keys=keys)
    assert set(part) == set(keys)
    assert _same(part, {k: full[k] for k in keys})


def test_keys_not_asked_for_are_not_computed(cache, monkeypatch) -> None:
    def refuse(*_args: Any, **_kw: Any) -> None:
        raise AssertionError("computed a key that was not asked for")

    full = summarize(cache)
    for name in ("effective_rank", "uniformity_ratio", "layer_kurtosis", "token_norms", "fitted_growth",
                 "normalized_entropy"):
        monkeypatch.setattr(summary, name, refuse)
    assert _same(summarize(cache, keys=MEASURE_KEYS), {k: full[k] for k in MEASURE_KEYS})


def test_unknown_keys_and_a_bare_string_are_refused(cache) -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'max_abz'; the keys are: resid_norm, .*max_abs"):
        summarize(cache, keys=["max_abs", "max_abz"])
    with pytest.raises(TypeError, match=r"keys=\('max_abs',\)"):
        summarize(cache, keys="max_abs")


def test_a_subset_checks_the_cache_and_threshold_as_the_full_call_does(cache) -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        summarize(cache, threshold=2.0, keys=("max_abs",))
    broken = {**cache, "blocks.1.hook_resid_post": cache["blocks.1.hook_resid_post"].long()}
    with pytest.raises(TypeError, match="floating-point"):
        summarize(broken, keys=("first_token_attn",))
    no_attention = {k: v for k, v in cache.items() if "pattern" not in k}
    assert summarize(no_attention, keys=("sink_rate", "max_abs"))["sink_rate"] is None
