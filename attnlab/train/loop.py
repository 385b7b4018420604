"""`train(config) -> summary`: the training loop, resumable and data-parallel.

- Data: `LMBatches.batch(step)` is a pure function of (seed, step), so a resumed run sees the batches an
  uninterrupted one would have; together with the saved AdamW state and RNG state, resuming reproduces the
  uninterrupted loss curve exactly (float32 on CPU: bitwise).
- Schedule: linear warmup for `warmup` steps, then cosine decay from lr to min_lr (lr/10 by default) at
  `steps` (Loshchilov & Hutter 2017); AdamW (betas 0.9, 0.95) with weight decay on matrices only.
- Data parallel: under `torchrun` (WORLD_SIZE > 1) each rank trains on its contiguous share of the same
  global batch through DistributedDataParallel (gloo on CPU, NCCL on CUDA), so N processes follow the
  single-process trajectory. Rank 0 alone writes files and shows progress.
- Ctrl-C (or SIGTERM): the step in flight finishes, a checkpoint is saved, and the summary says
  `interrupted` with the command to resume. A second Ctrl-C aborts at once.
- Nothing global is left behind: the caller's RNG state and signal handlers are restored, so experiments
  may call `train` many times in one process.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.io import atomic_write_json, provenance
from attnlab.models.gpt import GPT
from attnlab.train.checkpoint import (
    METRICS,
    MetricsLog,
    check_writable,
    find_checkpoint,
    load_state,
    load_train_config,
    save_checkpoint,
    set_rng_state,
)
from attnlab.train.config import TrainConfig, diff

Callback = Callable[[int, dict[str, Any]], None]


# ---------------------------------------------------------------- devices and processes
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def setup_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=resolve_device(device_name))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns)


# ---------------------------------------------------------------- Ctrl-C
class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps. A second signal aborts at once."""

    def __init__(self) -> None:
        self.set = False

    def handler(self, signum: int, frame: object) -> None:  # noqa: ARG002
        if self.set:
            raise KeyboardInterrupt
        self.set = True


@contextmanager
def _catch_stop_signals():  # noqa: ANN202
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals reach the main thread only; a worker thread just runs to the end
        return
    previous = {sig: signal.signal(sig, flag.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- pieces of the loop
def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    return config.final_lr + 0.5 * (config.lr - config.final_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        # Matrices (projections, embeddings) decay; gains, biases, sink logits, ssmax s, sigma gammas do not.
        (decay if param.dim() >= 2 else no_decay).append(param)
        del name
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def load_data(config: TrainConfig, data: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, int, str]:
    """(train tokens, val tokens, vocab size, text description)."""
    if data is not None:
        train_tokens, val_tokens = data
        return train_tokens.long(), val_tokens.long(), config.model.vocab_size, "tokens passed in"
    from attnlab.data.batches import encode_corpus, split_tokens
    from attnlab.data.corpus import load_text, text_sha256
    from attnlab.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(config.tokenizer)
    text = load_text(config.text)
    tokens = encode_corpus(text, tokenizer)
    train_tokens, val_tokens = split_tokens(tokens, config.val_fraction, seed=config.seed)
    desc = f"{config.text or 'shakespeare'} sha256:{text_sha256(text)}"
    return train_tokens, val_tokens, tokenizer.vocab_size, desc


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[Tensor, Tensor]], ctx: Dist) -> float:
    """Mean next-token cross-entropy over the validation batches (sharded over ranks, then reduced)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum of losses * tokens, tokens)
    for i, (x, y) in enumerate(batches):
        if i % ctx.world_size != ctx.rank:
            continue
        x, y = x.to(ctx.device), y.to(ctx.device)
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        total += torch.stack([loss.double() * y.numel(), torch.tensor(float(y.numel()), device=ctx.device,
                                                                        dtype=torch.float64)])
    if ctx.world_size > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1].clamp_min(1))


def _progress(total: int, initial: int, enabled: bool):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", file=sys.stderr,
                dynamic_ncols=True, desc="train")


# ---------------------------------------------------------------- the loop
def train(config: TrainConfig, progress: bool = True, callback: Callback | None = None,
          data: tuple[Tensor, Tensor] | None = None) -> dict[str, Any]:
    """Train a GPT as `config` says; returns a summary dict.

    Args:
        progress: show a tqdm bar (rank 0, stderr) with loss, tokens/s and ETA.
        callback: called as callback(step, record) after every optimizer step (record has "loss", "lr").
        data: (train_tokens, val_tokens) 1-D LongTensors to use instead of config.text / config.tokenizer
            (the model's vocab_size is then taken from config.model).

    Returns:
        {"model": the trained GPT (unwrapped, on its device), "metrics": the logged records, "step",
        "final_loss", "val_loss", "best_val_loss", "tokens_per_s", "elapsed_s", "interrupted", "resumed_from",
        "out", "checkpoint", "resume_command", "config"}; summary.json in OUT holds the JSON-able part.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train needs a TrainConfig, got {type(config).__name__}")
    ctx = setup_distributed(config.device)
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), _catch_stop_signals() as stop:
            return _train(config, ctx, progress, callback, data, stop)
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: Dist, progress: bool, callback: Callback | None,
           data: tuple[Tensor, Tensor] | None, stop: _StopFlag) -> dict[str, Any]:
    from attnlab.data.batches import LMBatches, eval_batches

    out = Path(config.out) if config.out is not None else None
    checkpoint_dir = None
    if out is not None:
        if ctx.main:
            check_writable(out)
        checkpoint_dir = find_checkpoint(out) if out.exists() else None
        if config.resume and checkpoint_dir is None:
            raise ConfigError(f"--resume: no checkpoint in {out}; start a new run without --resume")
        occupied = checkpoint_dir is not None or (out / METRICS).exists()
        if occupied and not config.resume and not config.overwrite:
            raise ConfigError(f"{out} already holds a training run; pass --resume to continue it, "
                              f"--overwrite to start over, or choose another --out")

    train_tokens, val_tokens, vocab_size, text_desc = load_data(config, data)
    model_cfg = replace(config.model, vocab_size=vocab_size, seed=config.seed)
    config = replace(config, model=model_cfg)
    batches = LMBatches(train_tokens, model_cfg.context, config.batch_size, seed=config.seed)
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} processes; "
                          f"pick a multiple of --nproc_per_node")
    val = []
    if config.eval_every and val_tokens.numel():
        val = eval_batches(val_tokens, model_cfg.context, config.batch_size, max_batches=config.eval_batches)

    torch.manual_seed(config.seed)  # dropout's stream; the model's init uses its own seeded fork
    start_step, resumed_from = 0, None
    log = MetricsLog(out / METRICS if (out is not None and ctx.main) else None)
    if config.resume:
        saved = load_train_config(checkpoint_dir)
        differing = diff(saved, config)
        if differing:
            raise ConfigError(f"cannot resume {out}: its checkpoint was trained with another config "
                              f"({'; '.join(differing)}); resume with the same settings or choose a new "
                              f"--out")
        model, optim_state, state = load_state(checkpoint_dir, ctx.device)
        optimizer = make_optimizer(model, config)
        optimizer.load_state_dict(optim_state)
        start_step = resumed_from = int(state["step"])
        set_rng_state(state["rng"])
        log.truncate(start_step)
    else:
        model = GPT(model_cfg).to(ctx.device)
        optimizer = make_optimizer(model, config)
        log.reset()
    model.train()
    net: nn.Module = model
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)

    tokens_per_step = config.batch_size * model_cfg.context
    bar = _progress(config.steps, start_step, progress and ctx.main)
    started = time.perf_counter()
    interval_start, interval_steps = started, 0
    last_loss = last_val = best_val = tokens_per_s = None
    step = start_step
    interrupted = False
    try:
        while step < config.steps:
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batches.batch(step, ctx.rank, ctx.world_size)
            _, loss = net(x.to(ctx.device), y.to(ctx.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            interval_steps += 1
            if not math.isfinite(loss_value := float(loss.detach())):
                raise ConfigError(f"loss became {loss_value} at step {step}; lower --lr or raise --warmup")
            record = {"split": "train", "step": step, "loss": loss_value, "lr": lr, **_parts(model)}
            if step % config.log_every == 0 or step == 1 or step == config.steps:
                now = time.perf_counter()
                tokens_per_s = interval_steps * tokens_per_step / max(now - interval_start, 1e-9)
                interval_start, interval_steps = now, 0
                record.update(tokens_per_s=tokens_per_s, elapsed_s=now - started)
                log.append(record)
                last_loss = loss_value
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_s:,.0f}",
                                **({"val": f"{last_val:.4f}"} if last_val is not None else {}))
            if val and (step % config.eval_every == 0 or step == config.steps):
                last_val = evaluate(net, val, ctx)
                best_val = last_val if best_val is None else min(best_val, last_val)
                log.append({"split": "val", "step": step, "val_loss": last_val})
                record["val_loss"] = last_val
            if callback is not None:
                callback(step, record)
            bar.update(1)
            due = config.save_every and step % config.save_every == 0 and step < config.steps
            if out is not None and due:
                _save(out, model, optimizer, step, config, ctx)
            if _should_stop(stop, ctx):
                interrupted = True
                break
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    checkpoint = _save(out, model, optimizer, step, config, ctx) if out is not None else None
    summary: dict[str, Any] = {
        "step": step, "steps": config.steps, "final_loss": last_loss, "val_loss": last_val,
        "best_val_loss": best_val, "tokens_per_s": (step - start_step) * tokens_per_step / max(elapsed, 1e-9),
        "elapsed_s": elapsed, "interrupted": interrupted, "resumed_from": resumed_from,
        "world_size": ctx.world_size, "device": str(ctx.device), "num_params": model.num_params(),
        "text": text_desc, "out": str(out) if out is not None else None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "resume_command": f"attnlab train --out {out} --resume" if out is not None else None,
    }
    if out is not None and ctx.main:
        atomic_write_json(out / "summary.json", {**summary, **provenance(config, config.seed)})
    summary.update(model=model, metrics=log.records, config=config)
    return summary


def _parts(model: GPT) -> dict[str, float]:
    """The loss's parts when auxiliary losses are on (cross-entropy and each penalty)."""
    parts = model.last_losses
    return {f"loss_{k}": v for k, v in parts.items()} if len(parts) > 1 else {}


def _should_stop(stop: _StopFlag, ctx: Dist) -> bool:
    if ctx.world_size == 1:
        return stop.set
    # Every rank must stop after the same step, or the others would wait forever in the next all-reduce.
    flag = torch.tensor([1.0 if stop.set else 0.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _save(out: Path, model: GPT, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig,
          ctx: Dist) -> Path:
    path = out / "checkpoint"
    if ctx.main:
        path = save_checkpoint(out, model, optimizer, step, config)
    if ctx.world_size > 1:
        dist.barrier()
    return path


__all__ = ["lr_at", "make_optimizer", "resolve_device", "train"]
