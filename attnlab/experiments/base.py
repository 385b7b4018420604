"""The frame every study runs in: presets, seeds, resumable parts, claims with computed verdicts.

A study is a module with a config dataclass (presets `smoke`, `quick`, `full`) and
`run(config, out_dir, progress=True) -> dict`. This file gives it:

- `Parts(out_dir, config)`: per-seed / per-variant sub-results saved atomically as they finish, keyed by
  a hash of the config, so a killed run resumes and a re-run with the same config skips finished parts;
- `start(config, out_dir, validate)`: the opening of every `run()` (validated config, output folder, parts);
- `check_fields(config, choices=..., **rules)`: an unknown choice or a bad value as one ConfigError line;
- `seed_stats(values)`: mean, sample standard deviation and standard error over seeds;
- `evidence(...)`: the per-item values a claim's interval is measured from (kept in results.json);
- `claim(...)`: one published claim, our number next to the paper's, and a verdict computed by `judge`;
- `recompute_verdict(claim_dict)`: the verdict again, from a results file's claim alone;
- `finish(...)`: the results JSON (config, seeds, provenance, timings, claims) and the HTML page.

The verdict rule (stated once, applied to every claim). A claim is about an effect E, a statistic of the
per-item values a run evaluated (a ratio of two arms' mean kurtosis over the same windows, a perplexity ratio
from per-window mean NLLs, a difference of accuracies over the same test sets); `evidence(...)` keeps those
values, per seed, in the claim. The 95% interval of E is measured (`stats.measure`): over >= 2 seeds, a t
interval of the per-seed values of E (each from that seed's item means); with one seed, a paired
moving-block percentile bootstrap over the items (the same resampled items for every arm; block 1 for
independent items, about n^(1/3) for neighbouring windows of a text). Nothing is assumed: an interval that
cannot be measured (fewer than 2 usable seeds or items) makes the claim inconclusive, with the reason.
A threshold claim "E > T" (or "< T") "held" if the interval lies wholly on the claimed side of T, "did not
hold" if wholly on the other side, and is "inconclusive at this scale" otherwise. A "close to" or "costs
nothing" claim is a two-sided equivalence test (`stats.equivalence`) with margins (lo, hi) fixed in the
study's code next to the claim: "held" if the interval lies wholly inside (lo, hi), "did not hold" if wholly
outside, else inconclusive. A claim may state a premise judged by the same rule (e.g. "the softmax baseline
has outliers at all": kurtosis > 10); when the premise does not hold the claim cannot be tested at this scale
and is "inconclusive at this scale". `recompute_verdict(claim)` recomputes a verdict from results.json alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError
from attnlab.experiments.stats import N_BOOT, equivalence, measure, rounded
from attnlab.io import atomic_write_json, provenance

PRESETS = ("smoke", "quick", "full")
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive at this scale"
VERDICT_RULE = (
    "95% interval of the effect: a t interval over seeds (each seed's value from its item means) when there "
    "are >= 2 seeds, else a paired moving-block percentile bootstrap (2000 draws) over the items the run "
    "evaluated, the same resampled items for every arm. Threshold claim: 'held' if the whole interval is on "
    "the claimed side of the threshold, 'did not hold' if it is wholly on the other side, else 'inconclusive "
    "at this scale'. 'Close to' / 'costs nothing' claim: a two-sided equivalence test, 'held' if the whole "
    "interval is inside the margins fixed in the code, 'did not hold' if wholly outside, else inconclusive. "
    "A claim whose premise (same rule) does not hold is 'inconclusive at this scale'; so is one whose "
    "interval cannot be measured (fewer than 2 seeds or items)."
)
# Bumped when what a study stores in its parts changes: parts written by older code are then recomputed,
# never read with fields missing (format 2: per-item values for measured intervals).
PART_FORMAT = 2


# ----------------------------------------------------------------------------------------- presets
MAX_SEEDS = 100  # each seed repeats the whole study; more is a typo, not a plan


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


def evidence(op: str, args: Sequence[str], per_seed: Sequence[dict[str, Sequence[float]]], *, items: str,
             block: int | None = None, **params: Any) -> dict[str, Any]:
    """What a claim's interval is measured from, stored in results.json so the verdict can be recomputed.

    op, args, params: the statistic of the column means (`stats.STAT_OPS`: "ratio" of args[0] over args[1],
    "diff", "exp_ratio" of two mean NLLs, ...). per_seed: one {column: per-item values} per seed, the same
    items in the same order in every column (that is what makes the bootstrap paired). items: what an item
    is ("windows", "test sets", ...). block: the bootstrap block length; 1 for independent items, None for
    about n^(1/3) (neighbouring windows of one text are correlated). Values are rounded to
    `stats.SIG_DIGITS` significant digits, and the verdict is computed from the rounded values.
    """
    cols = list(dict.fromkeys(args))
    runs = []
    for run in per_seed:
        missing = [c for c in cols if c not in run]
        if missing:
            raise ValueError(f"evidence: columns {missing} missing (have {sorted(run)})")
        runs.append({c: [rounded(v) if v is not None else math.nan for v in run[c]] for c in cols})
    return {"stat": {"op": op, "args": list(args), **params}, "items": items, "block": block,
            "n_boot": N_BOOT, "boot_seed": 0, "per_seed": runs}


def judge(interval: dict[str, Any], test: dict[str, Any]) -> str:
    """The verdict rule (module docstring) applied to a measured interval.

    test: {"direction": "above"|"below", "threshold": T} or {"direction": "within", "threshold": [lo, hi]}
    (a two-sided equivalence test, `stats.equivalence`).
    """
    if not interval.get("measured"):
        return INCONCLUSIVE
    direction, thr = test["direction"], test["threshold"]
    if direction == "within":
        return {"equivalent": HELD, "different": NOT_HELD}.get(equivalence(interval, thr[0], thr[1]),
                                                                INCONCLUSIVE)
    if direction not in ("above", "below"):
        raise ValueError(f"judge: direction must be 'above', 'below' or 'within', got {direction!r}")
    above, below = interval["lo"] > thr, interval["hi"] < thr
    if direction == "above":
        return HELD if above else NOT_HELD if below else INCONCLUSIVE
    return HELD if below else NOT_HELD if above else INCONCLUSIVE


def _test(direction: str, threshold: float | Sequence[float]) -> dict[str, Any]:
    if direction == "within":
        lo, hi = (float(x) for x in threshold)  # type: ignore[union-attr]
        if not lo < hi:
            raise ValueError(f"equivalence margins must satisfy lo < hi, got {threshold!r}")
        return {"direction": "within", "threshold": [lo, hi]}
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above', 'below' or 'within', got {direction!r}")
    return {"direction": direction, "threshold": float(threshold)}  # type: ignore[arg-type]


def describe_test(effect: str, test: dict[str, Any]) -> str:
    thr = test["threshold"]
    if test["direction"] == "within":
        return f"{fmt(thr[0])} < {effect} < {fmt(thr[1])} (equivalence)"
    return f"{effect} {'>' if test['direction'] == 'above' else '<'} {fmt(thr)}"


def _interval_text(iv: dict[str, Any]) -> str:
    if not iv.get("measured"):
        return f"{fmt(iv.get('value'))} (interval not measured: {iv.get('reason', '?')})"
    return f"{fmt(iv['value'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def _result(ev: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    iv = measure(ev)
    return {"verdict": judge(iv, test), "value": iv["value"], "mean": iv["value"],
            "interval": [iv["lo"], iv["hi"]] if iv.get("measured") else None, "level": iv["level"],
            "n": iv["n"], "method": iv["method"], "se_measured": bool(iv.get("measured")),
            "seed_values": iv["seed_values"], **({"reason": iv["reason"]} if "reason" in iv else {})}


def claim(claim: str, source: str, paper: str, effect: str, data: dict[str, Any],
          threshold: float | Sequence[float], direction: str, ours: str | None = None,
          premise: tuple[str, dict[str, Any], float, str] | None = None) -> dict[str, Any]:
    """Build a claims entry: the verdict is computed from `data` (an `evidence(...)`), never given.

    direction "above"/"below": the claim is effect > / < threshold. direction "within": a "close to" or
    "costs nothing" claim, a two-sided equivalence test with threshold = (lo, hi) margins fixed in code.
    premise: (what, evidence, threshold, direction), a condition the claim presupposes (e.g. "the softmax
    baseline has outliers at all"), judged by the same rule. If the premise does not hold, the claim cannot
    be tested here and its verdict is "inconclusive at this scale", with the reason.
    """
    test = _test(direction, threshold)
    res = _result(data, test)
    text = f"{effect} = {_interval_text(res_iv(res))}, {res['method']}"
    if premise is not None:
        what, pdata, pthr, pdir = premise
        ptest = _test(pdir, pthr)
        pres = _result(pdata, ptest)
        res["premise"] = {"what": what, **ptest, **pres, "data": pdata}
        if pres["verdict"] != HELD:
            res["verdict"] = INCONCLUSIVE
            res["reason"] = (f"premise not met: {what} = {_interval_text(res_iv(pres))}, needs "
                             f"{describe_test(what, ptest)}")
            text += f" ({res['reason']})"
    d = {"claim": claim, "source": source, "paper": paper, "ours": ours if ours is not None else text,
         "effect": effect, "threshold": test["threshold"], "direction": test["direction"],
         "values": res["seed_values"], "data": data, "result": res, "verdict": res["verdict"],
         "test": describe_test(effect, test)}
    d["rule"] = d["test"] + "; " + VERDICT_RULE
    return d


def res_iv(res: dict[str, Any]) -> dict[str, Any]:
    """A claim result as the interval dict `_interval_text` reads."""
    iv = res.get("interval") or [None, None]
    return {"value": res.get("value"), "lo": iv[0], "hi": iv[1], "measured": res.get("se_measured"),
            "reason": res.get("reason")}


def recompute_verdict(claim_dict: dict[str, Any]) -> str:
    """The verdict of a claim as stored in results.json, recomputed from its stored per-item values alone
    (the statistic, the items, the bootstrap's block, draws and seed are all in `claim_dict`)."""
    test = {"direction": claim_dict["direction"], "threshold": claim_dict["threshold"]}
    v = judge(measure(claim_dict["data"]), test)
    premise = claim_dict["result"].get("premise")
    if premise is not None:
        ptest = {"direction": premise["direction"], "threshold": premise["threshold"]}
        if judge(measure(premise["data"]), ptest) != HELD:
            return INCONCLUSIVE
    return v


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
