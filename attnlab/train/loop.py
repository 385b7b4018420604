"""`train(config) -> summary`: attnlab's GPT trained on text, on the one training core `attnlab.train.fit`.

This module adds what is specific to a GPT run on text and leaves the loop itself to `fit` (schedule,
AdamW groups, clipping, devices, bf16 autocast, DDP, crash-safe checkpoints, non-finite stop, progress):

- Data: `LMBatches.batch(step)` is a pure function of (seed, step), so a resumed run sees the batches an
  uninterrupted one would have; together with the saved AdamW state and RNG state, resuming reproduces the
  uninterrupted loss curve exactly (float32 on CPU: bitwise).
- Schedule: linear warmup for `warmup` steps, then cosine decay from lr to min_lr (lr/10 by default) at
  `steps` (Loshchilov & Hutter 2017); AdamW (betas 0.9, 0.95) with weight decay on matrices only.
- Before anything is built, the memory a step needs is estimated (`attnlab.train.memory`) and a config that
  cannot fit is refused with the figure and what the device has.
- Validation, OUT/metrics.jsonl, OUT/summary.json, the train_config.json inside each checkpoint, and the
  resume rules (which settings may change: `config.RESUMABLE_FIELDS`).
- Ctrl-C (or SIGTERM): the step in flight finishes, a checkpoint is saved, and the summary says
  `interrupted` with the command to resume. A second Ctrl-C aborts at once.
- Nothing global is left behind: the caller's RNG state and signal handlers are restored, so experiments
  may call `train` many times in one process.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.io import atomic_write_json, check_out_dir, provenance
from attnlab.models.gpt import GPT
from attnlab.train.checkpoint import (
    CHECKPOINT,
    checkpoint_step,
    discard_checkpoints,
    find_checkpoint,
    load_train_config,
    missing_files,
    recover_checkpoint,
)
from attnlab.train.config import RESUMABLE_FIELDS, TrainConfig, changed, diff, with_derived
from attnlab.train.distributed import Dist, resolve_device, setup_distributed
from attnlab.train.fit import fit, make_adamw
from attnlab.train.fit import lr_at as fit_lr_at
from attnlab.train.metrics_log import METRICS, MetricsLog

Callback = Callable[[int, dict[str, Any]], None]


# ---------------------------------------------------------------- pieces of the loop
def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    return fit_lr_at(step, steps=config.steps, lr=config.lr, warmup=config.warmup,
                     min_lr_ratio=_floor(config))


def _floor(config: TrainConfig) -> float:
    return 0.1 if config.min_lr is None else config.min_lr / config.lr


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95) with weight decay on matrices only (`attnlab.train.fit.make_adamw`)."""
    return make_adamw(model, config.lr, config.weight_decay)


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


# ---------------------------------------------------------------- the run
def train(config: TrainConfig, progress: bool = True, callback: Callback | None = None,
          data: tuple[Tensor, Tensor] | None = None) -> dict[str, Any]:
    """Train a GPT as `config` says; returns a summary dict.

    Args:
        progress: show progress on stderr (rank 0): a tqdm bar on a terminal, plain lines otherwise.
        callback: called as callback(step, record) after every optimizer step (record has "loss", "lr").
        data: (train_tokens, val_tokens) 1-D LongTensors to use instead of config.text / config.tokenizer
            (the model's vocab_size is then taken from config.model).

    Returns:
        {"model": the trained GPT (unwrapped, on its device), "metrics": the logged records, "step",
        "final_loss", "val_loss", "best_val_loss", "tokens_per_s", "elapsed_s", "interrupted", "resumed_from",
        "complete" (True when --resume found the run already finished and did nothing), "changed_on_resume",
        "out", "checkpoint", "resume_command", "config"}; summary.json in OUT holds the JSON-able part.

    Raises:
        TrainingDiverged (an AttnlabError) when the loss, gradients or weights become non-finite; the
        message names the step, the cause and the last good checkpoint.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train needs a TrainConfig, got {type(config).__name__}")
    ctx = setup_distributed(config.device)
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            result = _train(config, ctx, progress, callback, data)
        if ctx.owns_group and dist.is_initialized():
            # Every rank done before any tears the group down: a gloo rank that destroys it while its peer
            # is still inside the last save aborts ("terminate called without an active exception").
            dist.barrier()
        return result
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: Dist, progress: bool, callback: Callback | None,
           data: tuple[Tensor, Tensor] | None) -> dict[str, Any]:
    from attnlab.data.batches import LMBatches, eval_batches

    out = Path(config.out) if config.out is not None else None
    saved: TrainConfig | None = None
    start_step = 0
    if out is not None:
        checkpoint_dir = find_checkpoint(out)
        if config.resume:
            if checkpoint_dir is None:
                raise ConfigError(_no_checkpoint(out))
            saved = load_train_config(checkpoint_dir)
            differing = diff(saved, config)
            if differing:
                may = ", ".join(f for f in RESUMABLE_FIELDS if f not in ("out", "resume", "overwrite"))
                raise ConfigError(f"cannot resume {out}: its checkpoint was trained with another config "
                                  f"({'; '.join(differing)}); only {may} may change on resume; resume with "
                                  f"the same settings or choose a new --out")
            start_step = checkpoint_step(checkpoint_dir) or 0
            if start_step == config.steps:
                return _complete(config, out, checkpoint_dir, ctx)  # touches nothing on disk
            if start_step > config.steps:
                raise ConfigError(f"cannot resume {out} with --steps {config.steps}: its checkpoint is "
                                  f"already at step {start_step}; pass --steps {start_step} or more")
        elif (checkpoint_dir is not None or (out / METRICS).exists()) and not config.overwrite:
            raise ConfigError(f"{out} already holds a training run; pass --resume to continue it, "
                              f"--overwrite to start over, or choose another --out")
        if ctx.main:
            check_out_dir(out)

    train_tokens, val_tokens, vocab_size, text_desc = load_data(config, data)
    config = with_derived(config, vocab_size)
    model_cfg = config.model
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} processes; "
                          f"pick a multiple of --nproc_per_node")
    if config.memory_check:
        from attnlab.train.memory import check_fits, estimate_gpt_bytes

        per_rank = config.batch_size // ctx.world_size
        check_fits(estimate_gpt_bytes(model_cfg, per_rank, ctx.device), ctx.device,
                   f"training at --batch-size {config.batch_size} x --context {model_cfg.context}",
                   "lower --batch-size or --context")
    batches = LMBatches(train_tokens, model_cfg.context, config.batch_size, seed=config.seed)
    val = []
    if config.eval_every and val_tokens.numel():
        val = eval_batches(val_tokens, model_cfg.context, config.batch_size, max_batches=config.eval_batches)

    log = MetricsLog(out / METRICS if (out is not None and ctx.main) else None)
    resume_changes = changed(saved, config) if saved is not None else {}
    if config.resume:
        log.truncate(start_step)
    else:
        if out is not None and ctx.main:
            discard_checkpoints(out)  # --overwrite: an old run's checkpoint must not outrank the new one
        log.reset()
    if resume_changes and progress and ctx.main:
        listed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in resume_changes.items())
        print(f"attnlab: resuming {out} at step {start_step} with {listed}", file=sys.stderr)
    model = GPT(model_cfg)

    tokens_per_step = config.batch_size * model_cfg.context
    timing = {"start": time.perf_counter(), "steps": 0}
    last: dict[str, float | None] = {"loss": None, "val": None, "best": None}

    def on_step(step: int, record: dict[str, Any]) -> None:
        timing["steps"] += 1
        entry = {"split": "train", "step": step, "loss": record["loss"], "lr": record["lr"], **_parts(model)}
        if step % config.log_every == 0 or step == 1 or step == config.steps:
            now = time.perf_counter()
            tokens_per_s = timing["steps"] * tokens_per_step / max(now - timing["start"], 1e-9)
            timing.update(start=now, steps=0)
            entry.update(tokens_per_s=tokens_per_s, elapsed_s=record["elapsed_s"])
            log.append(entry)
            last["loss"] = record["loss"]
        if val and (step % config.eval_every == 0 or step == config.steps):
            last["val"] = evaluate(model, val, ctx)
            last["best"] = last["val"] if last["best"] is None else min(last["best"], last["val"])
            log.append({"split": "val", "step": step, "val_loss": last["val"]})
            entry["val_loss"] = record["val_loss"] = last["val"]
        if callback is not None:
            callback(step, entry)

    smaller = min(config.lr / 10, 1e-3)  # --lr 1e30 diverges; 1e29 would too

    def hint(good: Path | None) -> str:
        if out is None:
            return "lower the learning rate or lengthen the warmup"
        if good is None:  # nothing to resume from: a --resume command would only fail
            return (f"start over with a smaller learning rate: rerun the same attnlab train command with "
                    f"--overwrite --lr {smaller:g}")
        return (f"resume with a smaller learning rate: attnlab train --out {out} --resume --lr {smaller:g} "
                f"(or start over: rerun the command with --overwrite --lr {smaller:g})")
    run = fit(model, _gpt_loss, batches.batch, steps=config.steps, lr=config.lr, warmup=config.warmup,
              min_lr_ratio=_floor(config), weight_decay=config.weight_decay, grad_clip=config.grad_clip,
              device=ctx.device, autocast=config.autocast, sharded_batches=True, seed=config.seed,
              out=out, save_every=config.save_every, resume=config.resume,
              checkpoint_files={"train_config.json": config.to_dict()}, on_nonfinite="raise",
              log_every=config.log_every, progress=progress, desc="train", on_step=on_step,
              catch_signals=True, resume_hint=hint)
    step = run["steps"]
    summary: dict[str, Any] = {
        "step": step, "steps": config.steps, "final_loss": last["loss"], "val_loss": last["val"],
        "best_val_loss": last["best"],
        "tokens_per_s": (step - start_step) * tokens_per_step / max(run["seconds"], 1e-9),
        "elapsed_s": run["seconds"], "interrupted": run["interrupted"], "complete": False,
        "resumed_from": start_step if config.resume else None, "changed_on_resume": resume_changes,
        "world_size": ctx.world_size, "device": str(ctx.device), "num_params": model.num_params(),
        "text": text_desc, "out": str(out) if out is not None else None,
        "checkpoint": str(run["checkpoint"]) if run["checkpoint"] is not None else None,
        "resume_command": f"attnlab train --out {out} --resume" if out is not None else None,
    }
    if out is not None and ctx.main:
        atomic_write_json(out / "summary.json", {**summary, **provenance(config, config.seed)})
    summary.update(model=model, metrics=log.records, config=config)
    return summary


def _gpt_loss(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return net(x, y)[1]


def _no_checkpoint(out: Path) -> str:
    folder = out / CHECKPOINT
    if folder.exists():
        lost = ", ".join(missing_files(folder)) or "?"
        return (f"--resume: {folder} is incomplete (missing {lost}) and no earlier checkpoint is left; "
                f"start over with --overwrite")
    return f"--resume: no checkpoint in {out}; start a new run without --resume"


def _complete(config: TrainConfig, out: Path, checkpoint_dir: Path, ctx: Dist) -> dict[str, Any]:
    """The summary of a run that --resume finds already finished, read from disk. A kill during or right
    after the final save leaves its records unfinished: the leftover copies (.checkpoint.old, .trash-*) are
    discarded and summary.json is written from metrics.jsonl. A finished run's folder is left untouched."""
    if ctx.main:
        checkpoint_dir = recover_checkpoint(out) or checkpoint_dir
    try:
        previous = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        previous = previous if isinstance(previous, dict) else {}
    except (OSError, ValueError):
        previous = {}
    records = MetricsLog(out / METRICS).read()
    if not previous and ctx.main:
        train_losses = [r["loss"] for r in records if r.get("split") == "train" and "loss" in r]
        vals = [r["val_loss"] for r in records if r.get("split") == "val" and "val_loss" in r]
        previous = {"step": config.steps, "steps": config.steps,
                    "final_loss": train_losses[-1] if train_losses else None,
                    "val_loss": vals[-1] if vals else None, "best_val_loss": min(vals) if vals else None,
                    "out": str(out), "checkpoint": str(checkpoint_dir), "complete": True,
                    "note": "written on --resume: the run was killed after its final checkpoint"}
        atomic_write_json(out / "summary.json", {**previous, **provenance(config, config.seed)})
    model = GPT.from_pretrained(checkpoint_dir, map_location=ctx.device)
    summary = {key: previous.get(key) for key in ("final_loss", "val_loss", "best_val_loss", "tokens_per_s",
                                                   "elapsed_s", "text", "num_params")}
    summary.update(step=config.steps, steps=config.steps, interrupted=False, complete=True,
                   resumed_from=config.steps, changed_on_resume={}, world_size=ctx.world_size,
                   device=str(ctx.device), out=str(out), checkpoint=str(checkpoint_dir),
                   resume_command=f"attnlab train --out {out} --resume --steps {2 * config.steps}",
                   model=model, metrics=records, config=config)
    return summary


def _parts(model: GPT) -> dict[str, float]:
    """The loss's parts when auxiliary losses are on (cross-entropy and each penalty)."""
    parts = model.last_losses
    return {f"loss_{k}": v for k, v in parts.items()} if len(parts) > 1 else {}


__all__ = ["evaluate", "load_data", "lr_at", "make_optimizer", "resolve_device", "train"]
