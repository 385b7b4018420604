"""depth-vs-context: the per-shape learning-rate sweep and the convergence premise."""

from __future__ import annotations

import json
import math

import pytest
from _smoke_verdicts import judged

from attnlab.experiments import depth_vs_context as dvc
from attnlab.experiments.base import NOT_TESTABLE


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("dvc")
    dvc.run(dvc.PRESETS["smoke"], out, progress=False)
    return json.loads((out / "results.json").read_text())


def test_each_shape_keeps_the_rate_with_the_lowest_training_loss(smoke):
    config = dvc.PRESETS["smoke"]
    assert len(config.lrs) >= 2  # the smoke preset exercises the sweep
    for depth in config.depths:
        r = smoke["results"][str(depth)]
        for chosen, sweep in zip(r["chosen_lr"], r["sweep"], strict=True):
            assert set(sweep) == {f"{lr:g}" for lr in config.lrs}
            assert sweep[f"{chosen:g}"] == min(sweep.values())


def test_best_lr_never_picks_a_diverged_run():
    runs = [{"lr": 1e-2, "final_train_loss": math.nan}, {"lr": 1e-3, "final_train_loss": 2.0},
            {"lr": 3e-3, "final_train_loss": None}]
    assert dvc.best_lr(runs)["lr"] == 1e-3


def test_claims_rest_on_the_convergence_premise(smoke):
    for c in smoke["claims"]:
        premise = c["result"]["premise"]
        assert premise["threshold"] == dvc.CONVERGED_ACC and premise["data"]["stat"]["op"] == "min"
        assert c["result"]["se_measured"] is True
        assert "every shape converged" in premise["what"] and premise["verdict"] != "held"
    # 4 steps converge nothing: the premise fails, so the engine judges the claims not testable (the smoke
    # run then withholds every verdict: `judged` checks both)
    assert all(judged(c) == NOT_TESTABLE for c in smoke["claims"])


def test_full_preset_is_the_deciding_run():
    full = dvc.PRESETS["full"]
    assert len(full.lrs) >= 3 and full.steps >= 10 * dvc.PRESETS["quick"].steps
