"""attnlab.train: train attnlab's GPT on text, resumably, on one process or many (torchrun).

    from attnlab.train import TrainConfig, train
    from attnlab.models.gpt import GPTConfig
    summary = train(TrainConfig(model=GPTConfig(normalizer="softmax1"), steps=200, out="runs/s1"))
    summary["model"], summary["val_loss"], summary["metrics"]

`fit(model, loss_fn, batch_fn, steps=..., lr=...)` is the one training core underneath (any nn.Module,
Hugging Face causal LMs included). See docs/training.md.
"""

from attnlab.train.config import TrainConfig
from attnlab.train.fit import TrainingDiverged, causal_lm_loss, fit
from attnlab.train.loop import train

__all__ = ["TrainConfig", "TrainingDiverged", "causal_lm_loss", "fit", "train"]
