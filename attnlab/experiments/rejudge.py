"""Re-judge a committed study results.json with the current verdict engine, from its stored evidence alone.

`python -m attnlab.experiments.rejudge results/offbyone results/rankcollapse ...` rewrites each folder's
results.json (atomically, everything but the verdicts kept) and re-renders its index.html:

- a file written by the current code (each claim stores its per-item `data`): every claim's result is
  measured again from `data` (and its premise from the premise's `data`) by `verdicts.result` and settled
  by the engine's premise, zero-width and exploratory rules; a primary family is judged with Holm again,
  and a withheld claim stays withheld;
- a file of the first rule, already recomputed by `attnlab.experiments.legacy` (it has a "rejudged" key and
  keeps only each claim's interval, not per-item values): the premise and zero-width rules are applied to
  the stored intervals (`first_rule_verdict`), the rest of the judgement (side of the threshold) as before.

Each claim whose verdict changed keeps the one before in `result["previous_verdict"]`; the file records
`"rejudged_by": "verdicts engine"` and today's `verdict_rule`. Only the seven studies' files
(`attnlab.experiments.STUDIES`); `attnlab compare` files are judged by their own code path.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from attnlab.experiments import verdicts as V
from attnlab.io import atomic_write_json

REJUDGED_BY = "verdicts engine"


# ------------------------------------------------------------------------ first-rule (legacy) files
def _stored_iv(res: dict[str, Any]) -> dict[str, Any]:
    """The interval dict `verdicts.judge` reads, from a stored claim or premise result."""
    iv = res.get("interval") or [None, None]
    value = res.get("value", res.get("mean"))
    measured = bool(res.get("se_measured", True)) and iv[0] is not None and iv[1] is not None
    return {"value": value, "lo": iv[0], "hi": iv[1], "measured": measured,
            "reason": res.get("reason") or "no interval stored"}


def first_rule_verdict(c: dict[str, Any]) -> tuple[str, str | None]:
    """(verdict, reason) of a claim in a first-rule file, from its stored intervals: the premise rule, then
    the zero-width and unmeasured rules, then the side of the threshold (`verdicts.judge`)."""
    res = c["result"]
    prem = res.get("premise")
    if prem is not None:
        ptest = {"direction": prem["direction"], "threshold": prem["threshold"]}
        piv = _stored_iv(prem)
        if V.judge(piv, ptest, premise=True) != V.HELD:
            return V.NOT_TESTABLE, (f"premise not met: {prem['what']} = {V.interval_text(piv)}, needs "
                                    f"{V.describe_test(prem['what'], ptest)}")
    iv = _stored_iv(res)
    verdict = V.judge(iv, {"direction": c["direction"], "threshold": c["threshold"]})
    return verdict, V.why_not_testable(iv) if verdict == V.NOT_TESTABLE else None


def _rejudge_first_rule(c: dict[str, Any]) -> dict[str, Any]:
    verdict, reason = first_rule_verdict(c)
    res = dict(c["result"])
    res["verdict"] = verdict
    old_reason = res.pop("reason", None)
    if reason is not None:
        res["reason"] = reason
    ours = c["ours"]
    if old_reason and f" ({old_reason})" in ours:
        ours = ours.replace(f" ({old_reason})", "")
    if reason is not None:
        ours += f" ({reason})"
    return _with_rule({**c, "result": res, "verdict": verdict, "ours": ours})


# ------------------------------------------------------------------------- files of the current code
def _auto_ours(c: dict[str, Any]) -> str:
    """The `ours` text the engine writes for claim `c` (`verdicts.claim`)."""
    res = c["result"]
    text = f"{c['effect']} = {V.interval_text(V.res_iv(res))}, {res['method']}"
    return text + (f" ({res['reason']})" if res.get("reason") else "")


def _rejudge_current(c: dict[str, Any]) -> dict[str, Any]:
    old = c["result"]
    test = {"direction": c["direction"], "threshold": c["threshold"]}
    res = V.result(c["data"], test)
    if not res.get("se_measured") and not old.get("se_measured") and old.get("reason"):
        res["reason"] = old["reason"]  # a study's own reason (e.g. too few converged seeds) says more
    prem = old.get("premise")
    if prem is not None and "data" in prem:
        ptest = {"direction": prem["direction"], "threshold": prem["threshold"]}
        res["premise"] = {"what": prem["what"], **ptest, **V.result(prem["data"], ptest, premise=True),
                          "data": prem["data"]}
    elif prem is not None:  # a premise judged without per-item data (a count of seeds): as stored
        res["premise"] = prem
    new = copy.deepcopy({k: v for k, v in c.items() if k != "result"})
    V._settle(new, res)
    old_auto = _auto_ours(c)
    new_auto = _auto_ours(new)
    if c["ours"].startswith(old_auto):  # the engine's text, maybe with a study's note after it
        new["ours"] = new_auto + c["ours"][len(old_auto):]
    elif new["verdict"] != V.normalize(c["verdict"]) and res.get("reason") and res["reason"] not in c["ours"]:
        new["ours"] = f"{c['ours']} ({res['reason']})"
    return _with_rule(new)


def _with_rule(c: dict[str, Any]) -> dict[str, Any]:
    if "test" in c:
        c["rule"] = c["test"] + "; " + V.VERDICT_RULE
    return c


def rejudge_doc(doc: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """(the document with every claim judged by the current engine, [(claim, before, now)] that changed)."""
    first_rule = "rejudged" in doc
    claims = []
    for c in doc["claims"]:
        if first_rule or "data" not in c:
            new = _rejudge_first_rule(copy.deepcopy(c))
        else:
            new = _rejudge_current(c)
        claims.append(new)
    if not first_rule:
        V.apply_holm(claims)
        for old, new in zip(doc["claims"], claims, strict=True):
            if old["result"].get("withheld"):
                V.withhold([new], old["result"].get("reason", "withheld"))
    flips = []
    for old, new in zip(doc["claims"], claims, strict=True):
        before = old["verdict"]
        new["result"].pop("previous_verdict", None)
        if old["result"].get("previous_verdict") is not None:  # a second pass keeps the first's record
            new["result"]["previous_verdict"] = old["result"]["previous_verdict"]
        if new["verdict"] != V.normalize(before):
            new["result"]["previous_verdict"] = before
            flips.append((old["claim"], before, new["verdict"]))
        elif new["verdict"] != before:  # only the word changed ("inconclusive at this scale")
            new["result"].setdefault("previous_verdict", before)
    return {**doc, "claims": claims, "verdict_rule": V.VERDICT_RULE, "rejudged_by": REJUDGED_BY}, flips


def rejudge_dir(results_dir: str | Path) -> list[tuple[str, str, str]]:
    """Rewrite `results_dir`/results.json and its index.html; returns the claims whose verdict changed."""
    from attnlab.experiments import STUDIES
    from attnlab.experiments.html import study_page

    results_dir = Path(results_dir)
    path = results_dir / "results.json"
    doc = json.loads(path.read_text())
    if doc.get("study") not in STUDIES:
        raise ValueError(f"{path}: study {doc.get('study')!r} is not one of the seven studies "
                         f"({', '.join(STUDIES)}); compare files are judged by attnlab compare")
    new, flips = rejudge_doc(doc)
    atomic_write_json(path, new)
    study_page(new, results_dir)
    return flips


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        print("usage: python -m attnlab.experiments.rejudge results/NAME [...]", file=sys.stderr)
        return 2
    for d in args:
        flips = rejudge_dir(d)
        print(f"{d}: {len(flips)} verdict(s) changed")
        for name, before, now in flips:
            print(f"  {name}: {before} -> {now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
