"""`attnlab run NAME` (one study) and `attnlab compare` (the main job: offbyone's variants side by side)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnlab.experiments.base import PRESETS

_SEEDS_HELP = "number of seeds (0..N-1); default: the preset's"


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
    run.set_defaults(func=_run)

    cmp = subparsers.add_parser(
        "compare", help="the main job: softmax vs softmax1 vs sinks vs clipped vs gated, on every diagnostic",
        description="Train identical small GPTs on Shakespeare with each attention variant and write "
        "compare.html: does adding one to the denominator help, and with what?")
    cmp.add_argument("--preset", default="quick", choices=PRESETS,
                     help="default quick (< 15 min on 2 idle cores)")
    cmp.add_argument("--seeds", type=int, default=None, help=_SEEDS_HELP)
    cmp.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    cmp.set_defaults(func=_compare)


def _run(args: argparse.Namespace) -> int:
    from attnlab.experiments import run_study

    out = Path(args.out) if args.out else Path("runs") / args.name
    doc = run_study(args.name, args.preset, out, seeds=args.seeds, progress=True)
    _print_claims(doc)
    print(f"wrote {out / 'results.json'} and {out / 'index.html'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from attnlab.experiments import run_study

    out = Path(args.out)
    doc = run_study("offbyone", args.preset, out, seeds=args.seeds, progress=True)
    _print_claims(doc)
    print(doc.get("answer", ""))
    print(f"wrote {out / 'compare.html'} (and results.json, index.html)")
    return 0


def _print_claims(doc: dict) -> None:
    for c in doc.get("claims", []):
        print(f"[{c['verdict']}] {c['claim']}: ours {c['ours']} | paper {c['paper']}", file=sys.stdout)
