"""`summarize(cache)`: the headline numbers of one activation cache, one definition per key.

The report (`attnlab report`, its `summary`) and the studies' probes (`attnlab.experiments.probes`) both
call this function on a cache from `LoadedModel.run_with_cache` / `capture()`, so a key means the same
wherever it appears. The table of keys, formulas and papers is in docs/diagnostics.md ("Summary keys").

Shapes: X^l (B, T, d) = `blocks.{l}.hook_resid_post`, the residual stream leaving block l (B sequences of
T tokens; the embeddings are not a layer here), P^l (B, H, Q, K) = `blocks.{l}.attn.pattern`. Every key
pools the batch: with B = 1 it is the statistic of that one sequence, with B windows of equal length
the mean (or max) over windows. "Queries after position 0" are the queries at key position >= 1 (query 0
can only attend to token 0, so it says nothing about a sink); under causal bottom-right alignment with
Q < K every query already is.

Per-layer lists have n_layers entries, index l = block l. A cache without attention weights gives None for
the attention keys.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from attnlab.diagnose.attention_stats import (
    SINK_THRESHOLD,
    first_token_attention,
    normalized_entropy,
)
from attnlab.diagnose.outliers import layer_kurtosis
from attnlab.diagnose.residual import fitted_growth, token_norms
from attnlab.diagnose.uniformity import effective_rank, uniformity_ratio

ATTENTION_KEYS = ("first_token_layer", "first_token_attn", "first_token_heads", "sink_rate_layer",
                  "sink_rate", "null_sink_mass_layer", "null_sink_mass", "null_sink_mass_heads",
                  "entropy_layer", "entropy_norm")


def _first_query(q_len: int, kv_len: int) -> int:
    # The same query set as first_token_attention: skip query 0 when it sits at key position 0.
    return 1 if kv_len == q_len and q_len > 1 else 0


def null_sink_mass(p: Tensor) -> Tensor:
    """Weight the virtual key absorbs, m_h = mean_i (1 - sum_j p_ij) over queries after position 0:
    (..., H, Q, K) -> (..., H), float64.

    Softmax1 (a zero logit, value 0) and learned sinks (gpt-oss, one logit per head) put part of every
    row on a key that is not in the sequence; the recorded weights are over the real keys only, so their
    row sum is 1 minus that share. Plain softmax gives 0 up to rounding (|m| ~ 1e-7 in float32). Clipped
    softmax rows can sum above 1, which shows as a negative value.
    """
    if p.dim() < 3:
        raise ValueError(f"attention weights must have shape (..., heads, queries, keys), "
                         f"got {tuple(p.shape)}")
    first = _first_query(p.shape[-2], p.shape[-1])
    return (1.0 - p[..., first:, :].double().sum(dim=-1)).mean(dim=-1)


def _layer_count(cache: Mapping[str, Tensor], n_layers: int | None) -> int:
    if n_layers is None:
        n_layers = 0
        while f"blocks.{n_layers}.hook_resid_post" in cache:
            n_layers += 1
    if n_layers < 1:
        raise ValueError("the cache has no blocks.0.hook_resid_post; capture it with "
                         "LoadedModel.run_with_cache(ids)")
    return n_layers


def _get(cache: Mapping[str, Tensor], name: str, dims: int) -> Tensor:
    if name not in cache:
        raise ValueError(f"the cache has no {name!r}; capture it with LoadedModel.run_with_cache(ids)")
    t = cache[name]
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"cache[{name!r}] must be a floating-point tensor")
    if t.dim() == dims - 1:
        t = t.unsqueeze(0)  # one sequence without its batch dimension
    if t.dim() != dims or 0 in t.shape:
        raise ValueError(f"cache[{name!r}] must have {dims} non-empty dimensions (batch first), "
                         f"got shape {tuple(t.shape)}")
    return t


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def summarize(cache: Mapping[str, Tensor], n_layers: int | None = None, *,
              threshold: float = SINK_THRESHOLD, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Headline numbers of a cache (TransformerLens names, see `attnlab.models.adapter`), pooled over its
    batch. `n_layers` defaults to the blocks the cache holds; `threshold` is Gu et al.'s sink epsilon.

    Returns floats (nan where undefined), per-layer lists of floats, and per-(layer, head) lists of lists;
    the keys and formulas are the table "Summary keys" of docs/diagnostics.md.

    keys: only these keys (any of `KEYS`), each the same value the full call gives; the work that feeds
    no asked key is skipped (effective rank and uniformity take an SVD per layer). The cache and the
    threshold are checked as in the full call, so asking for fewer keys never turns an error into a result.
    """
    asked = None if keys is None else _checked_keys(keys)
    need = set(GROUPS) if asked is None else {_GROUP_OF[k] for k in asked}  # the computations to run
    n_layers = _layer_count(cache, n_layers)
    out: dict[str, Any] = {k: [] for k in ("resid_norm", "kurtosis", "max_abs_layer", "massive_ratio_layer",
                                           "uniformity", "effective_rank")}
    first_norms: list[float] = []
    top = (-1.0, {})
    for layer in range(n_layers):
        x = _get(cache, f"blocks.{layer}.hook_resid_post", 3).detach()  # (B, T, d)
        if "norms" in need:
            n = token_norms(x)  # (B, T)
            out["resid_norm"].append(float((n[:, 1:] if n.shape[1] > 1 else n).mean()))
            first_norms.append(float(n[:, 0].mean()))
        if "kurtosis" in need:
            out["kurtosis"].append(float(layer_kurtosis(x).mean()))
        if "peak" in need:
            a = x.abs().double()
            flat = a.flatten(1)  # (B, T * d)
            peak, where = flat.max(dim=1)
            median = flat.median(dim=1).values
            out["massive_ratio_layer"].append(float(torch.where(median > 0, peak / median.clamp_min(1e-300),
                                                                torch.full_like(peak, math.inf)).max()))
            b = int(peak.argmax())
            out["max_abs_layer"].append(float(peak[b]))
            if float(peak[b]) > top[0]:
                i = int(where[b])
                top = (float(peak[b]), {"layer": layer, "sequence": b, "token": i // x.shape[2],
                                        "dim": i % x.shape[2]})
        if "uniformity" in need:
            out["uniformity"].append(float(sum(uniformity_ratio(s) for s in x) / x.shape[0]))
        if "effective_rank" in need:
            out["effective_rank"].append(float(sum(effective_rank(s) for s in x) / x.shape[0]))
    norms = out["resid_norm"]
    last = _get(cache, f"blocks.{n_layers - 1}.hook_resid_post", 3).detach()
    if "norms" in need:
        out.update({
            "resid_norm_last": norms[-1],
            "norm_first_over_rest_last": first_norms[-1] / norms[-1] if norms[-1] > 0 else math.nan,
            "norm_growth_per_layer": fitted_growth(norms) if n_layers >= 2 and min(norms) > 0 else math.nan,
        })
    if "kurtosis" in need:
        out.update({"kurtosis_max": max(out["kurtosis"]), "kurtosis_mean": _mean(out["kurtosis"])})
    if "peak" in need:
        out.update({"max_abs": top[0], "max_abs_where": top[1],
                    "massive_ratio": max(out["massive_ratio_layer"])})
    if "uniformity" in need:
        out["uniformity_last"] = out["uniformity"][-1]
    if "uniformity_excl_first" in need:
        out["uniformity_excl_first_last"] = (float(sum(uniformity_ratio(s[1:]) for s in last) / last.shape[0])
                                             if last.shape[1] > 2 else math.nan)
    if "effective_rank" in need:
        out["effective_rank_last"] = out["effective_rank"][-1]
    out.update(_attention(cache, n_layers, threshold, need))
    if asked is None:
        return out
    return {k: v for k, v in out.items() if k in asked}


def _attention(cache: Mapping[str, Tensor], n_layers: int, threshold: float,
               need: Collection[str]) -> dict[str, Any]:
    names = [f"blocks.{layer}.attn.pattern" for layer in range(n_layers)]
    if not all(name in cache for name in names):
        return dict.fromkeys(ATTENTION_KEYS)
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    first_heads, null_heads, entropy = [], [], []
    for name in names:
        p = _get(cache, name, 4).detach()  # (B, H, Q, K)
        if "first_token" in need:
            first_heads.append(first_token_attention(p).mean(dim=0).tolist())  # (H,)
        if "null_sink" in need:
            null_heads.append(null_sink_mass(p).mean(dim=0).tolist())
        if "entropy" in need:
            entropy.append(float(normalized_entropy(p).nanmean()))
    out: dict[str, Any] = {}
    if "first_token" in need:
        every = [a for row in first_heads for a in row]
        out.update({
            "first_token_heads": first_heads,
            "first_token_layer": [sum(row) / len(row) for row in first_heads],
            "first_token_attn": sum(every) / len(every),
            "sink_rate_layer": [sum(a > threshold for a in row) / len(row) for row in first_heads],
            "sink_rate": sum(a > threshold for a in every) / len(every),
        })
    if "null_sink" in need:
        heads = sum(len(row) for row in null_heads)  # every (layer, head) pair, as first_token_attn counts
        out.update({
            "null_sink_mass_heads": null_heads,
            "null_sink_mass_layer": [sum(row) / len(row) for row in null_heads],
            "null_sink_mass": sum(m for row in null_heads for m in row) / heads,
        })
    if "entropy" in need:
        out.update({"entropy_layer": entropy, "entropy_norm": _mean(entropy)})
    return out


def _checked_keys(keys: Iterable[str]) -> frozenset[str]:
    """The asked keys, each one `summarize` returns (else a ValueError naming them all)."""
    if isinstance(keys, str):
        raise TypeError(f"keys must be a collection of key names, e.g. keys=({keys!r},), not a string")
    asked = list(keys)
    unknown = [k for k in asked if k not in _GROUP_OF]
    if unknown:
        raise ValueError(f"summarize: unknown key(s) {', '.join(map(repr, unknown))}; the keys are: "
                         f"{', '.join(KEYS)}")
    return frozenset(asked)


# Which computation feeds each key: a call with `keys` runs only the groups of the keys it asks for.
GROUPS: dict[str, tuple[str, ...]] = {
    "norms": ("resid_norm", "resid_norm_last", "norm_first_over_rest_last", "norm_growth_per_layer"),
    "kurtosis": ("kurtosis", "kurtosis_max", "kurtosis_mean"),
    "peak": ("max_abs_layer", "massive_ratio_layer", "max_abs", "max_abs_where", "massive_ratio"),
    "uniformity": ("uniformity", "uniformity_last"),  # an SVD per layer and sequence
    "uniformity_excl_first": ("uniformity_excl_first_last",),  # one more, of the last layer
    "effective_rank": ("effective_rank", "effective_rank_last"),  # an SVD per layer and sequence
    "first_token": ("first_token_heads", "first_token_layer", "first_token_attn", "sink_rate_layer",
                    "sink_rate"),
    "null_sink": ("null_sink_mass_heads", "null_sink_mass_layer", "null_sink_mass"),
    "entropy": ("entropy_layer", "entropy_norm"),
}
_GROUP_OF = {key: group for group, members in GROUPS.items() for key in members}
KEYS = tuple(_GROUP_OF)  # every key summarize returns
