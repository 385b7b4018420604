"""`attnlab compare` part 1: small GPTs trained from scratch on Bigram-Backcopy, one per attention arm."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnlab.experiments.compare import PRESETS, run
from attnlab.experiments.compare.scratch import build, run_scratch
from attnlab.experiments.compare.scratch_claims import make_claims
from attnlab.experiments.compare.scratch_config import SCRATCH_PRESETS
from attnlab.experiments.verdicts import HELD, NO_VERDICT, NOT_TESTABLE, recompute_verdict

TINY = replace(SCRATCH_PRESETS["smoke"], arms=("softmax", "softmax1", "gated"), workers=1)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scratch")
    return out, run(replace(PRESETS["smoke"], part="scratch", scratch=TINY), out, progress=False)


def test_arms_share_every_initial_weight_with_the_control() -> None:
    control = build(TINY, "softmax", 3).state_dict()
    for arm in ("softmax1", "sinks", "gated", "softmax1+gated", "softpick", "clipped"):
        own = build(TINY, arm, 3).state_dict()
        shared = [k for k in own if k in control]
        assert len(shared) == len(control)
        assert all(torch.equal(own[k], control[k]) for k in shared), arm
    assert not torch.equal(build(TINY, "softmax", 4).state_dict()["wte.weight"], control["wte.weight"])


def test_results_hold_part1_with_seeds_arms_and_the_issue_keys(scratch: tuple[Path, dict]) -> None:
    out, _ = scratch
    doc = json.loads((out / "results.json").read_text())
    s = doc["scratch"]
    assert s["seeds"] == [0, 1] and [a["name"] for a in s["arms"]] == list(TINY.arms)
    assert s["task"]["vocab"] == TINY.vocab and len(s["task"]["triggers"]) == TINY.n_triggers
    for arm in s["arms"]:
        for key in ("first_token_dormant", "first_token_active", "null_sink_mass"):
            iv = arm["metrics"][key]
            assert set(iv) >= {"value", "lo", "hi"} and "over 2 seeds" in iv["method"]
        assert len(arm["sink_curve"]["0"]) == TINY.steps // TINY.curve_every + 1
        assert len(arm["heads_dormant"]) == TINY.n_layers
    arms = {a["name"]: a for a in s["arms"]}
    for name in ("softmax", "gated"):  # rows sum to 1: exactly 0, not rounding
        null = arms[name]["metrics"]["null_sink_mass"]
        assert null["value"] == 0.0 == null["hi"]
    assert arms["softmax1"]["metrics"]["null_sink_mass"]["value"] > 0.01
    assert s["premise"]["kind"] == "count" and len(s["premise"]["values"]) == 2


def test_smoke_claims_replay_and_show_no_verdict(scratch: tuple[Path, dict]) -> None:
    out, _ = scratch
    doc = json.loads((out / "results.json").read_text())
    primary = [c for c in doc["claims"] if c.get("primary")]
    assert {c["arm"] for c in primary} == {"softmax", "softmax1", "gated"}
    for c in doc["claims"]:
        assert c["part"] == "scratch" and c["verdict"] == NO_VERDICT and recompute_verdict(c) == NO_VERDICT
    html = (out / "compare.html").read_text()
    assert "Part 1: from scratch" in html and "Smoke run: plumbing only" in html and ">held<" not in html


def test_a_rerun_reuses_every_part_and_two_workers_give_the_same_numbers(scratch: tuple[Path, dict],
                                                                          tmp_path: Path) -> None:
    out, doc = scratch
    again = run(replace(PRESETS["smoke"], part="scratch", scratch=TINY), out, progress=False)
    assert again["parts"]["computed"] == [] and len(again["parts"]["reused"]) == 6
    two, _ = run_scratch(replace(TINY, arms=("softmax1",), workers=2), tmp_path, progress=False)
    one = doc["scratch"]["items"]["softmax1"]
    assert two["softmax1"][0]["items"]["first_token_dormant"] == one["0"]["first_token_dormant"]
    assert two["softmax1"][1]["items"]["int8_damage"] == one["1"]["int8_damage"]


def _fake(values: dict[str, list[float]]) -> dict:
    """Results of 5 seeds x 4 sequences whose first-token attention at dormant queries is `values`."""
    keys = ("first_token_active", "row_deficit", "resid_peak", "value_drain", "massive_tok0", "massive_rest",
            "kurtosis_token", "kurtosis_tok0", "int8_damage", "loss", "loss_excess", "backcopy_acc")
    out = {}
    for arm, per_seed in values.items():
        out[arm] = {s: {"items": {"first_token_dormant": [v + 0.001 * i for i in range(4)],
                                  **{k: [1.0 + 0.01 * s + 0.001 * i for i in range(4)] for k in keys}}}
                    for s, v in enumerate(per_seed)}
    return out


def test_the_premise_decides_whether_part1_can_answer() -> None:
    grown = _fake({"softmax": [0.5, 0.45, 0.55, 0.48, 0.52], "softmax1": [0.02, 0.03, 0.01, 0.02, 0.04]})
    claims = {(c["arm"], c["metric"]): c for c in make_claims(grown, [0, 1, 2, 3, 4], smoke=False)}
    assert claims[("softmax", "first_token_dormant")]["verdict"] == HELD
    assert claims[("softmax1", "first_token_dormant")]["verdict"] == HELD
    # the loss difference is 0 in every seed here (identical fake losses): zero width, out of the family
    assert claims[("softmax1", "loss")]["verdict"] == NOT_TESTABLE
    assert claims[("softmax1", "first_token_dormant")]["result"]["holm"]["family"] == 2
    none = _fake({"softmax": [0.1, 0.45, 0.2, 0.1, 0.5], "softmax1": [0.02, 0.03, 0.01, 0.02, 0.04]})
    for c in make_claims(none, [0, 1, 2, 3, 4], smoke=False):
        if c["arm"] != "softmax":
            assert c["verdict"] == NOT_TESTABLE and "in 2 of 5 seeds, needs 4" in c["result"]["reason"]
            assert recompute_verdict(c) == NOT_TESTABLE


def test_one_seed_gives_effects_without_verdicts() -> None:
    one = _fake({"softmax": [0.5], "softmax1": [0.02]})
    for c in make_claims(one, [0], smoke=False):
        assert c["verdict"] == NO_VERDICT and "training variance unmeasured" in c["result"]["reason"]


def test_a_diverged_arm_keeps_its_row_and_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnlab.experiments.compare import scratch as scratch_module

    real = scratch_module._loss

    def poisoned(model, x, y):  # noqa: ANN001, ANN202
        loss = real(model, x, y)
        return loss * math.nan if model.config.normalizer == "softmax1" else loss

    monkeypatch.setattr(scratch_module, "_loss", poisoned)
    doc = run(replace(PRESETS["smoke"], part="scratch", scratch=replace(TINY, seeds=(0,), arms=("softmax",
                                                                                              "softmax1"))),
              tmp_path, progress=False)
    arms = {a["name"]: a for a in doc["scratch"]["arms"]}
    assert arms["softmax1"]["diverged"]["0"]["step"] == 0 and arms["softmax1"]["metrics"] == {}
    assert arms["softmax"]["metrics"]["first_token_dormant"]["value"] >= 0
    assert "Diverged, left out of every number: softmax1 (seed 0)" in (tmp_path / "compare.html").read_text()
