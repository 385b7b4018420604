"""In a notebook: `attnlab.report(...)`, `attnlab.attention_pattern(...)` and `stream_eval(...)` return
objects that render inline (`_repr_html_`), self-contained (no http(s) src or href), with their key
numbers."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import torch
from _tiny_hub import save_folder, words

import attnlab
from attnlab.errors import ConfigError
from attnlab.present import fmt_num

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory, one_thread: None):  # noqa: ANN201
    return attnlab.load_model(save_folder(tmp_path_factory.mktemp("nb") / "tiny-llama"))


@pytest.fixture(scope="module")
def rep(lm):  # noqa: ANN201
    # The smallest probes that still fill every section of the page (the page costs seconds to draw).
    return attnlab.report(lm, text=words(60), max_tokens=24, quick=True, progress=False, sensitivity_probes=1,
                          lipschitz_iters=1, lipschitz_lengths=(8, 16), collapse_max=8)


@pytest.mark.slow  # drawing the page's figures takes ~10 s on 2 cores
def test_report_shows_inline_as_the_self_contained_page(rep) -> None:
    page = rep.html()
    inline = rep._repr_html_()
    assert inline.startswith("<iframe srcdoc=") and html.unescape(inline).count(page) == 1
    for text in (page, inline):
        assert not EXTERNAL.search(text), EXTERNAL.search(text)
    assert "data:image/png;base64," in page  # the figures travel inside the page
    summary = rep["models"][0]["summary"]
    assert rep.summaries["tiny-llama"] is summary
    for value in (summary["loss_nats"], summary["sink_rate"], summary["kurtosis_max"]):
        assert fmt_num(value, 4) in page
    assert "tiny-llama" in page and "24 tokens" in repr(rep)


@pytest.mark.slow
def test_report_to_json_and_save(rep, tmp_path: Path) -> None:
    doc = rep.to_json()
    assert doc["kind"] == "attnlab.report" and doc["models"][0]["tokens"]["n"] == 24
    json.dumps(doc, allow_nan=False)  # strict JSON, as report.json
    out = rep.save(tmp_path / "r")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temporary left
    assert json.loads((out / "report.json").read_text()) == doc
    assert (out / "report.html").read_text(encoding="utf-8") == rep.html()


def test_report_takes_placement_only_for_models_it_loads(lm) -> None:
    with pytest.raises(ConfigError, match="loaded already: pass its name instead"):
        attnlab.report(lm, text=words(20), max_tokens=8, device="cpu")


def test_attention_pattern_of_one_head_and_of_their_mean(lm) -> None:
    text = words(10)
    pat = attnlab.attention_pattern(lm, text, layer=-1, head=2)
    assert pat.layer == 1 and pat.head == 2 and pat.tokens == text.split()
    w = pat.weights
    assert w.shape == (10, 10)
    torch.testing.assert_close(w.sum(-1), torch.ones(10, dtype=torch.float64))
    assert torch.equal(w.triu(1), torch.zeros_like(w))  # causal: no query sees a later key
    _, cache = lm.run_with_cache(lm.encode(text), layers=[1])
    torch.testing.assert_close(w, cache["blocks.1.attn.pattern"][0, 2].double())
    mean = attnlab.attention_pattern(lm, text, layer=1)
    torch.testing.assert_close(mean.weights, cache["blocks.1.attn.pattern"][0].double().mean(0))
    shown = pat._repr_html_()
    # interactive and self-contained: inline data and script, a head selector, every head drawn small
    assert "<script>" in shown and "class='ap-data'" in shown and not EXTERNAL.search(shown)
    assert shown.count("<option value=") == 1 + 4 and shown.count("class='ap-cell'") == 4
    assert "<option value='2'>head 2</option>" in shown
    assert pat.heads.shape == (4, 10, 10) and torch.equal(pat.heads[2], w)
    assert pat._repr_png_().startswith(b"\x89PNG\r\n") and pat._repr_png_() == pat.png()  # non-HTML frontends
    s = pat.summary()
    assert fmt_num(s["entropy_mean"], 4) in shown and fmt_num(s["first_token"], 4) in shown
    assert "layer 1, head 2" in shown and "mean over heads" in mean._repr_html_()


def test_attention_pattern_fails_clearly(lm) -> None:
    with pytest.raises(ConfigError, match=r"layer 2 out of range: .* has layers 0..1"):
        attnlab.attention_pattern(lm, words(5), layer=2)
    with pytest.raises(ConfigError, match=r"head 4 out of range: .* heads 0..3"):
        attnlab.attention_pattern(lm, words(5), layer=0, head=4)
    with pytest.raises(ValueError, match="one head, got shape"):
        attnlab.diagnose.AttentionPattern(torch.ones(2, 3, 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 tokens for 3 keys"):
        attnlab.diagnose.AttentionPattern(torch.ones(3, 3) / 3, ["a", "b"])


def test_stream_eval_result_shows_inline(lm) -> None:
    from attnlab.stream import make_policy
    from attnlab.stream.eval import stream_eval

    res = stream_eval(lm, words(50), make_policy("sinks", sinks=2, window=8), tokens=40, mode="chunked",
                      chunk=8, progress=False, bin_size=10)
    assert isinstance(res, dict) and json.loads(json.dumps(res)) == res.to_json()  # still the plain dict
    shown = res._repr_html_()
    assert "data:image/png;base64," in shown and not EXTERNAL.search(shown)
    assert fmt_num(res["perplexity"], 4) in shown and res["policy"] in shown and "tiny-llama" in shown
