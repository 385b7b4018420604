"""One capture path (`LoadedModel.capture` / `run_with_cache`) and one summary (`attnlab.diagnose.summary`).

Integration tier: the capture on a tiny GPT and a tiny random HF Llama against the hook-and-record code the
report, the diagnostics and the explorer used to run each on their own, and against HF's own hidden states
and eager attention weights; a retrofitted Llama. Unit tier: every summary key against a direct formula on
hand-made tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from attnlab.data.tokenizers import ByteTokenizer
from attnlab.diagnose._forward import residual_stream
from attnlab.diagnose.summary import ATTENTION_KEYS, null_sink_mass, summarize
from attnlab.errors import AttnlabError
from attnlab.models.adapter import LoadedModel, from_gpt, from_hf
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.hookpoints import canonical
from attnlab.models.hooks import record_attention

pytestmark = pytest.mark.usefixtures("one_thread")

T, VOCAB, LAYERS, HEADS = 9, 64, 2, 4


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval().to(torch.float64)


@pytest.fixture(scope="module")
def models() -> dict[str, LoadedModel]:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=VOCAB, n_layers=LAYERS, d_model=32, n_heads=HEADS, n_kv_heads=2,
                        context=64))
    return {"llama": from_hf(_llama(), None, "llama", "memory"),
            "gpt": from_gpt(gpt.eval().double(), ByteTokenizer(), "gpt", "memory")}


def _ids(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def _old_capture(lm: LoadedModel, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The capture code the adapter, the explorer and diagnose/_forward.py each held before: forward hooks
    on the blocks plus record_attention around one forward."""
    store: dict[str, torch.Tensor] = {}

    def pre(i: int):
        def hook(_m, args, kwargs):
            store[f"blocks.{i}.hook_resid_pre"] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def post(i: int):
        def hook(_m, _args, out):
            store[f"blocks.{i}.hook_resid_post"] = (out[0] if isinstance(out, tuple) else out).detach()
        return hook

    handles = []
    for i, block in enumerate(lm.blocks()):
        handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(block.register_forward_hook(post(i)))
    try:
        with record_attention() as rec:
            logits = lm.logits(ids)
    finally:
        for h in handles:
            h.remove()
    store.update(rec)
    return logits, store


# -- the capture ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_capture_equals_the_old_hook_paths_bit_for_bit(models, kind):
    lm = models[kind]
    ids = _ids()
    with torch.no_grad():
        old_logits, old = _old_capture(lm, ids)
        logits, cache = lm.run_with_cache(ids)
    assert torch.equal(logits, old_logits)
    # every old key is there (the pattern under TransformerLens's hook_pattern, the old name an alias),
    # next to the points TransformerLens has and the old capture did not (q, k, v, z, attn_out, ...)
    assert {canonical(n) for n in old} | {"ln_final.hook_normalized"} <= set(cache)
    assert {n.split(".", 2)[-1] for n in set(cache) - {canonical(n) for n in old}} == {
        "hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "hook_attn_out",
        "hook_resid_mid", "hook_mlp_out"}
    for name, t in old.items():
        assert torch.equal(cache[name], t), name
    assert cache["blocks.0.attn.pattern"].shape == (2, HEADS, T, T)
    assert cache["blocks.1.hook_resid_post"].shape == (2, T, 32)
    # diagnose's residual_stream (stops after the last block) reads the same stream through capture()
    with torch.no_grad():
        _, plain = lm.run_with_cache(ids, attention=False)
    stream = residual_stream(lm, ids)
    expected = [plain["blocks.0.hook_resid_pre"]]
    expected += [plain[f"blocks.{i}.hook_resid_post"] for i in range(LAYERS)]
    assert all(torch.equal(a, b) for a, b in zip(stream, expected, strict=True))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_capture_matches_hf_hidden_states_and_eager_weights():
    lm = from_hf(_llama(), None, "llama", "memory")
    ids = _ids()
    with torch.no_grad():
        _, cache = lm.run_with_cache(ids, attention=False)
        hidden = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        _, with_weights = lm.run_with_cache(ids)
        lm.model.set_attn_implementation("eager")
        eager = lm.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    for i in range(LAYERS):  # HF's hidden_states[i] is block i's input; the last one is after the final norm
        assert torch.equal(cache[f"blocks.{i}.hook_resid_pre"], hidden[i])
    assert torch.equal(cache["ln_final.hook_normalized"], hidden[LAYERS])
    for i in range(LAYERS):  # HF eager runs its softmax in float32 even in a float64 model
        torch.testing.assert_close(with_weights[f"blocks.{i}.attn.pattern"], eager[i], atol=1e-6, rtol=0)


def test_capture_without_attnlab_attention_fails_clearly():
    lm = from_hf(_llama(), None, "llama", "memory")
    lm.model.set_attn_implementation("eager")  # attention no longer goes through attnlab's door
    with pytest.raises(AttnlabError, match=r"no attention weights were recorded for layer\(s\) \[0, 1\]"):
        lm.run_with_cache(_ids())
    _, cache = lm.run_with_cache(_ids(), attention=False)
    assert "blocks.1.hook_resid_post" in cache


def test_capture_context_records_any_forward_and_keeps_the_graph(models):
    lm = models["llama"]
    embeds = lm.embed(_ids(1)).detach().requires_grad_(True)
    with lm.capture(attention=False, detach=False) as cache:
        lm.forward_embeds(embeds)
    cache["blocks.1.hook_resid_post"].sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    with lm.capture(layers=[1]) as cache, torch.no_grad():
        lm.logits(_ids())
    assert {k for k in cache if k.startswith("blocks.")} == {
        "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.attn.pattern"}
    with pytest.raises(ValueError, match="layer 5 out of range"), lm.capture(layers=[5]):
        pass


@pytest.mark.parametrize("sink", [30.0, -30.0])
def test_retrofitted_llama_captures_and_shows_the_null_sink(sink):
    from attnlab.models.retrofit import retrofit

    plain = from_hf(_llama(), None, "plain", "memory")
    lm = from_hf(retrofit(_llama(), "sinks", sink_init=sink), None, "sinks", "memory")
    ids = _ids()
    with torch.no_grad():
        _, base = plain.run_with_cache(ids)
        _, cache = lm.run_with_cache(ids)
    assert set(cache) == set(base)
    s, s0 = summarize(cache), summarize(base)
    assert abs(s0["null_sink_mass"]) < 1e-12  # softmax rows sum to 1
    if sink > 0:  # a sink logit far above every score takes (nearly) all the mass off the tokens
        assert s["null_sink_mass"] > 0.999 and s["first_token_attn"] < 1e-3
        assert all(m > 0.999 for row in s["null_sink_mass_heads"] for m in row)
    else:  # far below: softmax again, the same blocks and weights as the model without the retrofit
        assert abs(s["null_sink_mass"]) < 1e-9
        for name in base:
            torch.testing.assert_close(cache[name], base[name], atol=1e-9, rtol=0)


# -- the summary ------------------------------------------------------------------------------------------

B, TT, D = 2, 3, 3
# Per layer and head: planted token-0 weight of the rows after position 0, and each row's total weight
# (< 1: the rest sits on a null sink, as with softmax1 / learned sinks).
FIRST = ((0.6, 0.1), (0.35, 0.05), (0.2, 0.29))
TOTAL = ((1.0, 1.0), (0.8, 0.9), (0.5, 1.0))
GROWTH = 2.0


def _pattern(first: tuple[float, ...], total: tuple[float, ...]) -> torch.Tensor:
    p = torch.zeros(B, len(first), TT, TT, dtype=torch.float64)
    for b in range(B):
        for h, (f, s) in enumerate(zip(first, total)):
            p[b, h, 0, 0] = s
            for i in range(1, TT):
                p[b, h, i, 0] = f + 0.01 * b
                p[b, h, i, 1:i + 1] = (s - f - 0.01 * b) / i
    return p


def _hand_cache() -> dict[str, torch.Tensor]:
    seqs = torch.tensor([[[3.0, 4.0, 0.0], [1.0, -2.0, 2.0], [0.0, 1.0, -1.0]],
                         [[9.0, 0.5, -0.5], [2.0, 1.0, 0.0], [-1.0, 0.0, 3.0]]], dtype=torch.float64)
    cache = {"blocks.0.hook_resid_pre": seqs * 1e-3}  # a tiny embedding: its jump must not enter the growth
    for layer in range(3):
        cache[f"blocks.{layer}.hook_resid_post"] = seqs * GROWTH ** layer
        cache[f"blocks.{layer}.attn.pattern"] = _pattern(FIRST[layer], TOTAL[layer])
    return cache


def _direct_kurtosis(vals: list[float]) -> float:
    mu = sum(vals) / len(vals)
    m2 = sum((v - mu) ** 2 for v in vals) / len(vals)
    return sum((v - mu) ** 4 for v in vals) / len(vals) / m2 ** 2


def _direct_uniformity(x: torch.Tensor) -> float:
    def comp(a: torch.Tensor) -> float:
        cols = max(sum(abs(float(a[i, j])) for i in range(a.shape[0])) for j in range(a.shape[1]))
        rows = max(sum(abs(float(a[i, j])) for j in range(a.shape[1])) for i in range(a.shape[0]))
        return math.sqrt(cols * rows)
    return comp(x - x.mean(dim=0, keepdim=True)) / comp(x)


def _direct_effective_rank(x: torch.Tensor) -> float:
    s = torch.linalg.svdvals(x)
    p = s / s.sum()
    return math.exp(-sum(float(v) * math.log(float(v)) for v in p if v > 0))


def test_every_summary_key_against_a_direct_formula():
    cache = _hand_cache()
    s = summarize(cache)
    xs = [cache[f"blocks.{layer}.hook_resid_post"] for layer in range(3)]
    ps = [cache[f"blocks.{layer}.attn.pattern"] for layer in range(3)]
    expect: dict[str, object] = {}

    def norm(v: torch.Tensor) -> float:
        return math.sqrt(sum(float(a) ** 2 for a in v))

    expect["resid_norm"] = [sum(norm(x[b, t]) for b in range(B) for t in range(1, TT)) / (B * (TT - 1))
                            for x in xs]
    expect["resid_norm_last"] = expect["resid_norm"][-1]
    first_norm = sum(norm(xs[-1][b, 0]) for b in range(B)) / B
    expect["norm_first_over_rest_last"] = first_norm / expect["resid_norm"][-1]
    expect["norm_growth_per_layer"] = GROWTH  # blocks only: the 1e-3 embedding would give ~1000 for block 0
    expect["kurtosis"] = [sum(_direct_kurtosis(x[b].flatten().tolist()) for b in range(B)) / B for x in xs]
    expect["kurtosis_max"] = max(expect["kurtosis"])
    expect["kurtosis_mean"] = sum(expect["kurtosis"]) / 3
    expect["max_abs_layer"] = [9.0 * GROWTH ** layer for layer in range(3)]
    expect["max_abs"] = 9.0 * GROWTH ** 2
    expect["max_abs_where"] = {"layer": 2, "sequence": 1, "token": 0, "dim": 0}
    absolute = [[sorted(abs(v) for v in x[b].flatten().tolist()) for b in range(B)] for x in xs]
    ratios = [[a[-1] / a[4] for a in layer] for layer in absolute]  # 9 entries per sequence: median = 5th
    expect["massive_ratio_layer"] = [max(r) for r in ratios]
    expect["massive_ratio"] = max(expect["massive_ratio_layer"])
    expect["uniformity"] = [sum(_direct_uniformity(x[b]) for b in range(B)) / B for x in xs]
    expect["uniformity_last"] = expect["uniformity"][-1]
    expect["uniformity_excl_first_last"] = sum(_direct_uniformity(xs[-1][b, 1:]) for b in range(B)) / B
    expect["effective_rank"] = [sum(_direct_effective_rank(x[b]) for b in range(B)) / B for x in xs]
    expect["effective_rank_last"] = expect["effective_rank"][-1]
    # attention: queries after position 0 (i = 1, 2), mean over the batch
    heads = [[f + 0.005 for f in FIRST[layer]] for layer in range(3)]
    expect["first_token_heads"] = heads
    expect["first_token_layer"] = [sum(row) / 2 for row in heads]
    expect["first_token_attn"] = sum(a for row in heads for a in row) / 6
    expect["sink_rate_layer"] = [0.5, 0.5, 0.0]  # 0.605 and 0.355 exceed 0.3; 0.295 does not
    expect["sink_rate"] = 2 / 6
    expect["null_sink_mass_heads"] = [[1 - t for t in TOTAL[layer]] for layer in range(3)]
    expect["null_sink_mass_layer"] = [sum(1 - t for t in TOTAL[layer]) / 2 for layer in range(3)]
    expect["null_sink_mass"] = sum(1 - t for row in TOTAL for t in row) / 6

    def norm_entropy(p: torch.Tensor, b: int, h: int, i: int) -> float:
        row = [float(v) for v in p[b, h, i, :i + 1]]
        z = sum(row)
        return -sum(v / z * math.log(v / z) for v in row if v > 0) / math.log(i + 1)

    expect["entropy_layer"] = [sum(norm_entropy(p, b, h, i) for b in range(B) for h in range(2)
                                   for i in range(1, TT)) / (B * 2 * (TT - 1)) for p in ps]
    expect["entropy_norm"] = sum(expect["entropy_layer"]) / 3

    assert set(expect) == set(s)  # every key of the summary is checked here
    for key, want in expect.items():
        got = s[key]
        if isinstance(want, dict):
            assert got == want, key
        else:
            got_t, want_t = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
            assert torch.allclose(got_t, want_t, rtol=1e-12, atol=1e-12), (key, got, want)


def test_layer_kurtosis_pools_tokens_so_a_massive_token_shows():
    # Each token alone is a symmetric pair-shape (per-token kurtosis 1); token 0 is 100x the others. Only the
    # pooled kurtosis of the layer (the summary's definition) sees the outlier token.
    x = torch.tensor([[100.0, -100.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    s = summarize({"blocks.0.hook_resid_post": x.unsqueeze(0)})
    assert s["kurtosis"][0] == pytest.approx(_direct_kurtosis(x.flatten().tolist()), rel=1e-12)
    assert s["kurtosis_max"] > 3.0
    from attnlab.diagnose.outliers import kurtosis

    assert torch.allclose(kurtosis(x), torch.ones(4, dtype=torch.float64))


def test_summary_without_weights_and_bad_caches():
    cache = {k: v for k, v in _hand_cache().items() if "pattern" not in k}
    s = summarize(cache)
    assert all(s[k] is None for k in ATTENTION_KEYS) and s["norm_growth_per_layer"] == pytest.approx(GROWTH)
    with pytest.raises(ValueError, match="the cache has no blocks.0.hook_resid_post"):
        summarize({})
    with pytest.raises(ValueError, match=r"the cache has no 'blocks.3.hook_resid_post'"):
        summarize(cache, n_layers=4)
    with pytest.raises(ValueError, match="must have shape"):
        null_sink_mass(torch.ones(3, 3))
    with pytest.raises(ValueError, match="threshold must be in"):
        summarize(_hand_cache(), threshold=1.5)


def test_summary_of_a_softmax1_gpt_moves_mass_to_the_null_sink(models):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=VOCAB, n_layers=LAYERS, d_model=32, n_heads=HEADS, context=64,
                        normalizer="softmax1")).eval().double()
    lm = from_gpt(gpt, ByteTokenizer(), "softmax1", "memory")
    with torch.no_grad():
        _, cache = lm.run_with_cache(_ids())
    s = summarize(cache)
    p = cache["blocks.0.attn.pattern"]
    # softmax1: the null key's share of row i is 1 / (1 + sum_j e^{s_ij}) = 1 - sum_j p_ij > 0
    assert all(0 < m < 1 for row in s["null_sink_mass_heads"] for m in row)
    assert bool((p.sum(-1) < 1).all())


# -- the probes read the same summary -----------------------------------------------------------------------


def test_probes_are_the_summary_of_the_windows_and_carry_the_study_keys(models):
    from attnlab.experiments.offbyone import PER_LAYER, SCALARS
    from attnlab.experiments.probes import layer_probe

    lm = models["gpt"]
    windows = [_ids(1, seed) for seed in range(3)]
    out = layer_probe(lm, windows)
    with torch.no_grad():
        _, cache = lm.run_with_cache(torch.cat(windows))
    assert out == summarize(cache, LAYERS)
    model_level = {"val_loss", "quant_gap", "sensitivity_first_over_last", "lipschitz_max_len",
                   "lipschitz_exponent"}
    assert set(SCALARS) - model_level <= set(out)
    assert set(PER_LAYER) <= set(out) and all(len(out[k]) == LAYERS for k in PER_LAYER)
    with pytest.raises(ValueError, match="windows of one length"):
        layer_probe(lm, [_ids(1), _ids(1)[:, :4]])
