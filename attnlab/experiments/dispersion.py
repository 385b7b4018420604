"""Study 2, `dispersion`: softmax attention disperses as the set grows (Velickovic et al. 2024).

Velickovic, Perivolaropoulos, Barbero & Pascanu 2024, "softmax is not enough (for sharp out-of-distribution)":
with logits bounded by a range Delta, the largest softmax weight over n keys is at most

    max_j a_j <= e^Delta / (e^Delta + n - 1)  ->  0  as n grows,

so a head trained to pick the maximum of 16 items can no longer single it out among 4096. Their fix,
adaptive temperature, sharpens rows whose entropy is high; scalable softmax (Nakanishi 2025, "ssmax")
multiplies the scores by s log n.

Task (attnlab.data.max_retrieval): a set of items, each one token carrying a priority and a value, then a
query; the answer is the value of the highest-priority item. A 1-layer GPT is trained at 16 items and
tested at 16 ... 4096 items, with every token at RoPE position 0, so the model is permutation invariant
as in the paper and longer sets are not also longer positions. Reported per normalizer and set size:
accuracy, and the largest attention weight of the query row (the head that attends most sharply).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt_stat, seed_stats, start
from attnlab.experiments.common import train_loop

NORMALIZERS = ("softmax", "adaptive", "ssmax")


@dataclass(frozen=True)
class Config:
    normalizers: tuple[str, ...] = NORMALIZERS
    seeds: tuple[int, ...] = (0,)
    n_layers: int = 1
    d_model: int = 64
    n_heads: int = 4
    train_items: int = 16
    test_items: tuple[int, ...] = (16, 64, 256, 1024)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3  # constant, no weight decay (with decay 0.1 and cosine decay it stayed at chance)
    test_samples: int = 256
    weight_samples: int = 16  # samples whose attention weights are recorded per size (>= 2: an interval)


PRESETS: dict[str, Config] = {
    "smoke": Config(normalizers=("softmax", "ssmax"), d_model=16, n_heads=2, test_items=(16, 64), steps=4,
                    batch_size=8, test_samples=8, weight_samples=2),
    "quick": Config(),
    "full": Config(seeds=(0, 1, 2), test_items=(16, 64, 256, 1024, 4096), steps=2000, test_samples=512),
}

SUMMARY = ("Max retrieval (Velickovic et al. 2024) with a 1-layer GPT trained at 16 items and tested up to "
           "thousands: accuracy and the largest attention weight vs set size for softmax, adaptive "
           "temperature and scalable softmax.")


def validate(config: Config) -> None:
    check_fields(config, choices=("normalizers", NORMALIZERS), steps=lambda s: s >= 1,
                 test_items=lambda t: len(t) >= 2 and all(n >= 1 for n in t),
                 train_items=lambda n: n >= 2, test_samples=lambda n: n >= 2,
                 weight_samples=lambda n: 2 <= n <= config.test_samples)


def _task(n_samples: int, n_items: int, seed: int) -> Any:
    from attnlab.data import max_retrieval

    return max_retrieval(n_samples, n_items, seed=seed)


def _positions(T: int) -> torch.Tensor:
    return torch.zeros(T, dtype=torch.long)  # every token at RoPE position 0: a set, not a sequence


def _train(config: Config, normalizer: str, seed: int, progress: bool) -> Any:
    from attnlab.models.gpt import GPT, GPTConfig

    probe = _task(1, config.train_items, seed)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=probe.vocab_size, n_layers=config.n_layers, d_model=config.d_model,
                          n_heads=config.n_heads, context=max(config.test_items) + 1, normalizer=normalizer,
                          seed=seed))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = _task(config.batch_size, config.train_items, seed=1_000_003 * (seed + 1) + step)
        return data.inputs, data.targets

    def loss_fn(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m(x, y, positions=_positions(x.shape[1]))[1]

    log = train_loop(model, batch, loss_fn, steps=config.steps, lr=config.lr, warmup=1, weight_decay=0.0,
                     schedule="constant", desc=f"{normalizer} seed {seed}", progress=progress)
    return model, log


@torch.no_grad()
def evaluate(model: torch.nn.Module, config: Config, n_items: int, seed: int) -> dict[str, Any]:
    """Accuracy on fresh sets of n_items, and the largest weight of the query row (max over heads), with
    the per-set values ("correct", "weights": the items of the claims' intervals)."""
    from attnlab.data.synthetic import sample_correct
    from attnlab.models.hooks import record_attention

    # The same test sets for every normalizer (paired); test seeds never meet training seeds.
    data = _task(config.test_samples, n_items, seed=-1 - seed)
    T = data.seq_len
    chunk = max(1, 16384 // T)
    correct: list[int] = []
    for i in range(0, len(data), chunk):
        part = data.subset(slice(i, i + chunk))
        logits = model(part.inputs, positions=_positions(T))[0]
        correct += sample_correct(logits, part).int().tolist()
    weights = []
    for i in range(min(config.weight_samples, len(data))):
        with record_attention(layers=[config.n_layers - 1]) as store:
            model(data.inputs[i:i + 1], positions=_positions(T))
        p = store[f"blocks.{config.n_layers - 1}.attn.pattern"][0, :, -1, :]  # (H, T) the query row
        weights.append(float(p.amax(dim=-1).max()))
    return {"accuracy": sum(correct) / len(correct), "max_weight": sum(weights) / len(weights),
            "correct": correct, "weights": weights}


def _part(config: Config, normalizer: str, seed: int, progress: bool) -> dict[str, Any]:
    model, log = _train(config, normalizer, seed, progress)
    model.eval()
    curve = {str(n): evaluate(model, config, n, seed) for n in config.test_items}
    # per-item values sit next to the curve, out of the table aggregation below
    items = {n: {"correct": c.pop("correct"), "weights": c.pop("weights")} for n, c in curve.items()}
    return {"curve": curve, "items": items, "final_train_loss": log["curve"][-1][1] if log["curve"] else None,
            "train_seconds": log["seconds"]}


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    out_dir, parts = start(config, out_dir, validate)
    runs: dict[str, list[dict[str, Any]]] = {}
    for normalizer in config.normalizers:
        runs[normalizer] = [parts.get(f"seed{s}-{normalizer}",
                                      lambda n=normalizer, s=s: _part(config, n, s, progress))
                            for s in config.seeds]
    results = {}
    for normalizer, rs in runs.items():
        results[normalizer] = {
            metric: [seed_stats([r["curve"][str(n)][metric] for r in rs]) for n in config.test_items]
            for metric in ("accuracy", "max_weight")}
        results[normalizer]["final_train_loss"] = seed_stats([r["final_train_loss"] for r in rs])
    claims = make_claims(config, runs)
    tables = [_table(config, results, metric) for metric in ("accuracy", "max_weight")]
    figures = _figures(config, results, out_dir)
    timings = parts.timings()
    return finish("dispersion", config, out_dir, results={"test_items": list(config.test_items), **results},
                  claims=claims, tables=tables, figures=figures, timings=timings, parts=parts,
                  summary=SUMMARY,
                  command=f"attnlab run dispersion --out {out_dir}")


def _items(runs: dict[str, list[dict[str, Any]]], key: str, cols: list[tuple[str, int]]
           ) -> list[dict[str, list[float]]]:
    """Per seed: column "normalizer @n" -> that part's per-set values `key` ("correct" or "weights")."""
    seeds = len(next(iter(runs.values())))
    return [{f"{norm} @{n}": runs[norm][i]["items"][str(n)][key] for norm, n in cols} for i in range(seeds)]


OOD_DROP = 0.1  # accuracy lost from the trained size to the largest: "fails out of distribution"


def make_claims(config: Config, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    claims = []
    lo, hi = config.test_items[0], config.test_items[-1]
    src = "Velickovic et al. 2024"
    if "softmax" in runs:
        # Items: the test sets (query rows for the weights), drawn independently: block 1.
        w = _items(runs, "weights", [("softmax", lo), ("softmax", hi)])
        claims.append(claim(
            f"softmax disperses: the sharpest weight falls as the set grows ({lo} -> {hi} items)", src,
            "max weight -> 0 as n grows", f"max weight at {hi} / at {lo}, softmax",
            evidence("ratio", [f"softmax @{hi}", f"softmax @{lo}"], w, items="query rows", block=1),
            threshold=0.5, direction="below"))
        acc = _items(runs, "correct", [("softmax", lo), ("softmax", hi)])
        learned = (f"softmax accuracy at {lo} items (learned in distribution)",
                   evidence("mean", [f"softmax @{lo}"], acc, items="test sets", block=1), 0.5, "above")
        claims.append(claim(
            "max retrieval fails out of distribution", src, "accuracy collapses on larger sets",
            f"accuracy at {hi} - at {lo}, softmax",  # a difference: defined even when nothing is learned
            evidence("diff", [f"softmax @{hi}", f"softmax @{lo}"], acc, items="test sets", block=1),
            threshold=-OOD_DROP, direction="below", premise=learned))
        for other, source, paper in (("adaptive", src, "adaptive temperature improves OOD accuracy"),
                                     ("ssmax", "Nakanishi 2025", "scalable softmax keeps attention sharp")):
            if other in runs:
                cols = [(name, n) for n in config.test_items[1:] for name in (other, "softmax")]
                gain = evidence("mean_pair_diff", [f"{name} @{n}" for name, n in cols],
                                _items(runs, "correct", cols), items="test sets", block=1)
                claims.append(claim(
                    f"{other} beats softmax on larger sets", source, paper,
                    f"mean accuracy gain over sizes > {lo}, {other} - softmax", gain, threshold=0.0,
                    direction="above", premise=learned))
    return claims


def _table(config: Config, results: dict[str, Any], metric: str) -> dict[str, Any]:
    rows = [[name] + [fmt_stat(s) for s in results[name][metric]] for name in config.normalizers]
    return {"title": {"accuracy": "Accuracy", "max_weight": "Largest attention weight of the query"}[metric],
            "columns": ["normalizer"] + [f"{n} items" for n in config.test_items], "rows": rows,
            "note": f"1-layer d={config.d_model} GPT trained {config.steps} steps of {config.batch_size} "
                    f"sets of {config.train_items} items; {config.test_samples} test sets per size; seeds "
                    f"{list(config.seeds)}. Chance accuracy: 1/4."}


def _figures(config: Config, results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot

    figs = []
    for metric, ylabel, caption in (
        ("accuracy", "accuracy", "Max-retrieval accuracy vs set size (trained at the first size)."),
        ("max_weight", "largest attention weight", "Largest weight of the query's attention row: softmax "
                                                   "spreads it thinner as the set grows."),
    ):
        s = {n: (list(config.test_items), [x["mean"] for x in results[n][metric]],
                 [x["std"] for x in results[n][metric]]) for n in config.normalizers}
        line_plot(out_dir / f"{metric}.png", s, xlabel="items in the set", ylabel=ylabel,
                  title=f"{ylabel} vs set size", logx=True)
        figs.append((f"{metric}.png", caption))
    return figs
