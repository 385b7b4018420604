"""The default `attnlab report` on SmolLM2-135M with 512 tokens: time per metric, total, peak RSS, and the
capture overhead (run_with_cache with attention weights against a plain forward, same run).

Targets (issue 4, this 2-core CPU): total under 3 minutes, peak RSS under 6 GB, capture overhead under
1.5x. Plain forward and capture are timed interleaved (forward, capture, forward, capture, ...) so load
from other processes hits both alike; the ratio of their medians is the figure to read. glibc runs with
its default policy (`--malloc pinned` makes every large buffer page-fault anew, which on this VM inflated
both times by ~40% and the overhead ratio with them).

    python benchmarks/report.py                  # the default report, 512 tokens
    python benchmarks/report.py --quick          # the --quick preset (128 tokens)
    python benchmarks/report.py --json out.json  # also write the figures (with provenance)
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _timing import base_parser, pin_malloc, print_table, reuse_malloc, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnlab.diagnose.report import ReportConfig, choose_passage, run_report  # noqa: E402
from attnlab.io import provenance  # noqa: E402


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--out", default=None, help="keep the report in this folder (default: a temp dir)")
    parser.add_argument("--malloc", choices=["default", "reuse", "pinned"], default="default",
                        help="glibc policy: default (what a user gets), reuse (keep freed blocks, as "
                        "jemalloc does), pinned (64 KiB mmap threshold: every large buffer page-faults anew)")
    args = parser.parse_args()
    if args.malloc == "reuse":
        reuse_malloc()
    elif args.malloc == "pinned":
        pin_malloc()
    repeats = args.repeats or (3 if args.quick else 5)
    config = ReportConfig.quick() if args.quick else ReportConfig()
    if args.max_tokens:
        config.max_tokens = args.max_tokens

    from attnlab import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model)
    load_s = time.perf_counter() - t0
    ids = lm.encode(choose_passage(None, config.max_tokens).text)[:, :config.max_tokens]

    fwd, cap = [], []
    with torch.no_grad():
        lm.logits(ids)
        lm.run_with_cache(ids)  # warm-up of both paths
        for _ in range(repeats):
            start = time.perf_counter()
            lm.logits(ids)
            fwd.append(time.perf_counter() - start)
            start = time.perf_counter()
            _, cache = lm.run_with_cache(ids)
            cap.append(time.perf_counter() - start)
            del cache
    forward_s, capture_s = statistics.median(fwd), statistics.median(cap)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        start = time.perf_counter()
        report = run_report(lm, out=out, progress=sys.stderr.isatty(), config=config)
        total_s = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    timings = report["models"][0]["timings_s"]
    rows = [{"step": k, "seconds": v} for k, v in timings.items()
            if k not in ("capture_overhead", "load") and v is not None]
    rows.append({"step": "html + json", "seconds": total_s - report["timings_s"]["total"]})
    rows.append({"step": "TOTAL (report, model loaded)", "seconds": total_s})
    print(f"model {lm.name}: {ids.shape[1]} tokens, {torch.get_num_threads()} threads, load {load_s:.1f} s")
    print_table(rows, ["step", "seconds"])
    print()
    summary = {"tokens": int(ids.shape[1]), "threads": torch.get_num_threads(), "load_s": load_s,
               "report_total_s": total_s, "peak_rss_gb": peak_rss / 1e9,
               "forward_median_s": forward_s, "capture_median_s": capture_s,
               "capture_overhead": capture_s / forward_s}
    print_table([{"figure": k, "value": v} for k, v in summary.items()], ["figure", "value"])
    print(f"\ntargets: total < 180 s: {'yes' if total_s < 180 else 'NO'}; peak RSS < 6 GB: "
          f"{'yes' if peak_rss < 6e9 else 'NO'}; capture overhead < 1.5x: "
          f"{'yes' if capture_s / forward_s < 1.5 else 'NO'}")
    if args.json:
        setup = {"model": args.model, "quick": args.quick, "max_tokens": config.max_tokens,
                 "malloc": args.malloc,
                 "repeats": repeats}
        write_json(args.json, {"provenance": provenance(setup), "summary": summary, "timings_s": timings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
