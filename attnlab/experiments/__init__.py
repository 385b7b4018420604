"""attnlab.experiments: one module per study, each reproducing a published claim at a small scale.

`STUDIES` maps a study's command-line name to its module; each module has `Config` (a dataclass),
`PRESETS` ({"smoke", "quick", "full"} -> Config) and `run(config, out_dir, progress=True) -> dict`.
`run_study(name, preset, out_dir, seeds)` is the Python twin of `attnlab run NAME`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from attnlab.errors import ConfigError

# Only studies that are finished and tested are listed here.
STUDIES: dict[str, str] = {
    "offbyone": "attnlab.experiments.offbyone",
    "dispersion": "attnlab.experiments.dispersion",
    "oversquashing": "attnlab.experiments.oversquashing",
    "rankcollapse": "attnlab.experiments.rankcollapse",
    "depth-vs-context": "attnlab.experiments.depth_vs_context",
    "streaming": "attnlab.experiments.streaming",
    "lipschitz": "attnlab.experiments.lipschitz",
}


def study_module(name: str) -> ModuleType:
    """The module of study `name`; a ConfigError lists the valid names."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name])


def run_study(name: str, preset: str = "quick", out_dir: str | Path | None = None, seeds: int | None = None,
              progress: bool = True, device: str | None = None,
              autocast: str | None = None) -> dict[str, Any]:
    """device / autocast: where and how the study's models train (`common.study_training`); None keeps
    the study's own choice (the CPU)."""
    from attnlab.experiments.base import choose_preset
    from attnlab.experiments.common import study_training

    module = study_module(name)
    config = choose_preset(module.PRESETS, preset, seeds)
    out = Path(out_dir) if out_dir is not None else Path("runs") / name
    with study_training(device=device, autocast=autocast):
        return module.run(config, out, progress=progress)


__all__ = ["STUDIES", "run_study", "study_module"]
