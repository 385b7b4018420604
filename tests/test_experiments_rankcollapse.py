"""rankcollapse on tiny random models (no training, no corpus): the bidirectional control really is
non-causal, the probe's residual norms and growth are the report's (`summarize`) one definition, the causal
vs bidirectional contrast the module docstring derives, and bad configs. The smoke preset's results are
checked in test_experiments_studies.py (one smoke run shared with the other studies' checks)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.experiments import rankcollapse as rc

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = replace(rc.PRESETS["smoke"], d_model=16, n_heads=2, context=12)


def _windows(n: int = 2, length: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (1, length), generator=g) for _ in range(n)]


@pytest.mark.parametrize("span", ["causal", "full"])
def test_bidirectional_pure_attention_moves_the_first_token(span):
    # Under a causal mask token 0 attends only to itself: no later token can change its representation.
    # With bidirectional attention it sees every token, so changing the last token moves it.
    model = rc._gpt(TINY, "pure attention", 2, seed=0, span=span).double().eval()
    ids = _windows(1)[0]
    other = ids.clone()
    other[0, -1] = (other[0, -1] + 1) % 256
    with torch.no_grad():
        _, _, a = model(ids, return_hidden=True)
        _, _, b = model(other, return_hidden=True)
    moved = float((a[-1][0, 0] - b[-1][0, 0]).abs().max())
    if span == "causal":
        assert moved == 0.0
    else:
        assert moved > 1e-6 * float(a[-1][0, 0].abs().max())


def test_bidirectional_uniform_attention_collapses_at_once_causal_does_not():
    # Small-init attention is near uniform: bidirectionally that is (1/n) 1 1^T, rank one after one layer;
    # causally it is prefix averaging, which only shrinks the residual by about 2 per layer.
    windows = _windows()
    bi = rc.probe_stack(rc._gpt(TINY, "pure attention", 4, seed=0, span="full"), windows, torch.float64)
    causal = rc.probe_stack(rc._gpt(TINY, "pure attention", 4, seed=0), windows, torch.float64)
    assert bi["ratio"][0] == pytest.approx(causal["ratio"][0])  # the same embeddings
    assert bi["ratio"][2] < 1e-9 < 1e-3 < causal["ratio"][2]


def test_probe_norms_and_growth_are_the_reports_summary():
    from attnlab.diagnose.residual import fitted_growth
    from attnlab.diagnose.summary import summarize
    from attnlab.experiments.probes import wrap

    model = rc._gpt(TINY, "full (pre-LN)", 5, seed=1)
    windows = _windows()
    out = rc.probe_stack(model, windows, torch.float64)
    lm = wrap(model, "check")
    for ids, norms, growth in zip(windows, out["norms_windows"], out["growth_windows"]):
        report = summarize(lm.run_with_cache(ids, attention=False)[1])
        assert norms == pytest.approx(report["resid_norm"], rel=1e-12)
        assert growth == pytest.approx(report["norm_growth_per_layer"], rel=1e-12)
        assert growth == pytest.approx(fitted_growth(norms), rel=1e-12) and len(norms) == 5


def test_post_ln_growth_is_one_at_init():
    # Every post-LN block ends in an RMSNorm with unit gain: each token's norm is sqrt(d) at every block.
    out = rc.probe_stack(rc._gpt(TINY, "post-LN", 6, seed=0), _windows(), torch.float64)
    assert out["growth_windows"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert out["norms_windows"][0] == pytest.approx([TINY.d_model ** 0.5] * 6, rel=1e-4)


def test_unigram_entropy():
    assert rc.unigram_entropy(torch.tensor([0, 1, 2, 3])) == pytest.approx(math.log(4.0))
    assert rc.unigram_entropy(torch.tensor([7, 7, 7])) == 0.0


def test_unknown_bidirectional_architecture_fails_clearly():
    with pytest.raises(ConfigError, match=r"unknown bidirectional \['full'\]; choose from pure attention"):
        rc.validate(replace(TINY, bidirectional=("full",)))
    rc.validate(replace(TINY, bidirectional=()))  # none: the causal study alone


@pytest.mark.parametrize("field, value", [("val_windows", 0), ("log_every", 0)])
def test_bad_training_fields_fail_clearly(field, value):
    with pytest.raises(ConfigError, match=rf"Config\.{field} = 0 is not valid"):
        rc.validate(replace(TINY, **{field: value}))
