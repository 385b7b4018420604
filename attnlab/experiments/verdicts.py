"""The one verdict engine: every study and `attnlab compare` judge their claims here, with one set of words
and one colour map, and store each claim with its data, direction and threshold so `recompute_verdict`
replays it from results.json alone.

The rule (stated once). A claim is about an effect E, a statistic of per-item values a run evaluated
(`evidence(...)` keeps them, per seed). Its 95% interval is measured (`stats.measure`): over >= 2 seeds a t
interval of the per-seed values; with one seed a paired moving-block bootstrap over the items. Then:

- **held**: the interval lies wholly on the claimed side of the threshold (or, for a "close to" / "costs
  nothing" claim, wholly inside the equivalence margins fixed in code);
- **did not hold**: wholly on the other side (or wholly outside the margins);
- **inconclusive**: the interval straddles the threshold (or a margin);
- **not testable**: the claim's premise did not hold (the control never grew the pathology the variant is
  said to remove), the interval could not be measured, or it has zero width (every seed or item gave the
  same value: a floor or ceiling, where the statistic cannot move, not a measurement).

Primary endpoints and multiplicity. A study names a few claims `primary=True` before the run; `apply_holm`
judges that family with Holm's step-down correction (Holm 1979): with k claims still undecided, those
decisive (held or did not hold) at level 1 - alpha/k are decided, and the step repeats with the rest; the
others stay inconclusive. Each primary claim stores the level it was judged at, so `recompute_verdict`
replays it, and `recompute_holm` replays the family. Claims with `primary=False` are exploratory: their
effect and interval are shown, and their verdict is **no verdict**. So are all claims of a smoke run, and
the claims about trained arms when only one seed was run (`withhold`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from attnlab.experiments.stats import LEVEL, N_BOOT, equivalence, measure, rounded

HELD, NOT_HELD, INCONCLUSIVE, NOT_TESTABLE = "held", "did not hold", "inconclusive", "not testable"
NO_VERDICT = "no verdict"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE, NOT_TESTABLE)
# Results files written before this engine said "inconclusive at this scale"; they read as "inconclusive".
LEGACY_WORDS = {"inconclusive at this scale": INCONCLUSIVE}
VERDICT_COLOURS = {HELD: "#1a7f37", NOT_HELD: "#cf222e", INCONCLUSIVE: "#9a6700", NOT_TESTABLE: "#57606a",
                   NO_VERDICT: "#8c959f"}
ALPHA = 1 - LEVEL
VERDICT_RULE = (
    "95% interval of the effect: a t interval over seeds (each seed's value from its item means) when there "
    "are >= 2 seeds, else a paired moving-block percentile bootstrap (2000 draws) over the items the run "
    "evaluated, the same resampled items for every arm. Threshold claim: 'held' if the whole interval is on "
    "the claimed side of the threshold, 'did not hold' if it is wholly on the other side, else "
    "'inconclusive'. 'Close to' / 'costs nothing' claim: a two-sided equivalence test, 'held' if the whole "
    "interval is inside the margins fixed in the code, 'did not hold' if wholly outside, else inconclusive. "
    "'Not testable' when the claim's premise does not hold, when the interval cannot be measured (fewer "
    "than 2 seeds or items), or when it has zero width (a floor or ceiling). Primary endpoints are judged "
    "as one family with Holm's step-down correction; other claims are exploratory (no verdict)."
)


def normalize(verdict: str) -> str:
    """The verdict in today's words (results files from before this engine used older ones)."""
    return LEGACY_WORDS.get(verdict, verdict)


def evidence(op: str, args: Sequence[str], per_seed: Sequence[dict[str, Sequence[float]]], *, items: str,
             block: int | None = None, **params: Any) -> dict[str, Any]:
    """What a claim's interval is measured from, stored in results.json so the verdict can be recomputed.

    op, args, params: the statistic of the column means (`stats.STAT_OPS`: "ratio" of args[0] over args[1],
    "diff", "exp_ratio" of two mean NLLs, ...). per_seed: one {column: per-item values} per seed, the same
    items in the same order in every column (that is what makes the bootstrap paired). items: what an item
    is ("windows", "test sets", ...). block: the bootstrap block length; 1 for independent items, None for
    about n^(1/3) (neighbouring windows of one text are correlated). Values are rounded to
    `stats.SIG_DIGITS` significant digits, and the verdict is computed from the rounded values.
    """
    cols = list(dict.fromkeys(args))
    runs = []
    for run in per_seed:
        missing = [c for c in cols if c not in run]
        if missing:
            raise ValueError(f"evidence: columns {missing} missing (have {sorted(run)})")
        runs.append({c: [rounded(v) if v is not None else math.nan for v in run[c]] for c in cols})
    return {"stat": {"op": op, "args": list(args), **params}, "items": items, "block": block,
            "n_boot": N_BOOT, "boot_seed": 0, "per_seed": runs}


def _zero_width(iv: dict[str, Any]) -> bool:
    # Relative to the values themselves: an interval of 1e-13-sized values that differ is a measurement.
    lo, hi = iv["lo"], iv["hi"]
    return hi - lo <= 1e-12 * max(abs(lo), abs(hi))


def judge(interval: dict[str, Any], test: dict[str, Any], *, premise: bool = False) -> str:
    """The rule (module docstring) applied to a measured interval.

    test: {"direction": "above"|"below", "threshold": T} or {"direction": "within", "threshold": [lo, hi]}.
    premise: judge a premise, which asks only which side of its threshold the value is on: a zero-width
    interval there (accuracy 1.0 in every seed against "learned the task: > 0.5") is met, not untestable.
    """
    if not interval.get("measured"):
        return NOT_TESTABLE
    if _zero_width(interval) and not premise:
        return NOT_TESTABLE
    direction, thr = test["direction"], test["threshold"]
    if direction == "within":
        return {"equivalent": HELD, "different": NOT_HELD}.get(equivalence(interval, thr[0], thr[1]),
                                                                INCONCLUSIVE)
    if direction not in ("above", "below"):
        raise ValueError(f"judge: direction must be 'above', 'below' or 'within', got {direction!r}")
    above, below = interval["lo"] > thr, interval["hi"] < thr
    if direction == "above":
        return HELD if above else NOT_HELD if below else INCONCLUSIVE
    return HELD if below else NOT_HELD if above else INCONCLUSIVE


def why_not_testable(interval: dict[str, Any]) -> str | None:
    if not interval.get("measured"):
        return f"interval not measured: {interval.get('reason', '?')}"
    if _zero_width(interval):
        return (f"the interval has zero width (every seed or item gave {fmt(interval['value'])}: a floor or "
                f"ceiling, where the statistic cannot move)")
    return None


def make_test(direction: str, threshold: float | Sequence[float]) -> dict[str, Any]:
    if direction == "within":
        lo, hi = (float(x) for x in threshold)  # type: ignore[union-attr]
        if not lo < hi:
            raise ValueError(f"equivalence margins must satisfy lo < hi, got {threshold!r}")
        return {"direction": "within", "threshold": [lo, hi]}
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above', 'below' or 'within', got {direction!r}")
    return {"direction": direction, "threshold": float(threshold)}  # type: ignore[arg-type]


def describe_test(effect: str, test: dict[str, Any]) -> str:
    thr = test["threshold"]
    if test["direction"] == "within":
        return f"{fmt(thr[0])} < {effect} < {fmt(thr[1])} (equivalence)"
    return f"{effect} {'>' if test['direction'] == 'above' else '<'} {fmt(thr)}"


def interval_text(iv: dict[str, Any]) -> str:
    if not iv.get("measured"):
        return f"{fmt(iv.get('value'))} (interval not measured: {iv.get('reason', '?')})"
    return f"{fmt(iv['value'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def result(ev: dict[str, Any], test: dict[str, Any], level: float = LEVEL, *,
           premise: bool = False) -> dict[str, Any]:
    """The verdict of evidence `ev` under `test`, with the interval it rests on (premise: see `judge`)."""
    iv = measure(ev, level=level)
    out = {"verdict": judge(iv, test, premise=premise), "value": iv["value"], "mean": iv["value"],
           "interval": [iv["lo"], iv["hi"]] if iv.get("measured") else None, "level": iv["level"],
           "n": iv["n"], "method": iv["method"], "se_measured": bool(iv.get("measured")),
           "seed_values": iv["seed_values"]}
    reason = iv.get("reason") if not iv.get("measured") else (None if premise else why_not_testable(iv))
    if reason:
        out["reason"] = reason
    return out


def claim(claim: str, source: str, paper: str, effect: str, data: dict[str, Any],
          threshold: float | Sequence[float], direction: str, ours: str | None = None,
          premise: tuple[str, dict[str, Any], float, str] | dict[str, Any] | None = None, *,
          primary: bool | None = None, **extra: Any) -> dict[str, Any]:
    """A claims entry whose verdict is computed from `data` (an `evidence(...)`), never given.

    direction "above"/"below": the claim is effect > / < threshold. direction "within": a "close to" or
    "costs nothing" claim, a two-sided equivalence test with threshold = (lo, hi) margins fixed in code.
    premise: (what, evidence, threshold, direction), a condition the claim presupposes (e.g. "the softmax
    control grew a sink"), judged by the same rule; if it does not hold the claim is "not testable".
    primary: True for a named primary endpoint (judge the family with `apply_holm` afterwards), False for
    an exploratory claim (no verdict), None for a study judged claim by claim at 95%.
    extra: fields stored on the claim as they are (arm, metric, kind, ...), for pages and tables.
    """
    test = make_test(direction, threshold)
    res = result(data, test)
    d = {"claim": claim, "source": source, "paper": paper, "effect": effect, "threshold": test["threshold"],
         "direction": test["direction"], "data": data, "test": describe_test(effect, test), **extra}
    if isinstance(premise, dict):  # precomputed, e.g. `count_premise`
        res["premise"] = premise
    elif premise is not None:
        what, pdata, pthr, pdir = premise
        ptest = make_test(pdir, pthr)
        res["premise"] = {"what": what, **ptest, **result(pdata, ptest, premise=True), "data": pdata}
    if primary is not None:
        d["primary"] = bool(primary)
    _settle(d, res)
    d["ours"] = ours if ours is not None else _ours_text(d)
    d["rule"] = d["test"] + "; " + VERDICT_RULE
    return d


def _settle(d: dict[str, Any], res: dict[str, Any]) -> None:
    """Store `res` on claim `d` and its verdict after the premise and exploratory rules."""
    prem = res.get("premise")
    if prem is not None and prem["verdict"] != HELD:
        res["verdict"] = NOT_TESTABLE
        res["reason"] = f"premise not met: {_premise_text(prem)}"
    if d.get("primary") is False and res["verdict"] != NOT_TESTABLE:
        res["verdict_at_95"] = res["verdict"]
        res["verdict"] = NO_VERDICT
        res["reason"] = "exploratory: not a primary endpoint of this study"
    d["result"], d["verdict"], d["values"] = res, res["verdict"], res["seed_values"]


def count_premise(what: str, values: Sequence[float | None], threshold: float, min_count: int
                  ) -> dict[str, Any]:
    """A premise judged by counting seeds, fixed in code before the run: "`what` > threshold in at least
    `min_count` of the seeds" (e.g. the softmax control grew a sink in >= 4 of 5 seeds). Held or not."""
    count = sum(1 for v in values if v is not None and math.isfinite(v) and v > threshold)
    return {"what": what, "kind": "count", "values": [None if v is None else float(v) for v in values],
            "threshold": float(threshold), "min_count": int(min_count), "count": count,
            "verdict": HELD if count >= min_count else NOT_HELD}


def _premise_text(prem: dict[str, Any]) -> str:
    if prem.get("kind") == "count":
        return (f"{prem['what']} > {fmt(prem['threshold'])} in {prem['count']} of {len(prem['values'])} "
                f"seeds, needs {prem['min_count']}")
    return (f"{prem['what']} = {interval_text(res_iv(prem))}, needs {describe_test(prem['what'], prem)}")


def _premise_holds(prem: dict[str, Any]) -> bool:
    """The premise replayed from its stored data."""
    if prem.get("kind") == "count":
        again = count_premise(prem["what"], prem["values"], prem["threshold"], prem["min_count"])
        return again["verdict"] == HELD
    test = {"direction": prem["direction"], "threshold": prem["threshold"]}
    return judge(measure(prem["data"]), test, premise=True) == HELD


def _ours_text(d: dict[str, Any]) -> str:
    res = d["result"]
    text = f"{d['effect']} = {interval_text(res_iv(res))}, {res['method']}"
    return text + (f" ({res['reason']})" if res.get("reason") else "")


def res_iv(res: dict[str, Any]) -> dict[str, Any]:
    """A claim result as the interval dict `interval_text` reads."""
    iv = res.get("interval") or [None, None]
    return {"value": res.get("value"), "lo": iv[0], "hi": iv[1], "measured": res.get("se_measured"),
            "reason": res.get("reason")}


def _decisive(v: str) -> bool:
    return v in (HELD, NOT_HELD)


def apply_holm(claims: list[dict[str, Any]], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Judge the claims marked primary as one family with Holm's step-down correction (module docstring);
    updates them in place (verdict, interval and level) and returns the list."""
    family = [c for c in claims if c.get("primary") and c["verdict"] != NOT_TESTABLE]
    m = len(family)
    open_ = list(family)
    while open_:
        level = 1 - alpha / len(open_)
        judged = [(c, _judge_at(c, level)) for c in open_]
        decided = [(c, r) for c, r in judged if _decisive(r["verdict"])]
        for c, r in (decided or judged):  # nothing decisive: the rest stay at this (last) level
            _store_holm(c, r, level, m)
        if not decided:
            break
        open_ = [c for c in open_ if all(c is not d for d, _ in decided)]
    return claims


def _judge_at(c: dict[str, Any], level: float) -> dict[str, Any]:
    test = {"direction": c["direction"], "threshold": c["threshold"]}
    res = result(c["data"], test, level=level)
    if "premise" in c["result"]:
        res["premise"] = c["result"]["premise"]
    return res


def _store_holm(c: dict[str, Any], res: dict[str, Any], level: float, m: int) -> None:
    res["holm"] = {"family": m, "level": level}
    res["method"] += f"; Holm-corrected across {m} primary endpoints (level {level:.4f})"
    _settle(c, res)
    c["ours"] = _ours_text(c)


def withhold(claims: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    """Every claim keeps its effect and interval but gets no verdict (a smoke run; one seed of a trained
    arm, whose training variance is unmeasured), with the reason."""
    for c in claims:
        res = c["result"]
        if res["verdict"] != NO_VERDICT:
            res["verdict_at_95"] = res["verdict"]
        res["verdict"], res["reason"], res["withheld"] = NO_VERDICT, reason, True
        c["verdict"] = NO_VERDICT
        c["ours"] = _ours_text(c)
    return claims


def recompute_verdict(claim_dict: dict[str, Any]) -> str:
    """The verdict of a claim as stored in results.json, recomputed from its stored per-item values alone
    (statistic, items, the bootstrap's block, draws and seed, and for a primary endpoint its Holm level)."""
    res = claim_dict["result"]
    if res.get("withheld"):
        return NO_VERDICT
    premise = res.get("premise")
    if premise is not None and not _premise_holds(premise):
        return NOT_TESTABLE
    level = (res.get("holm") or {}).get("level", LEVEL)
    test = {"direction": claim_dict["direction"], "threshold": claim_dict["threshold"]}
    v = judge(measure(claim_dict["data"], level=level), test)
    if claim_dict.get("primary") is False and v != NOT_TESTABLE:
        return NO_VERDICT
    return v


def recompute_holm(claims: list[dict[str, Any]]) -> list[str]:
    """The primary family's verdicts replayed from scratch (not from the stored levels), in claim order."""
    import copy

    fresh = copy.deepcopy([c for c in claims if c.get("primary")])
    for c in fresh:
        _settle(c, _judge_at(c, LEVEL))
    return [c["verdict"] for c in apply_holm(fresh)]


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


__all__ = ["HELD", "INCONCLUSIVE", "NOT_HELD", "NOT_TESTABLE", "NO_VERDICT", "VERDICTS", "VERDICT_COLOURS",
           "VERDICT_RULE", "apply_holm", "claim", "count_premise", "describe_test", "evidence", "judge",
           "normalize",
           "recompute_holm", "recompute_verdict", "withhold"]
