"""Integration tier on tiny random Hugging Face models: estimators against exact twins, ablations,
quantization, the report end to end, and bad input. The real-model tests are marked realmodel."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from attnlab.data.tokenizers import ByteTokenizer
from attnlab.diagnose import lipschitz as L
from attnlab.diagnose import sensitivity as S
from attnlab.diagnose._forward import block_output, residual_stream, twice_differentiable
from attnlab.diagnose.ablate import ablate, ablation_curves
from attnlab.diagnose.quantize import fake_quant, fake_quantize, quantization_cost
from attnlab.errors import ConfigError, DataError, ModelError, ModelNotFoundError
from attnlab.models.adapter import from_hf


def tiny(layers: int = 2, d: int = 16, heads: int = 2, kv: int = 1, init: float = 0.2, seed: int = 0,
         dtype: torch.dtype = torch.float64, context: int = 64):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=context,
                      initializer_range=init, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval().to(dtype)
    return from_hf(model, ByteTokenizer(), f"tiny-{layers}x{d}", "memory")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return tiny()


@pytest.fixture(scope="module")
def ids(lm):
    return lm.encode("over the hills!")  # 15 byte tokens


# -- partial forwards -------------------------------------------------------------------------------------


def test_block_output_matches_full_forward_and_leaves_no_hooks(lm, ids):
    _, hidden = lm.forward_embeds(lm.embed(ids), output_hidden=True)
    for i in range(lm.n_layers):
        assert torch.allclose(block_output(lm, lm.embed(ids), stop=i), hidden[i + 1])
        x = hidden[i] * 1.1
        ref = block_output(lm, lm.embed(ids), stop=i, start=i, x=x)
        assert not torch.allclose(ref, hidden[i + 1])  # the substitution took effect
    stream = residual_stream(lm, ids)
    assert len(stream) == lm.n_layers + 1 and all(torch.allclose(a, b) for a, b in zip(stream, hidden))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


# -- over-squashing ---------------------------------------------------------------------------------------


def test_sensitivity_estimator_within_10_percent_of_exact_jacobian():
    model = tiny(d=32, heads=4, kv=2)
    ids = model.encode("tiny jacobian")
    exact = S.sensitivity_exact(model, ids)
    est = S.sensitivity_profile(model, ids, n_probes=128, seed=0)
    assert est.shape == exact.shape == (ids.shape[1],)
    assert float(((est - exact).abs() / exact).max()) < 0.10


def test_collapse_probe_lengths_and_tokens(lm):
    out = S.collapse_probe(lm, [2, 4, 8])
    assert out["n"] == [2, 4, 8] and out["tokens"] == [[3, 4], [5, 6], [9, 10]]
    assert all(d > 0 for d in out["distance"]) and all(0 < r for r in out["relative"])
    with pytest.raises(ConfigError, match="beyond .* context"):
        S.collapse_probe(lm, [200])


# -- Lipschitz --------------------------------------------------------------------------------------------


def test_power_iteration_within_10_percent_of_exact_spectral_norm(lm, ids):
    embeds = lm.embed(ids[:, :8]).detach()
    last = lm.n_layers - 1
    with twice_differentiable():
        exact = L.spectral_norm_exact(lambda e: block_output(lm, e, stop=last), embeds)
    est = L.model_lipschitz(lm, ids[:, :8], n_iter=20)
    assert est <= exact * (1 + 1e-6)  # power iteration approaches sigma_max from below
    assert est == pytest.approx(exact, rel=0.10)
    blocks = L.block_lipschitz(lm, ids[:, :8], n_iter=20)
    _, hidden = lm.forward_embeds(embeds, output_hidden=True)
    with twice_differentiable():
        for i, b in enumerate(blocks):
            ex = L.spectral_norm_exact(lambda x, i=i: block_output(lm, embeds, stop=i, start=i, x=x),
                                       hidden[i].detach())
            assert b == pytest.approx(ex, rel=0.10)


def test_power_law_fit_and_lipschitz_vs_length(lm, ids):
    fit = L.fit_power_law([4, 8, 16, 32], [3 * n ** 0.25 for n in (4, 8, 16, 32)])
    assert fit["exponent"] == pytest.approx(0.25, rel=1e-12) and fit["coefficient"] == pytest.approx(3.0)
    res = L.lipschitz_vs_length(lm, ids, [4, 8], n_iter=3)
    assert res["n"] == [4, 8] and len(res["value"]) == 2 and res["exponent"] is not None
    with pytest.raises(ValueError, match=r"outside 1\.\.15"):
        L.lipschitz_vs_length(lm, ids, [4, 99])
    with pytest.raises(ValueError, match="two distinct lengths"):
        L.fit_power_law([4, 4], [1.0, 2.0])


# -- ablations --------------------------------------------------------------------------------------------


def test_no_skip_collapses_while_the_full_model_does_not():
    # Small init: near-uniform causal attention, Dong et al.'s setting. Checked robust over seeds 0-3.
    model = tiny(layers=12, d=32, heads=4, kv=4, init=0.005, dtype=torch.float32, seed=1)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    curves = ablation_curves(model, ids, ["full", "no_skip"])
    no_skip, full = curves["no_skip"]["ratio"], curves["full"]["ratio"]
    assert min(no_skip[:11]) < 0.05  # collapsed within 10 blocks
    assert no_skip[-1] < 0.05
    assert min(full) > 0.5


def test_ablations_match_their_definitions_and_are_undone(lm, ids):
    before = lm.logits(ids)
    full = residual_stream(lm, ids)
    with ablate(lm, "no_skip") as n:
        no_skip = residual_stream(lm, ids)
    assert n == lm.n_layers
    assert torch.allclose(no_skip[1], full[1] - full[0])  # block 0: output minus input
    with ablate(lm, "no_mlp"):
        no_mlp = lm.logits(ids)
    saved = [lm.mlp(i).down_proj.weight.clone() for i in range(lm.n_layers)]
    with torch.no_grad():
        for i in range(lm.n_layers):
            lm.mlp(i).down_proj.weight.zero_()  # the twin: an MLP whose output is zero
        zeroed = lm.logits(ids)
        for i in range(lm.n_layers):
            lm.mlp(i).down_proj.weight.copy_(saved[i])
    assert torch.allclose(no_mlp, zeroed)
    assert torch.equal(lm.logits(ids), before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())
    with pytest.raises(ValueError, match="unknown ablation"):
        with ablate(lm, "no_attention"):
            pass


# -- quantization -----------------------------------------------------------------------------------------


def test_fake_quantize_is_on_the_int8_grid_within_half_a_step():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = fake_quantize(x)
    scale = x.abs().max() / 127
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-9) and steps.abs().max() <= 127
    assert float((q - x).abs().max()) <= float(scale) / 2 + 1e-12
    assert torch.equal(fake_quantize(torch.zeros(3)), torch.zeros(3))


def test_fake_quant_swaps_linears_keeps_tied_embeddings_and_restores(lm, ids):
    emb = lm.model.get_input_embeddings().weight
    assert lm.model.lm_head.weight is emb  # tied
    emb_before = emb.detach().clone()
    before = lm.logits(ids)
    with fake_quant(lm.model) as n:
        assert n == 7 * lm.n_layers + 1  # q, k, v, o, gate, up, down per block + lm_head
        assert torch.equal(lm.model.get_input_embeddings().weight, emb_before)
        assert not torch.equal(lm.model.lm_head.weight, emb_before)
        during = lm.logits(ids)
    assert not torch.allclose(during, before)
    assert lm.model.lm_head.weight is emb and torch.equal(lm.logits(ids), before)
    cost = quantization_cost(lm, ids, modes=("w8a8", "w8"))
    assert set(cost) == {"scheme", "fp32", "w8a8", "w8"}
    assert cost["w8a8"]["delta_loss"] == pytest.approx(cost["w8a8"]["loss"] - cost["fp32"]["loss"])
    with pytest.raises(ValueError, match="unknown quantization mode"):
        quantization_cost(lm, ids, modes=("int4",))


# -- the report -------------------------------------------------------------------------------------------


def _tiny_config(**kw):
    from attnlab.diagnose.report import ReportConfig

    base = dict(max_tokens=24, quant_modes=("w8a8",), sensitivity_probes=2, collapse_max=8,
                lipschitz_iters=2, lipschitz_block_tokens=8, lipschitz_lengths=(4, 8))
    base.update(kw)
    return ReportConfig(**base)


def _check_section(m: dict, lm_, n_tokens: int) -> None:
    assert len(m["layers"]) == lm_.n_layers and m["tokens"]["n"] == n_tokens
    layer = m["layers"][0]
    assert len(layer["attention"]["entropy"]) == lm_.n_heads and layer["lipschitz"] > 0
    assert set(m["ablations"]) >= {"full", "no_mlp", "no_skip", "pure_attention"}
    assert len(m["ablations"]["no_skip"]["ratio"]) == lm_.n_layers + 1
    assert len(m["sensitivity"]["norm"]) == n_tokens and m["collapse_probe"]["n"] == [4, 8]
    assert set(m["timings_s"]) >= {"load", "forward", "capture", "metrics", "sensitivity", "lipschitz_blocks"}
    assert m["summary"]["norm_growth_per_layer"] > 0
    # The summary's activation keys are attnlab.diagnose.summary's, consistent with the per-layer entries:
    from attnlab.diagnose.summary import summarize

    s = m["summary"]
    assert set(s) >= set(summarize(lm_.run_with_cache(lm_.encode("abc"))[1]))
    assert s["kurtosis_max"] == pytest.approx(max(e["outliers"]["kurtosis_layer"] for e in m["layers"]))
    heads = [a for e in m["layers"] for a in e["attention"]["first_token"]]
    assert s["sink_rate"] == pytest.approx(sum(a > 0.3 for a in heads) / len(heads))
    assert s["resid_norm"] == pytest.approx([e["residual"]["mean"] for e in m["layers"]])
    assert s["null_sink_mass"] > -1e-5 and "summary" in m["timings_s"]


def _check_page(page: str, min_figures: int) -> None:
    assert page.count("data:image/png;base64,") >= min_figures
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", page)  # nothing to fetch: opens offline
    assert "<script" not in page


def test_report_end_to_end_on_a_tiny_model(tmp_path):
    from attnlab.diagnose.report import SCHEMA_VERSION, run_report

    model = tiny(dtype=torch.float32)
    rep = run_report(model, text="To be, or not to be, that is the question.", out=tmp_path,
                     progress=False, config=_tiny_config())
    raw = (tmp_path / "report.json").read_text()
    data = json.loads(raw)
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON
    assert data == json.loads(json.dumps(rep))  # what run_report returns is what it wrote
    assert data["schema_version"] == SCHEMA_VERSION and data["kind"] == "attnlab.report"
    assert data["provenance"]["config"]["max_tokens"] == 24 and "torch" in data["provenance"]["versions"]
    assert data["text"]["source"] == "string" and len(data["text"]["sha256"]) == 64
    _check_section(data["models"][0], model, 24)
    assert abs(data["models"][0]["summary"]["null_sink_mass"]) < 1e-5  # softmax: rows sum to 1
    page = (tmp_path / "report.html").read_text()
    _check_page(page, 12)
    assert "Side by side" not in page


@pytest.mark.slow
def test_report_puts_two_models_side_by_side(tmp_path):
    from attnlab.diagnose.report import run_report

    a, b = tiny(dtype=torch.float32), tiny(layers=3, seed=1, dtype=torch.float32)
    data = run_report([a, b], text="To be, or not to be, that is the question.", out=tmp_path,
                      progress=False, config=_tiny_config())
    assert [m["model"]["n_layers"] for m in data["models"]] == [2, 3]
    for m, lm_ in zip(data["models"], (a, b)):
        _check_section(m, lm_, 24)
    page = (tmp_path / "report.html").read_text()
    _check_page(page, 30)  # comparison + two model sections
    assert "Side by side" in page


def test_report_bad_input_fails_clearly(tmp_path):
    from attnlab.diagnose.report import run_report

    model = tiny(dtype=torch.float32)
    with pytest.raises(DataError, match="empty"):
        run_report(model, text="   ", out=None, progress=False, config=_tiny_config())
    with pytest.raises(ConfigError, match="beyond .*context of 64"):
        run_report(model, text="hello there", out=None, progress=False, config=_tiny_config(max_tokens=65))
    with pytest.raises(DataError, match="at least 2"):
        run_report(model, text="a", out=None, progress=False, config=_tiny_config())
    with pytest.raises(ModelNotFoundError, match="no model named"):
        run_report("no-such-model-xyz", text="hello", out=None, progress=False, config=_tiny_config())
    with pytest.raises(ConfigError, match="unknown report setting"):
        run_report(model, text="hello", out=None, progress=False, lipschitz_itters=3)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_report(model, text="hello there", out=tmp_path / "f", progress=False, config=_tiny_config())


def test_cli_errors_are_one_line(capsys, tmp_path):
    from attnlab.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["report", "no-such-model-xyz", "--out", str(tmp_path / "r")]) == 2
    assert "no model named" in capsys.readouterr().err
    assert main(["report", "--text", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["report", "--max-tokens", "1", "--out", str(tmp_path / "r")]) == 2
    assert "max_tokens must be" in capsys.readouterr().err


# -- the real model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2():
    from attnlab import load_model

    return load_model("smollm2-135m")


@pytest.mark.realmodel
def test_smollm2_residual_norm_grows_with_depth(smollm2):
    from attnlab.diagnose.metrics import cache_metrics, fitted_growth

    ids = smollm2.encode("To be, or not to be, that is the question: whether 'tis nobler in the mind to "
                         "suffer the slings and arrows of outrageous fortune")
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(ids)
    m = cache_metrics(cache, smollm2.n_layers)
    norms = [m["embeddings"]["residual"]["mean"]] + [e["residual"]["mean"] for e in m["layers"]]
    assert fitted_growth(norms, skip_first=1) > 1.0
    assert m["layers"][-1]["residual"]["mean"] > m["layers"][0]["residual"]["mean"]


@pytest.mark.realmodel
@pytest.mark.slow
def test_cli_report_on_smollm2(tmp_path, capsys):
    from attnlab.cli import main

    out = tmp_path / "rep"
    assert main(["report", "smollm2-135m", "--quick", "--max-tokens", "64", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["models"][0]["model"]["n_layers"] == 30 and len(data["models"][0]["layers"]) == 30
    assert data["models"][0]["tokens"]["n"] == 64
    assert data["text"]["source"] == "shakespeare"
    assert Path(out / "report.html").stat().st_size > 50_000
    assert "report.html" in capsys.readouterr().out


def test_full_curves_from_the_capture_match_an_unablated_pass(lm, ids):
    from attnlab.diagnose.metrics import cache_metrics
    from attnlab.diagnose.report import _full_curves

    with torch.no_grad():
        _, cache = lm.run_with_cache(ids)
    from_cache = _full_curves(cache_metrics(cache, lm.n_layers))
    direct = ablation_curves(lm, ids, ["full"])["full"]
    for key in ("ratio", "ratio_excl_first", "norm"):
        assert from_cache[key] == pytest.approx(direct[key], rel=1e-9)


def test_report_runs_on_attnlab_gpt():
    from attnlab.diagnose.report import run_report
    from attnlab.models.adapter import from_gpt
    from attnlab.models.gpt import GPT, GPTConfig

    gpt = GPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, context=64, normalizer="softmax1")).eval()
    model = from_gpt(gpt, "byte", "gpt-softmax1", "memory")
    rep = run_report(model, text="To be, or not to be, that is the question.", out=None,
                     progress=False, config=_tiny_config())
    _check_section(rep["models"][0], model, 24)
    assert rep["models"][0]["model"]["kind"] == "attnlab"
    assert rep["models"][0]["summary"]["null_sink_mass"] > 0.01  # softmax1's zero logit takes weight off


def test_a_model_with_nan_activations_is_one_clear_error_not_an_eigh_traceback(tmp_path):
    from attnlab.diagnose.report import run_report

    model = tiny(dtype=torch.float32)
    with torch.no_grad():
        model.model.model.layers[1].mlp.down_proj.weight[0, 0] = math.nan  # NaN from layer 1 on
    expected = (r"computes non-finite activations on this text \(first at blocks\.1\.hook_resid_post; loss "
                r"nan\), .*check the model's weights")
    with pytest.raises(ModelError, match=expected):
        run_report(model, text="To be, or not to be, that is the question.", out=tmp_path,
                   progress=False, config=_tiny_config())
    assert not (tmp_path / "report.json").exists()


def test_spectral_metrics_of_non_finite_activations_are_nan_not_a_traceback():
    from attnlab.diagnose.uniformity import effective_rank, singular_values, stable_rank, uniformity_summary

    x = torch.randn(6, 4, dtype=torch.float64)
    x[2, 1] = math.nan
    assert torch.isnan(singular_values(x)).all()  # eigvalsh raised "failed to converge" on this
    assert math.isnan(effective_rank(x)) and math.isnan(stable_rank(x))  # not 1.0, a plausible rank
    summary = uniformity_summary(x)
    assert math.isnan(summary["effective_rank"]) and math.isnan(summary["stable_rank"])
