"""Part 1's numbers and claims: per-arm metrics over seeds, paired differences from the control, and the
claims judged by the one verdict engine (`attnlab.experiments.verdicts`).

Fixed here, before any run (changing them is a new study, not a re-read):

- the premise: the softmax control grows a sink, first-token attention at dormant queries above
  SINK_PREMISE in at least ceil(PREMISE_SHARE x seeds) seeds (4 of 5). If it does not, every claim of part
  1 is "not testable: the control grew no sink".
- the primary endpoints (PRIMARY): the control grows a sink (Guo et al. 2024), each variant lowers it
  against the control, and softmax1 costs no task loss (equivalence within QUALITY_MARGIN nats). They are
  judged as one family with Holm's correction. Every other comparison is exploratory: its effect and
  interval are shown with no verdict.

The unit of replication is the seed: a metric's per-seed value is its mean over the held-out sequences,
and an interval is a t interval over seeds of those values (of paired per-seed differences for a
comparison). With one seed no interval over training variance exists; the bootstrap over sequences is then
shown, and `withhold` keeps every verdict back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attnlab.experiments.compare.scratch_config import ROW_DEFICIT, SCRATCH_CONTROL
from attnlab.experiments.stats import finite_mean, interval_of
from attnlab.experiments.verdicts import apply_holm, claim, count_premise, evidence, withhold
from attnlab.present.catalogue import label

SINK_PREMISE = 0.3
PREMISE_SHARE = 0.8
QUALITY_MARGIN = 0.02  # nats/token of task loss: "costs no quality" means within +-0.02 of the control
ACC_MARGIN = 0.02  # backcopy accuracy within +-2 points of the control: the variant still solves the task

# what part 1 tabulates and compares with the control, in this order; every key is the catalogue's
# (`attnlab.present.catalogue`), which also names it on the page
METRICS = ("first_token_dormant", "first_token_active", "null_sink_mass", "clipped_mass", "resid_peak",
           "value_drain", "massive_tok0", "massive_rest", "kurtosis_token", "kurtosis_tok0", "int8_damage",
           "loss", "loss_excess", "backcopy_acc")

SOURCES = {
    "sink": ("Guo et al. 2024", "1-3 layer models on Bigram-Backcopy grow first-token sinks at dormant "
             "positions; ReLU attention removes them"),
    "softmax1": ("Miller 2023 (proposal)", "softmax1 lets a head attend to nothing: no sink needed"),
    "sinks": ("Gu et al. 2024; gpt-oss", "a learned sink with zero value takes the sink off the first token"),
    "gated": ("Qiu et al. 2025, 1.7B dense",
              "first-token attention 0.467 -> 0.048 with a sigmoid output gate"),
    "softmax1+gated": ("the 'with what?' arm", "-"),
    "softpick": ("Zuhri et al. 2025", "softpick: 0% sink rate, no massive activations"),
    "clipped": ("Bondarenko et al. 2023",
                "clipped softmax lets a head output exact zeros: no outlier needed"),
}
# (arm, metric, direction, threshold or margins): the primary endpoints, named before the run
PRIMARY: tuple[tuple[str, str, str, Any], ...] = (
    (SCRATCH_CONTROL, "first_token_dormant", "above", SINK_PREMISE),
    *((a, "first_token_dormant", "below", 0.0)
      for a in ("softmax1", "sinks", "gated", "softmax1+gated", "softpick", "clipped")),
    ("softmax1", "loss", "within", (-QUALITY_MARGIN, QUALITY_MARGIN)),
)
# (metric, direction, threshold, what the claim says): exploratory differences from the control
EXPLORATORY: tuple[tuple[str, str, Any, str], ...] = (
    ("first_token_active", "below", 0.0, "lowers first-token attention at active queries"),
    ("resid_peak", "below", 0.0, "lowers the residual peak on token 0"),
    ("value_drain", "above", 0.0, "removes the value drain (raises token 0's value norm)"),
    ("massive_tok0", "below", 0.0, "shrinks token 0's massive activation"),
    ("kurtosis_token", "below", 0.0, "lowers per-token kurtosis"),
    ("int8_damage", "below", 0.0, "lowers the int8 W8A8 damage"),
    ("loss", "within", (-QUALITY_MARGIN, QUALITY_MARGIN), "costs no task loss"),
    ("backcopy_acc", "within", (-ACC_MARGIN, ACC_MARGIN), "still solves the backcopy"),
)


def items_of(results: Mapping[str, Mapping[int, Any]], arm: str, key: str) -> dict[int, list[float]]:
    """{seed: per-sequence values} of `key` for an arm's measured seeds (null_sink_mass / clipped_mass from
    the row deficit, exact 0 where the arm has no such share)."""
    out = {}
    for seed, res in results.get(arm, {}).items():
        items = res.get("items")
        if items is None:
            continue
        if key in ("null_sink_mass", "clipped_mass"):
            kind = "null" if key == "null_sink_mass" else "clipped"
            vals = items["row_deficit"] if ROW_DEFICIT.get(arm) == kind else [0.0] * len(items["row_deficit"])
        else:
            vals = items[key]
        out[int(seed)] = [math.nan if v is None else float(v) for v in vals]
    return out


def _ev(results: Mapping[str, Mapping[int, Any]], arms: list[str], key: str) -> dict[str, Any]:
    per = [items_of(results, a, key) for a in arms]
    seeds = sorted(set.intersection(*(set(p) for p in per))) if per else []
    op = "mean" if len(arms) == 1 else "diff"
    return evidence(op, [f"{a}:{key}" for a in arms],
                    [{f"{a}:{key}": p[s] for a, p in zip(arms, per)} for s in seeds],
                    items="held-out sequences", block=1)


def interval(results: Mapping[str, Mapping[int, Any]], arms: list[str], key: str) -> dict[str, Any] | None:
    """{value, lo, hi, n, method} of key(arm) (one arm) or key(a) - key(b) (two), measured over seeds."""
    return interval_of(_ev(results, arms, key))


def arm_metrics(results: Mapping[str, Mapping[int, Any]], arm: str) -> dict[str, Any]:
    return {k: iv for k in METRICS if (iv := interval(results, [arm], k)) is not None}


def premise(results: Mapping[str, Mapping[int, Any]], seeds: list[int]) -> dict[str, Any]:
    per_seed = items_of(results, SCRATCH_CONTROL, "first_token_dormant")
    means = [finite_mean(per_seed[s]) if s in per_seed else math.nan for s in seeds]
    values = [v if math.isfinite(v) else None for v in means]
    need = math.ceil(PREMISE_SHARE * len(seeds))
    return count_premise("first-token attention of the softmax control at dormant queries", values,
                         SINK_PREMISE, need)


def make_claims(results: Mapping[str, Mapping[int, Any]], seeds: list[int], smoke: bool
                ) -> list[dict[str, Any]]:
    """The primary family (Holm) and the exploratory comparisons, for the arms present."""
    prem = premise(results, seeds)
    claims = []
    for arm, key, direction, thr in PRIMARY:
        if arm not in results or SCRATCH_CONTROL not in results:
            continue
        claims.append(_claim(results, arm, key, direction, thr, prem, primary=True))
    for arm in results:
        if arm == SCRATCH_CONTROL:
            continue
        deficit = ROW_DEFICIT.get(arm)
        if deficit is not None:  # an arm whose rows may sum below 1: where does the rest go?
            key = "null_sink_mass" if deficit == "null" else "clipped_mass"
            claims.append(_claim(results, arm, key, "above", 0.0, prem, primary=False, single=True,
                                 what="puts weight on no key" if deficit == "null" else "clips weight away"))
        for key, direction, thr, what in EXPLORATORY:
            if (arm, key, direction, thr) in PRIMARY:
                continue
            claims.append(_claim(results, arm, key, direction, thr, prem, primary=False, what=what))
    apply_holm(claims)
    if smoke:
        withhold(claims, "smoke run: plumbing only, no verdicts")
    elif len(seeds) < 2:
        withhold(claims, "training variance unmeasured (1 seed): an effect, not a verdict")
    return claims


def _claim(results: Mapping[str, Mapping[int, Any]], arm: str, key: str, direction: str, thr: Any,
           prem: dict[str, Any], *, primary: bool, what: str | None = None, single: bool = False
           ) -> dict[str, Any]:
    """One claim of `arm` on `key`: of the arm alone (the control's sink; `single`), else its paired
    difference from the control. Every claim but the control's own rests on the premise."""
    if arm == SCRATCH_CONTROL:
        arms, text = [arm], "softmax grows a first-token sink at dormant queries"
    elif single:
        arms, text = [arm], f"{arm} {what}"
    else:
        default = "removes the first-token sink" if key == "first_token_dormant" else "costs no task loss"
        arms, text = [arm, SCRATCH_CONTROL], f"{arm} {what or default}"
    effect = f"{key}({arm})" if len(arms) == 1 else f"{key}({arm}) - {key}({SCRATCH_CONTROL})"
    source, paper = SOURCES["sink"] if arm == SCRATCH_CONTROL else SOURCES.get(arm, ("-", "-"))
    return claim(text, source, paper, effect, _ev(results, arms, key), thr, direction,
                 premise=None if arm == SCRATCH_CONTROL else prem, primary=primary, arm=arm, metric=key,
                 label=label(key), part="scratch")


__all__ = ["METRICS", "PRIMARY", "arm_metrics", "interval", "make_claims", "premise"]
