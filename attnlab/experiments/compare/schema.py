"""What `attnlab compare` reads back: resumable parts and results files written by earlier versions.

Schema 3 (this one) writes every metric under its catalogue key (`attnlab.present.catalogue`): the keys of
`diagnose.summary` (`first_token_attn`, `first_token_layer`, `first_token_heads`, `null_sink_mass`, ...) and
compare's own. Schema 2 wrote `token0_attention`, `token0_layer`, `token0_heads`, `null_mass`,
`null_mass_layer`, `null_mass_heads` for the same numbers. Everything compare reads from disk goes through
`migrate_keys` here, so a part or a results file of schema 2 reads as schema 3:

- `read_part(result)`: a stored part (OUT/parts, OUT/scratch/parts) before it is reused;
- `read_results(path)`: a results.json for rendering (its claims' evidence columns keep the names they were
  written with: they only label the per-item lists);
- `reassemble(doc)`: the whole document again from the per-item values it stores, by the current code, so
  every derived key and claim text is schema 3 and every number is recomputed from the same items:

    python -m attnlab.experiments.compare.schema results/compare [...]   # rewrites results.json, compare.html
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from attnlab.present.catalogue import migrate_keys

SCHEMA_VERSION = 3


def read_part(result: Any) -> Any:
    """A stored part's result with every former metric key renamed (a part computed now is unchanged)."""
    return migrate_keys(result)


def read_results(path: str | Path) -> dict[str, Any]:
    """A compare results.json (a folder or the file) with every former metric key renamed."""
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    return migrate_keys(json.loads(path.read_text(encoding="utf-8")))


def metric_keys(doc: dict[str, Any]) -> set[str]:
    """Every metric key a compare results document uses: arms' metrics (after training, at step 0, against
    the control), per-layer profiles, effects, per-window columns of part 2, and claims' "metric"."""
    keys = {c["metric"] for c in doc.get("claims", []) if "metric" in c}
    for a in doc.get("scratch", {}).get("arms", []):
        keys |= set(a.get("metrics") or {}) | set(a.get("vs_control") or {})
    r = doc.get("retrofit", {})
    for a in r.get("arms", []):
        keys |= set(a.get("metrics") or {}) | set(a.get("metrics_step0") or {})
        keys |= set(a.get("per_layer") or {})
    for kinds in r.get("effects", {}).values():
        for ivs in kinds.values():
            keys |= set(ivs)
    for items in [*(it for runs in r.get("items", {}).values() for it in runs.values()),
                  *r.get("items_step0", {}).values()]:
        keys |= set(items)
    return keys


def _dataclass(cls: type, stored: dict[str, Any]) -> Any:
    """`cls` from its asdict() in a results file: lists back to tuples, fields the class lacks left out."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known})


def config_of(doc: dict[str, Any]) -> Any:
    """The `Config` a results file was written under."""
    from attnlab.experiments.compare.config import Config
    from attnlab.experiments.compare.scratch_config import ScratchConfig

    stored = dict(doc["config"])
    stored["scratch"] = _dataclass(ScratchConfig, stored["scratch"])
    return _dataclass(Config, stored)


def _scratch_results(s: dict[str, Any]) -> dict[str, dict[int, Any]]:
    """Part 1's per-(arm, seed) results, as `scratch.run_scratch` returns them, from the file's arms."""
    arms = {a["name"]: a for a in s["arms"]}
    order = [*s["items"], *(a for a in arms if a not in s["items"])]  # the order the run met them
    out: dict[str, dict[int, Any]] = {}
    for name in order:
        a = arms[name]
        diverged = a.get("diverged") or {}
        for seed in a["sink_curve"]:
            res: dict[str, Any] = {"arm": name, "seed": int(seed), "loss_curve": a["loss_curve"][seed],
                                   "sink_curve": a["sink_curve"][seed],
                                   "diverged_at": diverged.get(seed, {}).get("step"),
                                   "cause": diverged.get(seed, {}).get("cause")}
            if seed in s["items"].get(name, {}):
                res["items"] = s["items"][name][seed]
            out.setdefault(name, {})[int(seed)] = res
    return out


def _retrofit_runs(r: dict[str, Any]) -> dict[str, dict[int, Any]]:
    """Part 2's per-(arm, seed) results, as `run_arm` returns them, from the file's arms."""
    out: dict[str, dict[int, Any]] = {}
    for a in r["arms"]:
        if a["name"] == "pretrained":
            continue
        items = r["items"].get(a["name"], {})
        for i, seed in enumerate(a["seeds"]):
            res: dict[str, Any] = {"arm": a["name"], "seed": seed}
            if str(seed) in (a.get("train") or {}):
                res["train"] = a["train"][str(seed)]
            if i == 0 and a.get("saved"):
                res["saved"] = a["saved"]
            if str(seed) in items:
                res["items"] = items[str(seed)]
            out.setdefault(a["name"], {})[seed] = res
    return out


def reassemble(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` (any schema) as the current code assembles it from the per-item values the file stores: parts,
    claims and verdicts recomputed, run records (command, config, timings, parts, provenance) kept."""
    from attnlab.experiments.compare.retrofit_report import assemble_retrofit
    from attnlab.experiments.compare.scratch_report import assemble_scratch

    old = migrate_keys(doc)
    config = config_of(old)
    new = {**old, "schema_version": SCHEMA_VERSION}
    if "scratch" in old:
        new["scratch"] = assemble_scratch(config.scratch, _scratch_results(old["scratch"]),
                                          smoke=bool(old["smoke"]))
    if "retrofit" in old:
        r = old["retrofit"]
        m = r["model"]
        base = SimpleNamespace(name=m["name"], source=m["source"], n_layers=m["layers"], n_heads=m["heads"],
                               d_model=m["d_model"])
        new["retrofit"] = assemble_retrofit(config, _retrofit_runs(r), r["items_step0"],
                                            (r["windows"]["n"], r["windows"]["tokens"]), r["data"], base)
        if "seconds" in r:
            new["retrofit"]["seconds"] = r["seconds"]
    new["claims"] = [c for part in ("scratch", "retrofit") for c in new.get(part, {}).pop("claims", [])]
    if doc.get("schema_version") != SCHEMA_VERSION:
        new["migrated_from_schema"] = doc.get("schema_version")
    return new


def rewrite(results_dir: str | Path) -> dict[str, Any]:
    """Reassemble `results_dir`/results.json in place and render its compare.html again."""
    from attnlab.experiments.compare.page import write_page
    from attnlab.io import atomic_write_json

    results_dir = Path(results_dir)
    path = results_dir / "results.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("study") != "compare":
        raise ValueError(f"{path}: study {doc.get('study')!r}, not an `attnlab compare` results file")
    new = reassemble(doc)
    atomic_write_json(path, new, strict=True)
    write_page(new, results_dir)
    return new


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m attnlab.experiments.compare.schema RESULTS_DIR [...]", file=sys.stderr)
        return 2
    for d in args:
        rewrite(d)
        print(f"{d}: results.json (schema {SCHEMA_VERSION}) and compare.html rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SCHEMA_VERSION", "config_of", "metric_keys", "read_part", "read_results", "reassemble", "rewrite"]
