"""Models: attnlab's small GPT, Hugging Face integration, and model loading."""

from attnlab.models.gpt import GPT, GPTConfig, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
