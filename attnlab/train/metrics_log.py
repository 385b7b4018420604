"""OUT/metrics.jsonl of a training run: one JSON object per logged step, appended and flushed. On resume it
is rewritten (atomically) to the lines up to the checkpoint's step, so the resumed run does not duplicate
steps; a line cut short by a kill is skipped on read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnlab.errors import OutputError
from attnlab.io import atomic_write_text

METRICS = "metrics.jsonl"


class MetricsLog:
    """Append-only JSONL of logged steps; `truncate(step)` drops lines past a resumed checkpoint."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict):
                out.append(record)
        return out

    def truncate(self, step: int) -> None:
        if self.path is None or not self.path.exists():
            return
        self.records = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def reset(self) -> None:
        self.records = []
        if self.path is not None:
            atomic_write_text(self.path, "")

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                    fh.flush()
            except OSError as exc:  # a cut line is skipped on read, and resume truncates to the checkpoint
                raise OutputError(f"cannot append to {self.path} ({exc.strerror or exc}); the last "
                                  f"checkpoint is kept: free some space, then run the same command again "
                                  f"with --resume") from exc


__all__ = ["METRICS", "MetricsLog"]
