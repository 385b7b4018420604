"""Statistics of the residual stream that stay meaningful when one token holds a massive activation.

A pooled statistic over all T x d entries of a block output is pinned by one huge entry: the kurtosis of
N values one of which dominates is ~N whatever the rest do (SmolLM2, token 0, dim 507: 98% of the centred
energy), so it counts how many huge entries there are and cannot be compared across lengths. These
statistics keep token 0 apart and measure each token on its own.

Shapes: x (B, T, d), one layer's residual stream (B sequences of T tokens); every function returns one
value per sequence, (B,), float64, so sequences stay independent items for a bootstrap.
"""

from __future__ import annotations

from torch import Tensor


def _check(x: Tensor) -> Tensor:
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"residual stream must have shape (batch, tokens >= 2, d_model), got "
                         f"{tuple(x.shape)}")
    return x.detach().double()


def token_kurtosis(x: Tensor) -> tuple[Tensor, Tensor]:
    """(token 0, tokens >= 1): the kurtosis of each token's activation vector across its d dimensions,
    kappa_t = mean_j (h_tj - mean h_t)^4 / var(h_t)^2 (3 for a Gaussian vector), token 0's on its own and
    the mean over the other tokens (Kaul et al. 2025 measure outlier features per token this way)."""
    h = _check(x)
    c = h - h.mean(dim=-1, keepdim=True)
    var = c.pow(2).mean(dim=-1)
    k = c.pow(4).mean(dim=-1) / var.pow(2).clamp_min(1e-300)  # (B, T)
    return k[:, 0], k[:, 1:].mean(dim=1)


def massive_ratio(x: Tensor) -> tuple[Tensor, Tensor]:
    """(token 0, tokens >= 1): the largest |activation| of token 0, and of all other tokens, over the
    median |activation| of the sequence (Sun et al. 2024 call an activation massive at ratio ~1000+)."""
    a = _check(x).abs()
    med = a.flatten(1).median(dim=1).values.clamp_min(1e-300)  # (B,)
    return a[:, 0].amax(dim=-1) / med, a[:, 1:].flatten(1).amax(dim=1) / med


def norm_peak(x: Tensor) -> Tensor:
    """||h_0|| / median_{t >= 1} ||h_t||: the residual-state peak on the first token (Guo et al. 2024)."""
    n = _check(x).norm(dim=-1)  # (B, T)
    return n[:, 0] / n[:, 1:].median(dim=1).values.clamp_min(1e-300)


__all__ = ["massive_ratio", "norm_peak", "token_kurtosis"]
