"""Plots (matplotlib, Agg) and the short self-contained HTML page of each study.

Figures are written as PNG files next to results.json and also inlined as base64 in the page, so the page
opens offline on its own.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlab.io import atomic_write_bytes, atomic_write_text

VERDICT_COLOURS = {"held": "#1a7f37", "did not hold": "#cf222e", "inconclusive at this scale": "#9a6700"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #d0d7de;padding:3px 8px;
text-align:right}th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.claims td{text-align:left}.v{font-weight:600;color:#fff;padding:1px 6px;border-radius:4px;white-space:nowrap}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:520px}figure img{max-width:100%}
figcaption{font-size:.85em;color:#57606a}code,pre{background:#f6f8fa;padding:1px 4px;border-radius:3px}
pre{padding:.6em;overflow-x:auto;font-size:.8em}.muted{color:#57606a;font-size:.85em}
"""


def new_figure(width: float = 5.0, height: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


Series = dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]]


def line_plot(path: str | Path, series: Series, *, xlabel: str, ylabel: str, title: str, logx: bool = False,
              logy: bool = False) -> Path:
    """series: label -> (x, mean, spread or None); spread is drawn as a band of ±1 std."""
    fig, ax = new_figure()
    for label, (x, y, s) in series.items():
        spread = s if s is not None else [None] * len(x)
        pts = [(a, b, c) for a, b, c in zip(x, y, spread) if b is not None]
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        line = ax.plot(xs, ys, marker="o", markersize=3, label=label)[0]
        if s is not None and all(p[2] is not None for p in pts):
            ax.fill_between(xs, [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts], alpha=0.2,
                            color=line.get_color())
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def bar_plot(path: str | Path, labels: Sequence[str], means: Sequence[float | None],
             spreads: Sequence[float | None] | None, *, ylabel: str, title: str, logy: bool = False) -> Path:
    fig, ax = new_figure()
    ys = [m if m is not None else 0.0 for m in means]
    err = [s or 0.0 for s in spreads] if spreads is not None else None
    ax.bar(range(len(labels)), ys, yerr=err, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"data:image/png;base64,{data}"


def verdict_badge(v: str) -> str:
    return f'<span class="v" style="background:{VERDICT_COLOURS.get(v, "#57606a")}">{html.escape(v)}</span>'


def table_html(table: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["columns"])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in table["rows"])
    note = f'<p class="muted">{html.escape(table["note"])}</p>' if table.get("note") else ""
    return f"<h3>{html.escape(table['title'])}</h3><table><tr>{head}</tr>{rows}</table>{note}"


def claims_html(claims: list[dict[str, Any]], rule: str) -> str:
    if not claims:
        return "<p>No published claim is tested by this study.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(c['claim'])}<br><span class='muted'>{html.escape(c['source'])}</span></td>"
        f"<td>{html.escape(c['paper'])}</td><td>{html.escape(c['ours'])}</td>"
        f"<td>{html.escape(c['effect'])} {'&gt;' if c['direction'] == 'above' else '&lt;'} "
        f"{html.escape(str(c['threshold']))}</td><td>{verdict_badge(c['verdict'])}</td></tr>"
        for c in claims)
    head = "<tr><th>claim</th><th>paper</th><th>ours</th><th>test</th><th>verdict</th></tr>"
    return (f"<table class='claims'>{head}"
            f"{rows}</table><p class='muted'>Verdict rule: {html.escape(rule)}</p>")


def figures_html(figures: list[dict[str, str]], out_dir: Path) -> str:
    parts = []
    for fig in figures:
        path = out_dir / fig["file"]
        if path.exists():
            parts.append(f"<figure><img src='{_img(path)}' alt='{html.escape(fig['file'])}'>"
                         f"<figcaption>{html.escape(fig['caption'])}</figcaption></figure>")
    return "".join(parts)


def study_page(doc: dict[str, Any], out_dir: Path) -> Path:
    prov = doc["provenance"]["versions"]
    body = [
        f"<h1>attnlab · {html.escape(doc['study'])}</h1>",
        f"<p>{html.escape(doc['summary'])}</p>",
        f"<p>Command: <code>{html.escape(doc['command'])}</code> · seeds {doc['seeds']} · "
        f"{html.escape(prov.get('attnlab', ''))} / torch {html.escape(prov.get('torch', ''))} · "
        f"compute {max(doc['timings'].get('total', 0), doc['timings'].get('compute', 0)):.1f} s</p>",
        "<h2>Claims</h2>", claims_html(doc["claims"], doc["verdict_rule"]),
        "<h2>Results</h2>", "".join(table_html(t) for t in doc["tables"]),
        "<h2>Figures</h2>", figures_html(doc["figures"], out_dir),
        "<h2>Config</h2>", f"<pre>{html.escape(_json(doc['config']))}</pre>",
    ]
    title = f"attnlab {html.escape(doc['study'])}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    return atomic_write_text(out_dir / "index.html", page)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)
