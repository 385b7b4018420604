"""Token uniformity: how close the residual stream is to one vector repeated (rank collapse).

Dong, Cordonnier & Loukas 2021, "Attention is not all you need: pure attention loses rank doubly
exponentially with depth" (ICML). Uniform attention maps X to (1/T) 1 1^T X = 1 mean(X)^T: every token
the same vector, a rank-one matrix. Their measure of the distance to that limit is the residual

    res(X) = X - 1 x^T,    ratio(X) = ||res(X)||_{1,inf} / ||X||_{1,inf},

with the composite norm ||A||_{1,inf} = sqrt(||A||_1 ||A||_inf), where ||A||_1 = max_j sum_i |A_ij| (largest
column sum: column = feature) and ||A||_inf = max_i sum_j |A_ij| (largest row sum: row = token).

Which x? The paper takes x = argmin_x ||X - 1 x^T||, which puts the ratio in [0, 1] (x = 0 is a
candidate). The authors' code (and the curves they plot) takes x = mean(X), the column mean. That ratio
is NOT bounded by 1: since res = (I - 11^T/T) X and ||I - 11^T/T|| = 2(1 - 1/T) in both the max-column-
sum and the max-row-sum norm, its range is

    center="mean":  0 <= ratio <= 2 (1 - 1/T),

and it does exceed 1 when a few tokens dominate a feature: one token carrying a massive activation
(Sun et al. 2024) in feature j makes centring spread that value over every token, nearly doubling column
j's sum. Real LLMs have exactly that at position 0, so read the mean-centred ratio of layers with massive
activations with care (the report also gives it without position 0). `center="best"` takes the best of
the candidates x in {column mean, column median, 0}: an upper bound on the paper's argmin ratio, in [0, 1]
(the median is the exact minimiser of the ||.||_1 factor, column by column).

Other views of the same collapse, all of X (T, d):
    effective rank  erank(X) = exp(-sum_k p_k log p_k), p_k = s_k / sum_k s_k, s the singular values
                    (Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality");
                    1 <= erank <= min(T, d); 1 for a rank-one matrix.
    stable rank     srank(X) = ||X||_F^2 / ||X||_2^2 = sum_k s_k^2 / s_1^2, 1 <= srank <= rank(X).
    mean cosine     (1 / (T (T - 1))) sum_{i != j} cos(X_i, X_j) = (||sum_i u_i||^2 - T) / (T (T - 1)),
                    u_i = X_i / ||X_i||; 1 when every token points the same way.
A zero matrix has ratio, ranks and cosine 0 (nothing to measure).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.diagnose.residual import _as_2d

CENTERS = ("mean", "best")


def max_column_sum(x: Tensor) -> Tensor:
    """||X||_1 = max_j sum_i |X_ij| (features are columns): (..., T, d) -> (...)."""
    return x.abs().sum(dim=-2).amax(dim=-1)


def max_row_sum(x: Tensor) -> Tensor:
    """||X||_inf = max_i sum_j |X_ij| (tokens are rows): (..., T, d) -> (...)."""
    return x.abs().sum(dim=-1).amax(dim=-1)


def composite_norm(x: Tensor) -> Tensor:
    """Dong et al.'s ||X||_{1,inf} = sqrt(||X||_1 ||X||_inf): (..., T, d) -> (...)."""
    return torch.sqrt(max_column_sum(x) * max_row_sum(x))


def uniformity_ratio(x: Tensor, center: str = "mean") -> float:
    """||X - 1 x^T||_{1,inf} / ||X||_{1,inf} for X (T, d); see the module docstring for x and the range.

    center="mean": x = mean(X) (Dong et al.'s code), range [0, 2(1 - 1/T)].
    center="best": best of x in {mean, median, 0}, range [0, 1].
    """
    if center not in CENTERS:
        raise ValueError(f"unknown center {center!r}; use one of {', '.join(CENTERS)}")
    x = _as_2d(x, "x").double()
    total = composite_norm(x)
    if total == 0:
        return 0.0
    res = composite_norm(x - x.mean(dim=0, keepdim=True))
    if center == "best":
        med = composite_norm(x - x.median(dim=0, keepdim=True).values)
        res = torch.minimum(torch.minimum(res, med), total)
    return float(res / total)


def singular_values(x: Tensor) -> Tensor:
    """Singular values of X (T, d), descending, float64, as sqrt of the eigenvalues of the smaller Gram
    matrix (X X^T or X^T X): several times faster than an SVD on CPU, and exact to float64 rounding for
    every singular value above ~1e-8 s_1, which is all the ranks here can see. A non-finite X has no
    spectrum: all NaN (eigvalsh would raise "failed to converge" instead)."""
    x = _as_2d(x, "x").double()
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    if not bool(torch.isfinite(gram).all()):
        return torch.full((gram.shape[0],), math.nan, dtype=torch.float64)
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def effective_rank(x: Tensor | None = None, *, s: Tensor | None = None) -> float:
    """Roy & Vetterli's exp(entropy of s / sum(s)) of X (T, d), or of given singular values `s`."""
    s = singular_values(x) if s is None else s.double()
    total = s.sum()
    if not bool(torch.isfinite(total)):
        return math.nan  # not 1.0, which the p > 0 filter below would make of all-NaN values
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(x: Tensor | None = None, *, s: Tensor | None = None) -> float:
    """||X||_F^2 / ||X||_2^2 of X (T, d), or of given singular values `s` (descending or not)."""
    s = singular_values(x) if s is None else s.double()
    top = s.max() if s.numel() else torch.tensor(0.0)
    if not bool(torch.isfinite(s).all()):
        return math.nan
    if top <= 0:
        return 0.0
    return float((s ** 2).sum() / top ** 2)


def mean_pairwise_cosine(x: Tensor) -> float:
    """Mean cosine similarity over ordered token pairs i != j of X (T, d), in O(T d).

    Zero rows count as orthogonal to everything. T == 1 gives 1.0 (a single token is trivially uniform).
    """
    x = _as_2d(x, "x").double()
    t = x.shape[0]
    if t == 1:
        return 1.0
    norms = x.norm(dim=-1, keepdim=True)
    u = torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))
    n_unit = (norms.squeeze(-1) > 0).sum()
    total = (u.sum(dim=0) ** 2).sum() - n_unit  # sum over all pairs minus the diagonal
    return float(total / (t * (t - 1)))


def uniformity_summary(x: Tensor) -> dict[str, float]:
    """All uniformity measures of one layer X (T, d), sharing one SVD."""
    s = singular_values(x)
    return {
        "ratio": uniformity_ratio(x, "mean"),
        "ratio_best": uniformity_ratio(x, "best"),
        "effective_rank": effective_rank(s=s),
        "stable_rank": stable_rank(s=s),
        "mean_cosine": mean_pairwise_cosine(x),
    }
