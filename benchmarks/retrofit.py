"""Fine-tuning throughput of every `attnlab compare` arm against the softmax control, and of the control
(attnlab's attention) against the same model on Hugging Face's own `sdpa`, in the same run.

One step = forward + backward + AdamW step of the compare study's quick setting (SmolLM2-135M, batch 4 x
context 128, the attention modules and each arm's own parameters trainable). Steps of all arms are
interleaved round-robin so that load on a shared machine hits every arm alike; the median step time gives
tokens/s and the ratios are the figures to read. Targets (issue 15): every arm >= 0.85x the control's
tokens/s; the control >= 0.9x HF sdpa.

    python benchmarks/retrofit.py                  # SmolLM2, 7 rounds
    python benchmarks/retrofit.py --quick          # 3 rounds
    python benchmarks/retrofit.py --model tiny-llama --json results/bench_retrofit.json
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from _timing import base_parser, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnlab.experiments.compare.config import ARMS, PRESETS  # noqa: E402
from attnlab.experiments.compare.run import arm_model, load_base, set_trainable  # noqa: E402
from attnlab.io import provenance  # noqa: E402
from attnlab.train.fit import causal_lm_loss, make_adamw  # noqa: E402

BASELINE = "hf-sdpa"


def make_step(model: torch.nn.Module, trainable: str, batch: int, context: int, vocab: int):  # noqa: ANN201
    set_trainable(model, trainable)
    model.train()
    optimizer = make_adamw(model, 1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, context), generator=g)
    y = torch.randint(0, vocab, (batch, context), generator=g)

    def step() -> None:
        loss = causal_lm_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model (default: the quick preset's, SmolLM2)")
    args = parser.parse_args()
    config = replace(PRESETS["quick"], device="cpu", **({"model": args.model} if args.model else {}))
    base = load_base(config)
    rounds = 3 if args.quick else (args.repeats or 7)
    vocab = base.vocab_size
    steps = {}
    sdpa = copy.deepcopy(base.model)
    sdpa.set_attn_implementation("sdpa")
    steps[BASELINE] = make_step(sdpa, config.trainable, config.batch_size, config.context, vocab)
    for arm in ARMS:
        if ARMS[arm] is not None:
            steps[arm] = make_step(arm_model(base, arm).model, config.trainable, config.batch_size,
                                   config.context, vocab)
    for fn in steps.values():  # warm-up: first-call allocations, kernel builds
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    tokens = config.batch_size * config.context
    med = {name: statistics.median(ts) for name, ts in times.items()}
    control = med["softmax"]
    rows = [{"arm": name, "median_s": round(s, 3), "tokens_per_s": round(tokens / s, 1),
             "vs_control": round(control / s, 3), "vs_hf_sdpa": round(med[BASELINE] / s, 3)}
            for name, s in med.items()]
    print(f"{base.name}: batch {config.batch_size} x context {config.context}, {config.trainable} "
          f"parameters trainable, {rounds} interleaved rounds, {torch.get_num_threads()} threads")
    print_table(rows, ["arm", "median_s", "tokens_per_s", "vs_control", "vs_hf_sdpa"])
    worst = min(r["vs_control"] for r in rows if r["arm"] not in (BASELINE, "softmax"))
    print(f"slowest arm vs control: {worst:.3f}x (target >= 0.85); control vs HF sdpa: "
          f"{med[BASELINE] / control:.3f}x (target >= 0.9)")
    if args.json:
        write_json(args.json, {"rows": rows, "times": times, "rounds": rounds, **provenance(config)})


if __name__ == "__main__":
    main()
