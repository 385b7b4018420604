"""`stream generate`'s --top-p (nucleus sampling) and --repetition-penalty: the scores against Hugging Face's
own logits processors as the reference, end to end on the tiny random Llama (attnlab.models.tiny), and one
clear line for each bad value, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnlab.cli import main
from attnlab.errors import ConfigError
from attnlab.models.adapter import from_hf
from attnlab.models.tiny import tiny_llama
from attnlab.stream import FullPolicy
from attnlab.stream.generate import StreamGenerator, check_sampling

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():  # noqa: ANN201
    model, tok = tiny_llama(seed=2)
    return from_hf(model, tok, "tiny-llama", "memory")


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_hf_processor(lm, penalty: float) -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    gen = StreamGenerator(lm, FullPolicy(), repetition_penalty=penalty)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(lm.vocab_size, generator=g, dtype=torch.float64) * 3
    seen = torch.tensor([5, 7, 7, 200, 3])
    want = RepetitionPenaltyLogitsProcessor(penalty)(seen[None], logits[None].clone())[0]
    got = gen.scores(logits, seen)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert not torch.equal(got, logits)


@pytest.mark.parametrize("top_p", [0.3, 0.9])
def test_top_p_keeps_the_same_tokens_as_hf_warper(lm, top_p: float) -> None:
    from transformers import TopPLogitsWarper

    gen = StreamGenerator(lm, FullPolicy(), temperature=0.8, top_p=top_p)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(lm.vocab_size, generator=g, dtype=torch.float64) * 2
    want = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), (logits / 0.8)[None])[0]
    got = gen.scores(logits)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    kept = int(torch.isfinite(got).sum())
    assert 1 < kept < lm.vocab_size  # a real cut, not everything and not nothing
    probs = torch.softmax(logits / 0.8, -1)
    assert float(probs[torch.isfinite(got)].sum()) >= top_p  # the nucleus holds at least p


def test_top_p_draws_only_from_the_nucleus(lm) -> None:
    logits = torch.full((lm.vocab_size,), float("-inf"), dtype=torch.float64)
    logits[:4] = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    for top_p, allowed in ((0.7, {0, 1}), (0.5, {0}), (1.0, {0, 1, 2, 3})):
        gen = StreamGenerator(lm, FullPolicy(), temperature=1.0, top_p=top_p, seed=4)
        drawn = {gen._pick(logits) for _ in range(400)}
        assert drawn == allowed, (top_p, drawn)


def test_greedy_with_repetition_penalty_equals_a_plain_reference_loop(lm) -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    prompt, n, penalty = "abcabcabc", 10, 3.0
    gen = StreamGenerator(lm, FullPolicy(), max_new_tokens=n, repetition_penalty=penalty)
    "".join(gen.turn(prompt))
    plain = StreamGenerator(lm, FullPolicy(), max_new_tokens=n)
    "".join(plain.turn(prompt))
    ids = lm.encode(prompt)
    process = RepetitionPenaltyLogitsProcessor(penalty)
    with torch.no_grad():
        for _ in range(n):  # greedy decoding by plain uncached forwards, HF's penalty on the logits
            scores = process(ids, lm.logits(ids)[:, -1].double())
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], 1)
    assert gen.reply_ids == ids[0, len(prompt):].tolist()
    assert gen.reply_ids != plain.reply_ids  # the penalty does change this model's reply


def test_tiny_top_p_samples_the_greedy_reply(lm) -> None:
    greedy = StreamGenerator(lm, FullPolicy(), max_new_tokens=8)
    "".join(greedy.turn("hello"))
    nucleus = StreamGenerator(lm, FullPolicy(), max_new_tokens=8, temperature=1.5, top_p=1e-9, seed=9)
    "".join(nucleus.turn("hello"))
    assert nucleus.reply_ids == greedy.reply_ids


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"top_p": 0.0}, r"top_p \(--top-p\) must be a number in \(0, 1\] \(1 = no nucleus cut\), got 0\.0"),
    ({"top_p": 1.5}, r"top_p \(--top-p\) must be a number in \(0, 1\]"),
    ({"top_p": float("nan")}, r"top_p \(--top-p\) must be a number in \(0, 1\]"),
    ({"repetition_penalty": 0.0}, r"repetition_penalty \(--repetition-penalty\) must be a finite number > 0"),
    ({"repetition_penalty": float("inf")}, r"repetition_penalty \(--repetition-penalty\) must be a finite"),
])
def test_bad_values_fail_clearly(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_sampling(max_new_tokens=4, temperature=1.0, top_k=0, seed=0, **kwargs)


def test_cli_flags_are_checked_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    absent = str(tmp_path / "no-model")
    assert main(["stream", "generate", "--model", absent, "--top-p", "2", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "attnlab: error: top_p (--top-p) must be a number in (0, 1]" in err and "no model" not in err
    argv = ["stream", "generate", "--model", absent, "--prompt", "hi"]
    assert main([*argv, "--repetition-penalty", "-1"]) == 2
    assert "--repetition-penalty) must be a finite number > 0" in capsys.readouterr().err
    assert main(["stream", "generate", "--model", absent, "--top-p", "0.9", "--prompt", "hi"]) == 2
    assert "attnlab: warning: --top-p 0.9 applies when sampling" in capsys.readouterr().err


def test_cli_generates_with_the_new_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, tok = tiny_llama(seed=2)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    argv = ["stream", "generate", "--model", str(folder), "--policy", "full", "--prompt", "abcabc",
            "--max-new-tokens", "6", "--no-chat"]
    assert main([*argv, "--temperature", "0.9", "--top-p", "0.8", "--repetition-penalty", "1.3",
                 "--seed", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.endswith("\n") and "6 tokens in" in out.err
    assert "--help" not in out.err
    with pytest.raises(SystemExit):
        main(["stream", "generate", "--help"])
    help_text = capsys.readouterr().out
    assert "--top-p" in help_text and "--repetition-penalty" in help_text and "nucleus" in help_text
