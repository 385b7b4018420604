"""Parse and validate once, at the edge: each CLI maps its flags to one config, checked once, and what runs
below trusts it. These tests count the checks, so a repeated validation (or a second parse) fails them."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from attnlab.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1] / "attnlab"
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 8


def _count(monkeypatch: pytest.MonkeyPatch, counts: Counter, key: str, owner: Any, name: str,
           when: Callable[..., bool] = lambda *a, **k: True) -> None:
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            counts[key] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def test_train_validates_its_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import attnlab.attention
    import attnlab.attention.registry as registry
    import attnlab.models.gpt as gpt
    import attnlab.models.gpt_config as gpt_config
    from attnlab.models.gpt_config import GPTConfig
    from attnlab.train.config import TrainConfig

    counts: Counter = Counter()
    _count(monkeypatch, counts, "registry lookups", registry, "_entry")
    _count(monkeypatch, counts, "GPTConfig validations", GPTConfig, "__post_init__")
    _count(monkeypatch, counts, "TrainConfig validations", TrainConfig, "__post_init__")
    _count(monkeypatch, counts, "normalizers built to validate", gpt_config, "create_normalizer")
    is_name = lambda span, *a, **k: isinstance(span, str)  # noqa: E731  (a Span object is not a parse)
    _count(monkeypatch, counts, "span parses", attnlab.attention, "resolve_span", is_name)
    _count(monkeypatch, counts, "span parses", gpt, "resolve_span", is_name)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    layers = 2
    argv = ["train", "--normalizer", "softmax1", "--layers", str(layers), "--d-model", "16", "--heads", "2",
            "--context", "8", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--eval-every", "0",
            "--text", str(text), "--out", str(tmp_path / "run")]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert counts["GPTConfig validations"] == 1 and counts["TrainConfig validations"] == 1
    assert counts["normalizers built to validate"] == 1
    # One span parse to validate, one per layer to build (GPT's attention, not this test's to change).
    assert counts["span parses"] == 1 + layers
    # argparse's choice check 1 + the validation 3 (keywords, learned parameters, the build) + 3 per layer in
    # GPT; before the CLI built one config it was 13 here (two validations).
    assert counts["registry lookups"] <= 1 + 3 + 3 * layers, counts


def test_train_cli_default_out_is_part_of_the_one_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnlab.train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    config = cli.config_from_args(parser.parse_args(["train", "--steps", "3"]))
    assert config.out == cli.DEFAULT_OUT == "runs/train" and config.steps == 3


def test_stream_eval_parses_each_policy_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import attnlab.stream.eval as stream_eval_module
    import attnlab.stream.registry as policy_registry
    from attnlab.models import load_model
    from attnlab.stream import RecomputePolicy

    counts: Counter = Counter()
    _count(monkeypatch, counts, "policy parses", policy_registry, "parse_policy")
    _count(monkeypatch, counts, "settings checks", stream_eval_module, "check_settings")
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "r.json"
    argv = ["stream", "eval", "--model", "tiny-llama", "--policy", "sinks(2,14)", "--policy", "recompute(16)",
            "--stride", "3", "--tokens", "40", "--bin-size", "10", "--text", str(text), "--out", str(out)]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert counts["policy parses"] == 2  # one per --policy, before the model loads
    assert counts["settings checks"] == 0  # the CLI checked its flags; stream_eval's own check is the API's
    import json

    results = json.loads(out.read_text())["results"]
    assert [r["stride"] for r in results] == [1, 3]  # the stride decided once: recompute only
    lm = load_model("tiny-llama")
    ids = lm.encode(text.read_text())
    api = stream_eval_module.stream_eval(lm, ids, RecomputePolicy(16), 40, stride=3, bin_size=10,
                                         progress=False)
    assert results[1]["nll"] == api["nll"]


def test_stream_eval_refuses_a_cache_past_the_context_with_the_registry_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    argv = ["stream", "eval", "--model", "tiny-llama", "--policy", "sinks", "--window", "1020", "--tokens",
            "20", "--text", str(text), "--out", str(tmp_path / "r.json")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert ("sinks + window = 4 + 1020 = 1024 is larger than the model's context (512 tokens); choose a "
            "smaller --window/--sinks/--chunk") in err


def test_compare_checks_config_and_out_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import attnlab.experiments.compare as compare
    import attnlab.experiments.compare.config as compare_config
    import attnlab.io

    counts: Counter = Counter()
    _count(monkeypatch, counts, "config checks", compare_config, "check_config")
    _count(monkeypatch, counts, "out checks", attnlab.io, "check_out_dir")

    class Ran(Exception):
        pass

    def ran(config: Any, out: Path, *args: Any, **kwargs: Any) -> None:
        assert out == tmp_path / "c" and config.preset == "smoke"
        raise Ran

    monkeypatch.setattr(compare, "run_checked", ran)
    with pytest.raises(Ran):
        cli_main(["compare", "--preset", "smoke", "--out", str(tmp_path / "c")])
    assert counts == {"config checks": 1, "out checks": 1}


def test_one_load_model_answers_every_tiny_model() -> None:
    from attnlab.errors import ConfigError
    from attnlab.models import GPT, GPTConfig, load_model
    from attnlab.models.tiny import tiny_llama

    state = torch.random.get_rng_state()
    gpt = load_model("tiny-gpt")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    # What the studies built themselves before (probes: 1024 positions, streaming: 256), weight for weight.
    for context in (1024, 256):
        lm = load_model("tiny-gpt", context=context) if context != 1024 else gpt
        before = GPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, context=context)).state_dict()
        assert lm.kind == "attnlab" and lm.name == "tiny byte GPT" and lm.max_context == context
        assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    llama = load_model("tiny-llama", context=49)
    model, _ = tiny_llama(seed=0, context=49)
    assert llama.kind == "hf" and llama.name == "tiny-llama" and llama.max_context == 49
    assert all(torch.equal(model.state_dict()[k], v) for k, v in llama.model.state_dict().items())
    assert load_model("tiny-gpt", dtype="float64").dtype == torch.float64
    with pytest.raises(ConfigError, match="context= sets the positions of a tiny random model"):
        load_model("smollm2", context=64)
    with pytest.raises(ConfigError, match="context must be a positive integer"):
        load_model("tiny-gpt", context=0)


def _defined(pattern: str) -> list[str]:
    """The file (under attnlab/) of every line that matches `pattern`, once per line."""
    return [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*.py"))
            for line in p.read_text(encoding="utf-8").splitlines() if re.match(pattern, line)]


def test_max_seeds_is_defined_once() -> None:
    from attnlab.experiments.base import MAX_SEEDS
    from attnlab.experiments.compare import config, scratch_config

    assert _defined(r"MAX_SEEDS\s*=") == ["experiments/base.py"]
    assert config.MAX_SEEDS == scratch_config.MAX_SEEDS == MAX_SEEDS == 64


def test_tiny_models_are_built_in_one_place_and_tqdm_in_one_module() -> None:
    assert _defined(r"\s*(from tqdm|import tqdm)") == ["train/progress.py"] * 2
    # A tiny GPT or Llama built anywhere else than attnlab/models/tiny.py is a second definition.
    assert _defined(r".*(\bLlamaForCausalLM\(|GPTConfig\(n_layers=2, d_model=32)") == ["models/tiny.py"] * 2
