"""Study 3, `oversquashing`: copying the first token, counting, and representational collapse (Barbero 2024).

Barbero, Banino, Kapturowski, Kumaran, Araujo, Vitvitskyi, Pascanu & Velickovic 2024, "Transformers need
glasses! Information over-squashing in language tasks" (NeurIPS):
- representational collapse (their Theorem 4.2): the last-token final states of "1 ... 1 0" (n ones) and
  "1 ... 1 1 0" (n + 1 ones) converge as n grows, ||h_a - h_b|| -> 0, so the model eventually cannot tell
  them apart and counting fails;
- over-squashing: the sensitivity ||d h_last / d e_i|| of the last state to input token i depends on how
  many paths lead from i to the last position, and copying the first token of "b 1 1 ... 1" is harder
  than copying the last token of "1 ... 1 b".

Two parts:
1. Small GPTs trained from scratch (attnlab.data copy_first, copy_last, count_ones) on a mix of short
   lengths and tested at longer ones (copying) or at every trained length (counting, whose answers at
   longer lengths were never seen).
2. The collapse probe and the sensitivity profile (attnlab.diagnose.sensitivity) on SmolLM2-135M (quick and
   full presets) on "1...10" strings and on Shakespeare text; the smoke preset probes an untrained byte GPT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.errors import ConfigError
from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt_stat, seed_stats, start
from attnlab.experiments.common import train_loop

TASKS = ("copy_first", "copy_last", "count_ones")


@dataclass(frozen=True)
class Config:
    tasks: tuple[str, ...] = TASKS
    seeds: tuple[int, ...] = (0,)
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    train_lengths: tuple[int, ...] = (4, 8, 12, 16)
    test_lengths: tuple[int, ...] = (8, 16, 32, 64, 128)
    steps: int = 800
    batch_size: int = 32
    lr: float = 3e-3
    test_samples: int = 256
    probe_model: str = "smollm2-135m"  # or "tiny": an untrained 2-layer byte GPT (no files needed)
    collapse_lengths: tuple[int, ...] = (4, 16, 64, 256)
    # (one, zero) digit pairs: each is one instance of the probe "one*n zero" vs "one*(n+1) zero", the items
    # of the collapse claim's interval
    collapse_pairs: tuple[str, ...] = ("10", "23", "45", "67", "89", "98")
    sensitivity_tokens: int = 128
    sensitivity_probes: int = 4


PRESETS: dict[str, Config] = {
    "smoke": Config(d_model=16, n_heads=2, n_layers=1, train_lengths=(4, 8), test_lengths=(8, 16), steps=4,
                    batch_size=8, test_samples=8, probe_model="tiny", collapse_lengths=(4, 8, 16),
                    collapse_pairs=("10", "23"), sensitivity_tokens=16, sensitivity_probes=2),
    "quick": Config(),
    "full": Config(seeds=(0, 1, 2), steps=2000, test_lengths=(8, 16, 32, 64, 128, 256), test_samples=512,
                   collapse_lengths=(4, 16, 64, 256, 1024), sensitivity_tokens=256, sensitivity_probes=8),
}

SUMMARY = ("Barbero et al. 2024 at small scale: copy-first vs copy-last and counting with small GPTs trained "
           "on short sequences, and the representational-collapse probe and sensitivity profile of a real "
           "model (SmolLM2-135M).")


def validate(config: Config) -> None:
    if config.probe_model != "tiny" and not config.probe_model:
        raise ConfigError("oversquashing: probe_model must be a model name or path, or 'tiny'")
    check_fields(config, choices=("tasks", TASKS), steps=lambda s: s >= 1,
                 train_lengths=lambda t: len(t) >= 1 and min(t) >= 2,
                 test_lengths=lambda t: len(t) >= 1 and min(t) >= 2,
                 collapse_lengths=lambda t: len(t) >= 2, test_samples=lambda n: n >= 2,
                 collapse_pairs=lambda ps: len(ps) >= 2 and all(len(p) == 2 and p[0] != p[1] for p in ps))


def _data(task: str, n: int, length: int, seed: int, max_count: int) -> Any:
    from attnlab.data import copy_first, copy_last, count_ones

    if task == "count_ones":
        return count_ones(n, length, seed=seed, max_count=max_count)
    return (copy_first if task == "copy_first" else copy_last)(n, length, seed=seed)


def _max_len(config: Config) -> int:
    return max(max(config.train_lengths), max(config.test_lengths))


def _part(config: Config, task: str, seed: int, progress: bool) -> dict[str, Any]:
    from attnlab.data.synthetic import sample_correct
    from attnlab.models.gpt import GPT, GPTConfig

    max_len = _max_len(config)
    vocab = _data(task, 1, 2, 0, max_len).vocab_size
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, n_layers=config.n_layers, d_model=config.d_model,
                          n_heads=config.n_heads, context=max_len + 1, seed=seed))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = config.train_lengths[step % len(config.train_lengths)]
        d = _data(task, config.batch_size, length, 7919 * (seed + 1) + step, max_len)
        return d.inputs, d.targets

    log = train_loop(model, batch, lambda m, x, y: m(x, y)[1], steps=config.steps, lr=config.lr, warmup=50,
                     desc=f"{task} seed {seed}", progress=progress)
    model.eval()
    lengths = config.train_lengths if task == "count_ones" else config.test_lengths
    acc, correct = {}, {}
    with torch.no_grad():
        for length in lengths:
            d = _data(task, config.test_samples, length, -1 - seed, max_len)
            hits = sample_correct(model(d.inputs)[0], d)
            acc[str(length)] = hits.float().mean().item()
            correct[str(length)] = hits.int().tolist()  # per test sample: the items of the intervals
    return {"lengths": list(lengths), "accuracy": acc, "correct": correct,
            "final_train_loss": log["curve"][-1][1] if log["curve"] else None}


def _probe_model(config: Config) -> Any:
    if config.probe_model == "tiny":
        from attnlab.experiments.probes import wrap
        from attnlab.models.gpt import GPT, GPTConfig

        torch.manual_seed(0)
        return wrap(GPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, context=1024)).eval(), "tiny byte GPT")
    from attnlab.models.loading import load_model

    return load_model(config.probe_model)


def _real(config: Config) -> dict[str, Any]:
    from attnlab.data import load_text
    from attnlab.diagnose.sensitivity import collapse_probe, sensitivity_profile

    lm = _probe_model(config)
    pairs = {p: collapse_probe(lm, list(config.collapse_lengths), one=p[0], zero=p[1])
             for p in config.collapse_pairs}
    collapse = pairs[config.collapse_pairs[0]]  # the table and plot show the first pair ("1..10" by default)
    text = load_text()[20_000:60_000]  # past the front matter
    ids = lm.encode(text)[:, :config.sensitivity_tokens]
    s = sensitivity_profile(lm, ids, n_probes=config.sensitivity_probes)
    return {"model": lm.name, "collapse": collapse, "sensitivity": (s / s.sum()).tolist(),
            "collapse_relative": {p: c["relative"] for p, c in pairs.items()}}


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    out_dir, parts = start(config, out_dir, validate)
    runs = {task: [parts.get(f"seed{s}-{task}", lambda t=task, s=s: _part(config, t, s, progress))
                   for s in config.seeds] for task in config.tasks}
    real = parts.get("probe-model", lambda: _real(config))
    results: dict[str, Any] = {"tasks": {}, "probe": real}
    for task, rs in runs.items():
        lengths = rs[0]["lengths"]
        results["tasks"][task] = {"lengths": lengths,
                                  "accuracy": [seed_stats([r["accuracy"][str(n)] for r in rs])
                                               for n in lengths]}
    claims = make_claims(config, runs, real)
    tables = _tables(config, results)
    figures = _figures(config, results, out_dir)
    timings = parts.timings()
    return finish("oversquashing", config, out_dir, results=results, claims=claims, tables=tables,
                  figures=figures, timings=timings, parts=parts, summary=SUMMARY,
                  command=f"attnlab run oversquashing --out {out_dir}")


COUNT_DROP = 0.1  # accuracy lost from the shortest to the longest trained length that counts as "fails"


def make_claims(config: Config, runs: dict[str, list[dict[str, Any]]], real: dict[str, Any]
                ) -> list[dict[str, Any]]:
    src = "Barbero et al. 2024"
    claims = []
    longest = str(max(config.test_lengths))
    if "copy_first" in runs and "copy_last" in runs:
        shortest = str(min(config.test_lengths))
        # Items: the test samples of each task (drawn independently: block 1).
        per_seed = [{f"{t} @{n}": runs[t][i]["correct"][n] for t in ("copy_first", "copy_last")
                     for n in (shortest, longest)} for i in range(len(config.seeds))]
        learned = (f"copy-first and copy-last accuracy at length {shortest} (learned)",
                   evidence("min", [f"copy_first @{shortest}", f"copy_last @{shortest}"], per_seed,
                            items="test samples", block=1), 0.75, "above")
        claims.append(claim(
            f"copying the first token is harder than the last (length {longest})", src,
            "copy-first fails where copy-last works", "accuracy copy-last - copy-first",
            evidence("diff", [f"copy_last @{longest}", f"copy_first @{longest}"], per_seed,
                     items="test samples", block=1), threshold=0.05, direction="above", premise=learned))
    if "count_ones" in runs:
        lo, hi = str(min(config.train_lengths)), str(max(config.train_lengths))
        per_seed = [{f"@{n}": r["correct"][n] for n in (lo, hi)} for r in runs["count_ones"]]
        claims.append(claim(
            "counting degrades as sequences grow (trained lengths)", src, "counting fails as n grows",
            f"counting accuracy at {hi} - at {lo}",  # a difference: defined even when nothing is learned
            evidence("diff", [f"@{hi}", f"@{lo}"], per_seed, items="test samples", block=1),
            threshold=-COUNT_DROP, direction="below",
            premise=(f"counting accuracy at length {lo} (learned)",
                     evidence("mean", [f"@{lo}"], per_seed, items="test samples", block=1), 0.5, "above")))
    n = real["collapse"]["n"]
    # Items: the digit pairs (one, zero) of the probe, one model.
    rel = {"far": [], "near": []}
    for r in real["collapse_relative"].values():
        rel["far"].append(r[-1])
        rel["near"].append(r[0])
    claims.append(claim(
        f"representational collapse on {real['model']}: '1..10' vs '1..110' converge", src,
        "||h_a - h_b|| -> 0 as n grows",
        f"relative distance at n={n[-1]} / at n={n[0]} (mean over {len(rel['far'])} digit pairs)",
        evidence("ratio", ["far", "near"], [rel], items="digit pairs", block=1), threshold=0.5,
        direction="below"))
    return claims


def _tables(config: Config, results: dict[str, Any]) -> list[dict[str, Any]]:
    tables = []
    for task, r in results["tasks"].items():
        tables.append({"title": f"{task}: accuracy by length",
                       "columns": ["length"] + [str(n) for n in r["lengths"]],
                       "rows": [["accuracy"] + [fmt_stat(s) for s in r["accuracy"]]],
                       "note": f"{config.n_layers}-layer d={config.d_model} GPT, {config.steps} steps on "
                               f"lengths {list(config.train_lengths)}; seeds {list(config.seeds)}."})
    c = results["probe"]["collapse"]
    tables.append({"title": f"Collapse probe on {results['probe']['model']}",
                   "columns": ["n ones"] + [str(n) for n in c["n"]],
                   "rows": [["||h_a - h_b||"] + [f"{x:.3g}" for x in c["distance"]],
                            ["relative"] + [f"{x:.3g}" for x in c["relative"]]]})
    return tables


def _figures(config: Config, results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot

    s = {task: (r["lengths"], [x["mean"] for x in r["accuracy"]], [x["std"] for x in r["accuracy"]])
         for task, r in results["tasks"].items()}
    line_plot(out_dir / "accuracy.png", s, xlabel="sequence length", ylabel="accuracy",
              title="Copying and counting vs length", logx=True)
    probe = results["probe"]
    collapse = {probe["model"]: (probe["collapse"]["n"], probe["collapse"]["relative"], None)}
    line_plot(out_dir / "collapse.png", collapse, xlabel="n (ones)", ylabel="||h_a - h_b|| / ||h_a||",
              title="Representational collapse", logx=True, logy=True)
    sens = probe["sensitivity"]
    line_plot(out_dir / "sensitivity.png", {probe["model"]: (list(range(len(sens))), sens, None)},
              xlabel="input position", ylabel="share of sensitivity", title="Sensitivity of the last state",
              logy=True)
    return [("accuracy.png", "Accuracy by length (copy tasks: trained on short lengths, tested longer)."),
            ("collapse.png", "Distance of the last states of '1..10' and '1..110', relative to its norm."),
            ("sensitivity.png", "||d h_last / d e_i|| over Shakespeare tokens, normalised to sum 1.")]
