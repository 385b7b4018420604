"""Study 7, `lipschitz`: the local Lipschitz constant of attention as the input scale and the sequence grow.

Kim, Papamakarios & Mnih 2021 ("The Lipschitz constant of self-attention", ICML) prove that dot-product
self-attention is not globally Lipschitz: its Jacobian at X has terms ~ ||X||^2 (scores bilinear in X, times
values linear in X), so the local constant grows without bound with the input scale; L2 self-attention with
tied query/key weights, softmax(-||x_i W - x_j W||^2 / sqrt(d)), is globally Lipschitz, its local constant
bounded at every scale. Castin, Ablin & Peyre 2024 ("How smooth is attention?", ICML) bound the local
constant of dot-product attention on inputs of radius R by O(sqrt(n)) in the worst case and measure a slower
growth, about n^{1/4}, on real text. Zhai et al. 2023 (sigma-reparam) divide each weight by its spectral norm.

What separates softmax from L2 attention is the input scale, not the length (Kim et al.'s L2 bound grows with
n too), so the study has two sweeps, both by JVP/VJP power iteration (`attnlab.diagnose.lipschitz`):

- scale: Lip of each attention sublayer alone, Z -> attn(Z), at s Z for s in `scales` (Z its actual input on
  Shakespeare windows, after the block's pre-norm), for the softmax and L2 models at initialisation (layer 0:
  a one-layer attention map) and trained (every layer; the claims); exponent a of Lip ~ s^a. Scaling the
  embeddings of the whole pre-norm model instead is reported too: the norm removes the scale, so that
  constant tends to the skip path's (the number says so).
- length: Lip of the whole model (input embeddings -> last block's output) on the first 8 ... N bytes, fit
  Lip(n) ~ c n^b, for softmax, softmax1, sigma-reparam and L2 models, and a pretrained point (SmolLM2-135M;
  the tiny byte GPT in the smoke preset) on the same text; b is compared with Castin et al.'s 0 < b < 1/2.

Power iteration converges from below; the estimate after `n_iter` steps is checked against `check_iter`
steps on the same inputs and start vector (one run of `check_iter` steps gives both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt, fmt_stat, seed_stats, start
from attnlab.experiments.common import lm_loss, shakespeare_split, train_loop

MODELS: dict[str, dict[str, Any]] = {
    "softmax": {},
    "softmax1": {"normalizer": "softmax1"},
    "sigma-reparam": {"sigma_reparam": True},
    "L2 attention": {"score": "l2"},
}
SCALE_MODELS = ("softmax", "L2 attention")  # the pair Kim et al.'s theorem separates by input scale


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = tuple(MODELS)
    seeds: tuple[int, ...] = (0,)
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    context: int = 128
    lengths: tuple[int, ...] = (8, 16, 32, 64, 128)
    train_steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    n_iter: int = 10
    windows: int = 4  # Shakespeare windows: the items of the claims' intervals with one seed
    max_chars: int | None = None
    scales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # input scales s of the attention sublayers (x s)
    scale_length: int = 32  # tokens of each window in the scale sweep
    check_iter: int = 50  # power-iteration steps the n_iter estimate is checked against
    check_windows: int = 2  # windows of the length sweep's convergence check (longest length, trained)
    pretrained: str = "smollm2-135m"  # a model name or path, or "tiny-gpt" (an untrained byte GPT, no files)
    pretrained_lengths: tuple[int, ...] = (8, 16, 32, 64)
    pretrained_windows: int = 2
    pretrained_iter: int = 6


PRESETS: dict[str, Config] = {
    "smoke": Config(models=("softmax", "L2 attention"), n_layers=1, d_model=16, n_heads=2, context=16,
                    lengths=(4, 8, 16), train_steps=3, batch_size=4, n_iter=2, windows=2, max_chars=200_000,
                    scales=(1.0, 8.0), scale_length=8, check_iter=3, pretrained="tiny-gpt",
                    pretrained_lengths=(4, 8), pretrained_iter=2),
    "quick": Config(),
    # full is sized for ~60 min on a 2-core CPU: three seeds and twice the quick preset's longest length.
    "full": Config(seeds=(0, 1, 2), context=256, lengths=(8, 16, 32, 64, 128, 256), train_steps=300,
                   n_iter=10, windows=2, pretrained_lengths=(8, 16, 32, 64, 128), pretrained_windows=4,
                   pretrained_iter=10),
}

SUMMARY = ("Local Lipschitz constant of attention vs input scale (softmax vs L2 attention sublayers) and "
           "of whole models vs sequence length on Shakespeare text (softmax, softmax1, sigma-reparam, L2 "
           "attention, at init and trained, and a pretrained SmolLM2-135M), with the power iteration's "
           "convergence checked.")

# Thresholds of the claims, fixed here. Over s = 1..8 a constant growing like s^2 (Kim et al.'s ||X||^2 terms)
# has exponent 2, a bounded one at most what the approach to its bound gives; 0.5 and 0.25 sit well apart.
SCALE_GROWS = 0.5  # dot-product: exponent a of Lip ~ s^a above this
SCALE_BOUNDED = 0.25  # L2: below this (Lip(8) / Lip(1) < 8^0.25 = 1.68)
CASTIN_BAND = (0.0, 0.5)  # length exponent b on real text: grows (> 0), slower than the sqrt(n) bound
CONVERGED = (-0.02, 0.02)  # (Lip after check_iter steps - after n_iter) / after check_iter


def validate(config: Config) -> None:
    check_fields(config, choices=("models", MODELS),
                 lengths=lambda ls: len(ls) >= 2 and all(1 < n <= config.context for n in ls),
                 n_iter=lambda n: n >= 1, windows=lambda w: w >= 2,
                 scales=lambda ss: len(set(ss)) >= 2 and all(math.isfinite(x) and x > 0 for x in ss),
                 scale_length=lambda n: 1 < n <= config.context,
                 check_iter=lambda n: n > config.n_iter,
                 check_windows=lambda w: 2 <= w <= config.windows,
                 pretrained=lambda p: bool(p),
                 pretrained_lengths=lambda ls: len(set(ls)) >= 2 and all(n > 1 for n in ls),
                 pretrained_windows=lambda w: w >= 2, pretrained_iter=lambda n: n >= 1)


def _gpt(config: Config, name: str, seed: int) -> Any:
    from attnlab.models.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=256, n_layers=config.n_layers, d_model=config.d_model,
                         n_heads=config.n_heads, context=config.context, seed=seed, **MODELS[name]))


def measure(model: torch.nn.Module, config: Config, seed: int, check: bool = False) -> dict[str, Any]:
    """Lip(n) for each length, mean over windows, and the fitted exponent of the mean curve. With `check`,
    the longest length of the first `check_windows` windows runs `check_iter` steps: the n_iter estimate
    (what the curve holds) and the longer one are both kept."""
    from attnlab.diagnose.lipschitz import fit_power_law, model_lipschitz
    from attnlab.experiments.probes import probe_windows, wrap

    _, val = shakespeare_split(max_chars=config.max_chars)
    lm = wrap(model.eval(), "lipschitz")
    curves, converge = [], []
    for w, ids in enumerate(probe_windows(val, config.context, config.windows)):
        curve = []
        for n in config.lengths:
            if check and n == config.lengths[-1] and w < config.check_windows:
                steps = model_lipschitz(lm, ids[:, :n], config.check_iter, seed, trace=True)
                converge.append([steps[config.n_iter - 1], steps[-1]])
                curve.append(steps[config.n_iter - 1])
            else:
                curve.append(model_lipschitz(lm, ids[:, :n], config.n_iter, seed))
        curves.append(curve)
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(config.lengths))]
    exponent = fit_power_law(config.lengths, mean)["exponent"]
    out = {"n": list(config.lengths), "lip": mean, "exponent": exponent, "lip_windows": curves}
    if check:
        out["converge"] = converge  # per window: [Lip after n_iter steps, after check_iter]
    return out


def measure_scale(lm: Any, config: Config, seed: int, layers: list[int], windows: list[torch.Tensor],
                  n_iter: int, whole_model: bool) -> dict[str, Any]:
    """The scale sweep on each window's first `scale_length` tokens: per window, each listed attention
    sublayer's Lip at s Z (`attn`: [window][layer][scale], after n_iter steps; `attn_short`: after
    config.n_iter, when n_iter is longer) and, with `whole_model`, the whole model's at s x embeddings for the
    smallest and the largest s (`model`: [window][2])."""
    from attnlab.diagnose.lipschitz import attention_lipschitz, model_lipschitz

    out: dict[str, Any] = {"scales": list(config.scales), "layers": layers, "attn": [], "attn_short": []}
    if whole_model:
        out["model"] = []
    for ids in windows:
        ids = ids[:, :config.scale_length]
        traces = attention_lipschitz(lm, ids, config.scales, layers, n_iter, seed, trace=True)
        out["attn"].append([[t[-1] for t in row] for row in traces])
        out["attn_short"].append([[t[min(config.n_iter, n_iter) - 1] for t in row] for row in traces])
        if whole_model:
            # Reported, not claimed (the pre-norm removes the scale): the two end scales suffice.
            out["model"].append([model_lipschitz(lm, ids, config.n_iter, seed, scale=s)
                                 for s in (config.scales[0], config.scales[-1])])
    return out


def _part(config: Config, name: str, seed: int, trained: bool, progress: bool) -> dict[str, Any]:
    from attnlab.data import LMBatches
    from attnlab.experiments.probes import probe_windows, wrap

    model = _gpt(config, name, seed)
    out: dict[str, Any] = {}
    if trained:
        train, _ = shakespeare_split(max_chars=config.max_chars)
        batches = LMBatches(train, config.context, config.batch_size, seed=seed)
        log = train_loop(model, batches.batch, lm_loss, steps=config.train_steps, lr=config.lr,
                         warmup=min(50, config.train_steps // 5 + 1), desc=f"{name} seed {seed}",
                         progress=progress)
        out["final_train_loss"] = log["curve"][-1][1] if log["curve"] else None
    out.update(measure(model, config, seed, check=trained))
    if name in SCALE_MODELS:
        _, val = shakespeare_split(max_chars=config.max_chars)
        # At init, layer 0 alone: a one-layer attention map (the theorem's setting); trained, every layer.
        layers = list(range(config.n_layers)) if trained else [0]
        out["scale"] = measure_scale(wrap(model.eval(), "lipschitz"), config, seed, layers,
                                     probe_windows(val, config.context, config.windows), config.check_iter,
                                     whole_model=trained)
    return out


def _pretrained_model(config: Config) -> Any:
    from attnlab.experiments.probes import pretrained_or_tiny

    return pretrained_or_tiny(config.pretrained)


def _pretrained(config: Config) -> dict[str, Any]:
    """The pretrained point: whole-model Lip vs length on Shakespeare windows (its own tokenizer), and its
    attention sublayers (first, middle, last) vs input scale, pretrained_iter steps each."""
    from attnlab.data import load_text
    from attnlab.diagnose.lipschitz import fit_power_law, lipschitz_vs_length
    from attnlab.experiments.probes import probe_windows

    lm = _pretrained_model(config)
    text = load_text()[20_000:20_000 + 40 * max(config.pretrained_lengths) * config.pretrained_windows]
    tokens = lm.encode(text)[0]
    longest = max(max(config.pretrained_lengths), config.scale_length)
    windows = probe_windows(tokens, longest, config.pretrained_windows)
    lengths = sorted(set(config.pretrained_lengths))
    curves = [lipschitz_vs_length(lm, w, lengths, n_iter=config.pretrained_iter)["value"] for w in windows]
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(lengths))]
    layers = sorted({0, lm.n_layers // 2, lm.n_layers - 1})
    scale = measure_scale(lm, config, 0, layers, windows, config.pretrained_iter, whole_model=False)
    return {"model": lm.name, "n": lengths, "lip": mean, "lip_windows": curves,
            "exponent": fit_power_law(lengths, mean)["exponent"], "scale": scale}


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    from attnlab.experiments.common import progress_bar

    out_dir, parts = start(config, out_dir, validate)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"init": {}, "trained": {}}
    bar = progress_bar(2 * len(config.models) * len(config.seeds) + 1, "lipschitz", progress)
    for stage in ("init", "trained"):
        for name in config.models:
            runs[stage][name] = []
            for seed in config.seeds:
                runs[stage][name].append(parts.get(
                    f"{stage}-seed{seed}-{name}",
                    lambda n=name, s=seed, st=stage: _part(config, n, s, st == "trained", progress)))
                bar.update(1)
    pretrained = parts.get("pretrained", lambda: _pretrained(config))
    bar.update(1)
    bar.close()
    n_len = len(config.lengths)
    results: dict[str, Any] = {
        stage: {name: {"n": list(config.lengths),
                       "lip": [seed_stats([r["lip"][i] for r in rs]) for i in range(n_len)],
                       "exponent": seed_stats([r["exponent"] for r in rs]),
                       "final_train_loss": seed_stats([r.get("final_train_loss") for r in rs]),
                       **({"scale": _scale_summary(config, [r["scale"] for r in rs])} if "scale" in rs[0]
                          else {})}
                for name, rs in by_model.items()}
        for stage, by_model in runs.items()}
    results["pretrained"] = {**{k: pretrained[k] for k in ("model", "n", "lip", "exponent")},
                             "scale": _scale_summary(config, [pretrained["scale"]])}
    results["convergence"] = _convergence(config, runs)
    claims = make_claims(config, runs, pretrained)
    tables = _tables(config, results)
    figures = _figures(config, results, out_dir)
    timings = parts.timings()
    return finish("lipschitz", config, out_dir, results=results, claims=claims, tables=tables,
                  figures=figures, timings=timings, parts=parts, summary=SUMMARY,
                  command=f"attnlab run lipschitz --out {out_dir}")


# ------------------------------------------------------------------------------------------ statistics
def _layer_mean(scale: dict[str, Any], key: str = "attn") -> list[list[float]]:
    """[window][scale]: the mean over the measured layers of the attention sublayers' Lip."""
    return [[sum(layer[j] for layer in win) / len(win) for j in range(len(scale["scales"]))]
            for win in scale[key]]


def _exponent(scales: list[float], values: list[float]) -> float | None:
    from attnlab.diagnose.lipschitz import fit_power_law

    if any(not math.isfinite(v) or v <= 0 for v in values):
        return None
    return fit_power_law(scales, values)["exponent"]


def _scale_summary(config: Config, scales: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed: the window mean of the layer-mean attention Lip at each scale and its exponent in s (and the
    whole model's, at s x embeddings, where measured)."""
    xs = list(config.scales)
    out: dict[str, Any] = {"scales": xs, "layers": scales[0]["layers"]}
    for key in ("attn", "model"):
        if key not in scales[0]:
            continue
        at = xs if key == "attn" else [xs[0], xs[-1]]
        per_seed = []
        for sc in scales:
            rows = _layer_mean(sc) if key == "attn" else sc["model"]
            per_seed.append([sum(r[j] for r in rows) / len(rows) for j in range(len(at))])
        out[key] = {"scales": at, "lip": [seed_stats([c[j] for c in per_seed]) for j in range(len(at))],
                    "exponent": seed_stats([_exponent(at, c) for c in per_seed])}
    return out


def _rel(pair: list[float]) -> float:
    short, long = pair
    return (long - short) / long if long else math.nan


def _convergence_items(config: Config, runs: dict[str, dict[str, list[dict[str, Any]]]]
                       ) -> dict[str, list[dict[str, list[float]]]]:
    """Per sweep, per seed: {"rel": relative gap (check_iter - n_iter) / check_iter per item}. Items: the
    (model, window) pairs of the length sweep at the longest length (trained), and the (model, window, layer)
    triples of the scale sweep at the largest scale (trained)."""
    trained = runs["trained"]
    length, scale = [], []
    for i in range(len(config.seeds)):
        length.append({"rel": [_rel(p) for m in config.models for p in trained[m][i]["converge"]]})
        rel = []
        for m in config.models:
            sc = trained[m][i].get("scale")
            if sc is None:
                continue
            for win_long, win_short in zip(sc["attn"], sc["attn_short"]):
                rel += [_rel([s_row[-1], l_row[-1]]) for l_row, s_row in zip(win_long, win_short)]
        scale.append({"rel": rel})
    return {"length": length, "scale": scale}


def _convergence(config: Config, runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out = {}
    for sweep, per_seed in _convergence_items(config, runs).items():
        vals = [v for run in per_seed for v in run["rel"] if math.isfinite(v)]
        out[sweep] = {"steps": [config.n_iter, config.check_iter], "items": len(vals),
                      "max_rel_gap": max(vals) if vals else None,
                      "mean_rel_gap": sum(vals) / len(vals) if vals else None}
    return out


# -------------------------------------------------------------------------------------------- claims
def make_claims(config: Config, runs: dict[str, dict[str, list[dict[str, Any]]]],
                pretrained: dict[str, Any]) -> list[dict[str, Any]]:
    claims = []
    trained = runs["trained"]
    n_seeds = len(config.seeds)
    xs = list(config.scales)
    s0, s1 = fmt(xs[0]), fmt(xs[-1])

    def scale_ev(op: str, models: list[str]) -> dict[str, Any]:
        """Items: the Shakespeare windows, the same for both models (paired); value: the mean over layers of
        the attention sublayers' Lip at each scale."""
        per_seed = [{f"{m} s={fmt(s)}": [w[j] for w in _layer_mean(trained[m][i]["scale"])]
                     for m in models for j, s in enumerate(xs)} for i in range(n_seeds)]
        return evidence(op, [f"{m} s={fmt(s)}" for m in models for s in xs], per_seed, items="windows",
                        block=1, x=xs)

    kim = "Kim et al. 2021"
    if "softmax" in trained:
        claims.append(claim(
            "dot-product attention's local Lipschitz constant grows with the input scale", kim,
            "not Lipschitz: Jacobian terms ~ ||X||^2, unbounded in the input scale",
            f"exponent a of Lip ~ s^a, s = {s0}..{s1}, softmax attention sublayers (layer mean), trained",
            scale_ev("power_exponent", ["softmax"]), threshold=SCALE_GROWS, direction="above"))
    if "L2 attention" in trained:
        claims.append(claim(
            "L2 attention's local Lipschitz constant stays bounded as the input scale grows", kim,
            "L2-MHA (tied W_Q = W_K) is Lipschitz: bounded at every scale",
            f"exponent a of Lip ~ s^a, s = {s0}..{s1}, L2 attention sublayers (layer mean), trained",
            scale_ev("power_exponent", ["L2 attention"]), threshold=SCALE_BOUNDED, direction="below"))
    if "softmax" in trained and "L2 attention" in trained:
        claims.append(claim(
            "the input scale separates dot-product from L2 attention", kim,
            "dot-product unbounded in scale, L2 bounded",
            f"exponent in s softmax - L2 (s = {s0}..{s1}, layer mean), trained",
            scale_ev("power_exponent_diff", ["softmax", "L2 attention"]), threshold=SCALE_GROWS,
            direction="above"))

    if "softmax" in trained:
        per_seed = [{f"softmax n={n}": [c[j] for c in trained["softmax"][i]["lip_windows"]]
                     for j, n in enumerate(config.lengths)} for i in range(n_seeds)]
        claims.append(claim(
            "on real text the local constant grows with n, slower than the sqrt(n) worst case",
            "Castin et al. 2024", "about n^0.25 on text (bound n^0.5)",
            "exponent b of Lip ~ n^b, whole softmax model, trained",
            evidence("power_exponent", [f"softmax n={n}" for n in config.lengths], per_seed, items="windows",
                     block=1, x=list(config.lengths)),
            threshold=CASTIN_BAND, direction="within"))
    pl = pretrained["n"]
    claims.append(claim(
        f"a pretrained model's local constant on text grows with n, slower than sqrt(n) "
        f"({pretrained['model']})",
        "Castin et al. 2024", "about n^0.25 on text (bound n^0.5)",
        f"exponent b of Lip ~ n^b, {pretrained['model']}, n = {pl[0]}..{pl[-1]}",
        evidence("power_exponent", [f"n={n}" for n in pl],
                 [{f"n={n}": [c[j] for c in pretrained["lip_windows"]] for j, n in enumerate(pl)}],
                 items="windows", block=1, x=list(pl)),
        threshold=CASTIN_BAND, direction="within"))

    if "softmax" in trained and "sigma-reparam" in trained:
        n = config.lengths[-1]
        per_seed = [{m: [curve[-1] for curve in trained[m][i]["lip_windows"]]
                     for m in ("sigma-reparam", "softmax")} for i in range(n_seeds)]
        claims.append(claim("sigma-reparam lowers the Lipschitz constant", "Zhai et al. 2023",
                            "spectral normalisation bounds each linear map",
                            f"Lip sigma-reparam / softmax at n={n}, trained",
                            evidence("ratio", ["sigma-reparam", "softmax"], per_seed, items="windows",
                                     block=1),
                            threshold=1.0, direction="below"))

    items = _convergence_items(config, runs)
    what = {"length": (f"whole trained models at n={config.lengths[-1]}", "models x windows"),
            "scale": (f"trained attention sublayers at s={s1}", "models x windows x layers")}
    for sweep, per_seed in items.items():
        if not per_seed[0]["rel"]:
            continue
        where, unit = what[sweep]
        claims.append(claim(
            f"power iteration converged in {config.n_iter} steps ({sweep} sweep)", "power iteration",
            f"{config.n_iter} steps as good as {config.check_iter}",
            f"(Lip after {config.check_iter} steps - after {config.n_iter}) / after {config.check_iter}, "
            f"{where}",
            evidence("mean", ["rel"], per_seed, items=unit, block=1),
            threshold=CONVERGED, direction="within"))
    return claims


# ------------------------------------------------------------------------------------- tables, figures
def _tables(config: Config, results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in config.models:
        i, t = results["init"][name], results["trained"][name]
        rows.append([name, fmt_stat(i["lip"][0]), fmt_stat(i["lip"][-1]), fmt_stat(i["exponent"]),
                     fmt_stat(t["lip"][0]), fmt_stat(t["lip"][-1]), fmt_stat(t["exponent"]),
                     fmt_stat(t["final_train_loss"])])
    n0, n1 = config.lengths[0], config.lengths[-1]
    length = {"title": "Local Lipschitz constant of the whole model vs length",
              "columns": ["model", f"init n={n0}", f"init n={n1}", "init exponent", f"trained n={n0}",
                          f"trained n={n1}", "trained exponent", "train loss"],
              "rows": rows,
              "note": f"{config.n_layers} layers, d={config.d_model}; {config.train_steps} training steps; "
                      f"power iteration {config.n_iter} steps; mean over {config.windows} Shakespeare "
                      f"windows; seeds {list(config.seeds)}; exponent b of a least-squares fit Lip ~ c n^b "
                      f"({fmt(n0)}..{n1})."}
    p = results["pretrained"]
    pre = {"title": "Pretrained point",
           "columns": ["model", *[f"n={n}" for n in p["n"]], "exponent b",
                       *[f"attn s={fmt(s)}" for s in config.scales], "attn exponent a"],
           "rows": [[p["model"], *[fmt(v) for v in p["lip"]], fmt(p["exponent"]),
                     *[fmt_stat(v) for v in p["scale"]["attn"]["lip"]],
                     fmt_stat(p["scale"]["attn"]["exponent"])]],
           "note": f"Whole model on {config.pretrained_windows} Shakespeare windows (its own tokenizer), "
                   f"{config.pretrained_iter} power-iteration steps; attention sublayers of layers "
                   f"{p['scale']['layers']} (mean) at s x their input, first {config.scale_length} tokens."}
    scale_rows = []
    for stage in ("init", "trained"):
        for name in config.models:
            sc = results[stage][name].get("scale")
            if sc is None:
                continue
            m = sc.get("model")  # trained models only
            ratio = (m["lip"][-1]["mean"] / m["lip"][0]["mean"]
                     if m and m["lip"][0]["mean"] and m["lip"][-1]["mean"] is not None else None)
            scale_rows.append([f"{name}, {stage}", ", ".join(str(x) for x in sc["layers"]),
                               *[fmt_stat(v) for v in sc["attn"]["lip"]], fmt_stat(sc["attn"]["exponent"]),
                               fmt(ratio)])
    s0, s1 = fmt(config.scales[0]), fmt(config.scales[-1])
    scale = {"title": "Attention sublayers vs input scale (Kim et al. 2021)",
             "columns": ["model", "layers", *[f"s={fmt(s)}" for s in config.scales], "exponent a",
                         f"whole model Lip(s={s1}) / Lip(s={s0})"],
             "rows": scale_rows,
             "note": f"Lip of Z -> attn(Z) at s Z, Z the sublayer's input (after the pre-norm) on the first "
                     f"{config.scale_length} tokens of {config.windows} windows, mean over the listed layers "
                     f"and windows; {config.check_iter} power-iteration steps; a from Lip ~ s^a. The last "
                     f"column scales the whole model's embeddings instead: the pre-norm removes the scale, "
                     f"so that constant falls towards the skip path's."}
    conv = results["convergence"]
    conv_table = {"title": "Power-iteration convergence",
                  "columns": ["sweep", "items", "mean rel. gap", "max rel. gap"],
                  "rows": [[k, v["items"], fmt(v["mean_rel_gap"]), fmt(v["max_rel_gap"])]
                           for k, v in conv.items()],
                  "note": f"(Lip after {config.check_iter} steps - after {config.n_iter}) / after "
                          f"{config.check_iter}, same inputs and start vector; trained models."}
    return [scale, length, pre, conv_table]


def _figures(config: Config, results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot

    figs = []
    series = {}
    for stage in ("init", "trained"):
        for name, r in results[stage].items():
            if "scale" in r:
                a = r["scale"]["attn"]
                series[f"{name} ({stage})"] = (list(config.scales), [x["mean"] for x in a["lip"]],
                                               [x["std"] for x in a["lip"]])
    pa = results["pretrained"]["scale"]["attn"]
    series[results["pretrained"]["model"]] = (list(config.scales), [x["mean"] for x in pa["lip"]],
                                             [x["std"] for x in pa["lip"]])
    line_plot(out_dir / "lipschitz_scale.png", series, xlabel="input scale s", ylabel="local Lipschitz",
              title="Attention sublayer Lipschitz vs input scale", logx=True, logy=True)
    figs.append(("lipschitz_scale.png", "Local Lipschitz constant of the attention sublayers at s times "
                 "their input, log-log axes; the slope is the exponent a (Kim et al.: unbounded for "
                 "dot-product, bounded for L2)."))
    for stage in ("init", "trained"):
        s = {name: (r["n"], [x["mean"] for x in r["lip"]], [x["std"] for x in r["lip"]])
             for name, r in results[stage].items()}
        if stage == "trained":
            p = results["pretrained"]
            s[p["model"]] = (p["n"], p["lip"], [0.0] * len(p["n"]))
        line_plot(out_dir / f"lipschitz_{stage}.png", s, xlabel="sequence length n", ylabel="local Lipschitz",
                  title=f"Lipschitz vs length ({stage})", logx=True, logy=True)
        figs.append((f"lipschitz_{stage}.png",
                     f"Local Lipschitz constant of the whole model vs n, log-log axes ({stage}"
                     f"{', with the pretrained point' if stage == 'trained' else ''}); the slope is the "
                     f"exponent b."))
    return figs
