"""The lipschitz study: the attention-sublayer Lipschitz constant vs input scale (Kim et al. 2021), the power
iteration's convergence check, and the smoke preset's claims (measured, recomputable)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from _smoke_verdicts import judged

from attnlab.diagnose import lipschitz as L
from attnlab.diagnose._forward import twice_differentiable
from attnlab.errors import ConfigError
from attnlab.experiments import lipschitz as study
from attnlab.experiments.base import recompute_verdict
from attnlab.experiments.probes import wrap
from attnlab.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([list(b"To be, or not t")])


def one_layer(score: str) -> object:
    """A one-layer byte GPT at its (GPT-2) initialisation, float64: its block 0 attention is the map."""
    torch.manual_seed(0)
    kw = {"score": "l2"} if score == "l2" else {}
    gpt = GPT(GPTConfig(vocab_size=256, n_layers=1, d_model=16, n_heads=2, context=16, seed=0, **kw))
    return wrap(gpt.double().eval(), f"one layer {score}")


def test_dot_product_attention_grows_with_input_scale_while_l2_does_not():
    dot = L.attention_lipschitz(one_layer("dot"), IDS, scales=(1, 8, 64), layers=[0], n_iter=30)[0]
    l2 = L.attention_lipschitz(one_layer("l2"), IDS, scales=(1, 8, 64), layers=[0], n_iter=30)[0]
    # Kim et al.: dot-product's Jacobian has ||X||^2 terms (about 10x here at s = 64, measured 0.0141 ->
    # 0.142); tied L2 attention is Lipschitz, and at large scale each token attends to itself
    # (0.0157 -> 0.0108).
    assert dot[2] > 5 * dot[0] and dot[1] >= dot[0]
    assert l2[2] < l2[0] and l2[1] < 1.1 * l2[0]


def test_attention_lipschitz_is_the_spectral_norm_of_the_sublayer_at_scaled_input():
    lm = one_layer("dot")
    attn = lm.attn(0)
    seen = {}

    def keep(_m: object, args: tuple, _kwargs: dict) -> None:
        seen["args"] = args

    handle = attn.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        lm.logits(IDS)
    handle.remove()
    z, rope_q, rope_k = seen["args"][0], seen["args"][1], seen["args"][2]
    with twice_differentiable():
        exact = L.spectral_norm_exact(lambda x: attn(x, rope_q, rope_k), 4.0 * z)
    est = L.attention_lipschitz(lm, IDS, scales=(4.0,), layers=[0], n_iter=60)[0][0]
    assert est <= exact * (1 + 1e-9) and est == pytest.approx(exact, rel=1e-3)
    with pytest.raises(ValueError, match="scales must be positive"):
        L.attention_lipschitz(lm, IDS, scales=(0.0,))
    with pytest.raises(ValueError, match=r"out of range: this model has layers 0\.\.0"):
        L.attention_lipschitz(lm, IDS, layers=[3])


def test_power_iteration_trace_ends_in_spectral_norm_and_never_decreases():
    lm = one_layer("dot")
    steps = L.model_lipschitz(lm, IDS, n_iter=12, trace=True)
    assert len(steps) == 12 and steps[-1] == L.model_lipschitz(lm, IDS, n_iter=12)
    assert steps[4] == L.model_lipschitz(lm, IDS, n_iter=5)  # one long run also gives the shorter estimate
    assert all(b >= a * (1 - 1e-9) for a, b in zip(steps, steps[1:]))  # ||Jv_k|| rises to sigma_max
    with pytest.raises(ValueError, match="scale must be a positive"):
        L.model_lipschitz(lm, IDS, scale=-1.0)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("lipschitz")
    return out, study.run(study.PRESETS["smoke"], out, progress=False)


def test_smoke_claims_are_measured_and_recompute(smoke):
    out, _ = smoke
    saved = json.loads((out / "results.json").read_text())
    names = [c["claim"] for c in saved["claims"]]
    assert any("input scale" in n and "dot-product" in n for n in names)
    assert any("L2 attention" in n and "bounded" in n for n in names)
    assert sum("power iteration converged" in n for n in names) == 2
    for c in saved["claims"]:
        assert c["result"]["se_measured"] is True, (c["claim"], c["result"].get("reason"))
        assert c["result"]["method"], c["claim"]
        assert recompute_verdict(c) == c["verdict"], c["claim"]
        judged(c)  # the engine judged the numbers; the smoke run withheld the verdict
    conv = [c for c in saved["claims"] if "converged" in c["claim"]]
    assert all(c["direction"] == "within" and c["threshold"] == list(study.CONVERGED) for c in conv)


def test_smoke_reports_convergence_scale_sweep_and_pretrained_point(smoke):
    out, doc = smoke
    cfg = study.PRESETS["smoke"]
    conv = doc["results"]["convergence"]
    assert conv["length"]["steps"] == [cfg.n_iter, cfg.check_iter]
    assert conv["length"]["items"] == len(cfg.models) * cfg.check_windows
    assert conv["length"]["max_rel_gap"] >= 0 and conv["scale"]["max_rel_gap"] >= 0  # converges from below
    sc = doc["results"]["trained"]["softmax"]["scale"]
    assert sc["scales"] == list(cfg.scales) and len(sc["attn"]["lip"]) == len(cfg.scales)
    assert sc["model"]["scales"] == [cfg.scales[0], cfg.scales[-1]]  # the whole model at s x embeddings
    assert sc["model"]["lip"][0]["mean"] > 0 and "model" not in doc["results"]["init"]["softmax"]["scale"]
    pre = doc["results"]["pretrained"]
    assert pre["model"] == "tiny byte GPT" and pre["n"] == list(cfg.pretrained_lengths)
    assert {t["title"] for t in doc["tables"]} >= {"Pretrained point", "Power-iteration convergence"}
    assert (out / "lipschitz_scale.png").stat().st_size > 1000


def test_config_rejects_a_check_no_longer_than_the_estimate(tmp_path):
    with pytest.raises(ConfigError, match="check_iter"):
        study.run(replace(study.PRESETS["smoke"], check_iter=study.PRESETS["smoke"].n_iter), tmp_path)


@pytest.mark.realmodel
def test_smollm2_pretrained_point(tmp_path):
    pytest.importorskip("gguf")
    cfg = replace(study.PRESETS["quick"], pretrained_lengths=(8, 16), pretrained_iter=2, scales=(1.0, 2.0),
                  scale_length=8)
    res = study._pretrained(cfg)
    assert "SmolLM2" in res["model"] or "smollm2" in res["model"].lower()
    assert len(res["lip_windows"]) == cfg.pretrained_windows and all(v > 0 for v in res["lip"])
    assert res["scale"]["layers"] == [0, 15, 29] and len(res["scale"]["attn"][0][0]) == 2
