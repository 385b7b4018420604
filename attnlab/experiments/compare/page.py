"""compare.html: the question, the computed answer, every arm before -> after with intervals, per-layer
plots, the fine-tuning curves, the claims, provenance and the command that reproduces the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnlab.experiments.compare.analysis import ANSWER_LEAD, LABELS
from attnlab.experiments.compare.config import CONTROL

TABLE_METRICS = ("ppl", "token0_attention", "sink_rate", "null_sink_mass", "kurtosis_max",
                 "max_abs_activation", "w8a8_delta_ppl", "a8_delta_ppl", "w8a8_token_delta_ppl",
                 "a8_token_delta_ppl")
VERDICT_COLOURS = {"held": "green", "did not hold": "red", "inconclusive": "grey"}
OFFBYONE_RESULTS = Path("runs") / "offbyone" / "results.json"


def _cell(iv: dict[str, Any] | None) -> str:
    from attnlab.present import fmt_interval

    if not iv:
        return "–"
    return fmt_interval(iv["value"], iv["lo"], iv["hi"])


def arm_table(doc: dict[str, Any]) -> Any:
    from attnlab.present import table

    arms = doc["arms"]
    rows = []
    for m in TABLE_METRICS:
        if not any(m in a["metrics"] for a in arms):
            continue
        rows.append([LABELS[m]] + [_cell(a["metrics"].get(m)) for a in arms])
    rows.append(["perplexity at retrofit (before fine-tuning)"]
                + [_cell(a.get("ppl_at_retrofit")) for a in arms])
    methods = sorted({iv["method"] for a in arms for iv in a["metrics"].values()})
    note = ("Each cell: value [95% interval]. `pretrained` is the model before anything; every other column "
            "is after the same fine-tuning. Intervals: " + "; ".join(methods) + ".")
    return _scroll(table(rows, ["metric"] + [a["name"] for a in arms], title="Every arm, before -> after",
                         note=note))


def _scroll(html: Any) -> Any:
    """Wide tables (7 arms x intervals) scroll sideways instead of running off the page."""
    from attnlab.present import Raw

    return Raw(f"<div style='overflow-x:auto'>{html}</div>")


def diff_table(doc: dict[str, Any]) -> Any:
    from attnlab.present import Raw, bold, table

    diffs = doc.get("differences") or {}
    if not diffs:
        return ""
    metrics = sorted({m for per in diffs.values() for m in per}, key=list(TABLE_METRICS).index)
    rows = []
    for arm, per in diffs.items():
        row: list[Any] = [arm]
        for m in metrics:
            iv = per.get(m)
            text = _cell(iv)
            measured = iv is not None and (iv["lo"] > 0 or iv["hi"] < 0)
            row.append(bold(text) if measured else Raw(text))
        rows.append(row)
    return _scroll(table(rows, ["arm"] + [LABELS[m] for m in metrics],
                 title=f"Difference from the control ({CONTROL}, fine-tuned alike)",
                 note="Bold: the 95% interval excludes zero (paired over the same held-out windows)."))


def claims_table(doc: dict[str, Any]) -> Any:
    from attnlab.present import badge, table

    rows = []
    for c in doc["claims"]:
        iv = c.get("interval")
        ours = f"{c['effect']} = {_cell(iv)}" if iv else "not measured"
        why = f" ({c['reason']})" if c.get("reason") else ""
        rows.append([badge(c["verdict"], VERDICT_COLOURS.get(c["verdict"], "grey")), c["claim"],
                     f"{c['source']}: {c['paper']}", ours + why, c["test"]])
    return table(rows, ["verdict", "claim", "paper", "ours", "test"], title="Claims, with computed verdicts",
                 note="Verdict rule: the 95% interval of the effect wholly on the claimed side of the "
                      "threshold -> held; wholly on the other side -> did not hold; else inconclusive. "
                      "Equivalence claims: held when the interval lies inside the stated margins.")


def layer_figures(doc: dict[str, Any]) -> list[Any]:
    from attnlab.present import figure, figure_html, has_data, plot_layers, png_data_uri

    cards = []
    for key, logy in (("token0_layer", False), ("null_sink_mass_layer", False), ("kurtosis_layer", True),
                      ("max_abs_layer", True)):
        series = {a["name"]: (p["value"], p["lo"], p["hi"]) for a in doc["arms"]
                  if (p := a.get("per_layer", {}).get(key))}
        fig, ax = figure(6.0, 3.4)
        plot_layers(ax, series)
        ax.set_ylabel(LABELS[key])
        if logy:
            from attnlab.present import log_axis

            log_axis(ax, "y")
        if series:
            ax.legend(fontsize=7, ncol=2)
        src = png_data_uri(fig) if has_data(fig) else None
        cards.append(figure_html(src, f"{LABELS[key]} per layer, every arm (points: mean over held-out "
                                      f"windows; bars: 95% interval)", title=f"{LABELS[key]} by layer"))
    return cards


def curve_figure(doc: dict[str, Any]) -> Any:
    from attnlab.present import figure, figure_html, has_data, plot_series, png_data_uri

    series = {}
    for a in doc["arms"]:
        for seed, t in (a.get("train") or {}).items():
            if t["curve"]:
                xs = [p[0] + 1 for p in t["curve"]]
                ys = [p[1] for p in t["curve"]]
                series[f"{a['name']} (seed {seed})"] = (xs, ys, None, None)
    fig, ax = figure(6.0, 3.4)
    if series:
        plot_series(ax, series)
        ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("training loss (nats/token)")
    src = png_data_uri(fig) if has_data(fig) else None
    return figure_html(src, "Fine-tuning loss of every arm on the same token stream.", title="Fine-tuning")


def write_page(doc: dict[str, Any], out: Path) -> Path:
    from attnlab.io import atomic_write_text
    from attnlab.present import Raw, code, details, esc, grid, page, para, pre, section

    cfg = doc["config"]
    lead = [doc["question"],
            f"{doc['model']['name']}: {doc['model']['layers']} layers, {doc['model']['heads']} heads. "
            f"{cfg['steps']} fine-tuning steps of {cfg['batch_size']} x {cfg['context']} tokens "
            f"({cfg['trainable']} parameters trained), seed(s) {', '.join(map(str, cfg['seeds']))}, "
            f"{doc['windows']['n']} held-out windows of {doc['windows']['tokens'] - 1} predictions."]
    diverged = [f"{a['name']} (seed {s}): stopped at step {d['step']}: {d['cause']}"
                for a in doc["arms"] for s, d in (a.get("diverged") or {}).items()]
    answer = [para(doc["answer"])]
    if doc.get("answer_lines"):
        items = "".join(f"<li>{esc(line)}</li>" for line in doc["answer_lines"])
        answer = [para(ANSWER_LEAD), Raw(f"<ul>{items}</ul>")]
    if diverged:
        answer.append(para("Diverged: " + "; ".join(diverged)))
    sections = [section("The answer", *answer),
                section("Arms", arm_table(doc), diff_table(doc)),
                section("Claims", claims_table(doc)),
                section("Per layer", grid(layer_figures(doc))),
                section("Fine-tuning", grid([curve_figure(doc)])),
                section("Provenance",
                        para("Reproduce:"), code(doc["command"]),
                        para(f"Data: {doc['data']}"),
                        details("config, versions, timings",
                                pre(json.dumps({"config": cfg, "versions": doc["provenance"]["versions"],
                                                "timings": doc["timings"]}, indent=2))))]
    offbyone = out.parent / "offbyone" / "results.json" if out.name == "compare" else OFFBYONE_RESULTS
    if offbyone.is_file():
        sections.append(section("From scratch", para(
            f"The same question on small GPTs trained from scratch: {offbyone.parent / 'index.html'} "
            f"(`attnlab run offbyone`).")))
    html = page("attnlab compare: adding one to the denominator, on a real model", sections, lead=lead)
    return atomic_write_text(out / "compare.html", html)


__all__ = ["write_page"]
