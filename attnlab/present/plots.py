"""Figures in one style: matplotlib's object API (no pyplot, no global state, nothing to close), PNG out.

- `figure(width, height, ncols)` -> (fig, axes): constrained layout, light grid, no top/right spines, and
  tick labels that are the numbers themselves (`PlainFormatter`): never an offset such as
  "1e-5 + 9.999e-1" or a shared "x 1e-7" multiplier at the axis end, which readers misread.
- `plot_layers(ax, {name: (values, lo, hi)})`: one value per layer as points joined by a thin line, the
  interval [lo, hi] as a bar on each point, integer layer ticks. `plot_series` is the same for any x
  (dense curves, more than `MAX_BARS` points, get a band instead of bars); `plot_points` is the categorical
  form (one point per variant), which replaces bars drawn from zero (a bar from zero hides a 0.02
  difference between values near 1.6, a point with its interval shows it).
- `log_axis(ax)` switches an axis to log scale with plain labels (0.01, 2, 300, not 10^-2 in mathtext),
  and leaves it linear when the data hold no positive value.
- `has_data(fig)` is False when the figure holds no finite data point (reference lines aside): the pages
  print a note instead of an empty plot.
- `png_bytes`, `png_data_uri` (for self-contained pages) and `save_png` (atomic) render a figure.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from cycler import cycler
from matplotlib.collections import PathCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, FuncFormatter, MaxNLocator, NullFormatter

from attnlab.io import atomic_write_bytes

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
DPI = 100
MAX_BARS = 60  # a series with more points gets a band for its interval: bars that close touch
REFERENCE = "reference"  # gid of guide lines (y = 1, a threshold), which are not data

STYLE: dict[str, Any] = {
    "axes.formatter.useoffset": False,
    "axes.formatter.use_mathtext": False,
    "axes.grid": True,
    "axes.grid.which": "both",
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=COLORS),
    "savefig.dpi": DPI,
}


@contextmanager
def style() -> Iterator[None]:
    """The page style as matplotlib rcParams, for code that draws with its own figures."""
    with matplotlib.rc_context(STYLE):
        yield


# ------------------------------------------------------------------------------------------ ticks
def _tick_spec(values: Sequence[float]) -> tuple[str, int]:
    """("f", decimals) or ("e", mantissa digits): the fewest digits that print every tick exactly."""
    vals = sorted({float(v) for v in values if math.isfinite(v)})
    big = max((abs(v) for v in vals), default=0.0)
    if big == 0:
        return "f", 0
    steps = [b - a for a, b in zip(vals, vals[1:]) if b > a]
    tol = 1e-6 * (min(steps) if steps else big)
    kind = "f" if 1e-3 <= big < 1e6 else "e"
    for digits in range(13):
        if all(abs(float(f"{v:.{digits}{kind}}") - v) <= tol for v in vals):
            return kind, digits
    return kind, 12


class PlainFormatter(Formatter):
    """Each tick labelled with its own value, all with the decimals the finest needs (0.99990, 0.99995,
    1.00000; 0, 2e-07, 4e-07): no offset, no multiplier."""

    def __init__(self) -> None:
        self._spec: tuple[str, int] | None = None

    def set_locs(self, locs: Sequence[float]) -> None:
        self._spec = _tick_spec(list(locs))

    def __call__(self, x: float, pos: int | None = None) -> str:
        if not math.isfinite(x):
            return ""
        if x == 0:
            return "0"
        kind, digits = self._spec or _tick_spec([x])
        return f"{x:,.{digits}f}" if kind == "f" else f"{x:.{digits}e}"


def _log_label(v: float, _pos: object = None) -> str:
    """Log-axis labels: 0.001, 0.5, 20, 1,024, 25,500, 1e+07 (whole numbers exactly, others to three
    significant digits; plain when readable)."""
    if not math.isfinite(v) or v <= 0:
        return ""
    if 1 <= v < 1e6 and abs(v - round(v)) <= 1e-9 * v:
        return f"{round(v):,}"
    v = float(f"{v:.3g}")
    if v >= 1e6 or v < 1e-4:
        return f"{v:.3g}"
    return f"{v:,.0f}" if v >= 1000 else f"{v:g}"


def _log_minor_label(v: float, _pos: object = None) -> str:
    """Minor labels on a log axis of one to two decades: only 2x and 5x a power of ten (20, 50, 200)."""
    if not math.isfinite(v) or v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return _log_label(v) if round(mantissa, 6) in (2.0, 5.0) else ""


def int_ticks(ax: Any, axis: str = "x") -> None:
    """Integer ticks only (layers, blocks, heads)."""
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _data_values(ax: Any, axis: str) -> list[float]:
    """Finite data coordinates along `axis` of the lines and scatters on ax (reference lines left out)."""
    col = 0 if axis == "x" else 1
    out: list[float] = []
    for line in ax.get_lines():
        if line.get_gid() != REFERENCE:
            xy = np.asarray(line.get_xydata(), dtype=float)
            out.extend(xy[np.isfinite(xy).all(axis=1), col].tolist() if xy.size else [])
    for coll in ax.collections:
        if isinstance(coll, PathCollection):
            xy = np.asarray(coll.get_offsets(), dtype=float)
            out.extend(xy[np.isfinite(xy).all(axis=1), col].tolist() if xy.size else [])
    return out


def log_axis(ax: Any, axis: str = "y", base: float = 10) -> bool:
    """Log scale with plain labels, after the data are drawn; stays linear (returns False) when the data
    hold no positive value. Within about a decade the minor ticks are labelled too (else too few labels)."""
    if not any(v > 0 for v in _data_values(ax, axis)):
        return False
    getattr(ax, f"set_{axis}scale")("log", base=base)
    if axis == "y":
        _plain_log_labels(ax.yaxis, *ax.get_ylim())
    else:
        _plain_log_labels(ax.xaxis, *ax.get_xlim())
    return True


def _plain_log_labels(target: Any, lo: float, hi: float) -> None:
    """Plain labels; when the axis spans too few decades to show two major labels, minor ones too."""
    target.set_major_formatter(FuncFormatter(_log_label))
    span = hi / lo if lo > 0 else math.inf
    if span < 12:
        target.set_minor_formatter(FuncFormatter(_log_label))
    elif span < 120:
        target.set_minor_formatter(FuncFormatter(_log_minor_label))
    else:
        target.set_minor_formatter(NullFormatter())


def colorbar(fig: Figure, mappable: Any, ax: Any, **kw: Any) -> Any:
    """fig.colorbar with plain labels on a log colour scale too (LogNorm)."""
    cb = fig.colorbar(mappable, ax=ax, **kw)
    norm = mappable.norm
    if isinstance(norm, LogNorm):
        _plain_log_labels(cb.ax.yaxis if cb.orientation == "vertical" else cb.ax.xaxis, norm.vmin, norm.vmax)
    return cb


def reference(ax: Any, y: float, **kw: Any) -> None:
    """A horizontal guide line (y = 1, a threshold): drawn, but not counted as data by has_data."""
    ax.axhline(y, **{"color": "grey", "lw": 0.8, "ls": "--", **kw}, gid=REFERENCE)


# ----------------------------------------------------------------------------------------- figures
def figure(width: float = 5.5, height: float = 3.4, ncols: int = 1, *, sharey: bool = False
           ) -> tuple[Figure, Any]:
    """A figure in the page style and its axes (one Axes, or an array of `ncols`)."""
    with style():
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=True, sharey=sharey)
    for ax in np.atleast_1d(axes):
        ax.xaxis.set_major_formatter(PlainFormatter())
        ax.yaxis.set_major_formatter(PlainFormatter())
    return fig, axes


Interval = Sequence[Any] | None  # per-point bounds, None entries (or None) for no interval


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def plot_series(ax: Any, series: Mapping[str, tuple[Sequence[Any], Sequence[Any], Interval, Interval]], *,
                dodge: float = 0.0, log_dodge: bool = False, markers: bool = True) -> int:
    """series: name -> (x, values, lo, hi), lo and hi the interval bounds (None: no interval). Points
    with a value that is None or not finite are left out. `dodge` shifts series i by (i - mid) * dodge in
    x (with `log_dodge`, multiplies x by exp((i - mid) * dodge), for a log x axis) so that the bars of
    several series at one x stay apart. Returns how many series had a point."""
    drawn = 0
    mid = (len(series) - 1) / 2
    for i, (name, (x, values, lo, hi)) in enumerate(series.items()):
        lo = lo if lo is not None else [None] * len(values)
        hi = hi if hi is not None else [None] * len(values)
        shift = (i - mid) * dodge
        pts = [(float(a) * math.exp(shift) if log_dodge else float(a) + shift, float(v), lo_, hi_)
               for a, v, lo_, hi_ in zip(x, values, lo, hi) if _finite(a) and _finite(v)]
        if not pts:
            continue
        color = COLORS[i % len(COLORS)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        dense = len(pts) > MAX_BARS
        ax.plot(xs, ys, "-", marker="o" if markers and not dense else None, ms=3.5, lw=1.0, color=color,
                label=name)
        box = [(a, v, float(lo_), float(hi_)) for a, v, lo_, hi_ in pts if _finite(lo_) and _finite(hi_)]
        if box and dense:
            ax.fill_between([b[0] for b in box], [b[2] for b in box], [b[3] for b in box], color=color,
                            alpha=0.2, lw=0)
        elif box:
            err = [[max(v - lo_, 0.0) for _, v, lo_, _ in box], [max(hi_ - v, 0.0) for _, v, _, hi_ in box]]
            ax.errorbar([b[0] for b in box], [b[1] for b in box], yerr=err, fmt="none", ecolor=color,
                        elinewidth=1.0, capsize=2.5, alpha=0.85)
        drawn += 1
    return drawn


def plot_layers(ax: Any, series: Mapping[str, tuple[Sequence[Any], Interval, Interval]], *, first: int = 0,
                xlabel: str = "layer") -> int:
    """series: name -> (values, lo, hi), one value per layer from layer `first` on; integer layer ticks,
    series dodged apart so their bars do not overlap. Returns how many series had a point."""
    n = len(series)
    dodge = 0.3 / (n - 1) if n > 1 else 0.0
    drawn = plot_series(ax, {name: (range(first, first + len(v)), v, lo, hi)
                             for name, (v, lo, hi) in series.items()}, dodge=dodge)
    int_ticks(ax)
    ax.set_xlabel(xlabel)
    return drawn


def plot_points(ax: Any, names: Sequence[str], values: Sequence[Any], lo: Sequence[Any] | None = None,
                hi: Sequence[Any] | None = None, *, color: str = COLORS[0]) -> int:
    """One point per name with its interval bar, on an axis scaled to the values (not to zero); a name
    without a finite value is marked "n/a". Returns how many points were drawn."""
    lo = lo if lo is not None else [None] * len(values)
    hi = hi if hi is not None else [None] * len(values)
    drawn = 0
    for i, (v, lo_, hi_) in enumerate(zip(values, lo, hi)):
        if not _finite(v):
            ax.annotate("n/a", (i, 0.02), xycoords=("data", "axes fraction"), ha="center", color="grey",
                        fontsize=8)
            continue
        v = float(v)
        if _finite(lo_) and _finite(hi_):
            ax.errorbar([i], [v], yerr=[[max(v - float(lo_), 0.0)], [max(float(hi_) - v, 0.0)]], fmt="o",
                        color=color, ms=5, elinewidth=1.2, capsize=4)
        else:
            ax.plot([i], [v], "o", color=color, ms=5)
        drawn += 1
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.grid(False, axis="x")
    return drawn


def has_data(fig: Figure) -> bool:
    """True when some line, scatter or image of the figure holds a finite data point (guides aside)."""
    for ax in fig.axes:
        if _data_values(ax, "y"):
            return True
        for im in ax.get_images():
            arr = np.ma.masked_invalid(np.asarray(im.get_array(), dtype=float))
            if arr.count():
                return True
    return False


# --------------------------------------------------------------------------------------------- PNG
def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (drawn in the page style)."""
    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def png_data_uri(png: Figure | bytes | str | Path) -> str:
    """A data: URI for an <img> of a self-contained page, from a figure, PNG bytes or a PNG file."""
    if isinstance(png, Figure):
        png = png_bytes(png)
    elif isinstance(png, (str, Path)):
        png = Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG file atomically (a reader never sees half a file)."""
    return atomic_write_bytes(path, png_bytes(fig))
