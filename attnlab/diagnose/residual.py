"""Residual-stream norms and their growth with depth (Heimersheim & Turner 2023).

Heimersheim & Turner, "Residual stream norms grow exponentially over the forward pass" (Alignment Forum,
2023), find that the L2 norm of the residual stream of GPT-2 grows by a roughly constant factor per layer
(~1.045 in GPT-2 XL), so later layers must write ever larger vectors to matter. Position 0 is special
(it carries attention-sink / massive activations, Sun et al. 2024) and would dominate a plain mean, so
every summary here reports it separately.

Shapes: X (T, d) is the residual stream of one layer (T tokens, d features); a stack over layers is
(L + 1, T, d), entry 0 the embeddings and entry l + 1 the output of block l.

    norm_t(X)          = ||X_t||_2                              token norms, (T,)
    growth factor g_l  = mean_{t>=1} ||X^{(l+1)}_t|| / mean_{t>=1} ||X^{(l)}_t||
    fitted growth      = exp(b), b the least-squares slope of log mean_{t>=1} ||X^{(l)}_t|| against l
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def token_norms(x: Tensor) -> Tensor:
    """L2 norm of every token's residual vector: (..., T, d) -> (..., T), float64."""
    _check_float(x, "x")
    return x.double().norm(dim=-1)


def norm_summary(x: Tensor) -> dict[str, float]:
    """Summary of one layer's residual stream X (T, d), position 0 apart.

    Returns mean, median and max of ||X_t||_2 over positions t >= 1 (all positions when T == 1),
    `first` = ||X_0||_2, and `mean_all`, the mean over every position.
    """
    x = _as_2d(x, "x")
    n = token_norms(x)
    rest = n[1:] if n.shape[0] > 1 else n
    return {"mean": float(rest.mean()), "median": float(rest.median()), "max": float(rest.max()),
            "first": float(n[0]), "mean_all": float(n.mean())}


def growth_factors(norms: Sequence[float] | Tensor) -> list[float]:
    """Per-layer growth g_l = norms[l + 1] / norms[l] of a sequence of L + 1 mean norms -> L factors.

    A zero norm gives inf (growth from nothing) or nan (0 / 0), never an exception.
    """
    vals = [float(v) for v in (norms.tolist() if isinstance(norms, Tensor) else norms)]
    if len(vals) < 2:
        raise ValueError(f"growth_factors needs at least 2 norms (embeddings and one block), got {len(vals)}")
    out = []
    for a, b in zip(vals[:-1], vals[1:]):
        out.append(b / a if a != 0 else (math.inf if b != 0 else math.nan))
    return out


def fitted_growth(norms: Sequence[float] | Tensor, skip_first: int = 0) -> float:
    """Geometric growth per layer: exp of the least-squares slope of log(norm) against layer index.

    `skip_first` leaves out the first entries (e.g. the embeddings, whose scale is set apart from the
    blocks). Equals the common factor exactly when norms are geometric, norms[l] = c * g**l.
    """
    vals = torch.tensor([float(v) for v in (norms.tolist() if isinstance(norms, Tensor) else norms)],
                        dtype=torch.float64)[skip_first:]
    if vals.numel() < 2:
        raise ValueError(f"fitted_growth needs at least 2 norms after skip_first={skip_first}, "
                         f"got {vals.numel()}")
    if bool((vals <= 0).any()):
        raise ValueError("fitted_growth needs positive norms (it fits log norm); drop zero layers first")
    layer = torch.arange(vals.numel(), dtype=torch.float64)
    y = vals.log()
    slope = ((layer - layer.mean()) * (y - y.mean())).sum() / ((layer - layer.mean()) ** 2).sum()
    return float(slope.exp())


def _check_float(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _as_2d(x: Tensor, name: str) -> Tensor:
    """(T, d), or (1, T, d) squeezed; anything else is an error naming the expected shape."""
    _check_float(x, name)
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (tokens, features) or (1, tokens, features), both >= 1; "
                         f"got {tuple(x.shape)}")
    return x
