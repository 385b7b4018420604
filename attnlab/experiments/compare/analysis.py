"""From per-window measurements to metrics with 95% intervals, arm-vs-control differences, claims with
computed verdicts, and the answer paragraph.

Intervals (attnlab.experiments.stats): with one seed, a paired moving-block bootstrap over the held-out
windows (every arm was measured on the same windows, so differences are paired window by window); with
two or more seeds, a t interval over the seeds' values (each seed's value being its point estimate over
the windows). The pretrained arm does not depend on the seed and keeps its bootstrap interval.

Verdict rule (applied to every claim, thresholds and margins fixed here before any run): a directional
claim "E < T" (or > T) "held" when the whole interval lies on the claimed side, "did not hold" when it lies
wholly on the other side, else "inconclusive". A "costs nothing" claim is a two-sided equivalence test
(`stats.equivalence`): held when the interval lies inside the margins, did not hold when wholly outside. A
claim whose premise (e.g. "the model has outliers at all", same rule) does not hold is inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attnlab.experiments.compare.config import CONTROL
from attnlab.experiments.stats import bootstrap, equivalence, excludes, t_interval

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
LABELS = {
    "ppl": "perplexity", "token0_attention": "attention on token 0", "sink_rate": "sink rate (heads > 0.3)",
    "null_sink_mass": "weight on no key (null sink)", "kurtosis_max": "max kurtosis",
    "max_abs_activation": "max |activation|", "w8a8_delta_ppl": "Δppl W8A8", "a8_delta_ppl": "Δppl A8",
    "w8a8_token_delta_ppl": "Δppl W8A8 per-token", "a8_token_delta_ppl": "Δppl A8 per-token",
    "token0_layer": "attention on token 0", "null_sink_mass_layer": "weight on no key (null sink)",
    "kurtosis_layer": "activation kurtosis", "max_abs_layer": "max |activation|",
}

Stat = Callable[[Mapping[str, float]], float]


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


# metric -> (per-window columns it needs, statistic of their means, what it is)
METRICS: dict[str, tuple[tuple[str, ...], Stat, str]] = {
    "ppl": (("nll",), lambda m: _exp(m["nll"]), "perplexity on the held-out windows"),
    "token0_attention": (("first_token_attn",), lambda m: m["first_token_attn"],
                         "attention on token 0 (mean over layers, heads, queries after 0)"),
    "sink_rate": (("sink_rate",), lambda m: m["sink_rate"], "share of heads with token-0 attention > 0.3"),
    "null_sink_mass": (("null_sink_mass",), lambda m: m["null_sink_mass"],
                       "1 - row sum: what softmax1's zero logit or a learned sink absorbs (for clipped: "
                       "the weight clipped away)"),
    "kurtosis_max": (("kurtosis_max",), lambda m: m["kurtosis_max"],
                     "max over layers of activation kurtosis"),
    "max_abs_activation": (("max_abs",), lambda m: m["max_abs"], "max |activation| in the residual stream"),
    "w8a8_delta_ppl": (("nll", "nll_w8a8"), lambda m: _exp(m["nll_w8a8"]) - _exp(m["nll"]),
                       "perplexity increase under int8 W8A8 (per-tensor)"),
    "a8_delta_ppl": (("nll", "nll_a8"), lambda m: _exp(m["nll_a8"]) - _exp(m["nll"]),
                     "perplexity increase under int8 activations alone (per-tensor)"),
    "w8a8_token_delta_ppl": (("nll", "nll_w8a8_token"), lambda m: _exp(m["nll_w8a8_token"]) - _exp(m["nll"]),
                             "perplexity increase under W8A8 with per-token activation scales"),
    "a8_token_delta_ppl": (("nll", "nll_a8_token"), lambda m: _exp(m["nll_a8_token"]) - _exp(m["nll"]),
                           "perplexity increase under per-token int8 activations alone"),
}


def _columns(items: Mapping[str, Any], cols: Sequence[str],
             prefix: str = "") -> dict[str, list[float]] | None:
    out = {}
    for c in cols:
        values = items.get(c)
        if values is None or any(v is None or not math.isfinite(float(v)) for v in values):
            return None
        out[prefix + c] = [float(v) for v in values]
    return out


def metric_interval(items: Mapping[str, Any], metric: str, seed: int = 0) -> dict[str, Any] | None:
    cols, stat, _ = METRICS[metric]
    data = _columns(items, cols)
    if data is None:
        return None
    return bootstrap(data, stat, seed=seed, what="windows")


def diff_interval(a: Mapping[str, Any], b: Mapping[str, Any], metric: str, kind: str = "diff",
                  seed: int = 0) -> dict[str, Any] | None:
    """metric(a) - metric(b) (kind "diff") or metric(a) / metric(b) ("ratio"), paired over windows."""
    cols, stat, _ = METRICS[metric]
    da, db = _columns(a, cols, "a:"), _columns(b, cols, "b:")
    if da is None or db is None:
        return None

    def f(m: Mapping[str, float]) -> float:
        x = stat({c: m["a:" + c] for c in cols})
        y = stat({c: m["b:" + c] for c in cols})
        if kind == "diff":
            return x - y
        return x / y if y != 0 else math.inf

    return bootstrap({**da, **db}, f, seed=seed, what="windows")


def point(items: Mapping[str, Any], metric: str) -> float | None:
    cols, stat, _ = METRICS[metric]
    data = _columns(items, cols)
    if data is None:
        return None
    return float(stat({c: sum(v) / len(v) for c, v in data.items()}))


def across_seeds(values: Sequence[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 2:
        return None
    return t_interval(vals)


def arm_metrics(per_seed: Mapping[int, Mapping[str, Any]], arm: str) -> dict[str, dict[str, Any]]:
    """{metric: {"value", "lo", "hi", "n", "method"}} for one arm from its per-seed window items."""
    seeds = sorted(per_seed)
    out = {}
    for metric in METRICS:
        if len(seeds) >= 2 and arm != "pretrained":
            iv = across_seeds([point(per_seed[s], metric) for s in seeds])
        else:
            iv = metric_interval(per_seed[seeds[0]], metric)
        if iv is not None:
            out[metric] = compact(iv)
    return out


def arm_diff(per_seed_a: Mapping[int, Mapping[str, Any]], per_seed_b: Mapping[int, Mapping[str, Any]],
             metric: str, kind: str = "diff") -> dict[str, Any] | None:
    seeds = sorted(set(per_seed_a) & set(per_seed_b))
    if not seeds:
        return None
    if len(seeds) >= 2:
        pairs = [(point(per_seed_a[s], metric), point(per_seed_b[s], metric)) for s in seeds]
        vals = [(x - y) if kind == "diff" else (x / y if y else math.inf)
                for x, y in pairs if x is not None and y is not None]
        iv = across_seeds(vals)
    else:
        iv = diff_interval(per_seed_a[seeds[0]], per_seed_b[seeds[0]], metric, kind)
    return compact(iv) if iv is not None else None


def compact(iv: Mapping[str, Any]) -> dict[str, Any]:
    """The interval keys a results file keeps (value, lo, hi, n, method)."""
    return {"value": iv["value"], "lo": iv["lo"], "hi": iv["hi"], "n": iv["n"], "method": iv["method"]}


# ---------------------------------------------------------------------------------------------- claims
OUTLIER_PREMISE = 10.0  # kurtosis_max of the pretrained model above which it "has outliers" (Gaussian: 3)
SINK_PREMISE = 0.05  # pretrained sink rate above which there is a sink to remove
QUANT_PREMISE = 0.5  # pretrained W8A8 perplexity increase above which there is a gap to close
QUALITY_MARGIN = 0.02  # "costs no quality": ppl(arm) / ppl(control) within 1 +- 2%
KURTOSIS_KEPT = (0.5, 2.0)  # Kaul et al.'s "softmax1 alone leaves the kurtosis": ratio within a factor 2


def directional(value: Mapping[str, Any] | None, threshold: float, direction: str) -> str:
    if value is None:
        return INCONCLUSIVE
    lo, hi = value["lo"], value["hi"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    on_side = hi < threshold if direction == "below" else lo > threshold
    other = lo > threshold if direction == "below" else hi < threshold
    return HELD if on_side else NOT_HELD if other else INCONCLUSIVE


def _record(text: str, source: str, paper: str, arm: str, against: str, effect: str, test: str,
            iv: Mapping[str, Any] | None, prem: Mapping[str, Any] | None, verdict: str) -> dict[str, Any]:
    reason = None
    if prem is not None and prem["verdict"] != HELD:
        verdict, reason = INCONCLUSIVE, f"premise not met: {prem['what']}"
    return {"claim": text, "source": source, "paper": paper, "arm": arm, "against": against, "effect": effect,
            "test": test, "interval": iv, "premise": prem, "verdict": verdict, "reason": reason,
            "result": {"verdict": verdict, "se_measured": iv is not None,
                       "method": iv["method"] if iv else None, "n": iv["n"] if iv else 0}}


def _equivalent(iv: Mapping[str, Any] | None, lo: float, hi: float) -> str:
    if iv is None:
        return INCONCLUSIVE
    return {"equivalent": HELD, "different": NOT_HELD}.get(equivalence(iv, lo, hi), INCONCLUSIVE)


def make_claims(arms: Mapping[str, Mapping[int, Mapping[str, Any]]],
                metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Claims for the arms present; every verdict computed from a measured interval."""
    claims: list[dict[str, Any]] = []
    pre = metrics.get("pretrained", {})

    def premise(metric: str, threshold: float, what: str) -> dict[str, Any] | None:
        iv = pre.get(metric)
        if iv is None:
            return None
        return {"what": what, "metric": metric, "threshold": threshold, "interval": iv,
                "verdict": directional(iv, threshold, "above")}

    outliers = premise("kurtosis_max", OUTLIER_PREMISE, "the pretrained model has activation outliers")
    sinks = premise("sink_rate", SINK_PREMISE, "the pretrained model has attention sinks")
    qgap = premise("w8a8_delta_ppl", QUANT_PREMISE, "the pretrained model loses quality under W8A8")

    def below(text: str, source: str, paper: str, arm: str, metric: str, prem: dict[str, Any] | None) -> None:
        """The claim metric(arm) - metric(control) < 0."""
        if arm not in arms or CONTROL not in arms:
            return
        iv = arm_diff(arms[arm], arms[CONTROL], metric, "diff")
        effect = f"{metric}({arm}) - {metric}({CONTROL})"
        claims.append(_record(text, source, paper, arm, CONTROL, effect, f"{effect} < 0", iv, prem,
                              directional(iv, 0.0, "below")))

    below("softmax1 shrinks activation outliers", "Miller 2023 (proposal)", "predicted, not measured",
          "softmax1", "kurtosis_max", outliers)
    below("softmax1 shrinks the int8 W8A8 gap", "Miller 2023 (proposal)", "predicted, not measured",
          "softmax1", "w8a8_delta_ppl", qgap)
    below("softmax1 lowers attention on token 0", "Kaul et al. 2025", "first-token attention largely removed",
          "softmax1", "token0_attention", sinks)
    if "softmax1" in arms and CONTROL in arms:
        iv = arm_diff(arms["softmax1"], arms[CONTROL], "kurtosis_max", "ratio")
        lo, hi = KURTOSIS_KEPT
        claims.append(_record(
            "... but softmax1 alone leaves the kurtosis where it was", "Kaul et al. 2025",
            "kurtosis stays high without OrthoAdam", "softmax1", CONTROL,
            f"kurtosis_max(softmax1) / kurtosis_max({CONTROL})", f"within [{lo:g}, {hi:g}] (equivalence)",
            iv, outliers, _equivalent(iv, lo, hi)))
    below("clipped softmax shrinks activation outliers", "Bondarenko et al. 2023",
          "large kurtosis reductions (BERT, OPT, ViT)", "clipped", "kurtosis_max", outliers)
    below("clipped softmax shrinks the W8A8 gap", "Bondarenko et al. 2023", "W8A8 close to floating point",
          "clipped", "w8a8_delta_ppl", qgap)
    below("gated attention shrinks activation outliers", "Bondarenko et al. 2023, OPT-125m",
          "kurtosis 1778 -> 18.9", "gated", "kurtosis_max", outliers)
    below("gated attention shrinks the W8A8 gap", "Bondarenko et al. 2023, OPT-125m",
          "W8A8 perplexity gap 5.3 -> 0.5", "gated", "w8a8_delta_ppl", qgap)
    below("gated attention removes the token-0 sink", "Qiu et al. 2025, 1.7B dense",
          "first-token attention 0.467 -> 0.048", "gated", "token0_attention", sinks)
    below("gated attention shrinks massive activations", "Qiu et al. 2025, 1.7B dense",
          "max activation 1053 -> 94", "gated", "max_abs_activation", outliers)
    below("learned sinks take attention off token 0", "gpt-oss (OpenAI 2025)", "per-head learned sink logits",
          "sinks", "token0_attention", sinks)
    below("softmax1 + gating shrinks the W8A8 gap", "the 'with what?' arm", "-", "softmax1+gated",
          "w8a8_delta_ppl", qgap)
    for arm in arms:
        if arm in ("pretrained", CONTROL) or CONTROL not in arms:
            continue
        iv = arm_diff(arms[arm], arms[CONTROL], "ppl", "ratio")
        claims.append(_record(
            f"{arm} costs no language-modelling quality", "the variants' papers", "no perplexity loss", arm,
            CONTROL, f"ppl({arm}) / ppl({CONTROL})", f"within 1 ± {QUALITY_MARGIN:g} (equivalence)", iv,
            None, _equivalent(iv, 1 - QUALITY_MARGIN, 1 + QUALITY_MARGIN)))
    return claims


# ---------------------------------------------------------------------------------------------- answer
ANSWER_METRICS = ("ppl", "token0_attention", "null_sink_mass", "kurtosis_max", "max_abs_activation",
                  "w8a8_delta_ppl", "a8_delta_ppl")


def differences(arms: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{arm: {metric: interval of metric(arm) - metric(control)}} for every fine-tuned arm."""
    out: dict[str, dict[str, Any]] = {}
    if CONTROL not in arms:
        return out
    for arm in arms:
        if arm in ("pretrained", CONTROL):
            continue
        out[arm] = {}
        for metric in ANSWER_METRICS:
            iv = arm_diff(arms[arm], arms[CONTROL], metric, "diff")
            if iv is not None:
                out[arm][metric] = iv
    return out


# Differences smaller than these are not named in the answer even when their interval excludes zero
# (float32 rounding of row sums is ~1e-9; no reader cares about a 1e-4 shift of attention mass).
ANSWER_FLOORS = {"token0_attention": 1e-3, "null_sink_mass": 1e-3}


ANSWER_LEAD = "Against the same fine-tuning with plain softmax (the control), on held-out text:"


def answer_lines(diffs: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]],
                 fmt: Callable[[float], str]) -> list[str]:
    """One sentence per variant arm naming only its differences from the control whose 95% interval
    excludes zero (and, for attention masses, whose size passes ANSWER_FLOORS); [] when there is no control
    or no variant."""
    if CONTROL not in metrics:
        return []
    lines = []
    for arm, per in diffs.items():
        said = []
        for metric, iv in per.items():
            if not excludes(iv) or abs(iv["value"]) < ANSWER_FLOORS.get(metric, 0.0):
                continue
            a, c = metrics.get(arm, {}).get(metric), metrics.get(CONTROL, {}).get(metric)
            if a is None or c is None:
                continue
            word = "lowered" if iv["value"] < 0 else "raised"
            said.append(f"{word} {LABELS[metric]} from {fmt(c['value'])} to {fmt(a['value'])} "
                        f"(difference {fmt(iv['value'])}, 95% interval [{fmt(iv['lo'])}, {fmt(iv['hi'])}])")
        lines.append(f"{arm} " + "; ".join(said) + "." if said
                     else f"{arm}: no difference from the control whose interval excludes zero.")
    return lines


def answer(diffs: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]],
           fmt: Callable[[float], str]) -> str:
    """The computed answer paragraph (see `answer_lines`)."""
    if CONTROL not in metrics:
        return ("No answer: the softmax control arm was not run, so no variant can be compared with "
                "fine-tuning alone.")
    if not diffs:
        return "No answer: no variant arm was run next to the control; add one with --arms."
    return " ".join([ANSWER_LEAD, *answer_lines(diffs, metrics, fmt)])


__all__ = ["ANSWER_LEAD", "METRICS", "answer", "answer_lines", "arm_diff", "arm_metrics", "compact",
           "differences", "directional", "make_claims", "metric_interval"]
