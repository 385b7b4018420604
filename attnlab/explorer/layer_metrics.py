"""The per-layer curves the explorer draws: residual norm, uniformity ratio, attention entropy, sink mass.

Shapes: resid (T, d) is one layer's residual stream (after the block); pattern (H, T, T) its attention
weights, query rows, key columns.

- norm: mean over tokens of ||x_t||_2, the residual-stream growth across depth.
- uniformity ratio (Dong et al. 2021, "Attention is not all you need: pure attention loses rank doubly
  exponentially with depth"): ||X - 1 mean(X)^T||_F / ||X||_F. Uniform attention maps X to
  (1/n) 1 1^T X = 1 mean(X)^T, the rank-one limit; the ratio is 0 there and near 1 for unrelated rows.
- entropy: mean over heads and queries of -sum_j p_ij log p_ij (nats), low when heads focus.
- sink mass (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"): mean over heads
  and queries t >= 1 of p_t0, the weight given to the first token.
"""

from __future__ import annotations

import torch
from torch import Tensor

METRIC_NAMES = ("norm", "uniformity", "entropy", "sink_mass")


def residual_norm(resid: Tensor) -> float:
    return float(resid.float().norm(dim=-1).mean())


def uniformity_ratio(resid: Tensor) -> float:
    x = resid.float()
    total = x.norm()
    if total == 0:
        return 0.0
    return float((x - x.mean(dim=0, keepdim=True)).norm() / total)


def attention_entropy(pattern: Tensor) -> float:
    p = pattern.float()
    return float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())


def sink_mass(pattern: Tensor) -> float:
    if pattern.shape[-2] < 2:
        return float(pattern[..., 0].float().mean())
    return float(pattern[..., 1:, 0].float().mean())


def layer_metrics(resid: Tensor, pattern: Tensor | None) -> dict[str, float]:
    """All four metrics of one layer; the attention ones are NaN when no pattern was recorded."""
    nan = float("nan")
    return {
        "norm": residual_norm(resid),
        "uniformity": uniformity_ratio(resid),
        "entropy": attention_entropy(pattern) if pattern is not None else nan,
        "sink_mass": sink_mass(pattern) if pattern is not None else nan,
    }
