"""`attnlab compare` part 2 (the retrofit) and the page, at the smoke preset on a tiny random HF Llama."""

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
from attnlab.experiments.compare.data import eval_windows
from attnlab.experiments.compare.measure import batched_nll, measure
from attnlab.experiments.verdicts import NO_VERDICT, recompute_verdict

SMOKE = replace(PRESETS["smoke"], arms=("pretrained", "softmax", "softmax1", "gated"), part="retrofit")
REQUIRED = ("ppl", "first_token_attn", "first_query_weight", "sink_rate", "null_sink_mass", "kurtosis_token",
            "kurtosis_pooled_ex0", "massive_tok0", "massive_rest", "int8_w8a8", "int8_static")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare")
    return out, run(SMOKE, out, progress=False)


def _arms(doc: dict) -> dict:
    return {a["name"]: a for a in doc["retrofit"]["arms"]}


def test_every_arm_has_metrics_after_training_and_at_step0(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    doc = json.loads((out / "results.json").read_text())
    arms = _arms(doc)
    assert list(arms) == list(SMOKE.arms) and "scratch" not in doc
    for name, arm in arms.items():
        for key in REQUIRED:
            iv = arm["metrics"][key]
            assert iv["lo"] <= iv["value"] <= iv["hi"] or math.isclose(iv["lo"], iv["hi"], abs_tol=1e-12)
            assert "bootstrap over 6 windows" in iv["method"]
        if name != "pretrained":
            assert set(arm["metrics_step0"]) >= set(REQUIRED)
    assert doc["provenance"]["versions"]["torch"] == torch.__version__


def test_arms_that_coincide_at_step0_share_the_pretrained_measurement(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    arms = _arms(doc)
    pre = arms["pretrained"]["metrics"]["ppl"]["value"]
    assert arms["softmax"]["step0_group"] == arms["gated"]["step0_group"] == "pretrained"
    assert arms["softmax"]["metrics_step0"]["ppl"]["value"] == pre
    assert arms["gated"]["metrics_step0"]["ppl"]["value"] == pre
    assert arms["softmax1"]["metrics_step0"]["ppl"]["value"] != pytest.approx(pre, rel=1e-6)
    stored = sorted(p.stem for p in (out / "parts").glob("step0-*.json"))
    assert stored == ["step0-pretrained", "step0-softmax1"]


def test_null_sink_mass_is_exactly_zero_without_a_null_and_positive_with_one(smoke: tuple[Path, dict]
                                                                            ) -> None:
    _, doc = smoke
    arms = _arms(doc)
    for name in ("pretrained", "softmax", "gated"):
        null = arms[name]["metrics"]["null_sink_mass"]
        assert null == {**null, "value": 0.0, "lo": 0.0, "hi": 0.0}
    assert arms["softmax1"]["metrics"]["null_sink_mass"]["lo"] > 0.01
    assert arms["softmax1"]["metrics"]["first_query_weight"]["value"] < 0.99  # query 0: sigmoid(s00), not 1
    assert arms["softmax"]["metrics"]["first_query_weight"]["value"] == pytest.approx(1.0, abs=1e-6)


def test_effects_separate_the_swap_from_training(smoke: tuple[Path, dict]) -> None:
    _, doc = smoke
    eff = doc["retrofit"]["effects"]["softmax1"]
    items = doc["retrofit"]["items"]
    step0 = doc["retrofit"]["items_step0"]
    # learned = trained - step 0; swap = step 0 - pretrained; both recompute from the stored window items
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    learned = mean(items["softmax1"]["0"]["first_token_attn"]) - mean(step0["softmax1"]["first_token_attn"])
    swap = mean(step0["softmax1"]["first_token_attn"]) - mean(step0["pretrained"]["first_token_attn"])
    # the stored items are rounded to 6 significant digits (stats.SIG_DIGITS)
    assert eff["learned"]["first_token_attn"]["value"] == pytest.approx(learned, abs=1e-7)
    assert eff["swap"]["first_token_attn"]["value"] == pytest.approx(swap, abs=1e-7)
    assert doc["retrofit"]["effects"]["gated"]["swap"]["first_token_attn"]["value"] == 0.0


def test_int8_damage_of_a_window_does_not_depend_on_the_other_windows(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    lm = attnlab.load_model(out / "gated")
    from attnlab.experiments.compare.data import token_streams

    _, held, _ = token_streams(lm.tokenizer, None, None)
    windows = eval_windows(held, 4, 24)
    every = measure(lm, windows, deficit=None)
    some = measure(lm, windows[1:3], deficit=None)
    assert some["int8_w8a8"] == pytest.approx(every["int8_w8a8"][1:3], abs=1e-12)



def test_measure_asks_summarize_for_what_it_reads_and_gets_the_full_calls_values(
        smoke: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    # measure asks summarize for SUMMARY_KEYS only (speed); a key it reads but does not ask for would be None.
    import attnlab.diagnose.summary as summary_mod

    out, _ = smoke
    lm = attnlab.load_model(out / "gated")  # the one arm the smoke run saves
    from attnlab.experiments.compare.data import token_streams

    _, held, _ = token_streams(lm.tokenizer, None, None)
    windows = eval_windows(held, 2, 24)
    subset = measure(lm, windows, deficit="null", quant=False)
    full = summary_mod.summarize
    monkeypatch.setattr(summary_mod, "summarize", lambda cache, n, keys=None, **kw: full(cache, n, **kw))
    assert measure(lm, windows, deficit="null", quant=False) == subset
    assert all(v is not None for k, v in subset.items() if k != "nll" and not k.startswith("int8"))

def test_saved_arm_loads_back_and_gives_the_measured_perplexity(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    lm = attnlab.load_model(out / "gated")
    assert lm.model.config.attnlab_retrofit["gated"] is True
    from attnlab.experiments.compare.data import token_streams

    _, held, _ = token_streams(lm.tokenizer, None, None)
    windows = eval_windows(held, SMOKE.eval_windows, SMOKE.eval_context)
    nll = batched_nll(lm, windows)
    assert math.exp(sum(nll) / len(nll)) == pytest.approx(_arms(doc)["gated"]["metrics"]["ppl"]["value"],
                                                          rel=1e-4)


def test_smoke_claims_store_their_data_and_show_no_verdict(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    doc = json.loads((out / "results.json").read_text())
    primary = [c for c in doc["claims"] if c.get("primary")]
    assert [c["metric"] for c in primary] == ["first_token_attn", "first_token_attn", "int8_w8a8", "ppl"]
    for c in doc["claims"]:
        assert c["verdict"] == NO_VERDICT and c["result"]["withheld"]
        assert recompute_verdict(c) == NO_VERDICT and c["data"]["per_seed"] and c["direction"]
    html = (out / "compare.html").read_text()
    assert "Smoke run: plumbing only" in html
    assert ">held<" not in html and ">did not hold<" not in html and ">inconclusive<" not in html


def test_page_is_self_contained_with_the_answer_and_every_arm(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    html = (out / "compare.html").read_text()
    assert doc["question"] in html and "the swap alone" in html and "at step 0" in html
    for arm in SMOKE.arms:
        assert f">{arm}<" in html
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") >= 5


def test_rerun_reuses_every_part(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    again = run(SMOKE, out, progress=False)
    assert again["parts"]["computed"] == []
    assert set(again["parts"]["reused"]) == {"step0-pretrained", "step0-softmax1", "softmax-seed0",
                                             "softmax1-seed0", "gated-seed0"}
    assert again["retrofit"]["arms"] == doc["retrofit"]["arms"]


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
    arms = _arms(doc)
    assert arms["softmax1"]["diverged"]["0"]["step"] == 0
    assert "loss became nan" in arms["softmax1"]["diverged"]["0"]["cause"]
    assert arms["softmax1"]["metrics"] == {} and arms["softmax"]["metrics"]["ppl"]["value"] > 0
    assert "Diverged, left out of every number: softmax1 (seed 0) stopped at step 0" in (
        tmp_path / "compare.html").read_text()


def test_bad_input_fails_clearly_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", "--arms", "softmax,quiet", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown arm(s) ['quiet']" in err and "softmax1+gated" in err and "softpick" in err
    assert main(["compare", "--steps", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--steps must be an integer in 1.." in capsys.readouterr().err
    assert main(["compare", "--arms", "softpick", "--out", str(tmp_path / "c")]) == 2
    assert "leaves part 2 (retrofit) with no arm" in capsys.readouterr().err
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
    with pytest.raises(DataError, match="calibration"):
        run(replace(SMOKE, calibration_windows=10**6), tmp_path / "out", progress=False)


def test_cli_flags_reach_both_parts(capsys: pytest.CaptureFixture) -> None:
    import argparse

    from attnlab.experiments.compare.cli import config_from_args

    args = argparse.Namespace(preset="quick", arms="softmax,gated,softpick", seeds=1, model=None, steps=7,
                              train_text=None, text=None, device="cpu", dtype="bfloat16", part=None)
    config = config_from_args(args)
    assert config.arms == ("softmax", "gated") and config.scratch.arms == ("softmax", "gated", "softpick")
    assert config.seeds == (0,) == config.scratch.seeds and config.steps == 7
    assert config.device == "cpu" == config.scratch.device and config.autocast == "bf16"
    assert "--seeds 1 gives effects without verdicts" in capsys.readouterr().err
