"""The oversquashing study: the copy tasks' matched control (same bit position, distance and length, inside
the trained range), the collapse probe run in bf16 itself, and claims measured from per-item values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _smoke_verdicts import judged

from attnlab.data import copy_first, copy_last
from attnlab.data.synthetic import BIT_FILL, BIT_ONE, BIT_QUERY
from attnlab.errors import ConfigError
from attnlab.experiments import oversquashing as osq


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("oversquashing")
    doc = osq.run(osq.PRESETS["smoke"], out, progress=False)
    return out, doc, json.loads((out / "results.json").read_text())


# -- the matched control ---------------------------------------------------------------------------------
def _bit_positions(inputs: torch.Tensor, labels: torch.Tensor, first: bool) -> torch.Tensor:
    """Where b sits, read from the tokens alone: the first (or last) bit token before the query."""
    is_bit = (inputs[:, :-1] == 0) | (inputs[:, :-1] == BIT_ONE)
    idx = torch.arange(is_bit.shape[1]).expand_as(is_bit)
    if first:
        return torch.where(is_bit, idx, is_bit.shape[1]).min(dim=1).values
    return torch.where(is_bit, idx, -1).max(dim=1).values


@pytest.mark.parametrize("L", [2, 4, 8])
def test_control_pair_puts_the_bit_at_the_same_position_and_distance(L):
    f, la = copy_first(64, L, seed=3, pad=L - 1), copy_last(64, L, seed=3, pad=L - 1)
    assert f.inputs.shape == la.inputs.shape == (64, 2 * L)
    pf, pl = _bit_positions(f.inputs, f.labels, True), _bit_positions(la.inputs, la.labels, False)
    assert bool((pf == L - 1).all()) and bool((pl == L - 1).all())
    T = f.seq_len
    assert bool((T - 1 - pf == L).all()) and bool((T - 1 - pl == L).all())  # distance to the query
    assert f.meta["bit_pos"] == la.meta["bit_pos"] == L - 1
    for d, before, after in ((f, BIT_FILL, BIT_ONE), (la, BIT_ONE, BIT_FILL)):
        assert torch.equal(d.inputs[:, L - 1], d.labels) and torch.equal(d.targets[:, -1], d.labels)
        assert bool((d.inputs[:, :L - 1] == before).all()) and bool((d.inputs[:, L:-1] == after).all())
        assert bool((d.inputs[:, -1] == BIT_QUERY).all())
    assert set(f.labels.tolist()) == set(la.labels.tolist()) == {0, 1}


def test_unpadded_copy_tasks_keep_the_papers_sequences():
    assert copy_first(1, 4, seed=0, pad=0).inputs.tolist() == copy_first(1, 4, seed=0).inputs.tolist()
    assert BIT_FILL not in copy_last(8, 6).inputs.tolist()[0]
    with pytest.raises(ValueError, match="pad must be a non-negative integer"):
        copy_first(2, 4, pad=-1)


def test_control_and_training_stay_inside_the_trained_lengths():
    for cfg in osq.PRESETS.values():
        L, longest = osq.control_length(cfg.train_lengths), max(cfg.train_lengths)
        assert L in cfg.train_lengths and 2 * L <= longest + 1  # control sequence length <= a trained one
        for task in osq.COPY_TASKS:
            for step in range(40):
                length = cfg.train_lengths[step % len(cfg.train_lengths)]
                pad = osq._train_pad(task, length, cfg, 0, step)
                assert 0 <= pad and length + pad <= longest
        # the control's own layout (L bits, pad L - 1) is one the training draws
        assert L - 1 <= longest - L


def test_control_needs_a_short_enough_trained_length():
    from dataclasses import replace

    with pytest.raises(ConfigError, match="matched control needs a trained length"):
        osq.validate(replace(osq.PRESETS["smoke"], train_lengths=(8,)))
    osq.validate(replace(osq.PRESETS["smoke"], train_lengths=(8,), tasks=("count_ones",)))  # no copy task


def test_smoke_stores_the_matched_control_of_both_tasks(smoke):
    _, _, saved = smoke
    cf, cl = (saved["results"]["tasks"][t]["control"] for t in osq.COPY_TASKS)
    for key in ("bit_pos", "distance", "seq_len", "length", "pad"):
        assert cf[key] == cl[key], key
    assert cf["seq_len"] <= max(saved["config"]["train_lengths"]) + 1
    control = saved["claims"][0]
    assert "distance and positions matched" in control["claim"]
    assert control["direction"] == "within" and control["threshold"] == list(osq.CONTROL_MARGINS)
    assert set(control["data"]["stat"]["args"]) == {"copy_first control", "copy_last control"}
    n = saved["config"]["test_samples"]
    assert all(len(v) == n for v in control["data"]["per_seed"][0].values())
    assert "length extrapolation" in saved["claims"][1]["claim"]


# -- bf16 collapse probe ----------------------------------------------------------------------------------
def test_bf16_probe_ran_in_bf16_and_differs_from_fp32(smoke):
    _, _, saved = smoke
    probe = saved["results"]["probe"]
    assert probe["collapse"]["dtype"] == "torch.float32"
    first = saved["config"]["collapse_pairs"][0]
    for pair, c in probe["collapse_bf16"].items():
        assert c["dtype"] == "torch.bfloat16", pair
        assert len(c["relative"]) == len(c["equal"]) == len(saved["config"]["collapse_lengths"])
    fp32, bf16 = probe["collapse"]["relative"], probe["collapse_bf16"][first]["relative"]
    assert all(math.isfinite(x) for x in bf16)
    assert fp32 != bf16  # an ignored cast would reproduce fp32's numbers exactly
    bf16_claim = saved["claims"][-1]
    assert "in bf16" in bf16_claim["claim"] and bf16_claim["threshold"] == 2.0 ** -8
    assert bf16_claim["data"]["per_seed"][0][bf16_claim["data"]["stat"]["args"][0]] == pytest.approx(
        [c["relative"][-1] for c in probe["collapse_bf16"].values()], rel=1e-3)


def test_collapse_probe_reports_dtype_and_exact_equality():
    from attnlab.diagnose.sensitivity import collapse_probe
    from attnlab.experiments.probes import wrap
    from attnlab.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layers=1, d_model=16, n_heads=2, context=64)).eval()
    lm = wrap(gpt, "tiny")
    out = collapse_probe(lm, [4, 8])
    assert out["dtype"] == "torch.float32" and out["equal"] == [False, False] and min(out["distance"]) > 0
    with torch.no_grad():  # no attention output: the last state sees only the last token, so a == b exactly
        for block in gpt.blocks:
            block.attn.o_proj.weight.zero_()
    gpt.to(torch.bfloat16)
    out = collapse_probe(lm, [4, 8])
    assert out["dtype"] == "torch.bfloat16" and out["equal"] == [True, True] and out["distance"] == [0.0, 0.0]


# -- claims -----------------------------------------------------------------------------------------------
def test_smoke_claims_are_measured_and_recompute(smoke):
    from attnlab.experiments.base import recompute_verdict

    _, _, saved = smoke
    assert len(saved["claims"]) == 5
    for c in saved["claims"]:
        res = c["result"]
        assert res["se_measured"] is True, (c["claim"], res.get("reason"))
        assert "bootstrap over" in res["method"] or "t interval over" in res["method"], res["method"]
        assert recompute_verdict(c) == c["verdict"], c["claim"]
        judged(c)  # the engine judged the numbers; the smoke run withheld the verdict
        if "premise" in res:
            assert res["premise"]["se_measured"] is True, c["claim"]
