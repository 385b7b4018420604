"""Processes: `setup_distributed` for runs under torchrun, on `attnlab.devices.resolve_device`'s device.

Under `torchrun` (WORLD_SIZE > 1) the default process group is created once per process (gloo on CPU,
NCCL on CUDA) and reused by every later training call in that process (studies train many models in one
process); it is destroyed at exit. The caller that created it first may destroy it earlier (`owns_group`).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attnlab.devices import CLI_DEVICES, resolve_device
from attnlab.errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _training_device(name: str | torch.device, local_rank: int) -> torch.device:
    """`attnlab.devices.resolve_device`, limited to what a process group can run on (gloo, NCCL)."""
    device = resolve_device(name, local_rank)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(name)!r} is not supported for training; use {CLI_DEVICES}")
    return device


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device_name: str | torch.device) -> Dist:
    """One process: Dist on the resolved device. Under torchrun: this rank's Dist, the group created if
    needed (then destroyed at exit unless the caller, flagged by owns_group, destroys it first)."""
    world = world_size_from_env()
    if world <= 1:
        return Dist(device=_training_device(device_name, 0))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _training_device(device_name, local)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
        owns = True
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Dist", "resolve_device", "setup_distributed"]
