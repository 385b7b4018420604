"""The compare study's results as Markdown tables (what EXPERIMENTS.md section 0 shows), rebuilt from a
results.json so that no number is typed by hand:

    python -m attnlab.experiments.compare.markdown runs/compare
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from attnlab.experiments.compare.page import LABELS, TABLE_METRICS


def _iv(iv: dict[str, Any] | None) -> str:
    from attnlab.present import fmt_interval

    return "–" if not iv else fmt_interval(iv["value"], iv["lo"], iv["hi"])


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def tables(doc: dict[str, Any]) -> str:
    arms = doc["arms"]
    lines = [_row(["metric"] + [a["name"] for a in arms]), _row(["---"] * (len(arms) + 1))]
    for m in TABLE_METRICS:
        if any(m in a["metrics"] for a in arms):
            lines.append(_row([LABELS[m]] + [_iv(a["metrics"].get(m)) for a in arms]))
    lines.append(_row(["perplexity at retrofit"] + [_iv(a.get("ppl_at_retrofit")) for a in arms]))
    out = ["Every arm (value [95% interval]):", "", *lines, ""]
    diffs = doc.get("differences") or {}
    if diffs:
        metrics = [m for m in TABLE_METRICS if any(m in per for per in diffs.values())]
        out += [f"Difference from the control ({doc['control']}), paired over the same windows "
                f"(**bold**: the interval excludes zero):", "",
                _row(["arm"] + [LABELS[m] for m in metrics]), _row(["---"] * (len(metrics) + 1))]
        for arm, per in diffs.items():
            cells = [arm]
            for m in metrics:
                iv = per.get(m)
                text = _iv(iv)
                cells.append(f"**{text}**" if iv and (iv["lo"] > 0 or iv["hi"] < 0) else text)
            out.append(_row(cells))
        out.append("")
    out += ["Claims:", "", _row(["claim", "paper", "ours", "test", "verdict"]), _row(["---"] * 5)]
    for c in doc["claims"]:
        ours = f"{_iv(c.get('interval'))}" + (f" ({c['reason']})" if c.get("reason") else "")
        out.append(_row([c["claim"], f"{c['source']}: {c['paper']}", ours, c["test"], f"**{c['verdict']}**"]))
    lines = doc.get("answer_lines")
    out += ["", "Answer (computed): " + (doc["answer"] if not lines else ""), ""]
    if lines:
        from attnlab.experiments.compare.analysis import ANSWER_LEAD

        out[-2] += ANSWER_LEAD
        out += [f"- {line}" for line in lines] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m attnlab.experiments.compare.markdown RUN_DIR_OR_RESULTS_JSON",
              file=sys.stderr)
        return 2
    path = Path(args[0])
    path = path / "results.json" if path.is_dir() else path
    print(tables(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
