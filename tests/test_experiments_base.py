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
    Parts,
    choose_preset,
    claim,
    seed_stats,
    verdict,
)


def test_verdict_held_when_interval_clears_threshold():
    assert verdict([5.0, 5.2, 4.9], threshold=2.0, direction="above")["verdict"] == HELD
    assert verdict([0.1, 0.12, 0.09], threshold=0.5, direction="below")["verdict"] == HELD


def test_verdict_not_held_when_interval_on_wrong_side():
    assert verdict([1.0, 1.1, 0.9], threshold=2.0, direction="above")["verdict"] == NOT_HELD
    assert verdict([0.9, 1.0, 1.1], threshold=0.5, direction="below")["verdict"] == NOT_HELD


def test_verdict_inconclusive_when_spread_straddles_threshold():
    res = verdict([1.0, 3.0, 2.2], threshold=2.0, direction="above")
    assert res["verdict"] == INCONCLUSIVE
    lo, hi = res["interval"]
    assert lo < 2.0 < hi


def test_verdict_single_seed_uses_ten_percent_stand_in():
    # m = 2.1: 2.1 ± 0.42 straddles 2.0; m = 3.0: 3.0 ± 0.6 clears it.
    one = verdict([2.1], threshold=2.0, direction="above")
    assert one["verdict"] == INCONCLUSIVE and not one["se_measured"]
    assert verdict([3.0], threshold=2.0, direction="above")["verdict"] == HELD


def test_verdict_no_finite_values_is_inconclusive_and_bad_direction_raises():
    assert verdict([float("nan")], 1.0, "above")["verdict"] == INCONCLUSIVE
    with pytest.raises(ValueError, match="direction must be"):
        verdict([1.0], 1.0, "sideways")


def test_claim_computes_its_verdict_from_values():
    c = claim("x shrinks", "Someone 2024", "10 -> 1", "ratio", [4.0, 4.5, 5.0], threshold=2.0,
              direction="above")
    assert c["verdict"] == HELD and "ratio > 2" in c["rule"]
    c2 = claim("x shrinks", "Someone 2024", "10 -> 1", "ratio", [0.5, 0.6, 0.55], threshold=2.0,
               direction="above")
    assert c2["verdict"] == NOT_HELD


def test_seed_stats_mean_std_and_nonfinite():
    st = seed_stats([1.0, 2.0, 3.0])
    assert st["mean"] == pytest.approx(2.0) and st["std"] == pytest.approx(1.0) and st["n"] == 3
    assert seed_stats([1.0, float("inf")])["n"] == 1
    assert seed_stats([])["mean"] is None


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
