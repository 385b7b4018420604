"""Activation outliers: massive activations, kurtosis, max |activation|.

Massive activations (Sun, Chen, Kolter & Liu 2024, "Massive activations in large language models"): a
handful of residual-stream entries, at fixed feature dimensions and at special tokens (the first token,
delimiters), are orders of magnitude larger than the rest (they use |h| > 100 and > 1000x the median |h|
as the criterion). We report the top-k |h_{t,j}| of a layer with their token t and dimension j, the
median |h|, and the ratio top / median.

Outliers and quantization (Bondarenko, Nagel & Blankevoort 2023, "Quantizable transformers: removing
outliers by helping attention heads do nothing", NeurIPS): they report, per layer output, the largest
magnitude ||x||_inf and the kurtosis. Kurtosis of token t over its d features (Pearson, not excess; a
Gaussian gives 3; population moments, as their code up to a (d - 1)/d factor):

    kurt_t = mean_j (h_tj - mu_t)^4 / (mean_j (h_tj - mu_t)^2)^2,   mu_t = mean_j h_tj

A few huge entries in a token make kurt_t large (up to about d), which is what breaks per-tensor int8.

The layer kurtosis the summary reports (`attnlab.diagnose.summary`) is Bondarenko et al.'s own measure:
their code (`kurtosis(x.view(B, -1))` in outlier-free-transformers, validate_clm.py) takes each sequence's
output of a layer as one sample of T * d numbers,

    kurt(X) = mean_{t,j} (X_tj - mu)^4 / (mean_{t,j} (X_tj - mu)^2)^2,   mu = mean_{t,j} X_tj

and averages it over the sequences (population moments; they divide by the unbiased std^4 plus 1e-6, a
factor ((n - 1) / n)^2 ~ 1 with n = T * d). Pooled over tokens, a massive activation at token 0 counts
against every other token's scale, which the per-token kurtosis above cannot see.
Shapes: X (T, d), one layer's residual stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.diagnose.residual import _as_2d


def kurtosis(x: Tensor) -> Tensor:
    """Pearson kurtosis of each token over its features: (..., T, d) -> (..., T), float64.

    A token whose features are all equal (zero variance) gets 0.
    """
    x = x.double()
    c = x - x.mean(dim=-1, keepdim=True)
    m2 = (c ** 2).mean(dim=-1)
    m4 = (c ** 4).mean(dim=-1)
    return torch.where(m2 > 0, m4 / m2.clamp_min(1e-300) ** 2, torch.zeros_like(m2))


def layer_kurtosis(x: Tensor) -> Tensor:
    """Pearson kurtosis of each sequence's T * d entries pooled (Bondarenko et al.'s layer measure):
    (..., T, d) -> (...), float64. Zero variance gives 0."""
    if x.dim() < 2:
        raise ValueError(f"layer_kurtosis takes (..., tokens, features), got shape {tuple(x.shape)}")
    return kurtosis(x.flatten(-2))


def max_abs(x: Tensor) -> float:
    """max_{t,j} |X_tj|."""
    return float(x.detach().abs().max())


def massive_activations(x: Tensor, k: int = 5) -> dict[str, object]:
    """The k largest |X_tj| of X (T, d) with their positions, against the median |X|.

    Returns {"top": [{"value", "abs", "token", "dim"}, ...] (largest first), "median_abs",
    "ratio": top |h| / median |h| (inf when the median is 0)}.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    x = _as_2d(x, "x").detach().double()
    flat = x.abs().flatten()
    k = min(k, flat.numel())
    vals, idx = flat.topk(k)
    d = x.shape[1]
    top = [{"value": float(x[i // d, i % d]), "abs": float(v), "token": int(i // d), "dim": int(i % d)}
           for v, i in zip(vals.tolist(), idx.tolist())]
    median = float(flat.median())
    ratio = top[0]["abs"] / median if median > 0 else float("inf")
    return {"top": top, "median_abs": median, "ratio": ratio}


def outlier_summary(x: Tensor, k: int = 5) -> dict[str, object]:
    """Outlier figures of one layer X (T, d): max |h|, the per-token kurtosis (mean over tokens t >= 1, max
    over all, and token 0's), the layer kurtosis of all T * d entries pooled (`kurtosis_layer`, the
    summary's definition), and the massive-activation record."""
    x = _as_2d(x, "x")
    kt = kurtosis(x)
    rest = kt[1:] if kt.shape[0] > 1 else kt
    return {"max_abs": max_abs(x), "kurtosis_mean": float(rest.mean()), "kurtosis_max": float(kt.max()),
            "kurtosis_first": float(kt[0]), "kurtosis_layer": float(layer_kurtosis(x)),
            "massive": massive_activations(x, k)}
