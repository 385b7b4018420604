"""A folder saved after `attnlab.retrofit` is the same model everywhere (issue 24), and a folder whose weights
do not match it, or hold non-finite values, is refused by name (issue 23).

Tiny random Llama (attnlab.models.tiny) in float64: a model that loads right gives the very same logits, so
the tolerance is 1e-12. Learned tensors are perturbed away from their init, so a load that dropped them
(the old bug: plain softmax without the gates, logits off by up to 5.9) fails the comparison.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import attnlab
from attnlab.advice import AttnlabWarning
from attnlab.errors import ConfigError, ModelError
from attnlab.models.adapter import from_hf
from attnlab.models.hf_native import upgrade_folder
from attnlab.models.retrofit import RECORD_KEY, retrofit_parameters
from attnlab.models.tiny import tiny_llama

SAME = dict(atol=1e-12, rtol=0)
IDS = torch.tensor([[3, 71, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110]])

# Every normalizer retrofit supports, with and without gates, under every kind of recordable span.
CASES = [
    ("softmax", {}, True, None),
    ("softmax1", {}, True, None),
    ("softmax1", {}, False, "window(5)"),
    ("sinks", {}, True, "sinkwindow(1,5)"),
    ("sinks", {}, False, None),
    ("clipped", {"gamma": -0.1}, True, "chunked(4)"),
    ("adaptive", {}, True, "causal"),
    ("ssmax", {}, True, "window(6)"),
    ("ssmax", {}, False, None),
]


def _retrofitted(normalizer: str = "softmax1", options: dict | None = None, gated: bool = True,
                 span: str | None = None) -> torch.nn.Module:
    model, _ = tiny_llama(seed=0)
    model = attnlab.retrofit(model.double(), normalizer, gated=gated, span=span, options=options)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # as after training: a load that drops these tensors changes the logits
        for p in retrofit_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def _edit_config(path: Path, **changes: object) -> None:
    cfg = _config(path)
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    state = load_file(str(file))
    edit(state)
    save_file(state, str(file), metadata={"format": "pt"})


# -- the same model through plain transformers and through attnlab ------------------------------------------
@pytest.mark.parametrize(("normalizer", "options", "gated", "span"), CASES,
                         ids=[f"{n}-{'gated' if g else 'plain'}-{s}" for n, _, g, s in CASES])
def test_plain_transformers_and_load_model_give_the_retrofit(one_thread, tmp_path: Path, normalizer: str,
                                                             options: dict, gated: bool, span: str | None
                                                             ) -> None:
    model = _retrofitted(normalizer, options, gated, span)
    want = _logits(model)
    model.save_pretrained(tmp_path)
    assert _config(tmp_path)["model_type"] == "attnlab_retrofit_llama"
    assert _config(tmp_path)["architectures"] == ["AttnlabRetrofitLlamaForCausalLM"]  # not plain Llama's
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert isinstance(plain, type(model)) and plain.config.attnlab_retrofit == model.config.attnlab_retrofit
    torch.testing.assert_close(_logits(plain), want, **SAME)
    torch.testing.assert_close(_logits(attnlab.load_model(tmp_path, dtype=torch.float64).model), want, **SAME)


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gpt2", "gpt_neox"])
def test_every_supported_architecture_round_trips(one_thread, tmp_path: Path, arch: str) -> None:
    from test_hf import _tiny

    torch.manual_seed(0)
    model = attnlab.retrofit(_tiny(arch).double(), "sinks", gated=True)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in retrofit_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    ids = IDS % 61
    with torch.no_grad():
        want = model(input_ids=ids).logits
        model.save_pretrained(tmp_path)
        assert _config(tmp_path)["model_type"] == f"attnlab_retrofit_{arch}"
        got = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)(input_ids=ids).logits
        ours = attnlab.load_model(tmp_path, dtype=torch.float64).model(input_ids=ids).logits
    torch.testing.assert_close(got, want, **SAME)
    torch.testing.assert_close(ours, want, **SAME)


def test_plain_load_generates_like_the_retrofit(one_thread, tmp_path: Path) -> None:
    model = _retrofitted("sinks", gated=True)
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert plain.generate(IDS, **kw).tolist() == model.generate(IDS, **kw).tolist()


def test_a_load_of_a_load_saves_the_same_model(one_thread, tmp_path: Path) -> None:
    model = _retrofitted("sinks", gated=True, span="window(5)")
    model.save_pretrained(tmp_path / "a")
    attnlab.load_model(tmp_path / "a", dtype=torch.float64).model.save_pretrained(tmp_path / "b")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "b", dtype=torch.float64)
    torch.testing.assert_close(_logits(again), _logits(model), **SAME)


def test_without_attnlab_transformers_refuses_rather_than_loading_another_model(tmp_path: Path) -> None:
    _retrofitted("softmax1", gated=True).save_pretrained(tmp_path)
    code = ("import sys\nfrom transformers import AutoModelForCausalLM\n"
            f"try:\n    AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
            "except ValueError as exc:\n    print(exc)\n    sys.exit(3)\n"
            "sys.exit(0 if 'attnlab' not in sys.modules else 4)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 3, (run.returncode, run.stdout[-500:], run.stderr[-2000:])
    assert "model type `attnlab_retrofit_llama`" in run.stdout and "does not recognize" in run.stdout


def test_a_script_that_only_registers_loads_the_retrofit(tmp_path: Path) -> None:
    """The documented recipe for a transformers-only script: register(), then plain from_pretrained. First,
    the same fresh process unpickles a retrofitted config: its class is found by name."""
    import pickle

    model = _retrofitted("sinks", gated=True, span="window(5)")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "config.pkl").write_bytes(pickle.dumps(model.config))
    code = ("import pickle, sys, torch\n"
            f"c = pickle.loads(open({str(tmp_path / 'config.pkl')!r}, 'rb').read())\n"
            "assert type(c).__name__ == 'AttnlabRetrofitLlamaConfig', type(c)\n"
            "assert c.attnlab_retrofit['normalizer'] == 'sinks', c\n"
            "import attnlab.models.hf_native\nattnlab.models.hf_native.register()\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, dtype=torch.float64)\n"
            f"with torch.no_grad():\n    torch.save(m(input_ids=torch.tensor({IDS.tolist()})).logits, "
            f"{str(tmp_path / 'out.pt')!r})\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), _logits(model), **SAME)


# -- folders saved by an older attnlab ------------------------------------------------------------------
def test_an_older_folder_loads_with_advice_and_upgrades(one_thread, tmp_path: Path) -> None:
    model = _retrofitted("sinks", gated=True, span="window(5)")
    want = _logits(model)
    model.save_pretrained(tmp_path)
    _edit_config(tmp_path, model_type="llama")  # what attnlab wrote before retrofits had their own type
    with pytest.warns(AttnlabWarning, match=r"older attnlab .*upgrade_folder\("):
        lm = attnlab.load_model(tmp_path, dtype=torch.float64)
    torch.testing.assert_close(_logits(lm.model), want, **SAME)
    upgrade_folder(tmp_path)
    assert _config(tmp_path)["model_type"] == "attnlab_retrofit_llama"
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)),
                               want, **SAME)


def test_upgrade_folder_refuses_a_folder_without_a_record(tmp_path: Path) -> None:
    tiny_llama()[0].save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="has no 'attnlab_retrofit' record, so it is not an attnlab"):
        upgrade_folder(tmp_path)


# -- the tokenizer beside the model ---------------------------------------------------------------------
def test_save_pretrained_keeps_the_tokenizer(one_thread, tmp_path: Path) -> None:
    model, tok = tiny_llama(seed=0)
    lm = from_hf(attnlab.retrofit(model, "softmax1", gated=True), tok, name="tiny", source="test")
    lm.save_pretrained(tmp_path / "lm")
    back = attnlab.load_model(tmp_path / "lm")
    assert back.encode("hello").tolist() == lm.encode("hello").tolist()
    lm.tokenizer.save_pretrained(tmp_path / "tok")  # the attnlab tokenizer offers HF's save_pretrained
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


def test_saved_weights_follow_the_umask(one_thread, tmp_path: Path) -> None:
    """transformers writes model.safetensors 0600 through a private temporary file; attnlab's saves (and the
    SmolLM2/GGUF conversion, through the same follow_umask) give it 0666 less the umask, like the rest."""
    import os

    model, tok = tiny_llama(seed=0)
    old = os.umask(0o022)
    try:
        from_hf(model, tok, name="tiny", source="test").save_pretrained(tmp_path)
    finally:
        os.umask(old)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in tmp_path.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == modes["tokenizer.json"] == "0o644", modes


def test_a_cache_converted_by_an_older_attnlab_gets_the_usual_mode(tmp_path: Path) -> None:
    import os

    from attnlab.models.loading import _MARKER, convert_gguf

    (tmp_path / _MARKER).write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "model.safetensors").chmod(0o600)  # what transformers' save left before
    old = os.umask(0o022)
    try:
        assert convert_gguf(tmp_path / "unused.gguf", tmp_path) == tmp_path  # converted already: no work
    finally:
        os.umask(old)
    assert oct((tmp_path / "model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_gpt_save_pretrained_keeps_the_byte_tokenizer(one_thread, tmp_path: Path) -> None:
    from attnlab.models import GPT, GPTConfig
    from attnlab.models.adapter import from_gpt

    lm = from_gpt(GPT(GPTConfig(n_layers=1, d_model=32, n_heads=2, context=16)), "byte", name="g", source="t")
    lm.save_pretrained(tmp_path)
    back = attnlab.load_model(tmp_path)
    assert back.tokenizer.name == "byte" and back.encode("ab").tolist() == [[97, 98]]


# -- load integrity (issue 23) ----------------------------------------------------------------------------
def test_a_non_finite_weight_is_refused_by_name(one_thread, tmp_path: Path) -> None:
    model = _retrofitted("sinks", gated=True)
    with torch.no_grad():
        model.model.layers[1].self_attn.attnlab.gate.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "gate")
    with pytest.raises(ModelError, match=r"weight model\.layers\.1\.self_attn\.attnlab\.gate\.weight holds "
                                         r"NaN or infinite values \(1 tensor\)"):
        attnlab.load_model(tmp_path / "gate")
    plain, _ = tiny_llama(seed=0)
    with torch.no_grad():
        plain.model.layers[0].self_attn.q_proj.weight[1, 2] = float("inf")
    plain.save_pretrained(tmp_path / "base")
    with pytest.raises(ModelError, match=r"weight model\.layers\.0\.self_attn\.q_proj\.weight holds NaN"):
        attnlab.load_model(tmp_path / "base")


def test_a_non_finite_gpt_checkpoint_is_refused(one_thread, tmp_path: Path) -> None:
    from attnlab.models import GPT, GPTConfig

    gpt = GPT(GPTConfig(n_layers=1, d_model=32, n_heads=2, context=16))
    with torch.no_grad():
        next(gpt.parameters()).view(-1)[0] = float("nan")
    gpt.save(tmp_path)
    with pytest.raises(ModelError, match=f"weight {next(iter(dict(gpt.named_parameters())))} holds NaN"):
        attnlab.load_model(tmp_path)


def test_a_gpt_checkpoint_whose_shapes_differ_from_its_config_is_refused(one_thread, tmp_path: Path) -> None:
    from attnlab.models import GPT, GPTConfig

    GPT(GPTConfig(n_layers=1, d_model=32, n_heads=2, context=16)).save(tmp_path)
    _edit_config(tmp_path, mlp_ratio=2)
    with pytest.raises(ModelError, match=r"the weights do not match config\.json \(wrong shape "
                                         r"blocks\.0\.mlp\.fc\.weight \(128x32 in the file, 64x32 in the "
                                         r"config\), blocks\.0\.mlp\.proj\.weight .*GPT\.save$"):
        attnlab.load_model(tmp_path)


def test_a_missing_tensor_is_refused_unless_a_partial_load_is_asked_for(one_thread, tmp_path: Path) -> None:
    model = _retrofitted("softmax1", gated=True)
    model.save_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelError, match=r"do not match config\.json \(missing "
                                         r"model\.layers\.1\.mlp\.up_proj\.weight\).*strict=False"):
        attnlab.load_model(tmp_path)
    with pytest.warns(AttnlabWarning, match=r"partial load \(strict=False\): missing model\.layers\.1\.mlp"):
        attnlab.load_model(tmp_path, strict=False)


def test_missing_gates_start_open_in_a_partial_load(one_thread, tmp_path: Path) -> None:
    model = _retrofitted("softmax1", gated=True)
    model.save_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda s: [s.pop(k) for k in list(s) if ".attnlab.gate." in k])
    with pytest.warns(AttnlabWarning, match=r"missing model\.layers\.0\.self_attn\.attnlab\.gate\.bias"):
        lm = attnlab.load_model(tmp_path, dtype=torch.float64, strict=False)
    ungated = _retrofitted("softmax1", gated=False)  # same base weights, gates exactly 1
    torch.testing.assert_close(_logits(lm.model), _logits(ungated), **SAME)


def test_unexpected_and_wrong_shape_tensors_are_named(one_thread, tmp_path: Path) -> None:
    tiny_llama(seed=0)[0].save_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda s: s.update({"model.extra.weight": torch.zeros(2),
                                                "model.norm.weight": torch.ones(63)}))
    with pytest.raises(ModelError, match=r"unexpected model\.extra\.weight; wrong shape model\.norm\.weight "
                                         r"\(63 in the file, 64 in the config\)"):
        attnlab.load_model(tmp_path)


def test_retrofit_tensors_without_their_record_are_refused(one_thread, tmp_path: Path) -> None:
    _retrofitted("sinks", gated=True).save_pretrained(tmp_path)
    _edit_config(tmp_path, model_type="llama", **{RECORD_KEY: None})
    for strict in (True, False):  # loading the base alone would be a different model, partial or not
        with pytest.raises(ModelError, match=r"holds attnlab retrofit tensors \(model\.layers\.0\.self_attn\."
                                             r"attnlab\..*no 'attnlab_retrofit' record"):
            attnlab.load_model(tmp_path, strict=strict)


def test_a_retrofit_type_without_its_record_is_refused(one_thread, tmp_path: Path) -> None:
    _retrofitted("sinks", gated=True).save_pretrained(tmp_path)
    _edit_config(tmp_path, **{RECORD_KEY: None})
    with pytest.raises(ConfigError, match="needs its 'attnlab_retrofit' record"):
        attnlab.load_model(tmp_path)


def test_check_finite_is_not_fooled_by_a_sum_that_overflows() -> None:
    from attnlab.models.integrity import check_finite

    layer = torch.nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight.fill_(3e38)  # finite, but its float32 sum is inf: the exact check must clear it
    check_finite(layer, "big")
    with torch.no_grad():
        layer.bias[2] = -float("inf")
    with pytest.raises(ModelError, match=r"big: weight bias holds NaN or infinite values \(1 tensor\)"):
        check_finite(layer, "big")


@pytest.mark.realmodel
def test_smollm2_retrofit_loads_the_same_through_plain_transformers(one_thread, tmp_path: Path) -> None:
    """Measured with the old format (base model_type): plain transformers dropped the gates and moved the
    logits by up to 36 (74% argmax agreement) on this prompt; now the load is bit for bit."""
    lm = attnlab.load_model("smollm2")
    model = attnlab.retrofit(lm.model, "softmax1", gated=True)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in retrofit_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ids = lm.encode("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer")
    with torch.no_grad():
        want = model(ids).logits
        lm.save_pretrained(tmp_path)
        got = AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert attnlab.load_model(tmp_path).encode("To be").tolist() == lm.encode("To be").tolist()
