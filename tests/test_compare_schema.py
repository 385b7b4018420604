"""`attnlab compare` writes the catalogue's metric keys end to end, and reads schema-2 parts and results files
(written under token0_attention / null_mass*) as schema 3."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from attnlab.experiments.compare import PRESETS, run
from attnlab.experiments.compare.schema import SCHEMA_VERSION, metric_keys, read_results, rewrite
from attnlab.experiments.compare.scratch_config import SCRATCH_PRESETS
from attnlab.present.catalogue import CATALOGUE, canonical_key, label, metric

BOTH = replace(PRESETS["smoke"], arms=("pretrained", "softmax", "softmax1"), part="both",
               scratch=replace(SCRATCH_PRESETS["smoke"], arms=("softmax", "softmax1", "clipped"), seeds=(0,),
                               workers=1))
# the keys schema 2 wrote for the catalogue's keys (the catalogue's `formerly`)
SCHEMA2 = {m.key: m.formerly[0] for m in CATALOGUE.values() if m.formerly}


def _as_schema2(obj):  # noqa: ANN001, ANN202
    if isinstance(obj, dict):
        return {SCHEMA2.get(k, k): SCHEMA2.get(v, v) if k == "metric" and isinstance(v, str)
                else _as_schema2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_schema2(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare-both")
    run(BOTH, out, progress=False)
    return out, json.loads((out / "results.json").read_text())


def _assert_catalogue_keys(keys: set[str]) -> None:
    for key in keys:
        metric(key)  # KeyError naming close keys if compare wrote a key the catalogue lacks
        assert canonical_key(key) == key, f"{key} is a former key of {canonical_key(key)}"


def test_every_metric_key_compare_writes_is_a_catalogue_key(both: tuple[Path, dict]) -> None:
    _, doc = both
    assert doc["schema_version"] == SCHEMA_VERSION == 3
    keys = metric_keys(doc)
    assert {"first_token_attn", "first_token_layer", "first_token_heads", "null_sink_mass",
            "null_sink_mass_layer", "null_sink_mass_heads", "first_token_dormant", "clipped_mass"} <= keys
    _assert_catalogue_keys(keys)


def test_every_key_compare_measures_or_tabulates_is_a_catalogue_key() -> None:
    from attnlab.experiments.compare import analysis, measure, retrofit_figures, scratch_claims
    from attnlab.experiments.compare.page_parts import SCRATCH_TABLE

    keys = {*analysis.METRICS, *analysis.TABLE_METRICS, *analysis.EFFECT_METRICS, *analysis.PREMISES,
            *(spec[0] for spec in analysis.PREMISES.values()), *(p[1] for p in analysis.PRIMARY),
            *(e[1] for e in analysis.EXPLORATORY), *measure.WINDOW_KEYS, *measure.QUANT_KEYS,
            *measure.LAYER_KEYS, *measure.HEAD_KEYS, *scratch_claims.METRICS, *SCRATCH_TABLE,
            *(p[1] for p in scratch_claims.PRIMARY), *(e[0] for e in scratch_claims.EXPLORATORY),
            *(k for k, _ in retrofit_figures.LAYER_PLOTS), "nll"}
    _assert_catalogue_keys(keys)


def test_a_schema2_part_resumes_under_the_catalogue_keys(both: tuple[Path, dict], tmp_path: Path) -> None:
    out, doc = both
    for sub in ("parts", "scratch/parts"):
        shutil.copytree(out / sub, tmp_path / sub)
    written = 0
    for path in (tmp_path / "parts").glob("*.json"):
        stored = json.loads(path.read_text())
        old = {**stored, "result": _as_schema2(stored["result"])}
        written += old != stored
        path.write_text(json.dumps(old))
    assert written == 4  # two step-0 groups, two trained arms: each had renamed keys
    again = run(BOTH, tmp_path, progress=False)
    assert again["parts"]["computed"] == []
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["scratch"] == doc["scratch"] and again["claims"] == doc["claims"]
    assert {**again["retrofit"], "seconds": 0} == {**doc["retrofit"], "seconds": 0}


def test_a_schema2_results_file_reads_and_reassembles_with_the_same_numbers(both: tuple[Path, dict],
                                                                            tmp_path: Path) -> None:
    from attnlab.experiments.compare.markdown import tables

    _, doc = both
    old = {**_as_schema2(doc), "schema_version": 2}
    assert "token0_attention" in old["retrofit"]["arms"][0]["metrics"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    read = read_results(tmp_path)
    assert read["retrofit"]["arms"] == doc["retrofit"]["arms"] and read["scratch"] == doc["scratch"]
    assert label("first_token_attn") in tables(read)
    rewrite(tmp_path)
    new = json.loads((tmp_path / "results.json").read_text())
    assert new["schema_version"] == 3 and new["migrated_from_schema"] == 2
    assert {k: v for k, v in new.items() if k != "migrated_from_schema"} == doc
    html = (tmp_path / "compare.html").read_text()
    assert label("null_sink_mass") in html and "token0_attention" not in html
