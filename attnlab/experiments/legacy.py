"""Verdicts of results files written by the first verdict rule, recomputed under the measured rule.

The first rule judged m ± 2·se over seeds (with one seed it assumed se = 10% of |m|). A multi-seed file keeps
each claim's per-seed values, and each premise's mean and m ± 2·se interval over n seeds, which gives its
se = (hi - lo) / 4 exactly; so the measured rule's t interval over seeds (`stats.t_interval`: m ± t(n-1)·se)
is recomputed from the file alone, with each claim's own threshold and direction, and judged by
`verdicts.judge` (a zero-width interval, every seed the same value, is "not testable"). A claim whose premise
does not hold is "not testable". A claim with one value (a one-seed file, or a probe that does not depend on
the seed) kept no per-item values: its interval cannot be measured, and it is "not testable" with that reason
(re-run the study to judge it).

`python -m attnlab.experiments.legacy results/NAME-full ...` rewrites those results files
(and their index.html) in place.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from attnlab.experiments.base import HELD, NOT_TESTABLE, VERDICT_RULE, describe_test, fmt, judge
from attnlab.experiments.stats import LEVEL, t_interval, t_quantile
from attnlab.experiments.verdicts import why_not_testable
from attnlab.io import atomic_write_json

OLD_RULE_MARK = "se = 10% of |m|"  # a phrase only the first rule's text holds


def is_legacy(doc: dict[str, Any]) -> bool:
    return OLD_RULE_MARK in doc.get("verdict_rule", "")


def _premise_interval(p: dict[str, Any]) -> dict[str, Any]:
    """t interval of a premise from its stored mean and m ± 2·se interval over n seeds."""
    n, iv = int(p.get("n") or 0), p.get("interval")
    if n < 2 or not iv or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in iv):
        return {"measured": False, "value": p.get("mean"), "reason": "fewer than 2 seeds"}
    se = (iv[1] - iv[0]) / 4
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * se
    return {"measured": True, "value": p["mean"], "lo": p["mean"] - half, "hi": p["mean"] + half, "n": n}


def rejudge_claim(c: dict[str, Any]) -> dict[str, Any]:
    test = {"direction": c["direction"], "threshold": c["threshold"]}
    try:
        iv = {**t_interval(c["values"]), "measured": True}
    except ValueError:
        return _unmeasured(c)
    method = f"t interval over {iv['n']} seeds (recomputed from the stored per-seed values)"
    verdict = judge(iv, test)
    res = {"verdict": verdict, "value": iv["value"], "mean": iv["value"], "interval": [iv["lo"], iv["hi"]],
           "level": LEVEL, "n": iv["n"], "method": method, "se_measured": True, "seed_values": c["values"],
           "first_rule_verdict": c["verdict"]}
    ours = f"{c['effect']} = {fmt(iv['value'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}], {method}"
    if verdict == NOT_TESTABLE:
        res["reason"] = why_not_testable(iv)
        ours += f" ({res['reason']})"
    old_premise = c["result"].get("premise")
    if old_premise is not None:
        piv = _premise_interval(old_premise)
        ptest = {"direction": old_premise["direction"], "threshold": old_premise["threshold"]}
        pverdict = judge(piv, ptest, premise=True)
        res["premise"] = {**old_premise, "interval": [piv.get("lo"), piv.get("hi")], "verdict": pverdict,
                          "method": "t interval over seeds (from the stored mean and m ± 2·se)"}
        if pverdict != HELD:
            if res.get("reason"):
                ours = ours.replace(f" ({res['reason']})", "")
            res["verdict"] = NOT_TESTABLE
            res["reason"] = (f"premise not met: {old_premise['what']} = {fmt(piv.get('value'))} "
                             f"[{fmt(piv.get('lo'))}, {fmt(piv.get('hi'))}], needs "
                             f"{describe_test(old_premise['what'], ptest)}")
            ours += f" ({res['reason']})"
    test_text = describe_test(c["effect"], test)
    return {**c, "ours": ours, "result": res, "verdict": res["verdict"], "test": test_text,
            "rule": test_text + "; " + VERDICT_RULE}


def _unmeasured(c: dict[str, Any]) -> dict[str, Any]:
    """A claim with one value (one seed, or a probe that does not depend on the seed): the first rule kept no
    per-item values, so no interval can be measured: not testable, saying so."""
    reason = ("interval not measured: one value, and the first rule's file kept no per-item values; re-run "
              "the study")
    res = {"verdict": NOT_TESTABLE, "value": c["result"].get("mean"), "mean": c["result"].get("mean"),
           "interval": None, "level": LEVEL, "n": len(c["values"]), "method": "none (see reason)",
           "se_measured": False, "reason": reason, "seed_values": c["values"],
           "first_rule_verdict": c["verdict"]}
    return {**c, "ours": f"{c['effect']} = {fmt(res['value'])} ({reason})", "result": res,
            "verdict": NOT_TESTABLE}


def rejudge(doc: dict[str, Any]) -> dict[str, Any]:
    """The results document with every claim judged by the measured rule (see the module docstring)."""
    if not is_legacy(doc):
        return doc
    return {**doc, "claims": [rejudge_claim(c) for c in doc["claims"]], "verdict_rule": VERDICT_RULE,
            "rejudged": "verdicts recomputed under the measured rule by attnlab.experiments.legacy; the "
                        "numbers are the original run's"}


def main(argv: list[str] | None = None) -> int:
    for d in argv if argv is not None else sys.argv[1:]:
        path = Path(d) / "results.json"
        doc = json.loads(path.read_text())
        new = rejudge(doc)
        if new is not doc:
            from attnlab.experiments.html import study_page

            atomic_write_json(path, new)
            study_page(new, Path(d))  # the page shows the verdicts of the file
            flips = [(c["claim"], c["result"]["first_rule_verdict"], c["verdict"]) for c in new["claims"]
                     if c["result"]["first_rule_verdict"] != c["verdict"]]
            print(f"{path}: {len(new['claims'])} claims rejudged, {len(flips)} flipped")
            for name, old, now in flips:
                print(f"  {name}: {old} -> {now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
