"""Statistics over a study's seeds and their table cells: `seed_stats(values)` (mean, sample standard
deviation, standard error, the values kept) and `fmt_stat(stats)` ("mean ± std", or the mean of one seed).

Descriptive only: the intervals claims are judged on are measured in `attnlab.experiments.stats` and judged
in `attnlab.experiments.verdicts`. `attnlab.experiments.base` re-exports both names for the studies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from attnlab.experiments.verdicts import fmt


def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and standard error of per-seed values (non-finite values are kept out and counted)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "se": None, "n": 0, "values": list(values)}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / math.sqrt(n) if n > 1 else None, "n": n,
            "values": [float(v) for v in values]}


def fmt_stat(st: dict[str, Any]) -> str:
    """A table cell of `seed_stats`: "mean ± std" over several seeds, the mean of one, "–" for none."""
    if st.get("mean") is None:
        return "–"
    if st.get("n", 0) > 1:
        return f"{fmt(st['mean'])} ± {fmt(st['std'])}"
    return fmt(st["mean"])


__all__ = ["fmt_stat", "seed_stats"]
