"""The normalizer registry (attnlab/attention/registry.py).

A normalizer defined here, outside the package, with one learned tensor per head and only `weights`, is
registered once and then used by name everywhere a normalizer is named: `attnlab.attention`, GPTConfig and
the GPT (which learns its tensor), `attnlab train --normalizer` (registered in-process, or as
"module:Attr" from a module on the path), the explorer's menu and requests, and a Hugging Face model under
`attention_override`. Then the registry's own errors, the slow-path note, and the built-ins' learned
parameters (the GPT's initial values, unchanged).
"""

from __future__ import annotations

import json
import math
import sys
import warnings

import pytest
import torch
from torch import Tensor

import attnlab
from attnlab.attention import (
    Normalizer,
    attention,
    create_normalizer,
    learned_parameters,
    normalizer_names,
    register_normalizer,
    resolve_normalizer,
    unregister_normalizer,
)
from attnlab.cli import main as cli_main
from attnlab.errors import ConfigError
from attnlab.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "head-temperature"
LOG_T = 0.5  # initial log inverse temperature: scores times e^0.5


class HeadTemperature(Normalizer):
    """softmax(exp(log_t_h) * s_ij): one learned log inverse temperature per head; `weights` only."""

    name = NAME

    @classmethod
    def learned_parameters(cls, heads: int) -> dict[str, Tensor]:
        return {"log_t": torch.full((heads,), LOG_T)}

    def __init__(self, log_t: Tensor | float = LOG_T) -> None:
        self.log_t = log_t

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        t = torch.as_tensor(self.log_t).to(scores).exp()
        t = t.view(1, -1, 1, 1) if t.dim() == 1 else t
        w = torch.softmax((scores * t).masked_fill(~allowed, float("-inf")), dim=-1)
        return torch.where(allowed, w, torch.zeros_like(w))


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_normalizer(NAME, HeadTemperature)
    yield
    unregister_normalizer(NAME)


@pytest.fixture
def quiet():
    """The slow-path note is tested once, below; elsewhere it is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _qkv(gen: torch.Generator, lq: int = 9, lk: int = 9, grad: bool = False) -> tuple[Tensor, ...]:
    shapes = [(2, 4, lq, 8), (2, 2, lk, 8), (2, 2, lk, 8)]
    return tuple(torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(grad) for s in shapes)


# ------------------------------------------------------------------ one name, every place
def test_top_level_exports() -> None:
    assert attnlab.register_normalizer is register_normalizer and NAME in attnlab.normalizer_names()
    builtins = ["softmax", "softmax1", "sinks", "clipped", "adaptive", "ssmax", "softpick"]
    assert normalizer_names()[:7] == builtins


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("span", ["causal", "window(4)"])
def test_attention_by_name(gen: torch.Generator, quiet: None, backend: str, span: str) -> None:
    """softmax(e^0.5 s) is softmax attention with queries times e^0.5: an exact twin on the fast path."""
    q, k, v = _qkv(gen, lq=6, lk=11)
    out = attention(q, k, v, normalizer=NAME, span=span, backend=backend)
    twin = attention(q * math.exp(LOG_T), k, v, normalizer="softmax", span=span, backend="fused")
    torch.testing.assert_close(out, twin, rtol=1e-12, atol=1e-13)


def test_gpt_learns_the_normalizer_parameters(tmp_path, quiet: None) -> None:
    cfg = GPTConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=4, context=16, normalizer=NAME)
    model = GPT(cfg)
    param = model.get_parameter("blocks.1.attn.normalizer_log_t")
    torch.testing.assert_close(param.detach(), torch.full((4,), LOG_T))
    idx = torch.randint(0, 64, (2, 9))
    model(idx, idx)[1].backward()
    assert param.grad is not None and param.grad.abs().sum() > 0
    with torch.no_grad():
        param.add_(torch.linspace(-0.3, 0.3, 4))
    model.save(tmp_path / "m")
    loaded = GPT.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)


def _train_argv(text_file, out, normalizer: str) -> list[str]:
    return ["train", "--normalizer", normalizer, "--layers", "1", "--d-model", "16", "--heads", "2",
            "--context", "16", "--steps", "2", "--batch-size", "2", "--eval-every", "0", "--text",
            str(text_file), "--out", str(out)]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind\n" * 8)
    return path


def test_train_help_lists_the_registry(capsys) -> None:
    """`attnlab train --help` names every registered normalizer (softpick and a user's included): the help
    is read from the registry, not a hand list."""
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    start = text.index("attention normalizer:")
    for name in attnlab.normalizer_names():
        assert name in text[start:start + 400], name
    assert "softpick" in attnlab.normalizer_names() and NAME in attnlab.normalizer_names()


def test_train_cli_by_registered_name(text_file, tmp_path, quiet: None, capsys) -> None:
    assert cli_main(_train_argv(text_file, tmp_path / "run", NAME)) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert saved["normalizer"] == NAME
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert "blocks.0.attn.normalizer_log_t" in weights


USER_MODULE = '''
import torch
from attnlab import Normalizer


class Cube(Normalizer):
    """w_ij proportional to sigmoid(s_ij)^3 over the visible keys."""

    def weights(self, scores, allowed):
        w = torch.where(allowed, torch.sigmoid(scores) ** 3, torch.zeros_like(scores))
        return w / w.sum(-1, keepdim=True).clamp_min(1e-30)


not_a_normalizer = print
'''


def test_train_cli_finds_a_module_path_name(text_file, tmp_path, quiet: None, monkeypatch, capsys) -> None:
    """A process that never ran the user's registration (a CLI run, a torchrun worker, a later load) finds
    the normalizer from its 'module:Attr' name, which is also what the saved config records."""
    (tmp_path / "attnlab_test_usernorm.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "attnlab_test_usernorm:Cube"
    try:
        assert cli_main(_train_argv(text_file, tmp_path / "run", name)) == 0
        assert json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())["normalizer"] == name
        unregister_normalizer(name)  # as in a fresh process: loading imports it again
        model = GPT.from_pretrained(tmp_path / "run" / "checkpoint")
        assert type(model.blocks[0].attn.normalizer()).__name__ == "Cube"
        capsys.readouterr()
        for bad, why in [("attnlab_test_usernorm:Nope", "has no attribute 'Nope'"),
                         ("attnlab_test_usernorm:not_a_normalizer", "not a Normalizer subclass"),
                         ("attnlab_no_such_module:Cube", "cannot import module 'attnlab_no_such_module'")]:
            assert cli_main(_train_argv(text_file, tmp_path / "bad", bad)) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("attnlab: error:") and why in err and len(err.splitlines()) == 1, err
    finally:
        if name in normalizer_names():
            unregister_normalizer(name)
        sys.modules.pop("attnlab_test_usernorm", None)


def _tiny_hf_loaded():  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    import attnlab.models.hf  # noqa: F401  (registers attn_implementation="attnlab")
    from attnlab.data.tokenizers import ByteTokenizer
    from attnlab.models.adapter import from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return from_hf(LlamaForCausalLM(cfg).eval(), ByteTokenizer(), "tiny-llama", "test")


def test_hugging_face_model_and_explorer(tmp_path, quiet: None, monkeypatch) -> None:
    """attention_override(normalizer=NAME) on a Hugging Face model equals dividing its scores by
    e^-0.5 (the override's temperature), and the explorer offers and runs NAME and clipped."""
    from attnlab.explorer.engine import Explorer, default_params
    from attnlab.explorer.params import Limits, parse_params
    from attnlab.models.hooks import attention_override

    loaded = _tiny_hf_loaded()
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = loaded.model(input_ids=ids).logits
        with attention_override(normalizer=NAME):
            ours = loaded.model(input_ids=ids).logits
        with attention_override(temperature=math.exp(-LOG_T)):
            twin = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(ours, twin, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3  # the override really changed the model

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    ex = Explorer(loaded, name="tiny-llama", corpus=("Shall I compare thee to a summer's day?",),
                  n_directions=2, default_tokens=32)
    menu = ex.info()["normalizers"]
    assert NAME in menu and "clipped" in menu and menu == normalizer_names()
    request = {"text": "hello", "normalizer": NAME}
    assert parse_params(request, Limits(), n_layers=2, n_heads=4, n_directions=2).normalizer == NAME
    ours = ex.analyze(default_params(ex, normalizer=NAME))
    twin = ex.analyze(default_params(ex, temperature=math.exp(-LOG_T)))
    torch.testing.assert_close(torch.tensor(ours["pattern"]), torch.tensor(twin["pattern"]), rtol=0,
                               atol=2e-5)
    clipped = ex.analyze(default_params(ex, normalizer="clipped"))
    assert clipped["baseline_metrics"] is not None and len(clipped["pattern"]) == clipped["n_tokens"]


# ------------------------------------------------------------------ the registry itself
def test_registration_rules() -> None:
    register_normalizer(NAME, HeadTemperature)  # the same factory again: a no-op
    with pytest.raises(ValueError, match=r"'head-temperature' is already registered.*overwrite=True"):
        register_normalizer(NAME, lambda: HeadTemperature(1.0))
    register_normalizer(NAME, lambda: HeadTemperature(1.0), overwrite=True)
    try:
        assert resolve_normalizer(NAME).log_t == 1.0
        assert learned_parameters(NAME, 3) == {}  # a plain function learns nothing
    finally:
        register_normalizer(NAME, HeadTemperature, overwrite=True)
    assert learned_parameters(NAME, 3)["log_t"].shape == (3,)
    with pytest.raises(TypeError, match="must be a Normalizer subclass or a callable.*got <class 'int'>"):
        register_normalizer("int", int)
    with pytest.raises(TypeError, match="pass its class"):
        register_normalizer("instance", HeadTemperature())
    for bad in ["", "Upper", "two words", "mod:attr", 3]:
        with pytest.raises(ValueError, match="the name must be a non-empty lowercase string"):
            register_normalizer(bad, HeadTemperature)  # type: ignore[arg-type]
    assert "int" not in normalizer_names()


def test_unknown_names_and_parameters_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"unknown normalizer 'nope'; valid normalizers: softmax,.*head-t"):
        attention(*_qkv(torch.Generator().manual_seed(0)), normalizer="nope")
    with pytest.raises(ConfigError, match=r"GPTConfig.normalizer='nope' is not valid.*head-temperature"):
        GPTConfig(normalizer="nope")
    with pytest.raises(ValueError, match=r"'sinks' normalizer needs its logits: pass Sinks\(logits\)"):
        resolve_normalizer("sinks")
    with pytest.raises(ValueError, match="'softmax' normalizer takes no logits; it takes: nothing"):
        create_normalizer("softmax", logits=torch.zeros(2))
    with pytest.raises(ValueError, match="'clipped' normalizer takes no s; it takes: gamma, zeta"):
        create_normalizer("clipped", s=1.0)
    register_normalizer("not-a-normalizer", lambda: "softmax")
    try:
        with pytest.raises(TypeError, match="returned str, not a Normalizer"):
            create_normalizer("not-a-normalizer")
    finally:
        unregister_normalizer("not-a-normalizer")


def test_slow_path_is_noted_once_per_class(gen: torch.Generator) -> None:
    class Fresh(HeadTemperature):  # a class no other test has run
        pass

    class Fast(HeadTemperature):
        def attend(self, p):  # noqa: ANN001, ANN202
            return torch.zeros_like(p.q)  # visibly not the reference

    q, k, v = _qkv(gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            attention(q, k, v, normalizer=Fresh(), backend="fused")
        fast = attention(q, k, v, normalizer=Fast(), backend="fused")
    notes = [w for w in caught if "slow path" in str(w.message)]
    assert len(notes) == 1 and "Fresh implements only weights()" in str(notes[0].message)
    assert not Fresh.has_fast_path() and Fast.has_fast_path() and bool((fast == 0).all())
    assert not Fast.supports_band  # a new attend never inherits the band kernel's promise


def test_builtin_learned_parameters_keep_the_gpt_init() -> None:
    assert learned_parameters("softmax", 4) == {} and learned_parameters("softmax1", 4) == {}
    torch.testing.assert_close(learned_parameters("sinks", 4)["logits"], torch.zeros(4))
    s = learned_parameters("ssmax", 3, context=64)["s"]
    torch.testing.assert_close(s, torch.full((3,), 1 / math.log(64)))
    torch.testing.assert_close(learned_parameters("ssmax", 2)["s"], torch.full((2,), 1 / math.log(512)))
    model = GPT(GPTConfig(vocab_size=32, n_layers=1, d_model=16, n_heads=2, context=64, normalizer="ssmax"))
    torch.testing.assert_close(model.blocks[0].attn.normalizer_s.detach(), torch.full((2,), 1 / math.log(64)))
