"""StreamingCache: attnlab.stream policies through a stock `model.generate`, token for token StreamRunner's.

The reference is greedy decoding driven by `StreamRunner` (positions inside the cache, as StreamingLLM).
`generate` numbers tokens by their stream index instead and the cache re-positions the sinks. The model is
float64, but Hugging Face computes RoPE angles in float32 (at positions < 210 here: angle error < 210 *
2**-24 ~ 1.3e-5 rad against attention scores of size ~0.1, so < 2e-6 on a score) and `generate` returns
float32 logits (|logit| < 1: rounding < 6e-8). Measured: 3e-8; bound used: 1e-6, against top-2 gaps of
4e-4 and more, so a flipped token would be a real error.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, StoppingCriteria

from attnlab.errors import ConfigError
from attnlab.models.hf import use_attnlab_attention
from attnlab.stream import StreamingCache, StreamRunner, make_policy

VOCAB = 64
LOGIT_ATOL = 1e-6  # float32 RoPE angles and float32 generate logits (see the docstring)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(impl: str = "eager", *, seed: int = 0, context: int = 128,
         rope: dict | None = None) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    extra = {} if rope is None else {"rope_parameters": {"rope_theta": 10000.0, **rope}}
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None,
                      attn_implementation="eager" if impl == "attnlab" else impl, **extra)
    model = LlamaForCausalLM(cfg).double().eval()
    if impl == "attnlab":
        use_attnlab_attention(model)
    return model


def prompt(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def runner_greedy(runner: StreamRunner, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens (B, n) and their logits (B, n, V) from StreamRunner; the last token is not fed (as
    generate leaves it)."""
    logits = runner.feed(ids, last_only=True)[:, -1]
    toks, seen = [], []
    for i in range(n):
        seen.append(logits)
        toks.append(logits.argmax(-1, keepdim=True))
        if i < n - 1:
            logits = runner.feed(toks[-1], last_only=True)[:, -1]
    return torch.cat(toks, 1), torch.stack(seen, 1)


def generate(model: LlamaForCausalLM, cache: object, ids: torch.Tensor, n: int, **kw: object
             ) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.generate(ids, cache=cache, max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1).double()  # generate keeps float32


@pytest.mark.parametrize("impl", ["eager", "sdpa", "attnlab"])
def test_generate_equals_stream_runner_sinks(impl: str) -> None:
    model = tiny(impl)
    pol = make_policy("sinks", sinks=4, window=12)
    ids = prompt(10)
    want, want_logits = runner_greedy(StreamRunner(model, pol), ids, 60)
    got, got_logits = generate(model, StreamingCache(model, pol), ids, 60)
    assert got.tolist() == want.tolist()
    torch.testing.assert_close(got_logits, want_logits, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["window", "chunked", "full"])
def test_generate_equals_stream_runner_other_policies(name: str) -> None:
    model = tiny("sdpa")
    pol = make_policy(name, window=12, chunk=8)
    ids = prompt(6, batch=2)  # a batch of two streams of equal length
    want, want_logits = runner_greedy(StreamRunner(model, pol), ids, 40)
    got, got_logits = generate(model, StreamingCache(model, pol), ids, 40)
    assert got.tolist() == want.tolist()
    torch.testing.assert_close(got_logits, want_logits, atol=LOGIT_ATOL, rtol=0)


def test_sinks_differ_from_a_plain_cache_once_the_window_slides() -> None:
    """The equality above is not trivial: after sinks + window tokens the streamed logits leave plain
    generation's (which keeps everything), before that they are the same."""
    model = tiny()
    ids = prompt(10)
    _, plain = generate(model, None, ids, 30)
    _, streamed = generate(model, StreamingCache(model, make_policy("sinks", sinks=4, window=12)), ids, 30)
    # logits[i] predicts the token after stream position 9 + i; the first eviction is at position 16
    torch.testing.assert_close(streamed[:, :7], plain[:, :7], atol=LOGIT_ATOL, rtol=0)
    assert (streamed[:, 8:] - plain[:, 8:]).abs().amax() > 1e-2


class Record(StoppingCriteria):
    """Cache length, counted bytes and bytes of the storages it pins, after every generated token."""

    def __init__(self, cache: StreamingCache) -> None:
        self.cache, self.rows = cache, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: object) -> torch.Tensor:
        storages = {}
        for layer in self.cache.layers:
            for t in (layer.sink_k, layer.sink_v, layer.win_k, layer.win_v):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        self.rows.append((self.cache.seq_length, self.cache.nbytes(), sum(storages.values())))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_memory_is_flat_far_past_the_cache_and_the_context() -> None:
    model = tiny(context=64)
    cache = StreamingCache(model, make_policy("sinks", sinks=4, window=12))
    rec = Record(cache)
    ids = prompt(10)
    out = model.generate(ids, cache=cache, max_new_tokens=200, do_sample=False, stopping_criteria=[rec])
    assert out.shape[1] == 210 and cache.tokens_seen == 209 == cache.get_seq_length()
    late = rec.rows[20:]  # from stream position 30 on, the cache has been full for a while
    assert {r[0] for r in late} == {15}  # 4 sinks + 11 window keys between steps (the query makes 16)
    assert len({r[1] for r in late}) == 1
    assert max(r[2] for r in late) <= max(r[2] for r in rec.rows[20:40])  # nothing pinned grows


def test_long_prompt_is_refused_then_prefilled_exactly() -> None:
    model = tiny("eager")
    pol = make_policy("sinks", sinks=4, window=12)
    ids = prompt(40)
    cache = StreamingCache(model, pol)
    with pytest.raises(ConfigError, match=r"runs past what sinks\(4,12\) keeps.*cache\.prefill"):
        model.generate(ids, cache=cache, max_new_tokens=5, do_sample=False)
    assert cache.tokens_seen == 0  # refused before any layer changed
    cache.prefill(ids[:, :-1], max_step=16)
    want, want_logits = runner_greedy(StreamRunner(model, pol, max_step=16), ids, 30)
    got, got_logits = generate(model, cache, ids, 30)
    assert got.tolist() == want.tolist()
    torch.testing.assert_close(got_logits, want_logits, atol=LOGIT_ATOL, rtol=0)


def test_second_turn_continues_the_stream() -> None:
    """generate(whole stream so far, cache): the cache counts the tokens it has seen, so generate feeds
    only the new ones (here through prefill, since the new prompt is longer than one token)."""
    model = tiny("sdpa")
    pol = make_policy("sinks", sinks=2, window=10)
    first, second = prompt(8), prompt(5, seed=2)
    runner = StreamRunner(model, pol)
    want1, _ = runner_greedy(runner, first, 20)
    want2, _ = runner_greedy(runner, torch.cat([want1[:, -1:], second], 1), 20)
    cache = StreamingCache(model, pol)
    out1 = model.generate(first, cache=cache, max_new_tokens=20, do_sample=False)
    stream = torch.cat([out1, second], 1)
    cache.prefill(stream[:, cache.get_seq_length():-1])
    out2 = model.generate(stream, cache=cache, max_new_tokens=20, do_sample=False)
    assert out1[:, 8:].tolist() == want1.tolist()
    assert out2[:, stream.shape[1]:].tolist() == want2.tolist()


def test_a_new_prompt_alone_after_a_turn_fails_clearly() -> None:
    """A second turn given only the new prompt (shorter than the stream so far) left generate no new token:
    it used to die in the model with "cannot reshape tensor of 0 elements"; now one line, cache unchanged."""
    model = tiny()
    cache = StreamingCache(model, make_policy("sinks", sinks=2, window=10))
    model.generate(prompt(8), cache=cache, max_new_tokens=20, do_sample=False)
    seen = cache.tokens_seen
    with pytest.raises(ConfigError, match=rf"no new token for this cache, which has already seen {seen} "
                                          r"tokens: pass generate the whole stream so far"):
        model.generate(prompt(5, seed=2), cache=cache, max_new_tokens=3, do_sample=False)
    assert cache.tokens_seen == seen


def test_the_old_cache_name_still_works_with_a_deprecation_warning() -> None:
    import attnlab.stream as stream
    from attnlab.stream.cache import RunnerCache

    with pytest.warns(DeprecationWarning, match="StreamCache is now RunnerCache"):
        assert stream.StreamCache is RunnerCache


def test_past_key_values_keyword_works_too() -> None:
    model = tiny()
    pol = make_policy("window", window=8)
    ids = prompt(5)
    want = model.generate(ids, cache=StreamingCache(model, pol), max_new_tokens=25, do_sample=False)
    with pytest.warns(FutureWarning, match="past_key_values"):
        got = model.generate(ids, past_key_values=StreamingCache(model, pol), max_new_tokens=25,
                             do_sample=False)
    assert got.tolist() == want.tolist()


def test_positions_other_than_the_stream_fail_clearly() -> None:
    model = tiny()
    cache = StreamingCache(model, make_policy("sinks", sinks=2, window=6))
    ids = prompt(6)
    mask = torch.ones_like(ids)
    mask[:, :2] = 0  # left padding: generate numbers the tokens from the first unpadded one
    with pytest.raises(ConfigError, match=r"tokens 0\.\.5 of this cache's stream.*no padding"):
        model.generate(ids, attention_mask=mask, cache=cache, max_new_tokens=3, do_sample=False)
    assert cache.tokens_seen == 0
    with torch.no_grad():
        model(ids, cache=cache)  # no position_ids: the model numbers them from get_seq_length(), right
        with pytest.raises(ConfigError, match=r"from position 0, but they are tokens 6\.\.6"):
            model(ids[:, :1], cache=cache, position_ids=torch.zeros(1, 1, dtype=torch.long))
    assert cache.tokens_seen == 6


@pytest.mark.parametrize("policy,match", [
    (make_policy("memory", memory=8, segment=4), "memory policy .* needs attnlab's GPT"),
    (make_policy("recompute", window=8), r"recompute\(8\) keeps no KV cache"),
    (make_policy("sinks", sinks=4, window=200), r"keeps 204 keys per query, more than the model's context"),
])
def test_unsupported_policies_fail_clearly(policy: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        StreamingCache(tiny(), policy)


def test_unsupported_models_fail_clearly() -> None:
    from attnlab.models.gpt import GPT
    from attnlab.models.gpt_config import GPTConfig

    pol = make_policy("sinks", sinks=2, window=6)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match="has no rotary embedding module"):
        StreamingCache(gpt2, pol)
    with pytest.raises(ConfigError, match="StreamRunner, whose positions stay inside the cache"):
        StreamingCache(tiny(rope={"rope_type": "dynamic", "factor": 2.0}), pol)
    with pytest.raises(ConfigError, match="for Hugging Face causal LMs; stream attnlab's GPT"):
        StreamingCache(GPT(GPTConfig(vocab_size=VOCAB, n_layers=1, d_model=32, n_heads=4, context=64)), pol)
    with pytest.raises(ConfigError, match=r"prefill takes a LongTensor"):
        StreamingCache(tiny(), pol).prefill(torch.zeros(1, 3))


@pytest.fixture(scope="module")
def smollm2():
    import attnlab

    return attnlab.load_model("smollm2-135m")


@pytest.mark.realmodel
@pytest.mark.slow
def test_smollm2_generate_equals_stream_generator(smollm2) -> None:
    from attnlab.stream.generate import StreamGenerator

    pol = make_policy("sinks", sinks=4, window=28, max_context=smollm2.max_context)
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer"
    gen = StreamGenerator(smollm2, pol, max_new_tokens=40)
    "".join(gen.turn(text))
    ids = smollm2.encode(text)
    cache = StreamingCache(smollm2, pol)
    out = smollm2.model.generate(ids, cache=cache, max_new_tokens=40, do_sample=False)
    got = out[0, ids.shape[1]:].tolist()
    if gen.eos is not None and got and got[-1] == gen.eos:
        got = got[:-1]  # generate keeps the end-of-sequence token, the turn does not
    assert ids.shape[1] + len(got) > 40  # the window slid
    assert got == gen.reply_ids
    assert cache.seq_length == 31
