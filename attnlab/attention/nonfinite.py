"""Non-finite keys and values: what a span hides must not reach a query, whatever it holds.

The stock fused kernels apply a span as an additive bias (0 / -inf) and multiply every weight into V, so a
NaN or inf in a key or value that a query may not see still reaches it: NaN + (-inf) is NaN in the scores,
0 * NaN is NaN in the output. Such values are real: cache slots past the fill (`torch.empty`), padding,
an overflowed half-precision key. Masks must select, so both backends do this when a hidden position may
hold a non-finite entry:

- keys and values run with their non-finite entries replaced by 0 (`select_finite`), which no query that
  may not see them can tell apart from any finite value;
- then every output that could see one is set to NaN (`poison`): the whole row of a query that may see a
  key with a non-finite entry (its scores are not numbers), and column d of every query that may see a
  key j whose value entry v_jd is not finite.

Queries that see none of them get exactly what finite entries there would give, forward and backward.

A query with a non-finite entry gets a NaN row on both backends (its scores are not numbers). The CPU
flash kernel would instead give such a row a finite, plausible output, so the fused backend runs on the
query with those entries zeroed and marks the row.

The check itself is one reduction over Q, K and V (a sum is finite only if every entry is; a sum of finite
entries that overflows only sends the call down the exact path); V is skipped where the span hides nothing
(the kernel carries a non-finite value into every output that sees it), and so is K when one query decodes
against a cache that hides nothing from it: reading the whole cache again would cost ~10% of that call, so
there a key at +-inf (a half-precision overflow) is the one input that can still give a finite row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def all_finite(*tensors: Tensor) -> bool:
    """True if every entry of every tensor is finite (False may also mean a finite sum overflowed)."""
    acc = torch.promote_types(tensors[0].dtype, torch.float32)
    total = tensors[0].detach().sum(dtype=acc)
    for x in tensors[1:]:
        total = total + x.detach().sum(dtype=acc)
    return math.isfinite(total.item())  # one host sync; half the cost of torch.isfinite + bool on the CPU


def select_finite(x: Tensor) -> tuple[Tensor, Tensor]:
    """x with its non-finite entries replaced by 0, and where they were (bool, x's shape)."""
    bad = ~torch.isfinite(x)
    return torch.where(bad, torch.zeros((), dtype=x.dtype, device=x.device), x), bad


def poison(out: Tensor, sees_bad_key: Tensor, sees_bad_value: Tensor) -> Tensor:
    """out (..., Lq, Dv) with NaN where a query may see a non-finite key ((..., Lq, 1) bool) or value
    entry ((..., Lq, Dv) bool)."""
    return out.masked_fill(sees_bad_key | sees_bad_value, math.nan)
