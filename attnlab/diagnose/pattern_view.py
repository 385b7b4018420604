"""The interactive notebook view of an `AttentionPattern`: one self-contained HTML fragment.

Everything travels inside the fragment (the weights as inline JSON, an inline script and style), so it
works offline, in a saved notebook and in a sandboxed output frame; nothing is fetched. What it shows:

- a large heatmap of the chosen head (query rows, key columns) with the tokens on both axes;
- a head selector ("mean over heads" plus every head of the layer);
- hover: the query token, the key token and the weight, in a line under the heatmap;
- every head of the layer at once as small multiples; a click on one selects it above.

Each fragment has its own id, so several views in one notebook do not interfere. Its state is mirrored in
data attributes (`data-ready`, `data-head`, `data-hover`) so a headless browser test can read it.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence

from torch import Tensor

# Significant digits of the weights shipped to the page: plenty for colour and for a hover readout, and it
# keeps a 9-head, 64-token layer near 200 kB.
DIGITS = 4

_STYLE = """
#{id} {{font-family: system-ui, sans-serif; font-size: 13px; color: #222}}
#{id} .ap-controls {{margin: 6px 0}}
#{id} .ap-tip {{min-height: 1.4em; font-family: ui-monospace, monospace; margin: 4px 0}}
#{id} .ap-grid {{display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px}}
#{id} .ap-cell {{margin: 0; cursor: pointer; text-align: center; border: 2px solid transparent}}
#{id} .ap-cell.ap-on {{border-color: #d62728}}
#{id} .ap-cell figcaption {{font-size: 11px}}
#{id} table {{border-collapse: collapse}} #{id} td {{padding: 1px 8px}}
"""

# Plain ES5, no libraries. `viridis` is a 5-stop approximation, enough to read a heatmap.
_SCRIPT = r"""
(function () {
  var root = document.getElementById("%(id)s");
  var data = JSON.parse(root.querySelector(".ap-data").textContent);
  var n = data.tokens.length, select = root.querySelector(".ap-head"), main = root.querySelector(".ap-main");
  var tip = root.querySelector(".ap-tip");
  var stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function colour(x) {
    x = Math.max(0, Math.min(1, x)) * (stops.length - 1);
    var i = Math.min(Math.floor(x), stops.length - 2), f = x - i, a = stops[i], b = stops[i + 1];
    var rgb = [0, 1, 2].map(function (c) { return Math.round(a[c] + f * (b[c] - a[c])); });
    return "rgb(" + rgb.join(",") + ")";
  }
  function weights(head) { return head < 0 ? data.mean : data.heads[head]; }
  function label(t) {
    t = t.replace(/\n/g, "\\n").replace(/\t/g, "\\t");
    if (!t.trim()) t = JSON.stringify(t);
    return t.length > 12 ? t.slice(0, 11) + "\u2026" : t;
  }
  function draw(canvas, w, cell, margin) {
    var ctx = canvas.getContext("2d"), max = 0, i, j;
    canvas.width = margin + n * cell; canvas.height = margin + n * cell;
    for (i = 0; i < n; i++) for (j = 0; j < n; j++) max = Math.max(max, w[i][j]);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (i = 0; i < n; i++) for (j = 0; j < n; j++) {
      ctx.fillStyle = colour(max > 0 ? w[i][j] / max : 0);
      ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell);
    }
    if (!margin) return;
    ctx.fillStyle = "#222"; ctx.font = Math.min(12, cell - 1) + "px sans-serif"; ctx.textBaseline = "middle";
    for (i = 0; i < n; i++) {
      ctx.textAlign = "right"; ctx.fillText(label(data.tokens[i]), margin - 4, margin + (i + 0.5) * cell);
      ctx.save(); ctx.translate(margin + (i + 0.5) * cell, margin - 4); ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left"; ctx.fillText(label(data.tokens[i]), 0, 0); ctx.restore();
    }
  }
  var cell = Math.max(6, Math.min(22, Math.floor(560 / n))), margin = n <= data.labelled ? 90 : 0;
  var head = data.head;
  function show(h) {
    head = h; select.value = String(h); root.setAttribute("data-head", String(h));
    draw(main, weights(h), cell, margin);
    var cells = root.querySelectorAll(".ap-cell");
    for (var c = 0; c < cells.length; c++)
      cells[c].className = "ap-cell" + (Number(cells[c].getAttribute("data-head")) === h ? " ap-on" : "");
  }
  select.addEventListener("change", function () { show(Number(select.value)); });
  main.addEventListener("mousemove", function (e) {
    var r = main.getBoundingClientRect(), sx = main.width / r.width, sy = main.height / r.height;
    var j = Math.floor(((e.clientX - r.left) * sx - margin) / cell);
    var i = Math.floor(((e.clientY - r.top) * sy - margin) / cell);
    if (i < 0 || j < 0 || i >= n || j >= n) { clear(); return; }
    var text = "query " + i + " " + JSON.stringify(data.tokens[i]) + " \u2192 key " + j + " " +
      JSON.stringify(data.tokens[j]) + ": " + Number(weights(head)[i][j]).toPrecision(4);
    tip.textContent = text; root.setAttribute("data-hover", i + "," + j);
  });
  function clear() { tip.textContent = ""; root.setAttribute("data-hover", ""); }
  main.addEventListener("mouseleave", clear);
  var grid = root.querySelectorAll(".ap-cell");
  for (var g = 0; g < grid.length; g++) (function (fig) {
    var h = Number(fig.getAttribute("data-head"));
    draw(fig.querySelector("canvas"), weights(h), Math.max(2, Math.floor(120 / n)), 0);
    fig.addEventListener("click", function () { show(h); });
  })(grid[g]);
  show(head);
  root.setAttribute("data-ready", "1");
})();
"""


def _rounded(rows: list) -> list:
    if rows and isinstance(rows[0], list):
        return [_rounded(r) for r in rows]
    return [float(f"{x:.{DIGITS}g}") for x in rows]


def render(*, title: str, summary_rows: str, tokens: Sequence[str], weights: Tensor, heads: Tensor | None,
           head: int | None, labelled: int) -> str:
    """The fragment for `weights` (q, k) (the head or mean shown first) and, when given, every head of the
    layer `heads` (H, q, k); `head` is the index shown first (None: the mean)."""
    vid = "ap-" + uuid.uuid4().hex[:12]
    all_heads = [] if heads is None else _rounded(heads.tolist())
    mean = _rounded((heads.mean(0) if heads is not None else weights).tolist())
    first = -1 if head is None or heads is None else int(head)
    payload = {"tokens": list(tokens), "heads": all_heads, "mean": mean, "head": first, "labelled": labelled}
    if heads is None:  # one matrix only: it is what "mean" shows
        payload["mean"] = _rounded(weights.tolist())
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")  # cannot close the script tag
    first_label = "mean over heads" if heads is not None else html.escape(title)
    options = [f"<option value='-1'>{first_label}</option>"]
    options += [f"<option value='{h}'>head {h}</option>" for h in range(len(all_heads))]
    cells = "".join(f"<figure class='ap-cell' data-head='{h}'><canvas></canvas><figcaption>head {h}"
                    f"</figcaption></figure>" for h in range(len(all_heads)))
    grid = f"<div class='ap-grid' aria-label='every head of the layer'>{cells}</div>" if cells else ""
    return (f"<div class='attnlab-pattern' id='{vid}' data-ready='0'>"
            f"<style>{_STYLE.format(id=vid)}</style>"
            f"<div><b>{html.escape(title)}</b> ({len(tokens)} tokens)</div><table>{summary_rows}</table>"
            f"<div class='ap-controls'><label>show <select class='ap-head'>{''.join(options)}</select>"
            f"</label>"
            f" &nbsp;hover a cell for its query, key and weight</div>"
            f"<canvas class='ap-main' aria-label='attention heatmap: query rows, key columns'></canvas>"
            f"<div class='ap-tip' aria-live='polite'></div>{grid}"
            f"<script type='application/json' class='ap-data'>{blob}</script>"
            f"<script>{_SCRIPT % {'id': vid}}</script></div>")


__all__ = ["render"]
