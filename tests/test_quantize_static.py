"""The static (calibrated) int8 quantizer: ranges come from calibration, and an outlier seen there coarsens
every later input (Bondarenko et al. 2023's protocol)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.diagnose.quantize import fake_quant, static_fake_quant


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def test_static_ranges_come_from_calibration_and_an_outlier_there_costs_precision() -> None:
    m = _model()
    x = torch.randn(32, 16, dtype=torch.float64)
    exact = m(x)
    with static_fake_quant(m, lambda: m(x)):
        calibrated_on_x = m(x)
    spike = x.clone()
    spike[0, 3] = 1e3
    with static_fake_quant(m, lambda: m(spike)):
        calibrated_on_spike = m(x)
    err_x = (calibrated_on_x - exact).abs().max()
    err_spike = (calibrated_on_spike - exact).abs().max()
    assert 0 < err_x < 0.05 and err_spike > 10 * err_x
    with fake_quant(m, weights=True, activations=True):  # dynamic per-tensor: the range of x itself
        dynamic = m(x)
    assert (dynamic - exact).abs().max() < 0.05
    assert torch.equal(m(x), exact)  # hooks and weights restored


def test_calibration_that_sees_nothing_fails_clearly() -> None:
    m = _model()
    with pytest.raises(ValueError, match="calibration saw no input"):
        with static_fake_quant(m, lambda: None):
            pass
