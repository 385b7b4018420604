"""The committed results files (what EXPERIMENTS.md is built from) obey the verdict rule they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnlab.experiments import STUDIES
from attnlab.experiments.base import recompute_verdict
from attnlab.experiments.rejudge import first_rule_verdict
from attnlab.experiments.verdicts import NO_VERDICT, VERDICT_RULE, VERDICTS, normalize

ROOT = Path(__file__).resolve().parents[1] / "results"
FILES = sorted(p for p in ROOT.glob("*/results.json")
               if json.loads(p.read_text()).get("study") in STUDIES)


@pytest.mark.parametrize("path", FILES, ids=[p.parent.name for p in FILES])
def test_every_claim_has_a_measured_interval_and_its_method(path):
    doc = json.loads(path.read_text())
    assert doc["claims"], path
    for c in doc["claims"]:
        res = c["result"]
        assert res["se_measured"] is True and res["method"], (path.parent.name, c["claim"], res.get("reason"))


@pytest.mark.parametrize("path", FILES, ids=[p.parent.name for p in FILES])
def test_every_verdict_is_the_engines_and_recomputes(path):
    doc = json.loads(path.read_text())
    assert doc["verdict_rule"] == VERDICT_RULE, "re-judge with python -m attnlab.experiments.rejudge"
    for c in doc["claims"]:
        assert normalize(c["verdict"]) in (*VERDICTS, NO_VERDICT), (path.parent.name, c["claim"])
        assert c["verdict"] == c["result"]["verdict"], (path.parent.name, c["claim"])
        if "rejudged" not in doc:  # written by the current code: the verdict recomputes from the file alone
            assert recompute_verdict(c) == c["verdict"], (path.parent.name, c["claim"])
        else:  # a first-rule file keeps intervals, not items: the engine's rules on the stored intervals
            assert first_rule_verdict(c)[0] == c["verdict"], (path.parent.name, c["claim"])


COMPARE = sorted(p for p in ROOT.glob("*/results.json")
                 if json.loads(p.read_text()).get("study") == "compare")


@pytest.mark.parametrize("path", COMPARE, ids=[p.parent.name for p in COMPARE])
def test_compare_claims_replay_from_the_file_with_their_holm_family(path):
    from attnlab.experiments.compare.schema import metric_keys
    from attnlab.experiments.verdicts import recompute_holm
    from attnlab.present.catalogue import canonical_key, metric

    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 3 and doc["verdict_rule"] == VERDICT_RULE
    assert not doc["smoke"], "a smoke run is plumbing: do not commit it as a result"
    for c in doc["claims"]:
        assert c["verdict"] in (*VERDICTS, NO_VERDICT) and c["data"]["per_seed"], c["claim"]
        assert recompute_verdict(c) == c["verdict"], (path.parent.name, c["claim"])
    for part in ("scratch", "retrofit"):
        family = [c for c in doc["claims"] if c.get("part") == part and c.get("primary")]
        withheld = any(c["result"].get("withheld") for c in family)
        if family and not withheld:
            assert recompute_holm(family) == [c["verdict"] for c in family], (path.parent.name, part)
    for key in metric_keys(doc):  # the catalogue's keys, none of them a former one (token0_attention ...)
        assert metric(key) and canonical_key(key) == key, (path.parent.name, key)
    if "scratch" in doc:  # the keys the issue names, each with its interval
        for arm in doc["scratch"]["arms"]:
            for key in ("first_token_dormant", "first_token_active", "null_sink_mass"):
                assert set(arm["metrics"][key]) >= {"value", "lo", "hi"}, (arm["name"], key)
