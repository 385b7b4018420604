"""Study 3, `oversquashing`: copying the first token, counting, and representational collapse (Barbero 2024).

Barbero, Banino, Kapturowski, Kumaran, Araujo, Vitvitskyi, Pascanu & Velickovic 2024, "Transformers need
glasses! Information over-squashing in language tasks" (NeurIPS):
- representational collapse (their Theorem 4.2): the last-token final states of "1 ... 1 0" (n ones) and
  "1 ... 1 1 0" (n + 1 ones) converge as n grows, ||h_a - h_b|| -> 0, so the model eventually cannot tell
  them apart and counting fails;
- over-squashing: the sensitivity ||d h_last / d e_i|| of the last state to input token i depends on how
  many causal paths lead from position i to the last position; earlier positions have more, so the theory
  favours copying the first token of "b 1 1 ... 1" over the last token of "1 ... 1 b". A position effect:
  with the token's position and distance held fixed, the path counts are equal and it predicts no gap.

Two parts:
1. Small GPTs trained from scratch (attnlab.data copy_first, copy_last, count_ones) on a mix of short
   lengths, the copy tasks also with FILL padding (copy_first: FILL before "b 1 ... 1", copy_last: FILL
   between "1 ... 1 b" and the query), so that the bit can sit anywhere in the trained range.
   - Matched control: both tasks on "F^(L-1) b 1^(L-1) Q" vs "1^(L-1) b F^(L-1) Q", L the largest trained
     length with 2L - 1 <= the longest: b at the same position L - 1, L tokens before the query, in
     sequences of a trained length. Only which side of b the ones lie on differs, not the distance nor the
     positions (so the path counts are equal): the two should be equally easy (a two-sided equivalence
     claim), and a gap at the longer lengths then comes from positions, not from which token is copied.
   - Longer test lengths (unpadded, up to 128 at quick): positions and distances never seen in training, so
     copy-first vs copy-last there measures RoPE length extrapolation, and its claim says so.
   - Counting: tested at every trained length (its answers at longer lengths were never seen).
2. The collapse probe and the sensitivity profile (attnlab.diagnose.sensitivity) on SmolLM2-135M (quick and
   full presets) on "1...10" strings and on Shakespeare text; the smoke preset probes an untrained byte GPT.
   The collapse probe runs twice: in float32, and again with the model cast to bfloat16 (weights and
   activations, on CPU too), where the paper's claim lives: in bf16 the last states of "1^n 0" and
   "1^(n+1) 0" become indistinguishable. Indistinguishable at bf16 resolution means
   ||h_a - h_b|| < 2^-8 ||h_a|| (2^-8: bf16's unit roundoff, one rounding of the state itself); the
   number of pairs whose bf16 states are exactly equal is reported next to it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.errors import ConfigError
from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt_stat, seed_stats, start
from attnlab.experiments.common import train_loop

TASKS = ("copy_first", "copy_last", "count_ones")
# "equally easy" on the matched control: equivalence margins on the accuracy difference, fixed before the run.
CONTROL_MARGINS = (-0.05, 0.05)
COPY_TASKS = ("copy_first", "copy_last")
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bf16 keeps 8 significant bits: one rounding moves a value by at most this


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
    probe_model: str = "smollm2-135m"  # or "tiny-gpt": an untrained 2-layer byte GPT (no files needed)
    collapse_lengths: tuple[int, ...] = (4, 16, 64, 256)
    # (one, zero) digit pairs: each is one instance of the probe "one*n zero" vs "one*(n+1) zero", the items
    # of the collapse claim's interval
    collapse_pairs: tuple[str, ...] = ("10", "23", "45", "67", "89", "98")
    sensitivity_tokens: int = 128
    sensitivity_probes: int = 4


PRESETS: dict[str, Config] = {
    "smoke": Config(d_model=16, n_heads=2, n_layers=1, train_lengths=(4, 8), test_lengths=(8, 16), steps=4,
                    batch_size=8, test_samples=8, probe_model="tiny-gpt", collapse_lengths=(4, 8, 16),
                    collapse_pairs=("10", "23"), sensitivity_tokens=16, sensitivity_probes=2),
    "quick": Config(),
    "full": Config(seeds=(0, 1, 2), steps=2000, test_lengths=(8, 16, 32, 64, 128, 256), test_samples=512,
                   collapse_lengths=(4, 16, 64, 256, 1024), sensitivity_tokens=256, sensitivity_probes=8),
}

SUMMARY = ("Barbero et al. 2024 at small scale: copy-first vs copy-last and counting with small GPTs trained "
           "on short sequences, and the representational-collapse probe and sensitivity profile of a real "
           "model (SmolLM2-135M).")


def validate(config: Config) -> None:
    if not config.probe_model:
        raise ConfigError("oversquashing: probe_model must be a model name or path, or 'tiny-gpt'")
    check_fields(config, choices=("tasks", TASKS), steps=lambda s: s >= 1,
                 train_lengths=lambda t: len(t) >= 1 and min(t) >= 2,
                 test_lengths=lambda t: len(t) >= 1 and min(t) >= 2,
                 collapse_lengths=lambda t: len(t) >= 2, test_samples=lambda n: n >= 2,
                 collapse_pairs=lambda ps: len(ps) >= 2 and all(len(p) == 2 and p[0] != p[1] for p in ps))
    if set(COPY_TASKS) & set(config.tasks):
        control_length(config.train_lengths)


def _data(task: str, n: int, length: int, seed: int, max_count: int, pad: int = 0) -> Any:
    from attnlab.data import copy_first, copy_last, count_ones

    if task == "count_ones":
        return count_ones(n, length, seed=seed, max_count=max_count)
    return (copy_first if task == "copy_first" else copy_last)(n, length, seed=seed, pad=pad)


def control_length(train_lengths: tuple[int, ...]) -> int:
    """L of the matched control: the largest trained length whose padded layout (L bits + L - 1 FILL + the
    query, 2L tokens) fits in the longest trained sequence, so every position and distance was trained."""
    fits = [n for n in train_lengths if 2 * n - 1 <= max(train_lengths)]
    if not fits:
        raise ConfigError(f"oversquashing: the copy tasks' matched control needs a trained length L with "
                          f"2L - 1 <= the longest ({max(train_lengths)}); add a shorter one to "
                          f"train_lengths, e.g. {max(train_lengths) // 2}")
    return max(fits)


def _train_pad(task: str, length: int, config: Config, seed: int, step: int) -> int:
    """FILL tokens for one training batch of the copy tasks: uniform in 0 .. (longest - length), so the
    padded sequences stay within the trained lengths (seeded per step: a resumed run draws the same)."""
    if task not in COPY_TASKS:
        return 0
    return random.Random(1_000_003 * (seed + 1) + step).randint(0, max(config.train_lengths) - length)


def _max_len(config: Config) -> int:
    return max(max(config.train_lengths), max(config.test_lengths))


def _part(config: Config, task: str, seed: int, progress: bool) -> dict[str, Any]:
    from attnlab.data.synthetic import sample_correct
    from attnlab.models.gpt import GPT, GPTConfig

    max_len = _max_len(config)
    vocab = _data(task, 1, 2, 0, max_len).vocab_size  # copy tasks: FILL included even when unpadded
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, n_layers=config.n_layers, d_model=config.d_model,
                          n_heads=config.n_heads, context=max_len + 1, seed=seed))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = config.train_lengths[step % len(config.train_lengths)]
        d = _data(task, config.batch_size, length, 7919 * (seed + 1) + step, max_len,
                  pad=_train_pad(task, length, config, seed, step))
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
    out = {"lengths": list(lengths), "accuracy": acc, "correct": correct,
           "final_train_loss": log["curve"][-1][1] if log["curve"] else None}
    if task in COPY_TASKS:
        L = control_length(config.train_lengths)
        with torch.no_grad():
            d = _data(task, config.test_samples, L, -1 - seed, max_len, pad=L - 1)
            hits = sample_correct(model(d.inputs)[0], d)
        out["control"] = {"length": L, "pad": L - 1, "bit_pos": d.meta["bit_pos"], "distance": L,
                          "seq_len": d.seq_len, "accuracy": hits.float().mean().item(),
                          "correct": hits.int().tolist()}
    return out


def _probe_model(config: Config) -> Any:
    from attnlab.experiments.probes import pretrained_or_tiny

    return pretrained_or_tiny(config.probe_model)


def _real(config: Config) -> dict[str, Any]:
    from attnlab.data import load_text
    from attnlab.diagnose.sensitivity import collapse_probe, sensitivity_profile

    lm = _probe_model(config)
    lengths = list(config.collapse_lengths)
    pairs = {p: collapse_probe(lm, lengths, one=p[0], zero=p[1]) for p in config.collapse_pairs}
    collapse = pairs[config.collapse_pairs[0]]  # the table and plot show the first pair ("1..10" by default)
    text = load_text()[20_000:60_000]  # past the front matter
    ids = lm.encode(text)[:, :config.sensitivity_tokens]
    s = sensitivity_profile(lm, ids, n_probes=config.sensitivity_probes)
    # The paper's collapse is a bf16 statement: run the probe in bf16 itself (weights and activations), not
    # inferred from fp32 distances. The model is not used in fp32 after this.
    lm.model.to(torch.bfloat16)
    bf16 = {p: collapse_probe(lm, lengths, one=p[0], zero=p[1]) for p in config.collapse_pairs}
    return {"model": lm.name, "collapse": collapse, "sensitivity": (s / s.sum()).tolist(),
            "collapse_relative": {p: c["relative"] for p, c in pairs.items()},
            "collapse_bf16": {p: {k: c[k] for k in ("relative", "distance", "equal", "dtype")}
                              for p, c in bf16.items()}}


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    out_dir, parts = start(config, out_dir, validate)
    # Part keys name what changed in them (padded copy training, the bf16 probe): parts from older code under
    # the same config are then recomputed, never read with fields missing.
    runs = {task: [parts.get(f"seed{s}-{task}" + ("-padded" if task in COPY_TASKS else ""),
                             lambda t=task, s=s: _part(config, t, s, progress))
                   for s in config.seeds] for task in config.tasks}
    real = parts.get("probe-model-fp32-bf16", lambda: _real(config))
    results: dict[str, Any] = {"tasks": {}, "probe": real}
    for task, rs in runs.items():
        lengths = rs[0]["lengths"]
        results["tasks"][task] = {"lengths": lengths,
                                  "accuracy": [seed_stats([r["accuracy"][str(n)] for r in rs])
                                               for n in lengths]}
        if "control" in rs[0]:
            layout = {k: v for k, v in rs[0]["control"].items() if k not in ("accuracy", "correct")}
            accs = [r["control"]["accuracy"] for r in rs]
            results["tasks"][task]["control"] = {**layout, "accuracy": seed_stats(accs)}
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
        per_seed = [{f"{t} @{n}": runs[t][i]["correct"][n] for t in COPY_TASKS for n in (shortest, longest)}
                    | {f"{t} control": runs[t][i]["control"]["correct"] for t in COPY_TASKS}
                    for i in range(len(config.seeds))]
        ctl = runs["copy_first"][0]["control"]
        cols = ["copy_last control", "copy_first control"]
        claims.append(claim(
            f"with distance and positions matched, copy-first and copy-last are equally easy (bit at "
            f"position {ctl['bit_pos']}, {ctl['distance']} tokens before the query, {ctl['seq_len']}-token "
            f"sequences: all trained)", f"control for {src}'s copy tasks",
            "path counts depend on the position only, equal here",
            "accuracy copy-last - copy-first (control)",
            evidence("diff", cols, per_seed, items="test samples", block=1), threshold=CONTROL_MARGINS,
            direction="within",
            # equal accuracy says something only if the tasks are learned at all on the padded layout
            premise=("best of copy-first and copy-last accuracy on the matched control (learned)",
                     evidence("max", cols, per_seed, items="test samples", block=1), 0.75, "above")))
        learned = (f"copy-first and copy-last accuracy at length {shortest} (learned)",
                   evidence("min", [f"copy_first @{shortest}", f"copy_last @{shortest}"], per_seed,
                            items="test samples", block=1), 0.75, "above")
        claims.append(claim(
            f"copy-first fails before copy-last at length {longest}, beyond the trained lengths (<= "
            f"{max(config.train_lengths)}): length extrapolation, not over-squashing", src,
            "the path-count theory predicts the opposite (earlier tokens have more paths)",
            f"accuracy copy-last - copy-first at length {longest}",
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
        f"representational collapse on {real['model']} (fp32): '1..10' vs '1..110' converge", src,
        "||h_a - h_b|| -> 0 as n grows",
        f"relative distance at n={n[-1]} / at n={n[0]} (mean over {len(rel['far'])} digit pairs)",
        evidence("ratio", ["far", "near"], [rel], items="digit pairs", block=1), threshold=0.5,
        direction="below"))
    far = [c["relative"][-1] for c in real["collapse_bf16"].values()]
    bf16 = {f"bf16 @{n[-1]}": far}
    claims.append(claim(
        f"in bf16 the two sequences become indistinguishable by n = {n[-1]} on {real['model']}", src,
        "in bf16 the last states of '1^n 0' and '1^(n+1) 0' become equal as n grows (Gemma)",
        f"bf16 ||h_a - h_b|| / ||h_a|| at n={n[-1]}, model run in bf16 (mean over {len(far)} digit pairs)",
        evidence("mean", list(bf16), [bf16], items="digit pairs", block=1),
        threshold=BF16_UNIT_ROUNDOFF, direction="below"))
    return claims


def _tables(config: Config, results: dict[str, Any]) -> list[dict[str, Any]]:
    tables = []
    for task, r in results["tasks"].items():
        tables.append({"title": f"{task}: accuracy by length",
                       "columns": ["length"] + [str(n) for n in r["lengths"]],
                       "rows": [["accuracy"] + [fmt_stat(s) for s in r["accuracy"]]],
                       "note": f"{config.n_layers}-layer d={config.d_model} GPT, {config.steps} steps on "
                               f"lengths {list(config.train_lengths)}; seeds {list(config.seeds)}. Lengths "
                               f"beyond {max(config.train_lengths)} were never trained: there the copy tasks "
                               f"measure length extrapolation."})
    ctl = {t: r["control"] for t, r in results["tasks"].items() if "control" in r}
    if ctl:
        c0 = next(iter(ctl.values()))
        tables.append({"title": "Copy tasks, matched control (same bit position, distance and length)",
                       "columns": ["task", "sequence", "bit position", "distance to query", "accuracy"],
                       "rows": [[t, _layout(t, c["length"]), str(c["bit_pos"]), str(c["distance"]),
                                 fmt_stat(c["accuracy"])] for t, c in ctl.items()],
                       "note": f"F = FILL, Q = query; {c0['seq_len']} tokens, within the trained lengths "
                               f"(training mixes FILL padding into both tasks)."})
    probe = results["probe"]
    c = probe["collapse"]
    fp32 = list(probe["collapse_relative"].values())
    bf16 = list(probe["collapse_bf16"].values())
    k = len(bf16)
    tables.append({"title": f"Collapse probe on {probe['model']}: fp32 and bf16",
                   "columns": ["n ones"] + [str(n) for n in c["n"]],
                   "rows": [[f"||h_a - h_b|| fp32 (pair {config.collapse_pairs[0]})"]
                            + [f"{x:.3g}" for x in c["distance"]],
                            ["relative fp32, mean over pairs"] + [f"{x:.3g}" for x in _mean_cols(fp32)],
                            ["relative bf16, mean over pairs"]
                            + [f"{x:.3g}" for x in _mean_cols([b["relative"] for b in bf16])],
                            ["bf16 pairs below 2^-8 relative"]
                            + [f"{sum(b['relative'][i] < BF16_UNIT_ROUNDOFF for b in bf16)}/{k}"
                               for i in range(len(c["n"]))],
                            ["bf16 pairs exactly equal"]
                            + [f"{sum(b['equal'][i] for b in bf16)}/{k}" for i in range(len(c["n"]))]],
                   "note": f"relative = ||h_a - h_b|| / ||h_a||, last-token state leaving the last block; "
                           f"bf16: the model cast to {bf16[0]['dtype']} (weights and activations); 2^-8 = "
                           f"{BF16_UNIT_ROUNDOFF:.3g} is bf16's unit roundoff. Digit pairs: "
                           f"{', '.join(config.collapse_pairs)}."})
    return tables


def _layout(task: str, L: int) -> str:
    bits = f"b 1^{L - 1}" if task == "copy_first" else f"1^{L - 1} b"
    return f"F^{L - 1} {bits} Q" if task == "copy_first" else f"{bits} F^{L - 1} Q"


def _mean_cols(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*rows)]


def _figures(config: Config, results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot

    s = {task: (r["lengths"], [x["mean"] for x in r["accuracy"]], [x["std"] for x in r["accuracy"]])
         for task, r in results["tasks"].items()}
    line_plot(out_dir / "accuracy.png", s, xlabel="sequence length", ylabel="accuracy",
              title="Copying and counting vs length", logx=True)
    probe = results["probe"]
    first = config.collapse_pairs[0]
    bf16 = probe["collapse_bf16"][first]["relative"]
    n = probe["collapse"]["n"]
    collapse = {f"{probe['model']} fp32": (n, probe["collapse"]["relative"], None),
                # exactly equal states (0) have no place on a log axis: left out, counted in the table
                f"{probe['model']} bf16": (n, [x if x > 0 else float("nan") for x in bf16], None),
                "bf16 unit roundoff 2^-8": (n, [BF16_UNIT_ROUNDOFF] * len(n), None)}
    line_plot(out_dir / "collapse.png", collapse, xlabel="n (ones)", ylabel="||h_a - h_b|| / ||h_a||",
              title="Representational collapse", logx=True, logy=True)
    sens = probe["sensitivity"]
    line_plot(out_dir / "sensitivity.png", {probe["model"]: (list(range(len(sens))), sens, None)},
              xlabel="input position", ylabel="share of sensitivity", title="Sensitivity of the last state",
              logy=True)
    return [("accuracy.png", "Accuracy by length (copy tasks: trained on short lengths, tested longer)."),
            ("collapse.png", "Distance of the last states of '1..10' and '1..110', relative to its norm, "
                             "with the model in fp32 and in bf16 (bf16 values of exactly 0 are left out)."),
            ("sensitivity.png", "||d h_last / d e_i|| over Shakespeare tokens, normalised to sum 1.")]
