"""The diagnostics of `attnlab report`, run on an in-memory model and reduced to what a study compares.

`probe_lm(gpt, val_tokens, config)` wraps attnlab's GPT as a `LoadedModel` and, on `probe_windows` held-out
windows of `config.context` bytes spread evenly over the validation text, computes with `attnlab.diagnose`:

- per layer (mean over windows): residual norm and growth, Dong et al.'s uniformity ratio, effective rank,
  kurtosis (Pearson, per token over features, mean over tokens t >= 1; Bondarenko et al. 2023), max |h|
  (max over windows), attention to token 0 (mean over heads), sink rate (Gu et al. 2024, eps = 0.3),
  normalised attention entropy;
- model level: int8 W8A8 fake-quantization loss gap (mean over `quant_windows` windows), the sensitivity
  profile ||d h_last / d e_i|| (Barbero et al. 2024) and the local Lipschitz constant vs length
  (Castin et al. 2024) with its fitted exponent.

Scalars: kurtosis_max is the largest per-layer kurtosis, max_abs the largest |h| anywhere, sink_rate the
share of all heads of all layers with mean token-0 attention > 0.3, first_token_attn the mean over layers
and heads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def probe_windows(tokens: Tensor, length: int, count: int) -> list[Tensor]:
    """`count` windows (1, length) of a token stream, starts spread evenly (deterministic)."""
    n = tokens.numel()
    if n < length + 1:
        raise ValueError(f"probe_windows: {n} tokens cannot hold a window of {length}; use more text")
    count = max(1, count)
    starts = torch.linspace(0, n - length - 1, count).long().tolist()
    return [tokens[s:s + length].unsqueeze(0) for s in starts]


def wrap(model: nn.Module, name: str) -> Any:
    from attnlab.data import ByteTokenizer
    from attnlab.models.loading import from_gpt

    return from_gpt(model, ByteTokenizer(), name=name, source="attnlab.experiments")


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


@torch.no_grad()
def layer_probe(lm: Any, windows: list[Tensor]) -> dict[str, Any]:
    """Per-layer diagnostics averaged over windows (see module docstring)."""
    from attnlab.diagnose.metrics import cache_metrics

    L = lm.n_layers
    acc: dict[str, list[list[float]]] = {k: [[] for _ in range(L)] for k in (
        "resid_norm", "growth", "uniformity", "effective_rank", "kurtosis", "max_abs_layer", "massive_ratio",
        "first_token_layer", "entropy_layer")}
    heads: list[list[list[float]]] = [[] for _ in range(L)]  # per layer, per window, per head token-0 weight
    for ids in windows:
        _, cache = lm.run_with_cache(ids)
        m = cache_metrics(cache, L)
        for i, layer in enumerate(m["layers"]):
            acc["resid_norm"][i].append(layer["residual"]["mean"])
            acc["growth"][i].append(layer["residual"]["growth"])
            acc["uniformity"][i].append(layer["uniformity"]["ratio"])
            acc["effective_rank"][i].append(layer["uniformity"]["effective_rank"])
            acc["kurtosis"][i].append(layer["outliers"]["kurtosis_mean"])
            acc["max_abs_layer"][i].append(layer["outliers"]["max_abs"])
            acc["massive_ratio"][i].append(layer["outliers"]["massive"]["ratio"])
            att = layer["attention"]
            acc["first_token_layer"][i].append(_mean(att["first_token"]))
            acc["entropy_layer"][i].append(_mean(att["entropy_normalized"]))
            heads[i].append(att["first_token"])
    out: dict[str, Any] = {}
    for key, per_layer in acc.items():
        reduce = max if key in ("max_abs_layer", "massive_ratio") else _mean
        out[key] = [reduce(v) for v in per_layer]
    # A head's token-0 attention averaged over windows, then thresholded (Gu et al.'s eps = 0.3).
    from attnlab.diagnose.attention_stats import SINK_THRESHOLD

    head_means = [[_mean([w[h] for w in heads[i]]) for h in range(len(heads[i][0]))] for i in range(L)]
    out["sink_rate_layer"] = [sum(a > SINK_THRESHOLD for a in row) / len(row) for row in head_means]
    all_heads = [a for row in head_means for a in row]
    out["sink_rate"] = sum(a > SINK_THRESHOLD for a in all_heads) / len(all_heads)
    out["first_token_attn"] = _mean(all_heads)
    out["kurtosis_max"] = max(out["kurtosis"])
    out["kurtosis_mean"] = _mean(out["kurtosis"])
    out["max_abs"] = max(out["max_abs_layer"])
    out["massive_ratio"] = max(out["massive_ratio"])
    out["entropy_norm"] = _mean(out["entropy_layer"])
    out["resid_norm_last"] = out["resid_norm"][-1]
    out["norm_growth"] = _mean(out["growth"])
    out["uniformity_last"] = out["uniformity"][-1]
    out["effective_rank_last"] = out["effective_rank"][-1]
    return out


def quant_gap(lm: Any, windows: list[Tensor]) -> float:
    """Mean over windows of the loss increase under int8 W8A8 fake quantization (nats/token)."""
    from attnlab.diagnose.quantize import quantization_cost

    with torch.no_grad():
        return _mean([quantization_cost(lm, ids, modes=("w8a8",))["w8a8"]["delta_loss"] for ids in windows])


def sensitivity(lm: Any, windows: list[Tensor], n_probes: int = 4) -> dict[str, Any]:
    """Mean sensitivity profile over windows, normalised by its sum (so models of any scale compare)."""
    from attnlab.diagnose.sensitivity import sensitivity_profile

    profiles = []
    for k, ids in enumerate(windows):
        s = sensitivity_profile(lm, ids, n_probes=n_probes, seed=k)
        profiles.append(s / s.sum())
    mean = torch.stack(profiles).mean(0)
    return {"x": list(range(mean.numel())), "y": mean.tolist(),
            "first_over_last": float(mean[0] / mean[-1]) if mean[-1] > 0 else float("inf")}


def lipschitz(lm: Any, ids: Tensor, lengths: tuple[int, ...], n_iter: int) -> dict[str, Any]:
    from attnlab.diagnose.lipschitz import lipschitz_vs_length

    res = lipschitz_vs_length(lm, ids, list(lengths), n_iter=n_iter)
    return {"x": res["n"], "y": res["value"], "exponent": res["exponent"]}


def probe_lm(model: nn.Module, val_tokens: Tensor, config: Any, *, progress: bool = True,
             name: str = "model") -> dict[str, Any]:
    """All diagnostics of one trained model (config supplies context, probe_windows, quant_windows,
    sensitivity_len, lipschitz_lengths, lipschitz_iters)."""
    from attnlab.experiments.common import progress_bar

    lm = wrap(model, name)
    model.eval()
    bar = progress_bar(4, f"probe {name}", progress)
    windows = probe_windows(val_tokens, config.context, config.probe_windows)
    out = layer_probe(lm, windows)
    bar.update(1)
    out["quant_gap"] = quant_gap(lm, probe_windows(val_tokens, config.context, config.quant_windows))
    bar.update(1)
    sens = sensitivity(lm, [w[:, :config.sensitivity_len] for w in windows[:2]])
    out["sensitivity"] = {"x": sens["x"], "y": sens["y"]}
    out["sensitivity_first_over_last"] = sens["first_over_last"]
    bar.update(1)
    lip = lipschitz(lm, windows[0], config.lipschitz_lengths, config.lipschitz_iters)
    out["lipschitz"] = {"x": lip["x"], "y": lip["y"]}
    out["lipschitz_max_len"] = lip["y"][-1]
    out["lipschitz_exponent"] = lip["exponent"]
    bar.update(1)
    bar.close()
    return out
