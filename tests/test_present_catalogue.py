"""The metric catalogue: one entry per key, former keys map to one entry each, migration renames keys only."""

from __future__ import annotations

import pytest

from attnlab.present import LABELS, label
from attnlab.present.catalogue import (
    CATALOGUE,
    canonical_key,
    catalogue_json,
    lower_is_better,
    metric,
    migrate_keys,
)


def test_every_entry_is_whole_and_former_keys_are_not_current_keys() -> None:
    formerly = [old for m in CATALOGUE.values() for old in m.formerly]
    assert len(formerly) == len(set(formerly))
    assert not set(formerly) & set(CATALOGUE)
    for key, m in CATALOGUE.items():
        assert m.key == key and m.label.strip() == m.label and m.label
        assert m.better in ("lower", "higher", None)
        assert m.shape in ("scalar", "layer", "head")


def test_token0_attention_has_one_key() -> None:
    # The same number was token0_attention in compare and first_token_attn in the report.
    assert canonical_key("token0_attention") == "first_token_attn"
    assert metric("token0_attention") is metric("first_token_attn")
    assert label("token0_attention") == label("first_token_attn")
    assert canonical_key("first_token_attn") == "first_token_attn"


def test_label_carries_the_unit_and_falls_back_to_the_key() -> None:
    assert label("val_loss") == "validation loss (nats/byte)"
    assert label("int8_w8a8").endswith("(nats)")
    assert label("no_such_key") == "no_such_key"
    assert LABELS["val_loss"] == label("val_loss")


def test_unknown_metric_names_close_keys() -> None:
    with pytest.raises(KeyError, match="first_token_attn"):
        metric("first_token_atn")


def test_lower_is_better_only_where_an_entry_says_so() -> None:
    assert "int8_w8a8" in lower_is_better()
    assert "effective_rank_last" not in lower_is_better()
    assert lower_is_better(["ppl", "uniformity_last", "unknown"]) == {"ppl"}


def test_migration_renames_keys_and_metric_fields_not_numbers_or_other_strings() -> None:
    doc = {"schema_version": 2, "claims": [{"metric": "token0_attention", "claim": "token0_attention falls",
                                            "value": 0.25}],
           "arms": {"softmax": {"token0_attention": [0.5, 0.25], "null_mass_heads": [[0.0]], "nll": 3.0}},
           "note": "null_mass"}
    out = migrate_keys(doc)
    assert out["claims"][0] == {"metric": "first_token_attn", "claim": "token0_attention falls",
                                "value": 0.25}
    assert out["arms"]["softmax"] == {"first_token_attn": [0.5, 0.25], "null_sink_mass_heads": [[0.0]],
                                      "nll": 3.0}
    assert out["note"] == "null_mass"
    assert doc["claims"][0]["metric"] == "token0_attention"  # the input is left as it was


def test_catalogue_json_is_plain_and_complete_for_the_keys_asked() -> None:
    js = catalogue_json(["first_token_layer", "uniformity"])
    assert set(js) == {"first_token_layer", "uniformity"}
    assert js["first_token_layer"]["shape"] == "layer" and js["first_token_layer"]["label"]
    with pytest.raises(KeyError):
        catalogue_json(["nope"])


def test_short_label_is_for_tight_places_and_falls_back_to_the_label() -> None:
    from attnlab.present.catalogue import short_label

    assert short_label("first_token_attn") == "attention on token 0"
    assert short_label("int8_w8a8") == "int8 W8A8 ΔNLL (nats)"  # the unit stays
    assert short_label("val_loss") == label("val_loss")  # no short name: the label
    assert short_label("no_such_key") == "no_such_key"
    for m in CATALOGUE.values():
        assert len(short_label(m.key)) <= 48, m.key  # fits a plot panel's title
