"""report.html: one self-contained page (inline CSS, plots as inline base64 PNG, no scripts, no external
resources), so it opens offline and can be mailed as one file. Every figure has a one-line caption that
says how to read it; one model gets its own section, several get an overlaid comparison first. The page
style, tables and number formats are `attnlab.present`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from attnlab.diagnose import plots
from attnlab.present import Raw, details, esc, figure_html, fmt_num, grid, page, para, section, table
from attnlab.present.catalogue import label, metric
from attnlab.present.plots import has_data, png_data_uri

# The summary's headline keys, in table order; each row's label and reading are the catalogue's
# (attnlab.present.catalogue), the same words every other page uses for the key.
SUMMARY_ROWS = ("loss_nats", "norm_growth_per_layer", "norm_first_over_rest_last", "sink_rate",
                "null_sink_mass", "uniformity_last", "uniformity_excl_first_last", "uniformity_last_no_skip",
                "uniformity_last_pure_attention", "kurtosis_max", "max_abs", "quant_w8a8_delta_ppl",
                "sensitivity_first_over_last", "lipschitz_exponent")

# The report shows four significant digits (a loss of 3.457 nats, not 3.46).
num = partial(fmt_num, digits=4)
WIDE_INCHES = 8.0  # a figure at least this wide (two panels, the activation map) takes a whole grid row

Sections = Sequence[dict[str, Any]]
Figure = tuple[str, Callable[[Sections], Any], str]  # (title, draw(sections) -> figure, caption)


def _first(fn: Callable[..., Any], *args: Any) -> Callable[[Sections], Any]:
    """A figure of one model's section (the first of `sections`), with the further arguments given."""
    return lambda sections: fn(sections[0], *args)


def _card(title: str, draw: Callable[[Sections], Any], caption: str, sections: Sections) -> Raw:
    """The figure inlined as PNG, or a note when the report lacks its data or the data hold no finite value
    (the rest of the report is still written)."""
    try:
        fig = draw(sections)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return figure_html(None, caption, title=title, empty="Not drawn: report.json lacks the data for this "
                                                             "figure.")
    wide = fig.get_figwidth() >= WIDE_INCHES
    return figure_html(png_data_uri(fig) if has_data(fig) else None, caption, title=title, wide=wide)


def _cards(figures: Sequence[Figure], sections: Sections) -> Raw:
    return grid(_card(title, draw, caption, sections) for title, draw, caption in figures)


# Per head, the numbers the summary's entropy_layer and first_token_layer average over heads.
_ENTROPY_MAP = _first(plots.heatmap, "entropy_normalized", label("entropy_layer"), 0.0, 1.0, "viridis")
_SINK_MAP = _first(plots.heatmap, "first_token", label("first_token_heads"), 0.0, 1.0, "magma")

# One model's figures, in page order.
MODEL_FIGURES: tuple[Figure, ...] = (
    ("Residual-stream norm by depth", plots.norms,
     "Solid: mean norm of tokens 1..T; dashed: token 0. A straight rising line on this log axis is "
     "exponential growth."),
    ("Growth factor per block", plots.growth,
     "Each block's norm out / norm in; dotted: the fitted geometric rate. Above 1 the stream grows."),
    ("Token uniformity with ablations", _first(plots.uniformity),
     "Dong et al.'s ratio (log axis): near 1 tokens differ, near 0 they collapse to one vector; the "
     "ablated curves show what skips and MLPs prevent."),
    ("Representational collapse probe", plots.collapse,
     "Distance between the final states of '1...1 0' and '1...1 1 0' relative to their size; falling "
     "toward 0 means the two inputs become indistinguishable."),
    ("Effective rank and cosine similarity", plots.ranks,
     "Left: how many directions the tokens 1..T span (Roy & Vetterli); right: their mean cosine, 1 = "
     "all alike."),
    ("Attention entropy (layer x head)", _ENTROPY_MAP,
     "1 (bright) = a head spreads its attention evenly; 0 (dark) = it looks at one token."),
    ("Attention sinks (layer x head)", _SINK_MAP,
     "Bright heads send most of their attention to token 0; above 0.3 they count as sinks (Gu et al.)."),
    ("Dispersion: largest attention weight", _first(plots.dispersion),
     "Mean max weight of a query against the keys it sees; following the dotted 1/n line means the "
     "head cannot stay sharp as context grows (Velickovic et al.)."),
    ("Over-squashing: sensitivity by position", plots.sensitivity,
     "How strongly the last token's final state depends on each input token (share of the total, log "
     "axis); dips are positions the model barely hears."),
    ("Outliers by depth", plots.outliers,
     "Left: max |h| (solid) vs median |h| (dotted); right: kurtosis, mean (solid) and max (dashed) over "
     "tokens; Gaussian = 3."),
    ("Where the largest activations are", _first(plots.massive_map),
     "Top activations of each layer by feature dimension; ringed dots sit on token 0. A row of big "
     "dots = a massive-activation dimension."),
    ("Local Lipschitz constants", plots.lipschitz,
     "Left: spectral norm of each block's Jacobian at this input; right: the whole model's against "
     "length, with its power-law fit."),
)

# Several models overlaid, before their own sections.
COMPARISON_FIGURES: tuple[Figure, ...] = (
    ("Residual-stream norm by depth", plots.norms,
     "One colour per model; solid = tokens 1..T, dashed = token 0 (log axis)."),
    ("Token uniformity by depth", plots.uniformity_compare,
     "Solid: each model; dashed: its pure-attention ablation. Lower = closer to rank collapse."),
    ("Attention sinks by layer", plots.sink_compare,
     "Left: mean attention on token 0; right: share of heads above 0.3 (sinks)."),
    ("Outliers by depth", plots.outliers,
     "Max |h| and kurtosis per layer; lower curves quantize better."),
    ("Over-squashing", plots.sensitivity,
     "Sensitivity of the last state to each input position, positions scaled to [0, 1]."),
    ("Representational collapse", plots.collapse,
     "Relative distance of '1^n 0' and '1^(n+1) 0'; the model whose curve stays higher counts better."),
    ("Local Lipschitz constants", plots.lipschitz,
     "Per block (left) and for the whole model against length (right)."),
    ("Effective rank and cosine", plots.ranks,
     "Directions spanned by tokens 1..T and their mean cosine."),
)


def _summary_table(sections: Sequence[dict[str, Any]]) -> Raw:
    rows = []
    for key in SUMMARY_ROWS:
        vals = [s.get("summary", {}).get(key) for s in sections]
        if any(v is not None for v in vals):
            reading = metric(key).reading
            rows.append([label(key), *vals, Raw(f"<span class='read'>{esc(reading)}</span>")])
    return table(rows, ["headline", *(s["model"]["name"] for s in sections), "how to read it"], num)


QUANT_MODES = (("fp32", "full precision"), ("w8a8", "int8 weights + activations"), ("w8", "int8 weights"),
               ("a8", "int8 activations"))


def _quant_table(section_: dict[str, Any]) -> Raw:
    q = section_.get("quantization") or {}
    rows = [[name, q[mode]["loss"], q[mode]["ppl"], q[mode].get("delta_loss"), q[mode].get("delta_ppl")]
            for mode, name in QUANT_MODES if mode in q]
    if not rows:
        return Raw("")
    columns = ["weights / activations", "loss (nats)", "perplexity", "+ loss", "+ ppl"]
    return section("Quantization", para(q.get("scheme", ""), "meta"), table(rows, columns, num), level=3)


def _massive_table(section_: dict[str, Any]) -> Raw:
    layers = sorted(section_["layers"], key=lambda e: -(e["outliers"]["massive"]["ratio"] or 0.0))
    rows = []
    for e in layers[:6]:
        m = e["outliers"]["massive"]
        t = m["top"][0]
        rows.append([e["index"], t["value"], t["token"], t["dim"], m["median_abs"], m["ratio"]])
    columns = ["block", "value", "token", "dim", "median |h|", "top / median"]
    return section("Largest activations", table(rows, columns, num), level=3)


def _timings_table(section_: dict[str, Any]) -> Raw:
    t = section_.get("timings_s") or {}
    return details("Timings (seconds; capture_overhead is capture / forward)",
                   table(t.items(), ["part", "seconds"], num))


def _model_section(s: dict[str, Any], single: bool) -> Raw:
    m = s["model"]
    info = (f"{m['kind']} model from {m['source']}: {m['n_layers']} blocks, "
            f"{m['n_heads']} heads ({m['n_kv_heads']} key/value), d = {m['d_model']}, "
            f"{m['n_params']:,} parameters; {s['tokens']['n']} tokens, loss {num(s['loss']['nats'])} nats "
            f"(perplexity {num(s['loss']['ppl'])}). The passage begins: ")
    passage = Raw(f"{esc(info)}<i>{esc(repr(s['tokens'].get('first', ''))[1:-1])}</i> ...")
    return section(None if single else m["name"], para(passage, "meta"), _cards(MODEL_FIGURES, [s]),
                   _quant_table(s),
                   _massive_table(s), _timings_table(s))


def _comparison(sections: Sequence[dict[str, Any]]) -> Raw:
    return section("Side by side", _cards(COMPARISON_FIGURES, sections))


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a report dict (as run_report returns it)."""
    sections = report["models"]
    names = ", ".join(s["model"]["name"] for s in sections)
    text = report.get("text", {})
    prov = report.get("provenance", {})
    versions = prov.get("versions", {})
    sub = (f"Text: {text.get('source')} from character {text.get('offset')}, "
           f"sha256 {str(text.get('sha256', ''))[:12]}; tokens: "
           + ", ".join(f"{s['model']['name']} {s['tokens']['n']}" for s in sections))
    ver = (f"attnlab {versions.get('attnlab')}, torch {versions.get('torch')}, "
           f"transformers {versions.get('transformers')}; created {prov.get('created')}; "
           f"schema {report.get('schema_version')}; total {num(report.get('timings_s', {}).get('total'))} s")
    parts = [section("Summary", _summary_table(sections))]
    single = len(sections) == 1
    if not single:
        parts.append(_comparison(sections))
    parts.extend(_model_section(s, single) for s in sections)
    return page(f"attnlab report: {names}", parts, lead=[sub, ver])
