"""Per-window measurements of one retrofit arm on the held-out windows (each window is one item, nested in
its seed). Definitions below are the page's and docs/experiments.md's; every statistic is computed per
window so windows stay independent items.

For every window (1, T + 1), from one capture forward:

- `nll`: mean next-token NLL (nats/token) of its T predictions.
- `first_token_attn`, `sink_rate`: attention on token 0, mean over layers, heads and queries >= 1, and the
  share of (layer, head) pairs above Gu et al.'s 0.3 (`diagnose.summary`); query 0 has one key, so it is
  left out of both and reported on its own as `first_query_weight` (its weight on itself, mean over layers
  and heads: 1 for softmax, sigmoid(s_00) for softmax1, whatever the model learned).
- `null_sink_mass`: 1 - row sum over queries >= 1 (the weight softmax1's zero logit or a learned sink takes),
  exactly 0 for arms without a null; `clipped_mass`: the same deficit for clipped softmax (weight clipped
  away, can be negative), exactly 0 for the others.
- `kurtosis_token` / `kurtosis_tok0`: per-token kurtosis across d (Kaul et al. 2025), mean over layers, of
  tokens >= 1 / of token 0; `kurtosis_pooled_ex0`: Bondarenko et al.'s pooled kurtosis over the T - 1 x d
  entries of tokens >= 1, mean over layers (`kurtosis_pooled_ex0_max`: the max over layers). Token 0 is
  kept out of the pooled value because one massive entry pins a pooled kurtosis at ~N (docs/diagnostics.md).
- `massive_tok0` / `massive_rest`: Sun et al. 2024's top |h| over the median |h|, max over layers, of
  token 0 / of the other tokens; `max_abs`: the largest |h| (all tokens, all layers).
- `int8_w8a8`, `int8_w8a8_token`, `int8_static`: NLL under int8 fake quantization minus the float NLL,
  nats/token: weights per tensor and activations per tensor with this window's own scales (one window per
  forward, so no window's outlier sets another's scale), per token, or static ranges calibrated on the
  training split (Bondarenko et al.'s protocol; the calibration is fixed per arm and seed).

Per layer per window: `first_token_layer`, `null_sink_mass_layer`, `kurtosis_token_layer`,
`massive_tok0_layer`; per (layer, head), mean over windows: `first_token_heads`, `null_sink_mass_heads`.
Every key is `diagnose.summary`'s own or compare's entry in `attnlab.present.catalogue`: none is renamed on
its way to results.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.experiments.stats import finite_mean

WINDOW_KEYS = ("first_token_attn", "first_query_weight", "sink_rate", "null_sink_mass", "clipped_mass",
               "kurtosis_token", "kurtosis_tok0", "kurtosis_pooled_ex0", "kurtosis_pooled_ex0_max",
               "massive_tok0", "massive_rest", "max_abs")
QUANT_KEYS = ("int8_w8a8", "int8_w8a8_token", "int8_static")
LAYER_KEYS = ("first_token_layer", "null_sink_mass_layer", "kurtosis_token_layer", "massive_tok0_layer")
HEAD_KEYS = ("first_token_heads", "null_sink_mass_heads")
# What compare reads of `summarize`: asking for only these skips its SVD metrics (3.6x faster per window on
# SmolLM2 at 160 tokens, benchmarks/summary.py), values unchanged.
SUMMARY_KEYS = ("first_token_attn", "sink_rate", "null_sink_mass", "max_abs", "first_token_layer",
                "null_sink_mass_layer", *HEAD_KEYS)
CALIBRATION_WINDOWS = 4


def window_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """(B,) mean next-token NLL of each row: logits (B, T, V) predicting targets (B, T)."""
    loss = F.cross_entropy(logits.float().transpose(1, 2), targets.to(logits.device), reduction="none")
    return loss.mean(dim=1).double().cpu()


@torch.no_grad()
def batched_nll(lm: Any, windows: Tensor, batch: int = 8) -> list[float]:
    out: list[float] = []
    for i in range(0, windows.shape[0], batch):
        rows = windows[i:i + batch].to(lm.device)
        out += window_nll(lm.logits(rows[:, :-1]), rows[:, 1:]).tolist()
    return out


def _pooled_kurtosis(x: Tensor) -> float:
    """Kurtosis of all entries of x (T', d) pooled: mean((x - mean)^4) / var^2."""
    v = x.double().flatten()
    c = v - v.mean()
    var = c.pow(2).mean()
    return float(c.pow(4).mean() / var.pow(2)) if var > 0 else math.nan


def _window_stats(cache: dict[str, Tensor], n_layers: int, deficit: str | None) -> dict[str, Any]:
    from attnlab.diagnose.peaks import massive_ratio, token_kurtosis
    from attnlab.diagnose.summary import summarize

    s = summarize(cache, n_layers, keys=SUMMARY_KEYS)
    k_tok, k0, pooled, m0, mrest, first_q = [], [], [], [], [], []
    for layer in range(n_layers):
        h = cache[f"blocks.{layer}.hook_resid_post"].detach()  # (1, T, d)
        a, b = token_kurtosis(h)
        k0.append(float(a[0]))
        k_tok.append(float(b[0]))
        pooled.append(_pooled_kurtosis(h[0, 1:]))
        x0, xr = massive_ratio(h)
        m0.append(float(x0[0]))
        mrest.append(float(xr[0]))
        p = cache.get(f"blocks.{layer}.attn.pattern")
        if p is not None:
            first_q.append(float(p[0, :, 0, 0].double().mean()))
    deficit_value = s.get("null_sink_mass")
    stats = {
        "first_token_attn": s.get("first_token_attn"), "first_query_weight": finite_mean(first_q),
        "sink_rate": s.get("sink_rate"),
        "null_sink_mass": deficit_value if deficit == "null" else 0.0,
        "clipped_mass": deficit_value if deficit == "clipped" else 0.0,
        "kurtosis_token": finite_mean(k_tok), "kurtosis_tok0": finite_mean(k0),
        "kurtosis_pooled_ex0": finite_mean(pooled),
        "kurtosis_pooled_ex0_max": max(pooled), "massive_tok0": max(m0), "massive_rest": max(mrest),
        "max_abs": s.get("max_abs"),
    }
    layers = {
        "first_token_layer": s.get("first_token_layer") or [],
        "null_sink_mass_layer": ((s.get("null_sink_mass_layer") or []) if deficit == "null"
                                 else [0.0] * n_layers),
        "kurtosis_token_layer": k_tok, "massive_tok0_layer": m0,
    }
    return {"window": stats, "layers": layers, "heads": {k: s.get(k) for k in HEAD_KEYS}}


@torch.no_grad()
def measure(lm: Any, windows: Tensor, *, deficit: str | None = None, calibration: Tensor | None = None,
            quant: bool = True, tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All measurements of `lm` (a LoadedModel) on windows (n, T + 1): per-window lists (nll, WINDOW_KEYS,
    QUANT_KEYS), per-layer lists per window (LAYER_KEYS), per-(layer, head) means over windows.

    deficit: what 1 - row sum is for this arm ("null", "clipped" or None: rows sum to 1, reported as 0).
    calibration: (m, T + 1) training windows for the static quantizer (None: no `int8_static`)."""
    from attnlab.diagnose.quantize import fake_quant, static_fake_quant

    lm.model.eval()
    items: dict[str, list[Any]] = {"nll": [], **{k: [] for k in WINDOW_KEYS}, **{k: [] for k in LAYER_KEYS}}
    heads: dict[str, Tensor] = {}
    n = windows.shape[0]
    for w in range(n):
        row = windows[w:w + 1].to(lm.device)
        with lm.capture(attention=True) as cache:
            logits = lm.logits(row[:, :-1])
        items["nll"].append(float(window_nll(logits, row[:, 1:])[0]))
        st = _window_stats(cache, lm.n_layers, deficit)
        for k in WINDOW_KEYS:
            items[k].append(_finite_or_none(st["window"][k]))
        for k in LAYER_KEYS:
            items[k].append([_finite_or_none(v) for v in st["layers"][k]])
        for k in HEAD_KEYS:
            if st["heads"].get(k) is not None:
                t = torch.tensor(st["heads"][k], dtype=torch.float64)
                if k == "null_sink_mass_heads" and deficit != "null":
                    t = torch.zeros_like(t)
                heads[k] = heads.get(k, torch.zeros_like(t)) + t / n
        del cache
        if tick is not None:
            tick("measure")
    if quant:
        one = lambda: batched_nll(lm, windows, batch=1)  # noqa: E731  one window per forward: its own scales
        base = one()  # the float NLL on the path the quantized forwards take
        with fake_quant(lm.model, weights=True, activations=True, granularity="tensor"):
            items["int8_w8a8"] = _minus(one(), base)
        with fake_quant(lm.model, weights=True, activations=True, granularity="token"):
            items["int8_w8a8_token"] = _minus(one(), base)
        if calibration is not None:
            with static_fake_quant(lm.model, lambda: batched_nll(lm, calibration)):
                items["int8_static"] = _minus(one(), base)
        if tick is not None:
            tick("int8")
    items.update({k: v.tolist() for k, v in heads.items()})
    return items


def _minus(a: list[float], b: list[float]) -> list[float | None]:
    return [_finite_or_none(x - y) for x, y in zip(a, b)]


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


__all__ = ["HEAD_KEYS", "LAYER_KEYS", "QUANT_KEYS", "WINDOW_KEYS", "batched_nll", "measure", "window_nll"]
