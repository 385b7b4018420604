"""Smoke is plumbing (issue 22): a smoke run's claims are stored with no verdict. `judged(c)` still checks
the judging: the verdict the engine computed before withholding it, recomputed from the file's data."""

from __future__ import annotations

import copy
from typing import Any

from attnlab.experiments.base import SMOKE_REASON, recompute_verdict
from attnlab.experiments.verdicts import NO_VERDICT, VERDICTS


def judged(c: dict[str, Any]) -> str:
    """A smoke claim's withheld verdict (asserting it is withheld), recomputed from its stored data."""
    res = c["result"]
    assert c["verdict"] == res["verdict"] == NO_VERDICT, c["claim"]
    assert res["withheld"] is True and res["reason"] == SMOKE_REASON, c["claim"]
    assert recompute_verdict(c) == NO_VERDICT, c["claim"]
    unwithheld = copy.deepcopy(c)
    del unwithheld["result"]["withheld"]
    verdict = recompute_verdict(unwithheld)
    assert verdict in VERDICTS and verdict == res["verdict_at_95"], (c["claim"], verdict)
    return verdict
