"""Progress of long work (training, the report, the studies, the explorer's preparation), in one module:
a tqdm bar on a terminal; a notebook bar in a Jupyter kernel (tqdm.notebook's widget when ipywidgets is
installed, else the text bar, which Jupyter redraws in place); plain lines when stderr is a file or a pipe
(CI logs, nohup, torchrun's captured output), where a bar's carriage returns would be one endless line.

`Progress.update(step)` takes the absolute step; `counter(total, desc, enabled)` is the same thing with
tqdm's own habit, `update(n=1)` increments, for loops that just count.
"""

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
        self.notebook = tty is None and stream is None and in_notebook()
        self.bar = None
        if enabled and (self.tty or self.notebook):
            self.bar = _bar_class(self.notebook)(total=total, initial=initial, unit="step", file=self.stream,
                                                 dynamic_ncols=True, desc=desc, leave=self.notebook)
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


class Counter:
    """tqdm's counting habit (`update(n=1)`, `close()`) over `Progress`, for loops that count items."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.n = 0
        self.progress = Progress(total, desc=desc, enabled=enabled)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.progress.update(self.n)

    def close(self) -> None:
        self.progress.close()


def counter(total: int, desc: str, enabled: bool = True) -> Counter:
    """A progress counter (bar, notebook bar or plain lines, as `Progress`) that `update(n=1)` advances."""
    return Counter(total, desc, enabled)


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where stderr is not a terminal but a bar works."""
    ipython = sys.modules.get("IPython")  # never import IPython just to ask
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _bar_class(notebook: bool) -> Any:
    if notebook:
        try:
            import ipywidgets  # noqa: F401  (tqdm's notebook bar is an ipywidget)
            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass  # the text bar: Jupyter applies its carriage returns, so it redraws in place
    from tqdm.std import tqdm

    return tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


__all__ = ["Counter", "Progress", "counter", "in_notebook"]
