"""The one device resolver: where a model loads, a run trains, and what `--device` accepts.

`device_name` checks a `--device` value without torch (parsers are built without importing it, so
`attnlab --help` stays fast); `resolve_device` turns a name or a torch.device into a torch.device when the
work starts. `attnlab.models.loading` and `attnlab.train.distributed` both call `resolve_device`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from attnlab.errors import ConfigError

if TYPE_CHECKING:
    import torch

CLI_DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(text: str) -> str:
    """A `--device` value, normalised: auto, cpu, cuda or cuda:N; anything else is a ConfigError."""
    name = text.strip().lower()
    if not _DEVICE.match(name):
        raise ConfigError(f"unknown device {text!r}; use {CLI_DEVICES}")
    return name


def resolve_device(device: str | torch.device, local_rank: int | None = None) -> torch.device:
    """'auto' (CUDA when a GPU is visible, else the CPU), 'cpu', 'cuda', 'cuda:N' or a torch.device. A bare
    'cuda' becomes cuda:`local_rank` when one is given (a torchrun process's own GPU). Asking for CUDA where
    there is none is a ConfigError, not a crash deep inside the first forward."""
    import torch

    if isinstance(device, str) and device.strip().lower() == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use {CLI_DEVICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU (torch "
                              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device "
                              f"cpu, or auto to take a GPU only when there is one")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r} asked for, but there are {torch.cuda.device_count()} "
                              f"CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return dev


__all__ = ["CLI_DEVICES", "device_name", "resolve_device"]
