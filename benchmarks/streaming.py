"""Benchmark: streaming decode speed with attention sinks vs sliding window with re-computation, same run.

StreamingLLM (Xiao et al. 2024, Fig. 10) reports per-token decoding latency flat in the stream length with
attention sinks, and a 22.2x speed-up over the sliding window with re-computation at the same cache size.
Here, on one model (SmolLM2-135M by default):

* sinks(S, W): the stream is fed (in multi-token steps, exact) up to each position P (1K, 10K, 50K) and the
  runner's state (its cache: bounded, ~47 MB for SmolLM2 at 1024) is kept there. Single-token decode steps
  are then timed from every kept state in turn, round after round (state 1K, 10K, 50K, 1K, ...), so that
  a drift of the machine's speed over the minutes the stream takes to feed hits every position alike
  (timed one position after the other, an earlier run measured 50K 1.18x slower than 1K, but recompute,
  whose work does not depend on the position, slowed 1.25x between the same two moments). Targets:
  median time(50K) / time(1K) <= 1.1 (flat), and the cache's bytes identical at every position >= S + W;
* recompute(S + W): one forward over the last S + W tokens per token (the same cache budget), timed in
  the same rounds; target: recompute / sinks >= 25x.

Token ids are random (fixed seed): decode time does not depend on the text.

    .venv/bin/python benchmarks/streaming.py [--quick] [--json PATH] [--repeats N] [--model NAME]

--quick uses positions 512/1K/2K and sinks(4, 252) vs recompute(256), to validate in a few minutes.
"""

from __future__ import annotations

import copy
import statistics
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
    repeats = args.repeats or (6 if args.quick else 12)
    torch.manual_seed(0)
    lm = attnlab.load_model(args.model)
    sinks = SinksPolicy(args.sinks, window)
    budget = args.sinks + window
    recompute = RecomputePolicy(budget)
    gen = torch.Generator().manual_seed(0)
    total = positions[-1] + 2
    ids = torch.randint(0, lm.vocab_size, (1, total), generator=gen)

    runner = StreamRunner(lm, sinks, max_step=256)
    rec = StreamRunner(lm, recompute)
    states = []  # (position, the runner's cache there, its byte count, its token count)
    pos = 0
    t_start = time.perf_counter()
    for target in positions:
        runner.feed(ids[:, pos:target])  # advance the stream (multi-token steps, exact)
        pos = target
        states.append((target, copy.deepcopy(runner.cache), runner.cache_bytes(), runner.cache_length()))
        print(f"stream at {target} tokens ({time.perf_counter() - t_start:.0f} s)", flush=True)

    def decode_sinks(position: int, cache: object) -> float:
        runner.cache, runner.t = copy.deepcopy(cache), position  # decode from the kept state, untimed
        return median_time(lambda: runner.feed(ids[:, position:position + 1], last_only=True),
                           repeats=1, warmup=0)

    def decode_recompute(position: int) -> float:
        # What recompute(W) does for each token: a fresh forward over the last W tokens.
        window_ids = ids[:, max(0, position + 1 - budget):position + 1]
        with torch.no_grad():
            return median_time(lambda: rec.window_logits(window_ids), repeats=1, warmup=0)

    t_sinks: dict[int, list[float]] = {p: [] for p in positions}
    t_rec: dict[int, list[float]] = {p: [] for p in positions}
    rec_every = 2  # recompute is ~30x slower: time it every other round
    for rnd in range(repeats + 1):  # round 0 warms up
        for position, cache, _, _ in states:
            dt = decode_sinks(position, cache)
            if rnd:
                t_sinks[position].append(dt)
            if rnd % rec_every == 0:
                dt = decode_recompute(position)
                if rnd:
                    t_rec[position].append(dt)
    rows = []
    for position, _, nbytes, length in states:
        ts, tr = statistics.median(t_sinks[position]), statistics.median(t_rec[position])
        rows.append({"position": position, "sinks_ms": 1e3 * ts, "recompute_ms": 1e3 * tr, "speedup": tr / ts,
                     "sinks_spread_ms": 1e3 * (max(t_sinks[position]) - min(t_sinks[position])),
                     "cache_bytes": nbytes, "cache_tokens": length, "rss_MiB": rss_bytes() / 2**20})
        print(f"position {position}: sinks {1e3 * ts:.1f} ms/token, recompute {1e3 * tr:.1f} ms/token "
              f"({tr / ts:.1f}x)", flush=True)
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
