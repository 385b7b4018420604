"""Benchmark: streaming decode speed with attention sinks vs sliding window with re-computation, same run.

StreamingLLM (Xiao et al. 2024, Fig. 10) reports per-token decoding latency flat in the stream length with
attention sinks, and a 22.2x speed-up over the sliding window with re-computation at the same cache size.
Here, on one model (SmolLM2-135M by default):

* sinks(S, W): the stream is fed (in multi-token steps, exact) up to each position P (1K, 10K, 50K), then
  single-token decode steps are timed (median); targets: time(50K) / time(1K) <= 1.1 (flat), and the cache's
  bytes identical at every position;
* recompute(S + W): one forward over the last S + W tokens per token (the same cache budget), timed at
  the same positions; target: recompute / sinks >= 25x.

Token ids are random (fixed seed): decode time does not depend on the text.

    .venv/bin/python benchmarks/streaming.py [--quick] [--json PATH] [--repeats N] [--model NAME]

--quick uses positions 512/1K/2K and sinks(4, 252) vs recompute(256), to validate in a few minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from _timing import base_parser, median_time, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attnlab  # noqa: E402
from attnlab.io import provenance  # noqa: E402
from attnlab.stream import RecomputePolicy, SinksPolicy, StreamRunner  # noqa: E402
from attnlab.stream.eval import rss_bytes  # noqa: E402


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=None, help="default 1020 (252 with --quick)")
    parser.add_argument("--positions", type=int, nargs="+", default=None,
                        help="stream positions to time at (default 1000 10000 50000; 512 1024 2048 with "
                        "--quick)")
    args = parser.parse_args()
    window = args.window or (252 if args.quick else 1020)
    positions = sorted(args.positions or ([512, 1024, 2048] if args.quick else [1000, 10000, 50000]))
    repeats = args.repeats or (5 if args.quick else 9)
    torch.manual_seed(0)
    lm = attnlab.load_model(args.model)
    sinks = SinksPolicy(args.sinks, window)
    budget = args.sinks + window
    recompute = RecomputePolicy(budget)
    gen = torch.Generator().manual_seed(0)
    total = positions[-1] + 2 * repeats + 8
    ids = torch.randint(0, lm.vocab_size, (1, total), generator=gen)

    runner = StreamRunner(lm, sinks, max_step=256)
    rec = StreamRunner(lm, recompute)
    rows = []
    pos = 0
    t_start = time.perf_counter()
    for target in positions:
        runner.feed(ids[:, pos:target])  # advance the stream (multi-token steps, exact)
        pos = target
        state = {"pos": pos}

        def decode_sinks(state: dict = state) -> None:
            runner.feed(ids[:, state["pos"]:state["pos"] + 1], last_only=True)
            state["pos"] += 1

        t_sinks = median_time(decode_sinks, repeats=repeats, warmup=2)
        pos = state["pos"]
        window_ids = ids[:, max(0, pos - budget):pos]

        # What recompute(W) does for each token: a fresh forward over the last W tokens.
        def decode_recompute(window_ids: torch.Tensor = window_ids) -> None:
            with torch.no_grad():
                rec.window_logits(window_ids)

        t_rec = median_time(decode_recompute, repeats=max(3, repeats // 2), warmup=1)
        rows.append({"position": target, "sinks_ms": 1e3 * t_sinks, "recompute_ms": 1e3 * t_rec,
                     "speedup": t_rec / t_sinks, "cache_bytes": runner.cache_bytes(),
                     "cache_tokens": runner.cache_length(), "rss_MiB": rss_bytes() / 2**20})
        print(f"position {target}: sinks {1e3 * t_sinks:.1f} ms/token, recompute {1e3 * t_rec:.1f} ms/token "
              f"({t_rec / t_sinks:.1f}x)", flush=True)
    print()
    print_table(rows, ["position", "sinks_ms", "recompute_ms", "speedup", "cache_tokens", "cache_bytes",
                       "rss_MiB"])
    flat = rows[-1]["sinks_ms"] / rows[0]["sinks_ms"]
    speedup = min(r["speedup"] for r in rows)
    # A position below the cache budget has a cache that is not full yet: compare the full ones.
    full = [r for r in rows if r["position"] >= budget] or rows
    same_cache = len({r["cache_bytes"] for r in full}) == 1
    print(f"\n{sinks.name}: time at {positions[-1]} / time at {positions[0]} = {flat:.2f}x "
          f"(target <= 1.1); cache bytes identical at every position >= {budget} tokens: {same_cache}")
    print(f"{recompute.name} / {sinks.name}: >= {speedup:.1f}x at every position (target >= 25x; "
          f"StreamingLLM reports 22.2x)")
    print(f"[{time.perf_counter() - t_start:.0f} s, model {lm.name}, "
          f"torch threads {torch.get_num_threads()}]")
    if args.json:
        write_json(args.json, {"provenance": provenance(vars(args), seed=0), "rows": rows, "flat_ratio": flat,
                               "min_speedup": speedup, "cache_bytes_identical": same_cache,
                               "policy": sinks.name, "baseline": recompute.name})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
