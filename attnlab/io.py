"""Atomic writes, the cache folder, and the provenance stamped into every result file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """attnlab's cache: $ATTNLAB_CACHE, else ~/.cache/attnlab. Created on first use."""
    path = Path(os.environ.get("ATTNLAB_CACHE") or Path.home() / ".cache" / "attnlab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def versions() -> dict[str, str]:
    """Library versions that decide the numbers in a result file."""
    import torch

    from attnlab import __version__

    out = {"attnlab": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "platform": platform.platform()}
    for name in ("transformers", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    commit = _git_commit()
    if commit:
        out["git_commit"] = commit
    return out


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(config: Any = None, seed: int | None = None) -> dict[str, Any]:
    """The block every result file carries: config, seed, versions, and when it was made."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    return {"config": config, "seed": seed, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
