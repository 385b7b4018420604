"""Markdown for EXPERIMENTS.md from committed results files (numbers are never typed in by hand).

`study_markdown(results_dir)` renders one study's results.json: the command that reproduces it, the claims
table (paper next to ours, with the computed verdict), the study's tables and its plots (a plot the study
did not draw, for want of finite values, is named in a note instead of a broken image link).
`python -m attnlab.experiments.markdown results/offbyone results/rankcollapse ...` prints the sections;
`python -m attnlab.experiments.markdown --counts results/offbyone ...` prints each file's verdict counts
(`verdict_counts`), the numbers of EXPERIMENTS.md's Summary table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from attnlab.experiments.verdicts import normalize


def preset_of(doc: dict[str, Any]) -> str | None:
    """The preset whose config matches the results' config (seeds aside), or None for a custom config."""
    from attnlab.experiments import STUDIES, study_module

    if doc["study"] not in STUDIES:
        return None
    presets = study_module(doc["study"]).PRESETS
    have = json.loads(json.dumps({k: v for k, v in doc["config"].items() if k != "seeds"}))
    for name, cfg in presets.items():
        want = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k != "seeds"}))
        if want == have:
            return name
    return None


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def study_markdown(results_dir: str | Path, heading_level: int = 3) -> str:
    results_dir = Path(results_dir)
    doc = json.loads((results_dir / "results.json").read_text())
    preset = preset_of(doc)
    seeds = len(doc["seeds"])
    cmd = f"attnlab run {doc['study']}" + (f" --preset {preset}" if preset else "")
    cmd += f" --seeds {seeds}" if preset and seeds != len(_preset_seeds(doc["study"], preset)) else ""
    cmd += f" --out {results_dir.as_posix()}"
    h = "#" * heading_level
    out = [f"Command: `{cmd}` (preset {preset or 'custom'}, seeds {doc['seeds']}, "
           f"{_minutes(doc['timings'])} on this machine, attnlab "
           f"{doc['provenance']['versions'].get('git_commit', '?')}).", ""]
    if doc.get("smoke"):
        out += ["_Smoke run: plumbing only, no claim is judged (every verdict is \"no verdict\")._", ""]
    if doc["claims"]:
        rows = [[c["claim"], c["source"], c["paper"], c["ours"], f"**{normalize(c['verdict'])}**"]
                for c in doc["claims"]]
        out += [f"{h} Claims", "", _table(["claim", "source", "paper", "ours", "verdict"], rows), ""]
    for t in doc["tables"]:
        out += [f"{h} {t['title']}", "", _table(t["columns"], t["rows"]), ""]
        if t.get("note"):
            out += [f"_{t['note']}_", ""]
    for fig in doc["figures"]:
        path = results_dir / fig["file"]
        if path.exists():
            out += [f"![{fig['caption']}]({path.as_posix()})", ""]
        else:  # the study drew no plot: its data held no finite value (a link would show a broken image)
            out += [f"_Not drawn ({fig['file']}): no finite values to plot. {fig['caption']}_", ""]
    return "\n".join(out)


def verdict_counts(results_dir: str | Path) -> dict[str, int]:
    """How many of a results file's claims got each verdict, in the engine's words and order."""
    from attnlab.experiments.verdicts import NO_VERDICT, VERDICTS

    doc = json.loads((Path(results_dir) / "results.json").read_text())
    got = [normalize(c["verdict"]) for c in doc["claims"]]
    return {v: got.count(v) for v in (*VERDICTS, NO_VERDICT) if v != NO_VERDICT or v in got}


def _minutes(timings: dict[str, float]) -> str:
    return f"{max(timings.get('total', 0), timings.get('compute', 0)) / 60:.1f} min"


def _preset_seeds(study: str, preset: str) -> tuple[int, ...]:
    from attnlab.experiments import study_module

    return study_module(study).PRESETS[preset].seeds


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == ["--counts"]:
        for d in args[1:]:
            counts = verdict_counts(d)
            print(f"{d}: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
        return 0
    for d in args:
        print(study_markdown(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
