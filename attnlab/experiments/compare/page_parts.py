"""The two parts of compare.html: the computed sentences, and each part's tables, plots and claims."""

from __future__ import annotations

from typing import Any

from attnlab.experiments.compare.page import cell, claims_table, scroll
from attnlab.experiments.verdicts import NO_VERDICT
from attnlab.present.catalogue import label, short_label


def _fmt(x: Any) -> str:
    from attnlab.present import fmt_num

    return fmt_num(x)


def _verdict(c: dict[str, Any], smoke: bool) -> str:
    if smoke:
        return "smoke: no verdict"
    return c["verdict"] if c["verdict"] != NO_VERDICT else c["result"].get("reason", NO_VERDICT)


def sentences(doc: dict[str, Any]) -> list[str]:
    """One computed sentence for part 1, one lead and one per arm for part 2 (nothing typed by hand)."""
    smoke = bool(doc.get("smoke"))
    out = []
    if "scratch" in doc:
        out.append(scratch_sentence(doc, smoke))
    if "retrofit" in doc:
        r = doc["retrofit"]
        out.append(f"Retrofit ({r['model']['name']}, {len(r['seeds'])} seed(s), training variance "
                   f"{r['training_variance']}): effects against the softmax control fine-tuned alike; "
                   f"'the swap alone' is the arm right after the swap, before any training.")
        out += r.get("answer_lines", [])
    return out


def scratch_sentence(doc: dict[str, Any], smoke: bool) -> str:
    s = doc["scratch"]
    prem = s["premise"]
    n = len(prem["values"])
    ctrl = next((a for a in s["arms"] if a["name"] == s["control"]), None)
    sink = (ctrl or {}).get("metrics", {}).get("first_token_dormant")
    head = (f"From scratch (Bigram-Backcopy, {n} seeds): the softmax control "
            f"{'grew' if prem['verdict'] == 'held' else 'did not grow'} a first-token sink at dormant "
            f"queries "
            f"({prem['count']} of {n} seeds above {_fmt(prem['threshold'])}; mean {cell(sink)})")
    if prem["verdict"] != "held":
        return head + ", so part 1 cannot test whether a variant removes it (not testable)."
    said = []
    for c in doc["claims"]:
        if c.get("part") != "scratch" or not c.get("primary") or c["arm"] == s["control"]:
            continue
        iv = c["result"].get("interval")
        ivs = f"[{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv else "(not measured)"
        arm = next((a for a in s["arms"] if a["name"] == c["arm"]), {})
        if c["metric"] == "first_token_dormant":
            said.append(f"{c['arm']} {cell(arm.get('metrics', {}).get('first_token_dormant'))} (difference "
                        f"{_fmt(c['result']['value'])} {ivs}: {_verdict(c, smoke)})")
        else:
            said.append(f"{c['arm']}'s task loss within ±{_fmt(c['threshold'][1])} nats of the control: "
                        f"{_verdict(c, smoke)} (difference {_fmt(c['result']['value'])} {ivs})")
    return head + "; first-token attention at dormant queries with " + "; ".join(said) + "."


def diverged_note(arms: list[dict[str, Any]]) -> list[Any]:
    """One line naming every (arm, seed) whose training went non-finite: its row has no numbers."""
    from attnlab.present import para

    gone = [f"{a['name']} (seed {seed}) stopped at step {d['step']}: {d['cause']}"
            for a in arms for seed, d in (a.get("diverged") or {}).items()]
    return [para("Diverged, left out of every number: " + "; ".join(gone) + ".")] if gone else []


# ------------------------------------------------------------------------------------------ part 1
SCRATCH_TABLE = ("first_token_dormant", "first_token_active", "null_sink_mass", "clipped_mass", "resid_peak",
                 "value_drain", "massive_tok0", "massive_rest", "kurtosis_token", "int8_damage", "loss",
                 "loss_excess", "backcopy_acc")


def scratch_sections(doc: dict[str, Any], smoke: bool) -> list[Any]:
    from attnlab.present import para, section, table

    s = doc["scratch"]
    arms = s["arms"]
    c = s["config"]
    intro = para(f"Identical GPTs ({c['n_layers']} layer(s), {c['n_heads']} head(s), d={c['d_model']}) "
                 f"trained from the same initial weights on the same batches ({c['steps']} steps of "
                 f"{c['batch_size']} x "
                 f"{c['length']} tokens, lr {c['lr']}), differing only in attention; measured on "
                 f"{c['eval_sequences']} held-out sequences. Task: vocabulary {s['task']['vocab']}, triggers "
                 f"{s['task']['triggers']} (the most frequent tokens), chain Dirichlet({s['task']['alpha']}) "
                 f"fixed across seeds. Dormant queries: non-trigger tokens (the next token follows the "
                 f"chain, "
                 f"attention has nothing to do); active: triggers (the next token copies the one before).")
    rows = [[label(k)] + [cell(a["metrics"].get(k)) for a in arms] for k in SCRATCH_TABLE]
    metrics = scroll(table(rows, ["metric"] + [a["name"] for a in arms], title="Every arm (mean over seeds)",
                           note="value [95% interval]: a t interval over seeds of each seed's mean over the "
                                "held-out sequences. Weight on no key is exactly 0 where rows sum to 1."))
    diffs = [[a["name"]] + [cell(a.get("vs_control", {}).get(k)) for k in SCRATCH_TABLE[:-2]]
             for a in arms if "vs_control" in a]
    diff_t = scroll(table(diffs, ["arm"] + [label(k) for k in SCRATCH_TABLE[:-2]],
                          title=f"Difference from the control ({s['control']}), paired by seed"))
    figures = [head_maps(s), peak_figure(s), sink_curve_figure(s)]
    from attnlab.present import grid

    return [section("Part 1: from scratch, where the sink is born", intro, *diverged_note(arms), metrics,
                    diff_t, grid(figures),
                    claims_table([x for x in doc["claims"] if x.get("part") == "scratch"],
                                 "Part 1 claims", smoke))]


def head_maps(s: dict[str, Any]) -> Any:
    """Per-(layer, head) first-token attention at dormant queries, one small heatmap per arm."""
    from attnlab.present import colorbar, figure, figure_html, has_data, png_data_uri

    arms = [a for a in s["arms"] if a.get("heads_dormant")]
    if not arms:
        return figure_html(None, "first-token attention per head")
    fig, axes = figure(1.5 * len(arms) + 0.8, 2.0, ncols=len(arms))
    import numpy as np

    im = None
    for ax, a in zip(np.atleast_1d(axes), arms):
        im = ax.imshow(np.asarray(a["heads_dormant"], dtype=float), vmin=0, vmax=1, cmap="viridis",
                       aspect="auto")
        ax.set_title(a["name"], fontsize=7)
        ax.set_xlabel("head", fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
        ax.set_xticks(range(len(a["heads_dormant"][0])))
        ax.set_yticks(range(len(a["heads_dormant"])))
    if im is not None:
        colorbar(fig, im, list(np.atleast_1d(axes)))
    src = png_data_uri(fig) if has_data(fig) else None
    return figure_html(src, "Attention on the first token at dormant queries, per layer and head (mean over "
                            "seeds): the sink is a bright cell.", title="Where the sink sits", wide=True)


def peak_figure(s: dict[str, Any]) -> Any:
    from attnlab.present import figure, figure_html, has_data, plot_layers, png_data_uri

    arms = [a for a in s["arms"] if a.get("resid_peak_layer")]
    fig, ax = figure(5.0, 3.0)
    if arms and len(arms[0]["resid_peak_layer"]) == 1:  # one layer: one point per arm
        from attnlab.present import plot_points

        plot_points(ax, [a["name"] for a in arms], [a["resid_peak_layer"][0] for a in arms])
        ax.set_xlabel("arm (layer 0)")
    else:
        plot_layers(ax, {a["name"]: (a["resid_peak_layer"], None, None) for a in arms})
        ax.legend(fontsize=6, ncol=2)
    ax.set_ylabel(short_label("resid_peak_layer"))
    src = png_data_uri(fig) if has_data(fig) else None
    return figure_html(src, "Residual-state peak on the first token per layer (mean over seeds and "
                            "sequences).",
                       title="Residual peak")


def sink_curve_figure(s: dict[str, Any]) -> Any:
    """First-token attention at dormant queries along training, mean over seeds with the seeds' range."""
    from attnlab.present import figure, figure_html, has_data, plot_series, png_data_uri

    series = {}
    for a in s["arms"]:
        curves = [v for v in (a.get("sink_curve") or {}).values() if v]
        if not curves:
            continue
        steps = [p[0] for p in curves[0]]
        cols = [[c[i][1] for c in curves if i < len(c)] for i in range(len(steps))]
        series[a["name"]] = (steps, [sum(v) / len(v) for v in cols], [min(v) for v in cols],
                             [max(v) for v in cols])
    fig, ax = figure(5.0, 3.0)
    plot_series(ax, series, markers=False)
    ax.set_xlabel("training step")
    ax.set_ylabel(short_label("first_token_dormant"))
    ax.legend(fontsize=6, ncol=2)
    src = png_data_uri(fig) if has_data(fig) else None
    return figure_html(src, "When the sink appears: the largest head's first-token attention at dormant "
                            "queries of 32 held-out sequences during training (mean over seeds; bars: their "
                            "range).", title="The sink's training curve")


# ------------------------------------------------------------------------------------------ part 2
def retrofit_sections(doc: dict[str, Any], smoke: bool) -> list[Any]:
    from attnlab.experiments.compare.analysis import EFFECT_METRICS, TABLE_METRICS
    from attnlab.present import grid, para, section, table

    r = doc["retrofit"]
    cfg = doc["config"]
    intro = para(f"{r['model']['name']} ({r['model']['layers']} layers, {r['model']['heads']} heads"
                 f"{'; ' + r['model']['note'] if r['model'].get('note') else ''}), each arm retrofitted with "
                 f"attnlab.retrofit and fine-tuned alike ({cfg['steps']} steps of {cfg['batch_size']} x "
                 f"{cfg['context']} tokens, {cfg['trainable']} parameters), seeds {r['seeds']}; "
                 f"{r['windows']['n']} held-out windows of {r['windows']['tokens'] - 1} predictions. Gated "
                 f"arms use a per-head gate 2·sigmoid(x·w + b), exactly 1 at the swap so the retrofit starts "
                 f"from the pretrained function (Qiu et al.'s gate is sigmoid, range 0-1; this one can also "
                 f"amplify, up to 2). Part 1's gated arm uses a sigmoid gate.")
    arms = r["arms"]
    cols, rows = [], []
    for a in arms:
        cols.append(a["name"])
        if a.get("metrics_step0") is not None and a["name"] != "pretrained":
            cols.append(f"{a['name']} at step 0")
    for m in TABLE_METRICS:
        row = [label(m)]
        for a in arms:
            row.append(cell(a["metrics"].get(m)))
            if a.get("metrics_step0") is not None and a["name"] != "pretrained":
                row.append(cell(a["metrics_step0"].get(m)))
        rows.append(row)
    arm_t = scroll(table(rows, ["metric"] + cols, title="Every arm after fine-tuning, and at step 0",
                         note="'at step 0': swapped, not trained (arms that coincide there share one "
                              "measurement). Intervals: t over seeds with >= 2 seeds, else a bootstrap over "
                              "windows (training variance then unmeasured)."))
    erows = []
    for arm, kinds in r["effects"].items():
        for kind in ("swap", "learned", "total"):
            erows.append([f"{arm}: {kind}"] + [cell(kinds.get(kind, {}).get(m)) for m in EFFECT_METRICS])
    eff_t = scroll(table(erows, ["effect"] + [label(m) + (" (ratio)" if m == "ppl" else "")
                                              for m in EFFECT_METRICS],
                         title="What the swap did, what training did, and the total",
                         note="swap = arm at step 0 - pretrained; learned = trained arm - its step 0; "
                              "total = trained arm - trained control (ratios for perplexity)."))
    from attnlab.experiments.compare.retrofit_figures import curve_figure, layer_figures

    return [section("Part 2: the retrofit (a pretrained model, cheaply repaired?)", intro,
                    *diverged_note(arms), arm_t, eff_t,
                    claims_table([x for x in doc["claims"] if x.get("part") == "retrofit"], "Part 2 claims",
                                 smoke),
                    grid([*layer_figures(r), curve_figure(r)]))]


__all__ = ["retrofit_sections", "scratch_sections", "sentences"]
