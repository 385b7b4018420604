"""Checkpoints and the metrics file of a training run, both safe against a kill at any moment.

OUT/checkpoint/ holds model.safetensors + config.json (so `GPT.from_pretrained(OUT/checkpoint)` works),
optimizer.pt (AdamW state), state.pt (step and RNG states) and train_config.json. A checkpoint is written
into a fresh temporary folder next to it and then swapped in by renames: the previous one is moved to
.checkpoint.old, the new one renamed into place, the old one deleted. A kill between the two renames leaves
.checkpoint.old, which `find_checkpoint` falls back to, so there is always one complete checkpoint.

OUT/metrics.jsonl gets one JSON object per logged step, appended and flushed. On resume it is rewritten
(atomically) to the lines up to the checkpoint's step, so the resumed run does not duplicate steps.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from attnlab.errors import ConfigError
from attnlab.io import atomic_write_json, atomic_write_text
from attnlab.models.gpt import GPT
from attnlab.train.config import TrainConfig

CHECKPOINT = "checkpoint"
OLD = ".checkpoint.old"
METRICS = "metrics.jsonl"
STATE_FILE = "state.pt"
OPTIMIZER_FILE = "optimizer.pt"
TRAIN_CONFIG_FILE = "train_config.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(out: Path, model: GPT, optimizer: torch.optim.Optimizer, step: int,
                    config: TrainConfig) -> Path:
    """Write OUT/checkpoint atomically (see module docstring); returns its path."""
    for stale in out.glob(".checkpoint.tmp-*"):  # left by a kill in the middle of an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".checkpoint.tmp-"))
    try:
        model.save(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save({"step": step, "rng": rng_state()}, tmp / STATE_FILE)
        atomic_write_json(tmp / TRAIN_CONFIG_FILE, config.to_dict())
        atomic_write_json(tmp / "trainer.json", {"step": step, "format": 1})
        final, old = out / CHECKPOINT, out / OLD
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint in OUT (the current one, else the previous one left by a kill mid-swap)."""
    for candidate in (out / CHECKPOINT, out / OLD):
        if (candidate / STATE_FILE).is_file() and (candidate / TRAIN_CONFIG_FILE).is_file():
            return candidate
    return None


def load_train_config(checkpoint: Path) -> TrainConfig:
    with open(checkpoint / TRAIN_CONFIG_FILE, encoding="utf-8") as fh:
        return TrainConfig.from_dict(json.load(fh), source=str(checkpoint / TRAIN_CONFIG_FILE))


def load_state(checkpoint: Path, device: torch.device) -> tuple[GPT, dict[str, Any], dict[str, Any]]:
    """(model on device, optimizer state dict, {"step", "rng"}) from a checkpoint folder."""
    model = GPT.from_pretrained(checkpoint).to(device)
    optim_state = torch.load(checkpoint / OPTIMIZER_FILE, map_location=device, weights_only=True)
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    return model, optim_state, state


class MetricsLog:
    """Append-only JSONL of logged steps; `truncate(step)` drops lines past a resumed checkpoint."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []

    def truncate(self, step: int) -> None:
        if self.path is None or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(record)
        self.records = kept
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        self.records = []
        if self.path is not None:
            atomic_write_text(self.path, "")

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()


def check_writable(out: Path) -> None:
    """Create OUT and prove a file can be written there, or raise a one-line ConfigError."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {out} ({exc.strerror or exc}); "
                          f"choose a writable --out") from None


__all__ = ["CHECKPOINT", "METRICS", "MetricsLog", "check_writable", "find_checkpoint", "load_state",
           "load_train_config", "save_checkpoint"]
