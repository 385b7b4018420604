"""`fit(model, loss_fn, batch_fn, steps=..., lr=...)`: the one training core.

attnlab's GPT (`attnlab train`), the studies (`experiments.common.train_loop`) and Hugging Face causal LMs
(fine-tuning a retrofitted SmolLM2) all train through this function:

- Schedule (`lr_at`): linear warmup for `warmup` steps, then cosine decay from lr to `min_lr_ratio * lr` at
  `steps` (Loshchilov & Hutter 2017), or constant after the warmup.
- AdamW (betas 0.9, 0.95, eps 1e-8) over the trainable parameters only (requires_grad), weight decay on
  the >= 2-D ones (matrices, embeddings) and none on gains, biases, sink logits, temperatures.
- Gradient clipping at `grad_clip` (global norm). Non-finite values stop the run before they reach the
  weights or a checkpoint: a non-finite loss or gradient norm skips the update, and weights that an update
  made non-finite are never saved. `on_nonfinite="raise"` raises `TrainingDiverged` naming the step, the
  cause and the last good checkpoint; "stop" returns with `diverged_at` set (the studies record it).
- Devices: `device` "auto" | "cpu" | "cuda" | "cuda:N" | None (None: where the model already is); bf16
  autocast around the forward on CUDA (`autocast="auto"`), weights and AdamW states stay float32.
- Data parallel: under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on
  CPU, NCCL on CUDA) and rank r trains on rows [r B/w, (r+1) B/w) of the global batch `batch_fn(step)`
  returns, so N processes follow the one-process trajectory; the logged loss is the mean over ranks.
- Checkpoints (`out=`): written crash-safely by `attnlab.train.checkpoint` every `save_every` steps, at the
  end and on Ctrl-C; `resume=True` reloads weights, AdamW state, RNG state and the loss curve.
- Progress: a tqdm bar on a terminal, plain lines otherwise (rank 0 only).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnlab.errors import AttnlabError, ConfigError
from attnlab.io import check_out_dir
from attnlab.train.distributed import Dist, setup_distributed

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
BatchFn = Callable[..., tuple[Tensor, Tensor]]
StepHook = Callable[[int, dict[str, Any]], None]
SCHEDULES = ("cosine", "constant")


class TrainingDiverged(AttnlabError):
    """The loss, the gradients or the weights became non-finite; nothing non-finite was saved."""

    def __init__(self, message: str, step: int, cause: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.cause, self.checkpoint = step, cause, checkpoint


# ---------------------------------------------------------------- schedule and optimizer
def lr_at(step: int, *, steps: int, lr: float, warmup: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate of optimizer step `step` (0-based): warmup lr (step+1)/warmup, then cosine to
    min_lr_ratio * lr at `steps` (or constant)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    t = (step - warmup) / max(1, steps - warmup)
    # Written as lr * (r + (1 - r)/2 (1 + cos)) so that r = 0.1 gives the studies' historical numbers bitwise.
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def make_adamw(model: nn.Module, lr: float, weight_decay: float = 0.1,
               betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
               lr_scale: Callable[[str], float] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: group 0 (>= 2-D) decays, group 1 does not.

    lr_scale(name) -> multiplier of the scheduled lr for that parameter (default 1). Parameters with a
    multiplier other than 1 get groups of their own after the first two (e.g. retrofitted sink logits,
    which must travel ~10 units in a short fine-tune while the pretrained weights move by 1e-4).
    """
    params = trainable_parameters(model)
    if not params:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False); unfreeze "
                          "the ones to train")
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in params:
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"lr_scale({name!r}) = {scale}; a learning-rate multiplier must be finite "
                              f"and > 0")
        groups.setdefault((p.dim() >= 2, scale), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "decays": decays, "lr_scale": scale}
         for (decays, scale), ps in groups.items() if ps or scale == 1.0],
        lr=lr, betas=betas, eps=eps)


def causal_lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Next-token cross-entropy of a Hugging Face causal LM (or any model returning logits first).

    x: (B, T) input ids; y: (B, T) the next token of each position (-100 = ignored). The model is called as
    model(input_ids=x) and its logits compared with y directly (passing labels= would shift them again).
    """
    out = model(input_ids=x)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                       ignore_index=-100)


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
def catch_stop_signals(enabled: bool = True) -> Iterator[_StopFlag]:
    flag = _StopFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag  # signals reach the main thread only; a worker thread just runs to the end
        return
    previous = {sig: signal.signal(sig, flag.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the core
def fit(model: nn.Module, loss_fn: LossFn, batch_fn: BatchFn, *, steps: int, lr: float, warmup: int = 0,
        schedule: str = "cosine", min_lr_ratio: float = 0.1, weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, grad_clip: float | None = 1.0,
        device: str | torch.device | None = "auto", autocast: str | bool | None = "auto",
        sharded_batches: bool = False, seed: int | None = None, out: str | Path | None = None,
        save_every: int = 0, resume: bool = False, checkpoint_files: dict[str, Any] | None = None,
        save_model: Callable[[nn.Module, Path], None] | None = None, on_nonfinite: str = "raise",
        log_every: int = 25, progress: bool = True, desc: str = "train", on_step: StepHook | None = None,
        catch_signals: bool = True, resume_hint: str | Callable[[Path | None], str] | None = None,
        lr_scale: Callable[[str], float] | None = None) -> dict[str, Any]:
    """Train `model` for `steps` optimizer steps; returns the loss curve, timing and where it stopped.

    Args:
        model: any nn.Module; only parameters with requires_grad are trained (and checkpointed in AdamW).
        loss_fn: loss_fn(net, x, y) -> scalar loss; `net` is the model, or its DDP wrapper under torchrun
            (call it, do not reach into its attributes).
        batch_fn: batch_fn(step) -> (x, y), the global batch of 0-based `step` (a pure function of step
            makes resume exact); with sharded_batches=True, batch_fn(step, rank, world_size) -> this
            rank's share.
        steps, lr, warmup, schedule ("cosine" | "constant"), min_lr_ratio: see `lr_at`.
        weight_decay, betas, eps, lr_scale: AdamW (`make_adamw`); lr_scale(name) multiplies the
            scheduled lr per parameter. grad_clip: max global norm; None or 0 disables.
        device: "auto" | "cpu" | "cuda" | "cuda:N" | a torch.device | None (keep the model's device). The
            model is moved there in place; batches are moved per step.
        autocast: "auto" (bf16 on CUDA, off on CPU) | "bf16" | True | None | False.
        seed: None draws dropout from the caller's RNG stream (and leaves it advanced, as a plain loop
            would); an int seeds a private stream and restores the caller's afterwards.
        out: folder for checkpoints (None: nothing on disk). save_every: steps between checkpoints (0: only
            at the end and on Ctrl-C). resume: continue from out's checkpoint. checkpoint_files: JSON files
            {name: object} written into each checkpoint. save_model(model, folder): the model's format
            (default: save_pretrained, else .save, else model.safetensors).
        on_nonfinite: "raise" (TrainingDiverged) | "stop" (return with diverged_at).
        log_every: curve points every N steps (and the last). progress, desc: bar/lines on stderr (rank 0).
        on_step: on_step(step, record) after every update, step 1-based; record = {"step", "loss", "lr",
            "grad_norm", "tokens", "elapsed_s"}; keys it adds ("val_loss", ...) show in the progress.
        catch_signals: Ctrl-C/SIGTERM finish the step, checkpoint, return with interrupted=True.
        resume_hint: appended to the divergence message (e.g. the CLI command that resumes with a lower lr);
            a callable gets the checkpoint to resume from (None when there is none) and returns the text.

    Returns:
        {"curve": [[step0, loss], ...] (0-based step, every log_every and the last), "steps": updates done
        in total, "start_step", "diverged_at": 0-based step whose loss/grads/weights went non-finite or
        None, "nonfinite_cause", "seconds", "tokens" (this call), "tokens_per_s", "interrupted",
        "final_loss", "checkpoint" (path or None), "world_size", "rank", "device", "model" (unwrapped),
        "optimizer"}.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if on_nonfinite not in ("raise", "stop"):
        raise ConfigError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    if resume and out is None:
        raise ConfigError("resume needs the run's output folder (out=...)")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    ctx = setup_distributed(device)
    model.to(ctx.device)
    forked = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=forked) if seed is not None else nullcontext()
    with rng, catch_stop_signals(catch_signals) as stop:
        if seed is not None:
            torch.manual_seed(seed)
        return _fit(model, loss_fn, batch_fn, ctx, stop, dict(
            steps=steps, lr=lr, warmup=warmup, schedule=schedule, min_lr_ratio=min_lr_ratio,
            weight_decay=weight_decay, betas=betas, eps=eps, grad_clip=grad_clip or 0.0,
            autocast=_autocast_dtype(autocast, ctx.device), sharded=sharded_batches,
            out=Path(out) if out is not None else None, save_every=save_every, resume=resume,
            files=checkpoint_files, save_model=save_model, on_nonfinite=on_nonfinite,
            log_every=max(1, log_every), progress=progress, desc=desc, on_step=on_step,
            resume_hint=resume_hint, lr_scale=lr_scale))


def _autocast_dtype(autocast: str | bool | None, device: torch.device) -> torch.dtype | None:
    if autocast in (None, False, "off", "none"):
        return None
    if autocast == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if autocast in (True, "bf16", "bfloat16", torch.bfloat16):
        return torch.bfloat16
    if autocast in ("fp16", "float16", torch.float16):
        raise ConfigError("float16 autocast needs a gradient scaler, which fit() does not run; use 'bf16'")
    raise ConfigError(f"autocast must be 'auto', 'bf16' or None, got {autocast!r}")


def _fit(model: nn.Module, loss_fn: LossFn, batch_fn: BatchFn, ctx: Dist, stop: _StopFlag,
         o: dict[str, Any]) -> dict[str, Any]:
    from attnlab.train import checkpoint as ck

    out: Path | None = o["out"]
    optimizer = make_adamw(model, o["lr"], o["weight_decay"], o["betas"], o["eps"], o["lr_scale"])
    params = [p for _, p in trainable_parameters(model)]
    start_step, curve = 0, []
    if out is not None and ctx.main:
        check_out_dir(out)
    if o["resume"]:
        if ctx.main:
            ck.recover_checkpoint(out)
        _barrier(ctx)
        folder = out / ck.CHECKPOINT
        if ck.checkpoint_step(folder) is None:
            raise ConfigError(f"no complete checkpoint in {out}; start a new run instead of resuming")
        ck.load_model_weights(model, folder)
        ck.load_optimizer_state(folder, optimizer, ctx.device)
        # Hyperparameters may change on resume (see docs/training.md); the moments carry over.
        for group in optimizer.param_groups:
            group.update(weight_decay=o["weight_decay"] if group.get("decays", True) else 0.0,
                         betas=o["betas"], eps=o["eps"])
        state = ck.load_state_file(folder)
        start_step = int(state["step"])
        curve = [list(point) for point in state.get("curve", [])]
        ck.set_rng_state(state["rng"])
    model.train()
    net: nn.Module = model
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)

    def save(step: int) -> Path | None:
        if out is None:
            return None
        path = out / ck.CHECKPOINT
        if ctx.main:
            path = ck.save_checkpoint(out, model, optimizer, step, files=o["files"],
                                      state={"curve": curve}, save_model=o["save_model"])
        _barrier(ctx)
        return path

    from attnlab.train.progress import Progress

    bar = Progress(o["steps"], start_step, o["desc"], enabled=o["progress"] and ctx.main)
    amp = (torch.autocast(ctx.device.type, dtype=o["autocast"]) if o["autocast"] is not None
           else nullcontext())
    started = time.perf_counter()
    tokens = 0
    step = start_step
    diverged_at = cause = None
    interrupted = False
    last_loss = None
    extra: dict[str, Any] = {}
    try:
        while step < o["steps"]:
            lr = lr_at(step, steps=o["steps"], lr=o["lr"], warmup=o["warmup"], schedule=o["schedule"],
                       min_lr_ratio=o["min_lr_ratio"])
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            x, y = _batch(batch_fn, step, ctx, o["sharded"])
            with amp:
                loss = loss_fn(net, x, y)
            value = _global_mean(loss.detach().float(), ctx)
            if not math.isfinite(value):
                diverged_at, cause = step, f"the loss became {value}"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o["grad_clip"] > 0:
                norm = float(torch.nn.utils.clip_grad_norm_(params, o["grad_clip"]))
            else:
                norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            if not math.isfinite(norm):
                diverged_at, cause = step, f"the gradient norm became {norm} (loss {value:.4g})"
                break
            optimizer.step()
            if not _all_finite(params):
                diverged_at, cause = step, (f"the weights became non-finite after the update at lr {lr:.3g} "
                                            f"(loss {value:.4g}, gradient norm {norm:.4g})")
                break
            tokens += x.numel() * ctx.world_size
            if step % o["log_every"] == 0 or step == o["steps"] - 1:
                curve.append([step, value])
            step += 1
            last_loss = value
            record = {"step": step, "loss": value, "lr": lr, "grad_norm": norm, "tokens": tokens,
                      "elapsed_s": time.perf_counter() - started}
            if o["on_step"] is not None:
                o["on_step"](step, record)
            extra.update({k: record[k] for k in ("val_loss",) if k in record})
            bar.update(step, loss=value, **extra)
            if out is not None and o["save_every"] and step % o["save_every"] == 0 and step < o["steps"]:
                save(step)
            if _should_stop(stop, ctx):
                interrupted = True
                break
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if diverged_at is not None:
        if o["on_nonfinite"] == "raise":
            raise _diverged(diverged_at, cause, out, o["resume_hint"], start_step if o["resume"] else None)
        checkpoint = None
    else:
        checkpoint = save(step)
    return {"curve": curve, "steps": step, "start_step": start_step, "diverged_at": diverged_at,
            "nonfinite_cause": cause, "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / max(seconds, 1e-9), "interrupted": interrupted, "final_loss": last_loss,
            "checkpoint": checkpoint, "world_size": ctx.world_size, "rank": ctx.rank,
            "device": str(ctx.device), "model": model, "optimizer": optimizer}


def _batch(batch_fn: BatchFn, step: int, ctx: Dist, sharded: bool) -> tuple[Tensor, Tensor]:
    if sharded:
        x, y = batch_fn(step, ctx.rank, ctx.world_size)
    else:
        x, y = batch_fn(step)
        if ctx.world_size > 1:
            if x.shape[0] % ctx.world_size:
                raise ConfigError(f"the batch of {x.shape[0]} rows does not split over {ctx.world_size} "
                                  f"processes; use a batch size that is a multiple of --nproc_per_node")
            share = x.shape[0] // ctx.world_size
            rows = slice(ctx.rank * share, (ctx.rank + 1) * share)
            x, y = x[rows], y[rows]
    return x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)


def _global_mean(loss: Tensor, ctx: Dist) -> float:
    if ctx.world_size == 1:
        return loss.item()
    total = loss.reshape(1).clone()
    dist.all_reduce(total)
    return float(total.item() / ctx.world_size)


def _all_finite(params: list[Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def _diverged(step: int, cause: str, out: Path | None, hint: str | Callable[[Path | None], str] | None,
              resumed_at: int | None) -> TrainingDiverged:
    from attnlab.train.checkpoint import checkpoint_step, find_checkpoint

    good = find_checkpoint(out) if out is not None else None
    fix = hint(good) if callable(hint) else hint
    if good is not None and resumed_at == step == checkpoint_step(good):
        # The first update after resuming diverged: the checkpoint is finite but no good start (saved just
        # before an earlier divergence, its weights may already be huge), so resuming it again is no fix.
        where = (f"it diverged at the first step after resuming from {good} (step {resumed_at}): its weights "
                 f"are finite but do not train")
        fix = hint(None) if callable(hint) else hint
    elif good is not None:
        where = f"the last good checkpoint is {good} (step {checkpoint_step(good)})"
    elif out is not None:
        where = f"no checkpoint had been saved yet in {out}"
    else:
        where = "no checkpoints were being written"
    fix = fix or "lower the learning rate or lengthen the warmup"
    return TrainingDiverged(f"training diverged at step {step + 1}: {cause}; nothing non-finite was saved, "
                            f"{where}; {fix}", step + 1, cause, good)


def _should_stop(stop: _StopFlag, ctx: Dist) -> bool:
    if ctx.world_size == 1:
        return stop.set
    # Every rank must stop after the same step, or the others would wait forever in the next all-reduce.
    flag = torch.tensor([1.0 if stop.set else 0.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _barrier(ctx: Dist) -> None:
    if ctx.world_size > 1:
        dist.barrier()


__all__ = ["TrainingDiverged", "causal_lm_loss", "catch_stop_signals", "fit", "lr_at", "make_adamw",
           "trainable_parameters"]
