"""The frame every study runs in: presets, seeds, resumable parts, claims with computed verdicts.

A study is a module with a config dataclass (presets `smoke`, `quick`, `full`) and
`run(config, out_dir, progress=True) -> dict`. This file gives it:

- `Parts(out_dir, config)`: per-seed / per-variant sub-results saved atomically as they finish, keyed by
  a hash of the config, so a killed run resumes and a re-run with the same config skips finished parts;
- `start(config, out_dir, validate)`: the opening of every `run()` (validated config, output folder, parts);
- `check_fields(config, choices=..., **rules)`: an unknown choice or a bad value as one ConfigError line;
- `evidence(...)`: the per-item values a claim's interval is measured from (kept in results.json);
- `claim(...)`: one published claim, our number next to the paper's, and a verdict computed by `judge`;
- `recompute_verdict(claim_dict)`: the verdict again, from a results file's claim alone;
- `finish(...)`: the results JSON (config, seeds, provenance, timings, claims) and the HTML page.

The verdict rule and its words live in `attnlab.experiments.verdicts` (the one engine every study and
`attnlab compare` use); this module re-exports `claim`, `evidence`, `judge` and `recompute_verdict`. The
statistics over seeds (`seed_stats`, `fmt_stat`) live in `attnlab.experiments.seedstats`, re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError
from attnlab.experiments.seedstats import fmt_stat, seed_stats  # re-exported for the studies
from attnlab.experiments.verdicts import (  # the one verdict engine; re-exported for the studies
    HELD,
    INCONCLUSIVE,
    NO_VERDICT,
    NOT_HELD,
    NOT_TESTABLE,
    VERDICT_RULE,
    apply_holm,
    claim,
    describe_test,
    evidence,
    fmt,
    judge,
    recompute_verdict,
    res_iv,
    withhold,
)
from attnlab.io import atomic_write_json, provenance

PRESETS = ("smoke", "quick", "full")
# Smoke is plumbing (issue 22): a smoke run's claims keep their numbers but none is judged.
SMOKE_REASON = "smoke run: plumbing only, no verdicts"
# Bumped when what a study stores in its parts changes: parts written by older code are then recomputed,
# never read with fields missing (format 2: per-item values for measured intervals).
PART_FORMAT = 2


# ----------------------------------------------------------------------------------------- presets
MAX_SEEDS = 64  # every study and both parts of compare: each seed repeats the whole run; more is a typo


def choose_preset(presets: dict[str, Any], name: str, seeds: int | None = None) -> Any:
    """The config of preset `name`, with `seeds` overriding its seed count (seeds 0 .. N-1)."""
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    config = presets[name]
    if seeds is not None:
        if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS:
            raise ConfigError(f"--seeds must be a positive integer, at most {MAX_SEEDS} (each seed runs the "
                              f"whole study again), got {seeds!r}")
        config = replace(config, seeds=tuple(range(seeds)))
    return config


def config_dict(config: Any) -> dict[str, Any]:
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    if isinstance(config, dict):
        return dict(config)
    raise TypeError(f"a study config must be a dataclass or dict, got {type(config).__name__}")


def config_hash(config: Any) -> str:
    """A short stable hash of a config: parts computed under another config are never reused."""
    blob = json.dumps(config_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Rules every study config obeys, for those of these fields it has.
COMMON_RULES: dict[str, Callable[[Any], bool]] = {
    "seeds": lambda s: len(s) >= 1,  # each seed repeats the whole study; none is no study
}


def check_fields(config: Any, *, choices: tuple[str, Iterable[str]] | None = None,
                 **rules: Callable[[Any], bool]) -> None:
    """Raise ConfigError naming the field when a rule fails (rules: name -> predicate, on top of
    COMMON_RULES). choices: (name, known): the field that lists the study's arms (its variants, models,
    ...) must list at least one, each of them in `known`."""
    names = {f.name for f in fields(config)}
    for name in [*rules, *(choices[:1] if choices else ())]:
        if name not in names:
            raise TypeError(f"check_fields: {type(config).__name__} has no field {name!r}")
    if choices is not None:
        _check_choices(config, *choices)
    for name, ok in {**{n: r for n, r in COMMON_RULES.items() if n in names}, **rules}.items():
        if not ok(getattr(config, name)):
            raise ConfigError(f"{type(config).__name__}.{name} = {getattr(config, name)!r} is not valid; "
                              f"see the study's presets for working values")


def _check_choices(config: Any, name: str, known: Iterable[str]) -> None:
    chosen, names = getattr(config, name), list(known)
    unknown = [c for c in chosen if c not in names]
    if unknown or not chosen:
        study = type(config).__module__.rpartition(".")[2]  # the study's module: offbyone, lipschitz, ...
        raise ConfigError(f"{study}: unknown {name} {unknown or '(none given)'}; choose from "
                          f"{', '.join(names)}")


# ------------------------------------------------------------------------------------ resumability
class Parts:
    """Sub-results of a study, one JSON file each under `out_dir/parts/`, reused when the config matches.

    `get(key, compute)` returns the stored result of `key` if it was computed under the same config,
    otherwise calls `compute()`, stores its (JSON-serialisable) result atomically, and returns it.
    """

    def __init__(self, out_dir: str | Path, config: Any) -> None:
        self.dir = Path(out_dir) / "parts"
        self.hash = config_hash({"config": config_dict(config), "part_format": PART_FORMAT})
        self.reused: list[str] = []
        self.computed: list[str] = []
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def _path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.dir / f"{safe}.json"

    def has(self, key: str) -> bool:
        """`key` was stored under this config (a `get` would reuse it)."""
        try:
            stored = json.loads(self._path(key).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return (isinstance(stored, dict) and stored.get("config_hash") == self.hash
                and stored.get("key") == key)

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        path = self._path(key)
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                stored = None  # a torn file cannot happen with atomic writes, but a hand-edited one can
            same = isinstance(stored, dict) and stored.get("config_hash") == self.hash
            if same and stored.get("key") == key:
                self.reused.append(key)
                self.seconds[key] = float(stored.get("seconds", 0.0))
                return stored["result"]
        start = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - start
        atomic_write_json(path, {"key": key, "config_hash": self.hash, "seconds": seconds, "result": result})
        self.computed.append(key)
        self.seconds[key] = seconds
        return result

    def timings(self) -> dict[str, float]:
        """Wall time since these parts were opened (the run's total) and of each part."""
        parts = {f"part {k}": v for k, v in self.seconds.items()}
        return {"total": time.perf_counter() - self.started, **parts}


def start(config: Any, out_dir: str | Path, validate: Callable[[Any], None]) -> tuple[Path, Parts]:
    """The opening of a study's `run()`: the config validated (before any work), the output folder, and the
    resumable parts, whose clock starts now (`parts.timings()`)."""
    validate(config)
    return Path(out_dir), Parts(out_dir, config)


# ------------------------------------------------------------------------------------------ output
def finish(study: str, config: Any, out_dir: str | Path, *, results: dict[str, Any],
           claims: list[dict[str, Any]], tables: list[dict[str, Any]], figures: list[tuple[str, str]],
           timings: dict[str, float],
           parts: Parts | None, summary: str, command: str) -> dict[str, Any]:
    """Write results.json and index.html for a study and return the results dict.

    tables: [{"title", "columns", "rows"}]; figures: [(png file name under out_dir, caption)].
    A run of the smoke preset is plumbing: every claim's verdict is withheld ("no verdict", with
    `SMOKE_REASON`), and the results and page say so (doc["smoke"], a banner).
    """
    from attnlab.experiments.html import study_page
    from attnlab.experiments.markdown import preset_of

    out_dir = Path(out_dir)
    if parts is not None:
        # Wall time of all parts when they were computed (a resumed run's own total is only what it redid).
        timings = {**timings, "compute": sum(parts.seconds.values())}
    preset = preset_of({"study": study, "config": config_dict(config)})
    if preset == "smoke":
        withhold(claims, SMOKE_REASON)
    doc = {
        "study": study,
        "schema_version": 1,
        "summary": summary,
        "command": command,
        "config": config_dict(config),
        "seeds": list(getattr(config, "seeds", ())),
        "provenance": provenance(config, seed=(list(getattr(config, "seeds", ())) or [None])[0]),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "parts": {"reused": parts.reused, "computed": parts.computed} if parts else None,
        "claims": claims,
        "verdict_rule": VERDICT_RULE,
        "tables": tables,
        "figures": [{"file": f, "caption": c} for f, c in figures],
        "results": results,
        "preset": preset,
        "smoke": preset == "smoke",
    }
    if doc["preset"] and " --out " in command:
        doc["command"] = command.replace(" --out ", f" --preset {doc['preset']} --out ", 1)
    atomic_write_json(out_dir / "results.json", doc)
    study_page(doc, out_dir)
    return doc


__all__ = ["HELD", "INCONCLUSIVE", "MAX_SEEDS", "NOT_HELD", "NOT_TESTABLE", "NO_VERDICT", "PRESETS",
           "SMOKE_REASON", "VERDICT_RULE", "Parts", "apply_holm", "check_fields", "choose_preset", "claim",
           "config_dict", "config_hash", "describe_test", "evidence", "finish", "fmt", "fmt_stat", "judge",
           "recompute_verdict", "res_iv", "seed_stats", "start"]
