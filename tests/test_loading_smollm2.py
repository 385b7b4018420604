"""SmolLM2-135M-Instruct through load_model (integration tier: `pytest -m realmodel`).

The first run converts the GGUF into the cache (~35 s alone on 2 cores, more when busy); later runs load
the cached folder in a few seconds. All tests share one loaded model.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.models.adapter import LoadedModel
from attnlab.models.hooks import attention_override
from attnlab.models.loading import load_model

pytestmark = pytest.mark.realmodel

HAMLET = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
          "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_model("smollm2-135m")


def test_config(smollm2: LoadedModel) -> None:
    lm = smollm2
    assert (lm.name, lm.kind) == ("smollm2-135m", "hf") and lm.source.endswith(".gguf")
    assert (lm.n_layers, lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.d_model) == (30, 9, 3, 64, 576)
    assert lm.vocab_size == 49152 and lm.max_context == 8192 and lm.rope_positions_supported()
    assert lm.model.config.rope_parameters["rope_theta"] == 100000.0
    assert lm.model.config._attn_implementation == "attnlab" and not lm.model.training
    assert load_model("smollm2").source == lm.source  # the alias


def test_attnlab_attention_equals_sdpa(smollm2: LoadedModel) -> None:
    ids = smollm2.encode(HAMLET)
    with torch.no_grad():
        ours = smollm2.logits(ids)
        smollm2.model.set_attn_implementation("sdpa")
        try:
            ref = smollm2.logits(ids)
        finally:
            smollm2.model.set_attn_implementation("attnlab")
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_loss_on_shakespeare_is_sane(smollm2: LoadedModel) -> None:
    ids = smollm2.encode(HAMLET)
    assert smollm2.decode(ids) == HAMLET
    with torch.no_grad():
        logits = smollm2.logits(ids)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert loss < 5.0, f"mean next-token loss {loss:.2f} nats: the model or tokenizer is broken"
    assert loss < math.log(smollm2.vocab_size) / 2  # far better than uniform (10.8 nats)
    with torch.no_grad(), attention_override(normalizer="softmax1"):
        swapped = torch.nn.functional.cross_entropy(smollm2.logits(ids)[0, :-1], ids[0, 1:]).item()
    assert swapped != pytest.approx(loss, abs=1e-3)  # the swap reaches the real model


def test_capture_on_the_real_model(smollm2: LoadedModel) -> None:
    ids = smollm2.encode("Fair is foul, and foul is fair.")
    T = ids.shape[1]
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(ids, layers=[0, 29])
    assert cache["blocks.29.attn.pattern"].shape == (1, 9, T, T)
    assert cache["blocks.0.hook_resid_pre"].shape == (1, T, 576)
    torch.testing.assert_close(cache["blocks.0.attn.pattern"].sum(-1), torch.ones(1, 9, T))


def test_greedy_generation_with_cache_matches_sdpa(smollm2: LoadedModel) -> None:
    ids = smollm2.encode("The king said")
    out = {}
    for impl in ("sdpa", "attnlab"):
        smollm2.model.set_attn_implementation(impl)
        with torch.no_grad():
            out[impl] = smollm2.model.generate(ids, max_new_tokens=6, do_sample=False)
    smollm2.model.set_attn_implementation("attnlab")
    assert torch.equal(out["attnlab"], out["sdpa"])


@pytest.mark.slow
def test_cached_folder_equals_the_gguf(smollm2: LoadedModel) -> None:
    """The converted cache holds exactly what transformers reads from the GGUF (takes ~35 s or more)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, GgufConfig

    gguf = Path(smollm2.source)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                  quantization_config=GgufConfig(dequantize=True)).eval()
    direct.set_attn_implementation("sdpa")
    ids = smollm2.encode(HAMLET)
    with torch.no_grad():
        torch.testing.assert_close(smollm2.logits(ids), direct(ids).logits, atol=1e-4, rtol=1e-4)
