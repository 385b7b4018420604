"""The plots and the short self-contained HTML page of each study, in the page style of `attnlab.present`.

Figures are written as PNG files next to results.json and also inlined as base64 in the page, so the page
opens offline on its own. A plot whose data hold no finite value is not drawn (an older PNG of that name
is removed); the page says so in its place, keeping the caption.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlab.experiments.verdicts import VERDICT_COLOURS, normalize
from attnlab.io import atomic_write_text
from attnlab.present import Raw, badge, code, esc, figure_html, grid, page, para, pre, section, table
from attnlab.present.catalogue import short_label

SPREAD = "bars: ± 1 std over seeds"

# label -> (x, mean, spread or None); spread is the ± half-width of the bar drawn on each point.
Series = dict[str, tuple[Sequence[float], Sequence[float | None], Sequence[float | None] | None]]


def new_figure(width: float = 5.5, height: float = 3.4) -> tuple[Any, Any]:
    """A figure with one axes in the page style (`attnlab.present.plots.figure`)."""
    from attnlab.present.plots import figure

    return figure(width, height)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a figure as PNG atomically."""
    from attnlab.present.plots import save_png

    return save_png(fig, path)


def _bounds(mean: Sequence[float | None], spread: Sequence[float | None] | None
            ) -> tuple[list[float | None] | None, list[float | None] | None]:
    if spread is None:
        return None, None
    pairs = [(m, s) for m, s in zip(mean, spread)]
    lo = [None if m is None or s is None else m - s for m, s in pairs]
    hi = [None if m is None or s is None else m + s for m, s in pairs]
    return lo, hi


def _has_spread(spread: Sequence[float | None] | None) -> bool:
    """Some bar has a length (one seed gives a spread of 0: nothing to draw apart or to explain)."""
    return any(v is not None and math.isfinite(v) and v > 0 for v in spread or ())


def _skip(path: Path) -> None:
    """No finite data: no PNG (and no stale one from an earlier run under the same name)."""
    path.unlink(missing_ok=True)


def _dodge(series: Series, spread: bool, log: bool) -> float:
    """How far apart to shift the series (x units; ln x units on a log axis) so that their bars at one x
    do not overlap: 0.3 of the smallest step between x values, shared out among the series."""
    xs = sorted({float(x) for x_, _, _ in series.values() for x in x_ if x is not None})
    coords = [math.log(x) for x in xs if x > 0] if log else xs
    steps = [b - a for a, b in zip(coords, coords[1:]) if b > a]
    if not spread or len(series) < 2 or not steps:
        return 0.0
    return 0.3 * min(steps) / (len(series) - 1)


def _integers(series: Series) -> bool:
    """Every x is a whole number (layers, steps, positions): integer ticks."""
    return all(x is not None and float(x) == int(x) for x_, _, _ in series.values() for x in x_)


def line_plot(path: str | Path, series: Series, *, xlabel: str, ylabel: str, title: str, logx: bool = False,
              logy: bool = False) -> Path | None:
    """One line of points per label, each with its ± spread as a bar; x and y labels go through
    `attnlab.present.plots.label`. Returns the PNG path, or None when no value was finite."""
    from attnlab.present.plots import figure, int_ticks, log_axis, plot_series, save_png

    path = Path(path)
    fig, ax = figure()
    spread = any(_has_spread(s) for _, _, s in series.values())
    drawn = plot_series(ax, {name: (x, y, *_bounds(y, s)) for name, (x, y, s) in series.items()},
                        dodge=_dodge(series, spread, logx), log_dodge=logx)
    if not drawn:
        _skip(path)
        return None
    if _integers(series) and not logx:
        int_ticks(ax)
    if logx:
        log_axis(ax, "x", 2)
    if logy:
        log_axis(ax, "y")
    ax.set_xlabel(short_label(xlabel))
    ax.set_ylabel(short_label(ylabel))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, title=SPREAD if spread else None, title_fontsize=7)
    return save_png(fig, path)


def bar_plot(path: str | Path, labels: Sequence[str], means: Sequence[float | None],
             spreads: Sequence[float | None] | None, *, ylabel: str, title: str, logy: bool = False
             ) -> Path | None:
    """One point per label with its ± spread as a bar, on an axis scaled to the values (a bar from zero
    would hide differences of a few percent). Returns the PNG path, or None when no value was finite."""
    from attnlab.present.plots import figure, log_axis, plot_points, save_png

    path = Path(path)
    fig, ax = figure()
    lo, hi = _bounds(means, spreads)
    if not plot_points(ax, labels, means, lo, hi):
        _skip(path)
        return None
    if logy:
        log_axis(ax, "y")
    ax.set_ylabel(short_label(ylabel))
    ax.set_title(title + (f" ({SPREAD})" if _has_spread(spreads) else ""), fontsize=10)
    return save_png(fig, path)


def verdict_badge(v: str) -> Raw:
    v = normalize(v)  # a results file of an older rule shows today's word and colour
    return badge(v, VERDICT_COLOURS.get(v, "#57606a"))


def verdict_cell(c: dict[str, Any]) -> Raw:
    """A claim's verdict badge; a withheld verdict (a smoke run, an unmeasured seed spread) gets no badge,
    only the words and the reason, so a page can never show a withheld claim as judged."""
    if c.get("result", {}).get("withheld"):
        reason = c["result"].get("reason") or ""
        return Raw(f"<span class='muted'>no verdict{esc(f' ({reason})' if reason else '')}</span>")
    return verdict_badge(c["verdict"])


SMOKE_BANNER = ("Smoke run: plumbing only. The smoke preset checks that the study runs end to end on a "
                "model too small and too briefly trained to test anything, so no claim is judged; its "
                "numbers are not results. Run --preset quick or --preset full for verdicts.")


def smoke_banner(doc: dict[str, Any]) -> Raw:
    """A smoke run's banner (dark text on light yellow, readable in any theme); empty for other runs."""
    if not doc.get("smoke"):
        return Raw("")
    return Raw("<div class='smoke-banner' role='note' style='color:#1f2328;background:#fff8c5;"
               "border:1px solid #d4a72c;border-radius:6px;padding:0.6em 0.9em;margin:0.8em 0'>"
               f"<b>{esc(SMOKE_BANNER)}</b></div>")


def table_html(t: dict[str, Any]) -> Raw:
    """A study table as results.json stores it: {"title", "columns", "rows", "note"?}."""
    return table(t["rows"], t["columns"], title=t["title"], note=t.get("note"))


def claims_html(claims: list[dict[str, Any]], rule: str) -> Raw:
    if not claims:
        return para("No published claim is tested by this study.")
    rows = [[Raw(f"{esc(c['claim'])}<br><span class='muted'>{esc(c['source'])}</span>"),
             c["paper"], c["ours"],
             c.get("test") or f"{c['effect']} {'>' if c['direction'] == 'above' else '<'} {c['threshold']}",
             verdict_cell(c)] for c in claims]
    return Raw(table(rows, ["claim", "paper", "ours", "test", "verdict"], cls="claims")
               + para(f"Verdict rule: {rule}", "muted"))


def figures_html(figures: list[dict[str, str]], out_dir: Path) -> Raw:
    """The study's figures inlined, two per row; a figure whose PNG was not drawn gets a note instead."""
    from attnlab.present.plots import png_data_uri

    cards = []
    for fig in figures:
        path = Path(out_dir) / fig["file"]
        src = png_data_uri(path) if path.exists() else None
        cards.append(figure_html(src, fig["caption"], alt=fig["file"]))
    return grid(cards)


def study_page(doc: dict[str, Any], out_dir: Path) -> Path:
    prov = doc["provenance"]["versions"]
    compute = max(doc["timings"].get("total", 0), doc["timings"].get("compute", 0))
    lead = [Raw(f"Command: {code(doc['command'])} · seeds {doc['seeds']} · "
                f"attnlab {esc(prov.get('attnlab', ''))} / torch {esc(prov.get('torch', ''))} · "
                f"compute {compute:.1f} s")]
    body = [
        smoke_banner(doc),
        para(doc["summary"]),
        section("Claims", claims_html(doc["claims"], doc["verdict_rule"])),
        section("Results", *(table_html(t) for t in doc["tables"])),
        section("Figures", figures_html(doc["figures"], out_dir)),
        section("Config", pre(json.dumps(doc["config"], indent=2, default=str))),
    ]
    return atomic_write_text(Path(out_dir) / "index.html", page(f"attnlab · {doc['study']}", body, lead=lead))
