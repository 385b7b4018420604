"""attn_implementation="attnlab" on tiny random Hugging Face models equals HF's own attention.

Llama, Mistral (sliding window), Qwen2 (one full and one sliding layer), GPT-2 and GPT-NeoX, built in-test
from random configs (no downloads). References: "sdpa" in float64 (exact up to rounding) and "eager" in
float32 (some eager paths run their softmax in float32 even for float64 models, so float64 eager is not a
tight reference).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from attnlab.errors import AttnlabError, ConfigError
from attnlab.models.hf import _as_bool_mask, attnlab_mask, check_supported, register, use_attnlab_attention
from attnlab.models.hooks import attention_override, record_attention

VOCAB, LAYERS, HEADS, T = 61, 2, 4, 10
WINDOW = 4  # < T, so the sliding-window models really drop keys


def _tiny(arch: str) -> torch.nn.Module:
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, max_position_embeddings=64)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(num_key_value_heads=2, sliding_window=WINDOW, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=1, use_sliding_window=True,
                                             sliding_window=WINDOW, max_window_layers=1, **common))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=HEADS,
                                           n_positions=64))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(rotary_pct=0.5, **common))
    else:
        raise ValueError(arch)
    return model.eval()


ARCHS = ["llama", "mistral", "qwen2", "gpt2", "gpt_neox"]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    register()
    torch.manual_seed(0)
    return {arch: _tiny(arch) for arch in ARCHS}


def _logits(model: torch.nn.Module, impl: str, ids: torch.Tensor, **kw: object) -> torch.Tensor:
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :3] = 0  # left padding, as generation uses
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_sdpa_float64_and_eager_float32(models: dict, arch: str) -> None:
    model = models[arch]
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))
    model.double()
    try:
        ref = _logits(model, "sdpa", ids)
        got = _logits(model, "attnlab", ids)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    finally:
        model.float()
    torch.testing.assert_close(_logits(model, "attnlab", ids), _logits(model, "eager", ids),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_mask_matches_eager(models: dict, arch: str) -> None:
    model = models[arch]
    ids, mask = _padded_batch()
    ref = _logits(model, "eager", ids, attention_mask=mask)
    got = _logits(model, "attnlab", ids, attention_mask=mask)
    # Padded query rows see no key: eager averages garbage there, attnlab returns zeros; both are unused.
    torch.testing.assert_close(got[0, 3:], ref[0, 3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    # And the padding really is masked: changing a padded token changes nothing real.
    ids2 = ids.clone()
    ids2[0, :3] = (ids2[0, :3] + 1) % VOCAB
    torch.testing.assert_close(_logits(model, "attnlab", ids2, attention_mask=mask)[0, 3:], got[0, 3:])


# The static-cache geometry is architecture-independent, so Llama alone covers it.
@pytest.mark.parametrize(("arch", "cache"), [(a, "dynamic") for a in ARCHS]
                         + [("llama", "static"), ("llama", "static-unpadded")])
def test_generate_with_kv_cache_matches_eager(models: dict, arch: str, cache: str) -> None:
    model = models[arch]
    ids, mask = _padded_batch()
    if cache == "static-unpadded":
        # No padding: HF's own sdpa rule would skip the mask here and rely on top-left alignment, which is
        # wrong for bottom-right "causal" (the prefill queries would see the empty cache slots).
        cache, ids, mask = "static", ids[1:], mask[1:]
    out = {}
    for impl in ("eager", "attnlab"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            out[impl] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                       output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                                       cache_implementation=cache)
    assert torch.equal(out["attnlab"].sequences, out["eager"].sequences)
    for a, b in zip(out["attnlab"].logits, out["eager"].logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_full_forward(models: dict, arch: str) -> None:
    model = models[arch]
    model.set_attn_implementation("attnlab")
    ids = torch.randint(0, VOCAB, (1, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        pre = model(input_ids=ids[:, :6], use_cache=True)
        cache, steps = pre.cache, [pre.logits]
        for t in range(6, T):
            step = model(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = step.cache
            steps.append(step.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_record_attention_captures_every_layer(models: dict, arch: str) -> None:
    model = models[arch]
    model.set_attn_implementation("attnlab")
    ids = torch.randint(0, VOCAB, (1, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), record_attention() as store:
        model(input_ids=ids)
    assert sorted(store) == [f"blocks.{i}.attn.pattern" for i in range(LAYERS)]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(LAYERS):
        w = store[f"blocks.{i}.attn.pattern"]
        assert w.shape == (1, HEADS, T, T)
        torch.testing.assert_close(w.sum(-1), torch.ones(1, HEADS, T))
        assert (w[..., future] == 0).all()
    if arch == "mistral":  # every layer slides: keys at distance >= WINDOW get no weight
        old = torch.ones(T, T, dtype=torch.bool).tril(-WINDOW)
        assert all((store[f"blocks.{i}.attn.pattern"][..., old] == 0).all() for i in range(LAYERS))
    if arch == "qwen2":  # layer 0 is full attention, layer 1 slides
        old = torch.ones(T, T, dtype=torch.bool).tril(-WINDOW)
        assert (store["blocks.0.attn.pattern"][..., old] > 0).all()
        assert (store["blocks.1.attn.pattern"][..., old] == 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_softmax1_override_changes_logits(models: dict, arch: str) -> None:
    model = models[arch]
    ids = torch.randint(0, VOCAB, (1, T), generator=torch.Generator().manual_seed(4))
    base = _logits(model, "attnlab", ids)
    with attention_override(normalizer="softmax1"), torch.no_grad():
        swapped = model(input_ids=ids).logits
    assert (swapped - base).abs().max() > 1e-4
    torch.testing.assert_close(_logits(model, "attnlab", ids), base)  # the override does not leak out


def test_mask_function_skips_only_when_bottom_right_causal_is_exact() -> None:
    # Prefill and decode with a dynamic cache: keys are past + current, so "causal" is exact.
    assert attnlab_mask(batch_size=1, q_length=5, kv_length=5) is None
    assert attnlab_mask(batch_size=1, q_length=1, kv_length=9, q_offset=8) is None
    assert attnlab_mask(batch_size=1, q_length=3, kv_length=9, q_offset=6) is None
    # A static cache's prefill: 5 queries, 16 key slots, offset 0. HF's sdpa skip relies on top-left
    # alignment here; bottom-right would let query 0 see slot 11, so a mask is needed.
    m = attnlab_mask(batch_size=1, q_length=5, kv_length=16, q_offset=0)
    assert m is not None and m.dtype == torch.bool and m.shape == (1, 1, 5, 16)
    assert torch.equal(m[0, 0, :, :5], torch.ones(5, 5, dtype=torch.bool).tril()) and not m[..., 5:].any()
    # Padding needs a mask.
    pad = torch.tensor([[0, 1, 1, 1]])
    m = attnlab_mask(batch_size=1, q_length=4, kv_length=4, attention_mask=pad)
    assert m is not None and not m[..., 0].any()
    # A sliding window within reach of the keys needs a mask; out of reach it does not.
    from transformers.masking_utils import sliding_window_causal_mask_function

    fn = sliding_window_causal_mask_function(3)
    assert attnlab_mask(batch_size=1, q_length=2, kv_length=2, mask_function=fn, local_size=3) is None
    m = attnlab_mask(batch_size=1, q_length=5, kv_length=5, mask_function=fn, local_size=3)
    assert m is not None and not m[0, 0, 4, :2].any() and m[0, 0, 4, 2:].all()
    # HF turned the skip off (custom mask functions): always a mask.
    assert attnlab_mask(batch_size=1, q_length=5, kv_length=5, allow_is_causal_skip=False) is not None


def test_float_masks_become_bool_and_biases_fail_clearly() -> None:
    neg = torch.finfo(torch.float32).min
    additive = torch.tensor([[0.0, neg], [0.0, 0.0]])
    assert torch.equal(_as_bool_mask(additive), torch.tensor([[True, False], [True, True]]))
    with pytest.raises(ConfigError, match="positional bias"):
        _as_bool_mask(torch.tensor([[0.5, neg], [0.0, -1.0]]))
    with pytest.raises(TypeError, match="bool or an additive float"):
        _as_bool_mask(torch.zeros(2, 2, dtype=torch.long))


def test_unsupported_architecture_fails_clearly() -> None:
    class Legacy(LlamaForCausalLM):
        _supports_attention_backend = False

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2)
    model = Legacy(cfg)
    with pytest.raises(AttnlabError, match="does not route its attention.*supported: llama"):
        use_attnlab_attention(model)
    with pytest.raises(AttnlabError, match="AttentionInterface"):
        check_supported(torch.nn.Linear(2, 2))


def test_dropout_in_training_fails_clearly() -> None:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, attention_dropout=0.1)
    model = use_attnlab_attention(LlamaForCausalLM(cfg)).train()
    with pytest.raises(ConfigError, match="no dropout"):
        model(input_ids=torch.zeros(1, 3, dtype=torch.long))
