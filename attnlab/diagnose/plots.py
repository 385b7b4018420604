"""The report's figures in the page style of `attnlab.present`: one function per figure, each taking
report.json sections (one model's section, or a list of them for the overlaid comparison) and returning a
matplotlib Figure; the page (`attnlab.diagnose.html`) inlines it as a PNG, or prints a note when it holds
no finite value. Depth, layer and block axes have integer ticks; log axes have plain labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attnlab.present.catalogue import short_label
from attnlab.present.plots import COLORS, REFERENCE, colorbar, figure, int_ticks, log_axis, reference

ABLATION_STYLE = {"full": ("#1f77b4", "-", "full model"), "no_mlp": ("#2ca02c", "-", "MLPs removed"),
                  "no_skip": ("#ff7f0e", "-", "skips removed"),
                  "pure_attention": ("#d62728", "-", "pure attention (both)")}
DEPTH = "depth (0 = embeddings, l = after block l-1)"
WIDE = (11.0, 3.4)

Section = dict[str, Any]
Getter = Callable[[Section], Sequence[Any] | None]


def _nums(xs: Sequence[Any]) -> list[float]:
    return [math.nan if x is None else float(x) for x in xs]


def _depth(s: Section) -> list[dict[str, Any]]:
    """The embeddings, then each block's output: index = depth."""
    return [s["embeddings"]] + s["layers"]


def _curves(ax: Any, sections: Sequence[Section], solid: Getter, solid_label: str = "{name}",
            other: Getter | None = None, other_label: str | None = None, other_style: str = "--") -> None:
    """Per model (one colour each): `solid(s)` as points on a line, and optionally `other(s)` in
    `other_style`, both against their index. Labels are formats of {name}; None leaves it out of the
    legend."""
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        name = s["model"]["name"]
        y = _nums(solid(s) or [])
        ax.plot(range(len(y)), y, "-o", ms=3, color=c, label=solid_label.format(name=name))
        extra = other(s) if other is not None else None
        if extra is not None:
            ax.plot(range(len(extra)), _nums(extra), other_style, color=c, alpha=0.7,
                    label=other_label.format(name=name) if other_label else "_nolegend_")


def _finish(ax: Any, xlabel: str, ylabel: str, *, log: bool = True, integer: bool = True) -> None:
    """Axis labels, log y (when the data allow), integer x ticks, and a legend when anything is labelled."""
    if log:
        log_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if integer:
        int_ticks(ax)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)


def norms(sections: Sequence[Section]) -> Figure:
    """Mean residual norm (t >= 1, solid) and position 0 (dashed) against depth, log scale."""
    fig, ax = figure(6.0, 3.4)
    _curves(ax, sections, lambda s: [r["residual"]["mean"] for r in _depth(s)], "{name}: mean, tokens 1..T",
            lambda s: [r["residual"]["first"] for r in _depth(s)], "{name}: token 0")
    _finish(ax, DEPTH, "||x||_2")
    return fig


def growth(sections: Sequence[Section]) -> Figure:
    """Per-block growth factor of the mean norm, with the fitted geometric rate as a horizontal line."""
    fig, ax = figure(6.0, 3.4)
    _curves(ax, sections, lambda s: [e["residual"].get("growth") for e in s["layers"]])
    for k, s in enumerate(sections):
        fit = s["summary"].get("norm_growth_per_layer")
        if fit:
            reference(ax, fit, color=COLORS[k % len(COLORS)], ls=":", lw=1, label=f"fit {fit:.3f} per layer")
    reference(ax, 1.0, ls="-")
    _finish(ax, "block", "norm out / norm in")
    return fig


def uniformity(section: Section) -> Figure:
    """Dong et al.'s ratio against depth for the model and each ablation (log scale)."""
    fig, ax = figure(6.0, 3.4)
    abl = section.get("ablations", {})
    for mode, (c, ls, name) in ABLATION_STYLE.items():
        if mode in abl:
            r = _nums(abl[mode]["ratio"])
            ax.plot(range(len(r)), r, ls, color=c, marker="o", ms=3, label=name)
    rest = _nums([(r.get("uniformity_excl_first") or {}).get("ratio") for r in _depth(section)])
    ax.plot(range(len(rest)), rest, ":", color=ABLATION_STYLE["full"][0], label="full model, without token 0")
    reference(ax, 0.05)
    _finish(ax, DEPTH, "||X - 1 mean^T|| / ||X||")
    return fig


def uniformity_compare(sections: Sequence[Section]) -> Figure:
    fig, ax = figure(6.0, 3.4)
    _curves(ax, sections, lambda s: [r["uniformity"]["ratio"] for r in _depth(s)], "{name}",
            lambda s: (s.get("ablations", {}).get("pure_attention") or {}).get("ratio"),
            "{name}: pure attention")
    _finish(ax, DEPTH, short_label("uniformity"))
    return fig


def _excl_first(s: Section) -> list[dict[str, Any]]:
    return [(r.get("uniformity_excl_first") or r["uniformity"]) for r in _depth(s)]


def ranks(sections: Sequence[Section]) -> Figure:
    """Effective rank (left) and mean pairwise cosine (right) against depth, tokens 1..T."""
    fig, (a1, a2) = figure(*WIDE, ncols=2)
    _curves(a1, sections, lambda s: [x["effective_rank"] for x in _excl_first(s)], "{name}",
            lambda s: [x["stable_rank"] for x in _excl_first(s)], "{name}: stable rank")
    _curves(a2, sections, lambda s: [x["mean_cosine"] for x in _excl_first(s)], "_nolegend_")
    _finish(a1, DEPTH, "effective / stable rank")
    _finish(a2, DEPTH, "mean pairwise cosine", log=False)
    a2.set_ylim(-0.1, 1.05)
    return fig


def heatmap(section: Section, key: str, title: str, vmin: float, vmax: float, cmap: str) -> Figure:
    """A layer x head heatmap of a per-head attention statistic."""
    data = [_nums(e["attention"][key]) for e in section["layers"] if e.get("attention")]
    fig, ax = figure(4.6, max(3.0, min(9.0, 0.18 * len(data) + 1.2)))
    ax.grid(False)
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                   origin="upper")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(len(data[0])) if data else [])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _attention(s: Section) -> list[dict[str, Any]]:
    return [e["attention"] for e in s["layers"] if e.get("attention")]


def sink_compare(sections: Sequence[Section]) -> Figure:
    """Mean first-token attention per layer (over heads) and the share of sink heads."""
    fig, (a1, a2) = figure(*WIDE, ncols=2)
    _curves(a1, sections, lambda s: [sum(_nums(a["first_token"])) / len(a["first_token"])
                                     for a in _attention(s)])
    _curves(a2, sections, lambda s: [a["sink_rate"] for a in _attention(s)], "_nolegend_")
    _finish(a1, "layer", short_label("first_token_layer"), log=False)
    _finish(a2, "layer", short_label("sink_rate_layer"), log=False)
    for a in (a1, a2):
        a.set_ylim(-0.02, 1.02)
    return fig


def dispersion(section: Section) -> Figure:
    """Max attention weight against keys seen for a few layers, with 1/n (uniform) for reference."""
    fig, ax = figure(6.0, 3.4)
    att = [(e["index"], e["attention"]) for e in section["layers"] if e.get("attention")]
    if att:
        for j, idx in enumerate(sorted({0, len(att) // 2, len(att) - 1})):
            layer, a = att[idx]
            curve = a["max_weight_by_position"]
            ax.plot(_nums(curve["keys_seen"]), _nums(curve["value"]), "-o", ms=3,
                    color=COLORS[j % len(COLORS)], label=f"layer {layer}")
        n = _nums(att[0][1]["max_weight_by_position"]["keys_seen"])
        ax.plot(n, [1 / x for x in n], ":", color="grey", label="uniform, 1/n", gid=REFERENCE)
    log_axis(ax, "x")
    _finish(ax, "keys the query sees", "max weight (mean over heads)", integer=False)
    return fig


def outliers(sections: Sequence[Section]) -> Figure:
    """Max |h| (left) and kurtosis (right, mean over tokens 1..T solid, max dashed) against depth."""
    fig, (a1, a2) = figure(*WIDE, ncols=2)
    _curves(a1, sections, lambda s: [r["outliers"]["max_abs"] for r in _depth(s)], "{name}",
            lambda s: [r["outliers"]["massive"]["median_abs"] for r in _depth(s)], "{name}: median |h|", ":")
    _curves(a2, sections, lambda s: [r["outliers"]["kurtosis_mean"] for r in _depth(s)], "_nolegend_",
            lambda s: [r["outliers"]["kurtosis_max"] for r in _depth(s)])
    reference(a2, 3.0, ls=":")
    _finish(a1, DEPTH, "|h|")
    _finish(a2, DEPTH, "kurtosis (Gaussian = 3)")
    return fig


def massive_map(section: Section) -> Figure:
    """Where the top activations sit: feature dimension against depth, dot size and colour by |h|."""
    fig, ax = figure(*WIDE)
    top = [(depth, t) for depth, r in enumerate(_depth(section)) for t in r["outliers"]["massive"]["top"]]
    vs = [t["abs"] for _, t in top]
    if vs:
        big = max(vs)
        norm = LogNorm(max(min(vs), 1e-6), max(big, 1e-6))
        sc = ax.scatter([d for d, _ in top], [t["dim"] for _, t in top], s=[12 + 120 * v / big for v in vs],
                        c=vs, cmap="viridis", norm=norm, linewidths=0.8,
                        edgecolors=["black" if t["token"] == 0 else "none" for _, t in top])
        colorbar(fig, sc, ax, shrink=0.8, label="|h|")
    _finish(ax, DEPTH, "feature dimension", log=False)
    return fig


def _smooth(y: list[float], half: int) -> list[float]:
    """Centred running mean over 2 * half + 1 points (the probe estimator is noisy position by position)."""
    out = []
    for i in range(len(y)):
        window = [v for v in y[max(0, i - half): i + half + 1] if not math.isnan(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def sensitivity(sections: Sequence[Section]) -> Figure:
    """Normalised sensitivity of the last position's final state to each input position (log scale)."""
    fig, ax = figure(6.0, 3.4)
    for k, s in enumerate(sections):
        y = _nums(s["sensitivity"]["normalized"])
        n = len(y)
        x = list(range(n)) if len(sections) == 1 else [i / max(n - 1, 1) for i in range(n)]
        c = COLORS[k % len(COLORS)]
        ax.plot(x, y, "-", lw=0.6, color=c, alpha=0.35)
        ax.plot(x, _smooth(y, max(1, n // 32)), "-", lw=1.8, color=c,
                label=f"{s['model']['name']} (bold: running mean)")
    _finish(ax, "input position" if len(sections) == 1 else "input position / T", "||dh_last / de_i|| / sum",
            integer=len(sections) == 1)
    return fig


def collapse(sections: Sequence[Section]) -> Figure:
    """Distance between the final states of 1^n 0 and 1^(n+1) 0, relative to the state's norm."""
    fig, ax = figure(6.0, 3.4)
    for k, s in enumerate(sections):
        p = s["collapse_probe"]
        ax.plot(p["n"], _nums(p["relative"]), "-o", ms=3, color=COLORS[k % len(COLORS)],
                label=s["model"]["name"])
    log_axis(ax, "x", 2)
    _finish(ax, "n (ones before the final 0)", "||h_a - h_b|| / ||h_a||", integer=False)
    return fig


def lipschitz(sections: Sequence[Section]) -> Figure:
    """Per-block local Lipschitz constants (left) and the model's against length with its fit (right)."""
    fig, (a1, a2) = figure(*WIDE, ncols=2)
    _curves(a1, sections, lambda s: s["lipschitz"]["blocks"])
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        v = s["lipschitz"]["vs_length"]
        a2.plot(v["n"], _nums(v["value"]), "o", color=c)
        if v.get("exponent") is not None and v.get("coefficient") is not None:
            a2.plot(v["n"], [v["coefficient"] * n ** v["exponent"] for n in v["n"]], "-", color=c,
                    label=f"~ n^{v['exponent']:.2f}")
    _finish(a1, "block", "||J_block||_2")
    log_axis(a2, "x", 2)
    _finish(a2, "tokens n", "||J_model||_2", integer=False)
    return fig
