"""Every registered study but offbyone (tested on its own) at the smoke preset: valid JSON with provenance
and a claims section, its page and plots, resume, and the study-specific pieces (fits, rules)."""

from __future__ import annotations

import json
import math

import pytest
from _smoke_verdicts import judged

from attnlab.experiments import STUDIES, study_module
from attnlab.experiments.base import SMOKE_REASON
from attnlab.experiments.verdicts import NO_VERDICT, VERDICTS

SMOKE_STUDIES = [name for name in STUDIES if name != "offbyone"]


@pytest.fixture(scope="module", params=SMOKE_STUDIES)
def smoke(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name)
    module = study_module(name)
    doc = module.run(module.PRESETS["smoke"], out, progress=False)
    return name, out, doc


def test_smoke_results_are_valid_json_with_provenance_and_claims(smoke):
    name, out, _ = smoke
    saved = json.loads((out / "results.json").read_text())
    assert saved["study"] == name
    assert saved["provenance"]["versions"]["attnlab"] and saved["provenance"]["created"]
    assert saved["seeds"] == list(study_module(name).PRESETS["smoke"].seeds)
    assert saved["claims"], f"{name} has no claims section"
    for c in saved["claims"]:
        assert c["verdict"] == NO_VERDICT, c  # smoke is plumbing: nothing is judged
        assert c["source"] and c["paper"] and c["rule"]
    assert saved["timings"]["total"] > 0
    page = (out / "index.html").read_text()
    assert "Claims" in page and "data:image/png;base64," in page
    for fig in saved["figures"]:
        assert (out / fig["file"]).stat().st_size > 1000


def test_smoke_claims_have_measured_intervals_that_recompute_from_the_file(smoke):
    from attnlab.experiments.base import recompute_verdict

    name, out, _ = smoke
    saved = json.loads((out / "results.json").read_text())
    for c in saved["claims"]:
        res = c["result"]
        assert res["se_measured"] is True, (name, c["claim"], res.get("reason"))
        assert "t interval over" in res["method"] or "bootstrap over" in res["method"], res["method"]
        assert res["n"] >= 2 and res["interval"][0] <= res["interval"][1], c
        assert recompute_verdict(c) == c["verdict"] == NO_VERDICT, (name, c["claim"])
        judged(c)  # the engine still judged the numbers; the run withheld the verdict
        if c["direction"] == "within":  # "close to" / "costs nothing": margins fixed in code, two-sided
            assert len(c["threshold"]) == 2 and c["threshold"][0] < c["threshold"][1]


def test_streaming_keeps_per_window_nlls_of_every_policy(smoke):
    name, out, _ = smoke
    if name != "streaming":
        pytest.skip("streaming only")
    saved = json.loads((out / "results.json").read_text())
    cfg = study_module(name).PRESETS["smoke"]
    windows = saved["results"]["window_nll"]["matched"]
    assert {"window(32)", "sinks(1,31)", "sinks(4,28)", "chunked(32)", "memory(16,16)",
            "recompute(32)"} <= set(windows)
    assert all(len(v) == cfg.streams * (cfg.tokens // cfg.eval_window) for v in windows.values())
    starts = saved["results"]["text_starts"]
    assert len(set(starts)) == cfg.streams >= 2
    sink_table = saved["tables"][1]
    assert sink_table["columns"] == ["sinks"] + [str(s) for s in cfg.sink_counts]


def test_smoke_rerun_skips_finished_parts(smoke):
    name, out, first = smoke
    module = study_module(name)
    again = module.run(module.PRESETS["smoke"], out, progress=False)
    assert again["parts"]["computed"] == []
    assert sorted(again["parts"]["reused"]) == sorted(first["parts"]["computed"] + first["parts"]["reused"])
    assert again["claims"] == first["claims"]


def test_rank_collapse_study_keeps_losses_growth_and_the_bidirectional_control(smoke):
    from attnlab.diagnose.residual import fitted_growth

    name, out, _ = smoke
    if name != "rankcollapse":
        pytest.skip("rankcollapse only")
    saved = json.loads((out / "results.json").read_text())
    cfg, res = study_module(name).PRESETS["smoke"], saved["results"]
    # Every trained model's loss curve, final training loss and validation loss, per seed.
    for arch in cfg.architectures:
        for run, seed in zip(res["training"][arch], cfg.seeds):
            assert run["seed"] == seed and len(run["curve"]) == cfg.train_steps  # log_every=1
            assert run["final_train_loss"] == run["curve"][-1][1]
            assert 0 < run["val_loss"] < 2 * res["reference_losses"]["uniform"]
    assert any(f["file"] == "train_loss.png" for f in saved["figures"])
    assert [t for t in saved["tables"] if t["title"].startswith("Training")][0]["rows"]
    # Growth is fitted_growth of the stored block norms, window by window, at init and trained.
    for stage, depth in (("init", cfg.depth), ("trained", cfg.train_depth)):
        for runs in res["norm_growth"][stage].values():
            for run in runs:
                assert [len(n) for n in run["norms"]] == [depth] * cfg.windows
                assert run["growth"] == pytest.approx([fitted_growth(n) for n in run["norms"]], rel=1e-12)
    # Bidirectional pure attention reaches rounding; the causal one is far from it at the same depth.
    bi, causal = res["init_bidirectional"]["pure attention"], res["init"]["pure attention"]
    assert bi[-1]["mean"] < cfg.floor < 1e-3 < causal[-1]["mean"]
    claims = {c["claim"]: c for c in saved["claims"]}
    wanted = ["bidirectional, Dong et al.'s setting", "causal attention collapses more slowly",
              "skip connections prevent the collapse in trained models", "pre-LN: the residual norm grows",
              "post-LN: every block's output is normalised", "depth-scaled residual branches grow slower"]
    for w in wanted:
        found = [c for text, c in claims.items() if w in text]
        assert found, w
        assert all(c["result"]["se_measured"] for c in found), w
    post = [c for text, c in claims.items() if text.startswith("post-LN")]
    assert len(post) == 2 and all(c["direction"] == "within" for c in post)


def test_doubly_exponential_fit_recovers_rate():
    from attnlab.experiments.rankcollapse import doubly_exponential_fit

    # r_l = exp(-c k^l): log(-log r) = log c + l log k, so the fit must return k.
    ratios = [math.exp(-0.05 * 3.0 ** l) for l in range(6)]
    fit = doubly_exponential_fit(ratios, floor=1e-300)
    assert fit["rate"] == pytest.approx(3.0, rel=1e-9) and fit["r2_double"] == pytest.approx(1.0)
    assert fit["r2_single"] < fit["r2_double"]
    # A geometric (single exponential) decay is fitted better by the single exponential.
    geo = [0.5 ** l for l in range(1, 12)]
    fit = doubly_exponential_fit(geo, floor=1e-300)
    assert fit["r2_single"] == pytest.approx(1.0) and fit["r2_double"] < 1.0
    assert doubly_exponential_fit([0.5, 1e-20], floor=1e-12)["rate"] is None


def test_markdown_names_the_preset_command_and_verdicts(smoke):
    from attnlab.experiments.markdown import study_markdown

    name, out, doc = smoke
    md = study_markdown(out)
    assert f"attnlab run {name} --preset smoke" in md
    assert md.count(f"**{NO_VERDICT}**") == len(doc["claims"]) and "Smoke run: plumbing only" in md
    assert not any(f"**{v}**" in md for v in VERDICTS)


def test_smoke_run_is_plumbing_no_verdicts_and_a_banner(smoke):
    """Issue 22: a smoke run's results and page say it is plumbing, and no claim is judged."""
    from attnlab.experiments.base import recompute_verdict

    name, out, doc = smoke
    saved = json.loads((out / "results.json").read_text())
    assert saved["smoke"] is True and saved["preset"] == "smoke" and doc["smoke"] is True
    assert saved["claims"]
    for c in saved["claims"]:
        assert c["verdict"] == c["result"]["verdict"] == NO_VERDICT, (name, c["claim"])
        assert c["result"]["reason"] == SMOKE_REASON and SMOKE_REASON in c["ours"]
        assert recompute_verdict(c) == NO_VERDICT
    page = (out / "index.html").read_text()
    assert "Smoke run: plumbing only" in page and "no claim is judged" in page
    assert "class='smoke-banner'" in page and "color:#1f2328;background:#fff8c5" in page
    assert '<span class="v"' not in page  # no verdict badge at all
    for v in (*VERDICTS, NO_VERDICT):
        assert f">{v}<" not in page, v
