"""Numbers as the pages show them: one formatter for tables, captions, claims and tick labels.

`fmt_num(x, digits)` gives `digits` significant digits in plain notation inside [1e-3, 1e5) (thousands
separated by commas, e.g. 0.0123, 1.58, 12,346) and `digits` significant digits in scientific notation
outside it (1.23e-04, 2.50e+07); integers print whole (25,500); None and NaN print as an en dash.

`fmt_interval(value, lo, hi)` prints a value with its interval using one number of decimals for all three,
enough to show the interval's width to two significant digits: "0.99995 [0.99990, 1.00000]", never
"1.00 [1.00, 1.00]".
"""

from __future__ import annotations

import math
import numbers
from typing import Any

MISSING = "–"
PLAIN_RANGE = (1e-3, 1e5)  # |x| outside it prints in scientific notation
_MAX_DECIMALS = 12


def _finite_float(x: Any) -> float | None:
    """x as a finite float, or None for None, NaN, infinities and non-numbers."""
    if x is None or isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _plain(a: float) -> bool:
    return a == 0 or PLAIN_RANGE[0] <= a < PLAIN_RANGE[1]


def _exponent(a: float) -> int:
    """floor(log10(a)) for a > 0, robust to rounding (1.0 - 0.9999 is 1e-4, not 9.99999e-5)."""
    return math.floor(math.log10(a) + 1e-9)


def _decimals(a: float, digits: int) -> int:
    """Decimals that give `digits` significant digits for a number of magnitude a > 0."""
    return min(_MAX_DECIMALS, max(0, digits - 1 - _exponent(a)))


def _fixed(v: float, decimals: int) -> str:
    text = f"{v:,.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text.replace(",", "")) == 0 else text


def fmt_num(x: Any, digits: int = 3) -> str:
    """One number for a page: see the module docstring. Non-numbers print as str(x)."""
    if x is None:
        return MISSING
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if not isinstance(x, numbers.Real):
        return str(x)
    v = float(x)
    if math.isnan(v):
        return MISSING
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if not _plain(a):
        return f"{v:.{max(digits - 1, 0)}e}"
    if a >= 1000:
        return _fixed(v, 0)
    return _fixed(v, _decimals(a, digits))


def fmt_interval(value: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    """"value [lo, hi]" with shared decimals that resolve the interval (see the module docstring)."""
    v, a, b = _finite_float(value), _finite_float(lo), _finite_float(hi)
    if v is None or a is None or b is None:
        return fmt_num(value, digits)
    width = abs(b - a)
    scale = max(abs(v), abs(a), abs(b))
    if scale == 0:
        return "0 [0, 0]"
    if _plain(scale):
        d = _decimals(abs(v) or scale, digits)
        if width > 0:
            d = max(d, min(_MAX_DECIMALS, 1 - _exponent(width)))
        return f"{_fixed(v, d)} [{_fixed(a, d)}, {_fixed(b, d)}]"
    mantissa = max(digits - 1, 0)
    if width > 0:
        mantissa = max(mantissa, min(_MAX_DECIMALS, _exponent(scale) - _exponent(width) + 1))
    return f"{v:.{mantissa}e} [{a:.{mantissa}e}, {b:.{mantissa}e}]"
