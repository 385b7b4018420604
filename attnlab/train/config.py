"""`TrainConfig`: one training run (the model's GPTConfig plus optimisation, data, and output settings).

Loaded from a YAML/JSON file (flat keys, or model fields under `model:`), from a checkpoint folder
(`train_config.json`), or built in code. `diff(a, b)` names the fields that decide the run's trajectory and
differ, which is what forbids resuming a checkpoint into another config.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError
from attnlab.io import read_file_capped
from attnlab.models.gpt_config import GPTConfig, check_size

# Fields a resumed run may change. The optimiser's knobs are here on purpose: after a divergence the fix is
# to continue from the last good checkpoint with a lower lr (or a longer warmup, tighter clipping); the
# schedule is recomputed from the new values at the resumed step, AdamW's moments carry over. What decides
# *which* function is learned from *which* data (the model, seed, batch size, text, tokenizer, split) may
# not change: docs/training.md, "Resume".
RESUMABLE_FIELDS = ("steps", "lr", "min_lr", "warmup", "weight_decay", "grad_clip", "eval_every",
                    "eval_batches", "log_every", "save_every", "out", "resume", "overwrite", "device",
                    "autocast", "memory_check")
AUTOCAST = ("auto", "bf16", "off")
# GPTConfig fields the training run sets itself: the vocabulary comes from the tokenizer, the seed from
# TrainConfig.seed (one seed per run decides init, data order and dropout).
DERIVED_MODEL_FIELDS = ("vocab_size", "seed")
CONFIG_LIMIT = 16 * 2**20  # bytes: a config file is a few fields


@dataclass
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float | None = None  # end of the cosine decay; None = lr / 10
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 200  # 0 disables validation
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 500  # 0 = save only at the end (and on Ctrl-C)
    seed: int = 0
    text: str | None = None  # None = the Shakespeare corpus
    tokenizer: str = "byte"
    val_fraction: float = 0.1
    out: str | None = None  # None = keep nothing on disk (programmatic short runs)
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    autocast: str = "auto"  # bf16 autocast of the forward: auto = on CUDA only
    memory_check: bool = True  # refuse a config whose estimated memory exceeds what the device has

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = GPTConfig.from_dict(self.model, source="TrainConfig.model")
        if not isinstance(self.model, GPTConfig):
            raise ConfigError(f"TrainConfig.model must be a GPTConfig, got {type(self.model).__name__}")
        for name in ("steps", "batch_size", "eval_batches", "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("warmup", "eval_every", "save_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        if self.seed > 2**63 - 1:  # torch generators take 64-bit seeds; a bigger one was a traceback
            raise ConfigError(f"--seed must be an integer in [0, 2**63 - 1], got {self.seed}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"TrainConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ConfigError("TrainConfig.lr must be > 0, e.g. --lr 1e-3")
        if self.lr > 1e38:  # the optimizer works in float32: a larger lr is a torch overflow traceback
            raise ConfigError(f"TrainConfig.lr must be at most 1e38, got {self.lr:g}; e.g. --lr 1e-3")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"TrainConfig.min_lr must lie in [0, lr={self.lr}], got {self.min_lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.autocast not in AUTOCAST:
            raise ConfigError(f"TrainConfig.autocast must be one of {', '.join(AUTOCAST)}, "
                              f"got {self.autocast!r}")
        for name in ("out", "text"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                raise ConfigError(f"--{name} is empty; pass a {'folder' if name == 'out' else 'file'}, or "
                                  f"leave the flag out for the default")
        if self.resume and self.out is None:
            raise ConfigError("resume needs the run's output folder: pass --out DIR with --resume")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Flat or nested keys (model fields at top level or under "model"); dashes or underscores."""
        train, model = split_mapping(data, source)
        return cls(model=GPTConfig.from_dict(model, source=source), **train)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(load_mapping(path), source=str(path))


def with_derived(config: TrainConfig, vocab_size: int) -> TrainConfig:
    """`config` with the model fields the run sets itself (DERIVED_MODEL_FIELDS: the tokenizer's vocabulary
    size, the run's seed), built without validating the config again: it was validated whole when it was
    made, no GPTConfig rule reads the seed (TrainConfig checked it), and the one rule on the vocabulary size
    is checked here. `dataclasses.replace` would rerun every check (and the normalizer build inside them)."""
    check_size("vocab_size", vocab_size)
    model = copy.copy(config.model)
    model.vocab_size, model.seed = vocab_size, config.seed
    derived = copy.copy(config)
    derived.model = model
    return derived


def split_mapping(data: dict[str, Any], source: str = "config") -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainConfig keys, GPTConfig keys) of a flat or nested mapping; unknown keys raise ConfigError."""
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    model_keys = {f.name for f in fields(GPTConfig)}
    train_keys = {f.name for f in fields(TrainConfig)} - {"model"}
    model = data.pop("model", None) or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{source}: 'model' must be a mapping of GPTConfig fields")
    model = {str(k).replace("-", "_"): v for k, v in model.items()}
    for key in list(data):
        if key in model_keys and key not in train_keys:
            model[key] = data.pop(key)
    unknown = sorted(set(data) - train_keys)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; valid fields: "
                          f"{', '.join(sorted(train_keys | model_keys))}")
    return data, model


def load_mapping(path: str | Path) -> dict[str, Any]:
    """A dict from a .json, .yaml or .yml file, with a one-line error for anything else."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; pass an existing .yaml or .json file")
    raw = read_file_capped(path, "config file", CONFIG_LIMIT, ConfigError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); pass a "
                          f".yaml or .json file") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {path} must end in .json, .yaml or .yml")
    except (json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {path} does not parse: {exc}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"config file {path} does not parse: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field names to values")
    return data


def diff(saved: TrainConfig, now: TrainConfig, ignore: tuple[str, ...] = RESUMABLE_FIELDS) -> list[str]:
    """'field: checkpoint X, now Y' for every trajectory-deciding field that differs."""
    out = []
    a, b = saved.to_dict(), now.to_dict()
    for key in a:
        if key == "model":
            for mkey in a["model"]:
                if mkey not in DERIVED_MODEL_FIELDS and a["model"][mkey] != b["model"].get(mkey):
                    out.append(f"{mkey}: checkpoint {a['model'][mkey]!r}, now {b['model'].get(mkey)!r}")
        elif key not in ignore and a[key] != b.get(key):
            out.append(f"{key}: checkpoint {a[key]!r}, now {b.get(key)!r}")
    return out


def changed(saved: TrainConfig, now: TrainConfig) -> dict[str, list[Any]]:
    """{field: [checkpoint value, new value]} for the resumable settings a resumed run changes."""
    a, b = saved.to_dict(), now.to_dict()
    skip = ("out", "resume", "overwrite")
    return {k: [a[k], b[k]] for k in RESUMABLE_FIELDS if k not in skip and k in a and a[k] != b.get(k)}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")


__all__ = ["AUTOCAST", "DERIVED_MODEL_FIELDS", "RESUMABLE_FIELDS", "TrainConfig", "changed", "diff",
           "load_mapping", "split_mapping", "with_derived"]
