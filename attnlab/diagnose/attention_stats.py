"""Per-head attention statistics: entropy, first-token attention (sinks), dispersion.

Shapes: P (..., H, Q, K) attention weights, query rows, key columns, e.g. `blocks.{i}.attn.pattern`
(B, H, T, T). Under a causal mask query i sits at key position K - Q + i (bottom-right alignment) and
sees n_i = K - Q + i + 1 keys.

- Entropy of a row, H_i = -sum_j p_ij log p_ij (nats, 0 log 0 = 0), computed on the row renormalised to
  sum 1, so rows of normalizers that may sum to less than 1 (softmax1, sinks) are compared as
  distributions over the keys they attend to. Then 0 <= H_i <= log n_i, and H_i / log n_i in [0, 1]
  says how spread the row is (1: uniform over the keys it sees); undefined (nan) when n_i = 1.
- First-token attention of a head, a_h = mean_i p_i0 over queries that see more than the first key
  (query 0 has nothing else to attend to, so its weight 1 says nothing). The sink rate (Gu et al. 2024,
  "When attention sink emerges in language models: an empirical view", ICLR 2025) is the share of heads
  with a_h > 0.3 (their epsilon). Gu et al. average over all queries including the first; the two
  definitions differ by at most 1 / T.
- Dispersion (Velickovic et al. 2024, "softmax is not enough (for sharp out-of-distribution)"): the
  largest weight of a row, max_j p_ij, against the keys it sees. Softmax with bounded logits must
  disperse: max_j p_ij -> 0 as n_i grows, at best like e^{2 * logit range} / n_i.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SINK_THRESHOLD = 0.3


def _check_pattern(p: Tensor) -> Tensor:
    if not isinstance(p, Tensor):
        raise TypeError(f"attention weights must be a torch.Tensor, got {type(p).__name__}")
    if not p.is_floating_point():
        raise TypeError(f"attention weights must be floating point, got {p.dtype}")
    if p.dim() < 3:
        raise ValueError(f"attention weights must have shape (..., heads, queries, keys), "
                         f"got {tuple(p.shape)}")
    if p.shape[-2] > p.shape[-1]:
        raise ValueError(f"more queries ({p.shape[-2]}) than keys ({p.shape[-1]}): under bottom-right causal "
                         f"alignment the first queries would see no key; pass keys_seen explicitly")
    return p


def keys_seen(q_len: int, kv_len: int, device: torch.device | None = None) -> Tensor:
    """n_i = kv_len - q_len + i + 1, the keys causal query i sees: (Q,) int64."""
    if q_len < 1 or kv_len < q_len:
        raise ValueError(f"need 1 <= q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}")
    return torch.arange(kv_len - q_len + 1, kv_len + 1, device=device)


def attention_entropy(p: Tensor) -> Tensor:
    """Entropy (nats) of every row after renormalising it to sum 1: (..., H, Q, K) -> (..., H, Q).

    Computed as H(p / s) = log s - (1/s) sum_j p_j log p_j with s = sum_j p_j (no renormalised copy),
    in float32 for float32 weights (entropies are at most log K, far inside its precision) and float64
    otherwise; returned as float64. An all-zero row (fully masked) has entropy 0.
    """
    p = _check_pattern(p)
    if p.dtype != torch.float32:
        p = p.double()
    total = p.sum(dim=-1)
    plogp = torch.special.xlogy(p, p).sum(dim=-1)
    safe = total.clamp_min(torch.finfo(p.dtype).tiny)
    ent = torch.where(total > 0, safe.log() - plogp / safe, torch.zeros_like(total))
    return ent.double().clamp_min(0.0)


def normalized_entropy(p: Tensor, n_keys: Tensor | None = None, entropy: Tensor | None = None) -> Tensor:
    """H_i / log n_i in [0, 1]: (..., H, Q, K) -> (..., H, Q); nan where n_i <= 1.

    `n_keys` (Q,) or broadcastable to (..., H, Q): keys each query sees; default causal. `entropy`: the
    rows' entropies when already computed (attention_entropy(p)).
    """
    p = _check_pattern(p)
    if n_keys is None:
        n_keys = keys_seen(p.shape[-2], p.shape[-1], p.device)
    log_n = n_keys.double().log()
    h = attention_entropy(p) if entropy is None else entropy
    return torch.where(log_n > 0, h / log_n.clamp_min(1e-300), torch.full_like(h, math.nan))


def first_token_attention(p: Tensor) -> Tensor:
    """a_h = mean_i p_i0 over queries at key position >= 1: (..., H, Q, K) -> (..., H).

    When the only query sits at key position 0 (Q = K = 1), it is used anyway.
    """
    p = _check_pattern(p)
    q_len, kv_len = p.shape[-2], p.shape[-1]
    first_query = 1 if kv_len == q_len and q_len > 1 else 0
    return p[..., first_query:, 0].double().mean(dim=-1)


def sink_rate(first_token: Tensor, threshold: float = SINK_THRESHOLD) -> float:
    """Share of heads whose first-token attention exceeds `threshold` (Gu et al.: 0.3); any shape."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if first_token.numel() == 0:
        raise ValueError("sink_rate needs at least one head")
    return float((first_token > threshold).double().mean())


def max_weight(p: Tensor) -> Tensor:
    """Largest weight of every row, max_j p_ij: (..., H, Q, K) -> (..., H, Q)."""
    return _check_pattern(p).amax(dim=-1).double()


def log_bins(n: int, max_bins: int = 48) -> list[tuple[int, int]]:
    """Split positions 0..n-1 into at most max_bins contiguous, roughly log-spaced [start, stop) bins."""
    if n < 1 or max_bins < 1:
        raise ValueError(f"need n >= 1 and max_bins >= 1, got n={n}, max_bins={max_bins}")
    edges = sorted({0, n} | {int(round(math.exp(x * math.log(n) / max_bins))) for x in range(1, max_bins)})
    edges = [e for e in edges if 0 <= e <= n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def binned(values: Tensor, bins: list[tuple[int, int]]) -> list[float]:
    """Mean of a (Q,) curve over each [start, stop) bin."""
    return [float(values[a:b].double().nanmean()) for a, b in bins]


def attention_summary(p: Tensor, threshold: float = SINK_THRESHOLD, max_bins: int = 48) -> dict[str, object]:
    """One layer's statistics from its weights P (B, H, Q, K) or (H, Q, K), averaged over the batch.

    Per head (lists of H floats): entropy (mean over queries), entropy_normalized (mean over queries
    that see >= 2 keys), first_token, max_weight (mean over queries). Per layer: sink_rate and the
    dispersion curve max_weight_by_position (mean over heads, in log-spaced query bins, with the keys the
    bin's queries see on average).
    """
    p = _check_pattern(p)
    if p.dim() == 3:
        p = p.unsqueeze(0)
    q_len, kv_len = p.shape[-2], p.shape[-1]
    n_keys = keys_seen(q_len, kv_len, p.device)
    ent_rows = attention_entropy(p)  # (B, H, Q)
    ent = ent_rows.mean(dim=0)
    ent_n = normalized_entropy(p, n_keys, ent_rows).mean(dim=0)
    first = first_token_attention(p).mean(dim=0)  # (H,)
    mw = max_weight(p).mean(dim=0)  # (H, Q)
    bins = log_bins(q_len, max_bins)
    return {
        "entropy": ent.mean(dim=-1).tolist(),
        "entropy_normalized": ent_n.nanmean(dim=-1).tolist(),
        "first_token": first.tolist(),
        "max_weight": mw.mean(dim=-1).tolist(),
        "sink_rate": sink_rate(first, threshold),
        "max_weight_by_position": {"keys_seen": binned(n_keys.double(), bins),
                                   "value": binned(mw.mean(dim=0), bins)},
    }
