"""TransformerLens habits on `LoadedModel`: hook names and shapes, names_filter, run_with_hooks (activation
patching), padded batches from encode(list). Unit tier: the tiny random HF Llama (attnlab.models.tiny) and
a tiny attnlab GPT, both in float64 so "the same computation" can be checked to the last bit or to 1e-12."""

from __future__ import annotations

import pytest
import torch

from attnlab.data.tokenizers import ByteTokenizer
from attnlab.errors import ConfigError, DataError
from attnlab.models.adapter import LoadedModel, from_gpt, from_hf
from attnlab.models.batch import TokenBatch
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.hookpoints import hook_names
from attnlab.models.tiny import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["To be", "or not to be, that is the question"]


def _gpt(span: str = "causal") -> LoadedModel:
    cfg = GPTConfig(vocab_size=256, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, context=64, span=span)
    return from_gpt(GPT(cfg).eval().double(), ByteTokenizer(), "gpt", "memory")


@pytest.fixture(scope="module", params=["llama", "gpt"])
def lm(request: pytest.FixtureRequest) -> LoadedModel:
    if request.param == "gpt":
        return _gpt()
    model, tok = tiny_llama(seed=1)
    return from_hf(model.double(), tok, "tiny-llama", "memory")


def _clean_and_corrupt(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    return lm.encode("When Mary and John went"), lm.encode("When Paul and Kate went")


def test_cache_has_transformerlens_names_and_shapes(lm: LoadedModel) -> None:
    ids = lm.encode("To be, or not to be")
    T, H, Hkv, D, d = ids.shape[1], lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.d_model
    with torch.no_grad():
        logits, cache = lm.run_with_cache(ids)
    for i in range(lm.n_layers):
        p = f"blocks.{i}."
        assert cache[p + "attn.hook_q"].shape == (1, T, H, D)
        assert cache[p + "attn.hook_k"].shape == (1, T, Hkv, D)
        assert cache[p + "attn.hook_v"].shape == (1, T, Hkv, D)
        assert cache[p + "attn.hook_z"].shape == (1, T, H, D)
        assert cache[p + "attn.hook_pattern"].shape == (1, H, T, T)
        assert cache[p + "attn.pattern"] is cache[p + "attn.hook_pattern"]  # today's name, an alias
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert cache[p + name].shape == (1, T, d), name
        # the residual stream adds up as TransformerLens writes it
        mid = cache[p + "hook_resid_pre"] + cache[p + "hook_attn_out"]
        torch.testing.assert_close(cache[p + "hook_resid_mid"], mid, rtol=0, atol=1e-12)
        post = cache[p + "hook_resid_mid"] + cache[p + "hook_mlp_out"]
        torch.testing.assert_close(cache[p + "hook_resid_post"], post, rtol=0, atol=1e-12)
        # z is what W_O reads: attn_out = o_proj(z flattened over heads)
        o_proj = lm.attn(i).o_proj
        torch.testing.assert_close(o_proj(cache[p + "attn.hook_z"].reshape(1, T, H * D)),
                                   cache[p + "hook_attn_out"], rtol=0, atol=1e-12)
    # capturing the pattern runs attention on the eager reference path: the same logits to rounding
    torch.testing.assert_close(logits, lm.logits(ids).detach(), rtol=0, atol=1e-12)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


def test_names_filter_takes_a_name_a_list_or_a_callable(lm: LoadedModel) -> None:
    ids = lm.encode("abc")
    _, one = lm.run_with_cache(ids, names_filter="blocks.1.attn.hook_pattern")
    assert list(one) == ["blocks.1.attn.hook_pattern"]
    _, alias = lm.run_with_cache(ids, names_filter="blocks.1.attn.pattern")  # old name, same point
    assert list(alias) == ["blocks.1.attn.hook_pattern"]
    _, two = lm.run_with_cache(ids, names_filter=["blocks.0.hook_resid_pre", "blocks.1.attn.hook_q"])
    assert sorted(two) == ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_q"]
    _, by_fn = lm.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(by_fn) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    _, scores = lm.run_with_cache(ids, names_filter="blocks.0.attn.hook_attn_scores")
    assert scores["blocks.0.attn.hook_attn_scores"].shape[-2:] == (3, 3)
    assert set(hook_names(lm)) >= set(two) | set(by_fn)


def test_unknown_hook_name_fails_with_close_matches(lm: LoadedModel) -> None:
    with pytest.raises(ConfigError, match=r"no hook point 'blocks\.1\.attn\.hook_patern'; close matches: "
                                          r"blocks\.1\.attn\.hook_pattern"):
        lm.run_with_cache(lm.encode("ab"), names_filter="blocks.1.attn.hook_patern")
    with pytest.raises(ConfigError, match=r"no hook point 'blocks\.9\.hook_resid_post'; close matches: .*"
                                          r"blocks\.\d\.hook_resid_post"):
        lm.run_with_hooks(lm.encode("ab"), fwd_hooks=[("blocks.9.hook_resid_post", lambda t, h: t)])


IDENTITY_POINTS = ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
                   "blocks.1.attn.hook_v", "blocks.1.attn.hook_z", "blocks.0.hook_attn_out",
                   "blocks.0.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post",
                   "ln_final.hook_normalized"]


@pytest.mark.parametrize("name", IDENTITY_POINTS)
def test_identity_hook_leaves_logits_bit_equal(lm: LoadedModel, name: str) -> None:
    ids = lm.encode("To be, or not to be")
    seen: list[str] = []

    def copy(t: torch.Tensor, hook) -> torch.Tensor:  # a new tensor, so the forward does take it
        seen.append(hook.name)
        return t.clone()

    with torch.no_grad():
        assert torch.equal(lm.run_with_hooks(ids, fwd_hooks=[(name, copy)]), lm.logits(ids))
    assert seen == [name]


def test_identity_pattern_hook_recomputes_the_same_output(lm: LoadedModel) -> None:
    ids = lm.encode("To be, or not to be")
    with torch.no_grad():
        patched = lm.run_with_hooks(ids, fwd_hooks=[(lambda n: n.endswith("hook_pattern"),
                                                     lambda t, h: t.clone())])
        torch.testing.assert_close(patched, lm.logits(ids), rtol=0, atol=1e-12)


@pytest.mark.parametrize("point", ["hook_resid_pre", "hook_resid_mid", "hook_resid_post"])
def test_patching_the_clean_stream_into_the_corrupt_run_restores_clean_logits(lm: LoadedModel,
                                                                               point: str) -> None:
    clean, corrupt = _clean_and_corrupt(lm)
    assert clean.shape == corrupt.shape and not torch.equal(clean, corrupt)
    layer = lm.n_layers - 1
    name = f"blocks.{layer}.{point}"
    with torch.no_grad():
        clean_logits, cache = lm.run_with_cache(clean, names_filter=name)
        corrupt_logits = lm.logits(corrupt)
        patched = lm.run_with_hooks(corrupt, fwd_hooks=[(name, lambda t, h: cache[h.name])])
    assert (clean_logits - corrupt_logits).abs().max() > 1e-3  # the two inputs do differ
    torch.testing.assert_close(patched, clean_logits, rtol=0, atol=1e-12)
    # one position only: the logits before it stay those of the corrupt run (causal)
    def one_position(t: torch.Tensor, hook) -> torch.Tensor:
        out = t.clone()
        out[:, 5] = cache[hook.name][:, 5]
        return out

    with torch.no_grad():
        partial = lm.run_with_hooks(corrupt, fwd_hooks=[(name, one_position)])
    assert torch.equal(partial[:, :5], corrupt_logits[:, :5])
    assert (partial[:, 5] - corrupt_logits[:, 5]).abs().max() > 1e-6


def test_zeroing_a_head_through_hook_z_equals_zeroing_its_output_weights(lm: LoadedModel) -> None:
    ids = lm.encode("To be, or not to be")
    layer, head, D = 1, 2, lm.head_dim

    def ablate(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    o_proj = lm.attn(layer).o_proj
    with torch.no_grad():
        patched = lm.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
        saved = o_proj.weight.clone()
        o_proj.weight[:, head * D:(head + 1) * D] = 0.0
        try:
            expected = lm.logits(ids)
        finally:
            o_proj.weight.copy_(saved)
        assert (patched - lm.logits(ids)).abs().max() > 1e-6
    torch.testing.assert_close(patched, expected, rtol=0, atol=1e-12)


def test_patched_pattern_is_used_by_the_forward(lm: LoadedModel) -> None:
    """Every query of layer 0 sent to token 0 only: z is then token 0's value for its key/value head."""
    ids = lm.encode("To be, or not")
    kept: dict[str, torch.Tensor] = {}

    def to_first(p: torch.Tensor, hook) -> torch.Tensor:
        out = torch.zeros_like(p)
        out[..., 0] = 1.0
        return out

    def keep(t: torch.Tensor, hook) -> None:
        kept[hook.name] = t

    with torch.no_grad():
        lm.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_pattern", to_first),
                                          ("blocks.0.attn.hook_v", keep), ("blocks.0.attn.hook_z", keep)])
    z, v = kept["blocks.0.attn.hook_z"], kept["blocks.0.attn.hook_v"]  # (1, T, H, D), (1, T, Hkv, D)
    group = lm.n_heads // lm.n_kv_heads
    want = v[:, :1].repeat_interleave(group, dim=2).expand_as(z)
    torch.testing.assert_close(z, want, rtol=0, atol=1e-12)


def test_hook_returning_the_wrong_shape_fails_naming_the_hook(lm: LoadedModel) -> None:
    with pytest.raises(ConfigError, match=r"the hook function on blocks\.0\.attn\.hook_q returned "
                                          r"\(1, 2, 3\), expected a tensor of shape \(1, 5, \d+, \d+\)"):
        lm.run_with_hooks(lm.encode("hello"), fwd_hooks=[("blocks.0.attn.hook_q",
                                                          lambda t, h: torch.zeros(1, 2, 3))])
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.hook_attn_scores is read-only"):
        lm.run_with_hooks(lm.encode("hello"), fwd_hooks=[("blocks.0.attn.hook_attn_scores",
                                                          lambda t, h: t.clone())])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


def _assert_batch_matches_singles(lm: LoadedModel, batch: TokenBatch) -> None:
    assert batch.lengths == [len(lm.encode(t)[0]) for t in TEXTS]
    assert batch.attention_mask[0, batch.lengths[0]:].eq(0).all()
    name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        logits = lm.logits(batch)
        cached_logits, cache = lm.run_with_cache(batch, names_filter=name)
        hooked = lm.run_with_hooks(batch, fwd_hooks=[(name, lambda t, h: t.clone())])
        for b, text in enumerate(TEXTS):
            n = batch.lengths[b]
            single, single_cache = lm.run_with_cache(lm.encode(text), names_filter=name)
            for out in (logits, cached_logits, hooked):
                torch.testing.assert_close(out[b, :n], single[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(cache[name][b, :n], single_cache[name][0], rtol=0, atol=1e-12)


def test_padded_batch_logits_equal_each_sequence_alone(lm: LoadedModel) -> None:
    batch = lm.encode(TEXTS)
    assert isinstance(batch, TokenBatch) and batch.input_ids.shape == (2, len(TEXTS[1]))
    _assert_batch_matches_singles(lm, batch)


def test_padding_mask_is_honoured_by_a_gpt_that_sees_every_key() -> None:
    """With a non-causal span a real token would read the pads unless the mask hides them."""
    lm = _gpt(span="full")
    batch = lm.encode(TEXTS)
    _assert_batch_matches_singles(lm, batch)
    with torch.no_grad():  # without its mask the short sequence does read its pads
        no_mask = lm.logits(batch.input_ids)
        single = lm.logits(lm.encode(TEXTS[0]))
    assert (no_mask[0, :batch.lengths[0]] - single[0]).abs().max() > 1e-6


def test_batch_with_an_empty_text_fails_in_one_line(lm: LoadedModel) -> None:
    with pytest.raises(DataError, match=r"text 1 of the batch \(''\) is empty or encodes to no tokens"):
        lm.encode(["hello", "", "world"])
    with pytest.raises(DataError, match="encode\\(\\) got an empty list"):
        lm.encode([])
    with pytest.raises(TypeError, match="item 1 is int"):
        lm.encode(["a", 3])


def test_fused_projection_model_reads_q_k_v_where_attention_starts() -> None:
    """GPT-2 has one c_attn for q, k and v and no rotary embeddings: its hook_q/k/v come from attnlab's
    attention door, the same tensors, and every TransformerLens habit works as on Llama."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    lm = from_hf(GPT2LMHeadModel(cfg).eval().double(), ByteTokenizer(), "gpt2-tiny", "memory")
    ids = lm.encode("To be, or not to be")
    with torch.no_grad():
        _, cache = lm.run_with_cache(ids)
        for name in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.1.attn.hook_v",
                     "blocks.1.hook_resid_mid", "blocks.1.attn.hook_z"):
            assert torch.equal(lm.run_with_hooks(ids, fwd_hooks=[(name, lambda t, h: t.clone())]),
                               lm.logits(ids)), name
    assert cache["blocks.0.attn.hook_q"].shape == (1, ids.shape[1], 4, 8)
    mid = cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"]
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid"], mid, rtol=0, atol=1e-12)
    # q . k of the captured tensors reproduces the captured pattern (GPT-2 scales by 1/sqrt(d_head))
    q, k = cache["blocks.0.attn.hook_q"][0], cache["blocks.0.attn.hook_k"][0]  # (T, H, D) each
    scores = torch.einsum("qhd,khd->hqk", q, k) / 8 ** 0.5
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(scores.softmax(-1), cache["blocks.0.attn.hook_pattern"][0], rtol=0, atol=1e-12)
    _assert_batch_matches_singles(lm, lm.encode(TEXTS))
