"""`attnlab compare`: the main job, a thin shell over `attnlab.experiments.compare.run`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from attnlab.experiments.base import MAX_SEEDS
from attnlab.experiments.compare.config import ARMS, PARTS, PRESETS, Config
from attnlab.experiments.compare.scratch_config import SCRATCH_ARMS


def register(subparsers: argparse._SubParsersAction) -> None:
    cmp = subparsers.add_parser(
        "compare", help="the main job: does +1 in the softmax denominator help? from scratch, then retrofit",
        description="Does adding one to the softmax denominator help, and with what? Part 1 trains small "
        "GPTs from scratch on Bigram-Backcopy (a task on which softmax grows a first-token sink), one per "
        "attention variant, over 5 seeds; part 2 retrofits a pretrained LM (SmolLM2-135M) with each variant, "
        "measures it right after the swap and after the same fine-tune. Sinks, outliers, int8 damage and "
        "quality with 95% intervals; verdicts on primary endpoints with a Holm correction. Writes "
        "compare.html + results.json.")
    cmp.add_argument("--preset", default="quick", choices=tuple(PRESETS),
                     help="smoke (tiny models, plumbing only, no verdicts), quick (default: <= 20 min on 2 "
                     "CPU cores; part 1 at 5 seeds, part 2 at 1 seed), standard (part 2 at 3 seeds: its "
                     "verdicts, under an hour), full (more seeds, longer; CUDA + bf16 when present)")
    cmp.add_argument("--part", default=None, choices=PARTS,
                     help="scratch (part 1), retrofit (part 2) or both (default)")
    cmp.add_argument("--arms", default=None,
                     help=f"comma-separated subset; part 1 knows {', '.join(SCRATCH_ARMS)}; part 2 knows "
                     f"{', '.join(ARMS)} (default: all of each)")
    cmp.add_argument("--model", default=None, help="model name or path (default: the preset's, SmolLM2)")
    cmp.add_argument("--steps", type=int, default=None, help="fine-tuning steps per arm")
    cmp.add_argument("--seeds", type=int, default=None,
                     help=f"number of seeds 0..N-1 for both parts (at most {MAX_SEEDS})")
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


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's one Config from the flags over the preset, checked (`check_config`) before it is returned."""
    from attnlab.errors import ConfigError
    from attnlab.experiments.compare.config import check_config

    config = PRESETS[args.preset]
    changes: dict = {}
    scratch: dict = {}
    if args.part is not None:
        changes["part"] = args.part
    part = args.part or config.part
    if args.arms is not None:
        chosen = tuple(dict.fromkeys(a.strip() for a in args.arms.split(",") if a.strip()))
        unknown = [a for a in chosen if a not in ARMS and a not in SCRATCH_ARMS]
        if unknown or not chosen:
            raise ConfigError(f"--arms: unknown arm(s) {unknown or '(none given)'}; part 1 knows "
                              f"{', '.join(SCRATCH_ARMS)}; part 2 knows {', '.join(ARMS)}")
        changes["arms"] = tuple(a for a in chosen if a in ARMS)
        scratch["arms"] = tuple(a for a in chosen if a in SCRATCH_ARMS)
        for name, arms, ran in (("part 1 (scratch)", scratch["arms"], part in ("both", "scratch")),
                                ("part 2 (retrofit)", changes["arms"], part in ("both", "retrofit"))):
            if ran and not arms:
                raise ConfigError(f"--arms {args.arms} leaves {name} with no arm; add one or pick the other "
                                  f"part with --part")
    if args.seeds is not None:
        if not 1 <= args.seeds <= MAX_SEEDS:
            raise ConfigError(f"--seeds must be in 1..{MAX_SEEDS}, got {args.seeds}")
        changes["seeds"] = tuple(range(args.seeds))
        scratch["seeds"] = tuple(range(args.seeds))
        if args.seeds == 1 and args.preset != "smoke":
            print("attnlab: warning: --seeds 1 gives effects without verdicts (training variance is "
                  "unmeasured with one seed)", file=sys.stderr)
    if args.device is not None:
        scratch["device"] = args.device
    if scratch:
        changes["scratch"] = replace(config.scratch, **scratch)
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
    from attnlab.experiments.compare import run_checked
    from attnlab.io import check_out_dir

    # The edge: the config (checked in config_from_args) and the out folder are checked here, once; the run
    # trusts both.
    config = config_from_args(args)
    out = check_out_dir(args.out)  # the string: Path("") would be the current folder
    if args.resume and not (out / "parts").is_dir():
        print(f"attnlab: note: nothing to resume in {out}; starting the run", file=sys.stderr)
    command = "attnlab compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "attnlab compare"
    doc = run_checked(config, out, progress=True, command=command)
    from attnlab.experiments.compare.page_parts import sentences

    for c in doc["claims"]:
        if c.get("primary"):
            print(f"[{c['verdict']}] {c['claim']} ({c['source']})")
    for line in sentences(doc):
        print(line)
    print(f"wrote {out / 'compare.html'} and {out / 'results.json'}")
    return 0
