"""Study 5, `depth-vs-context`: one parameter budget spent on depth, tested on long-range retrieval.

At a fixed budget of non-embedding parameters, P ~ 12 L d^2 (attention 4 d^2 and MLP 8 d^2 per layer), a
model can be deep and narrow or shallow and wide: d_L = sqrt(P / (12 L)), rounded to a multiple of
2 * n_heads (even head dimension for RoPE). Levine, Wies, Sharir, Bata & Shashua 2020 ("Limits to depth
efficiencies of self-attention", NeurIPS) show that depth pays only up to a width-dependent threshold
(the optimal depth grows like log d), beyond which a deeper, narrower network is worse at equal size.

Task: passkey retrieval (Mohtashami & Jaggi 2023; attnlab.data.passkey): a 5-digit key hidden at a random
depth in filler, repeated after a query. Each depth is trained on a mix of the test contexts (every
context in distribution) and scored by exact match of the key at each context.

What would decide the claim. Levine et al.'s statement is about each shape at its trained optimum, so a
shape that has not finished learning says nothing about it. The run that decides it trains every shape on
the same tokens (compute-matched: same steps and batch, about the same parameters), at each learning rate
of a small sweep (`lrs`; per shape and seed the rate with the lowest final training loss is kept, chosen
on training loss, never on the test samples), to convergence, stated before the run: every shape must
reach CONVERGED_ACC exact match at the shortest context (the claims' premise). The `full` preset is that
run, sized for a GPU (`--device cuda`: the one trainer); the `quick` preset keeps one rate and 600 steps
and shows where a CPU stands, which is far from converged.
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
    lrs: tuple[float, ...] = (2e-3,)  # per shape and seed, the rate with the lowest final training loss
    test_samples: int = 128


PRESETS: dict[str, Config] = {
    "smoke": Config(depths=(1, 2), contexts=(16, 32), budget=12 * 2 * 16 * 16, n_heads=2, steps=4,
                    batch_size=4, lrs=(2e-3, 1e-2), test_samples=8),
    "quick": Config(),
    # full is the deciding run, sized for a GPU: a learning-rate sweep per shape, compute-matched, long
    # enough to converge (1,500 steps on a CPU left only the 2-layer model at 10%; see EXPERIMENTS.md).
    # 4 shapes x 3 rates x 3 seeds x 20,000 steps: many hours on a CPU, well under one on an H200.
    "full": Config(depths=(2, 4, 8, 16), contexts=(64, 128, 256, 512), seeds=(0, 1, 2), steps=20_000,
                   batch_size=32, lrs=(3e-4, 1e-3, 3e-3), test_samples=256),
}

SUMMARY = ("A fixed parameter budget spent on 2 ... 16 layers (width shrinking to match), trained on passkey "
           "retrieval at every context and tested as the context grows.")


def validate(config: Config) -> None:
    check_fields(config, depths=lambda d: len(d) >= 2 and min(d) >= 1, contexts=lambda c: len(c) >= 2
                 and min(c) >= 16, steps=lambda s: s >= 1,
                 lrs=lambda r: len(r) >= 1 and all(0 < x < 1 for x in r),
                 budget=lambda b: b >= 12 * max(config.depths) * (2 * config.n_heads) ** 2)


def width(config: Config, depth: int) -> int:
    """d_L = sqrt(budget / (12 L)) rounded to the nearest multiple of 2 * n_heads (at least one multiple)."""
    step = 2 * config.n_heads
    return max(step, step * round(math.sqrt(config.budget / (12 * depth)) / step))


def _part(config: Config, depth: int, seed: int, lr: float, progress: bool) -> dict[str, Any]:
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

    log = train_loop(model, batch, lambda m, x, y: m(x, y)[1], steps=config.steps, lr=lr, warmup=50,
                     desc=f"depth {depth} (d={d}) lr {lr:g} seed {seed}", progress=progress)
    model.eval()
    acc, correct = {}, {}
    with torch.no_grad():
        for n in config.contexts:
            data = passkey(config.test_samples, n, seed=-1 - seed)  # the same samples for every depth
            hits = sample_correct(model(data.inputs)[0], data)
            acc[str(n)] = hits.float().mean().item()
            correct[str(n)] = hits.int().tolist()  # per sample: the items of the claims' intervals
    params = sum(p.numel() for name, p in model.named_parameters() if "wte" not in name)
    return {"depth": depth, "width": d, "params": params, "lr": lr, "accuracy": acc, "correct": correct,
            "final_train_loss": final_loss(log["curve"]), "curve": log["curve"]}


def final_loss(curve: list[Any], last: int = 4) -> float | None:
    """Mean of the last `last` logged training losses (one logged point is noisy)."""
    tail = [point[1] for point in curve[-last:]]
    return sum(tail) / len(tail) if tail else None


def best_lr(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one shape and seed trained at each rate, the run with the lowest final training loss (a diverged
    or unlogged run never wins); the test samples play no part in the choice."""
    def key(r: dict[str, Any]) -> float:
        loss = r["final_train_loss"]
        return loss if loss is not None and math.isfinite(loss) else math.inf
    return min(rs, key=key)


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    out_dir, parts = start(config, out_dir, validate)
    sweep = {depth: [[parts.get(f"seed{s}-depth{depth}-lr{lr:g}",
                                lambda d=depth, s=s, lr=lr: _part(config, d, s, lr, progress))
                      for lr in config.lrs] for s in config.seeds] for depth in config.depths}
    runs = {depth: [best_lr(rs) for rs in per_seed] for depth, per_seed in sweep.items()}
    results = {str(depth): {"width": rs[0]["width"], "params": rs[0]["params"],
                            "accuracy": [seed_stats([r["accuracy"][str(n)] for r in rs])
                                         for n in config.contexts],
                            "final_train_loss": seed_stats([r["final_train_loss"] for r in rs]),
                            "chosen_lr": [r["lr"] for r in rs],
                            "sweep": [{f"{r['lr']:g}": r["final_train_loss"] for r in per_seed}
                                      for per_seed in sweep[depth]]}
               for depth, rs in runs.items()}
    claims = make_claims(config, runs)
    rows = [[f"{depth} x d={r['width']}", r["params"]] + [fmt_stat(s) for s in r["accuracy"]]
            + [fmt_stat(r["final_train_loss"]), ", ".join(f"{x:g}" for x in r["chosen_lr"])]
            for depth, r in results.items()]
    tables = [{"title": "Passkey accuracy (exact match) by depth and context",
               "columns": ["layers x width", "params"] + [f"context {n}" for n in config.contexts]
               + ["train loss", "lr (per seed)"], "rows": rows,
               "note": f"budget {config.budget} non-embedding parameters; {config.steps} steps of "
                       f"{config.batch_size}; learning rates tried {list(config.lrs)} (kept: lowest final "
                       f"training loss); {config.test_samples} test samples per context; seeds "
                       f"{list(config.seeds)}. Chance is 1e-5 (5 digits)."}]
    figures = _figures(config, results, out_dir)
    timings = parts.timings()
    return finish("depth-vs-context", config, out_dir, results={"contexts": list(config.contexts), **results},
                  claims=claims, tables=tables, figures=figures, timings=timings, parts=parts,
                  summary=SUMMARY, command=f"attnlab run depth-vs-context --out {out_dir}")


# The convergence rule, fixed before any run: every shape must reach this exact-match accuracy at the
# shortest context before its accuracy at the longest says anything about Levine et al.'s optimum.
CONVERGED_ACC = 0.9


def make_claims(config: Config, runs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    longest, shortest = str(max(config.contexts)), str(min(config.contexts))
    depths = sorted(runs)
    deepest = depths[-1]
    # Items: the passkey test samples at the longest context, the same samples for every depth (paired).
    per_seed = [{f"{d} layers": runs[d][i]["correct"][longest] for d in depths}
                for i in range(len(config.seeds))]
    at_shortest = [{f"{d} layers": runs[d][i]["correct"][shortest] for d in depths}
                   for i in range(len(config.seeds))]
    cols = [f"{d} layers" for d in depths]

    def ev(op: str, args: list[str]) -> dict[str, Any]:
        return evidence(op, args, per_seed, items="passkey samples", block=1)

    learned = (f"worst shape's accuracy at context {shortest} (every shape converged)",
               evidence("min", cols, at_shortest, items="passkey samples", block=1), CONVERGED_ACC, "above")
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
