"""Self-contained HTML pages: one stylesheet, tables, figure cards and the page frame.

Every page attnlab writes (the report, a study's index.html, compare.html) is built from these pieces, so
they look alike and open offline: the CSS is inline, figures are `data:` URIs, there are no scripts and
nothing is fetched. Text arguments are escaped here; a piece that already is HTML is passed as `Raw`
(everything these functions return is `Raw`, so pieces nest without double escaping).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from attnlab.present.numbers import MISSING, fmt_num

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;
color:#1d2330;line-height:1.45}
header{background:#1d2330;color:#fff;padding:22px 36px}
header h1{margin:0 0 6px 0;font-size:24px}header p{margin:2px 0;color:#c9d1e0;font-size:13px}
header code{background:#2c3445;color:#fff}
main{padding:12px 36px 40px 36px;max-width:1500px}
h2{margin:30px 0 6px 0;font-size:20px;border-bottom:2px solid #d9dee7;padding-bottom:4px}
h3{margin:18px 0 6px 0;font-size:15px;color:#384152}
p{font-size:14px;max-width:1100px}
.meta,.muted{font-size:13px;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:12px 14px;margin:0}
.card h4{margin:0 0 6px 0;font-size:14px}
.card img{max-width:100%;height:auto;display:block;margin:auto}
.card.wide{grid-column:1 / -1}
.card figcaption,.cap{font-size:12.5px;color:#4a5466;margin:6px 0 0 0}
.card.empty{background:#fafbfc;border-style:dashed}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0 12px 0}
th,td{border:1px solid #dde2ea;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#eef1f6}th.group{background:#e3e8f0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.read{color:#4a5466;font-size:12px;display:inline-block;max-width:520px}
.v{font-weight:600;color:#fff;padding:1px 6px;border-radius:4px;white-space:nowrap}
code,pre{background:#eef1f6;padding:1px 4px;border-radius:3px}
pre{padding:.6em;overflow-x:auto;font-size:12px}
details{margin:14px 0;font-size:13px}summary{cursor:pointer;font-weight:600;color:#384152}
"""


class Raw(str):
    """A piece of HTML that goes into the page as it is (already escaped)."""


def esc(text: Any) -> Raw:
    """Text as HTML (Raw passes through unchanged)."""
    return text if isinstance(text, Raw) else Raw(html.escape(str(text)))


def join(parts: Iterable[Any]) -> Raw:
    return Raw("".join(esc(p) for p in parts))


def page(title: str, sections: Iterable[Any], *, lead: Sequence[Any] = ()) -> Raw:
    """A whole page: a header with `title` and the `lead` lines, then the sections (HTML or text)."""
    head = "".join(f"<p>{esc(line)}</p>" for line in lead)
    return Raw("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
               f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
               f"<header><h1>{esc(title)}</h1>{head}</header><main>{join(sections)}</main></body></html>\n")


def section(heading: str | None, *parts: Any, level: int = 2) -> Raw:
    """A heading (none when None) followed by its parts."""
    title = f"<h{level}>{esc(heading)}</h{level}>" if heading else ""
    return Raw(title + join(parts))


def para(text: Any, cls: str | None = None) -> Raw:
    return Raw(f"<p{f' class={cls!r}' if cls else ''}>{esc(text)}</p>")


def code(text: Any) -> Raw:
    return Raw(f"<code>{esc(text)}</code>")


def pre(text: Any) -> Raw:
    return Raw(f"<pre>{esc(text)}</pre>")


def details(summary: str, *parts: Any) -> Raw:
    return Raw(f"<details><summary>{esc(summary)}</summary>{join(parts)}</details>")


def badge(text: str, colour: str) -> Raw:
    return Raw(f'<span class="v" style="background:{esc(colour)}">{esc(text)}</span>')


def bold(text: Any) -> Raw:
    return Raw(f"<b>{esc(text)}</b>")


# A string cell that starts like a number ("1.58 ± 0.02", "-3", ".5", or "–" for none) is right-aligned
# with the numbers; "... but not" is text.
_NUMERIC = re.compile(rf"^\s*(<b>)?({MISSING}|[-+−]?\.?\d)")


def _cell(value: Any, fmt: Callable[[Any], str]) -> str:
    if isinstance(value, Raw):
        text, num = value, bool(_NUMERIC.match(value))
    elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        text, num = esc(fmt(value)), True
    else:
        text = esc(value)
        num = bool(_NUMERIC.match(text))
    return f"<td class='num'>{text}</td>" if num else f"<td>{text}</td>"


def table(rows: Iterable[Sequence[Any] | str], columns: Sequence[Any], fmt: Callable[[Any], str] = fmt_num,
          *, title: str | None = None, note: str | None = None, cls: str | None = None) -> Raw:
    """An HTML table. Numbers (and None) are printed with `fmt` and right-aligned; other cells are escaped
    text, or Raw HTML. A row given as a plain string is a group heading spanning every column."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        if isinstance(row, str):
            body.append(f"<tr><th class='group' colspan='{len(columns)}'>{esc(row)}</th></tr>")
        else:
            body.append("<tr>" + "".join(_cell(c, fmt) for c in row) + "</tr>")
    caption = f"<h3>{esc(title)}</h3>" if title else ""
    foot = para(note, "muted") if note else ""
    attr = f" class={cls!r}" if cls else ""
    return Raw(f"{caption}<table{attr}><tr>{head}</tr>{''.join(body)}</table>{foot}")


NOT_DRAWN = "Not drawn: no finite values to plot."


def figure_html(src: str | None, caption: str, *, title: str | None = None, wide: bool = False,
                alt: str | None = None, empty: str = NOT_DRAWN) -> Raw:
    """A figure card: title, image (a data: URI) and caption. With src None the card keeps the title and
    caption and says why there is no plot (`empty`; by default: its data hold no finite value)."""
    kind = "card wide" if wide else "card"
    h = f"<h4>{esc(title)}</h4>" if title else ""
    if src is None:
        return Raw(f"<figure class='{kind} empty'>{h}<p class='muted'>{esc(empty)}</p>"
                   f"<figcaption>{esc(caption)}</figcaption></figure>")
    return Raw(f"<figure class='{kind}'>{h}<img alt='{esc(alt or title or caption)}' src='{esc(src)}'>"
               f"<figcaption>{esc(caption)}</figcaption></figure>")


def grid(cards: Iterable[Any]) -> Raw:
    """Figure cards side by side, two per row on a wide screen (wide cards take a whole row)."""
    return Raw(f"<div class='grid'>{join(cards)}</div>")
