"""Warnings about settings that run but make no sense for the run (the run goes on; errors are for what
cannot run at all).

`advise(message)` issues an `AttnlabWarning`: the command line prints it as one line on stderr
("attnlab: warning: ..."), a notebook shows it as any Python warning. Checks shared by several commands
live here; a check that belongs to one command sits next to that command's other checks.
"""

from __future__ import annotations

import warnings


class AttnlabWarning(UserWarning):
    """A setting that makes little sense for this run; the message says why and what to use instead."""


def advise(message: str, stacklevel: int = 2) -> None:
    warnings.warn(message, AttnlabWarning, stacklevel=stacklevel + 1)


def check_schedule(steps: int, warmup: int, *, steps_flag: str = "--steps", warmup_flag: str = "--warmup"
                   ) -> bool:
    """Warn when the linear warmup does not end well before the last step: with warmup >= steps the learning
    rate never reaches its peak (and the cosine decay never starts), so the run trains at a fraction of the
    rate asked for. Returns True when it warned."""
    if steps >= 1 and warmup >= steps:
        peak = steps / warmup if warmup else 1.0
        advise(f"{warmup_flag} {warmup} is not shorter than {steps_flag} {steps}: the learning rate only "
               f"reaches {peak:.0%} of its peak and never decays; use {warmup_flag} {max(1, steps // 10)} "
               f"(about a tenth of the steps) or more {steps_flag}", stacklevel=3)
        return True
    return False


def check_cpu_half(device: str | None, dtype: str | None) -> bool:
    """float16 on the CPU is emulated (slow) and some kernels are missing; bfloat16 is the CPU's half type."""
    if dtype == "float16" and (device in (None, "cpu")):
        advise("--dtype float16 on the CPU is slow and some operations have no float16 CPU kernel; use "
               "--dtype bfloat16 (or float32) on the CPU, float16 on a GPU", stacklevel=3)
        return True
    return False


__all__ = ["AttnlabWarning", "advise", "check_cpu_half", "check_schedule"]
