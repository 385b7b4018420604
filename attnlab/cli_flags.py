"""Flags several commands share: `--device` and `--dtype`, where the model runs and in which precision.

Torch-free on purpose: parsers are built without importing torch (`attnlab --help` stays fast); the names
are turned into torch objects by `attnlab.devices.resolve_device` / `attnlab.models.loading.resolve_dtype`
when the model loads.
"""

from __future__ import annotations

import argparse
from typing import Any

from attnlab import devices
from attnlab.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16", "float64")


def device_name(text: str) -> str:
    """argparse type of --device: `attnlab.devices.device_name`, its error as argparse's."""
    try:
        return devices.device_name(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_flags(parser: argparse.ArgumentParser, *, what: str = "the model runs",
                     dtype_help: str | None = None, dtypes: tuple[str, ...] = DTYPES) -> None:
    """--device and --dtype; `dtypes`: the precisions this command accepts (its --help lists only those)."""
    parser.add_argument("--device", type=device_name, default=None, metavar="DEVICE",
                        help=f"where {what}: cpu (default), cuda, cuda:N, or auto (CUDA when there is a GPU)")
    parser.add_argument("--dtype", choices=dtypes, default=None,
                        help=dtype_help or "precision of the weights and activations (default float32; "
                        "bfloat16 halves memory, float64 for exact comparisons)")


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `load_model` keywords the user set (only those: the defaults stay the loader's)."""
    return {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k, None) is not None}


__all__ = ["DTYPES", "add_device_flags", "device_name", "load_kwargs"]
