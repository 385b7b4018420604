"""Training throughput of attnlab's GPT for each attention normalizer against softmax, in the same run.

One training step = forward + backward + AdamW step on a (batch, context) batch of random tokens, for a
4-layer d=128, 4-head model at context 256 (the issue's setting). Steps of the variants are interleaved
round-robin (softmax, softmax1, ..., softmax, softmax1, ...) so that load on a shared machine hits every
variant alike; the median step time gives tokens/s, and the ratio to softmax's is the figure to read.
Target: every normalizer >= 0.9x softmax's tokens/s.

    python benchmarks/train.py            # CPU, batch 8, 15 rounds
    python benchmarks/train.py --quick    # batch 4, 5 rounds
    python benchmarks/train.py --switches # also gated attention, L2 scores, sigma-reparam
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from _timing import base_parser, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnlab.io import provenance  # noqa: E402
from attnlab.models.gpt import GPT, GPTConfig  # noqa: E402
from attnlab.models.gpt_config import NORMALIZERS  # noqa: E402
from attnlab.train.config import TrainConfig  # noqa: E402
from attnlab.train.loop import make_optimizer  # noqa: E402

SWITCHES = {"softmax+gated": {"gated_attention": True}, "softmax+l2": {"score": "l2"},
            "softmax+sigma_reparam": {"sigma_reparam": True}}


def make_step(cfg: GPTConfig, batch: int, device: torch.device):  # noqa: ANN201
    model = GPT(cfg).to(device).train()
    optimizer = make_optimizer(model, TrainConfig(model=cfg))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context), generator=g).to(device)
    y = torch.randint(0, cfg.vocab_size, (batch, cfg.context), generator=g).to(device)

    def step() -> None:
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 8, quick 4)")
    parser.add_argument("--switches", action="store_true", help="also time the architecture switches")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (4 if args.quick else 8)
    rounds = args.repeats or (5 if args.quick else 15)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    variants = {name: {"normalizer": name} for name in NORMALIZERS}
    if args.switches:
        variants.update(SWITCHES)
    steps = {name: make_step(GPTConfig(n_layers=4, d_model=128, n_heads=4, context=256, **kw), batch, device)
             for name, kw in variants.items()}
    for step in steps.values():  # warm-up: allocator, kernels, first-call overheads
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)

    tokens = batch * 256
    base = tokens / statistics.median(times["softmax"])
    rows = []
    for name, ts in times.items():
        tps = tokens / statistics.median(ts)
        rows.append({"variant": name, "ms/step": 1000 * statistics.median(ts), "tokens/s": tps,
                     "vs softmax": tps / base, "target >= 0.9x": "ok" if tps / base >= 0.9 else "BELOW"})
    print(f"training step, 4 layers, d=128, 4 heads, context 256, batch {batch}, {device}, "
          f"median of {rounds} interleaved rounds, {torch.get_num_threads()} threads")
    print_table(rows, ["variant", "ms/step", "tokens/s", "vs softmax", "target >= 0.9x"])
    if args.json:
        setup = {"batch": batch, "rounds": rounds, "switches": args.switches, "device": str(device)}
        write_json(args.json, {"rows": rows, **setup, **provenance(setup, 0)})


if __name__ == "__main__":
    main()
