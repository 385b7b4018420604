"""`attnlab report [MODEL ...] [--text FILE] [--max-tokens 512] [--out DIR] [--quick] [--device] [--dtype]`.

Diagnoses one model (default smollm2-135m) or several side by side and writes DIR/report.json and
DIR/report.html (see attnlab.diagnose.report and docs/diagnostics.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnlab.cli_flags import add_device_flags, load_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="diagnose models: every pathology per layer and head, in one HTML report",
        description="Diagnose one or more models on one text and write DIR/report.json and DIR/report.html "
        "(residual norms, rank collapse and its ablations, attention entropy and sinks, outliers, "
        "over-squashing, Lipschitz constants, int8 quantization cost). Several models go side by side.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model name ('smollm2-135m'), Hugging Face hub id in the local cache ('gpt2', "
                   "'org/name'), Hugging Face folder, .gguf file or attnlab checkpoint; default smollm2-135m")
    p.add_argument("--model", dest="model_flags", action="append", default=[], metavar="MODEL",
                   help="same as a positional MODEL (repeatable)")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="UTF-8 text file or folder of .txt files (default: a Shakespeare passage)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens each model reads (default 512, or 128 with --quick)")
    p.add_argument("--out", default="report", metavar="DIR",
                   help="output folder (default: report)")
    p.add_argument("--quick", action="store_true", help="a small, fast preset (fewer probes and lengths)")
    add_device_flags(p, what="the models run")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (default: a bar on a terminal, a plain line now and then in a log)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from attnlab.advice import check_cpu_half
    from attnlab.diagnose.report import DEFAULT_MODEL, run_report
    from attnlab.io import check_out_dir, reject_empty

    reject_empty(args.text, "--text", "a text file or a folder of .txt files")
    text = None if args.text is None else Path(args.text)  # a Path: report reads it as a file
    models = list(args.models) + list(args.model_flags) or [DEFAULT_MODEL]
    args.out = check_out_dir(args.out)  # before the models load and run, not after; the string: "" is refused
    check_cpu_half(args.device, args.dtype)
    report = run_report(models, text=text, max_tokens=args.max_tokens, out=args.out,
                        progress=not args.no_progress, quick=args.quick, **load_kwargs(args))
    for section in report["models"]:
        s = section["summary"]
        print(f"{section['model']['name']}: {section['tokens']['n']} tokens, loss {s['loss_nats']:.3f} nats, "
              f"norm growth {_f(s.get('norm_growth_per_layer'))}/block, sink rate {_f(s.get('sink_rate'))}, "
              f"max kurtosis {_f(s.get('kurtosis_max'))}, W8A8 +ppl {_f(s.get('quant_w8a8_delta_ppl'))}")
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.html'} "
          f"in {report['timings_s']['total']:.1f} s")
    return 0


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"
