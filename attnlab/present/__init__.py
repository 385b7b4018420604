"""One page style for every page attnlab writes: the report, the study pages, compare.html, the streaming
plots. It imports nothing from attnlab but `attnlab.io`, so any floor may use it.

Labels (`attnlab.present.labels`):
    label(key) -> str, LABELS                    "val_loss" -> "validation loss (nats/byte)" (axes, rows)

Numbers (`attnlab.present.numbers`):
    fmt_num(x, digits=3) -> str                  1.58, 0.0123, 12,346, 1.23e-04, "–" for None / NaN
    fmt_interval(value, lo, hi, digits=3) -> str "0.99995 [0.99990, 1.00000]": decimals resolve the interval

HTML (`attnlab.present.page`; text is escaped, `Raw` marks HTML that is not):
    page(title, sections, lead=()) -> Raw        the whole self-contained page (inline CSS, no scripts)
    section(heading, *parts), para(text, cls), code(text), pre(text), details(summary, *parts)
    table(rows, columns, fmt=fmt_num, title=, note=, cls=)   numbers right-aligned; a str row = group heading
    figure_html(src, caption, title=, wide=)     a figure card; src None says "not drawn: no finite values"
    grid(cards), badge(text, colour), bold(text), esc(text), CSS

Plots (`attnlab.present.plots`, loaded on first use: matplotlib is not imported until then):
    figure(width, height, ncols) -> (fig, axes)  page style, plain tick labels (no offset, no multiplier)
    plot_layers(ax, {name: (values, lo, hi)})    points + interval bars, integer layer ticks
    plot_series(ax, {name: (x, values, lo, hi)}), plot_points(ax, names, values, lo, hi)
    log_axis(ax, axis, base), int_ticks(ax), reference(ax, y), colorbar(fig, mappable, ax), COLORS, style()
    has_data(fig) -> bool, png_bytes(fig), png_data_uri(fig | bytes | path), save_png(fig, path)
"""

from __future__ import annotations

from typing import Any

from attnlab.present.labels import LABELS, label
from attnlab.present.numbers import fmt_interval, fmt_num
from attnlab.present.page import (
    CSS,
    Raw,
    badge,
    bold,
    code,
    details,
    esc,
    figure_html,
    grid,
    page,
    para,
    pre,
    section,
    table,
)

_PLOTS = ("COLORS", "PlainFormatter", "colorbar", "figure", "has_data", "int_ticks", "log_axis",
          "plot_layers", "plot_points", "plot_series", "png_bytes", "png_data_uri", "reference", "save_png",
          "style")

__all__ = ["CSS", "LABELS", "Raw", "badge", "bold", "code", "details", "esc", "figure_html", "fmt_interval",
           "fmt_num", "grid", "label", "page", "para", "pre", "section", "table", *_PLOTS]


def __getattr__(name: str) -> Any:
    # The plotting names come from attnlab.present.plots on first use, so that formatting a number or a
    # table does not import matplotlib.
    if name in _PLOTS:
        from attnlab.present import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'attnlab.present' has no attribute {name!r}")
