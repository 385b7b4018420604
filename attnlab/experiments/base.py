"""The frame every study runs in: presets, seeds, resumable parts, claims with computed verdicts.

A study is a module with a config dataclass (presets `smoke`, `quick`, `full`) and
`run(config, out_dir, progress=True) -> dict`. This file gives it:

- `Parts(out_dir, config)`: per-seed / per-variant sub-results saved atomically as they finish, keyed by
  a hash of the config, so a killed run resumes and a re-run with the same config skips finished parts;
- `seed_stats(values)`: mean, sample standard deviation and standard error over seeds;
- `claim(...)`: one published claim, our number next to the paper's, and a verdict computed by `verdict`;
- `finish(...)`: the results JSON (config, seeds, provenance, timings, claims) and the HTML page.

The verdict rule (stated once, applied to every claim). A claim is "our effect E is above (or below) a
threshold T". Over n seeds E has mean m and standard error se = s / sqrt(n); with one seed the spread
cannot be measured, so se is taken as 10% of |m| (a stand-in, said so in the output). The interval is
I = [m - 2 se, m + 2 se]. The claim "held" if I lies entirely on the claimed side of T, "did not hold"
if I lies entirely on the other side, and is "inconclusive at this scale" otherwise. A claim may state a
premise judged by the same rule (e.g. "the softmax baseline has outliers at all": kurtosis > 10); when the
premise does not hold the claim cannot be tested at this scale and is "inconclusive at this scale".
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError
from attnlab.io import atomic_write_json, provenance

PRESETS = ("smoke", "quick", "full")
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive at this scale"
SINGLE_SEED_REL_SE = 0.10
VERDICT_RULE = (
    "m ± 2·se over seeds (se = s/√n; with one seed se = 10% of |m|): 'held' if the whole interval is on the "
    "claimed side of the threshold, 'did not hold' if it is wholly on the other side, else 'inconclusive "
    "at this scale'. A claim whose premise (same rule) does not hold is 'inconclusive at this scale'."
)


# ----------------------------------------------------------------------------------------- presets
def choose_preset(presets: dict[str, Any], name: str, seeds: int | None = None) -> Any:
    """The config of preset `name`, with `seeds` overriding its seed count (seeds 0 .. N-1)."""
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    config = presets[name]
    if seeds is not None:
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            raise ConfigError(f"--seeds must be a positive integer, got {seeds!r}")
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


def check_fields(config: Any, **rules: Callable[[Any], bool]) -> None:
    """Raise ConfigError naming the field when a rule fails (rules: name -> predicate)."""
    names = {f.name for f in fields(config)}
    for name, ok in rules.items():
        if name not in names:
            raise TypeError(f"check_fields: {type(config).__name__} has no field {name!r}")
        if not ok(getattr(config, name)):
            raise ConfigError(f"{type(config).__name__}.{name} = {getattr(config, name)!r} is not valid; "
                              f"see the study's presets for working values")


# ------------------------------------------------------------------------------------ resumability
class Parts:
    """Sub-results of a study, one JSON file each under `out_dir/parts/`, reused when the config matches.

    `get(key, compute)` returns the stored result of `key` if it was computed under the same config,
    otherwise calls `compute()`, stores its (JSON-serialisable) result atomically, and returns it.
    """

    def __init__(self, out_dir: str | Path, config: Any) -> None:
        self.dir = Path(out_dir) / "parts"
        self.hash = config_hash(config)
        self.reused: list[str] = []
        self.computed: list[str] = []
        self.seconds: dict[str, float] = {}

    def _path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.dir / f"{safe}.json"

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


# -------------------------------------------------------------------------------------- statistics
def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and standard error of per-seed values (non-finite values are kept out and counted)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "se": None, "n": 0, "values": list(values)}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / math.sqrt(n) if n > 1 else None, "n": n,
            "values": [float(v) for v in values]}


def verdict(values: Sequence[float], threshold: float, direction: str) -> dict[str, Any]:
    """Apply the verdict rule (module docstring) to per-seed effect values.

    direction "above": the claim is E > threshold; "below": E < threshold.
    Returns {"verdict", "mean", "interval", "n", "se_measured"}.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"verdict: direction must be 'above' or 'below', got {direction!r}")
    st = seed_stats(values)
    if st["n"] == 0:
        return {"verdict": INCONCLUSIVE, "mean": None, "interval": None, "n": 0, "se_measured": False}
    m = st["mean"]
    measured = st["n"] > 1
    se = st["se"] if measured else SINGLE_SEED_REL_SE * abs(m)
    lo, hi = m - 2 * se, m + 2 * se
    above, below = lo > threshold, hi < threshold
    if direction == "above":
        v = HELD if above else NOT_HELD if below else INCONCLUSIVE
    else:
        v = HELD if below else NOT_HELD if above else INCONCLUSIVE
    return {"verdict": v, "mean": m, "interval": [lo, hi], "n": st["n"], "se_measured": measured}


@dataclass
class Claim:
    """One published claim set against our number. `effect` is what the verdict rule is applied to."""

    claim: str
    source: str
    paper: str
    ours: str
    effect: str
    threshold: float
    direction: str
    values: list[float] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.result.get("verdict", INCONCLUSIVE)
        d["rule"] = (f"{self.effect} {'>' if self.direction == 'above' else '<'} {fmt(self.threshold)}; "
                     + VERDICT_RULE)
        return d


def claim(claim: str, source: str, paper: str, effect: str, values: Sequence[float], threshold: float,
          direction: str, ours: str | None = None,
          premise: tuple[str, Sequence[float], float, str] | None = None) -> dict[str, Any]:
    """Build a claims entry: the verdict is computed from `values`, never given.

    premise: (what, values, threshold, direction), a condition the claim presupposes (e.g. "the softmax
    baseline has outliers at all"), judged by the same rule. If the premise does not hold, the claim cannot
    be tested here and its verdict is "inconclusive at this scale", with the reason.
    """
    res = verdict(values, threshold, direction)
    if ours is None:
        ours = f"{effect} = {fmt_stat(seed_stats(values))}"
    if premise is not None:
        what, pvals, pthr, pdir = premise
        pres = verdict(pvals, pthr, pdir)
        res["premise"] = {"what": what, "threshold": pthr, "direction": pdir, **pres}
        if pres["verdict"] != HELD:
            res["verdict"] = INCONCLUSIVE
            res["reason"] = (f"premise not met: {what} = {fmt_stat(seed_stats(pvals))}, needs "
                             f"{'>' if pdir == 'above' else '<'} {fmt(pthr)}")
            ours += f" ({res['reason']})"
    c = Claim(claim=claim, source=source, paper=paper, ours=ours, effect=effect, threshold=float(threshold),
              direction=direction, values=[float(v) for v in values], result=res)
    return c.as_dict()


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_stat(st: dict[str, Any]) -> str:
    if st.get("mean") is None:
        return "–"
    if st.get("n", 0) > 1:
        return f"{fmt(st['mean'])} ± {fmt(st['std'])}"
    return fmt(st["mean"])


# ------------------------------------------------------------------------------------------ output
def finish(study: str, config: Any, out_dir: str | Path, *, results: dict[str, Any],
           claims: list[dict[str, Any]], tables: list[dict[str, Any]], figures: list[tuple[str, str]],
           timings: dict[str, float],
           parts: Parts | None, summary: str, command: str) -> dict[str, Any]:
    """Write results.json and index.html for a study and return the results dict.

    tables: [{"title", "columns", "rows"}]; figures: [(png file name under out_dir, caption)].
    """
    from attnlab.experiments.html import study_page

    out_dir = Path(out_dir)
    if parts is not None:
        # Wall time of all parts when they were computed (a resumed run's own total is only what it redid).
        timings = {**timings, "compute": sum(parts.seconds.values())}
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
    }
    from attnlab.experiments.markdown import preset_of

    doc["preset"] = preset_of(doc)
    if doc["preset"] and " --out " in command:
        doc["command"] = command.replace(" --out ", f" --preset {doc['preset']} --out ", 1)
    atomic_write_json(out_dir / "results.json", doc)
    study_page(doc, out_dir)
    return doc
