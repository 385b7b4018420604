"""Tokenizers: byte round trips, loading by name or folder, the cached SmolLM2 tokenizer (realmodel)."""

import pytest
import torch

from attnlab.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

SAMPLES = ["", "hello", "To be, or not to be", "naïve café — ✓ 日本語 🙂", "tab\tnew\nline\r\n\x00"]


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_byte_decode_replaces_cut_characters():
    ids = ByteTokenizer().encode("é!")  # two bytes for é
    assert ByteTokenizer().decode(ids[1:]) == "\ufffd!"


def test_byte_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="range"):
        ByteTokenizer().decode([65, 300])


def test_load_byte_and_interface():
    tok = load_tokenizer()
    assert isinstance(tok, ByteTokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("byte", 256, None)
    assert load_tokenizer("byte").encode("A") == [65]


def test_unknown_tokenizer_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt9'.*byte, smollm2"):
        load_tokenizer("gpt9")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer(str(tmp_path / "missing-folder"))


def _tiny_hf_folder(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, "to": 2, "be": 3, "or": 4, "not": 5}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="</s>").save_pretrained(path)
    return vocab


def test_hf_folder_is_wrapped(tmp_path):
    vocab = _tiny_hf_folder(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == len(vocab)
    assert tok.eos_id == vocab["</s>"]
    ids = tok.encode("to be or not to be")
    assert ids == [vocab[w] for w in "to be or not to be".split()]  # no special tokens added
    assert tok.decode(ids).split() == "to be or not to be".split()


@pytest.mark.realmodel
def test_smollm2_round_trip_and_cache():
    from attnlab.io import cache_dir

    tok = load_tokenizer("smollm2")
    assert isinstance(tok, HFTokenizer) and tok.name == "smollm2"
    assert tok.vocab_size == 49152 and tok.eos_id is not None
    assert (cache_dir() / "tokenizers" / "smollm2" / "tokenizer.json").is_file()
    for text in SAMPLES[1:4]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode("To be, or not to be")) < len("To be, or not to be")  # BPE merges bytes
    # The cached folder loads as a plain HF folder and tokenizes identically.
    again = load_tokenizer(str(cache_dir() / "tokenizers" / "smollm2"))
    assert again.encode(SAMPLES[3]) == tok.encode(SAMPLES[3])
