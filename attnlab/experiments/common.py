"""Shared pieces of the studies: the Shakespeare token split, a small in-memory training loop, evaluation.

The studies train many tiny models in one process and then probe them in memory, so they use this short
loop (AdamW, linear warm-up then cosine decay, gradient clipping at 1.0, data order a pure function of the
seed via `LMBatches.batch(step)`) rather than the checkpointing trainer of `attnlab train`. Resume happens
at the granularity of a whole (seed, variant) part, see `base.Parts`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
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
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)


def lr_at(step: int, steps: int, lr: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to 10% of `lr` at `steps` (or constant)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_loop(model: nn.Module, batch_fn: Callable[[int], tuple[Tensor, Tensor]],
               loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], *, steps: int, lr: float,
               warmup: int = 50, weight_decay: float = 0.1, schedule: str = "cosine", log_every: int = 25,
               desc: str = "train", progress: bool = True) -> dict[str, Any]:
    """Train `model` for `steps` steps; batch_fn(step) -> (x, y); returns the logged loss curve and timing."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    model.train()
    curve: list[list[float]] = []
    start = time.perf_counter()
    running = None
    bar = progress_bar(steps, desc, progress)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, schedule)
        x, y = batch_fn(step)
        loss = loss_fn(model, x, y)
        if not torch.isfinite(loss):
            bar.close()
            seconds = time.perf_counter() - start
            return {"curve": curve, "diverged_at": step, "seconds": seconds, "steps": step}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        if step % log_every == 0 or step == steps - 1:
            curve.append([step, value])
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
    bar.close()
    model.eval()
    return {"curve": curve, "diverged_at": None, "seconds": time.perf_counter() - start, "steps": steps}


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
