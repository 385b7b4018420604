"""`attnlab compare`: the main job, a thin shell over `attnlab.experiments.compare.run`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from attnlab.experiments.compare.config import ARMS, MAX_SEEDS, PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    cmp = subparsers.add_parser(
        "compare", help="the main job: retrofit SmolLM2 with softmax1, sinks, clipped, gated ... and measure",
        description="Does adding one to the softmax denominator help, and with what? Retrofit a pretrained "
        "LM (SmolLM2-135M) with each attention variant, fine-tune every arm alike on Shakespeare, measure "
        "perplexity, attention sinks, outliers and int8 quantization damage on held-out text with 95% "
        "intervals, and write compare.html + results.json. (Small GPTs trained from scratch: "
        "`attnlab run offbyone`.)")
    cmp.add_argument("--preset", default="quick", choices=tuple(PRESETS),
                     help="smoke (a tiny random model, seconds), quick (default, SmolLM2, <= 15 min on 2 "
                     "CPU cores), full (3 seeds, all parameters; CUDA + bf16 when present)")
    cmp.add_argument("--arms", default=None,
                     help=f"comma-separated subset of: {', '.join(ARMS)} (default: all)")
    cmp.add_argument("--model", default=None, help="model name or path (default: the preset's, SmolLM2)")
    cmp.add_argument("--steps", type=int, default=None, help="fine-tuning steps per arm")
    cmp.add_argument("--seeds", type=int, default=None, help=f"number of seeds 0..N-1 (at most {MAX_SEEDS})")
    cmp.add_argument("--train-text", default=None, help="fine-tune on this text file (default: Shakespeare's "
                     "training split)")
    cmp.add_argument("--text", default=None, help="evaluate on this text file (default: the held-out split)")
    cmp.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    cmp.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                     help="fine-tuning precision: float32 weights with bf16 autocast (bfloat16) or without "
                     "(float32); default: bf16 autocast on CUDA, float32 on the CPU. Measurement is float32")
    cmp.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    cmp.add_argument("--resume", action="store_true",
                     help="reuse the finished arms in OUT (a rerun with the same settings does so anyway)")
    cmp.set_defaults(func=_compare)


def config_from_args(args: argparse.Namespace):  # noqa: ANN201
    from attnlab.errors import ConfigError
    from attnlab.experiments.compare.config import check_config

    config = PRESETS[args.preset]
    changes: dict = {}
    if args.arms is not None:
        changes["arms"] = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if args.seeds is not None:
        if not 1 <= args.seeds <= MAX_SEEDS:
            raise ConfigError(f"--seeds must be in 1..{MAX_SEEDS}, got {args.seeds}")
        changes["seeds"] = tuple(range(args.seeds))
    for flag in ("model", "steps", "train_text", "text", "device"):
        value = getattr(args, flag)
        if value is not None:
            changes[flag] = value
    if args.dtype is not None:
        changes["autocast"] = {"float32": "off", "bfloat16": "bf16"}[args.dtype]
    if "steps" in changes and config.warmup >= changes["steps"]:
        changes["warmup"] = max(0, changes["steps"] // 10)
    config = replace(config, **changes)
    check_config(config)
    return config


def _compare(args: argparse.Namespace) -> int:
    from attnlab.experiments.compare import run
    from attnlab.io import check_out_dir

    config = config_from_args(args)
    out = check_out_dir(args.out)  # the string: Path("") would be the current folder
    if args.resume and not (out / "parts").is_dir():
        print(f"attnlab: note: nothing to resume in {out}; starting the run", file=sys.stderr)
    command = "attnlab compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "attnlab compare"
    doc = run(config, out, progress=True, command=command)
    for c in doc["claims"]:
        print(f"[{c['verdict']}] {c['claim']} ({c['source']})")
    print(doc["answer"])
    print(f"wrote {out / 'compare.html'} and {out / 'results.json'}")
    return 0
