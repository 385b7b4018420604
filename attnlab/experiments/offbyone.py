"""Study 1, `offbyone`: does adding one to the softmax denominator help, and with what?

Identical small GPTs (same architecture, seed, data order and steps) are trained on the Shakespeare corpus
(byte tokens), differing only in attention:

    softmax          w_ij = exp(s_ij) / sum_k exp(s_ik)
    softmax1         w_ij = exp(s_ij) / (1 + sum_k exp(s_ik))         (Miller 2023, "attention is off by one")
    sinks            w_ij = exp(s_ij) / (exp(b_h) + sum_k exp(s_ik))  (learned sink logit b_h, gpt-oss)
    clipped          w = clip((zeta - gamma) softmax(s) + gamma, 0, 1)  (Bondarenko et al. 2023)
    gated            softmax, output times sigmoid(G(x)) per head       (Bondarenko et al. 2023)
    softmax1+gated   both (the "with what?")

Each trained model is probed on held-out text by `attnlab.experiments.probes` (the diagnostics of
`attnlab report`: residual norms, uniformity, entropy, first-token attention and sink rate, kurtosis and max
|activation|, int8 W8A8 fake-quantization loss gap, over-squashing sensitivity, local Lipschitz constant).

Anchors: Bondarenko et al. 2023 (OPT-125m: kurtosis 1778 -> 18.9 with gated attention, W8A8 perplexity gap
5.3 -> 0.5), Gu et al. 2024 ("When attention sink emerges": sink rate 18% with softmax at epsilon = 0.3, ~0%
when the sink carries a zero value, as softmax1's virtual key does), Kaul et al. 2025 (softmax1 alone removes
first-token dominance but not the activation kurtosis).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt, fmt_stat, seed_stats, start
from attnlab.experiments.common import lm_loss, shakespeare_split, train_loop
from attnlab.present.catalogue import label, short_label

VARIANTS: dict[str, dict[str, Any]] = {
    "softmax": {"normalizer": "softmax"},
    "softmax1": {"normalizer": "softmax1"},
    "sinks": {"normalizer": "sinks"},
    "clipped": {"normalizer": "clipped"},
    "gated": {"normalizer": "softmax", "gated_attention": True},
    "softmax1+gated": {"normalizer": "softmax1", "gated_attention": True},
}


@dataclass(frozen=True)
class Config:
    variants: tuple[str, ...] = ("softmax", "softmax1", "sinks", "clipped", "gated", "softmax1+gated")
    seeds: tuple[int, ...] = (0,)
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    context: int = 64
    batch_size: int = 16
    steps: int = 1500
    lr: float = 3e-3
    warmup: int = 50
    eval_windows: int = 128  # validation windows of `context` tokens for the validation loss
    probe_windows: int = 8  # validation windows the diagnostics run on
    quant_windows: int = 16  # validation windows for the int8 loss gap
    sensitivity_len: int = 64
    lipschitz_lengths: tuple[int, ...] = (8, 16, 32, 64)
    lipschitz_iters: int = 8
    max_chars: int | None = None  # None: the whole corpus


# quick: sized to finish in under 15 minutes on an otherwise idle 2-core CPU (measured: EXPERIMENTS.md).
PRESETS: dict[str, Config] = {
    "smoke": Config(variants=("softmax", "softmax1", "gated"), n_layers=2, d_model=32, n_heads=2, context=32,
                    batch_size=4, steps=6, warmup=2, eval_windows=4, probe_windows=2, quant_windows=2,
                    sensitivity_len=16, lipschitz_lengths=(8, 16), lipschitz_iters=2, max_chars=200_000),
    "quick": Config(),
    # full: 3 seeds, twice the context, ~5x the tokens of quick (about 80 minutes on an idle 2-core CPU).
    "full": Config(steps=2500, seeds=(0, 1, 2), context=128, eval_windows=256, probe_windows=16,
                   quant_windows=32, sensitivity_len=128, lipschitz_lengths=(16, 32, 64, 128),
                   lipschitz_iters=12),
}

SUMMARY = ("Identical small GPTs on Shakespeare, differing only in attention (softmax, softmax1, learned "
           "sinks, clipped softmax, gated attention, softmax1 + gating), compared on validation loss and "
           "every diagnostic of the report.")


def validate(config: Config) -> None:
    check_fields(config, choices=("variants", VARIANTS), steps=lambda s: s >= 1,
                 lipschitz_lengths=lambda ls: all(1 < n <= config.context for n in ls),
                 sensitivity_len=lambda n: 1 < n <= config.context,
                 # >= 2 windows each: with one seed the claims' intervals are bootstraps over them
                 eval_windows=lambda n: n >= 2, probe_windows=lambda n: n >= 2,
                 quant_windows=lambda n: n >= 2)


def gpt_config(config: Config, variant: str, seed: int) -> Any:
    from attnlab.models.gpt import GPTConfig

    return GPTConfig(vocab_size=256, n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads,
                     context=config.context, seed=seed, **VARIANTS[variant])


def _train_and_probe(config: Config, variant: str, seed: int, model_dir: Path, progress: bool,
                     label: str = "") -> dict[str, Any]:
    from attnlab.data import LMBatches, eval_batches
    from attnlab.experiments.probes import probe_lm
    from attnlab.models.gpt import GPT

    train_tokens, val_tokens = shakespeare_split(max_chars=config.max_chars)
    torch.manual_seed(seed)
    model = GPT(gpt_config(config, variant, seed))
    batches = LMBatches(train_tokens, config.context, config.batch_size, seed=seed)  # same order per variant
    log = train_loop(model, batches.batch, lm_loss, steps=config.steps, lr=config.lr, warmup=config.warmup,
                     desc=f"{label}{variant} seed {seed}", progress=progress)
    model.eval()
    val = eval_batches(val_tokens, config.context, 16, max_batches=max(1, -(-config.eval_windows // 16)))
    val_losses = window_losses(model, val)[:config.eval_windows]
    model.save(model_dir)  # lets a reader re-run `attnlab report` on exactly this model
    probe_start = time.perf_counter()
    probes = probe_lm(model, val_tokens, config, progress=progress, name=f"{variant}/seed{seed}")
    items = {"val_loss": val_losses, **per_window_probes(model, val_tokens, config)}
    return {"variant": variant, "seed": seed, "val_loss": sum(val_losses) / len(val_losses), "train": log,
            "train_seconds": log["seconds"], "probe_seconds": time.perf_counter() - probe_start, **probes,
            "items": items}


@torch.no_grad()
def window_losses(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Mean next-token cross-entropy (nats/byte) of each validation window (windows of one length, so their
    mean is the token-weighted validation loss)."""
    model.eval()
    out: list[float] = []
    for x, y in batches:
        logits = model(x)[0]
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
        out += nll.mean(dim=1).tolist()
    return out


def per_window_probes(model: torch.nn.Module, val_tokens: torch.Tensor, config: Config
                      ) -> dict[str, list[float]]:
    """The claims' diagnostics measured on each window alone (the items of their intervals): the activation
    summary of each probe window (kurtosis_max, max_abs, sink_rate, first_token_attn) and the int8 W8A8
    loss gap of each quantization window. Their means differ from the pooled probe (one capture of all
    windows as a batch) that the tables show; the claims use these."""
    from attnlab.diagnose.quantize import quantization_cost
    from attnlab.experiments.probes import layer_probe, probe_windows, wrap

    lm = wrap(model, "offbyone")
    keys = ("kurtosis_max", "max_abs", "sink_rate", "first_token_attn", "norm_growth_per_layer")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for w in probe_windows(val_tokens, config.context, config.probe_windows):
        summary = layer_probe(lm, [w])
        for k in keys:
            out[k].append(summary[k])
    with torch.no_grad():
        out["quant_gap"] = [quantization_cost(lm, ids, modes=("w8a8",))["w8a8"]["delta_loss"]
                            for ids in probe_windows(val_tokens, config.context, config.quant_windows)]
    return out


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    out_dir, parts = start(config, out_dir, validate)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in config.variants}
    total = len(config.seeds) * len(config.variants)
    for i, (seed, variant) in enumerate((s, v) for s in config.seeds for v in config.variants):
        # One part per (seed, variant); "[i/n]" in the progress bar shows where a long run stands.
        res = parts.get(f"seed{seed}-{variant}", lambda v=variant, s=seed, i=i: _train_and_probe(
            config, v, s, out_dir / "models" / f"{v}-seed{s}", progress, label=f"[{i + 1}/{total}] "))
        runs[variant].append(res)
    timings = parts.timings()
    results = aggregate(config, runs)
    claims = make_claims(config, results, runs)
    tables = make_tables(config, results)
    figures = make_figures(config, runs, results, out_dir)
    answer = answer_text(config, results)
    doc = finish("offbyone", config, out_dir, results=results, claims=claims, tables=tables, figures=figures,
                 timings=timings, parts=parts, summary=SUMMARY + " " + answer,
                 command=f"attnlab run offbyone --out {out_dir}")
    doc["answer"] = answer
    from attnlab.experiments.compare_page import compare_page

    compare_page(doc, out_dir)
    return doc


# ---------------------------------------------------------------------- aggregation over seeds
# Every scalar a probe returns that the comparison shows, in table order; labels are the catalogue's.
SCALARS: tuple[str, ...] = (
    "val_loss", "quant_gap", "kurtosis_max", "kurtosis_mean", "max_abs", "massive_ratio",
    "first_token_attn", "sink_rate", "null_sink_mass", "entropy_norm", "resid_norm_last",
    "norm_growth_per_layer", "uniformity_last", "effective_rank_last", "sensitivity_first_over_last",
    "lipschitz_max_len", "lipschitz_exponent",
)
PER_LAYER = ("resid_norm", "uniformity", "effective_rank", "kurtosis", "max_abs_layer", "first_token_layer",
             "sink_rate_layer", "entropy_layer")


def aggregate(config: Config, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"variants": {}, "per_seed": {}}
    for variant, rs in runs.items():
        entry: dict[str, Any] = {}
        for key in SCALARS:
            entry[key] = seed_stats([r.get(key) for r in rs])
        for key in PER_LAYER:
            rows = [r.get(key) for r in rs if r.get(key) is not None]
            if rows:
                entry[key] = [seed_stats([row[i] for row in rows]) for i in range(len(rows[0]))]
        for key in ("sensitivity", "lipschitz"):
            rows = [r.get(key) for r in rs if r.get(key)]
            if rows:
                xs = rows[0]["x"]
                ys = [seed_stats([row["y"][i] for row in rows]) for i in range(len(xs))]
                entry[key] = {"x": xs, "y": ys}
        entry["curve"] = rs[0]["train"]["curve"]
        entry["diverged"] = [r["train"]["diverged_at"] for r in rs]
        out["variants"][variant] = entry
        out["per_seed"][variant] = {key: [r.get(key) for r in rs] for key in SCALARS}
    return out


OUTLIER_PREMISE = 10.0  # softmax baseline kurtosis (Gaussian: 3) below which there are no outliers to remove
QUANT_PREMISE = 0.01  # nats: softmax baseline W8A8 gap below which there is no gap to close
SINK_PREMISE = 0.05  # softmax baseline sink rate below which there is no sink to remove
# "softmax1 costs no language-modelling quality": equivalence margins on the validation-loss difference
# softmax1 - softmax (nats/byte), fixed before any run: about 1% of a small byte model's loss.
NO_COST_MARGINS = (-0.02, 0.02)
# Items of each claim's interval: per-window values, the same windows for every variant (paired). Probe and
# quantization windows are spread over the validation text (independent: block 1); the validation-loss
# windows are consecutive (neighbours correlate: moving blocks of about n^(1/3)).
ITEMS = {"val_loss": ("validation windows", None), "quant_gap": ("quantization windows", 1),
         "kurtosis_max": ("probe windows", 1), "max_abs": ("probe windows", 1),
         "sink_rate": ("probe windows", 1), "first_token_attn": ("probe windows", 1),
         "norm_growth_per_layer": ("probe windows", 1)}
# Residual-norm growth per block (diagnose.residual.fitted_growth over the block outputs, the report's one
# definition): a softmax baseline whose norm does not grow has no growth for a variant to slow.
GROWTH_PREMISE = 1.0


def _ev(runs: dict[str, list[dict[str, Any]]], op: str, variants: list[str], key: str) -> dict[str, Any]:
    """Evidence for `op` of the variants' per-window `key` (see ITEMS)."""
    per_seed = [{v: runs[v][i]["items"][key] for v in variants} for i in range(len(runs[variants[0]]))]
    items, block = ITEMS[key]
    return evidence(op, variants, per_seed, items=items, block=block)


def make_claims(config: Config, results: dict[str, Any], runs: dict[str, list[dict[str, Any]]]
                ) -> list[dict[str, Any]]:
    claims = []
    variants = results["variants"]
    if "softmax" not in variants:
        return claims
    outliers = ("softmax kurtosis", _ev(runs, "mean", ["softmax"], "kurtosis_max"), OUTLIER_PREMISE, "above")
    sinks = ("softmax sink rate", _ev(runs, "mean", ["softmax"], "sink_rate"), SINK_PREMISE, "above")
    qgap = ("softmax W8A8 gap (nats)", _ev(runs, "mean", ["softmax"], "quant_gap"), QUANT_PREMISE, "above")
    if "gated" in variants:
        claims.append(claim(
            "gated attention shrinks activation outliers (kurtosis)", "Bondarenko et al. 2023, OPT-125m",
            "kurtosis 1778 -> 18.9 (softmax / gated = 94x)", "kurtosis softmax / gated",
            _ev(runs, "ratio", ["softmax", "gated"], "kurtosis_max"), threshold=2.0, direction="above",
            premise=outliers))
        claims.append(claim(
            "gated attention shrinks max |activation|", "Bondarenko et al. 2023, OPT-125m",
            "max inf-norm 340 -> 8.2 (41x)", "max|act| softmax / gated",
            _ev(runs, "ratio", ["softmax", "gated"], "max_abs"), threshold=2.0, direction="above",
            premise=outliers))
        claims.append(claim(
            "gated attention closes the int8 W8A8 gap", "Bondarenko et al. 2023, OPT-125m",
            "W8A8 perplexity gap 5.3 -> 0.5", "W8A8 gap, gated / softmax",
            _ev(runs, "ratio", ["gated", "softmax"], "quant_gap"), threshold=0.5, direction="below",
            premise=qgap))
    if "clipped" in variants:
        claims.append(claim(
            "clipped softmax shrinks activation outliers (kurtosis)", "Bondarenko et al. 2023",
            "large reduction on BERT and ViT", "kurtosis softmax / clipped",
            _ev(runs, "ratio", ["softmax", "clipped"], "kurtosis_max"), threshold=2.0, direction="above",
            premise=outliers))
    claims.append(claim(
        "softmax LMs develop attention sinks on token 0", "Gu et al. 2024",
        "sink rate 18% (eps = 0.3)", "sink rate, softmax",
        _ev(runs, "mean", ["softmax"], "sink_rate"), threshold=SINK_PREMISE, direction="above"))
    for v in ("softmax1", "sinks"):
        if v in variants:
            claims.append(claim(
                f"{v}: a sink with zero value removes the sink on token 0", "Gu et al. 2024",
                "sink rate ~0%", f"sink rate, {v}",
                _ev(runs, "mean", [v], "sink_rate"), threshold=SINK_PREMISE, direction="below",
                premise=sinks))
    growth = ("softmax residual-norm growth per block",
              _ev(runs, "mean", ["softmax"], "norm_growth_per_layer"), GROWTH_PREMISE, "above")
    claims.append(claim(
        "the residual-stream norm grows geometrically with depth", "Heimersheim & Turner 2023, GPT-2",
        "about 1.045x per block", "norm growth per block, softmax", growth[1], threshold=GROWTH_PREMISE,
        direction="above"))
    for v in ("softmax1", "gated"):
        if v in variants:
            # No paper measures this; Miller 2023's argument (a head that can output nothing need not push
            # large values to make its sink) predicts it. Tested as a difference of growth factors.
            claims.append(claim(
                f"{v} slows residual-norm growth", "Miller 2023 (argument); Sun et al. 2024 (massive "
                "activations)", "no published number", f"growth per block, softmax - {v}",
                _ev(runs, "diff", ["softmax", v], "norm_growth_per_layer"), threshold=0.0,
                direction="above", premise=growth))
    if "softmax1" in variants:
        claims.append(claim(
            "softmax1 removes first-token dominance", "Kaul et al. 2025",
            "first-token attention largely removed", "token-0 attention softmax1 / softmax",
            _ev(runs, "ratio", ["softmax1", "softmax"], "first_token_attn"), threshold=0.5,
            direction="below", premise=sinks))
        claims.append(claim(
            "... but not the activation kurtosis", "Kaul et al. 2025",
            "kurtosis stays high with softmax1 alone", "kurtosis softmax / softmax1",
            _ev(runs, "ratio", ["softmax", "softmax1"], "kurtosis_max"), threshold=2.0,
            direction="below", premise=outliers))
        claims.append(claim(
            "softmax1 costs no language-modelling quality", "Miller 2023 (proposal); Kaul et al. 2025",
            "no perplexity loss", "val loss softmax1 - softmax (nats/byte)",
            _ev(runs, "diff", ["softmax1", "softmax"], "val_loss"), threshold=NO_COST_MARGINS,
            direction="within"))
    return claims


def make_tables(config: Config, results: dict[str, Any]) -> list[dict[str, Any]]:
    variants = list(results["variants"])
    rows = []
    for key in SCALARS:
        rows.append([label(key)] + [fmt_stat(results["variants"][v][key]) for v in variants])
    n = len(config.seeds)
    title = "Variants side by side (mean ± std over seeds)" if n > 1 else "Variants side by side (one seed)"
    return [{"title": title,
             "columns": ["diagnostic"] + variants, "rows": rows,
             "note": f"{config.n_layers} layers, d={config.d_model}, {config.n_heads} heads, context "
                     f"{config.context}, {config.steps} steps of {config.batch_size}x{config.context} bytes, "
                     f"seeds {list(config.seeds)}."}]


def make_figures(config: Config, runs: dict[str, list[dict[str, Any]]], results: dict[str, Any], out_dir: Path
                 ) -> list[tuple[str, str]]:
    from attnlab.experiments.html import bar_plot, line_plot

    variants = results["variants"]
    figs: list[tuple[str, str]] = []

    def layer_series(key: str) -> dict[str, Any]:
        s = {}
        for v, e in variants.items():
            if key in e:
                s[v] = (list(range(len(e[key]))), [x["mean"] for x in e[key]], [x["std"] for x in e[key]])
        return s

    # line_plot and bar_plot label the y axis with the key's catalogue label.
    for key, title, logy, caption in (
        ("resid_norm", "Residual-stream norm by layer", True,
         "Residual norm leaving each block: steeper growth means larger activations to quantize."),
        ("kurtosis", "Activation kurtosis by layer", True,
         "Kurtosis of the residual stream per layer (3 = Gaussian); outliers show as large values."),
        ("first_token_layer", "First-token attention by layer", False,
         "Mean attention weight on token 0 per layer; a sink shows as a value near 1."),
        ("uniformity", "Token uniformity by layer", False,
         "Dong et al.'s ratio: 0 means every token has the same representation (rank collapse)."),
        ("entropy_layer", "Attention entropy by layer", False,
         "Normalised attention entropy per layer: 1 is uniform attention, 0 attends to one key."),
    ):
        s = layer_series(key)
        if s:
            line_plot(out_dir / f"{key}.png", s, xlabel="layer", ylabel=key, title=title, logy=logy)
            figs.append((f"{key}.png", caption))
    names = list(variants)
    for key, title, caption in (
        ("val_loss", "Validation loss", "Validation loss (nats/byte, lower is better)."),
        ("quant_gap", "int8 W8A8 loss gap", "Loss increase under per-tensor int8 weights and activations."),
        ("sink_rate", "Sink rate", "Share of heads whose mean attention to token 0 exceeds 0.3 (Gu et al.)."),
    ):
        bar_plot(out_dir / f"{key}.png", names, [variants[v][key]["mean"] for v in names],
                 [variants[v][key]["std"] for v in names], ylabel=key, title=title)
        figs.append((f"{key}.png", caption))
    for key, xlabel, ylabel, title, logx, caption in (
        ("sensitivity", "input position", "||d h_last / d e_i||", "Sensitivity of the last state", False,
         "Over-squashing profile: how much the last position's final state depends on each input token."),
        ("lipschitz", "sequence length", "local Lipschitz constant", "Lipschitz vs length", True,
         "Local Lipschitz constant of the whole model by power iteration, as the sequence grows."),
    ):
        s = {v: (e[key]["x"], [y["mean"] for y in e[key]["y"]], [y["std"] for y in e[key]["y"]])
             for v, e in variants.items() if key in e}
        if s:
            line_plot(out_dir / f"{key}.png", s, xlabel=xlabel, ylabel=ylabel, title=title, logx=logx,
                      logy=key == "sensitivity")
            figs.append((f"{key}.png", caption))
    s = {v: ([p[0] for p in e["curve"]], [p[1] for p in e["curve"]], None) for v, e in variants.items()}
    line_plot(out_dir / "train_loss.png", s, xlabel="step", ylabel="training loss",
              title="Training loss (seed 0)")
    figs.append(("train_loss.png", "Training loss of the first seed (same data order for every variant)."))
    return figs


def answer_text(config: Config, results: dict[str, Any]) -> str:
    """A plain answer to "does adding one to the denominator help, and with what?", built from the numbers."""
    v = results["variants"]
    if "softmax" not in v or "softmax1" not in v:
        return ""

    def m(variant: str, key: str) -> float | None:
        return v[variant][key]["mean"] if variant in v else None

    parts = []
    for key in ("first_token_attn", "sink_rate", "kurtosis_max", "max_abs", "quant_gap", "val_loss"):
        a, b = m("softmax", key), m("softmax1", key)
        if a is None or b is None:
            continue
        parts.append(f"{short_label(key)} {fmt(a)} -> {fmt(b)}")
    text = "softmax -> softmax1: " + "; ".join(parts) + "."
    best = [(name, m(name, "kurtosis_max")) for name in v if m(name, "kurtosis_max") is not None]
    if best:
        name, val = min(best, key=lambda t: t[1])
        text += f" Lowest kurtosis: {name} ({fmt(val)})."
    gaps = [(name, m(name, "quant_gap")) for name in v if m(name, "quant_gap") is not None]
    if gaps:
        name, val = min(gaps, key=lambda t: t[1])
        text += f" Smallest int8 gap: {name} ({fmt(val)} nats)."
    return text

