"""Measured intervals: a t interval over seeds, a paired block bootstrap over the items one run evaluated,
and the two-sided equivalence test that "close to" and "costs nothing" claims need.

Every function returns a plain dict `{"value", "lo", "hi", "n", "method", "level"}` so a results file
records how each interval was measured and a reader can recompute it from the stored per-item values.

- `t_interval(values)`: mean ± t_{n-1, (1+level)/2} · s/√n over independent seeds (n >= 2).
- `bootstrap(columns, stat)`: the items (evaluation windows, streams, task instances) are resampled with
  replacement in contiguous blocks (the moving-block bootstrap of Künsch 1989, so neighbouring windows
  of one text, which are correlated, travel together), the same resampled indices for every column, so
  arms evaluated on the same items are compared *paired*. `stat` maps the resampled column means to the
  statistic (a perplexity exp(mean NLL), a difference of two, a ratio). Percentile interval.
- `equivalence(interval, lo_margin, hi_margin)`: TOST (Schuirmann 1987) read off a (1 - 2α) interval:
  "equivalent" when the whole interval lies inside the margins, "different" when it lies wholly outside,
  else "inconclusive". Margins are fixed in code before any run, next to the claim that uses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _t_pdf(x: float, df: int) -> float:
    n = float(df)
    logc = math.lgamma((n + 1) / 2) - math.lgamma(n / 2) - 0.5 * math.log(n * math.pi)
    return math.exp(logc - (n + 1) / 2 * math.log1p(x * x / n))


def _t_cdf(x: float, df: int, intervals: int = 2000) -> float:
    """P(T <= x) for x >= 0 by Simpson's rule on the density (smooth, so 2000 intervals give ~1e-12)."""
    h = x / intervals
    total = _t_pdf(0.0, df) + _t_pdf(x, df)
    total += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, intervals))
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t without scipy: Hill's 1970 approximation, polished by Newton steps on the
    exact CDF (relative error < 1e-8 against tables for the levels used here)."""
    x = _t_quantile_hill(p, df)
    if df <= 2 or p < 0.5:
        return x  # closed forms (and the p < 0.5 mirror of a polished value)
    for _ in range(3):
        x -= (_t_cdf(x, df) - p) / _t_pdf(x, df)
    return x


def _t_quantile_hill(p: float, df: int) -> float:
    if df < 1:
        raise ValueError(f"t_quantile: df must be >= 1, got {df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        a = 2 * p - 1
        return a * math.sqrt(2.0 / (1 - a * a))
    # Hill (1970), Algorithm 396, on the two-sided tail probability.
    q = 2.0 * (1.0 - p)
    n = float(df)
    a = 1.0 / (n - 0.5)
    b = 48.0 / (a * a)
    c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36
    d = ((94.5 / (b + c) - 3.0) / b + 1.0) * math.sqrt(a * math.pi / 2.0) * n
    x = d * q
    y = x ** (2.0 / n)
    if y > 0.05 + a:
        x = _normal_quantile(0.5 * q)
        y = x * x
        if n < 5:
            c += 0.3 * (n - 4.5) * (x + 0.6)
        c = (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b + c
        y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x
        y = a * y * y
        y = math.expm1(y)
    else:
        y = ((1.0 / (((n + 6.0) / (n * y) - 0.089 * d - 0.822) * (n + 2.0) * 3.0)
              + 0.5 / (n + 4.0)) * y - 1.0) * (n + 1.0) / (n + 2.0) + 1.0 / y
    return math.sqrt(n * y)


def _normal_quantile(q: float) -> float:
    """Upper-tail standard normal quantile z with P(Z > z) = q (Acklam's rational approximation)."""
    p = 1.0 - q
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if p < lo:
        r = math.sqrt(-2 * math.log(p))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / \
            ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    if p > 1 - lo:
        r = math.sqrt(-2 * math.log(1 - p))
        return -(((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / \
            ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    r = (p - 0.5) ** 2
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * (p - 0.5) / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean and its t interval over independent seeds; needs at least 2 finite values."""
    vals = _finite(values)
    n = len(vals)
    if n < 2:
        raise ValueError(f"t_interval needs at least 2 finite values (seeds), got {n}; use bootstrap() "
                         f"over the items of one run instead")
    mean = sum(vals) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * s / math.sqrt(n)
    return {"value": mean, "lo": mean - half, "hi": mean + half, "n": n, "level": level,
            "method": f"t interval over {n} seeds", "se": s / math.sqrt(n)}


def default_block(n: int) -> int:
    """Block length for the moving-block bootstrap: about n^(1/3) (Hall, Horowitz & Jing 1995)."""
    return max(1, round(n ** (1 / 3)))


def _block_indices(n: int, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) item indices, each row n items made of contiguous blocks drawn with replacement."""
    starts = rng.integers(0, n - block + 1, size=(n_boot, math.ceil(n / block)))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, -1)
    return idx[:, :n]


def bootstrap(columns: Mapping[str, Sequence[float]], stat: Callable[[Mapping[str, float]], float], *,
              level: float = LEVEL, n_boot: int = N_BOOT, block: int | None = None, seed: int = 0,
              what: str = "items") -> dict[str, Any]:
    """Paired moving-block bootstrap of `stat(column means)` over items (see the module docstring).

    columns: name -> per-item values, all of one length n (the same items, in their natural order).
    """
    if not columns:
        raise ValueError("bootstrap: no columns")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    lengths = {a.shape for a in arrays.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"bootstrap: every column must be 1-D and of one length, got "
                         f"{ {k: a.shape for k, a in arrays.items()} }")
    n = next(iter(arrays.values())).shape[0]
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 {what}, got {n}; evaluate on more {what}")
    bad = [k for k, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"bootstrap: column(s) {', '.join(bad)} hold non-finite values")
    block = default_block(n) if block is None else max(1, min(int(block), n))
    value = float(stat({k: float(a.mean()) for k, a in arrays.items()}))
    idx = _block_indices(n, block, n_boot, np.random.default_rng(seed))
    means = {k: a[idx].mean(axis=1) for k, a in arrays.items()}
    draws = np.array([stat({k: float(m[i]) for k, m in means.items()}) for i in range(n_boot)], dtype=float)
    draws = draws[np.isfinite(draws)]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]) if draws.size else (math.nan, math.nan)
    return {"value": value, "lo": float(lo), "hi": float(hi), "n": n, "level": level,
            "method": f"paired moving-block bootstrap over {n} {what} (block {block}, {n_boot} draws)",
            "se": float(draws.std(ddof=1)) if draws.size > 1 else None}


def mean_interval(values: Sequence[float], **kw: Any) -> dict[str, Any]:
    """The mean of per-item values with its bootstrap interval."""
    return bootstrap({"x": values}, lambda m: m["x"], **kw)


def equivalence(interval: Mapping[str, Any], lo_margin: float, hi_margin: float) -> str:
    """'equivalent' | 'different' | 'inconclusive': where the interval lies against [lo_margin, hi_margin]."""
    if not lo_margin < hi_margin:
        raise ValueError(f"equivalence: need lo_margin < hi_margin, got {lo_margin}, {hi_margin}")
    lo, hi = interval["lo"], interval["hi"]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if lo_margin < lo and hi < hi_margin:
        return "equivalent"
    if hi < lo_margin or lo > hi_margin:
        return "different"
    return "inconclusive"


def excludes(interval: Mapping[str, Any], value: float = 0.0) -> bool:
    """True when the interval lies wholly on one side of `value` (a difference that is measured)."""
    lo, hi = interval.get("lo"), interval.get("hi")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    return lo > value or hi < value


# ------------------------------------------------------------------------------ evidence of one claim
# A claim's effect is `stat(column means)`: columns are per-item values of the arms a claim compares (one
# list per column per seed, the same items in the same order for every column). The statistic is named,
# not a Python function, so a results file alone says how to recompute it (see `measure`).
SIG_DIGITS = 6  # per-item values are stored (and measured) rounded to this many significant digits


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _power_exponent(ys: list[float], params: Mapping[str, Any]) -> float:
    xs = params["x"]
    if len(xs) != len(ys) or any(v <= 0 for v in ys) or any(x <= 0 for x in xs):
        return math.nan
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sxx if sxx else math.nan


def _double_exp_rate(ys: list[float], params: Mapping[str, Any]) -> float:
    """Rank collapse (Dong et al. 2021): e^b of the least-squares fit log(-log r_l) = a + b l over the layers
    with floor < r_l < 1 (needs 3 such layers)."""
    pts = [(float(l), r) for l, r in enumerate(ys) if params["floor"] < r < 1.0]
    if len(pts) < 3:
        return math.nan
    xs = [p[0] for p in pts]
    zs = [math.log(-math.log(p[1])) for p in pts]
    mx, mz = sum(xs) / len(xs), sum(zs) / len(zs)
    b = sum((x - mx) * (z - mz) for x, z in zip(xs, zs)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(b)


# op -> f(column means in `args` order, params): the statistics claims use.
STAT_OPS: dict[str, Callable[[list[float], Mapping[str, Any]], float]] = {
    "mean": lambda m, p: m[0],
    "exp_mean": lambda m, p: math.exp(m[0]),  # a perplexity from a mean NLL
    "ratio": lambda m, p: _ratio(m[0], m[1]),
    "diff": lambda m, p: m[0] - m[1],
    "exp_ratio": lambda m, p: math.exp(m[0] - m[1]),  # a perplexity ratio from two mean NLLs
    # (ppl a - ppl b) / (ppl a - ppl c): the share of a's excess over c that b recovers
    "exp_share": lambda m, p: _ratio(math.exp(m[0]) - math.exp(m[1]), math.exp(m[0]) - math.exp(m[2])),
    "min": lambda m, p: min(m),
    "max": lambda m, p: max(m),
    "best_minus_last": lambda m, p: max(m[:-1]) - m[-1],
    "mean_pair_diff": lambda m, p: sum(m[i] - m[i + 1] for i in range(0, len(m), 2)) / (len(m) // 2),
    "power_exponent": lambda m, p: _power_exponent(m, p),  # b of v ~ c x^b over params["x"]
    # b of the first half of args minus b of the second half (two curves over the same x)
    "power_exponent_diff": lambda m, p: (_power_exponent(m[:len(m) // 2], p)
                                         - _power_exponent(m[len(m) // 2:], p)),
    "double_exp_rate": lambda m, p: _double_exp_rate(m, p),
}


def rounded(x: Any) -> float:
    x = float(x)
    return float(f"{x:.{SIG_DIGITS}g}") if math.isfinite(x) else x


def stat_value(stat: Mapping[str, Any], means: Mapping[str, float]) -> float:
    """The statistic `stat` = {"op", "args", ...params} of the column means."""
    op = stat["op"]
    if op not in STAT_OPS:
        raise ValueError(f"unknown statistic {op!r}; known: {', '.join(STAT_OPS)}")
    try:
        return float(STAT_OPS[op]([means[a] for a in stat["args"]], stat))
    except (OverflowError, ZeroDivisionError, ValueError):
        return math.nan


def measure(evidence: Mapping[str, Any], level: float = LEVEL) -> dict[str, Any]:
    """The effect and its interval from a claim's stored evidence (see `attnlab.experiments.base.evidence`).

    Two or more seeds: a t interval over the per-seed values, each `stat` of that seed's item means. One seed:
    the paired moving-block bootstrap of `stat` over that seed's items (items where any column is
    non-finite are left out and counted). Returns the interval dict of `t_interval`/`bootstrap` plus
    "measured" (False, with "reason", when fewer than 2 usable seeds or items remain).
    """
    stat, per_seed, items = evidence["stat"], evidence["per_seed"], evidence["items"]
    cols = list(dict.fromkeys(stat["args"]))
    seed_values = []
    for run in per_seed:
        means = {}
        for c in cols:
            vals = _finite(run[c])
            means[c] = sum(vals) / len(vals) if vals else math.nan
        seed_values.append(stat_value(stat, means))
    base = {"value": None, "lo": None, "hi": None, "n": 0, "level": level, "seed_values": seed_values}
    if len(per_seed) >= 2:
        finite = _finite(seed_values)
        if len(finite) < 2:
            return {**base, "measured": False,
                    "method": f"t interval over seeds: {len(finite)} finite value(s)",
                    "reason": f"only {len(finite)} of {len(per_seed)} seeds gave a finite value"}
        return {**base, **t_interval(finite, level=level), "measured": True}
    if not per_seed:
        return {**base, "measured": False, "method": "no data", "reason": "no seed evaluated"}
    run = per_seed[0]
    arrays = {c: np.asarray(run[c], dtype=np.float64) for c in cols}
    lengths = {a.shape[0] for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"measure: the columns {cols} must hold one value per item each, got lengths "
                         f"{ {c: a.shape[0] for c, a in arrays.items()} }")
    keep = np.all([np.isfinite(a) for a in arrays.values()], axis=0)
    dropped = int((~keep).sum())
    if keep.sum() < 2:
        return {**base, "measured": False, "method": f"bootstrap over {items}: {int(keep.sum())} usable",
                "reason": f"{int(keep.sum())} {items} with finite values (need 2)"}
    res = bootstrap({c: a[keep] for c, a in arrays.items()}, lambda m: stat_value(stat, m), level=level,
                    n_boot=int(evidence.get("n_boot", N_BOOT)), block=evidence.get("block"),
                    seed=int(evidence.get("boot_seed", 0)), what=items)
    if dropped:
        res["method"] += f"; {dropped} {items} with non-finite values left out"
    measured = res["lo"] is not None and math.isfinite(res["lo"]) and math.isfinite(res["hi"])
    return {**base, **res, "measured": measured,
            **({} if measured else {"reason": "no bootstrap draw gave a finite value"})}


def interval_of(evidence: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """{value, lo, hi, n, method} of `measure(evidence)`, the keys a results file keeps for a metric; None
    when there is no evidence or its value is not finite (no number rather than a plausible one)."""
    if evidence is None or not evidence["per_seed"]:
        return None
    iv = measure(evidence)
    if iv["value"] is None or not math.isfinite(iv["value"]):
        return None
    return {"value": iv["value"], "lo": iv["lo"], "hi": iv["hi"], "n": iv["n"], "method": iv["method"]}


def finite_mean(xs: Sequence[float | None]) -> float:
    """The mean of the finite values of xs (None and NaN left out); NaN when there is none."""
    vals = _finite(xs)
    return sum(vals) / len(vals) if vals else math.nan


__all__ = ["STAT_OPS", "bootstrap", "default_block", "equivalence", "excludes", "finite_mean", "interval_of",
           "mean_interval", "measure", "rounded", "stat_value", "t_interval", "t_quantile"]
