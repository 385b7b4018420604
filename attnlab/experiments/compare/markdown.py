"""The compare study's results as Markdown (what EXPERIMENTS.md section 0 shows), rebuilt from a
results.json so that no number is typed by hand:

    python -m attnlab.experiments.compare.markdown runs/compare
"""

from __future__ import annotations

import sys
from typing import Any

from attnlab.experiments.compare.page import cell
from attnlab.present.catalogue import label


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(columns), _row(["---"] * len(columns)), *(_row(r) for r in rows), ""]


def _claims(claims: list[dict[str, Any]]) -> list[str]:
    rows = []
    for c in claims:
        iv = c["result"].get("interval")
        ours = cell({"value": c["result"]["value"], "lo": iv[0], "hi": iv[1]}) if iv else "not measured"
        kind = "primary" if c.get("primary") else "exploratory"
        reason = c["result"].get("reason")
        rows.append([c["claim"], f"{c['source']}: {c['paper']}", ours + (f" ({reason})" if reason else ""),
                     c["test"], kind, f"**{c['verdict']}**"])
    return _table(["claim", "paper", "ours", "test", "endpoint", "verdict"], rows)


def tables(doc: dict[str, Any]) -> str:
    from attnlab.experiments.compare.page_parts import SCRATCH_TABLE, sentences

    out = ["Answer (computed):", "", *(f"- {s}" for s in sentences(doc)), ""]
    if "scratch" in doc:
        arms = doc["scratch"]["arms"]
        out += ["Part 1, every arm (value [95% interval over seeds]):", ""]
        out += _table(["metric"] + [a["name"] for a in arms],
                      [[label(k)] + [cell(a["metrics"].get(k)) for a in arms] for k in SCRATCH_TABLE])
        out += ["Part 1, primary endpoints (one Holm family):", "",
                *_claims([c for c in doc["claims"] if c.get("part") == "scratch" and c.get("primary")])]
        diffs = [[a["name"]] + [cell(a.get("vs_control", {}).get(k)) for k in SCRATCH_TABLE]
                 for a in arms if "vs_control" in a]
        out += [f"Part 1, every difference from the control ({doc['scratch']['control']}), paired by seed "
                f"(exploratory unless a primary endpoint above):", "",
                *_table(["arm"] + [label(k) for k in SCRATCH_TABLE], diffs)]
    if "retrofit" in doc:
        from attnlab.experiments.compare.analysis import EFFECT_METRICS, TABLE_METRICS

        r = doc["retrofit"]
        cols, rows = [], []
        for a in r["arms"]:
            cols.append(a["name"])
            if a["name"] != "pretrained" and "metrics_step0" in a:
                cols.append(f"{a['name']} (step 0)")
        for m in TABLE_METRICS:
            row = [label(m)]
            for a in r["arms"]:
                row.append(cell(a["metrics"].get(m)))
                if a["name"] != "pretrained" and "metrics_step0" in a:
                    row.append(cell(a["metrics_step0"].get(m)))
            rows.append(row)
        out += ["Part 2, every arm after fine-tuning and at step 0 (value [95% interval]):", "",
                *_table(["metric"] + cols, rows)]
        erows = [[f"{arm}: {kind}"] + [cell(k.get(kind, {}).get(m)) for m in EFFECT_METRICS]
                 for arm, k in r["effects"].items() for kind in ("swap", "learned", "total")]
        out += ["Part 2 effects (swap = step 0 - pretrained; learned = trained - step 0; total = trained - "
                "trained control; perplexity as a ratio):", "",
                *_table(["effect"] + [label(m) for m in EFFECT_METRICS], erows)]
        out += ["Part 2 claims (primary endpoints first, then exploratory):", "",
                *_claims(sorted([c for c in doc["claims"] if c.get("part") == "retrofit"],
                                key=lambda c: not c.get("primary")))]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m attnlab.experiments.compare.markdown RUN_DIR_OR_RESULTS_JSON",
              file=sys.stderr)
        return 2
    from attnlab.experiments.compare.schema import read_results

    print(tables(read_results(args[0])))  # a schema-2 file reads under the catalogue's keys too
    return 0


if __name__ == "__main__":
    sys.exit(main())
