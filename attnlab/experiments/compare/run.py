"""`run(config, out_dir)`: fine-tune every arm from the same pretrained weights and measure it.

Per (arm, seed) the work is one resumable part (`experiments.base.Parts`): retrofit a fresh copy of the
pretrained model (`attnlab.retrofit`), fine-tune it through the one
trainer (`attnlab.train.fit`) on the seed's token order, save it (seed 0: `OUT/ARM`, loadable with
`attnlab.load_model`), then measure it on the held-out windows. A killed run resumes at the first part not
yet written; an arm whose loss or weights go non-finite stops with its step and cause, and the other arms
still run and are written.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.errors import ConfigError
from attnlab.experiments.compare.config import ARMS, DEFICIT, NEW_PARAM_LR, SINK_INIT, Config


def load_base(config: Config) -> Any:
    """The pretrained model as a LoadedModel (attnlab attention, softmax), float32, on the config's device."""
    from attnlab.models import load_model
    from attnlab.models.tiny import TINY_NAME
    from attnlab.train.distributed import resolve_device

    # The smoke preset's random Llama gets just the positions the study uses (+1 for the shifted target).
    context = max(config.context, config.eval_context) + 1 if config.model == TINY_NAME else None
    lm = load_model(config.model, device=resolve_device(config.device), context=context)
    if lm.kind != "hf":
        raise ConfigError(f"the compare study retrofits Hugging Face causal LMs; {config.model!r} is an "
                          f"attnlab GPT checkpoint (compare GPTs trained from scratch with "
                          f"`attnlab run offbyone`)")
    need = max(config.context, config.eval_context)
    if lm.max_context and need > lm.max_context:
        raise ConfigError(f"context {need} exceeds {lm.name}'s {lm.max_context} positions; lower --context")
    return lm


def arm_model(base: Any, arm: str) -> Any:
    """A fresh copy of the pretrained LoadedModel with the arm's attention retrofitted."""
    from attnlab.models.adapter import from_hf
    from attnlab.models.retrofit import retrofit

    model = copy.deepcopy(base.model)
    spec = ARMS[arm]
    if spec is not None:
        retrofit(model, spec["normalizer"], gated=spec["gated"],
                 sink_init=SINK_INIT if spec["normalizer"] == "sinks" else None)
    hf_tok = getattr(base.tokenizer, "hf", base.tokenizer)
    return from_hf(model, hf_tok, name=arm, source=base.source)


def set_trainable(model: nn.Module, trainable: str) -> list[str]:
    """requires_grad on the fine-tuned set; returns their names. The arm's own parameters always train."""
    from attnlab.models.retrofit import attention_modules, retrofit_parameters

    own = set(retrofit_parameters(model))
    if trainable == "all":
        chosen = {n for n, _ in model.named_parameters()}
    else:
        ids = {id(p) for m in attention_modules(model) for p in m.parameters()}
        chosen = {n for n, p in model.named_parameters() if id(p) in ids}
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen or n in own)
    return sorted(chosen | own)


def _lr_scale(config: Config, own: set[str]):  # noqa: ANN202
    return lambda name: (NEW_PARAM_LR / config.lr) if name in own else 1.0


def fine_tune(lm: Any, config: Config, train_tokens: torch.Tensor, seed: int, progress: bool,
              desc: str) -> dict[str, Any]:
    from attnlab.data.batches import LMBatches
    from attnlab.models.retrofit import retrofit_parameters
    from attnlab.train.fit import causal_lm_loss, fit

    names = set_trainable(lm.model, config.trainable)
    own = set(retrofit_parameters(lm.model))
    batches = LMBatches(train_tokens, config.context, config.batch_size, seed=seed)
    run = fit(lm.model, causal_lm_loss, batches.batch, steps=config.steps, lr=config.lr, warmup=config.warmup,
              device=None, autocast=config.autocast, seed=seed, on_nonfinite="stop", log_every=1,
              progress=progress, desc=desc, catch_signals=False, lr_scale=_lr_scale(config, own))
    lm.model.eval()
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return {"curve": run["curve"], "steps": run["steps"], "seconds": run["seconds"],
            "tokens_per_s": run["tokens_per_s"], "diverged_at": run["diverged_at"],
            "cause": run["nonfinite_cause"], "trainable": len(names),
            "trainable_params": sum(p.numel() for n, p in lm.model.named_parameters() if n in set(names))}


def save_arm(lm: Any, folder: Path) -> None:
    """save_pretrained into `attnlab.io.atomic_folder`: a reader never sees half a model."""
    from attnlab.io import atomic_folder

    with atomic_folder(folder) as tmp:
        lm.save_pretrained(tmp)  # the model and its tokenizer, files at the umask's modes


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"compare: {text}", file=sys.stderr, flush=True)


def run_arm(base: Any, arm: str, seed: int, config: Config, train_tokens: torch.Tensor,
            windows: torch.Tensor, calibration: torch.Tensor, out: Path, progress: bool) -> dict[str, Any]:
    """Fine-tune one (arm, seed) from the pretrained weights and measure it (the pretrained arm: measure)."""
    from attnlab.experiments.compare.measure import measure

    started = time.perf_counter()
    lm = arm_model(base, arm)
    result: dict[str, Any] = {"arm": arm, "seed": seed}
    if ARMS[arm] is not None:
        result["train"] = fine_tune(lm, config, train_tokens, seed, progress, desc=f"{arm} (seed {seed})")
        if result["train"]["diverged_at"] is not None:
            t = result["train"]
            _say(progress, f"{arm} seed {seed} stopped at step {t['diverged_at']}: {t['cause']}; the other "
                           f"arms go on")
            result["seconds"] = time.perf_counter() - started
            return result
        if config.save_models and seed == config.seeds[0]:
            save_arm(lm, out / arm)
            result["saved"] = str(out / arm)
    _say(progress, f"measuring {arm} (seed {seed}) on {windows.shape[0]} held-out windows")
    result["items"] = measure(lm, windows, deficit=DEFICIT.get(arm), calibration=calibration)
    result["seconds"] = time.perf_counter() - started
    return result


def run_step0(base: Any, group: str, windows: torch.Tensor, calibration: torch.Tensor,
              progress: bool) -> dict[str, Any]:
    """Measure the retrofitted model right after the swap, before any training (STEP0's group)."""
    from attnlab.experiments.compare.measure import measure

    started = time.perf_counter()
    lm = arm_model(base, group)
    _say(progress, f"measuring {group} at step 0 (swapped, not trained) on {windows.shape[0]} windows")
    items = measure(lm, windows, deficit=DEFICIT.get(group), calibration=calibration)
    return {"group": group, "items": items, "seconds": time.perf_counter() - started}


__all__ = ["arm_model", "fine_tune", "load_base", "run_arm", "run_step0", "save_arm", "set_trainable"]
