"""Per-layer profiles (token-0 attention, null-sink mass, kurtosis, max |activation|) with 95% intervals:
a bootstrap over the held-out windows with one seed, a t interval over seeds with more."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attnlab.experiments.compare.measure import HEAD_KEYS, LAYER_KEYS
from attnlab.experiments.stats import mean_interval, t_interval

LAYER_BOOT = 500  # draws per layer: the plots' bars, not a verdict


def _layers(items: Mapping[str, Any], key: str) -> list[list[float]] | None:
    rows = items.get(key)
    if not rows or not rows[0]:
        return None
    if any(v is None or not math.isfinite(v) for row in rows for v in row):
        return None
    return rows


def layer_profiles(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """{key: {"value": [per layer], "lo": [...], "hi": [...], "method"}} plus mean per-(layer, head) maps."""
    out: dict[str, Any] = {}
    seeds = sorted(per_seed)
    if not seeds:
        return out
    for key in LAYER_KEYS:
        per = [_layers(per_seed[s], key) for s in seeds]
        if any(p is None for p in per):
            continue
        n_layers = len(per[0][0])
        value, lo, hi, method = [], [], [], ""
        for layer in range(n_layers):
            if len(seeds) >= 2:
                iv = t_interval([sum(r[layer] for r in p) / len(p) for p in per])
            else:
                iv = mean_interval([r[layer] for r in per[0]], n_boot=LAYER_BOOT, seed=layer)
            value.append(iv["value"])
            lo.append(iv["lo"])
            hi.append(iv["hi"])
            method = iv["method"]
        out[key] = {"value": value, "lo": lo, "hi": hi, "method": method}
    for key in HEAD_KEYS:
        maps = [per_seed[s].get(key) for s in seeds]
        if all(m is not None for m in maps):
            out[key] = [[sum(m[i][h] for m in maps) / len(maps) for h in range(len(maps[0][i]))]
                        for i in range(len(maps[0]))]
    return out


__all__ = ["layer_profiles"]
