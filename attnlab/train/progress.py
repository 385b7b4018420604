"""Progress of a training run: a tqdm bar on a terminal, plain lines when stderr is a file or a pipe
(CI logs, nohup, torchrun's captured output), where a bar's carriage returns would be one endless line."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

# Plain lines: at step 1, whenever this share of the run or this many seconds have passed, and at the end.
LINE_FRACTION = 0.1
LINE_SECONDS = 30.0


class Progress:
    """update(step, loss=..., **extra) after each step; close() at the end. Disabled: does nothing."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.total, self.initial, self.desc = total, initial, desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = tty if tty is not None else bool(isatty and isatty())
        self.bar = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", file=self.stream, dynamic_ncols=True,
                            desc=desc, leave=False)
        self.started = time.perf_counter()
        self.last_line_step, self.last_line_time = initial, self.started

    def update(self, step: int, loss: float | None = None, **extra: Any) -> None:
        if not self.enabled:
            return
        fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
        fields.update({k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in extra.items()
                       if v is not None})
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(fields, refresh=False)
            return
        now = time.perf_counter()
        due = (step == self.initial + 1 or step == self.total
               or step - self.last_line_step >= max(1, int(self.total * LINE_FRACTION))
               or now - self.last_line_time >= LINE_SECONDS)
        if not due:
            return
        done = step - self.initial
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        parts = " ".join(f"{k} {v}" for k, v in fields.items())
        print(f"{self.desc}: step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%) {parts} "
              f"{rate:.2f} step/s eta {_duration(eta)}".replace("  ", " "), file=self.stream, flush=True)
        self.last_line_step, self.last_line_time = step, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


__all__ = ["Progress"]
