"""Readable names for results keys, one map for axis labels and table rows alike: "val_loss" is shown as
"validation loss (nats/byte)" wherever it appears. A key without an entry is shown as it is.
"""

from __future__ import annotations

LABELS: dict[str, str] = {
    "layer": "layer",
    "val_loss": "validation loss (nats/byte)",
    "quant_gap": "int8 W8A8 loss gap (nats)",
    "kurtosis_max": "activation kurtosis (max over layers)",
    "kurtosis_mean": "activation kurtosis (mean over layers)",
    "kurtosis": "activation kurtosis",
    "max_abs": "max |activation|",
    "massive_ratio": "top |activation| / median",
    "first_token_attn": "attention to token 0 (mean over layers, heads)",
    "first_token_layer": "attention to token 0",
    "sink_rate": "sink rate (share of heads, eps = 0.3)",
    "sink_rate_layer": "sink rate (share of heads, eps = 0.3)",
    "null_sink_mass": "weight on the null sink (1 - row sum)",
    "entropy_norm": "attention entropy / log(keys)",
    "entropy_layer": "attention entropy / log(keys)",
    "resid_norm": "mean residual norm ||h||",
    "resid_norm_last": "residual norm, last layer",
    "norm_growth_per_layer": "residual norm growth per block (fit, blocks only)",
    "norm_growth": "residual norm growth per layer",  # the key's name in results written before 2025-11
    "uniformity": "uniformity ratio",
    "uniformity_last": "uniformity ratio, last layer",
    "effective_rank": "effective rank",
    "effective_rank_last": "effective rank, last layer",
    "sensitivity_first_over_last": "sensitivity to token 0 / to last token",
    "lipschitz_max_len": "local Lipschitz constant at the longest length",
    "lipschitz_exponent": "Lipschitz growth exponent (L ~ n^a)",
    "accuracy": "accuracy",
    "perplexity": "perplexity",
    "nll": "NLL (nats/token)",
}


def label(key: str) -> str:
    """The readable name of a results key (the key itself when it has none)."""
    return LABELS.get(key, key)
