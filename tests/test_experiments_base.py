"""The study frame: verdict rule on synthetic numbers, seed statistics, resumable parts, presets, CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from attnlab.errors import ConfigError
from attnlab.experiments import run_study, study_module
from attnlab.experiments.base import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    NOT_TESTABLE,
    Parts,
    check_fields,
    choose_preset,
    claim,
    evidence,
    recompute_verdict,
    seed_stats,
    start,
)
from attnlab.experiments.stats import t_interval


def _seeds(values: list[float]) -> dict:
    """Evidence of one value per seed (one item each): the interval is the t interval over seeds."""
    return evidence("mean", ["x"], [{"x": [v]} for v in values], items="items")


def _items(values: list[float], block: int | None = 1) -> dict:
    """Evidence of one seed with per-item values: the interval is the bootstrap over items."""
    return evidence("mean", ["x"], [{"x": values}], items="windows", block=block)


def test_verdict_over_seeds_is_the_t_interval():
    c = claim("x grows", "Someone 2024", "10 -> 1", "ratio", _seeds([5.0, 5.2, 4.9]), threshold=2.0,
              direction="above")
    assert c["verdict"] == HELD and c["result"]["se_measured"]
    assert c["result"]["method"] == "t interval over 3 seeds" and "ratio > 2" in c["rule"]
    iv = t_interval([5.0, 5.2, 4.9])
    assert c["result"]["interval"] == [iv["lo"], iv["hi"]]
    assert claim("x", "s", "p", "e", _seeds([1.0, 1.1, 0.9]), 2.0, "above")["verdict"] == NOT_HELD
    assert claim("x", "s", "p", "e", _seeds([0.9, 1.0, 1.1]), 0.5, "below")["verdict"] == NOT_HELD
    res = claim("x", "s", "p", "e", _seeds([1.0, 3.0, 2.2]), 2.0, "above")["result"]
    assert res["verdict"] == INCONCLUSIVE and res["interval"][0] < 2.0 < res["interval"][1]


def test_one_seed_bootstraps_over_items_instead_of_assuming_a_spread():
    # The old rule took se = 10% of |m| with one seed: 2.1 would have been inconclusive against 2.0. Items
    # that barely vary measure a narrow interval, and the verdict follows it.
    tight = claim("x", "s", "p", "e", _items([2.1, 2.11, 2.09, 2.1, 2.12, 2.1]), 2.0, "above")
    assert tight["verdict"] == HELD and tight["result"]["se_measured"]
    assert "bootstrap over 6 windows (block 1, 2000 draws)" in tight["result"]["method"]
    wide = claim("x", "s", "p", "e", _items([0.5, 4.0, 1.0, 3.5, 0.8, 3.0]), 2.0, "above")
    assert wide["verdict"] == INCONCLUSIVE


def test_paired_ratio_over_items_uses_the_same_resampled_items():
    base = [1.0, 5.0, 2.0, 8.0, 3.0, 6.0, 4.0, 7.0]
    jitter = [2.02, 2.03, 2.01, 2.02, 2.04, 2.02, 2.03, 2.02]
    ev = evidence("ratio", ["a", "b"], [{"a": [j * x for j, x in zip(jitter, base, strict=True)], "b": base}],
                  items="windows", block=1)
    c = claim("a is twice b", "s", "p", "a / b", ev, 2.0, "above")
    # Unpaired, items from 1 to 8 would make the ratio's interval wide; paired, it is as narrow as the jitter.
    assert c["verdict"] == HELD and c["result"]["interval"][1] - c["result"]["interval"][0] < 0.03


def test_equivalence_claim_is_two_sided():
    inside = claim("close", "s", "p", "d", _seeds([0.01, -0.01, 0.0]), (-0.05, 0.05), "within")
    assert inside["verdict"] == HELD and "(equivalence)" in inside["test"]
    # A large improvement is not "costs nothing" either: the one-sided "< 0.05" would have held here.
    far_below = claim("close", "s", "p", "d", _seeds([-0.3, -0.31, -0.29]), (-0.05, 0.05), "within")
    assert far_below["verdict"] == NOT_HELD
    straddle = claim("close", "s", "p", "d", _seeds([0.0, 0.1, 0.05]), (-0.05, 0.05), "within")
    assert straddle["verdict"] == INCONCLUSIVE
    with pytest.raises(ValueError, match="lo < hi"):
        claim("close", "s", "p", "d", _seeds([0.0, 0.1]), (0.05, -0.05), "within")


def test_unmeasurable_interval_is_not_testable_with_the_reason():
    one_item = claim("x", "s", "p", "e", _items([3.0]), 2.0, "above")
    assert one_item["verdict"] == NOT_TESTABLE and not one_item["result"]["se_measured"]
    assert "need 2" in one_item["result"]["reason"]
    assert claim("x", "s", "p", "e", _seeds([float("nan"), 1.0]), 1.0, "above")["verdict"] == NOT_TESTABLE
    with pytest.raises(ValueError, match="direction must be"):
        claim("x", "s", "p", "e", _seeds([1.0, 2.0]), 1.0, "sideways")


def test_premise_not_met_makes_the_claim_not_testable():
    c = claim("x", "s", "p", "e", _seeds([5.0, 5.1]), 2.0, "above",
              premise=("baseline has outliers", _seeds([1.0, 1.1]), 10.0, "above"))
    assert c["verdict"] == NOT_TESTABLE and "premise not met" in c["ours"]
    assert recompute_verdict(c) == NOT_TESTABLE


def test_zero_width_interval_is_not_testable():
    # Accuracy 1.0 in every seed: a ceiling, where the statistic cannot move, whichever side the threshold is.
    for thr, direction in ((0.5, "above"), (1.5, "above"), (0.5, "below")):
        c = claim("x", "s", "p", "e", _seeds([1.0, 1.0, 1.0]), thr, direction)
        assert c["verdict"] == NOT_TESTABLE and "zero width" in c["result"]["reason"]
        assert recompute_verdict(json.loads(json.dumps(c))) == NOT_TESTABLE


def test_recompute_verdict_from_the_json_alone():
    claims = [claim("x", "s", "p", "e", _items([2.1, 2.11, 2.09, 2.1, 2.12, 2.1]), 2.0, "above"),
              claim("x", "s", "p", "e", _seeds([0.9, 1.0, 1.1]), 0.5, "below"),
              claim("x", "s", "p", "e", _items([0.5, 4.0, 1.0, 3.5], block=None), 2.0, "above")]
    for c in claims:
        stored = json.loads(json.dumps(c))
        assert recompute_verdict(stored) == c["verdict"]
    # The stored values decide: editing them changes the recomputed verdict.
    stored = json.loads(json.dumps(claims[0]))
    stored["data"]["per_seed"][0]["x"] = [1.0, 1.01, 0.99, 1.0, 1.02, 1.0]
    assert recompute_verdict(stored) == NOT_HELD
    stored["data"]["per_seed"][0]["x"] = [1.0] * 6  # every item the same: zero width
    assert recompute_verdict(stored) == NOT_TESTABLE


def test_evidence_rounds_values_and_rejects_missing_columns():
    ev = evidence("diff", ["a", "b"], [{"a": [1.23456789, 2.0], "b": [1.0, 1.0]}], items="windows")
    assert ev["per_seed"][0]["a"] == [1.23457, 2.0]
    with pytest.raises(ValueError, match="columns \\['b'\\] missing"):
        evidence("diff", ["a", "b"], [{"a": [1.0, 2.0]}], items="windows")


def test_seed_stats_mean_std_and_nonfinite():
    st = seed_stats([1.0, 2.0, 3.0])
    assert st["mean"] == pytest.approx(2.0) and st["std"] == pytest.approx(1.0) and st["n"] == 3
    assert seed_stats([1.0, float("inf")])["n"] == 1
    assert seed_stats([])["mean"] is None


def test_fmt_stat_cells():
    from attnlab.experiments.base import fmt_stat

    assert fmt_stat(seed_stats([1.0, 2.0, 3.0])) == "2 ± 1"
    assert fmt_stat(seed_stats([0.5])) == "0.5"
    assert fmt_stat(seed_stats([])) == "–"


def test_every_name_of_the_frame_stays_importable_from_base():
    """base.py re-exports what moved out (verdicts.py, seedstats.py): the same objects; no caller breaks."""
    from attnlab.experiments import base, seedstats, verdicts

    assert all(hasattr(base, name) for name in base.__all__)
    assert base.seed_stats is seedstats.seed_stats and base.fmt_stat is seedstats.fmt_stat
    assert base.claim is verdicts.claim and base.recompute_verdict is verdicts.recompute_verdict


@dataclass(frozen=True)
class _Cfg:
    a: int = 1
    seeds: tuple[int, ...] = (0,)


def test_parts_reuse_same_config_and_recompute_changed(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"v": len(calls)}

    p = Parts(tmp_path, _Cfg())
    assert p.get("seed0/softmax", work) == {"v": 1}
    p2 = Parts(tmp_path, _Cfg())
    assert p2.get("seed0/softmax", work) == {"v": 1} and len(calls) == 1
    assert p2.reused == ["seed0/softmax"]
    p3 = Parts(tmp_path, _Cfg(a=2))
    assert p3.get("seed0/softmax", work) == {"v": 2} and p3.computed == ["seed0/softmax"]
    stored = json.loads(next((tmp_path / "parts").glob("*.json")).read_text())
    assert stored["key"] == "seed0/softmax"


def test_parts_written_in_an_older_format_are_recomputed(tmp_path, monkeypatch):
    from attnlab.experiments import base

    calls = []
    Parts(tmp_path, _Cfg()).get("k", lambda: calls.append(1) or {"v": 1})
    monkeypatch.setattr(base, "PART_FORMAT", base.PART_FORMAT + 1)
    p = Parts(tmp_path, _Cfg())
    p.get("k", lambda: calls.append(1) or {"v": 2})
    assert p.computed == ["k"] and len(calls) == 2


def test_start_validates_before_any_part_and_times_the_run(tmp_path):
    def refuse(config: _Cfg) -> None:
        raise ConfigError("bad config")

    with pytest.raises(ConfigError, match="bad config"):
        start(_Cfg(), tmp_path / "run", refuse)
    assert not (tmp_path / "run").exists()
    out_dir, parts = start(_Cfg(), str(tmp_path / "run"), lambda config: None)
    assert out_dir == tmp_path / "run" and parts.dir == out_dir / "parts"
    parts.get("k", lambda: {"v": 1})
    timings = parts.timings()
    assert set(timings) == {"total", "part k"} and timings["total"] >= timings["part k"] >= 0


@dataclass(frozen=True)
class _Arms:
    variants: tuple[str, ...] = ("a",)
    seeds: tuple[int, ...] = (0,)


def test_check_fields_names_unknown_choices_and_needs_a_seed():
    check_fields(_Arms(), choices=("variants", {"a": 1, "b": 2}))
    with pytest.raises(ConfigError, match=r"^test_experiments_base: unknown variants \['c'\]; choose"):
        check_fields(_Arms(variants=("a", "c")), choices=("variants", {"a": 1, "b": 2}))
    with pytest.raises(ConfigError, match=r"unknown variants \(none given\); choose from a, b"):
        check_fields(_Arms(variants=()), choices=("variants", ("a", "b")))
    with pytest.raises(ConfigError, match=r"_Arms.seeds = \(\) is not valid"):
        check_fields(_Arms(seeds=()))  # a common rule: no study runs without a seed
    with pytest.raises(TypeError, match="_Arms has no field 'arms'"):
        check_fields(_Arms(), choices=("arms", ("a",)))


def test_choose_preset_errors_and_seed_override():
    presets = {"smoke": _Cfg(), "quick": _Cfg(a=3)}
    assert choose_preset(presets, "quick", seeds=3).seeds == (0, 1, 2)
    with pytest.raises(ConfigError, match="unknown preset 'huge'; choose one of smoke, quick"):
        choose_preset(presets, "huge")
    with pytest.raises(ConfigError, match="--seeds must be a positive integer"):
        choose_preset(presets, "smoke", seeds=0)


def test_unknown_study_lists_valid_names(tmp_path):
    with pytest.raises(ConfigError, match="unknown study 'nope'; choose one of: offbyone"):
        study_module("nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        run_study("offbyone", "galactic", tmp_path)


def test_cli_unknown_study_is_one_line_error(capsys):
    from attnlab.cli import main

    assert main(["run", "nope", "--preset", "smoke", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'nope'" in err and "offbyone" in err
