"""A tiny random Llama (hidden 32, 2 layers, vocab 64) with a word-level tokenizer, saved as a Hugging Face
folder or in the Hugging Face hub cache layout, for the tests of hub ids, the notebook objects and the CLI."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

WORDS = ["[UNK]", "<eos>"] + [f"w{i}" for i in range(62)]  # 64 tokens
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_tokenizer():  # noqa: ANN201
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def words(n: int, start: int = 0) -> str:
    """n known words (no [UNK]), one token each."""
    return " ".join(f"w{(start + i) % 62}" for i in range(n))


def save_folder(folder: Path, seed: int = 0) -> Path:
    tiny_llama(seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def save_in_hub_cache(cache: Path, repo_id: str, seed: int = 0) -> Path:
    """Write the model as huggingface_hub lays out a download: files as blobs named by their hash,
    snapshots/<commit>/ holding relative symlinks to them, refs/main naming the commit. Returns the
    snapshot folder."""
    stage = save_folder(cache.parent / f".stage-{repo_id.replace('/', '--')}", seed)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in stage.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.rmtree(stage)
    return snapshot
