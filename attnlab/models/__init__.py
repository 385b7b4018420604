"""Models: attnlab's small GPT, Hugging Face integration, and model loading (`load_model(name)` answers
every name, the tiny random models "tiny-gpt" and "tiny-llama" included)."""

from attnlab.models.gpt import GPT, GPTConfig, KVCache
from attnlab.models.loading import load_model

__all__ = ["GPT", "GPTConfig", "KVCache", "load_model"]
