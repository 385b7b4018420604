"""A tiny random Hugging Face Llama with its own byte-level tokenizer, built offline in a second.

The smoke presets and the tests need a real Hugging Face causal LM (the same class, attention interface,
save_pretrained / load_model round trip as SmolLM2) without loading 135M parameters. The tokenizer is a
`PreTrainedTokenizerFast` over the 256 byte-level symbols with no merges, so any text encodes and the
folder it is saved in loads back with `AutoTokenizer` like any other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

TINY_NAME = "tiny-llama"


def byte_tokenizer() -> Any:
    """A Hugging Face fast tokenizer with one id per byte (256 ids), made without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def tiny_llama(seed: int = 0, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               context: int = 512) -> tuple[nn.Module, Any]:
    """(LlamaForCausalLM with random weights from `seed`, its byte tokenizer), float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=context, tie_word_embeddings=True,
                         attn_implementation="sdpa")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval(), byte_tokenizer()


__all__ = ["TINY_NAME", "byte_tokenizer", "tiny_llama"]
