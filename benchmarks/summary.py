"""Benchmark: `summarize(cache)` against `summarize(cache, keys=...)` with the keys compare's per-window
measurement reads, on one evaluation window of the compare study (same run).

`attnlab compare` summarizes each held-out window of every arm and seed, and reads eight keys of it
(attention on token 0, the sink rate, the null-sink mass and their per-layer and per-head lists, the
largest |h|). The full call also computes the residual norms, kurtosis, massive-activation ratios and,
the bulk of it, an SVD per layer for effective rank and uniformity. Here one window of `--tokens`
tokens (default 160, the study's default `eval_context`; 256 in its `full` preset) of the report's
Shakespeare passage is captured with attention weights from the model (SmolLM2-135M by default), then
both calls are timed interleaved (full, subset, full, ...) so that load from other processes hits both
alike; the ratio of their medians is the figure to read. The subset's values are checked against the
full call's.

    .venv/bin/python benchmarks/summary.py [--quick] [--tokens N] [--json PATH] [--repeats N] [--model NAME]

--quick: 5 repeats instead of 15.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch
from _timing import base_parser, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnlab.diagnose.report import choose_passage  # noqa: E402
from attnlab.diagnose.summary import summarize  # noqa: E402
from attnlab.io import provenance  # noqa: E402

# What attnlab/experiments/compare/measure.py reads from one window's summary.
MEASURE_KEYS = ("first_token_attn", "sink_rate", "null_sink_mass", "max_abs", "first_token_layer",
                "null_sink_mass_layer", "first_token_heads", "null_sink_mass_heads")


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=160, help="window length (compare's eval_context)")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 15)

    from attnlab import load_model

    lm = load_model(args.model)
    ids = lm.encode(choose_passage(None, args.tokens).text)[:, :args.tokens]
    with torch.no_grad(), lm.capture(attention=True) as cache:  # as compare's measure captures a window
        lm.logits(ids)
    n_layers = lm.n_layers

    full = summarize(cache, n_layers)  # also the warm-up of both paths
    part = summarize(cache, n_layers, keys=MEASURE_KEYS)
    same = all(_same(part[k], full[k]) for k in MEASURE_KEYS) and set(part) == set(MEASURE_KEYS)

    times: dict[str, list[float]] = {"full": [], "subset": []}
    for _ in range(repeats):
        for label, keys in (("full", None), ("subset", MEASURE_KEYS)):
            start = time.perf_counter()
            summarize(cache, n_layers, keys=keys)
            times[label].append(time.perf_counter() - start)
    full_s, subset_s = statistics.median(times["full"]), statistics.median(times["subset"])

    print(f"model {lm.name}: {n_layers} layers, one window of {ids.shape[1]} tokens, "
          f"{torch.get_num_threads()} threads, {repeats} repeats (interleaved)")
    rows = [{"call": "summarize(cache)", "median_s": full_s, "keys": len(full)},
            {"call": "summarize(cache, keys=MEASURE_KEYS)", "median_s": subset_s, "keys": len(part)}]
    print_table(rows, ["call", "median_s", "keys"])
    print(f"\nsaved per call: {full_s - subset_s:.4f} s ({full_s / subset_s:.1f}x faster); subset values "
          f"equal the full call's: {'yes' if same else 'NO'}")
    if args.json:
        setup = {"model": args.model, "tokens": int(ids.shape[1]), "repeats": repeats,
                 "threads": torch.get_num_threads(), "keys": list(MEASURE_KEYS)}
        write_json(args.json, {"provenance": provenance(setup), "full_median_s": full_s,
                               "subset_median_s": subset_s, "speedup": full_s / subset_s, "same": same,
                               "times_s": times})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
