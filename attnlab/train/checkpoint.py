"""Checkpoints of a training run, safe against a kill at any moment (the metrics file: metrics_log.py).

OUT/checkpoint/ holds the model (for attnlab's GPT model.safetensors + config.json, so
`GPT.from_pretrained(OUT/checkpoint)` works; for a Hugging Face model what `save_pretrained` writes),
optimizer.pt (AdamW state), state.pt (step, RNG states, loss curve), the caller's JSON files (e.g.
train_config.json) and, written last, trainer.json: {"step", "format": 2, "files": [...]}. trainer.json is
the completeness marker: a folder counts as a checkpoint only when it parses and every file it lists exists.

A save writes a fresh `.checkpoint.tmp-*` folder (every file fsynced before the marker), then swaps it in:

    1. checkpoint/ complete?  move it to .checkpoint.old (a previous .old is discarded first)
    2. rename the tmp folder to checkpoint/
    3. discard .checkpoint.old

"Discard" renames a folder to `.checkpoint.trash-*` before deleting it, so a half-deleted folder never
carries a checkpoint's name, and .checkpoint.old is only ever discarded while a complete checkpoint/ (or the
complete one about to replace it) exists. A kill at any point therefore leaves at least one complete
folder among checkpoint/, .checkpoint.old and a complete tmp; `find_checkpoint` picks the newest (highest
step) and `recover_checkpoint` promotes it to checkpoint/ and discards the rest before training resumes.

Not on `attnlab.io.atomic_folder`: that writer deletes the previous copy before its rename and treats a
killed temporary as garbage, while here a killed save's complete temporary may be the newest good copy and
the previous checkpoint must survive until the new one carries its name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.errors import ConfigError, OutputError
from attnlab.io import atomic_write_json, private_dir_to_umask, write_failure
from attnlab.io import check_out_dir as check_writable  # the one writability check (was a second copy here)
from attnlab.train.metrics_log import METRICS, MetricsLog  # moved; importable from here as before

CHECKPOINT = "checkpoint"
OLD = ".checkpoint.old"
TMP_PREFIX = ".checkpoint.tmp-"
TRASH_PREFIX = ".checkpoint.trash-"
STATE_FILE = "state.pt"
OPTIMIZER_FILE = "optimizer.pt"
TRAIN_CONFIG_FILE = "train_config.json"
MARKER = "trainer.json"
# What a format-1 checkpoint (no file list in trainer.json) held.
FORMAT1_FILES = ("model.safetensors", OPTIMIZER_FILE, STATE_FILE, TRAIN_CONFIG_FILE)


class CheckpointError(ConfigError):
    """A checkpoint file that exists but cannot be read."""


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


# ---------------------------------------------------------------- writing
def save_model_files(model: nn.Module, directory: Path) -> None:
    """The model's own format: `save_pretrained` (Hugging Face), `save` (attnlab's GPT), else safetensors."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory, safe_serialization=True)
    elif callable(getattr(model, "save", None)):
        model.save(directory)
    else:
        from safetensors.torch import save_model

        save_model(model, str(directory / "model.safetensors"))


def save_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: Any = None, *, files: dict[str, Any] | None = None,
                    state: dict[str, Any] | None = None,
                    save_model: Callable[[nn.Module, Path], None] | None = None) -> Path:
    """Write OUT/checkpoint crash-safely (see the module docstring); returns its path.

    config: a TrainConfig (written as train_config.json) or None; files: more JSON files {name: object};
    state: extra entries for state.pt (step and RNG states are always there).
    """
    out = Path(out)
    recover_checkpoint(out)  # a complete tmp left by a kill is promoted, never deleted
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=TMP_PREFIX))
    try:
        private_dir_to_umask(tmp)  # the checkpoint folder it becomes follows the umask, as mkdir would
        (save_model or save_model_files)(model, tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save({**(state or {}), "step": step, "rng": rng_state()}, tmp / STATE_FILE)
        json_files = dict(files or {})
        if config is not None:
            json_files[TRAIN_CONFIG_FILE] = config.to_dict() if hasattr(config, "to_dict") else config
        for name, obj in json_files.items():
            atomic_write_json(tmp / name, obj)
        _fsync_tree(tmp)
        listed = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        atomic_write_json(tmp / MARKER, {"step": step, "format": 2, "files": listed})
        _fsync_dir(tmp)
    except Exception as exc:
        _discard(tmp)  # an error, not a kill: nothing worth keeping
        reason = write_failure(exc)
        if reason is None:
            raise
        kept = find_checkpoint(out)
        last = (f"the last good checkpoint, {kept} (step {checkpoint_step(kept)}), is kept"
                if kept is not None else "no checkpoint had been saved yet")
        raise OutputError(f"cannot save the step-{step} checkpoint in {out} ({reason}); {last}; free some "
                          f"space, then run the same command again with --resume") from exc
    final, old = out / CHECKPOINT, out / OLD
    if final.exists():
        if checkpoint_step(final) is not None:
            if old.exists():
                _discard(old)  # checkpoint/ is complete, so .old is not the last good copy
            os.replace(final, old)
        else:
            _discard(final)
    os.replace(tmp, final)
    _fsync_dir(out)
    if old.exists():
        _discard(old)
    return final


def _discard(path: Path) -> None:
    if not path.exists():
        return
    trash = path.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the renames are still ordered
    finally:
        os.close(fd)


# ---------------------------------------------------------------- finding
def checkpoint_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder; None when it is not one (no marker, a listed file gone)."""
    try:
        meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        step = int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    listed = meta.get("files") if isinstance(meta, dict) else None
    names = listed if isinstance(listed, list) else FORMAT1_FILES
    if not all((folder / str(name)).is_file() for name in names):
        return None
    return step


def _candidates(out: Path) -> list[tuple[int, int, Path]]:
    """(step, preference, folder) of every complete checkpoint folder in OUT."""
    found = []
    for rank, folder in ((2, out / CHECKPOINT), (0, out / OLD)):
        step = checkpoint_step(folder)
        if step is not None:
            found.append((step, rank, folder))
    for folder in sorted(out.glob(TMP_PREFIX + "*")):
        step = checkpoint_step(folder)
        if step is not None:
            found.append((step, 1, folder))
    return found


def find_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint in OUT (checkpoint/, or what a kill mid-save left), without changing
    anything on disk."""
    out = Path(out)
    if not out.is_dir():
        return None
    found = _candidates(out)
    return max(found, key=lambda c: (c[0], c[1]))[2] if found else None


def recover_checkpoint(out: Path) -> Path | None:
    """Make OUT/checkpoint the newest complete checkpoint and discard the leftovers of a killed save."""
    out = Path(out)
    if not out.is_dir():
        return None
    for trash in out.glob(TRASH_PREFIX + "*"):
        shutil.rmtree(trash, ignore_errors=True)
    best = find_checkpoint(out)
    final, old = out / CHECKPOINT, out / OLD
    if best is not None and best != final:
        if final.exists():
            _discard(final)  # older than best (or incomplete)
        os.replace(best, final)
        _fsync_dir(out)
    if checkpoint_step(final) is not None:
        if old.exists():
            _discard(old)
        for tmp in out.glob(TMP_PREFIX + "*"):
            _discard(tmp)
        return final
    return None


def discard_checkpoints(out: Path) -> None:
    """Remove every checkpoint folder of OUT (a run started over with --overwrite)."""
    for folder in [Path(out) / CHECKPOINT, Path(out) / OLD, *Path(out).glob(TMP_PREFIX + "*")]:
        _discard(folder)


def missing_files(folder: Path) -> list[str]:
    """Files a checkpoint folder lacks (for the message when none is complete)."""
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return [MARKER]
    names = listed if isinstance(listed, list) else FORMAT1_FILES
    return [str(n) for n in names if not (folder / str(n)).is_file()]


# ---------------------------------------------------------------- reading
def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    folder = path.parent
    reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else "empty"
    other = [c for c in _candidates(folder.parent) if c[2] != folder] if folder.parent.is_dir() else []
    if other:
        step, _, alt = max(other, key=lambda c: (c[0], c[1]))
        fix = f"delete {folder} to resume from {alt} (step {step}), or start over with --overwrite"
    else:
        fix = "restore the file or start the run over with --overwrite"
    return CheckpointError(f"checkpoint file {path} is unreadable ({type(exc).__name__}: {reason[:120]}); "
                           f"{fix}")


def load_train_config(checkpoint: Path) -> Any:
    from attnlab.train.config import TrainConfig

    path = checkpoint / TRAIN_CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(data, dict):
        raise _unreadable(path, ValueError("not a JSON object of config fields"))
    return TrainConfig.from_dict(data, source=str(path))


def load_torch_file(path: Path, device: torch.device | str = "cpu") -> Any:
    """torch.load(weights_only) with a one-line CheckpointError for a garbage or truncated file."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...: all mean "corrupt"
        raise _unreadable(path, exc) from None


def load_state_file(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / STATE_FILE
    state = load_torch_file(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "rng" not in state:
        raise _unreadable(path, ValueError("not a state dict with 'step' and 'rng'"))
    return state


def load_optimizer_state(checkpoint: Path, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    path = checkpoint / OPTIMIZER_FILE
    state = load_torch_file(path, device)
    try:
        optimizer.load_state_dict(state)
    except Exception as exc:  # a dict of the wrong shape: ValueError, KeyError, TypeError
        raise _unreadable(path, exc) from None


def load_model_weights(model: nn.Module, checkpoint: Path) -> None:
    """Load the weights a checkpoint holds into `model` in place (single-file or sharded safetensors)."""
    from safetensors.torch import load_file

    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        try:
            shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _unreadable(index, exc) from None
        paths = [checkpoint / name for name in shard_names]
    else:
        paths = [checkpoint / "model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            state.update(load_file(str(path)))
        except Exception as exc:  # SafetensorError, OSError: a corrupt or truncated file
            raise _unreadable(path, exc) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied weight (an output head sharing the embedding) is saved once; the load fills both names.
    missing = [m for m in missing if m not in _tied_aliases(model, state)]
    if missing or unexpected:
        raise _unreadable(paths[0], ValueError(f"weights do not fit the model: missing {missing[:3]}, "
                                               f"unexpected {unexpected[:3]}"))


def _tied_aliases(model: nn.Module, loaded: dict[str, torch.Tensor]) -> set[str]:
    by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(param), []).append(name)
    aliases = set()
    for names in by_param.values():
        if any(n in loaded for n in names):
            aliases.update(n for n in names if n not in loaded)
    return aliases


__all__ = ["CHECKPOINT", "METRICS", "CheckpointError", "MetricsLog", "check_writable", "checkpoint_step",
           "discard_checkpoints", "find_checkpoint", "load_model_weights", "load_optimizer_state",
           "load_state_file", "load_train_config", "missing_files", "recover_checkpoint", "save_checkpoint"]
