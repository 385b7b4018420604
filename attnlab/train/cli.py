"""`attnlab train ...`: every TrainConfig and GPTConfig field is a flag, generated from the dataclasses.

Precedence: defaults < the checkpoint's config (with --resume) < --config FILE.yaml|json < flags. Only flags
given explicitly override, so `attnlab train --out runs/x --resume` continues a run with its own settings.
Under `torchrun --nproc_per_node=N -m attnlab train ...` each process runs this same command.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from attnlab.attention.registry import normalizer_help
from attnlab.errors import ConfigError
from attnlab.models.gpt_config import INITS, NORM_POSITIONS, NORMALIZERS, NORMS, SCORES, GPTConfig
from attnlab.train.config import AUTOCAST, DERIVED_MODEL_FIELDS, TrainConfig

DEFAULT_OUT = "runs/train"  # the CLI keeps what it trains; `train()` in code keeps nothing by default

# Short names the examples use; the long field names work too.
ALIASES = {"n_layers": ["--layers"], "n_heads": ["--heads"], "n_kv_heads": ["--kv-heads"]}
CHOICES = {"normalizer": NORMALIZERS, "norm": NORMS, "norm_position": NORM_POSITIONS, "init": INITS,
           "score": SCORES, "autocast": AUTOCAST}
HELP = {
    "n_layers": "transformer blocks", "d_model": "model width", "n_heads": "query heads",
    "n_kv_heads": "key/value heads (grouped-query attention); 'none' = one per query head",
    "context": "training context length (tokens)", "mlp_ratio": "MLP hidden width / d_model",
    "rope_theta": "RoPE base (Su et al. 2021)", "dropout": "dropout on embeddings and residual branches",
    "clip_gamma": "clipped softmax gamma (< 0 allows exact zeros)", "clip_zeta": "clipped softmax zeta",
    "span": "keys a query sees: causal, window(W), sinkwindow(S,W), chunked(C)",
    "norm": "normalisation layer", "norm_position": "pre-LN or post-LN (Xiong et al. 2020)",
    "skip": "residual connections (Dong et al. 2021 ablation)",
    "mlp": "MLP sublayers (Dong et al. 2021 ablation)",
    "gated_attention": "sigmoid gate per head on the attention output (Bondarenko et al. 2023)",
    "depth_scaled_residual": "branches times 1/sqrt(2 n_layers) (Noci et al. 2022)",
    "init": "weight init (orthogonal: Saxe et al. 2014)",
    "sigma_reparam": "W = gamma/sigma(W) W on q,k,v,o (Zhai et al. 2023)",
    "score": "attention score: dot, or l2 with tied query/key weights (Kim et al. 2021)",
    "aux_head_diversity": "weight of the head-diversity loss (Li et al. 2018)",
    "aux_logdet": "weight of the residual-stream coding-rate (log-det) loss (Yu et al. 2020)",
    "tie_embeddings": "share input embedding and output head",
    "steps": "optimizer steps", "batch_size": "sequences per step (global, over all processes)",
    "lr": "peak learning rate (AdamW)", "min_lr": "final learning rate of the cosine decay (default lr/10)",
    "warmup": "linear warmup steps", "weight_decay": "AdamW weight decay on matrices",
    "grad_clip": "max gradient norm (0: off)", "eval_every": "validate every N steps (0: never)",
    "eval_batches": "validation batches", "log_every": "write metrics every N steps",
    "save_every": "checkpoint every N steps (0: only at the end)",
    "seed": "one seed for init, data order and dropout", "text": "text file or folder (default: Shakespeare)",
    "tokenizer": "byte, smollm2, or a Hugging Face tokenizer folder",
    "val_fraction": "share of the text held out for validation", "out": "output folder",
    "resume": "continue the run in --out from its checkpoint", "overwrite": "replace a run already in --out",
    "device": "auto, cpu, cuda or cuda:N",
    "autocast": "bf16 autocast of the forward: auto = on CUDA only, bf16, off",
    "memory_check": "refuse a config whose estimated memory exceeds what the device has",
}


def _optional(kind: type) -> typing.Callable[[str], Any]:
    def parse(text: str) -> Any:
        # "none" is None; an empty value stays empty, for the config to refuse (Path("") would be ".").
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_field_flags(parser: argparse._ArgumentGroup, cls: type, skip: tuple[str, ...],
                     dest_prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        default = f.default if f.default is not MISSING else None
        # The normalizer's help is read from the registry when the parser is built, never a hand list.
        text = normalizer_help() if f.name == "normalizer" else HELP.get(f.name, f.name)
        names = ["--" + f.name.replace("_", "-"), *ALIASES.get(f.name, [])]
        kwargs: dict[str, Any] = {"dest": dest_prefix + f.name, "default": argparse.SUPPRESS,
                                  "help": f"{text} (default: {default})"}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _optional(base) if optional else base
            kwargs["metavar"] = f.name.upper() if f.name not in CHOICES else None
            if f.name in CHOICES:
                kwargs["choices"] = CHOICES[f.name]
        parser.add_argument(*names, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train attnlab's GPT on text (resumable; data-parallel under torchrun)",
        description="Train attnlab's GPT. Every config field is a flag; --config FILE.yaml|json sets many at "
        "once (flags win). Example: attnlab train --normalizer softmax1 --layers 4 --d-model 128 "
        "--context 256 --steps 2000 --out runs/softmax1",
    )
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML or JSON file of config fields")
    model = parser.add_argument_group("model (GPTConfig)")
    _add_field_flags(model, GPTConfig, DERIVED_MODEL_FIELDS, "model.")
    run = parser.add_argument_group("training (TrainConfig)")
    _add_field_flags(run, TrainConfig, ("model",), "")
    parser.set_defaults(func=main)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """defaults < checkpoint (with --resume) < --config file < explicit flags, with --out defaulting to
    runs/train: the one TrainConfig (and GPTConfig) of the run, validated once; the loop trusts it."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "config", "command")}
    flags_model = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith("model.")}
    flags_train = {k: v for k, v in given.items() if not k.startswith("model.")}
    merged: dict[str, Any] = {}
    if flags_train.get("resume"):
        if "out" not in flags_train:
            raise ConfigError("--resume needs the run's folder: pass --out DIR")
        from attnlab.train.checkpoint import find_checkpoint, load_train_config

        ckpt = find_checkpoint(Path(flags_train["out"]))
        if ckpt is None:
            raise ConfigError(f"--resume: no checkpoint in {flags_train['out']}; "
                              f"start a new run without --resume")
        merged = load_train_config(ckpt).to_dict()
    if args.config:
        from attnlab.train.config import load_mapping, split_mapping

        file_train, file_model = split_mapping(load_mapping(args.config), source=args.config)
        merged.update(file_train)
        merged["model"] = {**merged.get("model", {}), **file_model}
    merged.update(flags_train)
    merged["model"] = {**merged.get("model", {}), **flags_model}
    if merged.get("out") is None:
        merged["out"] = DEFAULT_OUT
    return TrainConfig.from_dict(merged, source="attnlab train")


def main(args: argparse.Namespace) -> int:
    from attnlab.advice import check_schedule
    from attnlab.train.loop import train

    config = config_from_args(args)
    check_schedule(config.steps, config.warmup)
    if config.val_fraction == 0 and config.eval_every and "eval_every" in vars(args):
        from attnlab.advice import advise

        advise(f"--eval-every {config.eval_every} is unused: --val-fraction 0 holds no text out to validate "
               f"on; pass --val-fraction 0.1, say (or drop --eval-every)")
    summary = train(config, progress=True)
    main_rank = summary.get("world_size", 1) == 1 or _rank() == 0
    if summary.get("complete"):
        if main_rank:
            print(f"attnlab: the run in {summary['out']} is already complete (step {summary['step']}/"
                  f"{config.steps}); nothing to do. To train further, extend it: {summary['resume_command']}")
        return 0
    if summary["interrupted"]:
        if main_rank:
            print(f"attnlab: interrupted at step {summary['step']}/{config.steps}; checkpoint saved in "
                  f"{summary['checkpoint']}; resume with: {summary['resume_command']}", file=sys.stderr)
        return 130
    if main_rank:
        val = f", val loss {summary['val_loss']:.4f}" if summary["val_loss"] is not None else ""
        loss = f"{summary['final_loss']:.4f}" if summary["final_loss"] is not None else "n/a"
        print(f"trained {summary['step']} steps: loss {loss}{val}, "
              f"{summary['tokens_per_s']:,.0f} tokens/s; model in {summary['checkpoint']}")
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


__all__ = ["DEFAULT_OUT", "config_from_args", "main", "register"]
