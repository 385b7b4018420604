"""The four per-layer curves the explorer draws, each a one-number summary of a metric of the report.

The metrics themselves live in `attnlab.diagnose` (formulas and papers in those modules' docstrings);
this file only says which summary of each the page plots. Each curve's key is the catalogue's
(`attnlab.present.catalogue`) for the same number, so the page names it as the report does. Shapes: resid
(T, d) is one layer's residual stream after the block; pattern (H, T, T) its attention weights, query
rows, key columns.

- resid_norm: mean over tokens t >= 1 of ||x_t||_2 (`diagnose.residual.norm_summary`; position 0 apart,
  its massive norm would hide the growth across depth); the summary's `resid_norm` of one sequence.
- uniformity: Dong et al. 2021's ||X - 1 mean(X)^T||_{1,inf} / ||X||_{1,inf}
  (`diagnose.uniformity.uniformity_ratio`); 0 at the rank-one limit of uniform attention.
- entropy_nats_layer: mean over heads and queries of each row's entropy in nats, rows renormalised to sum
  1 (`diagnose.attention_stats.attention_entropy`), so softmax1 / sinks rows compare as distributions. Not
  the summary's `entropy_layer`, which divides each row by log(keys seen) and skips query 0.
- first_token_layer: mean over heads of the first-token attention a_h = mean_{i>=1} p_i0
  (`diagnose.attention_stats.first_token_attention`), NOT renormalised: the weight softmax1 or a sink
  logit takes away from every key shows up here.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.diagnose.attention_stats import attention_entropy, first_token_attention
from attnlab.diagnose.residual import norm_summary
from attnlab.diagnose.uniformity import uniformity_ratio

METRIC_NAMES = ("resid_norm", "uniformity", "entropy_nats_layer", "first_token_layer")


def layer_metrics(resid: Tensor, pattern: Tensor | None) -> dict[str, float]:
    """The four curves' values for one layer; the attention ones are NaN when no pattern was recorded."""
    nan = float("nan")
    return {
        "resid_norm": norm_summary(resid)["mean"],
        "uniformity": uniformity_ratio(resid),
        "entropy_nats_layer": float(attention_entropy(pattern).mean()) if pattern is not None else nan,
        "first_token_layer": float(first_token_attention(pattern).mean()) if pattern is not None else nan,
    }
