"""Devices and processes: `resolve_device`, and `setup_distributed` for runs under torchrun.

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


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """'auto' (CUDA when there is one), 'cpu', 'cuda' (cuda:LOCAL_RANK) or 'cuda:N'."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device_name: str | torch.device) -> Dist:
    """One process: Dist on the resolved device. Under torchrun: this rank's Dist, the group created if
    needed (then destroyed at exit unless the caller, flagged by owns_group, destroys it first)."""
    world = world_size_from_env()
    if world <= 1:
        return Dist(device=resolve_device(device_name))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
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
