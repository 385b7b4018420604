"""compare.html: the question, one computed sentence per part, a forest plot of the primary endpoints, then
part 1 (from scratch) and part 2 (the retrofit) with their tables, plots and claims, and provenance.

A smoke run says so in a banner and shows no verdict badges: its numbers test the plumbing, not a claim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnlab.experiments.verdicts import NO_VERDICT, VERDICT_COLOURS, VERDICT_RULE
from attnlab.present.catalogue import short_label

SMOKE_BANNER = ("Smoke run: plumbing only. The models are tiny and barely trained, so the numbers below test "
                "that every part runs and is written; they are not findings, and no claim is judged.")


def cell(iv: dict[str, Any] | None) -> str:
    from attnlab.present import fmt_interval

    if not iv:
        return "–"
    return fmt_interval(iv["value"], iv["lo"], iv["hi"])


def scroll(html: Any) -> Any:
    """Wide tables (7 arms x intervals) scroll sideways instead of running off the page."""
    from attnlab.present import Raw

    return Raw(f"<div style='overflow-x:auto'>{html}</div>")


def claims_table(claims: list[dict[str, Any]], title: str, smoke: bool) -> Any:
    """The primary endpoints (with their verdicts), then the exploratory claims (effects, no verdict)
    folded under a summary line: they are many, and none of them is a finding on its own."""
    from attnlab.present import Raw, details, table

    if not claims:
        return ""
    primary = [c for c in claims if c.get("primary")]
    rest = [c for c in claims if not c.get("primary")]
    cols = ["verdict", "claim", "ours", "test"]
    out = [table([_claim_row(c, smoke) for c in primary], cols,
                 title=f"{title}: primary endpoints (one Holm-corrected family, named before the run)",
                 note=f"Verdict rule: {VERDICT_RULE}")] if primary else []
    if rest:
        out.append(details(f"{title}: {len(rest)} exploratory comparisons (effect and 95% interval, no "
                           f"verdict)", table([_claim_row(c, smoke) for c in rest], cols)))
    return scroll(Raw("".join(str(x) for x in out)))


def _claim_row(c: dict[str, Any], smoke: bool) -> list[Any]:
    from attnlab.present import Raw, badge, esc

    v = c["verdict"]
    shown = "" if smoke or v == NO_VERDICT else badge(v, VERDICT_COLOURS.get(v, "#57606a"))
    reason = c["result"].get("reason")
    ours = esc(c["ours"].split(" (")[0] if reason else c["ours"])
    return [shown, Raw(f"{esc(c['claim'])}<br><span class='muted'>{esc(c['source'])}: "
                       f"{esc(c['paper'])}</span>"),
            Raw(f"{ours}" + (f"<br><span class='muted'>{esc(reason)}</span>" if reason else "")),
            Raw(esc(c["test"]))]


def forest_figures(doc: dict[str, Any]) -> list[Any]:
    """Each arm's effect on the primary endpoints, with its interval: one figure per part, one panel per
    endpoint (a comparison with the control; the control's own premise-like claim is in the tables)."""
    cards = []
    for part, title in (("scratch", "Part 1 (from scratch)"), ("retrofit", "Part 2 (retrofit)")):
        rows: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for c in doc["claims"]:
            iv = c["result"].get("interval")
            if c.get("part") != part or not c.get("primary") or iv is None or " - " not in c["effect"] \
                    and " / " not in c["effect"]:
                continue
            panel = (short_label(c["metric"]) if c.get("metric") else c["effect"]) + (
                f" ({c['kind']})" if c.get("kind") else "")
            null = 1.0 if "/" in c["effect"] else 0.0
            margins = c["threshold"] if c["direction"] == "within" else None
            rows.setdefault(panel, []).append((c["arm"], {"value": c["result"]["value"], "lo": iv[0],
                                                          "hi": iv[1], "null": null, "margins": margins}))
        if rows:
            cards.append(_forest(rows, title))
    return cards


def _forest(rows: dict[str, list[tuple[str, dict[str, Any]]]], title: str) -> Any:
    import numpy as np

    from attnlab.present import figure, figure_html, has_data, png_data_uri

    n = len(rows)
    tallest = max(len(r) for r in rows.values())
    fig, axes = figure(2.8 * n + 0.6, 0.9 + 0.32 * tallest, ncols=n)
    for ax, (panel, pts) in zip(np.atleast_1d(axes), rows.items()):
        for i, (_arm, iv) in enumerate(pts):
            err = [[max(iv["value"] - iv["lo"], 0)], [max(iv["hi"] - iv["value"], 0)]]
            ax.errorbar([iv["value"]], [i], xerr=err, fmt="o", ms=4, capsize=3, color="#0969da")
        ax.set_yticks(range(len(pts)))
        ax.set_yticklabels([a for a, _ in pts], fontsize=7)
        ax.set_ylim(-0.6, len(pts) - 0.4)
        ax.set_title(panel, fontsize=8)
        ax.axvline(pts[0][1]["null"], color="grey", lw=0.8, ls="--")
        if pts[0][1]["margins"]:  # an equivalence claim: the margins fixed in code, shaded
            ax.axvspan(*pts[0][1]["margins"], color="#1a7f37", alpha=0.08, lw=0)
    src = png_data_uri(fig) if has_data(fig) else None
    return figure_html(src, f"{title}: each arm's effect on the primary endpoints against the softmax "
                            f"control (a difference; perplexity as a ratio), with its interval at the "
                            f"Holm-corrected level. Dashed: no effect; shaded: margins.",
                       title=f"{title}: primary endpoints", wide=True)


def write_page(doc: dict[str, Any], out: Path) -> Path:
    from attnlab.experiments.compare.page_parts import retrofit_sections, scratch_sections, sentences
    from attnlab.io import atomic_write_text
    from attnlab.present import Raw, code, details, esc, page, para, pre, section

    smoke = bool(doc.get("smoke"))
    lead = [doc["question"]]
    if smoke:
        lead.insert(0, Raw(f"<div style='background:#fff8c5;color:#1f2328;border:1px solid #d4a72c;"
                           f"padding:8px'>"
                           f"<b>{esc(SMOKE_BANNER)}</b></div>"))
    answer = [Raw("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in sentences(doc)) + "</ul>"),
              *forest_figures(doc)]
    sections = [section("The answer", *answer)]
    if "scratch" in doc:
        sections += scratch_sections(doc, smoke)
    if "retrofit" in doc:
        sections += retrofit_sections(doc, smoke)
    sections.append(section(
        "Provenance", para("Reproduce:"), code(doc["command"]),
        details("config, versions, timings", pre(json.dumps(
            {"config": doc["config"], "versions": doc["provenance"]["versions"], "timings": doc["timings"]},
            indent=2, default=str)))))
    html = page("attnlab compare: adding one to the softmax denominator", sections, lead=lead)
    return atomic_write_text(out / "compare.html", html)


__all__ = ["SMOKE_BANNER", "cell", "claims_table", "scroll", "write_page"]
