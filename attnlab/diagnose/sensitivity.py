"""Over-squashing: how much the last position's final state can feel each input token.

Barbero, Banino, Kapturowski, Kumaran, Araujo, Vitvitskyi, Pascanu & Velickovic 2024, "Transformers need
glasses! Information over-squashing in language tasks" (NeurIPS). For a decoder-only model, the final
residual state of the last token, h = h_T^{(L)} (d,), depends on input embedding e_i (d,) through the
Jacobian J_i = d h / d e_i (d x d). Their bound says ||J_i|| shrinks for tokens whose information has few
paths to the last position (causal attention favours early tokens, over-squashes late-middle ones).

Sensitivity profile, s_i = ||J_i||_F for every position i, estimated with random projections:
for u ~ N(0, I_d), the gradient of u . h with respect to e_i is u^T J_i, and

    E_u ||u^T J_i||^2 = E tr(J_i^T u u^T J_i) = ||J_i||_F^2,
    Var_u ||u^T J_i||^2 = 2 ||J_i J_i^T||_F^2 = 2 sum_k sigma_k^4  <=  2 ||J_i||_F^4,

so the mean of n probes has relative standard deviation sqrt(2 / (n r_i)) <= sqrt(2 / n) on s_i^2, where
r_i = (sum_k sigma_k^2)^2 / sum_k sigma_k^4 in [1, d] is J_i's effective rank (and about half that on
s_i itself). One forward pass and n backward passes give all T positions at once. `sensitivity_exact`
is the reference twin: the full Jacobian by torch.autograd.functional.jacobian (d backward passes).

Representational collapse (same paper, Theorem 4.2): the last-token final states of "1 ... 1 0" (n ones)
and "1 ... 1 1 0" (n + 1 ones) converge as n grows, so eventually the model cannot tell them apart
(counting fails). `collapse_probe` returns ||h_a - h_b||_2 and its ratio to ||h_a||_2 for growing n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from attnlab.diagnose._forward import block_output, frozen
from attnlab.errors import ConfigError


def _final_last(lm: Any, embeds: Tensor) -> Tensor:
    """h (d,): the last position's residual stream leaving the last block."""
    return block_output(lm, embeds, stop=lm.n_layers - 1)[0, -1]


def _check_ids(ids: Tensor) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dtype != torch.long:
        raise TypeError("ids must be a torch.LongTensor of token ids, shape (1, T); use LoadedModel.encode")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 1:
        raise ValueError(f"ids must have shape (1, T) with T >= 1, got {tuple(ids.shape)}")
    return ids


def sensitivity_profile(lm: Any, ids: Tensor, n_probes: int = 4, seed: int = 0) -> Tensor:
    """s_i ~= ||d h_last / d e_i||_F for every position i: (T,) float64, from n_probes Gaussian probes.

    h_last is the final residual state (before the final norm) of the last position; e_i the input
    embedding of token i. See the module docstring for the estimator and its variance.
    """
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive int, got {n_probes!r}")
    ids = _check_ids(ids)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(ids.shape[1], dtype=torch.float64)
    with frozen(lm.model):
        embeds = lm.embed(ids).detach().requires_grad_(True)
        h = _final_last(lm, embeds)
        for k in range(n_probes):
            u = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(device=h.device, dtype=h.dtype)
            (g,) = torch.autograd.grad(h, embeds, u, retain_graph=k < n_probes - 1)
            total += (g[0].double() ** 2).sum(dim=-1).cpu()
    return (total / n_probes).sqrt()


def sensitivity_exact(lm: Any, ids: Tensor) -> Tensor:
    """||d h_last / d e_i||_F for every position i from the full Jacobian (tiny models only): (T,)."""
    ids = _check_ids(ids)
    with frozen(lm.model):
        embeds = lm.embed(ids).detach()
        jac = torch.autograd.functional.jacobian(lambda e: _final_last(lm, e), embeds, vectorize=True)
    return jac[:, 0].double().pow(2).sum(dim=(0, 2)).sqrt().cpu()


def default_probe_lengths(max_len: int, start: int = 4) -> list[int]:
    """Powers of two from `start` up to max_len (inclusive when a power of two)."""
    out, n = [], start
    while n <= max_len:
        out.append(n)
        n *= 2
    return out


@torch.no_grad()
def collapse_probe(lm: Any, lengths: Sequence[int], one: str = "1", zero: str = "0") -> dict[str, Any]:
    """Barbero et al.'s probe: for each n, the final last-token states of one*n + zero and
    one*(n + 1) + zero, and how far apart they are.

    Returns {"n": [...], "tokens": [[T_a, T_b], ...], "distance": ||h_a - h_b||_2,
    "relative": ||h_a - h_b|| / ||h_a||, "equal": whether h_a and h_b are exactly equal in the model's own
    dtype, "dtype": that dtype (e.g. "torch.bfloat16")}. Distances are computed in float64 from the states
    as the model produced them, so a bf16 model's distances are those of its bf16 states.
    """
    if not lengths:
        raise ValueError("collapse_probe needs at least one length")
    out: dict[str, Any] = {"n": [], "tokens": [], "distance": [], "relative": [], "equal": [], "dtype": None}
    for n in lengths:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"lengths must be positive ints, got {n!r}")
        a, b = lm.encode(one * n + zero), lm.encode(one * (n + 1) + zero)
        if lm.max_context and b.shape[1] > lm.max_context:
            raise ConfigError(f"collapse probe length {n} needs {b.shape[1]} tokens, beyond {lm.name}'s "
                              f"context of {lm.max_context}; use shorter lengths")
        ha, hb = _final_last(lm, lm.embed(a)), _final_last(lm, lm.embed(b))
        out["dtype"] = str(ha.dtype)
        out["equal"].append(bool(torch.equal(ha, hb)))
        ha, hb = ha.double(), hb.double()
        dist = float((ha - hb).norm())
        norm = float(ha.norm())
        out["n"].append(n)
        out["tokens"].append([int(a.shape[1]), int(b.shape[1])])
        out["distance"].append(dist)
        out["relative"].append(dist / norm if norm > 0 else math.nan)
    return out
