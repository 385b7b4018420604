"""Small parts of attnlab's GPT: rotary embeddings, norms, sigma-reparam linear, the KV cache, L2 scores
and the two anti-collapse losses.

Notation: B batch, T new tokens, L cached + new keys, H query heads, Hkv key/value heads, D head dim,
d model width.

- RoPE (Su et al. 2021), rotate-half layout as in Llama:
  x_rot = x * cos(p theta) + rotate_half(x) * sin(p theta).
- sigma-reparam (Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
  Collapse"): W_hat = (gamma / sigma(W)) W, sigma(W) the spectral norm from one power-iteration step per
  training forward (u, v kept as buffers, as in spectral normalisation, Miyato et al. 2018).
- L2 scores (Kim et al. 2021, "The Lipschitz Constant of Self-Attention"): s_ij = -||q_i - k_j||^2 * scale.
  Written as a dot product of augmented vectors so every normalizer of the attention core applies exactly:
  q'_i = [sqrt2 q_i, -|q_i|^2, 1], k'_j = [sqrt2 k_j, 1, -|k_j|^2]  =>  q'_i . k'_j = -||q_i - k_j||^2.
  (|q_i|^2 is constant per row and cancels in softmax, but not in softmax1 or sinks, whose extra
  denominator term does not move with the row; hence the exact form.)
- Head diversity (Li et al. 2018, "Multi-Head Attention with Disagreement Regularization", output
  disagreement): mean over tokens and ordered head pairs h != h' of cos(o_h, o_h'), o_h a head's output.
- Log-det (the coding rate of Yu et al. 2020, "Learning Diverse and Discriminative Representations via the
  Principle of Maximal Coding Rate Reduction", on each block's residual stream): with X_hat the (T, d)
  token matrix with unit-norm rows, R = 1/2 logdet(I_T + d/(T eps^2) X_hat X_hat^T), eps = 0.5; the loss is
  -R / min(T, d) (per dimension, so its weight means the same at any size). A rank-one (collapsed) stream
  minimises R. Computed on the smaller of the two Gram matrices
  (Sylvester: logdet(I + A A^T) = logdet(I + A^T A)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGDET_EPS = 0.5


# ---------------------------------------------------------------- rotary embeddings
def rope_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (len(positions), head_dim) for integer positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
                                / head_dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (L, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, D)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, L, D); cos, sin (L, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# ---------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim)
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    return nn.Identity()


# ---------------------------------------------------------------- sigma-reparam
class SigmaReparamLinear(nn.Linear):
    """Linear layer with W_hat = gamma / sigma(W) * W (Zhai et al. 2023). Call `reset_sigma()` after
    (re)initialising the weight: it runs power iteration to convergence and sets gamma = sigma(W_0), so the
    layer starts as the plain one and gamma then learns the scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.gamma = nn.Parameter(torch.ones(()))
        self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(in_features), dim=0))

    @torch.no_grad()
    def _power_step(self) -> None:
        w = self.weight
        self.v.copy_(F.normalize(w.t() @ self.u, dim=0))
        self.u.copy_(F.normalize(w @ self.v, dim=0))

    @torch.no_grad()
    def reset_sigma(self, iters: int = 50) -> None:
        for _ in range(iters):
            self._power_step()
        self.gamma.fill_(float(self.sigma()))

    def sigma(self) -> Tensor:
        # u, v are constants (no gradient through the iteration), as in spectral normalisation.
        return torch.dot(self.u, self.weight @ self.v)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():
            self._power_step()
        weight = self.weight * (self.gamma / self.sigma())
        return F.linear(x, weight, self.bias)


# ---------------------------------------------------------------- L2 scores
def l2_augment(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Augmented q (B,H,T,D+2), k (B,Hkv,L,D+2), v zero-padded to D+2 (the fused kernel wants one head
    size); q' . k' = -||q - k||^2. Slice the attention output back to [..., :D]."""
    root2 = math.sqrt(2.0)
    q_sq = q.pow(2).sum(-1, keepdim=True)  # (B, H, T, 1)
    k_sq = k.pow(2).sum(-1, keepdim=True)  # (B, Hkv, L, 1)
    q_aug = torch.cat([root2 * q, -q_sq, torch.ones_like(q_sq)], dim=-1)
    k_aug = torch.cat([root2 * k, torch.ones_like(k_sq), -k_sq], dim=-1)
    v_aug = F.pad(v, (0, 2))
    return q_aug, k_aug, v_aug


# ---------------------------------------------------------------- anti-collapse losses
def head_diversity_penalty(heads: Tensor) -> Tensor:
    """heads (B, H, T, D) -> scalar: mean over b, t and ordered pairs h != h' of cos(o_h, o_h')."""
    n = heads.shape[1]
    if n < 2:
        return heads.new_zeros(())
    unit = F.normalize(heads.transpose(1, 2), dim=-1)  # (B, T, H, D)
    gram = unit @ unit.transpose(-1, -2)  # (B, T, H, H)
    off_diag = gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)  # (B, T)
    return (off_diag / (n * (n - 1))).mean()


def logdet_penalty(x: Tensor, eps: float = LOGDET_EPS) -> Tensor:
    """x (B, T, d) residual stream -> scalar -R / min(T, d), R the coding rate of the unit-norm token rows."""
    _, t, d = x.shape
    unit = F.normalize(x.float(), dim=-1)  # (B, T, d)
    gram = unit.transpose(1, 2) @ unit if d <= t else unit @ unit.transpose(1, 2)  # (B, m, m)
    m = gram.shape[-1]
    eye = torch.eye(m, device=x.device, dtype=gram.dtype)
    rate = 0.5 * torch.logdet(eye + (d / (t * eps**2)) * gram)  # (B,)
    return -(rate / min(t, d)).mean().to(x.dtype)


# ---------------------------------------------------------------- KV cache
@dataclass
class KVCache:
    """Keys and values of past tokens, for incremental decoding.

    keys[l], values[l]: (B, Hkv, L, D) for layer l, keys stored *before* RoPE; positions: (L,) long, the
    RoPE position of each cached key. RoPE is applied to the cached keys at every step from `positions`, so
    a cache policy may evict entries and re-number positions (StreamingLLM) by editing these tensors; keep
    keys, values and positions the same length L.
    """

    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)
    positions: Tensor | None = None

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls(keys=[None] * n_layers, values=[None] * n_layers, positions=None)

    def __len__(self) -> int:
        return 0 if self.positions is None else int(self.positions.shape[0])

    def next_position(self) -> int:
        """The position a new token gets by default: one after the largest cached position."""
        return 0 if self.positions is None or self.positions.numel() == 0 else int(self.positions.max()) + 1

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new (B, Hkv, T, D) keys/values to layer `layer`; return that layer's full (B, Hkv, L, D)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


__all__ = ["KVCache", "RMSNorm", "SigmaReparamLinear", "apply_rope", "head_diversity_penalty", "l2_augment",
           "logdet_penalty", "make_norm", "rope_angles"]
