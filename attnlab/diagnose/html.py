"""report.html: one self-contained page (inline CSS, plots as inline base64 PNG, no scripts, no external
resources), so it opens offline and can be mailed as one file. Every figure has a one-line caption that
says how to read it; one model gets its own section, several get an overlaid comparison first.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

from attnlab.diagnose import plots

# (summary key, label, how to read it)
SUMMARY_ROWS = (
    ("loss_nats", "loss on the passage (nats / token)", "next-token cross-entropy; perplexity = e^loss"),
    ("norm_growth_per_layer", "residual norm growth per block (fit)",
     "> 1: the stream grows geometrically with depth (Heimersheim & Turner 2023)"),
    ("norm_first_over_rest_last", "token-0 norm / other tokens, last block",
     ">> 1: position 0 carries massive activations (an attention sink)"),
    ("sink_rate", "sink rate",
     "share of heads putting > 0.3 of their attention on token 0 (Gu et al. 2024)"),
    ("uniformity_last", "uniformity ratio, last block",
     "Dong et al. 2021: near 0 = all tokens alike (rank collapse); may exceed 1 when token 0 "
     "dominates"),
    ("uniformity_excl_first_last", "same, without token 0", "the ratio of the ordinary tokens"),
    ("uniformity_last_no_skip", "same, skips removed",
     "outer skip paths removed (each MLP still reads x inside its block); Dong et al. predict a fall"),
    ("uniformity_last_pure_attention", "same, pure attention",
     "no skips and no MLPs: Dong et al.'s collapse"),
    ("kurtosis_max", "max kurtosis", "Gaussian = 3; hundreds = outlier features (Bondarenko et al. 2023)"),
    ("max_abs", "max |activation|", "Sun et al. 2024 call > 100 and > 1000x the median massive"),
    ("quant_w8a8_delta_ppl", "perplexity cost of int8 W8A8",
     "per-tensor int8 weights + activations, fake-quantized"),
    ("sensitivity_first_over_last", "sensitivity, first / last token",
     "how much more the final state feels token 0 than the latest token (Barbero et al. 2024)"),
    ("lipschitz_exponent", "Lipschitz growth exponent b",
     "local Lipschitz constant ~ n^b over the lengths measured (Castin et al. 2024)"),
)

# Two-panel (and wide) figures take a full row of the grid.
WIDE = (plots.ranks, plots.sink_compare, plots.outliers, plots.lipschitz, plots.massive_map)

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;
background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:22px 36px}
header h1{margin:0 0 6px 0;font-size:24px} header p{margin:2px 0;color:#c9d1e0;font-size:13px}
main{padding:12px 36px 40px 36px;max-width:1500px}
h2{margin:30px 0 6px 0;font-size:20px;border-bottom:2px solid #d9dee7;padding-bottom:4px}
h3{margin:18px 0 6px 0;font-size:15px;color:#384152}
.meta{font-size:13px;color:#555;margin:4px 0 12px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:12px 14px}
.card h4{margin:0 0 6px 0;font-size:14px}
.card img{max-width:100%;height:auto;display:block;margin:auto}
.card.wide{grid-column:1 / -1}
.cap{font-size:12.5px;color:#4a5466;margin:6px 0 0 0}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0 12px 0}
th,td{border:1px solid #dde2ea;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#eef1f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.read{color:#4a5466;font-size:12px;max-width:520px}
details{margin:14px 0;font-size:13px} summary{cursor:pointer;font-weight:600;color:#384152}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        a = abs(v)
        if a != 0 and (a >= 1e5 or a < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.3f}" if a < 100 else f"{v:,.1f}"
    return html.escape(str(v))


def _card(title: str, png: str, caption: str, wide: bool = False) -> str:
    return (f'<div class="card{" wide" if wide else ""}"><h4>{html.escape(title)}</h4>'
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
            f'<p class="cap">{html.escape(caption)}</p></div>')


def _safe(fn: Callable[..., str], *args: Any) -> str | None:
    """A figure, or None when the section lacks what it needs (the report is still written)."""
    try:
        return fn(*args)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None


def _cards(items: Sequence[tuple[str, Callable[..., str], tuple, str]]) -> str:
    out = []
    for title, fn, args, caption in items:
        png = _safe(fn, *args)
        if png is not None:
            out.append(_card(title, png, caption, wide=fn in WIDE))
    return '<div class="grid">' + "".join(out) + "</div>"


def _summary_table(sections: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(s['model']['name'])}</th>" for s in sections)
    rows = []
    for key, label, reading in SUMMARY_ROWS:
        vals = [s.get("summary", {}).get(key) for s in sections]
        if all(v is None for v in vals):
            continue
        cells = "".join(f'<td class="num">{_fmt(v)}</td>' for v in vals)
        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}"
                    f"<td class='read'>{html.escape(reading)}</td></tr>")
    return f"<table><tr><th>headline</th>{head}<th>how to read it</th></tr>{''.join(rows)}</table>"


def _quant_table(section: dict[str, Any]) -> str:
    q = section.get("quantization") or {}
    rows = []
    for mode, label in (("fp32", "full precision"), ("w8a8", "int8 weights + activations"),
                        ("w8", "int8 weights"), ("a8", "int8 activations")):
        if mode in q:
            r = q[mode]
            rows.append(f"<tr><td>{label}</td><td class='num'>{_fmt(r['loss'])}</td>"
                        f"<td class='num'>{_fmt(r['ppl'])}</td>"
                        f"<td class='num'>{_fmt(r.get('delta_loss'))}</td>"
                        f"<td class='num'>{_fmt(r.get('delta_ppl'))}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Quantization</h3><p class='meta'>" + html.escape(q.get("scheme", "")) + "</p><table><tr>"
            "<th>weights / activations</th><th>loss (nats)</th><th>perplexity</th><th>+ loss</th>"
            "<th>+ ppl</th></tr>" + "".join(rows) + "</table>")


def _massive_table(section: dict[str, Any]) -> str:
    rows = []
    for e in section["layers"]:
        m = e["outliers"]["massive"]
        t = m["top"][0]
        rows.append((m["ratio"] or 0.0, e["index"], t, m))
    rows.sort(key=lambda r: -r[0])
    body = "".join(f"<tr><td>{i}</td><td class='num'>{_fmt(t['value'])}</td>"
                   f"<td class='num'>{t['token']}</td>"
                   f"<td class='num'>{t['dim']}</td><td class='num'>{_fmt(m['median_abs'])}</td>"
                   f"<td class='num'>{_fmt(m['ratio'])}</td></tr>" for _, i, t, m in rows[:6])
    return ("<h3>Largest activations</h3><table><tr><th>block</th><th>value</th><th>token</th><th>dim</th>"
            "<th>median |h|</th><th>top / median</th></tr>" + body + "</table>")


def _timings_table(section: dict[str, Any]) -> str:
    t = section.get("timings_s") or {}
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{_fmt(v)}</td></tr>" for k, v in t.items())
    return ("<details><summary>Timings (seconds; capture_overhead is capture / forward)</summary><table>"
            + cells + "</table></details>")


def _model_section(s: dict[str, Any], single: bool) -> str:
    m = s["model"]
    name = html.escape(m["name"])
    info = (f"{m['kind']} model from {html.escape(str(m['source']))}: {m['n_layers']} blocks, "
            f"{m['n_heads']} heads ({m['n_kv_heads']} key/value), d = {m['d_model']}, "
            f"{m['n_params']:,} parameters; {s['tokens']['n']} tokens, loss {_fmt(s['loss']['nats'])} nats "
            f"(perplexity {_fmt(s['loss']['ppl'])}). The passage begins: "
            f"<i>{html.escape(repr(s['tokens'].get('first', ''))[1:-1])}</i> ...")
    one = [s]
    figures = [
        ("Residual-stream norm by depth", plots.norms, (one,),
         "Solid: mean norm of tokens 1..T; dashed: token 0. A straight rising line on this log axis is "
         "exponential growth."),
        ("Growth factor per block", plots.growth, (one,),
         "Each block's norm out / norm in; dotted: the fitted geometric rate. Above 1 the stream grows."),
        ("Token uniformity with ablations", plots.uniformity, (s,),
         "Dong et al.'s ratio (log axis): near 1 tokens differ, near 0 they collapse to one vector; the "
         "ablated curves show what skips and MLPs prevent."),
        ("Representational collapse probe", plots.collapse, (one,),
         "Distance between the final states of '1...1 0' and '1...1 1 0' relative to their size; falling "
         "toward 0 means the two inputs become indistinguishable."),
        ("Effective rank and cosine similarity", plots.ranks, (one,),
         "Left: how many directions the tokens 1..T span (Roy & Vetterli); right: their mean cosine, 1 = "
         "all alike."),
        ("Attention entropy (layer x head)", plots.heatmap,
         (s, "entropy_normalized", "entropy / log(keys seen)", 0.0, 1.0, "viridis"),
         "1 (bright) = a head spreads its attention evenly; 0 (dark) = it looks at one token."),
        ("Attention sinks (layer x head)", plots.heatmap,
         (s, "first_token", "mean attention on token 0", 0.0, 1.0, "magma"),
         "Bright heads send most of their attention to token 0; above 0.3 they count as sinks (Gu et al.)."),
        ("Dispersion: largest attention weight", plots.dispersion, (s,),
         "Mean max weight of a query against the keys it sees; following the dotted 1/n line means the "
         "head cannot stay sharp as context grows (Velickovic et al.)."),
        ("Over-squashing: sensitivity by position", plots.sensitivity, (one,),
         "How strongly the last token's final state depends on each input token (share of the total, log "
         "axis); dips are positions the model barely hears."),
        ("Outliers by depth", plots.outliers, (one,),
         "Left: max |h| (solid) vs median |h| (dotted); right: kurtosis, mean (solid) and max (dashed) over "
         "tokens; Gaussian = 3."),
        ("Where the largest activations are", plots.massive_map, (s,),
         "Top activations of each layer by feature dimension; ringed dots sit on token 0. A row of big "
         "dots = a massive-activation dimension."),
        ("Local Lipschitz constants", plots.lipschitz, (one,),
         "Left: spectral norm of each block's Jacobian at this input; right: the whole model's against "
         "length, with its power-law fit."),
    ]
    title = "" if single else f"<h2>{name}</h2>"
    return (title + f"<p class='meta'>{info}</p>" + _cards(figures) + _quant_table(s) + _massive_table(s)
            + _timings_table(s))


def _comparison(sections: Sequence[dict[str, Any]]) -> str:
    figures = [
        ("Residual-stream norm by depth", plots.norms, (sections,),
         "One colour per model; solid = tokens 1..T, dashed = token 0 (log axis)."),
        ("Token uniformity by depth", plots.uniformity_compare, (sections,),
         "Solid: each model; dashed: its pure-attention ablation. Lower = closer to rank collapse."),
        ("Attention sinks by layer", plots.sink_compare, (sections,),
         "Left: mean attention on token 0; right: share of heads above 0.3 (sinks)."),
        ("Outliers by depth", plots.outliers, (sections,),
         "Max |h| and kurtosis per layer; lower curves quantize better."),
        ("Over-squashing", plots.sensitivity, (sections,),
         "Sensitivity of the last state to each input position, positions scaled to [0, 1]."),
        ("Representational collapse", plots.collapse, (sections,),
         "Relative distance of '1^n 0' and '1^(n+1) 0'; the model whose curve stays higher counts better."),
        ("Local Lipschitz constants", plots.lipschitz, (sections,),
         "Per block (left) and for the whole model against length (right)."),
        ("Effective rank and cosine", plots.ranks, (sections,),
         "Directions spanned by tokens 1..T and their mean cosine."),
    ]
    return "<h2>Side by side</h2>" + _cards(figures)


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a report dict (as run_report returns it)."""
    sections = report["models"]
    names = ", ".join(s["model"]["name"] for s in sections)
    text = report.get("text", {})
    prov = report.get("provenance", {})
    versions = prov.get("versions", {})
    sub = (f"Text: {html.escape(str(text.get('source')))} from character {text.get('offset')}, "
           f"sha256 {str(text.get('sha256', ''))[:12]}; tokens: "
           + ", ".join(f"{html.escape(s['model']['name'])} {s['tokens']['n']}" for s in sections))
    ver = (f"attnlab {html.escape(str(versions.get('attnlab')))}, "
           f"torch {html.escape(str(versions.get('torch')))}, "
           f"transformers {html.escape(str(versions.get('transformers')))}; created "
           f"{html.escape(str(prov.get('created')))}; "
           f"schema {html.escape(str(report.get('schema_version')))}; "
           f"total {_fmt(report.get('timings_s', {}).get('total'))} s")
    parts = [f"<h2>Summary</h2>{_summary_table(sections)}"]
    single = len(sections) == 1
    if not single:
        parts.append(_comparison(sections))
    parts.extend(_model_section(s, single) for s in sections)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>attnlab report: {html.escape(names)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>attnlab report: {html.escape(names)}</h1><p>{sub}</p><p>{ver}</p></header>"
            f"<main>{''.join(parts)}</main></body></html>\n")
