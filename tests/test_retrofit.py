"""`attnlab.retrofit`: a HF causal LM keeps its class and gets attnlab attention, learned per-layer
parameters, a gate and a span, recorded in its config so save -> `attnlab.load_model` round-trips.

Tiny random Llama in float64 (hidden 32, 4 query / 2 KV heads, 2 layers). References: HF's "sdpa" in
float64 (exact up to rounding, 1e-10), never float64 "eager", whose softmax runs in float32.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import attnlab
from attnlab.attention import Normalizer, unregister_normalizer
from attnlab.attention.base import reference_attend
from attnlab.errors import AttnlabError, ConfigError, ModelError
from attnlab.models.hooks import attention_override, record_attention
from attnlab.models.retrofit import RECORD_KEY, SINK_INIT, RetrofitState, retrofit_parameters

VOCAB, HEADS, HIDDEN, T = 64, 4, 32, 10
EXACT = dict(atol=1e-10, rtol=1e-10)  # float64 against float64 (sdpa or attnlab's own path)


@pytest.fixture(scope="module")
def base(one_thread) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=HEADS, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(torch.float64).eval()


@pytest.fixture
def model(base: LlamaForCausalLM) -> LlamaForCausalLM:
    return copy.deepcopy(base)


def _ids(seed: int = 1, batch: int = 2, length: int = T) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits(model: torch.nn.Module, ids: torch.Tensor, **kw: object) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def _sdpa(base: LlamaForCausalLM, ids: torch.Tensor, **kw: object) -> torch.Tensor:
    ref = copy.deepcopy(base)
    ref.set_attn_implementation("sdpa")
    return _logits(ref, ids, **kw)


def _perturb(model: torch.nn.Module, seed: int = 5) -> None:
    """Non-default sink logits and gate weights, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in retrofit_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


# -- starting from the pretrained function ----------------------------------------------------------------
def test_softmax_retrofit_keeps_the_logits(base: LlamaForCausalLM, model: LlamaForCausalLM) -> None:
    ids = _ids()
    want = _sdpa(base, ids)
    out = attnlab.retrofit(model)
    assert out is model and type(model) is LlamaForCausalLM
    torch.testing.assert_close(_logits(model, ids), want, **EXACT)
    assert retrofit_parameters(model) == {}


def test_gate_starts_exactly_open(base: LlamaForCausalLM) -> None:
    """Tolerance stated in retrofit's docstring: the gate is exactly 1 at init, so the gated model's logits
    equal the ungated one's bit for bit (and sdpa's to 1e-10)."""
    ids = _ids()
    gated = _logits(attnlab.retrofit(copy.deepcopy(base), gated=True), ids)
    assert torch.equal(gated, _logits(attnlab.retrofit(copy.deepcopy(base)), ids))
    torch.testing.assert_close(gated, _sdpa(base, ids), **EXACT)
    sinks_gated = _logits(attnlab.retrofit(copy.deepcopy(base), "sinks", gated=True), ids)
    assert torch.equal(sinks_gated, _logits(attnlab.retrofit(copy.deepcopy(base), "sinks"), ids))


def test_sink_init_is_close_to_softmax_and_zero_is_softmax1(base: LlamaForCausalLM) -> None:
    ids = _ids()
    plain = attnlab.retrofit(copy.deepcopy(base))
    softmax = _logits(plain, ids)
    with attention_override(normalizer="softmax1"):
        softmax1 = _logits(plain, ids)
    near = _logits(attnlab.retrofit(copy.deepcopy(base), "sinks"), ids)
    # A finite sink always moves some mass: close to softmax at SINK_INIT = -12, but not equal.
    assert 0 < (near - softmax).abs().max() < 1e-3
    zero = _logits(attnlab.retrofit(copy.deepcopy(base), "sinks", sink_init=0.0), ids)
    torch.testing.assert_close(zero, softmax1, **EXACT)
    per_head = attnlab.retrofit(copy.deepcopy(base), "sinks", sink_init=torch.tensor([0.0, -1.0, -2.0, 1.0]))
    assert per_head.model.layers[1].self_attn.attnlab.learned["logits"].tolist() == [0.0, -1.0, -2.0, 1.0]


def test_parameters_are_real_submodules_and_the_choice_is_recorded(model: LlamaForCausalLM) -> None:
    attnlab.retrofit(model, "sinks", gated=True, span="window(4)")
    params = dict(model.named_parameters())
    for i in range(2):
        pre = f"model.layers.{i}.self_attn.attnlab"
        assert params[f"{pre}.learned.logits"].shape == (HEADS,)
        assert params[f"{pre}.gate.weight"].shape == (HEADS, HIDDEN)
        assert params[f"{pre}.gate.bias"].shape == (HEADS,)
        assert (params[f"{pre}.learned.logits"] == SINK_INIT).all()
        assert isinstance(model.model.layers[i].self_attn.attnlab, RetrofitState)
    added = retrofit_parameters(model)
    assert len(added) == 6 and all(p.dtype == torch.float64 and p.requires_grad for p in added.values())
    assert model.config.attnlab_retrofit == {"normalizer": "sinks", "options": {}, "gated": True,
                                             "span": "window(4)", "version": 1}
    assert model.config._attn_implementation == "attnlab"


def test_options_reach_the_normalizer_and_are_recorded(base: LlamaForCausalLM) -> None:
    ids = _ids()
    plain = attnlab.retrofit(copy.deepcopy(base))
    with attention_override(normalizer=attnlab.Clipped(gamma=-0.2)):
        want = _logits(plain, ids)
    clipped = attnlab.retrofit(copy.deepcopy(base), "clipped", options={"gamma": -0.2})
    torch.testing.assert_close(_logits(clipped, ids), want, **EXACT)
    assert clipped.config.attnlab_retrofit["options"] == {"gamma": -0.2}


class _Tempered(Normalizer):
    """A user normalizer with a learned per-head temperature exp(log_tau), softmax at init."""

    name = "tempered"

    @classmethod
    def learned_parameters(cls, heads: int) -> dict[str, torch.Tensor]:
        return {"log_tau": torch.zeros(heads)}

    def __init__(self, log_tau: torch.Tensor) -> None:
        self.log_tau = log_tau

    def weights(self, scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        tau = self.log_tau.to(scores.dtype).exp().view(1, -1, 1, 1)
        return torch.softmax((scores / tau).masked_fill(~allowed, float("-inf")), dim=-1)

    def attend(self, p: object) -> torch.Tensor:
        return reference_attend(self, p)


@pytest.fixture
def tempered() -> str:
    attnlab.register_normalizer("tempered_test", _Tempered)
    yield "tempered_test"
    unregister_normalizer("tempered_test")


def test_a_registered_normalizer_learns_and_round_trips(base: LlamaForCausalLM, tempered: str,
                                                        tmp_path) -> None:
    ids = _ids()
    model = attnlab.retrofit(copy.deepcopy(base), tempered)
    param = model.model.layers[0].self_attn.attnlab.learned["log_tau"]
    assert param.shape == (HEADS,) and param.dtype == torch.float64
    torch.testing.assert_close(_logits(model, ids), _sdpa(base, ids), **EXACT)  # exp(0) = 1: softmax
    model(input_ids=ids, labels=ids).loss.backward()
    assert param.grad is not None and param.grad.abs().sum() > 0
    with torch.no_grad():
        param.fill_(0.4)
    want = _logits(model, ids)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(attnlab.load_model(tmp_path, dtype=torch.float64).model, ids), want,
                               **EXACT)


# -- training ------------------------------------------------------------------------------------------
def test_training_moves_sink_logits_and_gates(model: LlamaForCausalLM) -> None:
    model.requires_grad_(False)  # the study's setting: train only what retrofit added
    attnlab.retrofit(model, "sinks", gated=True, sink_init=-2.0).train()
    params = retrofit_parameters(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=0.05)
    ids = _ids(seed=7, batch=4)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
        opt.step()
        losses.append(out.loss.item())
    assert all(not torch.equal(p, before[n]) for n, p in params.items())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for n, p in model.named_parameters() if n not in params)


# -- spans, masks, caches, hooks --------------------------------------------------------------------------
def test_span_equals_the_same_span_as_an_override(base: LlamaForCausalLM) -> None:
    ids = _ids()
    plain = attnlab.retrofit(copy.deepcopy(base))
    with attention_override(span="window(3)"):
        want = _logits(plain, ids)
    got = _logits(attnlab.retrofit(copy.deepcopy(base), span="window(3)"), ids)
    torch.testing.assert_close(got, want, **EXACT)
    assert (got - _logits(plain, ids)).abs().max() > 1e-4  # the window really drops keys


def test_span_is_intersected_with_the_padding_mask(model: LlamaForCausalLM) -> None:
    attnlab.retrofit(model, "sinks", gated=True, span=attnlab.SinkWindow(1, 3))
    _perturb(model)
    ids = _ids(seed=3, batch=2)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding: row 0 holds T - 4 real tokens
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    padded = _logits(model, ids, attention_mask=mask, position_ids=positions)
    alone = _logits(model, ids[:1, 4:])
    torch.testing.assert_close(padded[0, 4:], alone[0], **EXACT)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generation_with_a_kv_cache_equals_no_cache(model: LlamaForCausalLM, cache: str) -> None:
    """Decoding feeds the gate one query at a time; static caches send masks with empty key slots."""
    attnlab.retrofit(model, "sinks", gated=True, span="sinkwindow(1,4)")
    _perturb(model)
    ids = _ids(seed=4, batch=1, length=6)
    out = {}
    for use_cache in (True, False):
        with torch.no_grad():
            out[use_cache] = model.generate(
                input_ids=ids, max_new_tokens=5, do_sample=False, use_cache=use_cache, output_logits=True,
                return_dict_in_generate=True, pad_token_id=0,
                cache_implementation=cache if use_cache else None)
    assert torch.equal(out[True].sequences, out[False].sequences)
    for a, b in zip(out[True].logits, out[False].logits, strict=True):
        torch.testing.assert_close(a, b, **EXACT)
    assert all(s._gate_input is None for s in model.modules() if isinstance(s, RetrofitState))


def test_gate_input_is_cleared_when_attention_fails(model: LlamaForCausalLM) -> None:
    attnlab.retrofit(model, gated=True).train()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1  # attnlab attention refuses dropout: the call raises
    with pytest.raises(ConfigError, match="no dropout"):
        model(input_ids=_ids())
    assert all(s._gate_input is None for s in model.modules() if isinstance(s, RetrofitState))


def test_record_attention_and_override_work_on_top(base: LlamaForCausalLM) -> None:
    ids = _ids(batch=1)
    model = attnlab.retrofit(copy.deepcopy(base), "sinks", gated=True, sink_init=0.0)
    with record_attention() as store:
        _logits(model, ids)
    rows = store["blocks.0.attn.pattern"].sum(-1)
    assert rows.shape == (1, HEADS, T) and (rows < 1).all() and (rows > 0).all()  # the sink holds the rest
    with attention_override(normalizer="softmax"):
        swapped = _logits(model, ids)
    torch.testing.assert_close(swapped, _sdpa(base, ids), **EXACT)  # gate still 1: plain softmax again


def test_deep_copy_feeds_its_own_gate(model: LlamaForCausalLM) -> None:
    attnlab.retrofit(model, gated=True)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in retrofit_parameters(twin).values():
            p.fill_(0.3)
    ids = _ids()
    assert (_logits(twin, ids) - _logits(model, ids)).abs().max() > 1e-4


# -- save and load ------------------------------------------------------------------------------------------
class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_save_then_load_model_gives_the_same_logits(model: LlamaForCausalLM, tmp_path) -> None:
    attnlab.retrofit(model, "sinks", gated=True, span="sinkwindow(1,5)")
    _perturb(model)
    ids = _ids()
    want = _logits(model, ids)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[RECORD_KEY]["normalizer"] == "sinks"
    # transformers logs its load report (unexpected keys) on its own logger, which does not propagate.
    seen = _Messages()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(seen)
    try:
        lm = attnlab.load_model(tmp_path, dtype=torch.float64)
    finally:
        hf_logger.removeHandler(seen)
    assert not [m for m in seen.messages if "UNEXPECTED" in m or "attnlab" in m], seen.messages
    assert type(lm.model) is LlamaForCausalLM
    assert lm.model.config.attnlab_retrofit == model.config.attnlab_retrofit
    loaded = retrofit_parameters(lm.model)
    assert loaded.keys() == retrofit_parameters(model).keys()
    assert all(torch.equal(loaded[n], p) for n, p in retrofit_parameters(model).items())
    assert torch.equal(_logits(lm.model, ids), want)


def test_load_refuses_weights_that_do_not_match_the_record(model: LlamaForCausalLM, tmp_path) -> None:
    attnlab.retrofit(model, "sinks")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[RECORD_KEY]["gated"] = True  # the record asks for gates the weights do not hold
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"weights do not match config.json \(missing "
                                         r"model.layers.0.self_attn.attnlab.gate.bias"):
        attnlab.load_model(tmp_path, dtype=torch.float64)
    cfg[RECORD_KEY] = {**cfg[RECORD_KEY], "gated": False, "version": 99}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="version 99 is newer"):
        attnlab.load_model(tmp_path, dtype=torch.float64)


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_fails_clearly(model: LlamaForCausalLM) -> None:
    with pytest.raises(ConfigError, match="unknown normalizer 'nope'; registered normalizers: softmax, sof"):
        attnlab.retrofit(model, "nope")
    with pytest.raises(ConfigError, match="registered normalizer name, not the object"):
        attnlab.retrofit(model, attnlab.Clipped())
    with pytest.raises(ConfigError, match="sink_init is for a normalizer with learned sink logits"):
        attnlab.retrofit(model, "softmax", sink_init=-5.0)
    with pytest.raises(ConfigError, match="one value per query head"):
        attnlab.retrofit(model, "sinks", sink_init=torch.zeros(3))
    with pytest.raises(ConfigError, match="has no setting 'beta'; it takes: gamma, zeta"):
        attnlab.retrofit(model, "clipped", options={"beta": 1.0})
    with pytest.raises(ConfigError, match="'logits' is a learned parameter"):
        attnlab.retrofit(model, "sinks", options={"logits": 0.0})
    with pytest.raises(ConfigError, match="retrofit span must be causal, window"):
        attnlab.retrofit(model, span="full")
    with pytest.raises(ConfigError, match="unknown span"):
        attnlab.retrofit(model, span="windw(4)")
    with pytest.raises(ConfigError, match="gated must be True or False"):
        attnlab.retrofit(model, gated="yes")
    assert retrofit_parameters(model) == {} and RECORD_KEY not in model.config.to_dict()  # nothing half-done


def test_retrofitting_twice_is_refused(model: LlamaForCausalLM) -> None:
    attnlab.retrofit(model, "sinks")
    with pytest.raises(ConfigError, match="already retrofitted .*'sinks'.*fresh copy"):
        attnlab.retrofit(model, "softmax1")


def test_unsupported_models_fail_clearly() -> None:
    class Legacy(LlamaForCausalLM):
        _supports_attention_backend = False

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2)
    with pytest.raises(AttnlabError, match="does not route its attention.*supported: llama"):
        attnlab.retrofit(Legacy(cfg))
    with pytest.raises(ConfigError, match="takes a Hugging Face causal LM"):
        attnlab.retrofit(torch.nn.Linear(2, 2))


def test_a_model_with_its_own_sinks_is_refused() -> None:
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_local_experts=2,
                       num_experts_per_tok=1, sliding_window=4)
    with pytest.raises(ConfigError, match="already learns attention sinks of its own"):
        attnlab.retrofit(GptOssForCausalLM(cfg))


def test_a_loaded_model_wrapper_is_pointed_at_its_model(model: LlamaForCausalLM) -> None:
    from attnlab.models.adapter import from_hf

    lm = from_hf(model, None, name="tiny", source="test")
    with pytest.raises(ConfigError, match="pass loaded.model"):
        attnlab.retrofit(lm)


# -- the real model ---------------------------------------------------------------------------------------
@pytest.mark.realmodel
def test_smollm2_retrofits_start_from_the_pretrained_function() -> None:
    lm = attnlab.load_model("smollm2")
    ids = lm.encode("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer")
    want = _logits(lm.model, ids)
    sinks = attnlab.retrofit(copy.deepcopy(lm.model), "sinks")
    near = _logits(sinks, ids)
    del sinks
    attnlab.retrofit(lm.model, gated=True)
    assert len(retrofit_parameters(lm.model)) == 2 * lm.n_layers
    # Same kernel path as before the retrofit and a gate of exactly 1: bit for bit.
    assert torch.equal(_logits(lm.model, ids), want)
    # The sink default's documented cost (SINK_INIT's table): measured 0.03 in the logits, 2e-4 nats.
    loss = torch.nn.functional.cross_entropy
    change = loss(near[0, :-1], ids[0, 1:]) - loss(want[0, :-1], ids[0, 1:])
    assert 0 < (near - want).abs().max() < 0.1 and abs(change) < 1e-3
