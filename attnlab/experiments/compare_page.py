"""compare.html: the main job's page, the attention variants of `offbyone` side by side on every diagnostic.

One self-contained file (plots inlined as PNG): the answer to "does adding one to the denominator help, and
with what?" computed from the numbers, the claims with their verdicts, a table with one column per variant
(the best value of each row in bold, where lower or higher is plainly better), and the per-layer plots.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from attnlab.experiments.base import fmt_stat
from attnlab.experiments.html import _CSS, claims_html, figures_html
from attnlab.io import atomic_write_text

# Which direction is better, for rows where that is not a matter of taste.
LOWER_IS_BETTER = {"val_loss", "quant_gap", "kurtosis_max", "kurtosis_mean", "max_abs", "massive_ratio",
                   "first_token_attn", "sink_rate", "lipschitz_max_len", "lipschitz_exponent"}

GROUPS = (
    ("Quality", ("val_loss",)),
    ("Outliers and quantization", ("kurtosis_max", "kurtosis_mean", "max_abs", "massive_ratio", "quant_gap")),
    ("Sinks and entropy", ("first_token_attn", "sink_rate", "entropy_norm")),
    ("Norms and uniformity", ("resid_norm_last", "norm_growth", "uniformity_last", "effective_rank_last")),
    ("Sensitivity and Lipschitz", ("sensitivity_first_over_last", "lipschitz_max_len", "lipschitz_exponent")),
)


def _row(key: str, label: str, variants: dict[str, Any]) -> str:
    stats = {v: e.get(key, {}) for v, e in variants.items()}
    best = None
    if key in LOWER_IS_BETTER:
        vals = [(s["mean"], v) for v, s in stats.items() if s.get("mean") is not None]
        if vals:
            best = min(vals)[1]
    cells = []
    for v, s in stats.items():
        text = html.escape(fmt_stat(s) if s else "–")
        cells.append(f"<td><b>{text}</b></td>" if v == best else f"<td>{text}</td>")
    return f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>"


def _compare_command(doc: dict[str, Any], out_dir: Path) -> str:
    preset = doc.get("preset")
    return "attnlab compare" + (f" --preset {preset}" if preset else "") + f" --out {out_dir}"


def compare_page(doc: dict[str, Any], out_dir: str | Path) -> Path:
    from attnlab.experiments.offbyone import SCALARS

    out_dir = Path(out_dir)
    variants = doc["results"]["variants"]
    head = "".join(f"<th>{html.escape(v)}</th>" for v in variants)
    body_rows = []
    for title, keys in GROUPS:
        body_rows.append(f"<tr><th colspan='{len(variants) + 1}' style='text-align:left'>{title}</th></tr>")
        body_rows.extend(_row(k, SCALARS[k], variants) for k in keys)
    cfg = doc["config"]
    prov = doc["provenance"]["versions"]
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>attnlab compare</title>
<style>{_CSS}</style></head><body>
<h1>Does adding one to the denominator help, and with what?</h1>
<p>{html.escape(doc.get('answer', ''))}</p>
<p class='muted'>{cfg['n_layers']}-layer GPTs, d={cfg['d_model']}, {cfg['n_heads']} heads,
context {cfg['context']}, {cfg['steps']} steps of {cfg['batch_size']}x{cfg['context']} Shakespeare bytes,
seeds {doc['seeds']}; every variant sees the same data in the same order from the same initial seed.
attnlab {html.escape(prov.get('attnlab', ''))}, torch {html.escape(prov.get('torch', ''))};
compute {max(doc['timings'].get('total', 0), doc['timings'].get('compute', 0)):.0f} s. Reproduce:
<code>{html.escape(_compare_command(doc, out_dir))}</code>. Bold: the best of rows where lower is better.</p>
<h2>Claims</h2>{claims_html(doc['claims'], doc['verdict_rule'])}
<h2>Variants side by side</h2><table><tr><th>diagnostic</th>{head}</tr>{''.join(body_rows)}</table>
<h2>Plots</h2>{figures_html(doc['figures'], out_dir)}
<p class='muted'>Full results: results.json (per seed, per layer), index.html; trained models under models/
(open one with <code>attnlab report --model DIR</code>).</p>
</body></html>"""
    return atomic_write_text(out_dir / "compare.html", page)
