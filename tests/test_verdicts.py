"""The one verdict engine: words, the zero-width and premise rules, Holm's family, exploratory and withheld
claims, and that every verdict replays from the stored claim alone."""

from __future__ import annotations

import pytest

from attnlab.experiments.verdicts import (
    HELD,
    INCONCLUSIVE,
    NO_VERDICT,
    NOT_HELD,
    NOT_TESTABLE,
    apply_holm,
    claim,
    count_premise,
    evidence,
    normalize,
    recompute_holm,
    recompute_verdict,
    withhold,
)


def _seeds(values: list[float]) -> dict:
    return evidence("mean", ["x"], [{"x": [v]} for v in values], items="items")


def test_zero_width_interval_at_a_ceiling_is_not_testable_not_did_not_hold() -> None:
    c = claim("accuracy stays below 1", "-", "-", "acc", _seeds([1.0, 1.0, 1.0]), 1.0, "below")
    assert c["verdict"] == NOT_TESTABLE and "zero width" in c["result"]["reason"]
    assert recompute_verdict(c) == NOT_TESTABLE
    moving = claim("accuracy above 0.5", "-", "-", "acc", _seeds([0.9, 0.95, 0.97]), 0.5, "above")
    assert moving["verdict"] == HELD


def test_a_failed_premise_makes_the_claim_not_testable() -> None:
    prem = ("the control has a sink", _seeds([0.01, 0.02, 0.015]), 0.3, "above")
    c = claim("the variant removes the sink", "-", "-", "d", _seeds([-0.5, -0.4, -0.45]), 0.0, "below",
              premise=prem)
    assert c["verdict"] == NOT_TESTABLE and c["result"]["reason"].startswith("premise not met")
    assert recompute_verdict(c) == NOT_TESTABLE


def test_count_premise_counts_seeds_and_replays() -> None:
    ok = count_premise("sink", [0.5, 0.4, 0.1, 0.45, 0.6], 0.3, 4)
    bad = count_premise("sink", [0.5, 0.1, 0.1, 0.45, 0.6], 0.3, 4)
    assert ok["verdict"] == HELD and ok["count"] == 4 and bad["verdict"] == NOT_HELD
    c = claim("removes it", "-", "-", "d", _seeds([-0.5, -0.4, -0.45]), 0.0, "below", premise=bad)
    assert c["verdict"] == NOT_TESTABLE and "in 3 of 5 seeds, needs 4" in c["result"]["reason"]
    assert recompute_verdict(c) == NOT_TESTABLE


def test_holm_demotes_claims_decisive_only_at_the_uncorrected_level() -> None:
    # mean -1, sd ~0.71, n 5: the 95% t interval excludes 0, the 97.5% one (Holm's first step, k = 2) not
    a = claim("a", "-", "-", "a", _seeds([-0.2, -1.8, -0.5, -1.6, -0.9]), 0.0, "below", primary=True)
    b = claim("b", "-", "-", "b", _seeds([-1.9, -0.1, -0.6, -1.5, -0.9]), 0.0, "below", primary=True)
    assert a["verdict"] == b["verdict"] == HELD  # each judged alone at 95%
    apply_holm([a, b])
    assert a["verdict"] == b["verdict"] == INCONCLUSIVE
    assert a["result"]["holm"] == {"family": 2, "level": 0.975}
    assert [recompute_verdict(c) for c in (a, b)] == [INCONCLUSIVE, INCONCLUSIVE]
    assert recompute_holm([a, b]) == [INCONCLUSIVE, INCONCLUSIVE]


def test_holm_steps_down_once_a_claim_is_decided() -> None:
    strong = claim("a", "-", "-", "a", _seeds([-5.0, -5.1, -4.9, -5.05, -4.95]), 0.0, "below", primary=True)
    # decisive at 95% (the last step of a family of 2, after `strong` is decided) but not at 97.5%
    second = claim("b", "-", "-", "b", _seeds([-0.2, -1.8, -0.5, -1.6, -0.9]), 0.0, "below", primary=True)
    third = claim("c", "-", "-", "c", _seeds([3.0, 3.1, 2.9, 3.05, 2.95]), 0.0, "below", primary=True)
    apply_holm([strong, second, third])
    # k = 3: strong and third are decisive at 1 - 0.05/3; then k = 1: second at 95%
    assert [c["verdict"] for c in (strong, second, third)] == [HELD, HELD, NOT_HELD]
    assert second["result"]["holm"]["level"] == pytest.approx(0.95)


def test_exploratory_and_withheld_claims_show_the_effect_with_no_verdict() -> None:
    c = claim("x", "-", "-", "x", _seeds([-5.0, -5.1, -4.9]), 0.0, "below", primary=False)
    assert c["verdict"] == NO_VERDICT and c["result"]["verdict_at_95"] == HELD
    assert c["result"]["interval"][1] < 0 and recompute_verdict(c) == NO_VERDICT
    d = claim("y", "-", "-", "y", _seeds([-5.0, -5.1, -4.9]), 0.0, "below", primary=True)
    withhold([d], "smoke run")
    assert d["verdict"] == NO_VERDICT and d["result"]["reason"] == "smoke run"
    assert recompute_verdict(d) == NO_VERDICT


def test_legacy_word_reads_as_inconclusive() -> None:
    assert normalize("inconclusive at this scale") == INCONCLUSIVE
    assert normalize(HELD) == HELD
