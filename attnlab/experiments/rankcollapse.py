"""Study 4, `rankcollapse`: pure attention loses rank doubly exponentially with depth (Dong et al. 2021).

Dong, Cordonnier & Loukas 2021, "Attention is not all you need: pure attention loses rank doubly
exponentially with depth" (ICML). Why: a row-stochastic attention matrix A averages tokens, and uniform
attention is exactly the rank-one limit,

    (1/n) 1 1^T X = 1 mean(X)^T        (every token replaced by the mean token),

so stacking attention layers drives X towards 1 x^T. They measure the distance to that limit with
res(X) = X - 1 x^T and the ratio r(X) = ||res(X)||_{1,inf} / ||X||_{1,inf} (attnlab.diagnose.uniformity), and
prove for a self-attention network without skips or MLPs

    ||res(SAN_L(X))|| <= (4 gamma beta / sqrt(d_qk))^{(3^L - 1)/2} ||res(X)||^{3^L},

i.e. log r_l falls like -c 3^l: log(-log r_l) is linear in the layer l with slope up to log 3. We fit that
line (the "doubly exponential fit", rate k = e^slope per layer) and, for contrast, a single exponential.

On attnlab's GPT, at initialisation (float64, so the ratio can fall to 1e-15 before rounding stops it) and
after short training on Shakespeare:
- architectures (Dong et al.'s ablations): pure attention; attention + MLP; attention + skip; full (pre-norm
  block with skip and MLP);
- effects on the full block: post-LN instead of pre-LN, orthogonal init, depth-scaled residual branches,
  and the anti-collapse losses (head diversity, log-determinant), the latter only matter when trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt, fmt_stat, seed_stats, start
from attnlab.experiments.common import lm_loss, shakespeare_split, train_loop

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "pure attention": {"skip": False, "mlp": False, "norm": "none"},
    "attention + MLP": {"skip": False, "mlp": True, "norm": "none"},
    "attention + skip": {"skip": True, "mlp": False, "norm": "none"},
    "full (pre-LN)": {},
    "post-LN": {"norm_position": "post"},
    "orthogonal init": {"init": "orthogonal"},
    "depth-scaled residual": {"depth_scaled_residual": True},
    "anti-collapse losses": {"aux_head_diversity": 0.1, "aux_logdet": 0.01},
}
ABLATIONS = ("pure attention", "attention + MLP", "attention + skip", "full (pre-LN)")


@dataclass(frozen=True)
class Config:
    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    seeds: tuple[int, ...] = (0, 1, 2)
    depth: int = 24  # at initialisation
    train_depth: int = 8
    train_steps: int = 150
    d_model: int = 64
    n_heads: int = 4
    context: int = 64
    batch_size: int = 16
    lr: float = 1e-3
    windows: int = 2  # Shakespeare validation windows the ratio is averaged over (the items with one seed)
    floor: float = 1e-12  # ratios below this are rounding noise (float64) and left out of the fits
    max_chars: int | None = None


PRESETS: dict[str, Config] = {
    "smoke": Config(architectures=ABLATIONS, seeds=(0,), depth=4, train_depth=2, train_steps=3, d_model=32,
                    n_heads=2, context=32, batch_size=4, windows=2, max_chars=200_000),
    "quick": Config(seeds=(0, 1), depth=24, train_depth=8, train_steps=150),
    # full is sized for ~40 min on a 2-core CPU: three seeds, depth 48 at init, 12 trained layers.
    "full": Config(seeds=(0, 1, 2), depth=48, train_depth=12, train_steps=250),
}

SUMMARY = ("Dong et al. 2021's rank-collapse ablations on attnlab's GPT: the uniformity ratio "
           "||X - 1 mean(X)^T|| / ||X|| layer by layer for pure attention, + MLP, + skip and the full block, "
           "at initialisation and after short training, with the doubly exponential fit for pure attention "
           "and the effect of LayerNorm placement, orthogonal init, depth scaling and anti-collapse losses.")


def validate(config: Config) -> None:
    check_fields(config, choices=("architectures", ARCHITECTURES), depth=lambda d: d >= 2,
                 train_depth=lambda d: d >= 1, train_steps=lambda s: s >= 1,
                 windows=lambda w: w >= 1 + (len(config.seeds) == 1))


def _gpt(config: Config, arch: str, depth: int, seed: int) -> Any:
    from attnlab.models.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=256, n_layers=depth, d_model=config.d_model, n_heads=config.n_heads,
                         context=config.context, seed=seed, **ARCHITECTURES[arch]))


@torch.no_grad()
def ratio_by_layer(model: torch.nn.Module, windows: list[torch.Tensor], dtype: torch.dtype
                   ) -> tuple[list[float], list[list[float]]]:
    """Uniformity ratio (centre = column mean, as Dong et al.'s code) of the embeddings and every block's
    output: (mean over windows per layer, [per window: ratio per layer])."""
    from attnlab.diagnose.uniformity import uniformity_ratio
    from attnlab.experiments.probes import wrap

    model = model.to(dtype).eval()
    lm = wrap(model, "rankcollapse")
    per_window = []
    for ids in windows:
        _, hidden = lm.forward_embeds(lm.embed(ids), output_hidden=True)
        per_window.append([uniformity_ratio(h[0].double(), "mean") for h in hidden])
    return [sum(col) / len(per_window) for col in zip(*per_window)], per_window


def doubly_exponential_fit(ratios: list[float], floor: float) -> dict[str, Any]:
    """Fit log(-log r_l) = a + b l over the layers with floor < r_l < 1 (rate k = e^b per layer), and
    log r_l = a' + b' l (single exponential) over the same layers; R^2 of each on its own axis."""
    pts = [(float(l), r) for l, r in enumerate(ratios) if floor < r < 1.0]
    if len(pts) < 3:
        return {"rate": None, "r2_double": None, "r2_single": None, "layers_used": len(pts)}
    xs = [p[0] for p in pts]

    def linfit(ys: list[float]) -> tuple[float, float, float]:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        a = my - b * mx
        ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
        ss_tot = sum((y - my) ** 2 for y in ys)
        return a, b, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0

    a2, b2, r2_double = linfit([math.log(-math.log(p[1])) for p in pts])
    _, b1, r2_single = linfit([math.log(p[1]) for p in pts])
    return {"rate": math.exp(b2), "slope": b2, "intercept": a2, "r2_double": r2_double,
            "single_slope": b1, "r2_single": r2_single, "layers_used": len(pts)}


def _at_init(config: Config, arch: str, seed: int) -> dict[str, Any]:
    from attnlab.experiments.probes import probe_windows

    _, val = shakespeare_split(max_chars=config.max_chars)
    windows = probe_windows(val, config.context, config.windows)
    ratios, per_window = ratio_by_layer(_gpt(config, arch, config.depth, seed), windows, torch.float64)
    return {"ratio": ratios, "ratio_windows": per_window, "fit": doubly_exponential_fit(ratios, config.floor)}


def _trained(config: Config, arch: str, seed: int, progress: bool) -> dict[str, Any]:
    from attnlab.data import LMBatches
    from attnlab.experiments.probes import probe_windows

    train, val = shakespeare_split(max_chars=config.max_chars)
    model = _gpt(config, arch, config.train_depth, seed)
    batches = LMBatches(train, config.context, config.batch_size, seed=seed)
    log = train_loop(model, batches.batch, lm_loss, steps=config.train_steps, lr=config.lr,
                     warmup=min(50, config.train_steps // 5 + 1), desc=f"{arch} seed {seed}",
                     progress=progress)
    windows = probe_windows(val, config.context, config.windows)
    final_loss = log["curve"][-1][1] if log["curve"] else None
    ratios, per_window = ratio_by_layer(model, windows, torch.float32)
    return {"ratio": ratios, "ratio_windows": per_window, "final_train_loss": final_loss,
            "diverged_at": log["diverged_at"]}


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    from attnlab.experiments.common import progress_bar

    out_dir, parts = start(config, out_dir, validate)
    init: dict[str, list[dict[str, Any]]] = {a: [] for a in config.architectures}
    trained: dict[str, list[dict[str, Any]]] = {a: [] for a in config.architectures}
    bar = progress_bar(len(config.seeds) * len(config.architectures), "rankcollapse at init", progress)
    for seed in config.seeds:
        for arch in config.architectures:
            init[arch].append(parts.get(f"init-seed{seed}-{arch}",
                                        lambda a=arch, s=seed: _at_init(config, a, s)))
            bar.update(1)
    bar.close()
    for seed in config.seeds:
        for arch in config.architectures:
            trained[arch].append(parts.get(f"trained-seed{seed}-{arch}",
                                           lambda a=arch, s=seed: _trained(config, a, s, progress)))
    results = {"init": _aggregate(init), "trained": _aggregate(trained),
               "fits": {a: [r["fit"] for r in rs] for a, rs in init.items()}}
    claims = make_claims(config, init, trained)
    tables = make_tables(config, results)
    figures = make_figures(config, init, results, out_dir)
    timings = parts.timings()
    return finish("rankcollapse", config, out_dir, results=results, claims=claims, tables=tables,
                  figures=figures, timings=timings, parts=parts, summary=SUMMARY,
                  command=f"attnlab run rankcollapse --out {out_dir}")


def _aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for arch, rs in runs.items():
        n = len(rs[0]["ratio"])
        out[arch] = [seed_stats([r["ratio"][i] for r in rs]) for i in range(n)]
    return out


Runs = dict[str, list[dict[str, Any]]]


def _layers(rs: list[dict[str, Any]], layers: list[int] | None = None) -> list[dict[str, list[float]]]:
    """Per seed: column "layer l" -> the ratio of each window at layer l (the items: Shakespeare windows
    spread over the validation text, the same for every architecture)."""
    layers = list(range(len(rs[0]["ratio_windows"][0]))) if layers is None else layers
    return [{f"layer {l}": [w[l] for w in r["ratio_windows"]] for l in layers} for r in rs]


def _last(rs: list[dict[str, Any]]) -> dict[str, Any]:
    last = len(rs[0]["ratio_windows"][0]) - 1
    return evidence("mean", [f"layer {last}"], _layers(rs, [last]), items="windows", block=1)


def make_claims(config: Config, init: Runs, trained: Runs) -> list[dict[str, Any]]:
    claims = []
    src = "Dong et al. 2021"
    if "pure attention" in init:
        claims.append(claim(
            f"pure attention collapses to rank one with depth (init, {config.depth} layers)", src,
            "residual -> 0 (rank one)", f"ratio after {config.depth} layers, pure attention, init",
            _last(init["pure attention"]), threshold=0.05, direction="below"))
        rs = init["pure attention"]
        rates = evidence("double_exp_rate", [f"layer {l}" for l in range(len(rs[0]["ratio"]))], _layers(rs),
                         items="windows", block=1, floor=config.floor)
        claims.append(claim(
            "... doubly exponentially: -log r grows geometrically per layer", src,
            "bound: rate up to 3 per layer (exponent 3^L)", "fitted rate k of -log r per layer",
            rates, threshold=1.5, direction="above"))
    if "attention + skip" in init:
        claims.append(claim(
            "skip connections prevent the collapse (init)", src, "residual stays away from 0",
            f"ratio after {config.depth} layers, attention + skip", _last(init["attention + skip"]),
            threshold=0.2, direction="above"))
    if "attention + MLP" in init:
        claims.append(claim(
            "MLPs without skips do not prevent it (init)", src, "MLPs slow the collapse, do not stop it",
            f"ratio after {config.depth} layers, attention + MLP", _last(init["attention + MLP"]),
            threshold=0.05, direction="below"))
    if "pure attention" in trained:
        claims.append(claim(
            f"trained pure attention collapses too ({config.train_depth} layers)", src,
            "pure-attention paths collapse in trained models", "ratio, last layer, pure attention, trained",
            _last(trained["pure attention"]), threshold=0.05, direction="below"))
    if "full (pre-LN)" in trained:
        claims.append(claim(
            "a trained full transformer does not collapse", src, "residual stays away from 0",
            "ratio, last layer, full block, trained", _last(trained["full (pre-LN)"]), threshold=0.2,
            direction="above"))
    return claims


def make_tables(config: Config, results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arch in config.architectures:
        init = results["init"][arch]
        fits = [f for f in results["fits"][arch] if f.get("rate") is not None]
        rate = seed_stats([f["rate"] for f in fits]) if fits else None
        r2d = seed_stats([f["r2_double"] for f in fits]) if fits else None
        r2s = seed_stats([f["r2_single"] for f in fits]) if fits else None
        mid = init[min(len(init) - 1, 4)]
        rows.append([arch, fmt_stat(mid), fmt_stat(init[-1]), fmt_stat(results["trained"][arch][-1]),
                     fmt_stat(rate) if rate else "–", fmt_stat(r2d) if r2d else "–",
                     fmt_stat(r2s) if r2s else "–"])
    return [{"title": "Uniformity ratio (0 = rank one)",
             "columns": ["architecture", "init, layer 4", f"init, layer {config.depth}",
                         f"trained, layer {config.train_depth}", "rate k", "R² doubly exp.",
                         "R² single exp."],
             "rows": rows,
             "note": f"d={config.d_model}, {config.n_heads} heads, {config.context} Shakespeare bytes per "
                     f"window, "
                     f"{config.windows} windows; init in float64; trained {config.train_steps} steps; seeds "
                     f"{list(config.seeds)}. Fits use layers with {fmt(config.floor)} < r < 1."}]


def make_figures(config: Config, init: dict[str, list[dict[str, Any]]], results: dict[str, Any], out_dir: Path
                 ) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot, new_figure, save_figure

    def series(block: dict[str, Any], archs: tuple[str, ...]) -> dict[str, Any]:
        return {a: (list(range(len(block[a]))), [max(s["mean"], 1e-16) for s in block[a]], None)
                for a in archs if a in block}

    figs = []
    abl = tuple(a for a in ABLATIONS if a in results["init"])
    line_plot(out_dir / "ratio_init.png", series(results["init"], abl), xlabel="layer",
              ylabel="uniformity ratio", title="At initialisation (float64)", logy=True)
    figs.append(("ratio_init.png", "Uniformity ratio by layer at init: pure attention falls towards "
                                   "rounding noise; skip connections hold it up."))
    effects = tuple(a for a in config.architectures if a not in ABLATIONS or a == "full (pre-LN)")
    if len(effects) > 1:
        line_plot(out_dir / "ratio_effects.png", series(results["init"], effects), xlabel="layer",
                  ylabel="uniformity ratio", title="Full block variants at init")
        figs.append(("ratio_effects.png", "LayerNorm placement, orthogonal init and depth scaling on "
                                          "the full block at init."))
    line_plot(out_dir / "ratio_trained.png", series(results["trained"], tuple(config.architectures)),
              xlabel="layer", ylabel="uniformity ratio", title=f"After {config.train_steps} training steps",
              logy=True)
    figs.append(("ratio_trained.png", "Uniformity ratio by layer after short training on Shakespeare."))
    if "pure attention" in init:
        run0 = init["pure attention"][0]
        fit = run0["fit"]
        pts = [(l, r) for l, r in enumerate(run0["ratio"]) if config.floor < r < 1.0]
        if pts and fit.get("rate") is not None:
            fig, ax = new_figure()
            ys = [math.log(-math.log(p[1])) for p in pts]
            ax.plot([p[0] for p in pts], ys, "o", label="pure attention")
            xs = [pts[0][0], pts[-1][0]]
            ax.plot(xs, [fit["intercept"] + fit["slope"] * x for x in xs], "-",
                    label=f"fit: rate k = {fit['rate']:.2f} / layer")
            ax.set_xlabel("layer")
            ax.set_ylabel("log(-log r)")
            ax.set_title("Doubly exponential fit (seed 0)", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            save_figure(fig, out_dir / "double_exp_fit.png")
            figs.append(("double_exp_fit.png", "log(-log r) against layer: a straight line means doubly "
                                               "exponential collapse; its slope is log k (bound: log 3)."))
    return figs
