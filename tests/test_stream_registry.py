"""The streaming-policy registry: policies written here, outside the package, registered by name (or named
"module:Attr"), run through `stream_eval`, `attnlab stream eval --policy` and `StreamingCache` with nothing
in attnlab naming them. A cache policy (one sink plus a window) must give what the built-in sinks(1, W)
gives; a policy that drives the model itself (a fresh forward over the whole stream) what full gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from attnlab.attention import SinkWindow, Span
from attnlab.errors import ConfigError
from attnlab.stream import (
    FullPolicy,
    Policy,
    SinksPolicy,
    StreamingCache,
    StreamRunner,
    make_policy,
    parse_policy,
    policy_names,
    register_policy,
    unregister_policy,
)
from attnlab.stream.eval import stream_eval

VOCAB = 64
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True, repr=False)
class OneSinkPolicy(Policy):
    """The first token plus the last `window` (StreamingLLM with a single sink), written from the base."""

    window: int
    sinks = 1

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"onesink({self.window})"

    @property
    def span(self) -> Span:
        return SinkWindow(1, self.window)

    @property
    def capacity(self) -> int:
        return 1 + self.window

    def full_from(self) -> int | None:
        return 1 + self.window


class WholeStreamPolicy(Policy):
    """No cache: every step re-reads the whole stream in one causal forward (drives the model itself)."""

    name = "whole"
    uses_cache = False
    drives_model = True

    def drive(self, runner: Any, ids: torch.Tensor) -> Iterator[torch.Tensor]:
        seen = ids if runner._history is None else torch.cat([runner._history, ids], 1)
        runner._history, runner.t = seen, seen.shape[1]
        kwargs = {"use_cache": False} if hasattr(runner.module, "config") else {}
        out = runner.module(seen, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        yield logits[:, -ids.shape[1]:]


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    register_policy("onesink", OneSinkPolicy)
    register_policy("whole", WholeStreamPolicy)
    yield
    for name in ("onesink", "whole", f"{__name__}:OneSinkPolicy"):
        if name in policy_names():
            unregister_policy(name)


def tiny_llama(impl: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation=impl)
    return LlamaForCausalLM(cfg).double().eval()


def ids(n: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(3))


def test_a_registered_policy_is_built_by_name_and_spec() -> None:
    assert policy_names()[:6] == ["full", "window", "sinks", "chunked", "recompute", "memory"]
    assert make_policy("onesink", window=9, sinks=7) == OneSinkPolicy(9)  # takes only the sizes it names
    assert parse_policy("onesink(9)") == OneSinkPolicy(9) and parse_policy("OneSink", window=5).window == 5
    assert parse_policy(f"{__name__}:OneSinkPolicy(6)") == OneSinkPolicy(6)
    with pytest.raises(ConfigError, match="onesink takes 1 size"):
        parse_policy("onesink(1,2)")
    with pytest.raises(ConfigError, match=r"capacity of onesink\(40\) = 41 is larger than the model's"):
        make_policy("onesink", window=40, max_context=32)
    with pytest.raises(ConfigError, match="'json:dumps' is not a Policy subclass|'dumps' is not a Policy"):
        parse_policy("json:dumps")
    with pytest.raises(ValueError, match="already registered"):
        register_policy("onesink", SinksPolicy)


@pytest.mark.parametrize("mode", ["token", "chunked"])
def test_stream_eval_runs_a_policy_defined_outside_the_package(mode: str) -> None:
    model, x = tiny_llama(), ids(60)
    got = stream_eval(model, x, make_policy("onesink", window=9), tokens=50, mode=mode, chunk=8,
                      progress=False, bin_size=10)
    want = stream_eval(model, x, SinksPolicy(1, 9), tokens=50, mode=mode, chunk=8, progress=False,
                       bin_size=10)
    assert got["policy"] == "onesink(9)" and got["cache_capacity"] == 10
    assert got["cache_length_final"] == want["cache_length_final"] <= 10
    torch.testing.assert_close(torch.tensor(got["nll"]), torch.tensor(want["nll"]), atol=1e-9, rtol=0)
    # ... and the window did slide: without the sink the NLLs differ
    plain = stream_eval(model, x, make_policy("window", window=10), tokens=50, mode=mode, chunk=8,
                        progress=False, bin_size=10)
    assert max(abs(a - b) for a, b in zip(got["nll"], plain["nll"], strict=True)) > 1e-3


def test_a_driving_policy_is_asked_not_named() -> None:
    """The runner and stream_eval run a user's policy that drives the model; StreamingCache refuses it
    from what it says (no cache), and stride from what it says (it does not score positions alone)."""
    model, x = tiny_llama(), ids(40)
    got = stream_eval(model, x, WholeStreamPolicy(), tokens=30, mode="chunked", chunk=7, progress=False)
    want = stream_eval(model, x, FullPolicy(), tokens=30, mode="chunked", chunk=7, progress=False)
    torch.testing.assert_close(torch.tensor(got["nll"]), torch.tensor(want["nll"]), atol=1e-9, rtol=0)
    with pytest.raises(ConfigError, match="whole keeps no KV cache .*StreamRunner"):
        StreamingCache(model, make_policy("whole"))
    with pytest.raises(ConfigError, match="stride applies to the recompute policy only"):
        stream_eval(model, x, WholeStreamPolicy(), tokens=30, stride=2, progress=False)


def test_streaming_cache_takes_a_registered_policy() -> None:
    model, x = tiny_llama("eager"), ids(10)

    def greedy(policy: Policy | str) -> list[list[int]]:
        out = model.generate(x, cache=StreamingCache(model, policy), max_new_tokens=30, do_sample=False)
        return out[:, x.shape[1]:].tolist()

    got = greedy(make_policy("onesink", window=12))
    assert got == greedy(SinksPolicy(1, 12))
    assert greedy("onesink(12)") == greedy(f"{__name__}:OneSinkPolicy(12)") == got  # by name, as the CLI
    runner = StreamRunner(model, make_policy("onesink", window=12))
    logits = runner.feed(x, last_only=True)
    assert int(logits[0, -1].argmax()) == got[0][0] and runner.cache_length() == 10


def test_cli_stream_eval_by_name_and_module_path(tmp_path, capsys, monkeypatch) -> None:
    import attnlab.models.loading
    from attnlab.cli import main
    from attnlab.data.tokenizers import ByteTokenizer
    from attnlab.models.adapter import from_hf

    def byte_model() -> Any:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          attn_implementation="sdpa")
        return from_hf(LlamaForCausalLM(cfg).eval(), ByteTokenizer(), "tiny", "test")

    monkeypatch.setattr(attnlab.models.loading, "load_model", lambda *a, **k: byte_model())
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 3)
    out = tmp_path / "r.json"
    code = main(["stream", "eval", "--policy", "onesink", "--window", "9",
                 "--policy", f"{__name__}:OneSinkPolicy(9)", "--policy", "sinks(1,9)",
                 "--tokens", "40", "--text", str(text), "--out", str(out), "--plot", str(tmp_path / "p.png")])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())["results"]
    assert [r["policy"] for r in results] == ["onesink(9)", "onesink(9)", "sinks(1,9)"]
    assert results[0]["perplexity"] == pytest.approx(results[2]["perplexity"], rel=1e-6)
    assert results[1]["perplexity"] == pytest.approx(results[2]["perplexity"], rel=1e-6)


def test_cli_help_lists_the_registry(capsys) -> None:
    from attnlab.cli import main

    with pytest.raises(SystemExit):
        main(["stream", "eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("full", "window", "sinks", "chunked", "recompute", "memory", "onesink", "whole"):
        assert f" {name}," in text or f" {name} (" in text, name
