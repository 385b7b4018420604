"""Part 2 (the retrofit): per-window measurements to metrics with intervals, the step-0 rows, each arm's
effects, and the claims, judged by the one verdict engine (`attnlab.experiments.verdicts`).

Three effects per variant arm and metric, each a paired difference (a perplexity *ratio* for ppl):

- **total** = trained arm - trained control, paired per seed (same data order) and window;
- **learned** = trained arm - the arm at step 0 (swapped, not trained): what training did;
- **swap** = the arm at step 0 - the pretrained model: what the swap alone did (no seed involved).

Intervals: with >= 2 seeds a t interval over the seeds' values (each from that seed's window means: windows
nest inside seeds); with one seed a paired moving-block bootstrap over the windows, which leaves training
variance out, so every claim about a trained arm then gets "no verdict" (training variance unmeasured). The
primary endpoints (PRIMARY) are named here before any run and judged as one Holm family; every other claim
is exploratory. Thresholds, margins and premises are fixed here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attnlab.experiments.compare.config import CONTROL, STEP0
from attnlab.experiments.compare.measure import QUANT_KEYS, WINDOW_KEYS
from attnlab.experiments.stats import interval_of
from attnlab.experiments.verdicts import apply_holm, claim, evidence, withhold
from attnlab.present.catalogue import label, short_label

Items = Mapping[str, Any]  # one arm's per-window measurements (compare.measure)
PerSeed = Mapping[int, Items]

# metric -> (per-window column, statistic of one arm's mean, statistic of a paired comparison); every key is
# the catalogue's (`attnlab.present.catalogue`), which also names it on the page
METRICS: dict[str, tuple[str, str, str]] = {
    "ppl": ("nll", "exp_mean", "exp_ratio"),
    **{k: (k, "mean", "diff") for k in (*WINDOW_KEYS, *QUANT_KEYS)},
}
TABLE_METRICS = ("ppl", "first_token_attn", "first_query_weight", "sink_rate", "null_sink_mass",
                 "clipped_mass", "kurtosis_token", "kurtosis_tok0", "kurtosis_pooled_ex0", "massive_tok0",
                 "massive_rest", "max_abs", "int8_w8a8", "int8_w8a8_token", "int8_static")
EFFECT_METRICS = ("ppl", "first_token_attn", "null_sink_mass", "kurtosis_token", "massive_tok0", "int8_w8a8",
                  "int8_static")

SINK_PREMISE = 0.05  # pretrained sink rate above which there is a sink to remove
QUANT_PREMISE = 0.01  # nats: pretrained W8A8 damage above which there is a gap to close
OUTLIER_PREMISE = 10.0  # pretrained massive ratio (token 0) above which there are outliers to shrink
QUALITY_MARGIN = 0.02  # "costs no quality": ppl(arm) / ppl(control) within 1 +- 2%
KURTOSIS_KEPT = (0.5, 2.0)  # Kaul et al.: softmax1 alone leaves per-token kurtosis within a factor 2
MASSIVE = "the pretrained model has massive activations"
PREMISES = {"first_token_attn": ("sink_rate", SINK_PREMISE, "the pretrained model has attention sinks"),
            "int8_w8a8": ("int8_w8a8", QUANT_PREMISE, "the pretrained model loses NLL under W8A8"),
            "int8_static": ("int8_static", QUANT_PREMISE, "the pretrained model loses NLL under static W8A8"),
            "kurtosis_token": ("massive_tok0", OUTLIER_PREMISE, MASSIVE),
            "massive_tok0": ("massive_tok0", OUTLIER_PREMISE, MASSIVE)}
# (arm, metric, effect kind, direction, threshold): the primary endpoints, fixed before the run
PRIMARY: tuple[tuple[str, str, str, str, Any], ...] = (
    ("softmax1", "first_token_attn", "total", "below", 0.0),
    ("softmax1", "first_token_attn", "learned", "below", 0.0),
    ("softmax1", "int8_w8a8", "total", "below", 0.0),
    ("softmax1", "ppl", "total", "within", (1 - QUALITY_MARGIN, 1 + QUALITY_MARGIN)),
)
# (arm, metric, kind, direction, threshold, claim, source, the paper's figure): exploratory
EXPLORATORY: tuple[tuple[str, str, str, str, Any, str, str, str], ...] = (
    ("softmax1", "massive_tok0", "total", "below", 0.0, "softmax1 shrinks massive activations",
     "Miller 2023 (proposal)", "predicted, not measured"),
    ("softmax1", "int8_static", "total", "below", 0.0, "softmax1 shrinks the static W8A8 damage",
     "Miller 2023 (proposal)", "predicted, not measured"),
    ("softmax1", "kurtosis_token", "total_ratio", "within", KURTOSIS_KEPT,
     "... but softmax1 alone leaves the per-token kurtosis where it was", "Kaul et al. 2025",
     "kurtosis stays high without OrthoAdam"),
    ("sinks", "first_token_attn", "total", "below", 0.0, "learned sinks take attention off token 0",
     "gpt-oss (OpenAI 2025)", "per-head learned sink logits"),
    ("sinks", "first_token_attn", "learned", "below", 0.0, "... and training moves it further than the swap",
     "gpt-oss (OpenAI 2025)", "-"),
    ("clipped", "kurtosis_token", "total", "below", 0.0, "clipped softmax shrinks activation outliers",
     "Bondarenko et al. 2023", "large kurtosis reductions (BERT, OPT, ViT)"),
    ("clipped", "int8_static", "total", "below", 0.0, "clipped softmax shrinks the static W8A8 damage",
     "Bondarenko et al. 2023", "W8A8 close to floating point"),
    ("gated", "int8_static", "total", "below", 0.0, "gated attention shrinks the static W8A8 damage",
     "Bondarenko et al. 2023, OPT-125m", "W8A8 perplexity gap 5.3 -> 0.5"),
    ("gated", "first_token_attn", "total", "below", 0.0, "gated attention removes the token-0 sink",
     "Qiu et al. 2025, 1.7B dense", "first-token attention 0.467 -> 0.048"),
    ("gated", "massive_tok0", "total", "below", 0.0, "gated attention shrinks massive activations",
     "Qiu et al. 2025, 1.7B dense", "max activation 1053 -> 94"),
    ("softmax1+gated", "int8_w8a8", "total", "below", 0.0, "softmax1 + gating shrinks the W8A8 damage",
     "the 'with what?' arm", "-"),
)


# --------------------------------------------------------------------------------------- evidence
def _col(items: Items, metric: str) -> list[float]:
    return [math.nan if v is None else float(v) for v in items.get(METRICS[metric][0]) or []]


def arm_evidence(runs: PerSeed, metric: str) -> dict[str, Any]:
    """One arm's metric: per seed its per-window column."""
    col = METRICS[metric][0]
    return evidence(METRICS[metric][1], [col], [{col: _col(runs[s], metric)} for s in sorted(runs)],
                    items="windows")


def effect_evidence(kind: str, metric: str, arm: str, trained: Mapping[str, PerSeed],
                    step0: Mapping[str, Items]) -> dict[str, Any] | None:
    """The per-seed paired columns of one effect (module docstring); None when its arms are missing."""
    col = METRICS[metric][0]
    op = METRICS[metric][2]
    if kind == "total_ratio":
        kind, op = "total", "ratio"
    if kind == "swap":
        a, b = step0.get(STEP0.get(arm, "")), step0.get("pretrained")
        if a is None or b is None:
            return None
        per = [{f"step0:{col}": _col(a, metric), f"pretrained:{col}": _col(b, metric)}]
        return evidence(op, [f"step0:{col}", f"pretrained:{col}"], per, items="windows")
    runs = trained.get(arm)
    if not runs:
        return None
    if kind == "total":
        ctrl = trained.get(CONTROL)
        if not ctrl:
            return None
        seeds = sorted(set(runs) & set(ctrl))
        per = [{f"{arm}:{col}": _col(runs[s], metric), f"{CONTROL}:{col}": _col(ctrl[s], metric)}
               for s in seeds]
        return evidence(op, [f"{arm}:{col}", f"{CONTROL}:{col}"], per, items="windows")
    if kind == "learned":
        base = step0.get(STEP0.get(arm, ""))
        if base is None:
            return None
        per = [{f"{arm}:{col}": _col(runs[s], metric), f"step0:{col}": _col(base, metric)}
               for s in sorted(runs)]
        return evidence(op, [f"{arm}:{col}", f"step0:{col}"], per, items="windows")
    raise ValueError(f"unknown effect kind {kind!r}; use total, learned or swap")


def arm_metrics(runs: PerSeed) -> dict[str, dict[str, Any]]:
    return {m: iv for m in TABLE_METRICS if (iv := interval_of(arm_evidence(runs, m))) is not None}


def effects(trained: Mapping[str, PerSeed], step0: Mapping[str, Items]) -> dict[str, dict[str, Any]]:
    """{arm: {kind: {metric: interval}}} for every variant arm (kinds total, learned, swap)."""
    out: dict[str, dict[str, Any]] = {}
    for arm in trained:
        if arm in ("pretrained", CONTROL):
            continue
        out[arm] = {kind: {m: iv for m in EFFECT_METRICS
                           if (iv := interval_of(effect_evidence(kind, m, arm, trained, step0))) is not None}
                    for kind in ("total", "learned", "swap")}
    return out


# ------------------------------------------------------------------------------------------ claims
def _premise(step0: Mapping[str, Items], metric: str) -> tuple[str, dict[str, Any], float, str] | None:
    spec = PREMISES.get(metric)
    pre = step0.get("pretrained")
    if spec is None or pre is None:
        return None
    key, thr, what = spec
    return (what, arm_evidence({0: pre}, key), thr, "above")


def _claim(arm: str, metric: str, kind: str, direction: str, thr: Any, text: str, source: str, paper: str,
           trained: Mapping[str, PerSeed], step0: Mapping[str, Items], primary: bool
           ) -> dict[str, Any] | None:
    ev = effect_evidence(kind, metric, arm, trained, step0)
    if ev is None or not ev["per_seed"]:
        return None
    op = ev["stat"]["op"]
    a, b = ev["stat"]["args"]
    effect = f"{a} / {b}" if op in ("ratio", "exp_ratio") else f"{a} - {b}"
    if metric == "ppl":
        effect = f"ppl({a.split(':')[0]}) / ppl({b.split(':')[0]})"
    return claim(text, source, paper, effect, ev, thr, direction, premise=_premise(step0, metric),
                 primary=primary, arm=arm, metric=metric, kind=kind.replace("_ratio", ""), part="retrofit",
                 label=label(metric))


def _primary_text(arm: str, metric: str, kind: str) -> tuple[str, str, str]:
    if metric == "ppl":
        return (f"{arm} costs no language-modelling quality (within ±{QUALITY_MARGIN:.0%})",
                "the variants' papers", "no perplexity loss")
    what = {"first_token_attn": "lowers attention on token 0", "int8_w8a8": "shrinks the int8 W8A8 damage"}
    sources = {"first_token_attn": ("Kaul et al. 2025; Miller 2023", "first-token attention largely removed"),
               "int8_w8a8": ("Miller 2023 (proposal)", "predicted, not measured")}
    lead = what[metric] + (" beyond what the swap did (learned effect)" if kind == "learned"
                           else " against the control trained alike (total effect)")
    return (f"{arm} {lead}", *sources[metric])


def make_claims(trained: Mapping[str, PerSeed], step0: Mapping[str, Items], n_seeds: int,
                smoke: bool) -> list[dict[str, Any]]:
    """The primary family (Holm) and the exploratory claims, for the arms present."""
    claims = []
    for arm, metric, kind, direction, thr in PRIMARY:
        c = _claim(arm, metric, kind, direction, thr, *_primary_text(arm, metric, kind), trained, step0, True)
        if c is not None:
            claims.append(c)
    for arm, metric, kind, direction, thr, text, source, paper in EXPLORATORY:
        c = _claim(arm, metric, kind, direction, thr, text, source, paper, trained, step0, False)
        if c is not None:
            claims.append(c)
    for arm in trained:
        if arm in ("pretrained", CONTROL) or arm == "softmax1":
            continue
        c = _claim(arm, "ppl", "total", "within", (1 - QUALITY_MARGIN, 1 + QUALITY_MARGIN),
                   *_primary_text(arm, "ppl", "total"), trained, step0, False)
        if c is not None:
            claims.append(c)
    apply_holm(claims)
    if smoke:
        withhold(claims, "smoke run: plumbing only, no verdicts")
    elif n_seeds < 2:
        withhold(claims, "training variance unmeasured (1 seed): an effect, not a verdict; run --preset "
                         "standard (3 seeds) for verdicts")
    return claims


# ------------------------------------------------------------------------------------------ answer
def answer_lines(eff: Mapping[str, Mapping[str, Any]], fmt: Any) -> list[str]:
    """One computed sentence per variant arm: its total effects whose interval excludes zero (ratio: one),
    each with what the swap alone did and what training did."""
    lines = []
    for arm, kinds in eff.items():
        said = []
        for m, iv in kinds.get("total", {}).items():
            null = 1.0 if m == "ppl" else 0.0
            if not (iv["lo"] > null or iv["hi"] < null):
                continue
            word = "raised" if iv["value"] > null else "lowered"
            swap, learned = kinds.get("swap", {}).get(m), kinds.get("learned", {}).get(m)
            parts = [f"{word} {short_label(m)} ({'x' if m == 'ppl' else ''}{fmt(iv['value'])} "
                     f"[{fmt(iv['lo'])}, {fmt(iv['hi'])}] against the control"]
            if swap:
                parts.append(f"the swap alone: {fmt(swap['value'])}")
            if learned:
                parts.append(f"training: {fmt(learned['value'])} "
                             f"[{fmt(learned['lo'])}, {fmt(learned['hi'])}]")
            said.append("; ".join(parts) + ")")
        lines.append(f"{arm} " + "; ".join(said) + "." if said
                     else f"{arm}: no total effect whose interval excludes {'zero'}.")
    return lines


__all__ = ["EFFECT_METRICS", "METRICS", "PRIMARY", "TABLE_METRICS", "answer_lines",
           "arm_evidence", "arm_metrics", "effect_evidence", "effects", "make_claims"]
