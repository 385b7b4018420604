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

Causal and bidirectional. Dong et al.'s setting is bidirectional (BERT-like: every token sees every token);
attnlab's language models are causal. At initialisation the `bidirectional` architectures are measured again
with span "full" (GPTConfig.span), with the same ratio and the same fit. The two differ in kind: under a
causal mask token 0 attends only to itself, so a layer maps it by W_V W_O alone, and with the near-uniform
attention of a small init token i becomes the mean of tokens 0..i: the prefix-mean matrix, eigenvalues
1, 1/2, ..., 1/n, which shrinks the residual by about 2 per layer (a single exponential) towards token 0's
trajectory, where bidirectional uniform attention is (1/n) 1 1^T and reaches rank one in one layer. We
measure both curves and the gap between their ratios after GAP_LAYER = 8 layers (in decades, ratios below
the float64 noise floor counted as the floor, which only narrows the gap; later, a deep causal stack too
reaches rounding, so the gap is read where it is still measurable).

Trained models: each keeps its loss curve, final training loss and validation loss (mean next-token
cross-entropy over consecutive validation windows), so a reader sees whether the no-norm and pure-attention
models learned; "skip connections prevent collapse" is tested on the trained attention + skip vs pure
attention pair, paired over the same evaluation windows.

Residual-norm growth (one definition: attnlab.diagnose.summary.summarize's `norm_growth_per_layer`, i.e.
attnlab.diagnose.residual.fitted_growth of the block outputs' mean token norm, positions >= 1), per
evaluation window, at init and trained, for pre-LN, post-LN and depth-scaled residual branches. Xiong et al.
2020 ("On layer normalization in the transformer architecture"): in pre-LN the hidden state's norm grows
with depth (growth > 1), post-LN normalises every block's output (growth ~ 1); depth-scaled branches
(1/sqrt(2 n_layers), Noci et al. 2022) add less per block, so the norm grows slower than plain pre-LN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.errors import ConfigError
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
GROWTH_ARCHS = ("full (pre-LN)", "post-LN", "depth-scaled residual")

# Thresholds and margins of the claims, fixed before any run.
COLLAPSED = 0.05  # a last-layer ratio below this is collapsed (rank one up to 5%)
KEPT = 0.2  # a last-layer ratio above this is not collapsed
DOUBLE_EXP_RATE = 1.5  # fitted rate k of -log r per layer above which the decay is doubly exponential
SKIP_GAIN = 0.1  # trained: skip raises the last-layer ratio by more than this over no skip (0..~1 scale)
CAUSAL_GAP_DECADES = 3.0  # causal ratio at least 10^3 times the bidirectional one, after GAP_LAYER layers
# Where causal and bidirectional are compared: early enough that the causal ratio (about halved per layer)
# is still far above float64 rounding at any preset's depth, late enough for several layers of mixing.
GAP_LAYER = 8
POST_LN_MARGINS = (0.95, 1.05)  # "growth ~ 1": post-LN's fitted growth per block within these


@dataclass(frozen=True)
class Config:
    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    # Also measured with bidirectional (span "full") attention, at initialisation only: a bidirectional
    # model cannot be trained on next-token prediction (it would see the answer).
    bidirectional: tuple[str, ...] = ABLATIONS
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
    val_windows: int = 32  # consecutive validation windows of the trained models' validation loss
    log_every: int = 5  # training steps between loss-curve points
    floor: float = 1e-12  # ratios below this are rounding noise (float64) and left out of the fits
    max_chars: int | None = None


PRESETS: dict[str, Config] = {
    "smoke": Config(architectures=ABLATIONS + ("post-LN", "depth-scaled residual"), seeds=(0,), depth=4,
                    train_depth=2, train_steps=3, d_model=32, n_heads=2, context=32, batch_size=4, windows=2,
                    val_windows=4, log_every=1, max_chars=200_000),
    "quick": Config(seeds=(0, 1), depth=24, train_depth=8, train_steps=150),
    # full is sized for ~40 min on a 2-core CPU: three seeds, depth 48 at init, 12 trained layers.
    "full": Config(seeds=(0, 1, 2), depth=48, train_depth=12, train_steps=250),
}

SUMMARY = ("Dong et al. 2021's rank-collapse ablations on attnlab's GPT: the uniformity ratio "
           "||X - 1 mean(X)^T|| / ||X|| layer by layer for pure attention, + MLP, + skip and the full block, "
           "causal and bidirectional at initialisation and causal after short training (with each model's "
           "training and validation loss), the doubly exponential fit for pure attention, the effect of "
           "LayerNorm placement, orthogonal init, depth scaling and anti-collapse losses, and the residual "
           "norm's growth per block under pre-LN, post-LN and depth-scaled residuals (Xiong et al. 2020).")


def validate(config: Config) -> None:
    check_fields(config, choices=("architectures", ARCHITECTURES), depth=lambda d: d >= 2,
                 train_depth=lambda d: d >= 1, train_steps=lambda s: s >= 1,
                 windows=lambda w: w >= 1 + (len(config.seeds) == 1), val_windows=lambda w: w >= 1,
                 log_every=lambda n: n >= 1)
    unknown = [a for a in config.bidirectional if a not in ARCHITECTURES]
    if unknown:
        raise ConfigError(f"rankcollapse: unknown bidirectional {unknown}; choose from "
                          f"{', '.join(ARCHITECTURES)} (or () for none)")


def _gpt(config: Config, arch: str, depth: int, seed: int, span: str = "causal") -> Any:
    from attnlab.models.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=256, n_layers=depth, d_model=config.d_model, n_heads=config.n_heads,
                         context=config.context, seed=seed, span=span, **ARCHITECTURES[arch]))


@torch.no_grad()
def probe_stack(model: torch.nn.Module, windows: list[torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
    """Per window: the uniformity ratio (centre = column mean, as Dong et al.'s code) of the embeddings and
    every block's output, and the residual norm of every block's output with its growth per block, as
    `attnlab.diagnose.summary.summarize` defines them for the report (`resid_norm`: mean token norm over
    positions >= 1; `norm_growth_per_layer`: `attnlab.diagnose.residual.fitted_growth` of those norms).

    Returns {"ratio": mean over windows per layer, "ratio_windows", "norms_windows", "growth_windows"}.
    """
    from attnlab.diagnose.summary import summarize
    from attnlab.diagnose.uniformity import uniformity_ratio
    from attnlab.experiments.probes import wrap

    model = model.to(dtype).eval()
    lm = wrap(model, "rankcollapse")
    ratios, norms, growth = [], [], []
    for ids in windows:
        _, hidden = lm.forward_embeds(lm.embed(ids), output_hidden=True)  # embeddings, then each block's out
        ratios.append([uniformity_ratio(h[0].double(), "mean") for h in hidden])
        summary = summarize({f"blocks.{l}.hook_resid_post": h for l, h in enumerate(hidden[1:])})
        norms.append(summary["resid_norm"])
        growth.append(summary["norm_growth_per_layer"])
    return {"ratio": [sum(col) / len(ratios) for col in zip(*ratios)], "ratio_windows": ratios,
            "norms_windows": norms, "growth_windows": growth}


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


def _at_init(config: Config, arch: str, seed: int, span: str = "causal") -> dict[str, Any]:
    from attnlab.experiments.probes import probe_windows

    _, val = shakespeare_split(max_chars=config.max_chars)
    windows = probe_windows(val, config.context, config.windows)
    out = probe_stack(_gpt(config, arch, config.depth, seed, span), windows, torch.float64)
    return {**out, "fit": doubly_exponential_fit(out["ratio"], config.floor)}


def _trained(config: Config, arch: str, seed: int, progress: bool) -> dict[str, Any]:
    from attnlab.data import LMBatches, eval_batches
    from attnlab.experiments.common import eval_lm
    from attnlab.experiments.probes import probe_windows

    train, val = shakespeare_split(max_chars=config.max_chars)
    model = _gpt(config, arch, config.train_depth, seed)
    batches = LMBatches(train, config.context, config.batch_size, seed=seed)
    log = train_loop(model, batches.batch, lm_loss, steps=config.train_steps, lr=config.lr,
                     warmup=min(50, config.train_steps // 5 + 1), log_every=config.log_every,
                     desc=f"{arch} seed {seed}", progress=progress)
    # Plain next-token cross-entropy (no auxiliary terms), every validation token predicted once.
    val_loss = eval_lm(model, eval_batches(val, config.context, 16,
                                           max_batches=-(-config.val_windows // 16)))
    windows = probe_windows(val, config.context, config.windows)
    final_loss = log["curve"][-1][1] if log["curve"] else None
    probe = probe_stack(model, windows, torch.float32)
    return {**probe, "curve": log["curve"], "final_train_loss": final_loss, "val_loss": val_loss,
            "diverged_at": log["diverged_at"], "train_seconds": log["seconds"]}


def unigram_entropy(tokens: torch.Tensor) -> float:
    """H = -sum_b p_b ln p_b (nats/byte) of the byte frequencies: the loss of the best context-free model."""
    counts = torch.bincount(tokens.flatten().long(), minlength=256).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    from attnlab.experiments.common import progress_bar

    out_dir, parts = start(config, out_dir, validate)
    init: Runs = {a: [] for a in config.architectures}
    bidir: Runs = {a: [] for a in config.bidirectional}
    trained: Runs = {a: [] for a in config.architectures}
    bar = progress_bar(len(config.seeds) * (len(init) + len(bidir)), "rankcollapse at init", progress)
    for seed in config.seeds:
        for arch in config.architectures:
            init[arch].append(parts.get(f"init-seed{seed}-{arch}",
                                        lambda a=arch, s=seed: _at_init(config, a, s)))
            bar.update(1)
        for arch in config.bidirectional:
            bidir[arch].append(parts.get(f"init-bidirectional-seed{seed}-{arch}",
                                         lambda a=arch, s=seed: _at_init(config, a, s, "full")))
            bar.update(1)
    bar.close()
    for seed in config.seeds:
        for arch in config.architectures:
            trained[arch].append(parts.get(f"trained-seed{seed}-{arch}",
                                           lambda a=arch, s=seed: _trained(config, a, s, progress)))
    _, val = shakespeare_split(max_chars=config.max_chars)
    results = {"init": _aggregate(init), "init_bidirectional": _aggregate(bidir),
               "trained": _aggregate(trained),
               "fits": {a: [r["fit"] for r in rs] for a, rs in init.items()},
               "fits_bidirectional": {a: [r["fit"] for r in rs] for a, rs in bidir.items()},
               "training": {a: [{"seed": s, **{k: r[k] for k in ("curve", "final_train_loss", "val_loss",
                                                                  "diverged_at", "train_seconds")}}
                                for s, r in zip(config.seeds, rs)] for a, rs in trained.items()},
               "reference_losses": {"uniform": math.log(256), "unigram_val": unigram_entropy(val)},
               "norm_growth": {stage: {a: [{"seed": s, "norms": r["norms_windows"],
                                            "growth": r["growth_windows"]}
                                           for s, r in zip(config.seeds, rs)] for a, rs in runs.items()}
                               for stage, runs in (("init", init), ("trained", trained))}}
    claims = make_claims(config, init, trained, bidir)
    tables = make_tables(config, results)
    figures = make_figures(config, init, results, out_dir)
    timings = parts.timings()
    return finish("rankcollapse", config, out_dir, results=results, claims=claims, tables=tables,
                  figures=figures, timings=timings, parts=parts, summary=SUMMARY,
                  command=f"attnlab run rankcollapse --out {out_dir}")


Runs = dict[str, list[dict[str, Any]]]


def _aggregate(runs: Runs) -> dict[str, Any]:
    out = {}
    for arch, rs in runs.items():
        n = len(rs[0]["ratio"])
        out[arch] = [seed_stats([r["ratio"][i] for r in rs]) for i in range(n)]
    return out


def _layers(rs: list[dict[str, Any]], layers: list[int] | None = None) -> list[dict[str, list[float]]]:
    """Per seed: column "layer l" -> the ratio of each window at layer l (the items: Shakespeare windows
    spread over the validation text, the same for every architecture)."""
    layers = list(range(len(rs[0]["ratio_windows"][0]))) if layers is None else layers
    return [{f"layer {l}": [w[l] for w in r["ratio_windows"]] for l in layers} for r in rs]


def _last(rs: list[dict[str, Any]]) -> dict[str, Any]:
    last = len(rs[0]["ratio_windows"][0]) - 1
    return evidence("mean", [f"layer {last}"], _layers(rs, [last]), items="windows", block=1)


def _paired(runs: dict[str, list[dict[str, Any]]], op: str, values: Any) -> dict[str, Any]:
    """Evidence for `op` of the columns `runs` (name -> per-seed runs, the same windows in each), each
    window's value `values(run)` -> list over windows."""
    names = list(runs)
    per_seed = [{n: values(runs[n][i]) for n in names} for i in range(len(runs[names[0]]))]
    return evidence(op, names, per_seed, items="windows", block=1)


def _last_ratio(run: dict[str, Any]) -> list[float]:
    return [w[-1] for w in run["ratio_windows"]]


def _growth(run: dict[str, Any]) -> list[float]:
    return list(run["growth_windows"])


def make_claims(config: Config, init: Runs, trained: Runs, bidir: Runs | None = None) -> list[dict[str, Any]]:
    bidir = bidir or {}
    claims = []
    src = "Dong et al. 2021"
    if "pure attention" in init:
        claims.append(claim(
            f"pure attention collapses to rank one with depth (causal, init, {config.depth} layers)", src,
            "residual -> 0 (rank one)", f"ratio after {config.depth} layers, pure attention, causal, init",
            _last(init["pure attention"]), threshold=COLLAPSED, direction="below"))
        rs = init["pure attention"]
        rates = evidence("double_exp_rate", [f"layer {l}" for l in range(len(rs[0]["ratio"]))], _layers(rs),
                         items="windows", block=1, floor=config.floor)
        claims.append(claim(
            "... doubly exponentially: -log r grows geometrically per layer (causal)", src,
            "bound: rate up to 3 per layer (exponent 3^L)", "fitted rate k of -log r per layer, causal",
            rates, threshold=DOUBLE_EXP_RATE, direction="above"))
    if "pure attention" in bidir:
        claims.append(claim(
            f"pure attention collapses to rank one with depth (bidirectional, Dong et al.'s setting, init, "
            f"{config.depth} layers)", src, "residual -> 0 (rank one)",
            f"ratio after {config.depth} layers, pure attention, bidirectional, init",
            _last(bidir["pure attention"]), threshold=COLLAPSED, direction="below"))
    if "pure attention" in init and "pure attention" in bidir:
        floor, gap = config.floor, min(config.depth, GAP_LAYER)

        def decades(run: dict[str, Any]) -> list[float]:
            return [math.log10(max(w[gap], floor)) for w in run["ratio_windows"]]

        claims.append(claim(
            "causal attention collapses more slowly than bidirectional: its first token attends only to "
            "itself (prefix averaging halves the residual per layer; uniform bidirectional attention is rank "
            "one at once)", "Dong et al. 2021 (bidirectional); causal: prefix-mean derivation (module docs)",
            "bidirectional: (1/n) 1 1^T X is rank one; causal: prefix means converge to token 0",
            f"log10 ratio after {gap} layers, causal minus bidirectional, pure attention, init "
            f"(ratios below {fmt(floor)} counted as {fmt(floor)})",
            _paired({"causal": init["pure attention"], "bidirectional": bidir["pure attention"]}, "diff",
                    decades), threshold=CAUSAL_GAP_DECADES, direction="above"))
    if "attention + skip" in init:
        claims.append(claim(
            "skip connections prevent the collapse (causal, init)", src, "residual stays away from 0",
            f"ratio after {config.depth} layers, attention + skip, causal", _last(init["attention + skip"]),
            threshold=KEPT, direction="above"))
    if "attention + skip" in bidir:
        claims.append(claim(
            "skip connections prevent the collapse (bidirectional, init)", src, "residual stays away from 0",
            f"ratio after {config.depth} layers, attention + skip, bidirectional",
            _last(bidir["attention + skip"]), threshold=KEPT, direction="above"))
    if "attention + MLP" in init:
        claims.append(claim(
            "MLPs without skips do not prevent it (causal, init)", src,
            "MLPs slow the collapse, do not stop it",
            f"ratio after {config.depth} layers, attention + MLP", _last(init["attention + MLP"]),
            threshold=COLLAPSED, direction="below"))
    if "pure attention" in trained:
        claims.append(claim(
            f"trained pure attention collapses too ({config.train_depth} layers)", src,
            "pure-attention paths collapse in trained models", "ratio, last layer, pure attention, trained",
            _last(trained["pure attention"]), threshold=COLLAPSED, direction="below"))
    if "pure attention" in trained and "attention + skip" in trained:
        claims.append(claim(
            "skip connections prevent the collapse in trained models (attention + skip vs pure attention, "
            "the same windows)", src, "skip connections keep the residual away from 0",
            f"ratio after {config.train_depth} layers, attention + skip minus pure attention, trained",
            _paired({a: trained[a] for a in ("attention + skip", "pure attention")}, "diff", _last_ratio),
            threshold=SKIP_GAIN, direction="above"))
    if "full (pre-LN)" in trained:
        claims.append(claim(
            "a trained full transformer does not collapse", src, "residual stays away from 0",
            "ratio, last layer, full block, trained", _last(trained["full (pre-LN)"]), threshold=KEPT,
            direction="above"))
    claims += _growth_claims(config, init, trained)
    return claims


def _growth_claims(config: Config, init: Runs, trained: Runs) -> list[dict[str, Any]]:
    xiong = "Xiong et al. 2020"
    claims = []
    for stage, runs, depth in (("init", init, config.depth), ("trained", trained, config.train_depth)):
        where = f"{stage}, {depth} layers"
        if "full (pre-LN)" in runs:
            claims.append(claim(
                f"pre-LN: the residual norm grows with depth ({where})", xiong,
                "pre-LN hidden-state norm grows with depth", f"norm growth per block, pre-LN, {stage}",
                _paired({"full (pre-LN)": runs["full (pre-LN)"]}, "mean", _growth), threshold=1.0,
                direction="above"))
        if "post-LN" in runs:
            claims.append(claim(
                f"post-LN: every block's output is normalised, no growth ({where})", xiong,
                "post-LN hidden-state norm is the same at every layer",
                f"norm growth per block, post-LN, {stage}",
                _paired({"post-LN": runs["post-LN"]}, "mean", _growth), threshold=POST_LN_MARGINS,
                direction="within"))
        if "full (pre-LN)" in runs and "depth-scaled residual" in runs:
            claims.append(claim(
                f"depth-scaled residual branches grow slower than plain pre-LN ({where})",
                f"{xiong}; Noci et al. 2022 (branches times 1/sqrt(2 n_layers))",
                "smaller branches add less norm per block",
                f"norm growth per block, pre-LN minus depth-scaled, {stage}",
                _paired({a: runs[a] for a in ("full (pre-LN)", "depth-scaled residual")}, "diff", _growth),
                threshold=0.0, direction="above"))
    return claims


def _stat(values: list[float | None]) -> str:
    return fmt_stat(seed_stats([v for v in values if v is not None]))


def make_tables(config: Config, results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arch in config.architectures:
        init = results["init"][arch]
        fits = [f for f in results["fits"][arch] if f.get("rate") is not None]
        rate = seed_stats([f["rate"] for f in fits]) if fits else None
        r2d = seed_stats([f["r2_double"] for f in fits]) if fits else None
        r2s = seed_stats([f["r2_single"] for f in fits]) if fits else None
        single = seed_stats([math.exp(f["single_slope"]) for f in fits]) if fits else None
        mid = init[min(len(init) - 1, 4)]
        rows.append([arch, fmt_stat(mid), fmt_stat(init[-1]), fmt_stat(results["trained"][arch][-1]),
                     fmt_stat(rate) if rate else "–", fmt_stat(r2d) if r2d else "–",
                     fmt_stat(single) if single else "–", fmt_stat(r2s) if r2s else "–"])
    note = (f"d={config.d_model}, {config.n_heads} heads, {config.context} Shakespeare bytes per window, "
            f"{config.windows} windows; init in float64; trained {config.train_steps} steps; seeds "
            f"{list(config.seeds)}. Fits use layers with {fmt(config.floor)} < r < 1; single exp. factor = "
            f"r_(l+1) / r_l of the single-exponential fit.")
    tables = [{"title": "Uniformity ratio (0 = rank one), causal attention",
               "columns": ["architecture", "init, layer 4", f"init, layer {config.depth}",
                           f"trained, layer {config.train_depth}", "rate k", "R² doubly exp.",
                           "single exp. factor / layer", "R² single exp."],
               "rows": rows, "note": note}]
    if config.bidirectional:
        brows = []
        for arch in config.bidirectional:
            curve, fits = results["init_bidirectional"][arch], results["fits_bidirectional"][arch]
            rated = [f["rate"] for f in fits if f.get("rate") is not None]
            brows.append([arch, fmt_stat(curve[1]), fmt_stat(curve[min(len(curve) - 1, 4)]),
                          fmt_stat(curve[-1]), _stat([f["layers_used"] for f in fits]),
                          _stat(rated) if rated else "–"])
        tables.append({"title": "Uniformity ratio, bidirectional (non-causal) attention at init",
                       "columns": ["architecture", "layer 1", "layer 4", f"layer {config.depth}",
                                   "layers fitted", "rate k"],
                       "rows": brows,
                       "note": "The same measure and fit as the causal table (span 'full' in GPTConfig). "
                               f"Layers with a ratio at or below {fmt(config.floor)} (float64 rounding) are "
                               "left out of the fit; with fewer than 3 left there is no rate: the collapse "
                               "is then faster than the fit can follow."})
    ref = results["reference_losses"]
    trows = []
    for arch in config.architectures:
        runs = results["training"][arch]
        diverged = [r["diverged_at"] for r in runs if r["diverged_at"] is not None]
        trows.append([arch, _stat([r["final_train_loss"] for r in runs]),
                      _stat([r["val_loss"] for r in runs]),
                      ", ".join(str(d) for d in diverged) if diverged else "no",
                      _stat([r["train_seconds"] for r in runs])])
    tables.append({"title": "Training (did each model learn?)",
                   "columns": ["architecture", "final train loss", "validation loss", "diverged at step",
                               "train seconds"],
                   "rows": trows,
                   "note": f"nats/byte. Final train loss: the last logged batch loss (with auxiliary terms "
                           f"where the architecture has them); validation loss: plain next-token "
                           f"cross-entropy over {config.val_windows} consecutive validation windows. "
                           f"References: uniform over 256 bytes {fmt(ref['uniform'])}, unigram entropy of "
                           f"the validation bytes {fmt(ref['unigram_val'])} (below it, a model uses "
                           f"context)."})
    grows = []
    for arch in config.architectures:
        cells = [arch]
        for stage in ("init", "trained"):
            per_seed = results["norm_growth"][stage][arch]
            growth = [sum(s["growth"]) / len(s["growth"]) for s in per_seed]
            first = [sum(w[0] for w in s["norms"]) / len(s["norms"]) for s in per_seed]
            last = [sum(w[-1] for w in s["norms"]) / len(s["norms"]) for s in per_seed]
            cells += [_stat(growth), _stat(first), _stat(last)]
        grows.append(cells)
    tables.append({"title": "Residual-norm growth per block",
                   "columns": ["architecture", "init growth", "init norm, block 1",
                               f"init norm, block {config.depth}", "trained growth", "trained norm, block 1",
                               f"trained norm, block {config.train_depth}"],
                   "rows": grows,
                   "note": "Growth: attnlab.diagnose.residual.fitted_growth of the block outputs' mean token "
                           "norm (positions >= 1), the report's norm_growth_per_layer, per window, then the "
                           "mean over windows; norms: mean token norm of that block's output."})
    return tables


def _mean_curve(runs: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float] | None]:
    """The loss at the steps every seed logged: mean over seeds and (with >= 2 seeds) the std."""
    by_step = [dict((int(s), v) for s, v in r["curve"]) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in by_step))) if by_step else []
    stats = [seed_stats([c[s] for c in by_step]) for s in steps]
    spread = [st["std"] for st in stats] if len(runs) > 1 else None
    return steps, [st["mean"] for st in stats], spread


def make_figures(config: Config, init: dict[str, list[dict[str, Any]]], results: dict[str, Any], out_dir: Path
                 ) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot, new_figure, save_figure

    def series(block: dict[str, Any], archs: tuple[str, ...], suffix: str = "") -> dict[str, Any]:
        return {a + suffix: (list(range(len(block[a]))), [max(s["mean"], 1e-16) for s in block[a]], None)
                for a in archs if a in block}

    figs = []
    abl = tuple(a for a in ABLATIONS if a in results["init"])
    line_plot(out_dir / "ratio_init.png", series(results["init"], abl), xlabel="layer",
              ylabel="uniformity", title="At initialisation, causal (float64)", logy=True)
    figs.append(("ratio_init.png", "Uniformity ratio by layer at init, causal attention: pure attention "
                                   "falls towards rounding noise; skip connections hold it up."))
    if config.bidirectional:
        pair = tuple(a for a in ("pure attention", "full (pre-LN)") if a in results["init"])
        line_plot(out_dir / "ratio_bidirectional.png",
                  {**series(results["init"], pair, " (causal)"),
                   **series(results["init_bidirectional"], tuple(config.bidirectional), " (bidirectional)")},
                  xlabel="layer", ylabel="uniformity", logy=True,
                  title="Bidirectional vs causal at init (float64)")
        figs.append(("ratio_bidirectional.png",
                     "Bidirectional attention (Dong et al.'s setting): uniform attention is rank one at "
                     "once, so pure attention reaches float64 rounding within a layer or two; under the "
                     "causal mask the first token sees only itself and the ratio shrinks about twofold per "
                     "layer."))
    effects = tuple(a for a in config.architectures if a not in ABLATIONS or a == "full (pre-LN)")
    if len(effects) > 1:
        line_plot(out_dir / "ratio_effects.png", series(results["init"], effects), xlabel="layer",
                  ylabel="uniformity", title="Full block variants at init")
        figs.append(("ratio_effects.png", "LayerNorm placement, orthogonal init and depth scaling on "
                                          "the full block at init."))
    line_plot(out_dir / "ratio_trained.png", series(results["trained"], tuple(config.architectures)),
              xlabel="layer", ylabel="uniformity", title=f"After {config.train_steps} training steps",
              logy=True)
    figs.append(("ratio_trained.png", "Uniformity ratio by layer after short training on Shakespeare."))
    ref = results["reference_losses"]
    if line_plot(out_dir / "train_loss.png", {a: _mean_curve(rs) for a, rs in results["training"].items()},
                 xlabel="step", ylabel="training loss (nats/byte)",
                 title="Training loss (batch loss, mean over seeds)"):
        figs.append(("train_loss.png", f"Training loss of every architecture (uniform over bytes: "
                                       f"{fmt(ref['uniform'])}; unigram entropy: {fmt(ref['unigram_val'])}). "
                                       f"A curve below the unigram entropy means the model learned from "
                                       f"context."))
    growth_archs = tuple(a for a in GROWTH_ARCHS if a in config.architectures)
    if growth_archs:
        def norms(stage: str) -> dict[str, Any]:
            out = {}
            for a in growth_archs:
                per_seed = [[sum(col) / len(col) for col in zip(*s["norms"])]
                            for s in results["norm_growth"][stage][a]]
                stats = [seed_stats(list(col)) for col in zip(*per_seed)]
                out[f"{a} ({stage})"] = (list(range(1, len(stats) + 1)), [st["mean"] for st in stats],
                                         [st["std"] for st in stats] if len(per_seed) > 1 else None)
            return out

        if line_plot(out_dir / "norm_growth.png", {**norms("init"), **norms("trained")}, xlabel="layer",
                     ylabel="resid_norm", title="Residual norm by block", logy=True):
            figs.append(("norm_growth.png", "Mean token norm of each block's output (positions >= 1): "
                                            "pre-LN grows with depth, post-LN is normalised at every block, "
                                            "depth-scaled branches add less per block."))
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
            ax.set_title("Doubly exponential fit (causal, seed 0)", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            save_figure(fig, out_dir / "double_exp_fit.png")
            figs.append(("double_exp_fit.png", "log(-log r) against layer: a straight line means doubly "
                                               "exponential collapse; its slope is log k (bound: log 3)."))
    return figs
