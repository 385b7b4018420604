"""Results files of the first verdict rule, rejudged under the measured rule from the file alone."""

from __future__ import annotations

import math

import pytest

from attnlab.experiments.base import HELD, INCONCLUSIVE, NOT_TESTABLE, VERDICT_RULE
from attnlab.experiments.legacy import is_legacy, rejudge
from attnlab.experiments.stats import t_quantile

OLD_RULE = "m ± 2·se over seeds (se = s/√n; with one seed se = 10% of |m|): ..."


def _claim(values, threshold=1.0, direction="above", premise=None):
    n = len(values)
    m = sum(values) / n
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.1 * abs(m)
    result = {"verdict": HELD if m - 2 * se > threshold else INCONCLUSIVE, "mean": m,
              "interval": [m - 2 * se, m + 2 * se], "n": n, "se_measured": n > 1}
    if premise is not None:
        result["premise"] = premise
    return {"claim": "c", "source": "s", "paper": "p", "ours": "old", "effect": "E", "threshold": threshold,
            "direction": direction, "values": values, "result": result, "verdict": result["verdict"],
            "rule": OLD_RULE}


def _doc(claims, seeds=(0, 1, 2)):
    return {"study": "x", "seeds": list(seeds), "claims": claims, "verdict_rule": OLD_RULE}


def test_t_interval_replaces_two_standard_errors_and_can_flip_a_verdict():
    values = [1.30, 1.10, 1.20]  # m = 1.2, se = 0.0577: m - 2 se = 1.085 > 1, m - 4.30 se = 0.95 < 1
    old = _claim(values)
    assert old["verdict"] == HELD
    new = rejudge(_doc([old]))["claims"][0]
    m, se = 1.2, 0.1 / math.sqrt(3)
    half = t_quantile(0.975, 2) * se
    assert new["result"]["interval"] == pytest.approx([m - half, m + half], rel=1e-9)
    assert new["verdict"] == INCONCLUSIVE and new["result"]["first_rule_verdict"] == HELD
    assert new["result"]["se_measured"] is True and "t interval over 3 seeds" in new["result"]["method"]
    assert new["rule"].endswith(VERDICT_RULE)


def test_premise_interval_is_rebuilt_from_its_mean_and_two_standard_errors():
    # premise mean 12, old interval 12 ± 2·1: the t interval 12 ± 4.30 reaches below 10, so it fails
    premise = {"what": "kurtosis", "threshold": 10.0, "direction": "above", "verdict": HELD, "mean": 12.0,
               "interval": [10.0, 14.0], "n": 3, "se_measured": True}
    new = rejudge(_doc([_claim([5.0, 6.0, 7.0], premise=premise)]))["claims"][0]
    lo, hi = new["result"]["premise"]["interval"]
    assert (lo, hi) == pytest.approx((12 - t_quantile(0.975, 2), 12 + t_quantile(0.975, 2)))
    assert new["verdict"] == NOT_TESTABLE and "premise not met" in new["result"]["reason"]


def test_one_value_cannot_be_measured_and_says_so():
    new = rejudge(_doc([_claim([2.0])], seeds=(0,)))["claims"][0]
    assert new["verdict"] == NOT_TESTABLE and new["result"]["se_measured"] is False
    assert "re-run the study" in new["result"]["reason"]


def test_every_seed_the_same_value_is_not_testable():
    new = rejudge(_doc([_claim([0.0, 0.0, 0.0], threshold=0.05)]))["claims"][0]
    assert new["verdict"] == NOT_TESTABLE and "zero width" in new["result"]["reason"]
    assert new["result"]["reason"] in new["ours"]


def test_files_of_the_measured_rule_are_left_alone():
    doc = {**_doc([_claim([1.0, 2.0])]), "verdict_rule": VERDICT_RULE}
    assert not is_legacy(doc) and rejudge(doc) is doc
