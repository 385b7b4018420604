"""The tiny random models, built offline in a second; `attnlab.models.load_model` loads them by name.

- "tiny-llama" (TINY_NAME): a random Hugging Face Llama with its own byte-level tokenizer. The smoke presets
  and the tests need a real Hugging Face causal LM (the same class, attention interface, save_pretrained /
  load_model round trip as SmolLM2) without loading 135M parameters. The tokenizer is a
  `PreTrainedTokenizerFast` over the 256 byte-level symbols with no merges, so any text encodes and the
  folder it is saved in loads back with `AutoTokenizer` like any other.
- "tiny-gpt" (TINY_GPT_NAME): an untrained 2-layer attnlab byte GPT, for the studies whose smoke presets probe
  a model (and for what runs on attnlab's GPT only, such as segment memory).

Both are pure functions of (seed, context): the caller's random state is left alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

TINY_NAME = "tiny-llama"
TINY_GPT_NAME = "tiny-gpt"
TINY_CONTEXT = {TINY_NAME: 512, TINY_GPT_NAME: 1024}  # positions each is built with unless told otherwise
TINY_NAMES = tuple(TINY_CONTEXT)


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


def tiny_gpt(seed: int = 0, *, context: int = TINY_CONTEXT[TINY_GPT_NAME]) -> nn.Module:
    """attnlab's GPT, untrained (weights from `seed`): 2 layers, width 32, 2 heads, 256 byte ids, eval
    mode."""
    from attnlab.models.gpt import GPT, GPTConfig

    return GPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, context=context, seed=seed)).eval()


def load_tiny(name: str, *, context: int | None = None, seed: int = 0) -> Any:
    """The tiny model `name` (TINY_NAMES) as a LoadedModel, float32 on the CPU: what `load_model` returns
    for these names (it then moves it to the device and dtype asked for)."""
    from attnlab.models.adapter import from_gpt, from_hf

    positions = TINY_CONTEXT[name] if context is None else context
    if name == TINY_GPT_NAME:
        from attnlab.data import ByteTokenizer

        return from_gpt(tiny_gpt(seed, context=positions), ByteTokenizer(), name="tiny byte GPT",
                        source="random (attnlab.models.tiny)")
    model, tokenizer = tiny_llama(seed=seed, context=positions)
    return from_hf(model, tokenizer, name=TINY_NAME, source="random (attnlab.models.tiny)")


__all__ = ["TINY_CONTEXT", "TINY_GPT_NAME", "TINY_NAME", "TINY_NAMES", "byte_tokenizer", "load_tiny",
           "tiny_gpt", "tiny_llama"]
