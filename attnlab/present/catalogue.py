"""The metric catalogue: one entry per results key, read by every page attnlab writes (the report, the
studies' pages, `attnlab compare`, the explorer), so a number has one key, one label, one unit and one
reading wherever it appears, and a key is never renamed on its way from the code that computes it to the
page that shows it.

An entry says which side is better only where that is not a matter of taste (a lower int8 damage is
better; a higher effective rank is not plainly better or worse), so tables bold a best value only there.
`formerly` lists keys the same number had in results files written before this catalogue; readers map them
through `canonical_key` / `migrate_keys`, writers never emit them.

The formulas and papers behind each key are in the modules that compute them (`attnlab.diagnose.summary`
for the report's keys, `attnlab.experiments.compare.measure` / `scratch_measure` for compare's) and in
docs/diagnostics.md.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Better = Literal["lower", "higher"] | None
Shape = Literal["scalar", "layer", "head"]


@dataclass(frozen=True)
class Metric:
    """One results key: how a page names it, in which unit, which side is better and how to read it."""

    key: str
    label: str
    unit: str = ""  # "" for a ratio, share or count
    better: Better = None
    reading: str = ""
    shape: Shape = "scalar"  # scalar, one value per layer, or a layer x head grid
    formerly: tuple[str, ...] = ()
    short: str = ""  # a name for tight places (plot titles and axes, sentences); "" = the label


def _m(key: str, label: str, unit: str = "", better: Better = None, reading: str = "",
       shape: Shape = "scalar", formerly: tuple[str, ...] = (), short: str = "") -> Metric:
    return Metric(key, label, unit, better, reading, shape, formerly, short)


_SINK = "share of heads putting > 0.3 of their attention on token 0 (Gu et al. 2024)"
_NULL = "1 - row sum, mean over layers, heads, queries: what softmax1 / learned sinks take off the tokens"
_UNIF = ("Dong et al. 2021: near 0 = all tokens alike (rank collapse); may exceed 1 when token 0 dominates")
_INT8 = "extra NLL when weights and activations are fake-quantized to int8; 0 = no damage"

_ENTRIES: tuple[Metric, ...] = (
    # -- quality
    _m("loss_nats", "loss on the passage", "nats/token", "lower",
       "next-token cross-entropy; perplexity = e^loss"),
    _m("val_loss", "validation loss", "nats/byte", "lower"),
    _m("nll", "NLL", "nats/token", "lower"),
    _m("ppl", "perplexity", "", "lower", "e^NLL over the held-out windows; a paired comparison is a ratio"),
    _m("perplexity", "perplexity", "", "lower"),
    _m("accuracy", "accuracy", "", "higher"),
    _m("loss", "task loss", "nats/token", "lower"),
    _m("loss_excess", "loss above the chain's entropy, dormant", "nats/token", "lower",
       "0 = the model predicts the bigram chain as well as it can be predicted",
       short="loss above the chain's entropy"),
    _m("backcopy_acc", "backcopy accuracy at triggers", "", "higher", short="backcopy accuracy"),
    # -- sinks and entropy
    _m("first_token_attn", "attention on token 0 (queries >= 1, mean over layers and heads)", "", "lower",
       "the weight queries put on the first token; large = an attention sink",
       formerly=("token0_attention",), short="attention on token 0"),
    _m("first_token_layer", "attention on token 0", "", None, "mean over heads and queries >= 1, per layer",
       "layer", formerly=("token0_layer",)),
    _m("first_token_heads", "attention on token 0", "", None, "mean over queries >= 1, per layer and head",
       "head", formerly=("token0_heads",)),
    _m("first_token_dormant", "attention on the first token, dormant queries", "", None,
       "Bigram-Backcopy: where the sink grows (Guo et al. 2024)", short="first-token attention, dormant"),
    _m("first_token_active", "attention on the first token, active (trigger) queries",
       short="first-token attention, active"),
    _m("first_query_weight", "query 0's weight on itself", "", None,
       "query 0 sees one key: softmax gives it 1, softmax1 e^s / (1 + e^s) by construction"),
    _m("sink_rate", "sink rate (share of heads, eps = 0.3)", "", "lower", _SINK, short="sink rate"),
    _m("sink_rate_layer", "sink rate (share of heads, eps = 0.3)", "", None, _SINK, "layer",
       short="sink rate"),
    _m("null_sink_mass", "weight on no key (1 - row sum)", "", None, _NULL, formerly=("null_mass",),
       short="weight on no key"),
    _m("null_sink_mass_layer", "weight on no key (1 - row sum)", "", None, _NULL, "layer",
       formerly=("null_mass_layer",), short="weight on no key"),
    _m("null_sink_mass_heads", "weight on no key (1 - row sum)", "", None, _NULL, "head",
       formerly=("null_mass_heads",), short="weight on no key"),
    _m("clipped_mass", "weight clipped away", "", None, "clipped softmax's weight below 0 or above 1"),
    _m("entropy_norm", "attention entropy / log(keys)", "", None, "1 = spread evenly; 0 = one key"),
    _m("entropy_layer", "attention entropy / log(keys)", "", None, "1 = spread evenly; 0 = one key", "layer"),
    _m("entropy_nats_layer", "attention entropy", "nats", None,
       "mean over heads and queries, rows renormalised to sum 1", "layer"),
    # -- norms, massive activations, outliers
    _m("resid_norm", "mean residual norm ||h|| (tokens >= 1)", "", None,
       "per layer; token 0 left out, its massive norm would hide the growth with depth", "layer"),
    _m("resid_norm_last", "residual norm, last layer"),
    _m("norm_growth_per_layer", "residual norm growth per block (fit, blocks only)", "", None,
       "> 1: the stream grows geometrically with depth (Heimersheim & Turner 2023)",
       short="norm growth per block"),
    _m("norm_growth", "residual norm growth per layer"),  # written before 2025-11; read, never written
    _m("norm_first_over_rest_last", "token-0 norm / other tokens, last block", "", None,
       ">> 1: position 0 carries massive activations (an attention sink)"),
    _m("resid_peak", "residual peak on token 0 (norm / median)", short="token-0 residual peak"),
    _m("resid_peak_layer", "residual peak on token 0 (norm / median)", shape="layer",
       short="token-0 residual peak"),
    _m("value_drain", "value norm of token 0 / median (small = drain)", short="token-0 value norm / median"),
    _m("kurtosis", "activation kurtosis", shape="layer"),
    _m("kurtosis_max", "activation kurtosis (max over layers)", "", "lower",
       "Gaussian = 3; hundreds = outlier features (Bondarenko et al. 2023)"),
    _m("kurtosis_mean", "activation kurtosis (mean over layers)", "", "lower"),
    _m("kurtosis_token", "per-token kurtosis (tokens >= 1)", "", "lower",
       "kurtosis of each token's hidden vector, mean over tokens >= 1 and layers; Gaussian = 3",
       short="per-token kurtosis"),
    _m("kurtosis_token_layer", "per-token kurtosis", shape="layer"),
    _m("kurtosis_tok0", "kurtosis of token 0"),
    _m("kurtosis_pooled_ex0", "pooled kurtosis without token 0 (mean over layers)",
       short="pooled kurtosis, tokens >= 1"),
    _m("kurtosis_pooled_ex0_max", "pooled kurtosis without token 0 (max over layers)",
       short="pooled kurtosis, tokens >= 1 (max)"),
    _m("max_abs", "max |activation|", "", "lower",
       "Sun et al. 2024 call > 100 and > 1000x the median massive"),
    _m("max_abs_layer", "max |activation|", shape="layer"),
    _m("max_abs_where", "where max |activation| is", "", None, "{layer, sequence, token, dim} of max_abs"),
    _m("massive_ratio", "top |activation| / median", "", "lower"),
    _m("massive_ratio_layer", "top |activation| / median", shape="layer"),
    _m("massive_tok0", "max |activation| / median, token 0", "", "lower", short="max |h| / median, token 0"),
    _m("massive_tok0_layer", "max |activation| / median, token 0", shape="layer",
       short="max |h| / median, token 0"),
    _m("massive_rest", "max |activation| / median, other tokens", short="max |h| / median, tokens >= 1"),
    # -- quantization
    _m("quant_gap", "int8 W8A8 loss gap", "nats", "lower", _INT8),
    _m("quant_w8a8_delta_ppl", "perplexity cost of int8 W8A8", "", "lower",
       "per-tensor int8 weights + activations, fake-quantized"),
    _m("quant_w8_delta_ppl", "perplexity cost of int8 weights", "", "lower",
       "per-tensor int8 weights, activations in full precision, fake-quantized"),
    _m("quant_a8_delta_ppl", "perplexity cost of int8 activations", "", "lower",
       "per-tensor int8 activations, weights in full precision, fake-quantized"),
    _m("int8_w8a8", "int8 W8A8 damage, ΔNLL", "nats", "lower", _INT8, short="int8 W8A8 ΔNLL"),
    _m("int8_w8a8_token", "int8 W8A8 per-token damage, ΔNLL", "nats", "lower", _INT8,
       short="per-token int8 ΔNLL"),
    _m("int8_static", "int8 W8A8 static-range damage, ΔNLL", "nats", "lower",
       "activation ranges calibrated once on held-out windows, as a deployed model would",
       short="static int8 ΔNLL"),
    _m("int8_damage", "int8 W8A8 damage, ΔNLL", "nats", "lower", _INT8, short="int8 W8A8 ΔNLL"),
    # -- uniformity and rank
    _m("uniformity", "uniformity ratio", "", None, _UNIF, "layer"),
    _m("uniformity_last", "uniformity ratio, last layer", "", None, _UNIF),
    _m("uniformity_excl_first_last", "uniformity ratio, last layer, without token 0", "", None,
       "the ratio of the ordinary tokens"),
    _m("uniformity_last_no_skip", "uniformity ratio, last layer, skips removed", "", None,
       "outer skip paths removed (each MLP still reads x inside its block); Dong et al. predict a fall"),
    _m("uniformity_last_pure_attention", "uniformity ratio, last layer, pure attention", "", None,
       "no skips and no MLPs: Dong et al.'s collapse"),
    _m("effective_rank", "effective rank", shape="layer"),
    _m("effective_rank_last", "effective rank, last layer"),
    # -- sensitivity and Lipschitz
    _m("sensitivity_first_over_last", "sensitivity to token 0 / to last token", "", None,
       "how much more the final state feels token 0 than the latest token (Barbero et al. 2024)",
       short="sensitivity, token 0 / last"),
    _m("lipschitz_max_len", "local Lipschitz constant at the longest length", "", "lower"),
    _m("lipschitz_model_max_len", "local Lipschitz constant of the model at the longest length", "", "lower",
       "spectral norm of the whole model's Jacobian at the longest length the report measured",
       short="model Lipschitz constant, longest length"),
    _m("lipschitz_exponent", "Lipschitz growth exponent (L ~ n^a)", "", "lower",
       "local Lipschitz constant ~ n^a over the lengths measured (Castin et al. 2024)"),
    _m("layer", "layer"),
)

CATALOGUE: dict[str, Metric] = {m.key: m for m in _ENTRIES}
_FORMERLY: dict[str, str] = {old: m.key for m in _ENTRIES for old in m.formerly}


def metric(key: str) -> Metric:
    """The catalogue entry of `key` (a former key finds its entry); KeyError naming close keys if none."""
    found = CATALOGUE.get(canonical_key(key))
    if found is None:
        close = difflib.get_close_matches(str(key), list(CATALOGUE), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no metric {key!r} in attnlab.present.catalogue{hint}")
    return found


def _named(key: str, short: bool) -> str:
    """Key's label (or short name, when asked and it has one) with its unit in parentheses; the key itself
    when the catalogue has no entry for it."""
    entry = CATALOGUE.get(canonical_key(key))
    if entry is None:
        return key
    name = (short and entry.short) or entry.label
    return f"{name} ({entry.unit})" if entry.unit else name


def label(key: str) -> str:
    """How a page names a results key: its label with the unit in parentheses where it has one ("val_loss"
    -> "validation loss (nats/byte)"); the key itself when the catalogue has none."""
    return _named(key, short=False)


def short_label(key: str) -> str:
    """A name for tight places (a plot panel's title or axis, a sentence): the entry's short name (its label
    when it has none) with the unit in parentheses; the key itself when the catalogue has none."""
    return _named(key, short=True)


def lower_is_better(keys: Iterable[str] | None = None) -> frozenset[str]:
    """The keys (of `keys`, or of the whole catalogue) whose lower value is plainly better."""
    pool = CATALOGUE if keys is None else keys
    return frozenset(k for k in pool if k in CATALOGUE and CATALOGUE[k].better == "lower")


def canonical_key(key: str) -> str:
    """The key a former key became (the key itself otherwise)."""
    return _FORMERLY.get(key, key)


# A value, not a key, that names a metric: claims carry {"metric": "first_token_attn"}.
_METRIC_FIELDS = ("metric",)


def migrate_keys(obj: Any) -> Any:
    """`obj` (parsed results JSON) with every former key, and every "metric" field naming one, renamed to the
    catalogue's key. Numbers are not touched."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in _METRIC_FIELDS and isinstance(v, str):
                out[k] = _FORMERLY.get(v, v)
            else:
                out[_FORMERLY.get(k, k) if isinstance(k, str) else k] = migrate_keys(v)
        return out
    if isinstance(obj, list):
        return [migrate_keys(v) for v in obj]
    return obj


def catalogue_json(keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The entries of `keys` (or all) as plain dicts, for a page's script or a results file; "title" is
    `short_label`, so a script shows the name the Python pages would and never composes one itself."""
    chosen = CATALOGUE if keys is None else {k: metric(k) for k in keys}
    return {k: {**{f: v for f, v in asdict(m).items() if f not in ("key", "formerly")},
                "title": short_label(k)} for k, m in chosen.items()}


LABELS: dict[str, str] = {k: label(k) for k in CATALOGUE}

__all__ = ["CATALOGUE", "LABELS", "Metric", "canonical_key", "catalogue_json", "label", "lower_is_better",
           "metric", "migrate_keys", "short_label"]
