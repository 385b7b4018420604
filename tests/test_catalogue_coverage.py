"""Every key a page shows is in the metric catalogue under its own name (issue 25): the report's summary
table and its model-level keys, the studies' tables, the explorer's curves, whatever `summarize` returns on
a tiny random model, and the "Summary keys" table of docs/diagnostics.md. A page showing a key the catalogue
lacks (or a former key) fails here instead of printing the bare key or a second name for a number."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from attnlab.present.catalogue import CATALOGUE, canonical_key, lower_is_better

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"


def _uncatalogued(keys) -> list[str]:
    return [k for k in keys if k not in CATALOGUE or canonical_key(k) != k]


def test_report_summary_rows_are_catalogued():
    from attnlab.diagnose.html import SUMMARY_ROWS

    assert SUMMARY_ROWS and _uncatalogued(SUMMARY_ROWS) == []
    assert all(CATALOGUE[k].reading for k in SUMMARY_ROWS)  # the table's "how to read it" column


def test_report_model_level_keys_are_catalogued():
    from attnlab.diagnose.report import _model_level_summary

    section = {"loss": {"nats": 3.0}, "lipschitz": {"vs_length": {"exponent": 0.5, "value": [1.0, 2.0]}},
               "quantization": {m: {"delta_ppl": 0.1} for m in ("w8a8", "w8", "a8")},
               "ablations": {m: {"ratio": [1.0, 0.5]} for m in ("no_skip", "pure_attention")},
               "sensitivity": {"norm": [2.0, 1.0]}}
    keys = _model_level_summary(section)
    assert len(keys) == 9 and _uncatalogued(keys) == []


def test_studies_keys_are_catalogued():
    from attnlab.experiments.compare_page import GROUPS
    from attnlab.experiments.offbyone import PER_LAYER, SCALARS

    grouped = [k for _, keys in GROUPS for k in keys]
    assert _uncatalogued(grouped) == []
    assert _uncatalogued(SCALARS) == [] and _uncatalogued(PER_LAYER) == []


def test_compare_page_bolds_the_rows_it_always_bolded():
    # The bold-best rows came from a hand set before the catalogue; the catalogue's "lower" entries among
    # GROUPS must be exactly that set, or the page's bold cells would move.
    from attnlab.experiments.compare_page import GROUPS, LOWER_IS_BETTER

    grouped = [k for _, keys in GROUPS for k in keys]
    assert LOWER_IS_BETTER == lower_is_better(grouped) == {
        "val_loss", "quant_gap", "kurtosis_max", "kurtosis_mean", "max_abs", "massive_ratio",
        "first_token_attn", "sink_rate", "lipschitz_max_len", "lipschitz_exponent"}


def test_explorer_curves_are_catalogued():
    from attnlab.explorer.layer_metrics import METRIC_NAMES

    assert _uncatalogued(METRIC_NAMES) == []
    assert all(CATALOGUE[k].shape == "layer" for k in METRIC_NAMES)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt"])
def test_every_summary_key_of_a_tiny_model_is_catalogued(name):
    from attnlab.diagnose.summary import summarize
    from attnlab.models.tiny import load_tiny

    lm = load_tiny(name, context=32)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cache = lm.run_with_cache(ids)
    out = summarize(cache, lm.n_layers)
    assert len(out) > 20 and _uncatalogued(out) == []


def _summary_keys_table() -> list[str]:
    """The keys named in the first column of docs/diagnostics.md's "Summary keys" table."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Summary keys"):]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past header and rule
    keys = [k for row in rows for k in re.findall(r"`([^`]+)`", row.split("|")[1])]
    assert len(rows) > 10 and len(keys) >= len(rows)
    return keys


def test_docs_summary_keys_table_names_only_catalogue_keys():
    keys = _summary_keys_table()
    assert "first_token_attn" in keys and _uncatalogued(keys) == []
