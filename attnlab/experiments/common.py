"""Shared pieces of the studies: the Shakespeare token split, `train_loop`, evaluation.

The studies train many tiny models in one process and then probe them in memory. `train_loop` runs them on
the one training core, `attnlab.train.fit` (AdamW, linear warm-up then cosine decay to 10%, gradient
clipping at 1.0; data order a pure function of the seed via `LMBatches.batch(step)`), without checkpoints:
resume happens at the granularity of a whole (seed, variant) part, see `base.Parts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn


@lru_cache(maxsize=4)
def shakespeare_split(val_fraction: float = 0.1, seed: int = 0, max_chars: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """Byte tokens of the Shakespeare corpus split into (train, val) by `attnlab.data.split_tokens`."""
    from attnlab.data import ByteTokenizer, encode_corpus, load_text, split_tokens

    text = load_text()
    if max_chars is not None:
        text = text[:max_chars]
    tokens = encode_corpus(text, ByteTokenizer())
    return split_tokens(tokens, val_fraction=val_fraction, seed=seed)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """`update(n=1)` / `close()` progress through the one progress module (bar, notebook bar or log lines)."""
    from attnlab.train.progress import counter

    return counter(total, desc, enabled)


def lr_at(step: int, steps: int, lr: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to 10% of `lr` at `steps` (or constant)."""
    from attnlab.train.fit import lr_at as schedule_lr

    return schedule_lr(step, steps=steps, lr=lr, warmup=warmup, schedule=schedule, min_lr_ratio=0.1)


# What `attnlab run --device/--dtype` chose for every train_loop of the study, so a study's code need not pass
# it through (and its config, whose hash keys the resumable parts, does not change).
_STUDY_TRAINING: ContextVar[dict[str, Any] | None] = ContextVar("attnlab_study_training", default=None)


@contextmanager
def study_training(device: str | None = None, autocast: str | None = None) -> Iterator[None]:
    """Inside: train_loop trains on `device` (where a study passes none) with `autocast`; None keeps each."""
    chosen = {k: v for k, v in (("device", device), ("autocast", autocast)) if v is not None}
    token = _STUDY_TRAINING.set(chosen)
    try:
        yield
    finally:
        _STUDY_TRAINING.reset(token)


def train_loop(model: nn.Module, batch_fn: Callable[[int], tuple[Tensor, Tensor]],
               loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], *, steps: int, lr: float,
               warmup: int = 50, weight_decay: float = 0.1, schedule: str = "cosine", log_every: int = 25,
               desc: str = "train", progress: bool = True, device: str | torch.device | None = None,
               autocast: str | bool | None = "auto") -> dict[str, Any]:
    """Train `model` for `steps` steps on `attnlab.train.fit` (AdamW 0.9/0.95, clip 1.0, the schedule of
    `lr_at`); batch_fn(step) -> (x, y) on the CPU; returns the logged loss curve and timing.

    device: None trains where the model is; "cuda"/"auto" trains there (bf16 autocast on CUDA unless
    autocast=None) and moves the model back afterwards, so the study's probes run where they expect.
    Under torchrun each process trains on its share of the batch (DDP). A non-finite loss or gradient norm
    stops the loop before the update (`diverged_at` = that 0-based step); so does an update that made the
    weights non-finite (those weights stay in the model: the study records the divergence).
    """
    from attnlab.train.fit import fit

    chosen = _STUDY_TRAINING.get() or {}
    device = chosen.get("device", device) if device is None else device
    autocast = chosen.get("autocast", autocast)
    home = next(model.parameters()).device
    run = fit(model, loss_fn, batch_fn, steps=steps, lr=lr, warmup=warmup, schedule=schedule,
              min_lr_ratio=0.1, weight_decay=weight_decay, betas=(0.9, 0.95), grad_clip=1.0, device=device,
              autocast=autocast, seed=None, on_nonfinite="stop", log_every=log_every, progress=progress,
              desc=desc, catch_signals=False)
    model.to(home)
    model.eval()
    return {"curve": run["curve"], "diverged_at": run["diverged_at"], "seconds": run["seconds"],
            "steps": run["steps"], "tokens_per_s": run["tokens_per_s"], "device": run["device"]}


def lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The GPT's own loss (next-token cross-entropy plus any auxiliary terms it adds)."""
    return model(x, y)[1]


@torch.no_grad()
def eval_lm(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Mean next-token cross-entropy (nats/token) over the batches, token-weighted."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                                 reduction="sum")
        total += float(loss)
        count += y.numel()
    return total / max(1, count)
