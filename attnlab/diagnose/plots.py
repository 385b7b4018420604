"""The report's figures, drawn with matplotlib's Agg canvas and returned as base64 PNG (no pyplot, no
display, no files): one function per figure, each taking report.json sections (one model's section, or a
list of them for the overlaid comparison) and returning the PNG as a base64 string.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
ABLATION_STYLE = {"full": ("#1f77b4", "-", "full model"), "no_mlp": ("#2ca02c", "-", "MLPs removed"),
                  "no_skip": ("#ff7f0e", "-", "skips removed"),
                  "pure_attention": ("#d62728", "-", "pure attention (both)")}


def _nums(xs: Sequence[Any]) -> list[float]:
    return [math.nan if x is None else float(x) for x in xs]


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fig(w: float = 6.0, h: float = 3.4, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(1, ncols)
    for ax in (axes if ncols > 1 else [axes]):
        ax.grid(True, alpha=0.3, which="both")
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _g(v: float, _pos: object = None) -> str:
    """Plain tick labels: 0.001, 0.5, 20, 25,500 (no scientific notation in the readable range)."""
    v = float(f"{v:.3g}")
    if abs(v) >= 1000:
        return f"{v:,.0f}" if abs(v) < 1e7 else f"{v:.0e}"
    return f"{v:g}"


def _log(ax: Any, axis: str = "y", base: float = 10) -> None:
    """Log scale with plain tick labels (0.01, 2, 300): no mathtext, which is slow and hard to read."""
    getattr(ax, f"set_{axis}scale")("log", base=base)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(_g))
    lo, hi = (ax.get_ylim() if axis == "y" else ax.get_xlim())
    if lo > 0 and hi / lo < 12:  # within about a decade the major ticks are too few: label the minor ones
        target.set_minor_formatter(FuncFormatter(_g))
    else:
        target.set_minor_formatter(NullFormatter())


def _smooth(y: list[float], half: int) -> list[float]:
    """Centred running mean over 2 * half + 1 points (the probe estimator is noisy position by position)."""
    out = []
    for i in range(len(y)):
        window = [v for v in y[max(0, i - half): i + half + 1] if not math.isnan(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def _int_x(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _positive(xs: list[float]) -> bool:
    return any(x > 0 for x in xs if not math.isnan(x))


def norms(sections: Sequence[dict[str, Any]]) -> str:
    """Mean residual norm (t >= 1, solid) and position 0 (dashed) against depth, log scale."""
    fig, ax = _fig()
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        rows = [s["embeddings"]] + s["layers"]
        depth = list(range(len(rows)))
        ax.plot(depth, _nums([r["residual"]["mean"] for r in rows]), "-o", ms=3, color=c,
                label=f"{s['model']['name']}: mean, tokens 1..T")
        ax.plot(depth, _nums([r["residual"]["first"] for r in rows]), "--", color=c, alpha=0.7,
                label=f"{s['model']['name']}: token 0")
    _log(ax)
    ax.set_xlabel("depth (0 = embeddings, l = after block l-1)")
    _int_x(ax)
    ax.set_ylabel("||x||_2")
    ax.legend(fontsize=7)
    return _png(fig)


def growth(sections: Sequence[dict[str, Any]]) -> str:
    """Per-block growth factor of the mean norm, with the fitted geometric rate as a horizontal line."""
    fig, ax = _fig()
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        g = _nums([e["residual"].get("growth") for e in s["layers"]])
        ax.plot(range(len(g)), g, "-o", ms=3, color=c, label=s["model"]["name"])
        fit = s["summary"].get("norm_growth_per_layer")
        if fit:
            ax.axhline(fit, color=c, ls=":", lw=1, label=f"fit {fit:.3f} per layer")
    ax.axhline(1.0, color="grey", lw=0.8)
    _log(ax)
    ax.set_xlabel("block")
    _int_x(ax)
    ax.set_ylabel("norm out / norm in")
    ax.legend(fontsize=7)
    return _png(fig)


def uniformity(section: dict[str, Any]) -> str:
    """Dong et al.'s ratio against depth for the model and each ablation (log scale)."""
    fig, ax = _fig()
    abl = section.get("ablations", {})
    for mode, (c, ls, label) in ABLATION_STYLE.items():
        if mode in abl:
            r = _nums(abl[mode]["ratio"])
            ax.plot(range(len(r)), r, ls, color=c, marker="o", ms=3, label=label)
    rows = [section["embeddings"]] + section["layers"]
    rest = _nums([(r.get("uniformity_excl_first") or {}).get("ratio") for r in rows])
    ax.plot(range(len(rest)), rest, ":", color=ABLATION_STYLE["full"][0], label="full model, without token 0")
    ax.axhline(0.05, color="grey", lw=0.8, ls="--")
    _log(ax)
    ax.set_xlabel("depth (0 = embeddings)")
    _int_x(ax)
    ax.set_ylabel("||X - 1 mean^T|| / ||X||")
    ax.legend(fontsize=7)
    return _png(fig)


def uniformity_compare(sections: Sequence[dict[str, Any]]) -> str:
    fig, ax = _fig()
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        rows = [s["embeddings"]] + s["layers"]
        ax.plot(range(len(rows)), _nums([r["uniformity"]["ratio"] for r in rows]), "-o", ms=3, color=c,
                label=s["model"]["name"])
        pa = s.get("ablations", {}).get("pure_attention")
        if pa:
            ax.plot(range(len(pa["ratio"])), _nums(pa["ratio"]), "--", color=c,
                    label=f"{s['model']['name']}: pure attention")
    _log(ax)
    ax.set_xlabel("depth (0 = embeddings)")
    _int_x(ax)
    ax.set_ylabel("uniformity ratio")
    ax.legend(fontsize=7)
    return _png(fig)


def ranks(sections: Sequence[dict[str, Any]]) -> str:
    """Effective rank (left) and mean pairwise cosine (right) against depth, tokens 1..T."""
    fig, (a1, a2) = _fig(11.0, 3.4, 2)
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        rows = [s["embeddings"]] + s["layers"]
        u = [(r.get("uniformity_excl_first") or r["uniformity"]) for r in rows]
        a1.plot(range(len(u)), _nums([x["effective_rank"] for x in u]), "-o", ms=3, color=c,
                label=s["model"]["name"])
        a1.plot(range(len(u)), _nums([x["stable_rank"] for x in u]), "--", color=c, alpha=0.7,
                label=f"{s['model']['name']}: stable rank")
        a2.plot(range(len(u)), _nums([x["mean_cosine"] for x in u]), "-o", ms=3, color=c)
    _log(a1)
    a1.set_xlabel("depth")
    _int_x(a1)
    a1.set_ylabel("effective / stable rank")
    a1.legend(fontsize=7)
    a2.set_xlabel("depth")
    _int_x(a2)
    a2.set_ylabel("mean pairwise cosine")
    a2.set_ylim(-0.1, 1.05)
    return _png(fig)


def heatmap(section: dict[str, Any], key: str, title: str, vmin: float, vmax: float, cmap: str) -> str:
    """A layer x head heatmap of a per-head attention statistic."""
    rows = [e["attention"][key] for e in section["layers"] if e.get("attention")]
    data = [_nums(r) for r in rows]
    h = max(3.0, min(9.0, 0.18 * len(data) + 1.2))
    fig, ax = _fig(4.6, h)
    ax.grid(False)
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                   origin="upper")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(len(data[0])) if data else [])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def sink_compare(sections: Sequence[dict[str, Any]]) -> str:
    """Mean first-token attention per layer (over heads) and the share of sink heads."""
    fig, (a1, a2) = _fig(11.0, 3.4, 2)
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        att = [e["attention"] for e in s["layers"] if e.get("attention")]
        mean_first = [sum(_nums(a["first_token"])) / len(a["first_token"]) for a in att]
        a1.plot(range(len(att)), mean_first, "-o", ms=3, color=c, label=s["model"]["name"])
        a2.plot(range(len(att)), [a["sink_rate"] for a in att], "-o", ms=3, color=c)
    a1.set_xlabel("layer")
    _int_x(a1)
    a1.set_ylabel("mean attention to token 0")
    a1.set_ylim(-0.02, 1.02)
    a1.legend(fontsize=7)
    a2.set_xlabel("layer")
    _int_x(a2)
    a2.set_ylabel("share of heads > 0.3")
    a2.set_ylim(-0.02, 1.02)
    return _png(fig)


def dispersion(section: dict[str, Any]) -> str:
    """Max attention weight against keys seen for a few layers, with 1/n (uniform) for reference."""
    fig, ax = _fig()
    att = [(e["index"], e["attention"]) for e in section["layers"] if e.get("attention")]
    if att:
        picks = sorted({0, len(att) // 2, len(att) - 1})
        for j, idx in enumerate(picks):
            layer, a = att[idx]
            curve = a["max_weight_by_position"]
            ax.plot(_nums(curve["keys_seen"]), _nums(curve["value"]), "-o", ms=3,
                    color=COLORS[j % len(COLORS)], label=f"layer {layer}")
        n = _nums(att[0][1]["max_weight_by_position"]["keys_seen"])
        ax.plot(n, [1 / x for x in n], ":", color="grey", label="uniform, 1/n")
    _log(ax, "x")
    _log(ax)
    ax.set_xlabel("keys the query sees")
    ax.set_ylabel("max weight (mean over heads)")
    ax.legend(fontsize=7)
    return _png(fig)


def outliers(sections: Sequence[dict[str, Any]]) -> str:
    """Max |h| (left) and kurtosis (right, mean over tokens 1..T solid, max dashed) against depth."""
    fig, (a1, a2) = _fig(11.0, 3.4, 2)
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        rows = [s["embeddings"]] + s["layers"]
        a1.plot(range(len(rows)), _nums([r["outliers"]["max_abs"] for r in rows]), "-o", ms=3, color=c,
                label=s["model"]["name"])
        a1.plot(range(len(rows)), _nums([r["outliers"]["massive"]["median_abs"] for r in rows]), ":",
                color=c, label=f"{s['model']['name']}: median |h|")
        a2.plot(range(len(rows)), _nums([r["outliers"]["kurtosis_mean"] for r in rows]), "-o", ms=3, color=c)
        a2.plot(range(len(rows)), _nums([r["outliers"]["kurtosis_max"] for r in rows]), "--", color=c)
    a2.axhline(3.0, color="grey", lw=0.8, ls=":")
    for a in (a1, a2):
        _log(a)
        a.set_xlabel("depth (0 = embeddings)")
        _int_x(a)
    a1.set_ylabel("|h|")
    a1.legend(fontsize=7)
    a2.set_ylabel("kurtosis (Gaussian = 3)")
    return _png(fig)


def massive_map(section: dict[str, Any]) -> str:
    """Where the top activations sit: feature dimension against depth, dot size and colour by |h|."""
    fig, ax = _fig(11.0, 3.4)
    xs, ys, vs, tok0 = [], [], [], []
    rows = [section["embeddings"]] + section["layers"]
    for depth, r in enumerate(rows):
        for t in r["outliers"]["massive"]["top"]:
            xs.append(depth)
            ys.append(t["dim"])
            vs.append(t["abs"])
            tok0.append(t["token"] == 0)
    if vs:
        top = max(vs)
        sizes = [12 + 120 * v / top for v in vs]
        norm = LogNorm(max(min(vs), 1e-6), max(top, 1e-6))
        sc = ax.scatter(xs, ys, s=sizes, c=vs, cmap="viridis", norm=norm,
                        edgecolors=["black" if z else "none" for z in tok0], linewidths=0.8)
        fig.colorbar(sc, ax=ax, shrink=0.8, label="|h|")
    ax.set_xlabel("depth (0 = embeddings)")
    _int_x(ax)
    ax.set_ylabel("feature dimension")
    return _png(fig)


def sensitivity(sections: Sequence[dict[str, Any]]) -> str:
    """Normalised sensitivity of the last position's final state to each input position (log scale)."""
    fig, ax = _fig()
    for k, s in enumerate(sections):
        y = _nums(s["sensitivity"]["normalized"])
        n = len(y)
        x = list(range(n)) if len(sections) == 1 else [i / max(n - 1, 1) for i in range(n)]
        c = COLORS[k % len(COLORS)]
        ax.plot(x, y, "-", lw=0.6, color=c, alpha=0.35)
        ax.plot(x, _smooth(y, max(1, n // 32)), "-", lw=1.8, color=c,
                label=f"{s['model']['name']} (bold: running mean)")
    if _positive([v for s in sections for v in _nums(s["sensitivity"]["normalized"])]):
        _log(ax)
    ax.set_xlabel("input position" if len(sections) == 1 else "input position / T")
    ax.set_ylabel("||dh_last / de_i|| / sum")
    ax.legend(fontsize=7)
    return _png(fig)


def collapse(sections: Sequence[dict[str, Any]]) -> str:
    """Distance between the final states of 1^n 0 and 1^(n+1) 0, relative to the state's norm."""
    fig, ax = _fig()
    for k, s in enumerate(sections):
        p = s["collapse_probe"]
        ax.plot(p["n"], _nums(p["relative"]), "-o", ms=3, color=COLORS[k % len(COLORS)],
                label=s["model"]["name"])
    _log(ax, "x", 2)
    if _positive([v for s in sections for v in _nums(s["collapse_probe"]["relative"])]):
        _log(ax)
    ax.set_xlabel("n (ones before the final 0)")
    ax.set_ylabel("||h_a - h_b|| / ||h_a||")
    ax.legend(fontsize=7)
    return _png(fig)


def lipschitz(sections: Sequence[dict[str, Any]]) -> str:
    """Per-block local Lipschitz constants (left) and the model's against length with its fit (right)."""
    fig, (a1, a2) = _fig(11.0, 3.4, 2)
    for k, s in enumerate(sections):
        c = COLORS[k % len(COLORS)]
        lip = s["lipschitz"]
        a1.plot(range(len(lip["blocks"])), _nums(lip["blocks"]), "-o", ms=3, color=c,
                label=s["model"]["name"])
        v = lip["vs_length"]
        a2.plot(v["n"], _nums(v["value"]), "o", color=c)
        if v.get("exponent") is not None and v.get("coefficient") is not None:
            a2.plot(v["n"], [v["coefficient"] * n ** v["exponent"] for n in v["n"]], "-", color=c,
                    label=f"~ n^{v['exponent']:.2f}")
    _log(a1)
    a1.set_xlabel("block")
    _int_x(a1)
    a1.set_ylabel("||J_block||_2")
    a1.legend(fontsize=7)
    _log(a2, "x", 2)
    _log(a2)
    a2.set_xlabel("tokens n")
    a2.set_ylabel("||J_model||_2")
    a2.legend(fontsize=7)
    return _png(fig)
