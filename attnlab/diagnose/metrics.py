"""Every per-layer metric of the report, and the analysis of a saved activation cache.

The metrics are plain functions of tensors, split by theme (each module's docstring gives the formulas
and papers):

    residual.py         residual-stream norm and growth factor (Heimersheim & Turner 2023)
    uniformity.py       Dong et al. 2021 ratio, effective rank, stable rank, mean pairwise cosine
    outliers.py         massive activations (Sun et al. 2024), kurtosis and max |h| (Bondarenko et al. 2023)
    attention_stats.py  entropy, first-token attention and sink rate (Gu et al. 2024), dispersion
                        (Velickovic et al. 2024)
    summary.py          `summarize(cache)`: the headline numbers, one definition per key (the report's
                        summary and the studies' probes; table in docs/diagnostics.md), null-sink mass

`cache_metrics(cache, n_layers)` turns a cache with TransformerLens names (as `LoadedModel.run_with_cache`
returns: `blocks.{i}.hook_resid_pre` / `hook_resid_post` (B, T, d), `blocks.{i}.attn.pattern`
(B, H, T, T)) into the report's per-layer entries. It reads the cache only, never the model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from torch import Tensor

from attnlab.diagnose.attention_stats import (
    SINK_THRESHOLD,
    attention_entropy,
    attention_summary,
    first_token_attention,
    keys_seen,
    max_weight,
    normalized_entropy,
    sink_rate,
)
from attnlab.diagnose.outliers import kurtosis, layer_kurtosis, massive_activations, max_abs, outlier_summary
from attnlab.diagnose.residual import fitted_growth, growth_factors, norm_summary, token_norms
from attnlab.diagnose.summary import null_sink_mass, summarize
from attnlab.diagnose.uniformity import (
    composite_norm,
    effective_rank,
    mean_pairwise_cosine,
    stable_rank,
    uniformity_ratio,
    uniformity_summary,
)

__all__ = [
    "SINK_THRESHOLD", "attention_entropy", "attention_summary", "cache_metrics", "composite_norm",
    "effective_rank", "first_token_attention", "fitted_growth", "growth_factors", "keys_seen", "kurtosis",
    "layer_kurtosis", "layer_metrics", "massive_activations", "max_abs", "max_weight", "mean_pairwise_cosine",
    "norm_summary",
    "normalized_entropy", "null_sink_mass", "outlier_summary", "residual_metrics", "sink_rate", "stable_rank",
    "summarize", "token_norms", "uniformity_ratio", "uniformity_summary",
]


def residual_metrics(x: Tensor, top_k: int = 5, timings: dict[str, float] | None = None) -> dict[str, object]:
    """Norm, uniformity (all tokens, and without position 0) and outlier figures of one residual stream
    X (T, d) or (1, T, d)."""
    if x.dim() == 3:
        if x.shape[0] != 1:
            raise ValueError(f"residual_metrics takes one sequence, got a batch of {x.shape[0]}")
        x = x[0]
    t = _Clock(timings)
    with t("residual_norm"):
        norms = norm_summary(x)
    with t("uniformity"):
        uni = uniformity_summary(x)
        uni_rest = uniformity_summary(x[1:]) if x.shape[0] > 2 else None
    with t("outliers"):
        out = outlier_summary(x, top_k)
    return {"residual": norms, "uniformity": uni, "uniformity_excl_first": uni_rest, "outliers": out}


def layer_metrics(resid_in: Tensor, resid_out: Tensor, pattern: Tensor | None, top_k: int = 5,
                  timings: dict[str, float] | None = None) -> dict[str, object]:
    """One block's entry: metrics of its output residual stream, its growth factor
    mean_{t>=1} ||out_t|| / mean_{t>=1} ||in_t||, and its attention statistics (None without weights)."""
    entry = residual_metrics(resid_out, top_k, timings)
    with _Clock(timings)("residual_norm"):
        before = norm_summary(resid_in[0] if resid_in.dim() == 3 else resid_in)["mean"]
    entry["residual"]["growth"] = entry["residual"]["mean"] / before if before > 0 else float("inf")
    if pattern is not None:
        with _Clock(timings)("attention"):
            entry["attention"] = attention_summary(pattern)
    else:
        entry["attention"] = None
    return entry


def cache_metrics(cache: Mapping[str, Tensor], n_layers: int, top_k: int = 5,
                  timings: dict[str, float] | None = None) -> dict[str, object]:
    """{"embeddings": metrics of the input of block 0, "layers": one entry per block} from a cache.

    Block i's entry has "index" = i and the keys of `layer_metrics`. A missing pattern gives
    "attention": None; a missing residual stream is an error naming the key.
    """
    def get(name: str) -> Tensor:
        if name not in cache:
            raise ValueError(f"the cache has no {name!r}; capture it with LoadedModel.run_with_cache(ids)")
        return cache[name]

    embeddings = residual_metrics(get("blocks.0.hook_resid_pre"), top_k, timings)
    layers = []
    for i in range(n_layers):
        entry = {"index": i}
        entry.update(layer_metrics(get(f"blocks.{i}.hook_resid_pre"), get(f"blocks.{i}.hook_resid_post"),
                                   cache.get(f"blocks.{i}.attn.pattern"), top_k, timings))
        layers.append(entry)
    return {"embeddings": embeddings, "layers": layers}


class _Clock:
    """Adds wall time of `with clock(name):` blocks to timings[name] (no-op without a dict)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.name = ""

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.timings is not None:
            self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start
