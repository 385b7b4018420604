"""diagnose.peaks: per-token statistics that a single massive activation cannot pin."""

from __future__ import annotations

import pytest
import torch

from attnlab.diagnose.outliers import layer_kurtosis
from attnlab.diagnose.peaks import massive_ratio, norm_peak, token_kurtosis


def test_per_token_kurtosis_is_gaussian_and_not_pinned_by_token0s_spike(gen: torch.Generator) -> None:
    x = torch.randn(2, 64, 4096, generator=gen, dtype=torch.float64)
    k0, rest = token_kurtosis(x)
    assert rest == pytest.approx(torch.full((2,), 3.0, dtype=torch.float64), abs=0.1)
    spiked = x.clone()
    spiked[:, 0, 7] = 1e5
    k0s, rests = token_kurtosis(spiked)
    assert torch.equal(rests, rest) and (k0s > 4000).all()  # token 0 on its own; the rest unmoved
    pooled = layer_kurtosis(spiked)  # the pooled statistic: ~ the number of entries, whatever the rest do
    assert (pooled > 0.9 * 64 * 4096).all()


def test_massive_ratio_and_norm_peak_find_token0(gen: torch.Generator) -> None:
    x = torch.randn(3, 10, 32, generator=gen, dtype=torch.float64)
    x[1, 0, 5] = 500.0
    r0, rest = massive_ratio(x)
    assert r0[1] > 500 and r0[0] < 10 and (rest < 10).all()
    peak = norm_peak(x)
    assert peak[1] > 50 and peak[0] == pytest.approx(float(x[0, 0].norm() / x[0, 1:].norm(dim=-1).median()))


def test_bad_shapes_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"\(batch, tokens >= 2, d_model\)"):
        token_kurtosis(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="tokens >= 2"):
        norm_peak(torch.zeros(1, 1, 8))
