"""attnlab.train: train attnlab's GPT on text, resumably, on one process or many (torchrun).

    from attnlab.train import TrainConfig, train
    from attnlab.models.gpt import GPTConfig
    summary = train(TrainConfig(model=GPTConfig(normalizer="softmax1"), steps=200, out="runs/s1"))
    summary["model"], summary["val_loss"], summary["metrics"]

See docs/training.md.
"""

from attnlab.train.config import TrainConfig
from attnlab.train.loop import train

__all__ = ["TrainConfig", "train"]
