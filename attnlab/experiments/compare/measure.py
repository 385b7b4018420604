"""Per-window measurements of one arm on the held-out windows (each window is one bootstrap item).

For every window (1, T + 1): the next-token NLL (nats/token, mean over its T predictions); the
`attnlab.diagnose.summary.summarize` keys of its activation cache (one capture forward: token-0 attention
and sink rate (Gu et al. 2024, eps = 0.3), the mass the null sink absorbs, the pooled activation kurtosis
per layer and its max (Bondarenko et al. 2023), max |activation| per layer and overall (Sun et al. 2024));
and the NLL under int8 fake quantization (`attnlab.diagnose.quantize`): W8A8 and A8 alone, activations
per tensor and per token, weights per tensor. Definitions of each key: docs/diagnostics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# mode -> (quantize weights, quantize activations, activation granularity)
QUANT_MODES: dict[str, tuple[bool, bool, str]] = {
    "w8a8": (True, True, "tensor"),
    "a8": (False, True, "tensor"),
    "w8a8_token": (True, True, "token"),
    "a8_token": (False, True, "token"),
}
WINDOW_KEYS = ("first_token_attn", "sink_rate", "null_sink_mass", "kurtosis_max", "max_abs")
LAYER_KEYS = {"first_token_layer": "token0_layer", "null_sink_mass_layer": "null_sink_mass_layer",
              "kurtosis": "kurtosis_layer", "max_abs_layer": "max_abs_layer"}
HEAD_KEYS = {"first_token_heads": "token0_heads", "null_sink_mass_heads": "null_sink_mass_heads"}
QUANT_BATCH = 8


def window_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """(B,) mean next-token NLL of each row: logits (B, T, V) predicting targets (B, T)."""
    loss = F.cross_entropy(logits.float().transpose(1, 2), targets.to(logits.device), reduction="none")
    return loss.mean(dim=1).double().cpu()


@torch.no_grad()
def batched_nll(lm: Any, windows: Tensor) -> list[float]:
    out: list[float] = []
    for i in range(0, windows.shape[0], QUANT_BATCH):
        rows = windows[i:i + QUANT_BATCH].to(lm.device)
        out += window_nll(lm.logits(rows[:, :-1]), rows[:, 1:]).tolist()
    return out


@torch.no_grad()
def measure(lm: Any, windows: Tensor, *, quant: bool = True,
            tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All measurements of `lm` (a LoadedModel) on windows (n, T + 1): per-window lists, per-layer lists
    per window, per-(layer, head) means over windows."""
    from attnlab.diagnose.quantize import fake_quant
    from attnlab.diagnose.summary import summarize

    lm.model.eval()
    items: dict[str, list[Any]] = {"nll": [], **{k: [] for k in WINDOW_KEYS},
                                   **{v: [] for v in LAYER_KEYS.values()}}
    heads: dict[str, Tensor] = {}
    for w in range(windows.shape[0]):
        row = windows[w:w + 1].to(lm.device)
        with lm.capture(attention=True) as cache:
            logits = lm.logits(row[:, :-1])
        items["nll"].append(float(window_nll(logits, row[:, 1:])[0]))
        s = summarize(cache, lm.n_layers)
        for k in WINDOW_KEYS:
            items[k].append(_finite_or_none(s.get(k)))
        for k, name in LAYER_KEYS.items():
            items[name].append([_finite_or_none(v) for v in (s.get(k) or [])])
        for k, name in HEAD_KEYS.items():
            if s.get(k) is not None:
                t = torch.tensor(s[k], dtype=torch.float64)
                heads[name] = heads.get(name, torch.zeros_like(t)) + t / windows.shape[0]
        del cache
        if tick is not None:
            tick("measure")
    if quant:
        for mode, (w, a, gran) in QUANT_MODES.items():
            with fake_quant(lm.model, weights=w, activations=a, granularity=gran):
                items[f"nll_{mode}"] = batched_nll(lm, windows)
            if tick is not None:
                tick(mode)
    items.update({k: v.tolist() for k, v in heads.items()})
    return items


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


__all__ = ["HEAD_KEYS", "LAYER_KEYS", "QUANT_MODES", "WINDOW_KEYS", "batched_nll", "measure", "window_nll"]
