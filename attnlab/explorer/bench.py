"""Time explorer updates on a real model: `python -m attnlab.explorer.bench [--model smollm2-135m]`.

Each request moves one slider to a value not seen before (so nothing comes from the result cache) on a
passage cut to exactly `--tokens` tokens, as the page does. Prints the median wall and process CPU time
of the update (the server's own work without HTTP: forward and metrics, as /api/analyze) and of the
greedy continuation that follows it (/api/continue), for a temperature, a normalizer+window and a
steering slider. The explorer's target is a median under one second at 128 tokens on a laptop CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import attnlab
    from attnlab.explorer.engine import Explorer, default_params
    from attnlab.explorer.passages import CORPUS

    t0 = time.perf_counter()
    ex = Explorer(attnlab.load_model(args.model), name=args.model)
    start = time.perf_counter() - t0
    ids = ex.encode_any("\n\n".join(CORPUS))[:, : args.tokens]
    text = ex.loaded.decode(ids)
    base = replace(default_params(ex), text=text)
    n = ex.encode(text).shape[-1]
    ex.analyze(base)  # warm-up, and the baseline every later request compares with
    rows = {}
    cases = {
        "temperature": lambda i: replace(base, temperature=1.0 + 0.05 * (i + 1)),
        "normalizer+window": lambda i: replace(base, normalizer="softmax1", window=16 + i, sinks=4),
        "steering": lambda i: replace(base, alphas=(0.1 * (i + 1), 0.0, 0.0, 0.0)),
    }
    for name, make in cases.items():
        times, conts = [], []
        for i in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            r = ex.analyze(make(i))
            times.append((time.perf_counter() - t, time.process_time() - c))
            assert not r["cached"]
            t, c = time.perf_counter(), time.process_time()
            ex.continue_text(make(i))
            conts.append((time.perf_counter() - t, time.process_time() - c))
        rows[name] = times
        rows[f"{name}: continuation"] = conts
    print(f"model {args.model}: {n} tokens, start-up {start:.1f} s (load + directions), "
          f"torch threads {torch.get_num_threads()}, continuation {ex.limits.continuation_tokens} tokens")
    # CPU time (all threads of this process) next to wall time: on a busy machine the wall time measures
    # the queue for the CPU, the CPU time still measures the work.
    for name, pairs in rows.items():
        wall = [w for w, _ in pairs]
        q = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
        print(f"  {name:<30} median {1000 * statistics.median(wall):6.0f} ms wall "
              f"(quartiles {1000 * q[0]:.0f}-{1000 * q[2]:.0f}), "
              f"{1000 * statistics.median(c for _, c in pairs):6.0f} ms CPU, {len(pairs)} updates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
