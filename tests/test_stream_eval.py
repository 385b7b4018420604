"""attnlab.stream evaluation, recompute, generation, attnlab GPT support, CLI, and SmolLM2 (realmodel)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from attnlab.data.tokenizers import ByteTokenizer
from attnlab.errors import ConfigError, DataError
from attnlab.stream import FullPolicy, RecomputePolicy, SinksPolicy, StreamRunner, make_policy, parse_policy
from attnlab.stream.eval import plot_nll, save_results, stream_eval

VOCAB = 256


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, 90), generator=torch.Generator().manual_seed(11))


def test_chunked_mode_gives_token_mode_nlls(llama, ids) -> None:
    pol = SinksPolicy(4, 12)
    tok = stream_eval(llama, ids, pol, tokens=80, mode="token", progress=False, bin_size=20)
    chk = stream_eval(llama, ids, pol, tokens=80, mode="chunked", chunk=16, progress=False, bin_size=20)
    a, b = torch.tensor(tok["nll"]), torch.tensor(chk["nll"])
    assert a.numel() == 80 and torch.isfinite(a).all()
    assert (a - b).abs().max() < 1e-4
    assert abs(tok["perplexity"] - chk["perplexity"]) < 1e-3 * tok["perplexity"]


def test_perplexity_and_bins_follow_from_the_nlls(llama, ids) -> None:
    res = stream_eval(llama, ids, SinksPolicy(2, 10), tokens=50, mode="chunked", chunk=8, progress=False,
                      bin_size=20)
    nll = torch.tensor(res["nll"], dtype=torch.float64)
    assert math.isclose(res["perplexity"], math.exp(float(nll.mean())), rel_tol=1e-5)
    bins = [(b["start"], b["end"], b["tokens"]) for b in res["bins"]]
    assert bins == [(0, 20, 20), (20, 40, 20), (40, 50, 10)]
    assert math.isclose(res["bins"][1]["perplexity"], math.exp(float(nll[20:40].mean())), rel_tol=1e-5)
    # token u's NLL is -log p(x_{u+1}) from a stream that has seen x_0..x_u
    with torch.no_grad():
        want = -F.log_softmax(llama(ids[:, :5]).logits.double(), -1)[0, 4, ids[0, 5]]
    assert abs(res["nll"][4] - float(want)) < 1e-4
    assert res["cache_length_final"] == 2 + 9 and res["cache_bytes_final"] > 0 and res["tokens_per_s"] > 0


def test_recompute_is_a_fresh_forward_over_the_last_w_tokens(llama, ids) -> None:
    W = 10
    res = stream_eval(llama, ids, RecomputePolicy(W), tokens=30, mode="token", progress=False)
    for u in (3, 9, 17, 29):
        ctx = ids[:, max(0, u - W + 1):u + 1]
        with torch.no_grad():
            want = -F.log_softmax(llama(ctx).logits.double()[0, -1], -1)[ids[0, u + 1]]
        assert abs(res["nll"][u] - float(want)) < 1e-5
    batched = stream_eval(llama, ids, RecomputePolicy(W), tokens=30, mode="chunked", batch=4, progress=False)
    assert torch.allclose(torch.tensor(batched["nll"]), torch.tensor(res["nll"]), atol=1e-5)
    strided = stream_eval(llama, ids, RecomputePolicy(W), tokens=30, stride=4, progress=False)
    scored = [u for u, x in enumerate(strided["nll"]) if x is not None]
    assert scored == list(range(0, 30, 4)) and strided["tokens"] == len(scored)
    assert all(abs(strided["nll"][u] - res["nll"][u]) < 1e-5 for u in scored)


def test_recompute_runner_matches_window_forward(llama, ids) -> None:
    runner = StreamRunner(llama, RecomputePolicy(6))
    logits = runner.feed(ids[:, :15])
    with torch.no_grad():
        want = llama(ids[:, 9:15]).logits[:, -1]
    torch.testing.assert_close(logits[:, -1], want, atol=1e-5, rtol=1e-5)
    assert runner.cache_length() == 6


def test_results_json_and_plot(tmp_path, llama, ids) -> None:
    res = [stream_eval(llama, ids, p, tokens=40, mode="chunked", chunk=8, progress=False)
           for p in (SinksPolicy(1, 8), make_policy("window", window=9))]
    path = save_results(tmp_path / "r.json", res, {"tokens": 40})
    data = json.loads(path.read_text())
    assert data["provenance"]["config"] == {"tokens": 40}
    assert [r["policy"] for r in data["results"]] == ["sinks(1,8)", "window(9)"]
    png = plot_nll(res, tmp_path / "nll.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_eval_errors(llama, ids) -> None:
    with pytest.raises(DataError, match="empty"):
        stream_eval(llama, "   ", SinksPolicy(1, 4))
    with pytest.raises(DataError, match="at least 2"):
        stream_eval(llama, ids[:, :1], SinksPolicy(1, 4))
    with pytest.raises(ConfigError, match="mode must be one of token, chunked"):
        stream_eval(llama, ids, SinksPolicy(1, 4), mode="fast")
    with pytest.raises(ConfigError, match="stride applies to the recompute policy only"):
        stream_eval(llama, ids, SinksPolicy(1, 4), stride=2)


def test_parse_policy_specs() -> None:
    assert parse_policy("sinks(4, 1020)") == SinksPolicy(4, 1020)
    assert parse_policy("recompute(64)").name == "recompute(64)"
    assert parse_policy("window", window=32).name == "window(32)"
    with pytest.raises(ConfigError, match="sinks takes 2 size"):
        parse_policy("sinks(4)")
    with pytest.raises(ConfigError, match="unknown streaming policy 'lru'; valid policies: full, window"):
        parse_policy("lru(3)")


# -- generation ------------------------------------------------------------------------------------------

def byte_lm(model: torch.nn.Module):
    from attnlab.models.adapter import from_hf

    return from_hf(model, ByteTokenizer(), "tiny", "test")


def test_generation_greedy_equals_plain_argmax_and_memory_is_bounded() -> None:
    from attnlab.stream.generate import StreamGenerator

    lm = byte_lm(tiny_llama(1))
    gen = StreamGenerator(lm, FullPolicy(), max_new_tokens=6)
    pieces = "".join(gen.turn("hello"))
    ids = lm.encode("hello")
    with torch.no_grad():
        for _ in range(6):  # greedy decoding by plain uncached forwards
            ids = torch.cat([ids, lm.model(ids).logits[:, -1:].argmax(-1)], 1)
    assert gen.reply_ids == ids[0, 5:].tolist()
    assert pieces == lm.decode(gen.reply_ids)
    bounded = StreamGenerator(lm, SinksPolicy(2, 10), max_new_tokens=20, temperature=0.8, seed=3)
    sizes = []
    for prompt in ("a long first turn, longer than the cache", "second", "third turn"):
        "".join(bounded.turn(prompt))
        sizes.append(bounded.runner.cache_bytes())
    assert sizes[0] == sizes[1] == sizes[2] and bounded.runner.cache_length() == 11
    assert bounded.stats[-1].stream_tokens > 60 and bounded.stats[-1].tokens_per_s > 0
    again = StreamGenerator(lm, SinksPolicy(2, 10), max_new_tokens=20, temperature=0.8, seed=3)
    "".join(again.turn("a long first turn, longer than the cache"))
    assert again.stats[0].new_tokens == 20


# -- attnlab GPT ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt() -> torch.nn.Module:
    from attnlab.models.gpt import GPT
    from attnlab.models.gpt_config import GPTConfig

    return GPT(GPTConfig(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=4, context=64)).eval()


def test_gpt_full_and_sinks_before_eviction_equal_plain_forward(gpt, ids) -> None:
    plain = gpt(ids[:, :30])[0]
    full = StreamRunner(gpt, FullPolicy(), max_step=7).feed(ids[:, :30])
    torch.testing.assert_close(full, plain, atol=1e-5, rtol=1e-5)
    runner = StreamRunner(gpt, SinksPolicy(2, 10))
    got = runner.feed(ids[:, :30])
    torch.testing.assert_close(got[:, :12], plain[:, :12], atol=1e-5, rtol=1e-5)
    assert (got[:, 12:] - plain[:, 12:]).abs().max() > 1e-4
    assert runner.cache_length() == 12  # the last query's keys: 2 sinks + its window of 10


def test_gpt_sinks_match_hf_style_chunked_semantics(gpt, ids) -> None:
    """Token u under sinks(S, W) equals a plain forward of [sinks | window] when the model has one layer
    of context (layer 1 keys depend on their own history, so compare only the first layer's view)."""
    from attnlab.models.gpt import GPT
    from attnlab.models.gpt_config import GPTConfig

    one = GPT(GPTConfig(vocab_size=VOCAB, n_layers=1, d_model=32, n_heads=4, context=64)).eval()
    got = StreamRunner(one, SinksPolicy(2, 5)).feed(ids[:, :20])
    for u in (9, 19):
        ctx = torch.cat([ids[:, :2], ids[:, u - 4:u + 1]], 1)  # sinks at 0..1, window at 2..6
        torch.testing.assert_close(got[:, u], one(ctx)[0][:, -1], atol=1e-5, rtol=1e-5)


def test_gpt_memory_policy(gpt, ids) -> None:
    big = StreamRunner(gpt, make_policy("memory", memory=64, segment=8))
    torch.testing.assert_close(big.feed(ids[:, :30]), gpt(ids[:, :30])[0], atol=1e-5, rtol=1e-5)
    small = StreamRunner(gpt, make_policy("memory", memory=6, segment=5))
    small.feed(ids[:, :30])
    bytes_30 = small.cache_bytes()
    small.feed(ids[:, 30:80])
    assert small.cache_bytes() == bytes_30 and small.cache_length() == 6 + 5


# -- CLI --------------------------------------------------------------------------------------------------

def test_cli_bad_input_is_one_line(tmp_path, capsys) -> None:
    from attnlab.cli import main

    assert main(["stream", "eval", "--policy", "lru", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown streaming policy 'lru'" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9")
    out = str(tmp_path / "x.json")
    assert main(["stream", "eval", "--policy", "sinks", "--text", str(bad), "--out", out]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["stream", "eval", "--policy", "sinks", "--text", str(empty), "--out", out]) == 2
    assert "empty" in capsys.readouterr().err


def _nan_llama() -> torch.nn.Module:
    model = tiny_llama(2)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[0, 0] = math.nan  # one weight: every query of head 0
    return model


def _strict_json(path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds a bare {name}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("mode", ["token", "chunked"])
def test_a_nan_model_gives_no_perplexity_and_says_why(tmp_path, ids, mode: str) -> None:
    # Before: NaN NLLs were taken for unscored positions and dropped, so a broken model scored a plausible
    # perplexity (one NaN in q_proj: 1421 in token mode, the clean model's 114.5 in chunked mode).
    res = stream_eval(_nan_llama(), ids, SinksPolicy(2, 10), tokens=40, mode=mode, chunk=8, progress=False,
                      bin_size=20)
    assert res["perplexity"] is None and res["nll_mean"] is None
    assert "40 of 40 scored positions had a non-finite NLL" in res["perplexity_null"]
    assert all(b["perplexity"] is None for b in res["bins"])
    save_results(tmp_path / "r.json", res, {"mode": mode})
    doc = _strict_json(tmp_path / "r.json")
    assert doc["results"]["perplexity"] is None and doc["results"]["perplexity_null"]


def test_cli_exits_non_zero_when_the_perplexity_is_not_finite(tmp_path, capsys, monkeypatch) -> None:
    import attnlab.models.loading
    from attnlab.cli import main

    monkeypatch.setattr(attnlab.models.loading, "load_model", lambda *a, **k: byte_lm(_nan_llama()))
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 3)
    out = tmp_path / "r.json"
    code = main(["stream", "eval", "--policy", "sinks", "--sinks", "2", "--window", "10", "--tokens", "40",
                 "--text", str(text), "--out", str(out), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("attnlab: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "no perplexity for --policy sinks(2,10)" in lines[0] and "non-finite NLL" in lines[0]
    assert _strict_json(out)["results"]["perplexity"] is None  # the results are still written, strictly


# -- SmolLM2 ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2():
    import attnlab

    return attnlab.load_model("smollm2-135m")


@pytest.mark.realmodel
@pytest.mark.slow
def test_smollm2_chunked_equals_token_mode_and_stays_bounded(smollm2) -> None:
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer " * 6
    ids = smollm2.encode(text)[:, :97]
    pol = make_policy("sinks", sinks=4, window=28, max_context=smollm2.max_context)
    tok = stream_eval(smollm2, ids, pol, tokens=96, mode="token", progress=False)
    chk = stream_eval(smollm2, ids, pol, tokens=96, mode="chunked", chunk=32, progress=False)
    assert (torch.tensor(tok["nll"]) - torch.tensor(chk["nll"])).abs().max() < 1e-4
    assert tok["cache_length_final"] == 31 and tok["cache_bytes_final"] == chk["cache_bytes_final"]
    assert chk["perplexity"] < 50  # repeated text is predictable even from a 32-key cache


@pytest.mark.realmodel
def test_smollm2_policy_larger_than_context(smollm2) -> None:
    with pytest.raises(ConfigError, match="larger than the model's context \\(8192 tokens\\)"):
        make_policy("sinks", sinks=4, window=8190, max_context=smollm2.max_context)


def test_eos_ends_the_turn_and_is_fed_with_the_next() -> None:
    from attnlab.stream.generate import StreamGenerator

    lm = byte_lm(tiny_llama(1))
    with torch.no_grad():
        first = int(lm.model(lm.encode("hello")).logits[0, -1].argmax())
    lm.tokenizer.eos_id = first  # the greedy reply's first token is now the end of the turn
    gen = StreamGenerator(lm, SinksPolicy(2, 10), max_new_tokens=5)
    assert "".join(gen.turn("hello")) == "" and gen.reply_ids == [] and gen.stats[0].new_tokens == 0
    "".join(gen.turn("yo"))
    assert gen.stats[1].prompt_tokens == 1 + 2  # the pending end-of-turn token, then "yo"
    assert gen.runner.tokens_seen == 5 + 3 + len(gen.reply_ids) - (1 if gen.reply_ids else 0)
    with pytest.raises(ConfigError, match="no chat template"):
        StreamGenerator(lm, SinksPolicy(2, 10), chat=True).format("hi")
