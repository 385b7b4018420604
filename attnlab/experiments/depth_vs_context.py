"""Study 5, `depth-vs-context`: one parameter budget spent on depth, tested on long-range retrieval.

At a fixed budget of non-embedding parameters, P ~ 12 L d^2 (attention 4 d^2 and MLP 8 d^2 per layer), a
model can be deep and narrow or shallow and wide: d_L = sqrt(P / (12 L)), rounded to a multiple of
2 * n_heads (even head dimension for RoPE). Levine, Wies, Sharir, Bata & Shashua 2020 ("Limits to depth
efficiencies of self-attention", NeurIPS) show that depth pays only up to a width-dependent threshold
(the optimal depth grows like log d), beyond which a deeper, narrower network is worse at equal size.

Task: passkey retrieval (Mohtashami & Jaggi 2023; attnlab.data.passkey): a 5-digit key hidden at a random
depth in filler, repeated after a query. Each depth is trained on a mix of the test contexts (every
context in distribution) and scored by exact match of the key at each context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt_stat, seed_stats, start
from attnlab.experiments.common import train_loop


@dataclass(frozen=True)
class Config:
    depths: tuple[int, ...] = (2, 4, 8)
    contexts: tuple[int, ...] = (64, 128, 256)
    seeds: tuple[int, ...] = (0,)
    budget: int = 12 * 4 * 64 * 64  # non-embedding parameters: 4 layers at d = 64
    n_heads: int = 4
    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    test_samples: int = 128


PRESETS: dict[str, Config] = {
    "smoke": Config(depths=(1, 2), contexts=(16, 32), budget=12 * 2 * 16 * 16, n_heads=2, steps=4,
                    batch_size=4, test_samples=8),
    "quick": Config(),
    # full is sized for ~110 min on one CPU thread: the quick budget, 16 layers, contexts to 512, and the
    # 1,500 steps a 2-layer model needs to start retrieving the key (quick's 600 do not get there).
    "full": Config(depths=(2, 4, 8, 16), contexts=(64, 128, 256, 512), seeds=(0, 1), steps=1500,
                   test_samples=256),
}

SUMMARY = ("A fixed parameter budget spent on 2 ... 16 layers (width shrinking to match), trained on passkey "
           "retrieval at every context and tested as the context grows.")


def validate(config: Config) -> None:
    check_fields(config, depths=lambda d: len(d) >= 2 and min(d) >= 1, contexts=lambda c: len(c) >= 2
                 and min(c) >= 16, steps=lambda s: s >= 1,
                 budget=lambda b: b >= 12 * max(config.depths) * (2 * config.n_heads) ** 2)


def width(config: Config, depth: int) -> int:
    """d_L = sqrt(budget / (12 L)) rounded to the nearest multiple of 2 * n_heads (at least one multiple)."""
    step = 2 * config.n_heads
    return max(step, step * round(math.sqrt(config.budget / (12 * depth)) / step))


def _part(config: Config, depth: int, seed: int, progress: bool) -> dict[str, Any]:
    from attnlab.data import passkey
    from attnlab.data.synthetic import sample_correct
    from attnlab.models.gpt import GPT, GPTConfig

    vocab = passkey(1, max(config.contexts), seed=0).vocab_size
    torch.manual_seed(seed)
    d = width(config, depth)
    model = GPT(GPTConfig(vocab_size=vocab, n_layers=depth, d_model=d, n_heads=config.n_heads,
                          context=max(config.contexts), seed=seed))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = passkey(config.batch_size, config.contexts[step % len(config.contexts)],
                       seed=104_729 * (seed + 1) + step)
        return data.inputs, data.targets

    log = train_loop(model, batch, lambda m, x, y: m(x, y)[1], steps=config.steps, lr=config.lr, warmup=50,
                     desc=f"depth {depth} (d={d}) seed {seed}", progress=progress)
    model.eval()
    acc, correct = {}, {}
    with torch.no_grad():
        for n in config.contexts:
            data = passkey(config.test_samples, n, seed=-1 - seed)  # the same samples for every depth
            hits = sample_correct(model(data.inputs)[0], data)
            acc[str(n)] = hits.float().mean().item()
            correct[str(n)] = hits.int().tolist()  # per sample: the items of the claims' intervals
    params = sum(p.numel() for name, p in model.named_parameters() if "wte" not in name)
    return {"depth": depth, "width": d, "params": params, "accuracy": acc, "correct": correct,
            "final_train_loss": log["curve"][-1][1] if log["curve"] else None}


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    out_dir, parts = start(config, out_dir, validate)
    runs = {depth: [parts.get(f"seed{s}-depth{depth}", lambda d=depth, s=s: _part(config, d, s, progress))
                    for s in config.seeds] for depth in config.depths}
    results = {str(depth): {"width": rs[0]["width"], "params": rs[0]["params"],
                            "accuracy": [seed_stats([r["accuracy"][str(n)] for r in rs])
                                         for n in config.contexts],
                            "final_train_loss": seed_stats([r["final_train_loss"] for r in rs])}
               for depth, rs in runs.items()}
    claims = make_claims(config, runs)
    rows = [[f"{depth} x d={r['width']}", r["params"]] + [fmt_stat(s) for s in r["accuracy"]]
            + [fmt_stat(r["final_train_loss"])] for depth, r in results.items()]
    tables = [{"title": "Passkey accuracy (exact match) by depth and context",
               "columns": ["layers x width", "params"] + [f"context {n}" for n in config.contexts]
               + ["train loss"], "rows": rows,
               "note": f"budget {config.budget} non-embedding parameters; {config.steps} steps of "
                       f"{config.batch_size}; {config.test_samples} test samples per context; seeds "
                       f"{list(config.seeds)}. Chance is 1e-5 (5 digits)."}]
    figures = _figures(config, results, out_dir)
    timings = parts.timings()
    return finish("depth-vs-context", config, out_dir, results={"contexts": list(config.contexts), **results},
                  claims=claims, tables=tables, figures=figures, timings=timings, parts=parts,
                  summary=SUMMARY, command=f"attnlab run depth-vs-context --out {out_dir}")


def make_claims(config: Config, runs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    longest = str(max(config.contexts))
    depths = sorted(runs)
    deepest = depths[-1]
    # Items: the passkey test samples at the longest context, the same samples for every depth (paired).
    per_seed = [{f"{d} layers": runs[d][i]["correct"][longest] for d in depths}
                for i in range(len(config.seeds))]
    cols = [f"{d} layers" for d in depths]

    def ev(op: str, args: list[str]) -> dict[str, Any]:
        return evidence(op, args, per_seed, items="passkey samples", block=1)

    learned = ("best accuracy at the longest context (the task is learned at all)", ev("max", cols), 0.2,
               "above")
    return [
        claim(f"past a width-dependent depth, more layers stop paying ({deepest} layers vs fewer)",
              "Levine et al. 2020", "deeper-and-narrower is worse beyond the depth threshold",
              f"best shallower accuracy - {deepest}-layer accuracy at context {longest}",
              ev("best_minus_last", cols), threshold=0.0, direction="above", premise=learned),
        claim(f"below the threshold, depth helps ({depths[1]} vs {depths[0]} layers)", "Levine et al. 2020",
              "depth efficiency below the threshold",
              f"accuracy {depths[1]} layers - {depths[0]} layers at context {longest}",
              ev("diff", [cols[1], cols[0]]), threshold=0.0, direction="above", premise=learned),
    ]


def _figures(config: Config, results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot

    s = {f"{depth} layers (d={r['width']})": (list(config.contexts), [x["mean"] for x in r["accuracy"]],
                                              [x["std"] for x in r["accuracy"]])
         for depth, r in results.items()}
    line_plot(out_dir / "accuracy.png", s, xlabel="context (tokens)", ylabel="passkey accuracy",
              title="Fixed budget: depth vs context", logx=True)
    return [("accuracy.png", "Passkey exact-match accuracy as the context grows, one line per depth.")]
