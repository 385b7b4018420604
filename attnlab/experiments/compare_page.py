"""compare.html: attention variants side by side on every diagnostic, one column per variant.

`variants_table(variants)` is the reusable part: one row per diagnostic key (grouped, labelled through
`attnlab.present.label`), the best value of each row in bold where lower is plainly better, and every
further key that holds a per-seed statistic under "Other", so no number of the results is left out.
`compare_page(doc, out_dir)` is the page of `offbyone` (`attnlab compare`): the answer to "does adding one
to the denominator help, and with what?" computed from the numbers, the claims with their verdicts, the
table and the plots, in one self-contained file.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from attnlab.experiments.base import fmt_stat
from attnlab.experiments.html import claims_html, figures_html, smoke_banner
from attnlab.io import atomic_write_text
from attnlab.present import LABELS, Raw, bold, code, esc, page, para, section, table
from attnlab.present.catalogue import lower_is_better

GROUPS = (
    ("Quality", ("val_loss",)),
    ("Outliers and quantization", ("kurtosis_max", "kurtosis_mean", "max_abs", "massive_ratio", "quant_gap")),
    ("Sinks and entropy", ("first_token_attn", "null_sink_mass", "sink_rate", "entropy_norm")),
    ("Norms and uniformity", ("resid_norm_last", "norm_growth_per_layer", "uniformity_last",
                              "effective_rank_last")),
    ("Sensitivity and Lipschitz", ("sensitivity_first_over_last", "lipschitz_max_len", "lipschitz_exponent")),
)

# The rows whose best value is bold: the catalogue's say on which side is better (not a matter of taste).
# Only GROUPS' keys: "Other" gathers whatever else a results file holds, and stays plain.
LOWER_IS_BETTER = lower_is_better(k for _, keys in GROUPS for k in keys)


def _is_stat(x: Any) -> bool:
    return isinstance(x, Mapping) and "mean" in x


def _row(key: str, variants: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str],
         lower_is_better: Collection[str], fmt: Callable[[Mapping[str, Any]], str]) -> list[Any]:
    stats = {v: e.get(key) for v, e in variants.items()}
    best = None
    if key in lower_is_better:
        vals = sorted((s["mean"], v) for v, s in stats.items() if _is_stat(s) and s.get("mean") is not None)
        # A tie has no best (six variants at a sink rate of 0 are all equally good).
        best = vals[0][1] if len(vals) == 1 or (len(vals) > 1 and vals[0][0] < vals[1][0]) else None
    cells: list[Any] = []
    for v, s in stats.items():
        text = fmt(s) if _is_stat(s) else "–"
        cells.append(bold(text) if v == best else text)
    return [labels.get(key, key), *cells]


Groups = Sequence[tuple[str, Sequence[str]]]  # (heading, keys) in page order


def variants_table(variants: Mapping[str, Mapping[str, Any]], groups: Groups = GROUPS, *,
                   labels: Mapping[str, str] = LABELS, lower_is_better: Collection[str] = LOWER_IS_BETTER,
                   fmt: Callable[[Mapping[str, Any]], str] = fmt_stat) -> Raw:
    """variants: name -> {key: per-seed statistic {"mean", "std", "n", ...}}; one column per variant."""
    rows: list[Any] = []
    shown: set[str] = set()
    everywhere = [k for e in variants.values() for k, x in e.items() if _is_stat(x)]
    for title, keys in [*groups, ("Other", list(dict.fromkeys(everywhere)))]:
        keys = [k for k in keys if k not in shown and any(_is_stat(e.get(k)) for e in variants.values())]
        if keys:
            rows.append(title)
            rows.extend(_row(k, variants, labels, lower_is_better, fmt) for k in keys)
            shown.update(keys)
    return table(rows, ["diagnostic", *variants])


def _compare_command(doc: dict[str, Any], out_dir: Path) -> str:
    preset = doc.get("preset")
    return "attnlab compare" + (f" --preset {preset}" if preset else "") + f" --out {out_dir}"


def compare_page(doc: dict[str, Any], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    cfg = doc["config"]
    prov = doc["provenance"]["versions"]
    compute = max(doc["timings"].get("total", 0), doc["timings"].get("compute", 0))
    setup = (f"{cfg['n_layers']}-layer GPTs, d={cfg['d_model']}, {cfg['n_heads']} heads, context "
             f"{cfg['context']}, {cfg['steps']} steps of {cfg['batch_size']}x{cfg['context']} Shakespeare "
             f"bytes, seeds {doc['seeds']}; every variant sees the same data in the same order from the same "
             f"initial seed. attnlab {prov.get('attnlab', '')}, torch {prov.get('torch', '')}; compute "
             f"{compute:.0f} s. Reproduce: ")
    body = [
        smoke_banner(doc),
        para(doc["answer"]) if doc.get("answer") else "",
        para(Raw(f"{esc(setup)}{code(_compare_command(doc, out_dir))}. Bold: the best of rows where lower is "
                 "better."), "muted"),
        section("Claims", claims_html(doc["claims"], doc["verdict_rule"])),
        section("Variants side by side", variants_table(doc["results"]["variants"])),
        section("Plots", figures_html(doc["figures"], out_dir)),
        para(Raw("Full results: results.json (per seed, per layer), index.html; trained models under models/ "
                 f"(open one with {code('attnlab report --model DIR')})."), "muted"),
    ]
    title = "Does adding one to the denominator help, and with what?"
    return atomic_write_text(out_dir / "compare.html", page(title, body))
