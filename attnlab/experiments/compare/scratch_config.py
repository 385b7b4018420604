"""Part 1 of `attnlab compare`: small GPTs trained from scratch on Bigram-Backcopy, differing only in
attention. Arms, presets and the settings fixed before any run (premise and margins live in scratch_claims).

Every arm of one seed starts from the same initial weights for every weight it shares with the control
(copied from the control's freshly built model), sees the same batches in the same order, and trains with
the same optimizer and schedule; only the normalizer (and a gate, for the gated arms) differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attnlab.errors import ConfigError
from attnlab.experiments.base import MAX_SEEDS  # the one bound on seeds, for every study

# arm -> the GPT's attention (GPTConfig.normalizer, GPTConfig.gated_attention)
SCRATCH_ARMS: dict[str, dict[str, Any]] = {
    "softmax": {"normalizer": "softmax", "gated": False},
    "softmax1": {"normalizer": "softmax1", "gated": False},
    "sinks": {"normalizer": "sinks", "gated": False},
    "gated": {"normalizer": "softmax", "gated": True},
    "softmax1+gated": {"normalizer": "softmax1", "gated": True},
    "softpick": {"normalizer": "softpick", "gated": False},
    "clipped": {"normalizer": "clipped", "gated": False},
}
SCRATCH_CONTROL = "softmax"
# What "1 - row sum" of an arm's weights is: the share put on no key (a null), the share clipped away (can
# be negative: clipped rows may sum above 1), or nothing (rows sum to 1 exactly, reported as exact 0).
ROW_DEFICIT = {"softmax1": "null", "sinks": "null", "softmax1+gated": "null", "softpick": "null",
               "clipped": "clipped"}


@dataclass(frozen=True)
class ScratchConfig:
    arms: tuple[str, ...] = tuple(SCRATCH_ARMS)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # the model: one layer, one head is enough to grow the sink (Guo et al. 2024, Fig. 2)
    n_layers: int = 1
    n_heads: int = 1
    d_model: int = 64
    # the task (attnlab.data.backcopy; the chain is fixed across seeds)
    vocab: int = 64
    n_triggers: int = 3
    length: int = 64
    alpha: float = 0.1
    chain_seed: int = 0
    # training: sized on a pilot so the softmax control grows its sink (~0.45 at 700-1000 steps)
    steps: int = 800
    batch_size: int = 32
    lr: float = 3e-2
    warmup: int = 50
    eval_sequences: int = 64  # held-out sequences, the same for every arm and seed
    curve_every: int = 50  # steps between points of the sink's training curve
    workers: int = 2  # processes training arms side by side (one torch thread each)
    device: str = "cpu"


SCRATCH_PRESETS: dict[str, ScratchConfig] = {
    # plumbing only (no verdicts): seconds
    "smoke": ScratchConfig(seeds=(0, 1), d_model=32, length=24, vocab=16, steps=20, batch_size=8, warmup=2,
                           eval_sequences=8, curve_every=10, workers=1),
    # the default (`make demo`): 7 arms x 5 seeds on two cores
    "quick": ScratchConfig(),
    "standard": ScratchConfig(),
    # deeper, wider, longer, more seeds: for a GPU (device auto) or a long CPU run
    "full": ScratchConfig(seeds=tuple(range(8)), n_layers=2, n_heads=2, d_model=128, steps=3000,
                          batch_size=64, lr=1e-2, warmup=200, eval_sequences=128, curve_every=100,
                          device="auto"),
}


def check_scratch(c: ScratchConfig) -> None:
    """One clear error per bad setting, before anything is trained."""
    from attnlab.attention import normalizer_names

    unknown = [a for a in c.arms if a not in SCRATCH_ARMS]
    if unknown:
        raise ConfigError(f"unknown from-scratch arm(s) {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(SCRATCH_ARMS)}")
    missing = [SCRATCH_ARMS[a]["normalizer"] for a in c.arms
               if SCRATCH_ARMS[a]["normalizer"] not in normalizer_names()]
    if missing:
        raise ConfigError(f"normalizer(s) {missing} are not registered; see attnlab.normalizer_names()")
    if not c.seeds or len(set(c.seeds)) != len(c.seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in c.seeds):
        raise ConfigError(f"seeds must be distinct non-negative integers, got {c.seeds!r}")
    if len(c.seeds) > MAX_SEEDS:
        raise ConfigError(f"{len(c.seeds)} seeds is more than the study supports ({MAX_SEEDS})")
    if c.length < 3:
        raise ConfigError(f"the task's length must be >= 3 (BOS, a token, a backcopy), got {c.length}")
    if not 1 <= c.n_triggers < c.vocab:
        raise ConfigError(f"n_triggers ({c.n_triggers}) must be in 1 .. vocab - 1 = {c.vocab - 1}: at least "
                          f"one token must not be a trigger")
    for name in ("n_layers", "n_heads", "d_model", "steps", "batch_size", "eval_sequences", "curve_every",
                 "workers"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"scratch {name} must be a positive integer, got {v!r}")
    if c.eval_sequences < 2:
        raise ConfigError("scratch eval_sequences must be >= 2")
    if not 0 <= c.warmup < c.steps:
        raise ConfigError(f"scratch warmup ({c.warmup}) must be below steps ({c.steps})")
    if not 0 < c.lr < 1:
        raise ConfigError(f"scratch lr must be in (0, 1), got {c.lr}")


__all__ = ["ROW_DEFICIT", "SCRATCH_ARMS", "SCRATCH_CONTROL", "SCRATCH_PRESETS", "ScratchConfig",
           "check_scratch"]
