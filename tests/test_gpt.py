"""attnlab's GPT: KV cache against a full forward, L2 scores against an eager twin, fused against reference,
save/load, hooks, the architecture switches and their validation. Tiny configs only."""

from __future__ import annotations

import json
import math

import pytest
import torch

from attnlab.attention import Clipped, ScalableSoftmax, Sinks, attention, resolve_normalizer
from attnlab.errors import ConfigError, ModelNotFoundError
from attnlab.models.gpt import GPT, GPTConfig, KVCache
from attnlab.models.gpt_parts import (
    SigmaReparamLinear,
    head_diversity_penalty,
    l2_augment,
    logdet_penalty,
)
from attnlab.models.hooks import attention_override, record_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(kw: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=64, n_layers=2, d_model=32, n_heads=4, context=32)
    base.update(kw)
    return GPTConfig(**base)


VARIANTS = [
    {},
    {"normalizer": "softmax1"},
    {"normalizer": "sinks"},
    {"normalizer": "ssmax", "score": "l2"},
    {"normalizer": "adaptive", "n_kv_heads": 2},
    {"normalizer": "clipped", "gated_attention": True, "sigma_reparam": True},
    {"span": "window(6)", "norm_position": "post", "norm": "layernorm", "init": "orthogonal"},
    {"mlp": False, "skip": False, "norm": "none", "depth_scaled_residual": True, "tie_embeddings": False},
]


def _perturb(model: GPT) -> GPT:
    """Move the learned normalizer parameters off their init so the tests see them."""
    with torch.no_grad():
        for block in model.blocks:
            for name in ("normalizer_logits", "normalizer_s", "gate_bias"):
                if hasattr(block.attn, name):
                    getattr(block.attn, name).add_(torch.linspace(-0.5, 0.7, block.attn.n_heads))
    return model


@pytest.mark.parametrize("kw", VARIANTS, ids=_ids)
def test_cached_logits_match_uncached(kw):
    model = _perturb(GPT(tiny(**kw))).eval()
    idx = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.empty(2)
        parts = [model(idx[:, :5], cache=cache)[0]]  # a prompt, then one token at a time
        for t in range(5, 13):
            parts.append(model(idx[:, t:t + 1], cache=cache)[0])
    assert len(cache) == 13 and cache.keys[0].shape == (2, model.config.kv_heads, 13, 8)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_cache_positions_are_explicit():
    """Keys are cached before RoPE with their positions, so re-numbering them (StreamingLLM) is possible."""
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        cache = KVCache.empty(2)
        model(idx[:, :5], cache=cache)
        assert cache.positions.tolist() == [0, 1, 2, 3, 4] and cache.next_position() == 5
        shifted = KVCache.empty(2)
        model(idx[:, :5], cache=shifted, positions=torch.arange(100, 105))
        # RoPE is relative: shifting every position alike leaves the logits unchanged.
        a, _ = model(idx[:, 5:], cache=cache)
        b, _ = model(idx[:, 5:], cache=shifted)
    assert shifted.positions.tolist() == list(range(100, 106))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _eager_l2(q, k, v, normalizer, scale):
    """-||q_i - k_j||^2 * scale scores from the definition, then the normalizer's reference weights."""
    scores = -((q[..., :, None, :] - k[..., None, :, :]) ** 2).sum(-1) * scale  # (B, H, T, T)
    t = q.shape[-2]
    allowed = torch.ones(t, t, dtype=torch.bool).tril()
    return resolve_normalizer(normalizer).weights(scores, allowed) @ v


@pytest.mark.parametrize("normalizer", ["softmax", "softmax1", "sinks", "clipped", "adaptive", "ssmax"])
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_l2_scores_exact_for_every_normalizer(normalizer, backend):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 9, 6, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, 9, 6, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 9, 6, generator=g, dtype=torch.float64)
    objects = {"sinks": Sinks(torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)),
               "clipped": Clipped(-0.1, 1.0),
               "ssmax": ScalableSoftmax(torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64))}
    norm = objects.get(normalizer, normalizer)
    scale = 1 / math.sqrt(6)
    qa, ka, va = l2_augment(q, k, v)
    out = attention(qa, ka, va, normalizer=norm, scale=scale, backend=backend)[..., :6]
    torch.testing.assert_close(out, _eager_l2(q, k, v, norm, scale), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kw", VARIANTS[:6], ids=_ids)
def test_fused_model_matches_reference_twin_float64(kw):
    """record_attention forces the reference (eager) path: logits must equal the fused path's."""
    model = _perturb(GPT(tiny(**kw))).double().eval()
    idx = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        fused, _ = model(idx)
        with record_attention() as store:
            ref, _ = model(idx)
    torch.testing.assert_close(fused, ref, atol=1e-10, rtol=1e-9)
    assert sorted(store) == ["blocks.0.attn.pattern", "blocks.1.attn.pattern"]
    assert store["blocks.0.attn.pattern"].shape == (2, 4, 11, 11)


def test_hooks_record_and_override():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 64, (1, 10))
    with torch.no_grad(), record_attention(layers=[1]) as store:
        base, _ = model(idx)
    pattern = store["blocks.1.attn.pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(1, 4, 10))
    assert torch.all(pattern.triu(1) == 0)  # causal
    with torch.no_grad(), attention_override(normalizer="softmax1"), record_attention() as store1:
        swapped, _ = model(idx)
    assert not torch.allclose(base, swapped)
    assert torch.all(store1["blocks.0.attn.pattern"].sum(-1) < 1)


def test_hidden_states_and_embeds_path():
    model = GPT(tiny())
    idx = torch.randint(0, 64, (2, 7))
    logits, loss, hidden = model(idx, idx, return_hidden=True)
    assert logits.shape == (2, 7, 64) and loss.ndim == 0
    assert len(hidden) == 2 and all(h.shape == (2, 7, 32) for h in hidden)
    emb = model.embed(idx).detach().requires_grad_(True)
    logits2, _ = model.forward_embeds(emb)
    torch.testing.assert_close(logits2, logits)
    logits2[0, -1].sum().backward()
    assert emb.grad[0].abs().sum() > 0 and emb.grad[1].abs().sum() == 0  # batch rows independent
    assert all(hasattr(b, "attn") and hasattr(b, "mlp") for b in model.blocks)
    assert all(b.mlp is None for b in GPT(tiny(mlp=False)).blocks)


def test_learned_parameters_get_gradients():
    for kw, names in [({"normalizer": "sinks"}, ["normalizer_logits"]),
                      ({"normalizer": "ssmax"}, ["normalizer_s"]),
                      ({"gated_attention": True}, ["gate_weight", "gate_bias"]),
                      ({"sigma_reparam": True}, ["q_proj.gamma", "o_proj.gamma"])]:
        model = GPT(tiny(**kw))
        idx = torch.randint(0, 64, (2, 9))
        model(idx, idx)[1].backward()
        for name in names:
            grad = model.get_parameter(f"blocks.0.attn.{name}").grad
            assert grad is not None and grad.abs().sum() > 0, (kw, name)


def test_sigma_reparam_bounds_spectral_norm():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(12, 20)
    layer.reset_sigma()
    exact = torch.linalg.matrix_norm(layer.weight, ord=2)
    torch.testing.assert_close(layer.gamma.detach(), exact, rtol=1e-4, atol=1e-6)  # starts as the plain layer
    with torch.no_grad():
        layer.gamma.fill_(1.7)
    w_hat = layer.weight * layer.gamma / layer.sigma()
    spectral = torch.linalg.matrix_norm(w_hat, ord=2)
    torch.testing.assert_close(spectral, torch.tensor(1.7), rtol=1e-4, atol=1e-6)


def test_aux_losses_formulas():
    same = torch.randn(2, 1, 5, 8).expand(2, 3, 5, 8)
    torch.testing.assert_close(head_diversity_penalty(same), torch.tensor(1.0))
    opposite = torch.randn(1, 1, 4, 6)
    pair = torch.cat([opposite, -opposite], 1)
    torch.testing.assert_close(head_diversity_penalty(pair), torch.tensor(-1.0))
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    unit = x / x.norm(dim=-1, keepdim=True)
    direct = -0.5 * torch.logdet(torch.eye(10, dtype=torch.float64)
                                 + 6 / (10 * 0.25) * unit @ unit.transpose(1, 2)) / 6
    torch.testing.assert_close(logdet_penalty(x), direct.mean())
    collapsed = torch.randn(1, 1, 6).expand(3, 10, 6).double()
    assert logdet_penalty(collapsed) > logdet_penalty(x)  # a rank-one stream is penalised more


def test_aux_losses_enter_the_training_loss():
    cfg = tiny(aux_head_diversity=0.5, aux_logdet=0.25)
    model = GPT(cfg)
    idx = torch.randint(0, 64, (2, 9))
    _, loss = model(idx, idx)
    parts = model.last_losses
    assert set(parts) == {"ce", "head_diversity", "logdet"}
    expected = parts["ce"] + 0.5 * parts["head_diversity"] + 0.25 * parts["logdet"]
    assert abs(loss.item() - expected) < 1e-5


def test_model_is_a_pure_function_of_config_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = GPT(tiny(seed=3)), GPT(tiny(seed=3))
    assert torch.rand(1) == before  # building a model did not consume the caller's random stream
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = GPT(tiny(seed=4))
    assert not torch.equal(a.wte.weight, c.wte.weight)


def test_save_and_load_roundtrip(tmp_path):
    model = _perturb(GPT(tiny(normalizer="sinks", sigma_reparam=True))).eval()
    model.save(tmp_path / "m")
    loaded = GPT.from_pretrained(tmp_path / "m").eval()
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "attnlab-gpt"


@pytest.mark.parametrize("normalizer, old, new", [("sinks", "sink_logits", "normalizer_logits"),
                                                  ("ssmax", "ssmax_s", "normalizer_s")])
def test_checkpoints_from_before_the_registry_load(tmp_path, normalizer, old, new):
    """Models saved before the normalizer registry kept these tensors under other names; they still load,
    through from_pretrained and through load_state_dict (training resume)."""
    from safetensors.torch import save_file

    model = _perturb(GPT(tiny(normalizer=normalizer))).eval()
    model.save(tmp_path / "m")
    state = {k.replace(new, old): v.contiguous() for k, v in model.state_dict().items()}
    assert f"blocks.0.attn.{old}" in state
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    idx = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        expected = model(idx)[0]
        torch.testing.assert_close(GPT.from_pretrained(tmp_path / "m")(idx)[0], expected, rtol=0, atol=0)
        fresh = GPT(tiny(normalizer=normalizer)).eval()
        fresh.load_state_dict(state)
        torch.testing.assert_close(fresh(idx)[0], expected, rtol=0, atol=0)


def test_load_fails_clearly(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no attnlab model in .*attnlab train"):
        GPT.from_pretrained(tmp_path / "nothing")
    GPT(tiny()).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["n_layrs"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unknown GPTConfig field.*n_layrs"):
        GPT.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("kw, match", [
    ({"d_model": 30, "n_heads": 4}, "d_model=30 is not divisible by n_heads=4"),
    ({"normalizer": "softmax2"}, "normalizer='softmax2'.*softmax1"),
    ({"span": "windw(3)"}, "span.*unknown span"),
    ({"norm": "batchnorm"}, "norm='batchnorm'.*rmsnorm"),
    ({"score": "l2", "n_kv_heads": 2}, "score='l2'.*n_kv_heads"),
    ({"n_kv_heads": 3}, "n_kv_heads=3 must divide"),
    ({"normalizer": "clipped", "clip_gamma": 1.0, "clip_zeta": 0.5},
     r"clip_gamma=1.0, clip_zeta=0.5\).*gamma < zeta"),
    ({"n_layers": 0}, "n_layers must be a positive integer"),
])
def test_config_fails_clearly(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kw)


def test_bad_token_ids_fail_clearly():
    model = GPT(tiny())
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        model(torch.tensor([[1, 64]]))
