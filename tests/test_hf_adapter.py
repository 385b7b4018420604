"""LoadedModel over tiny HF models (five architectures) and attnlab's GPT: one interface, same answers."""

from __future__ import annotations

import pytest
import torch
from test_hf import ARCHS, HEADS, LAYERS, VOCAB, _tiny  # the tiny configs test_hf builds

from attnlab.data.tokenizers import ByteTokenizer
from attnlab.errors import DataError
from attnlab.models.adapter import LoadedModel, from_gpt, from_hf
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.hooks import record_attention

T = 9


@pytest.fixture(scope="module")
def wrapped() -> dict[str, LoadedModel]:
    torch.manual_seed(0)
    out = {arch: from_hf(_tiny(arch), None, arch, "memory") for arch in ARCHS}
    gpt = GPT(GPTConfig(vocab_size=VOCAB, n_layers=LAYERS, d_model=32, n_heads=HEADS, n_kv_heads=2,
                        context=64))
    out["attnlab"] = from_gpt(gpt.eval(), ByteTokenizer(), "gpt", "memory")
    return out


KINDS = [*ARCHS, "attnlab"]


def _ids(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_shape_attributes(wrapped: dict, kind: str) -> None:
    lm = wrapped[kind]
    assert lm.kind == ("attnlab" if kind == "attnlab" else "hf")
    assert (lm.n_layers, lm.n_heads, lm.d_model, lm.head_dim, lm.vocab_size) == (LAYERS, HEADS, 32, 8, VOCAB)
    expected_kv = {"llama": 2, "mistral": 2, "qwen2": 1, "gpt2": HEADS, "gpt_neox": HEADS, "attnlab": 2}[kind]
    assert lm.n_kv_heads == expected_kv and lm.max_context == 64
    assert len(lm.blocks()) == LAYERS and all(isinstance(b, torch.nn.Module) for b in lm.blocks())
    assert all(isinstance(lm.mlp(i), torch.nn.Module) for i in range(LAYERS))
    assert lm.rope_positions_supported() == (kind != "gpt2")  # GPT-2 has learned absolute positions
    with pytest.raises(ValueError, match="layer 5 out of range"):
        lm.mlp(5)


@pytest.mark.parametrize("kind", KINDS)
def test_run_with_cache_names_shapes_and_consistency(wrapped: dict, kind: str) -> None:
    lm = wrapped[kind]
    ids = _ids()
    with torch.no_grad():
        logits, cache = lm.run_with_cache(ids)
        plain = lm.logits(ids)
    torch.testing.assert_close(logits, plain)
    assert logits.shape == (2, T, VOCAB)
    for i in range(LAYERS):
        assert cache[f"blocks.{i}.hook_resid_pre"].shape == (2, T, 32)
        assert cache[f"blocks.{i}.hook_resid_post"].shape == (2, T, 32)
        pattern = cache[f"blocks.{i}.attn.pattern"]
        assert pattern.shape == (2, HEADS, T, T)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, HEADS, T))
        assert (pattern[..., torch.ones(T, T, dtype=torch.bool).triu(1)] == 0).all()
        if i + 1 < LAYERS:  # the stream leaving block i is the stream entering block i + 1
            torch.testing.assert_close(cache[f"blocks.{i + 1}.hook_resid_pre"],
                                       cache[f"blocks.{i}.hook_resid_post"])
    assert cache["ln_final.hook_normalized"].shape == (2, T, 32)
    assert not any(t.requires_grad for t in cache.values())


@pytest.mark.parametrize("kind", ["llama", "attnlab"])
def test_run_with_cache_layer_filter_and_no_attention(wrapped: dict, kind: str) -> None:
    lm = wrapped[kind]
    _, cache = lm.run_with_cache(_ids(), attention=False, layers=[1])
    captured = {k for k in cache if k.startswith("blocks.")}
    # attention=False: the points read outside attention (no pattern, z or scores)
    assert captured == {f"blocks.1.{n}" for n in ("hook_resid_pre", "attn.hook_q", "attn.hook_k",
                                                  "attn.hook_v", "hook_attn_out", "hook_resid_mid",
                                                  "hook_mlp_out", "hook_resid_post")}
    with pytest.raises(ValueError, match="out of range"):
        lm.run_with_cache(_ids(), layers=[7])


@pytest.mark.parametrize("kind", KINDS)
def test_embed_and_forward_embeds_match_logits_and_are_differentiable(wrapped: dict, kind: str) -> None:
    lm = wrapped[kind]
    ids = _ids(1, batch=1)
    embeds = lm.embed(ids).detach().requires_grad_(True)
    logits, hidden = lm.forward_embeds(embeds, output_hidden=True)
    torch.testing.assert_close(logits, lm.logits(ids))
    torch.testing.assert_close(lm.forward_embeds(embeds), logits)
    assert len(hidden) == LAYERS + 1 and all(h.shape == (1, T, 32) for h in hidden)
    _, cache = lm.run_with_cache(ids, attention=False)
    torch.testing.assert_close(hidden[0], cache["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(hidden[-1], cache[f"blocks.{LAYERS - 1}.hook_resid_post"])
    # d (last state) / d (an earlier embedding) flows: the Jacobian diagnostics rely on it. (Position 0 is
    # out of reach for the sliding-window models: 2 layers of window 4 see 6 positions back.)
    hidden[-1][0, -1].sum().backward()
    assert embeds.grad is not None and embeds.grad[0, -3].abs().sum() > 0


def test_gpt_hidden_states_match_its_own(wrapped: dict) -> None:
    lm = wrapped["attnlab"]
    ids = _ids(2, batch=1)
    with torch.no_grad():
        _, _, own = lm.model(ids, return_hidden=True)
        _, hidden = lm.forward_embeds(lm.embed(ids), output_hidden=True)
    for a, b in zip(hidden[1:], own, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["mistral", "attnlab"])
def test_patterns_through_the_adapter_equal_record_attention(wrapped: dict, kind: str) -> None:
    lm = wrapped[kind]
    ids = _ids(3)
    with torch.no_grad(), record_attention() as store:
        lm.logits(ids)
        _, cache = lm.run_with_cache(ids)
    for i in range(LAYERS):
        torch.testing.assert_close(cache[f"blocks.{i}.attn.pattern"], store[f"blocks.{i}.attn.pattern"])


def test_text_round_trip_and_bad_input(wrapped: dict) -> None:
    lm = wrapped["attnlab"]
    ids = lm.encode("Fair is foul")
    assert ids.dtype == torch.long and ids.shape == (1, 12) and lm.decode(ids) == "Fair is foul"
    assert lm.decode(ids[0].tolist()) == "Fair is foul"
    with pytest.raises(DataError, match="empty text"):
        lm.encode("")
    with pytest.raises(TypeError, match="takes a str"):
        lm.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one sequence"):
        lm.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="LongTensor"):
        lm.logits(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"embeds must have shape \(batch, tokens, 32\)"):
        lm.forward_embeds(torch.zeros(1, 3, 31))
    assert "layers=2" in repr(lm)
