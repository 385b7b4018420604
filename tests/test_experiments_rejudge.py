"""`python -m attnlab.experiments.rejudge`: a committed results.json re-judged by the current engine from
its stored evidence alone, the rest of the file kept."""

from __future__ import annotations

import json

import pytest

from attnlab.experiments import rejudge as rj
from attnlab.experiments.base import HELD, NOT_TESTABLE, claim, evidence, recompute_verdict
from attnlab.experiments.verdicts import VERDICT_RULE

OLD_RULE_TEXT = "... else 'inconclusive at this scale'. A claim whose premise does not hold is ..."


def _seeds(values: list[float]) -> dict:
    return evidence("mean", ["x"], [{"x": [v]} for v in values], items="items")


def _as_written_before(c: dict, verdict: str) -> dict:
    """Claim `c` as a file of the previous rule stored it: same evidence, the verdict in its words."""
    old = json.loads(json.dumps(c))
    old["verdict"] = old["result"]["verdict"] = verdict
    old["result"].pop("reason", None)
    old["rule"] = old["test"] + "; " + OLD_RULE_TEXT
    return old


def _doc(claims: list[dict]) -> dict:
    return {"study": "offbyone", "seeds": [0, 1, 2], "claims": claims, "verdict_rule": OLD_RULE_TEXT,
            "results": {"kept": [1, 2, 3]}, "tables": [], "figures": [], "summary": "s", "command": "c",
            "config": {"a": 1}, "timings": {"total": 1.0}, "provenance": {"versions": {"attnlab": "0"}}}


def _claims() -> list[dict]:
    ceiling = claim("accuracy drops", "s", "p", "accuracy", _seeds([1.0, 1.0, 1.0]), 0.5, "above")
    no_premise = claim("x removes the sink", "s", "p", "ratio", _seeds([5.0, 5.2, 4.9]), 2.0, "above",
                       premise=("softmax sink rate", _seeds([0.0, 0.01, 0.02]), 0.05, "above"))
    held = claim("x grows", "s", "p", "ratio", _seeds([5.0, 5.2, 4.9]), 2.0, "above")
    return [_as_written_before(ceiling, "held"), _as_written_before(no_premise, "inconclusive at this scale"),
            _as_written_before(held, "held")]


def test_zero_width_and_premise_failures_become_not_testable_and_held_stays_held():
    doc = _doc(_claims())
    new, flips = rj.rejudge_doc(doc)
    ceiling, no_premise, held = new["claims"]
    assert ceiling["verdict"] == NOT_TESTABLE and "zero width" in ceiling["result"]["reason"]
    assert ceiling["result"]["previous_verdict"] == "held" and "zero width" in ceiling["ours"]
    assert no_premise["verdict"] == NOT_TESTABLE and "premise not met" in no_premise["result"]["reason"]
    assert no_premise["result"]["previous_verdict"] == "inconclusive at this scale"
    assert held["verdict"] == HELD and "previous_verdict" not in held["result"]
    assert [f[0] for f in flips] == ["accuracy drops", "x removes the sink"]
    # everything but the verdicts is kept, and the file says who judged it
    assert new["results"] == doc["results"] and new["config"] == doc["config"]
    assert new["rejudged_by"] == "verdicts engine" and new["verdict_rule"] == VERDICT_RULE
    assert all(c["rule"].endswith(VERDICT_RULE) for c in new["claims"])
    intervals = [c["result"]["interval"] for c in doc["claims"]]
    assert [c["result"]["interval"] for c in new["claims"]] == intervals


def test_the_rewritten_file_recomputes_and_a_second_pass_changes_nothing(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_doc(_claims())))
    flips = rj.rejudge_dir(tmp_path)
    assert len(flips) == 2
    doc = json.loads((tmp_path / "results.json").read_text())
    assert all(recompute_verdict(c) == c["verdict"] for c in doc["claims"])
    assert "not testable" in (tmp_path / "index.html").read_text()
    assert rj.rejudge_dir(tmp_path) == []
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["claims"] == doc["claims"]  # the first pass's previous verdicts are kept


def _first_rule_claim(mean: float, interval: list[float], verdict: str, premise: dict | None = None) -> dict:
    res = {"verdict": verdict, "value": mean, "mean": mean, "interval": interval, "level": 0.95, "n": 3,
           "method": "t interval over 3 seeds (recomputed from the stored per-seed values)",
           "se_measured": True, "seed_values": [mean] * 3, "first_rule_verdict": verdict}
    if premise is not None:
        res["premise"] = premise
    return {"claim": "c", "source": "s", "paper": "p", "effect": "E", "threshold": 0.05, "direction": "above",
            "values": [mean] * 3, "result": res, "verdict": verdict, "test": "E > 0.05", "rule": "old",
            "ours": f"E = {mean}, t interval over 3 seeds"}


def test_first_rule_files_apply_the_premise_and_zero_width_rules_to_the_stored_intervals():
    flat = _first_rule_claim(0.0, [0.0, 0.0], "did not hold")
    prem = {"what": "sink rate", "threshold": 0.05, "direction": "above", "verdict": "did not hold",
            "mean": 0.0, "interval": [0.0, 0.0], "n": 3, "se_measured": True}
    no_premise = _first_rule_claim(0.8, [0.7, 0.9], "inconclusive at this scale", premise=prem)
    held = _first_rule_claim(0.8, [0.7, 0.9], "held")
    doc = {**_doc([flat, no_premise, held]), "rejudged": "by legacy"}
    new, flips = rj.rejudge_doc(doc)
    assert [c["verdict"] for c in new["claims"]] == [NOT_TESTABLE, NOT_TESTABLE, HELD]
    assert new["claims"][1]["result"]["reason"].startswith("premise not met: sink rate = 0 [0, 0]")
    assert len(flips) == 2 and new["rejudged"] == "by legacy"
    assert all(rj.first_rule_verdict(c)[0] == c["verdict"] for c in new["claims"])


def test_only_the_seven_studies(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({**_doc([]), "study": "compare"}))
    with pytest.raises(ValueError, match="not one of the seven studies"):
        rj.rejudge_dir(tmp_path)
