"""attnlab.stream caches on tiny random HF models: bookkeeping, an explicit reference, chunked steps."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from attnlab.errors import ConfigError
from attnlab.stream import StreamRunner, make_policy
from attnlab.stream.cache import RunnerCache, StreamState, plan_step, split_steps
from attnlab.stream.policies import ChunkedPolicy, FullPolicy, RecomputePolicy, SinksPolicy, WindowPolicy
from attnlab.stream.rope import rope_of

VOCAB = 61


def tiny(family: str = "llama", impl: str = "eager", rope: dict | None = None,
         seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  attn_implementation=impl)
    if rope is not None:
        common["rope_parameters"] = {"rope_theta": 10000.0, **rope}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    return model.double().eval()


# -- an explicit reference: per token, recompute attention over the visible keys, re-positioned ----------

def visible_ref(policy: str, u: int, S: int, W: int) -> list[int]:
    if policy == "full":
        return list(range(u + 1))
    if policy == "window":
        return list(range(max(0, u - W + 1), u + 1))
    if policy == "chunked":
        return list(range(u // W * W, u + 1))
    return [j for j in range(u + 1) if j < S or j > u - W]  # sinks


def rot(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    ang = pos.double()[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], -1)
    half = x.shape[-1] // 2
    return x * emb.cos() + torch.cat([-x[..., half:], x[..., :half]], -1) * emb.sin()


@torch.no_grad()
def reference_logits(model: torch.nn.Module, ids: torch.Tensor, policy: str, S: int, W: int) -> torch.Tensor:
    """Token by token, with pre-RoPE keys of every token kept: each query sees its visible keys placed at
    compact cache slots (sinks at 0..S-1, the window after them, the query last), as StreamingLLM."""
    cfg, base = model.config, model.model
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    B, T = ids.shape
    keys = [[] for _ in base.layers]
    vals = [[] for _ in base.layers]
    out = []
    for u in range(T):
        vis = visible_ref(policy, u, S, W)
        slots = torch.arange(len(vis))
        x = base.embed_tokens(ids[:, u:u + 1])  # (B, 1, d)
        for li, layer in enumerate(base.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(B, H, D)
            keys[li].append(att.k_proj(h).view(B, Hkv, D))
            vals[li].append(att.v_proj(h).view(B, Hkv, D))
            k = torch.stack([keys[li][j] for j in vis], 2)  # (B, Hkv, n, D)
            v = torch.stack([vals[li][j] for j in vis], 2)
            k = rot(k, slots, inv_freq)
            q = rot(q[:, :, None], slots[-1:], inv_freq)  # (B, H, 1, D)
            k = k.repeat_interleave(H // Hkv, 1)
            v = v.repeat_interleave(H // Hkv, 1)
            w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1)
            y = (w @ v).transpose(1, 2).reshape(B, 1, H * D)
            x = x + att.o_proj(y)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        out.append(model.lm_head(base.norm(x)))
    return torch.cat(out, 1)


@pytest.mark.parametrize("family,policy,S,W", [
    ("llama", "sinks", 3, 6), ("llama", "window", 0, 6), ("llama", "chunked", 0, 5), ("llama", "full", 0, 0),
    ("mistral", "sinks", 2, 5), ("qwen2", "sinks", 1, 7)])
def test_token_by_token_equals_explicit_reference(family: str, policy: str, S: int, W: int) -> None:
    model = tiny(family)
    ids = torch.randint(0, VOCAB, (1, 18), generator=torch.Generator().manual_seed(1))
    pol = make_policy(policy, sinks=S, window=W, chunk=W)
    got = StreamRunner(model, pol, max_step=1).feed(ids)
    want = reference_logits(model, ids, policy, S, W)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_reference_differs_when_positions_are_not_reassigned() -> None:
    """Sanity of the test itself: sinks with keys at their stream positions give different logits."""
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(2))
    want = reference_logits(model, ids, "sinks", 2, 5)
    plain = model(ids).logits
    assert (want[:, 7:] - plain[:, 7:]).abs().max() > 1e-3  # eviction happened and matters
    torch.testing.assert_close(want[:, :7], plain[:, :7], atol=1e-6, rtol=1e-6)  # before eviction: identical


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_full_policy_equals_uncached_forward(impl: str) -> None:
    model = tiny(impl=impl)
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(3))
    runner = StreamRunner(model, FullPolicy(), max_step=None)
    got = torch.cat([runner.feed(ids[:, :11]), runner.feed(ids[:, 11:12]), runner.feed(ids[:, 12:])], 1)
    # sdpa stays in float64: exact up to rounding. HF's eager attention runs its softmax in float32 even
    # in a float64 model, and rows of 11, 1 and 18 new queries over 11-30 keys are summed in an order that
    # depends on the vector unit (AVX2 vs AVX-512): float32's rounding (~6e-8 relative) is the honest bound.
    tol = 1e-10 if impl == "sdpa" else 2e-6
    torch.testing.assert_close(got, model(ids).logits, atol=tol, rtol=tol)


@pytest.mark.parametrize("policy", [SinksPolicy(4, 9), SinksPolicy(1, 5), WindowPolicy(7), ChunkedPolicy(6)])
def test_multi_token_steps_equal_token_by_token(policy) -> None:
    model = tiny(impl="sdpa")
    ids = torch.randint(0, VOCAB, (2, 26), generator=torch.Generator().manual_seed(4))
    one = StreamRunner(model, policy, max_step=1).feed(ids)
    for step in (3, 8, None):
        many = StreamRunner(model, policy, max_step=step).feed(ids)
        torch.testing.assert_close(many, one, atol=1e-6, rtol=1e-6)  # HF computes RoPE angles in float32


def test_batch_of_two_equals_each_stream_alone() -> None:
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(5))
    both = StreamRunner(model, SinksPolicy(2, 6), max_step=4).feed(ids)
    for b in range(2):
        alone = StreamRunner(model, SinksPolicy(2, 6), max_step=4).feed(ids[b:b + 1])
        torch.testing.assert_close(both[b:b + 1], alone, atol=1e-10, rtol=1e-10)


def test_prompt_longer_than_cache_in_one_feed() -> None:
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 50), generator=torch.Generator().manual_seed(6))
    runner = StreamRunner(model, SinksPolicy(2, 6), max_step=None)  # one feed, far beyond the 8-key cache
    logits = runner.feed(ids)
    assert logits.shape == (1, 50, VOCAB)
    assert runner.cache_length() == 2 + 5  # sinks + window minus the next query's own slot
    want = reference_logits(model, ids, "sinks", 2, 6)
    torch.testing.assert_close(logits, want, atol=1e-6, rtol=1e-6)


def test_cache_bytes_flat_after_five_times_more_tokens() -> None:
    model = tiny()
    gen = torch.Generator().manual_seed(7)
    runner = StreamRunner(model, SinksPolicy(2, 8), max_step=16)
    runner.feed(torch.randint(0, VOCAB, (1, 40), generator=gen))
    before, length = runner.cache_bytes(), runner.cache_length()
    runner.feed(torch.randint(0, VOCAB, (1, 200), generator=gen))
    assert runner.cache_bytes() == before > 0
    assert runner.cache_length() == length == 9
    full = StreamRunner(model, FullPolicy(), max_step=16)
    full.feed(torch.randint(0, VOCAB, (1, 40), generator=gen))
    grown = full.cache_bytes()
    full.feed(torch.randint(0, VOCAB, (1, 40), generator=gen))
    assert full.cache_bytes() == 2 * grown  # the baseline grows, so the flat figure above is meaningful


# -- bookkeeping, with explicit counts ---------------------------------------------------------------------

def test_plan_positions_eviction_and_lengths_token_by_token() -> None:
    pol = SinksPolicy(2, 4)
    st = StreamState()
    seen = []
    for _ in range(9):
        step = plan_step(pol, st, 1)
        seen.append((int(step.positions[0]), step.n_keys, step.window_shift))
        st.ns += step.new_sinks
        st.t += 1
        st.w0, st.off = step.new_w0, step.off
    # positions climb to cache size - 1 (5) and stay; keys seen never exceed 2 + 4; window re-rotated by -1
    assert seen == [(0, 1, 0), (1, 2, 0), (2, 3, 0), (3, 4, 0), (4, 5, 0), (5, 6, 0), (5, 6, -1), (5, 6, -1),
                    (5, 6, -1)]
    assert (st.ns, st.t, st.w0) == (2, 9, 6)  # window holds tokens 6, 7, 8 (3 = W - 1)


def test_plan_sink_copies_for_multi_token_step() -> None:
    pol = SinksPolicy(2, 4)
    st = StreamState(t=10, ns=2, w0=7, off=4)  # window holds 7, 8, 9 at positions 3, 4, 5
    step = plan_step(pol, st, 3)  # queries 10, 11, 12
    assert step.off == 7 and step.positions.tolist() == [3, 4, 5]
    assert step.sink_shifts == [-2, -1, 0]  # query 10 needs sinks 2 slots earlier than query 12
    assert step.n_keys == 3 * 2 + 3 + 3
    # query 10 sees its sink copy, window 7..10; query 12 its copy, 9..12
    assert step.allowed[0].tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert step.allowed[2].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1]
    assert step.new_w0 == 10


def test_real_zero_keys_are_counted() -> None:
    """Keys that are exactly zero still occupy the cache (no fill inferred from non-zero values)."""
    model = tiny()
    runner = StreamRunner(model, SinksPolicy(1, 3), max_step=2)
    with torch.no_grad():
        for layer in model.model.layers:  # zero keys and values: every cached key is all zeros
            layer.self_attn.k_proj.weight.zero_()
            layer.self_attn.v_proj.weight.zero_()
    runner.feed(torch.randint(0, VOCAB, (1, 2)))
    assert runner.cache_length() == 2
    runner.feed(torch.randint(0, VOCAB, (1, 5)))
    assert runner.cache_length() == 1 + 2 and runner.cache.tokens_seen == 7
    assert runner.cache.layers[0].win_k.abs().sum() == 0 and runner.cache.layers[0].win_k.shape[-2] == 2


def test_split_steps_stop_at_the_full_boundary() -> None:
    assert split_steps(SinksPolicy(4, 10), 0, 30, 8) == [8, 6, 8, 8]
    assert split_steps(WindowPolicy(10), 0, 30, None) == [30]
    assert split_steps(SinksPolicy(4, 10), 20, 5, None) == [5]


# -- RoPE variants --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32}])
def test_scaled_rope_chunked_equals_token_by_token(rope: dict) -> None:
    model = tiny(rope=rope)
    assert rope_of(model).rope_type == rope["rope_type"]
    ids = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(8))
    one = StreamRunner(model, SinksPolicy(2, 6), max_step=1).feed(ids)
    many = StreamRunner(model, SinksPolicy(2, 6), max_step=9).feed(ids)
    torch.testing.assert_close(many, one, atol=1e-6, rtol=1e-6)  # HF computes RoPE angles in float32


# -- errors ------------------------------------------------------------------------------------------------

def test_unknown_policy_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown streaming policy 'lru'.*sinks"):
        make_policy("lru")


def test_cache_larger_than_context_is_refused() -> None:
    with pytest.raises(ConfigError,
                       match="sinks \\+ window = 4 \\+ 2045 = 2049 is larger than the model's context"):
        make_policy("sinks", sinks=4, window=2045, max_context=2048)


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="window must be >= 1"):
        make_policy("window", window=0)
    with pytest.raises(TypeError, match="sinks must be an int"):
        SinksPolicy(1.5, 4)  # type: ignore[arg-type]


def test_policy_names_capacities_and_earliest_keys() -> None:
    """Each policy's earliest kept key is its span's first key past the sinks: the explicit formulas."""
    u = torch.arange(40)
    for policy, name, capacity, lo in (
        (WindowPolicy(8), "window(8)", 8, (u - 7).clamp(min=0)),
        (RecomputePolicy(8), "recompute(8)", 8, (u - 7).clamp(min=0)),
        (SinksPolicy(4, 8), "sinks(4,8)", 12, (u - 7).clamp(min=4)),
        (SinksPolicy(0, 8), "sinks(0,8)", 8, (u - 7).clamp(min=0)),
        (ChunkedPolicy(8), "chunked(8)", 8, u // 8 * 8),
    ):
        assert (policy.name, policy.capacity) == (name, capacity)
        assert torch.equal(policy.lo(u), lo), name
    assert SinksPolicy(4, 8) == SinksPolicy(4, 8) and len({SinksPolicy(4, 8), SinksPolicy(4, 8)}) == 1
    assert WindowPolicy(8) != RecomputePolicy(8) and not RecomputePolicy(8).uses_cache
    with pytest.raises(ConfigError, match="chunk must be >= 1, got 0"):
        ChunkedPolicy(0)


def test_memory_policy_needs_attnlab_gpt() -> None:
    with pytest.raises(ConfigError, match="memory policy .* needs attnlab's GPT"):
        StreamRunner(tiny(), make_policy("memory", window=8))


def test_unsupported_attention_layout() -> None:
    model = tiny()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="attention implementation 'flash_attention_2' is not supported"):
        StreamRunner(model, SinksPolicy(1, 4))


def test_unsupported_rope_type() -> None:
    model = tiny()
    model.model.rotary_emb.rope_type = "longrope"
    with pytest.raises(ConfigError, match="RoPE type 'longrope' is not supported"):
        StreamRunner(model, SinksPolicy(1, 4))


def test_model_without_rope() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32))
    with pytest.raises(ConfigError, match="no rotary embedding|not supported for streaming"):
        StreamRunner(model, SinksPolicy(1, 4))


def test_stream_cache_rejects_direct_use() -> None:
    model = tiny()
    cache = RunnerCache(SinksPolicy(1, 4), rope_of(model), 2)
    with pytest.raises(RuntimeError, match="outside a planned step"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache, use_cache=True)
