"""Part 2's plots: per-layer profiles of every arm, and the fine-tuning curves."""

from __future__ import annotations

from typing import Any

from attnlab.present.catalogue import label, short_label

LAYER_PLOTS = (("first_token_layer", False), ("null_sink_mass_layer", False), ("kurtosis_token_layer", True),
               ("massive_tok0_layer", True))


def layer_figures(r: dict[str, Any]) -> list[Any]:
    from attnlab.present import figure, figure_html, has_data, log_axis, plot_layers, png_data_uri

    cards = []
    for key, logy in LAYER_PLOTS:
        series = {a["name"]: (p["value"], p["lo"], p["hi"]) for a in r["arms"]
                  if (p := a.get("per_layer", {}).get(key))}
        fig, ax = figure(6.0, 3.4)
        plot_layers(ax, series)
        ax.set_ylabel(short_label(key))
        if logy:
            log_axis(ax, "y")
        if series:
            ax.legend(fontsize=7, ncol=2)
        src = png_data_uri(fig) if has_data(fig) else None
        cards.append(figure_html(src, f"{label(key)} per layer, every arm after fine-tuning (points: mean; "
                                      f"bars: 95% interval)", title=f"{label(key)} by layer"))
    return cards


def curve_figure(r: dict[str, Any]) -> Any:
    from attnlab.present import figure, figure_html, has_data, plot_series, png_data_uri

    series = {}
    for a in r["arms"]:
        for seed, t in (a.get("train") or {}).items():
            if t["curve"]:
                series[f"{a['name']} (seed {seed})"] = ([p[0] + 1 for p in t["curve"]],
                                                        [p[1] for p in t["curve"]], None, None)
    fig, ax = figure(6.0, 3.4)
    if series:
        plot_series(ax, series)
        ax.legend(fontsize=6, ncol=2)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("training loss (nats/token)")
    src = png_data_uri(fig) if has_data(fig) else None
    return figure_html(src, "Fine-tuning loss of every arm on the same token stream.", title="Fine-tuning")


__all__ = ["curve_figure", "layer_figures"]
