"""`attnlab compare`: the real-model retrofit study, at its smoke preset on a tiny random HF Llama."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.cli import main
from attnlab.errors import ConfigError, DataError
from attnlab.experiments.compare import PRESETS, run
from attnlab.experiments.compare.analysis import METRICS, arm_diff, directional
from attnlab.experiments.compare.data import eval_windows
from attnlab.experiments.compare.measure import batched_nll

SMOKE = replace(PRESETS["smoke"], arms=("pretrained", "softmax", "softmax1", "gated"))
REQUIRED = ("ppl", "token0_attention", "sink_rate", "kurtosis_max", "max_abs_activation", "w8a8_delta_ppl",
            "a8_delta_ppl")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare")
    return out, run(SMOKE, out, progress=False)


def test_results_have_every_arm_and_metric_with_an_interval(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    on_disk = json.loads((out / "results.json").read_text())
    assert [a["name"] for a in on_disk["arms"]] == list(SMOKE.arms)
    for arm in on_disk["arms"]:
        for key in REQUIRED:
            iv = arm["metrics"][key]
            assert set(iv) >= {"value", "lo", "hi", "method", "n"}
            assert iv["lo"] <= iv["value"] <= iv["hi"] or math.isclose(iv["lo"], iv["hi"])
            assert "bootstrap over 6 windows" in iv["method"]
    assert on_disk["provenance"]["versions"]["torch"] == torch.__version__
    assert on_disk["config"]["arms"] == list(SMOKE.arms)


def test_metric_values_recompute_from_the_stored_window_items(smoke: tuple[Path, dict]) -> None:
    _, doc = smoke
    for arm in doc["arms"]:
        items = doc["items"][arm["name"]]["0"]
        nll = sum(items["nll"]) / len(items["nll"])
        assert arm["metrics"]["ppl"]["value"] == pytest.approx(math.exp(nll), rel=1e-12)
        t0 = sum(items["first_token_attn"]) / len(items["first_token_attn"])
        assert arm["metrics"]["token0_attention"]["value"] == pytest.approx(t0, rel=1e-12)


def test_softmax1_moves_mass_to_the_null_sink_and_softmax_does_not(smoke: tuple[Path, dict]) -> None:
    _, doc = smoke
    m = {a["name"]: a["metrics"] for a in doc["arms"]}
    assert abs(m["softmax"]["null_sink_mass"]["value"]) < 1e-6  # softmax rows sum to one
    assert m["softmax1"]["null_sink_mass"]["lo"] > 0.01


def test_gated_and_softmax_start_as_the_pretrained_model(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    parts = {p.stem: json.loads(p.read_text())["result"] for p in (out / "parts").glob("*.json")}
    pre = parts["pretrained-seed0"]["items"]["nll"]
    for arm in ("softmax", "gated"):
        assert parts[f"{arm}-seed0"]["nll_at_retrofit"] == pytest.approx(pre, abs=1e-6)
    assert parts["softmax1-seed0"]["nll_at_retrofit"] != pytest.approx(pre, abs=1e-6)


def test_saved_arm_loads_back_and_gives_the_measured_perplexity(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    lm = attnlab.load_model(out / "gated")
    assert lm.model.config.attnlab_retrofit["gated"] is True
    from attnlab.experiments.compare.data import token_streams

    _, held, _ = token_streams(lm.tokenizer, None, None)
    windows = eval_windows(held, SMOKE.eval_windows, SMOKE.eval_context)
    nll = batched_nll(lm, windows)
    gated = next(a for a in doc["arms"] if a["name"] == "gated")
    assert math.exp(sum(nll) / len(nll)) == pytest.approx(gated["metrics"]["ppl"]["value"], rel=1e-4)


def test_every_claim_has_a_measured_interval_and_a_computed_verdict(smoke: tuple[Path, dict]) -> None:
    _, doc = smoke
    assert doc["claims"]
    for c in doc["claims"]:
        assert c["verdict"] in ("held", "did not hold", "inconclusive")
        assert c["result"]["se_measured"] is True and "bootstrap" in c["result"]["method"]


def test_page_is_self_contained_with_the_answer_and_every_arm(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    html = (out / "compare.html").read_text()
    assert doc["question"] in html and "Against the same fine-tuning" in html
    for arm in SMOKE.arms:
        assert f">{arm}<" in html
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") >= 4


def test_rerun_reuses_every_part(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    again = run(SMOKE, out, progress=False)
    assert set(again["parts"]["reused"]) == {f"{a}-seed0" for a in SMOKE.arms}
    assert again["parts"]["computed"] == []
    assert again["arms"] == doc["arms"]


def test_directional_rule_and_paired_difference() -> None:
    assert directional({"lo": -2.0, "hi": -1.0}, 0.0, "below") == "held"
    assert directional({"lo": 1.0, "hi": 2.0}, 0.0, "below") == "did not hold"
    assert directional({"lo": -1.0, "hi": 2.0}, 0.0, "below") == "inconclusive"
    a = {"nll": [1.0, 2.0, 3.0, 4.0]}
    b = {"nll": [1.1, 2.1, 3.1, 4.1]}
    iv = arm_diff({0: a}, {0: b}, "ppl", "ratio")
    assert iv["hi"] < 1.0  # every window is better by the same amount: a paired interval sees it
    assert set(METRICS) >= set(REQUIRED)


def test_nan_loss_stops_that_arm_and_keeps_the_others(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    fit_module = importlib.import_module("attnlab.train.fit")  # the attribute attnlab.train.fit is fit()
    real = fit_module.causal_lm_loss

    def poisoned(model, x, y):  # noqa: ANN001, ANN202
        loss = real(model, x, y)
        unwrapped = getattr(model, "module", model)
        rec = getattr(unwrapped.config, "attnlab_retrofit", None) or {}
        return loss * float("nan") if rec.get("normalizer") == "softmax1" else loss

    monkeypatch.setattr(fit_module, "causal_lm_loss", poisoned)
    doc = run(replace(SMOKE, arms=("softmax", "softmax1"), save_models=False), tmp_path, progress=False)
    arms = {a["name"]: a for a in doc["arms"]}
    assert arms["softmax1"]["diverged"]["0"]["step"] == 0
    assert "loss became nan" in arms["softmax1"]["diverged"]["0"]["cause"]
    assert arms["softmax1"]["metrics"] == {} and arms["softmax"]["metrics"]["ppl"]["value"] > 0
    assert "Diverged: softmax1" in (tmp_path / "compare.html").read_text()


def test_bad_input_fails_clearly_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", "--arms", "softmax,quiet", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown arm(s) 'quiet'" in err and "softmax1+gated" in err
    assert main(["compare", "--steps", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--steps must be an integer in 1.." in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["compare", "--preset", "smoke", "--out", str(blocker)]) == 2
    assert str(blocker) in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_too_short_text_names_the_fix(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    with pytest.raises(DataError, match="too few for 6 evaluation windows"):
        run(replace(SMOKE, text=str(short)), tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="eval_windows must be >= 2"):
        run(replace(SMOKE, eval_windows=1), tmp_path / "out", progress=False)


def test_cli_flags_reach_the_config() -> None:
    import argparse

    from attnlab.experiments.compare.cli import config_from_args

    args = argparse.Namespace(preset="smoke", arms="softmax,gated", seeds=2, model=None, steps=7,
                              train_text=None, text=None, device="cpu", dtype="bfloat16")
    config = config_from_args(args)
    assert config.arms == ("softmax", "gated") and config.seeds == (0, 1) and config.steps == 7
    assert config.device == "cpu" and config.autocast == "bf16"

