"""The compare study's arms, presets and settings.

Every arm starts from the same pretrained weights and gets the same fine-tuning (the same token stream in
the same order, steps, optimizer, schedule and trainable-parameter set); only attention differs. The new
parameters an arm adds (sink logits, gates) are part of the arm and train with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnlab.errors import ConfigError
from attnlab.experiments.base import MAX_SEEDS
from attnlab.experiments.compare.scratch_config import SCRATCH_PRESETS, ScratchConfig, check_scratch

# arm -> how `attnlab.retrofit` builds it (None: no fine-tuning; the pretrained reference row)
ARMS: dict[str, dict[str, Any] | None] = {
    "pretrained": None,
    "softmax": {"normalizer": "softmax", "gated": False},
    "softmax1": {"normalizer": "softmax1", "gated": False},
    "sinks": {"normalizer": "sinks", "gated": False},
    "clipped": {"normalizer": "clipped", "gated": False},
    "gated": {"normalizer": "softmax", "gated": True},
    "softmax1+gated": {"normalizer": "softmax1", "gated": True},
}
CONTROL = "softmax"  # fine-tuned with nothing changed: separates the effect of fine-tuning from the variant
# arm -> the retrofitted model it is right after the swap, before any training ("step 0"). Arms that
# coincide there share one measurement: retrofit softmax and an open gate (2 sigmoid(0) = 1) are the
# pretrained function exactly; learned sinks start at logit 0, which is softmax1.
STEP0 = {"softmax": "pretrained", "gated": "pretrained", "softmax1": "softmax1", "sinks": "softmax1",
         "softmax1+gated": "softmax1", "clipped": "clipped"}
# what 1 - row sum is for each arm: weight on no key ("null"), weight clipped away ("clipped"), or nothing
DEFICIT = {"softmax1": "null", "sinks": "null", "softmax1+gated": "null", "clipped": "clipped"}
PARTS = ("both", "scratch", "retrofit")
SINK_INIT = 0.0
"""The learned sinks arm starts as softmax1 (sink logit 0) and learns each head's logit from there; a sink
far below the row's log-sum-exp (attnlab.models.retrofit.SINK_INIT) would start as softmax but cannot
travel far enough in a short fine-tune to matter."""
NEW_PARAM_LR = 1e-2
"""Absolute peak learning rate of the parameters an arm adds (sink logits, gate weights and biases). They
start at a neutral value and must move by O(1), while the pretrained projections move by ~lr = 1e-4."""
TRAINABLE = ("attention", "all")
AUTOCAST = ("auto", "bf16", "off")
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Config:
    model: str = "smollm2-135m"  # a load_model name or path, or "tiny-llama" (random, for smoke)
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0,)
    steps: int = 20
    batch_size: int = 4
    context: int = 96  # fine-tuning sequence length
    lr: float = 1e-4
    warmup: int = 3
    trainable: str = "attention"  # "attention": every parameter of the attention modules (q/k/v/o
    # projections) + the arm's own parameters; "all": every parameter
    eval_windows: int = 12
    eval_context: int = 160
    train_text: str | None = None  # None: the Shakespeare training split
    text: str | None = None  # None: the held-out Shakespeare split
    device: str = "auto"
    autocast: str = "auto"  # fine-tuning: "auto" (bf16 on CUDA, off on the CPU), "bf16" or "off"
    save_models: bool = True
    calibration_windows: int = 4  # training windows that calibrate the static int8 quantizer
    part: str = "both"  # "scratch" (part 1), "retrofit" (part 2) or both
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    preset: str = "custom"  # the preset this config came from: "smoke" shows no verdicts
    notes: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Config] = {
    # CI: a tiny random HF Llama with a byte tokenizer and a tiny from-scratch part; plumbing, no verdicts.
    "smoke": Config(model="tiny-llama", steps=3, batch_size=2, context=32, lr=1e-3, warmup=1,
                    eval_windows=6, eval_context=48, calibration_windows=2, scratch=SCRATCH_PRESETS["smoke"],
                    preset="smoke"),
    # The default (`make demo`), <= 20 min on 2 CPU cores for both parts: part 1 at 5 seeds (verdicts),
    # part 2 at one seed (effects with intervals over windows; no verdicts: training variance unmeasured).
    "quick": Config(eval_windows=8, scratch=SCRATCH_PRESETS["quick"], preset="quick"),
    # The retrofit's verdicts: 3 seeds (data orders), sized for under an hour on 2 CPU cores.
    "standard": Config(seeds=(0, 1, 2), eval_windows=10, scratch=SCRATCH_PRESETS["standard"],
                       preset="standard"),
    # More seeds, all parameters, longer; resumable per arm and seed; CUDA + bf16 autocast when present.
    "full": Config(seeds=(0, 1, 2, 3, 4), steps=300, batch_size=8, context=256, lr=5e-5, warmup=30,
                   trainable="all", eval_windows=64, eval_context=256, scratch=SCRATCH_PRESETS["full"],
                   preset="full"),
}


def check_config(c: Config) -> None:
    """One clear error per bad setting, before anything is loaded or trained."""
    unknown = [a for a in c.arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arm(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ARMS)}")
    if not c.arms and c.part != "scratch":
        raise ConfigError(f"no retrofit arms to run; choose from {', '.join(ARMS)} (or --part scratch)")
    if len(set(c.arms)) != len(c.arms):
        raise ConfigError(f"an arm is listed twice in {', '.join(c.arms)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in c.seeds) or not c.seeds:
        raise ConfigError(f"seeds must be non-negative integers, got {c.seeds!r}")
    if len(c.seeds) > MAX_SEEDS:
        raise ConfigError(f"{len(c.seeds)} seeds is more than this study supports ({MAX_SEEDS}); each seed "
                          f"fine-tunes every arm")
    fine_tuned = [a for a in c.arms if ARMS[a] is not None]
    if fine_tuned and not (isinstance(c.steps, int) and 1 <= c.steps <= MAX_STEPS):
        raise ConfigError(f"--steps must be an integer in 1..{MAX_STEPS} for the fine-tuned arms "
                          f"({', '.join(fine_tuned)}), got {c.steps!r}; use --arms pretrained to measure "
                          f"without fine-tuning")
    for name in ("batch_size", "context", "eval_windows", "eval_context"):
        value = getattr(c, name)
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if c.eval_windows < 2:
        raise ConfigError(f"eval_windows must be >= 2 (intervals are bootstrapped over windows), got "
                          f"{c.eval_windows}")
    if not (c.lr > 0 and c.lr < 1):
        raise ConfigError(f"lr must be in (0, 1), got {c.lr}")
    if not 0 <= c.warmup < max(c.steps, 1) or c.warmup > c.steps:
        raise ConfigError(f"warmup ({c.warmup}) must be below steps ({c.steps})")
    if c.autocast not in AUTOCAST:
        raise ConfigError(f"autocast must be one of {', '.join(AUTOCAST)}, got {c.autocast!r}")
    if c.trainable not in TRAINABLE:
        raise ConfigError(f"trainable must be one of {', '.join(TRAINABLE)}, got {c.trainable!r}")
    if c.part not in PARTS:
        raise ConfigError(f"--part must be one of {', '.join(PARTS)}, got {c.part!r}")
    if not (isinstance(c.calibration_windows, int) and c.calibration_windows >= 1):
        raise ConfigError(f"calibration_windows must be a positive integer, got {c.calibration_windows!r}")
    if c.part in ("both", "scratch"):
        check_scratch(c.scratch)


__all__ = ["ARMS", "CONTROL", "DEFICIT", "PARTS", "STEP0", "Config", "NEW_PARAM_LR", "PRESETS", "SINK_INIT",
           "TRAINABLE", "check_config"]
