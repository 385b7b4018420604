"""`attnlab run NAME` (one study); `attnlab compare` (the main job) lives in attnlab/experiments/compare/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnlab.cli_flags import add_device_flags
from attnlab.experiments.base import MAX_SEEDS, PRESETS

_SEEDS_HELP = f"number of seeds (0..N-1), at most {MAX_SEEDS}; default: the preset's"


def register(subparsers: argparse._SubParsersAction) -> None:
    from attnlab.experiments import STUDIES

    run = subparsers.add_parser(
        "run", help="run one study and write results.json, PNG plots and index.html",
        description=f"Run a study. Studies: {', '.join(STUDIES)}.")
    run.add_argument("name", metavar="NAME", help=f"study name: {', '.join(STUDIES)}")
    run.add_argument("--preset", default="quick", choices=PRESETS,
                     help="smoke (seconds, for CI), quick (minutes), full (the numbers in EXPERIMENTS.md)")
    run.add_argument("--seeds", type=int, default=None, help=_SEEDS_HELP)
    run.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    add_device_flags(run, what="the study trains its models (its probes run on the CPU)",
                     dtypes=("float32", "bfloat16"),
                     dtype_help="training precision: float32 (no autocast) or bfloat16 (bf16 autocast); "
                     "default: bf16 autocast on CUDA, float32 on the CPU")
    run.set_defaults(func=_run)

    from attnlab.experiments.compare.cli import register as register_compare

    register_compare(subparsers)


def _check(name: str, args: argparse.Namespace, out: Path) -> None:
    """Check the study, preset, seeds and output folder before the first model trains: a bad --out must
    not surface only when the first result is written."""
    from attnlab.experiments import study_module
    from attnlab.experiments.base import choose_preset
    from attnlab.io import check_out_dir

    config = choose_preset(study_module(name).PRESETS, args.preset, args.seeds)
    check_out_dir(out)
    _advise_run(args, config)


def _training_placement(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(device, autocast) for the study's training from --device and --dtype, checked before it starts."""
    from attnlab.errors import ConfigError

    device = getattr(args, "device", None)
    if device is not None:
        from attnlab.models.loading import resolve_device

        resolve_device(device)  # a clear error now for cuda without a GPU, not in the first training step
    dtype = getattr(args, "dtype", None)
    if dtype in ("float16", "float64"):
        raise ConfigError(f"--dtype {dtype} is not a training precision of the studies: their models "
                          f"train in float32 weights, with bf16 autocast or without; use --dtype bfloat16 or "
                          f"float32")
    autocast = {"float32": "off", "bfloat16": "bf16"}.get(dtype) if dtype else None
    return device, autocast


def _advise_run(args: argparse.Namespace, config: object) -> None:
    """Settings the study runs with that cannot give what a study promises (or that are wasted)."""
    from attnlab.advice import advise, check_schedule

    seeds = getattr(config, "seeds", None)
    if seeds is not None and len(seeds) == 1 and args.preset != "smoke":
        advise("one seed: the verdicts' intervals come from a bootstrap over this run's items, which says "
               "nothing of seed-to-seed variation; pass --seeds 3 or more for verdicts that cover it")
    steps, warmup = getattr(config, "steps", None), getattr(config, "warmup", None)
    if isinstance(steps, int) and isinstance(warmup, int):
        check_schedule(steps, warmup, steps_flag="steps", warmup_flag="warmup")
    if getattr(args, "dtype", None) == "bfloat16" and getattr(args, "device", None) in (None, "cpu"):
        advise("--dtype bfloat16 on the CPU trains under bf16 autocast, which is slower than float32 on most "
               "CPUs; it is meant for GPUs")


def _run(args: argparse.Namespace) -> int:
    from attnlab.experiments import run_study
    from attnlab.io import reject_empty

    reject_empty(args.out)
    out = Path(args.out) if args.out is not None else Path("runs") / args.name
    _check(args.name, args, out)
    device, autocast = _training_placement(args)
    doc = run_study(args.name, args.preset, out, seeds=args.seeds, progress=True, device=device,
                    autocast=autocast)
    _print_claims(doc)
    print(f"wrote {out / 'results.json'} and {out / 'index.html'}")
    return 0


def _print_claims(doc: dict) -> None:
    if doc.get("smoke"):
        print("smoke run: plumbing only, no claim is judged (--preset quick or full gives verdicts)")
    for c in doc.get("claims", []):
        print(f"[{c['verdict']}] {c['claim']}: ours {c['ours']} | paper {c['paper']}", file=sys.stdout)
