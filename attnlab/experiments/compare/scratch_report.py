"""Part 1's section of results.json (`"scratch"`): seeds, arms with metrics (value, lo, hi), per-head
first-token maps, residual peaks per layer, the sink's training curves, the premise and the claims."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from attnlab.experiments.compare.scratch_claims import (
    METRICS,
    arm_metrics,
    interval,
    make_claims,
    premise,
)
from attnlab.experiments.compare.scratch_config import SCRATCH_ARMS, SCRATCH_CONTROL, ScratchConfig


def _mean_lists(rows: list[Any]) -> Any:
    """Elementwise mean of equally shaped nested lists (one per seed)."""
    if not rows:
        return None
    if isinstance(rows[0], list):
        return [_mean_lists([r[i] for r in rows]) for i in range(len(rows[0]))]
    vals = [r for r in rows if r is not None]
    return sum(vals) / len(vals) if vals else None


def assemble_scratch(c: ScratchConfig, results: Mapping[str, Mapping[int, Any]], smoke: bool
                     ) -> dict[str, Any]:
    from attnlab.data.backcopy import bigram_backcopy

    seeds = list(c.seeds)
    measured = {a: {s: r for s, r in runs.items() if "items" in r} for a, runs in results.items()}
    arms = []
    for arm in c.arms:
        runs = results.get(arm, {})
        ok = measured.get(arm, {})
        entry: dict[str, Any] = {
            "name": arm, **SCRATCH_ARMS[arm], "seeds": sorted(int(s) for s in runs),
            "metrics": arm_metrics(measured, arm),
            "heads_dormant": _mean_lists([r["items"]["heads_dormant"] for r in ok.values()]),
            "heads_active": _mean_lists([r["items"]["heads_active"] for r in ok.values()]),
            "resid_peak_layer": _mean_lists([r["items"]["resid_peak_layer"] for r in ok.values()]),
            "sink_curve": {str(s): r["sink_curve"] for s, r in runs.items()},
            "loss_curve": {str(s): r["loss_curve"] for s, r in runs.items()},
            "diverged": {str(s): {"step": r["diverged_at"], "cause": r["cause"]}
                         for s, r in runs.items() if r["diverged_at"] is not None} or None,
        }
        if arm != SCRATCH_CONTROL and SCRATCH_CONTROL in measured:
            entry["vs_control"] = {k: iv for k in METRICS
                                   if (iv := interval(measured, [arm, SCRATCH_CONTROL], k)) is not None}
        arms.append(entry)
    sample = bigram_backcopy(1, c.length, 0, vocab=c.vocab, n_triggers=c.n_triggers, alpha=c.alpha,
                             chain_seed=c.chain_seed)
    return {"config": asdict(c), "seeds": seeds, "control": SCRATCH_CONTROL,
            "task": {"name": "Bigram-Backcopy (Guo et al. 2024)", **sample.meta["params"],
                     "triggers": sample.meta["triggers"], "bos": sample.vocab["bos"]},
            "premise": premise(measured, seeds), "arms": arms,
            "claims": make_claims(measured, seeds, smoke),
            "items": {a: {str(s): r["items"] for s, r in runs.items()} for a, runs in measured.items()}}


__all__ = ["assemble_scratch"]
