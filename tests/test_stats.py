"""Measured intervals: t quantiles against tables, coverage by simulation, the paired block bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnlab.experiments.stats import (
    _block_indices,
    bootstrap,
    equivalence,
    excludes,
    mean_interval,
    t_interval,
    t_quantile,
)

# Student's t quantiles from printed tables (Abramowitz & Stegun 26.7), 7 significant digits.
TABLE = {(0.975, 1): 12.70620, (0.975, 2): 4.302653, (0.975, 3): 3.182446, (0.975, 4): 2.776445,
         (0.975, 9): 2.262157, (0.975, 29): 2.045230, (0.95, 4): 2.131847, (0.995, 5): 4.032143,
         (0.95, 120): 1.657651}


@pytest.mark.parametrize(("p", "df"), sorted(TABLE))
def test_t_quantile_matches_tables(p: float, df: int) -> None:
    assert t_quantile(p, df) == pytest.approx(TABLE[(p, df)], rel=2e-6)
    assert t_quantile(1 - p, df) == pytest.approx(-TABLE[(p, df)], rel=2e-6)


def test_t_interval_covers_the_mean_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    trials = 2000
    for _ in range(trials):
        iv = t_interval(rng.normal(3.0, 2.0, size=3).tolist())
        hits += iv["lo"] < 3.0 < iv["hi"]
    assert abs(hits / trials - 0.95) < 0.02  # binomial sd at 2000 trials is 0.005


def test_t_interval_records_method_and_refuses_one_seed() -> None:
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv["value"] == 2.0 and iv["n"] == 3 and "t interval over 3 seeds" in iv["method"]
    assert iv["hi"] - 2.0 == pytest.approx(t_quantile(0.975, 2) * 1.0 / math.sqrt(3))
    with pytest.raises(ValueError, match="at least 2 finite values"):
        t_interval([1.0])


def test_block_indices_are_contiguous_blocks_within_range() -> None:
    idx = _block_indices(10, 3, 50, np.random.default_rng(1))
    assert idx.shape == (50, 10) and idx.min() >= 0 and idx.max() <= 9
    for row in idx:
        for b in range(0, 9, 3):
            assert row[b + 1] == row[b] + 1 and row[b + 2] == row[b] + 2


def test_bootstrap_mean_covers_about_95_percent() -> None:
    rng = np.random.default_rng(2)
    hits = 0
    trials = 300
    for t in range(trials):
        iv = mean_interval(rng.normal(0.0, 1.0, size=60).tolist(), block=1, n_boot=400, seed=t)
        hits += iv["lo"] < 0.0 < iv["hi"]
    assert 0.89 < hits / trials < 0.99  # the percentile bootstrap runs a little narrow at n = 60


def test_paired_bootstrap_sees_a_small_shift_that_unpaired_would_miss() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(3.0, 1.0, size=80)  # per-window NLL varies a lot between windows ...
    arm = base + 0.02 + rng.normal(0, 0.005, size=80)  # ... the arm shifts every window by the same 0.02
    diff = bootstrap({"a": arm, "b": base}, lambda m: m["a"] - m["b"], what="windows")
    assert excludes(diff) and diff["lo"] > 0.01 and diff["hi"] < 0.03
    assert "80 windows" in diff["method"]
    separate = [mean_interval(arm), mean_interval(base)]
    assert separate[0]["lo"] < separate[1]["hi"]  # each arm's own interval overlaps the other's


def test_bootstrap_is_reproducible_and_rejects_bad_columns() -> None:
    cols = {"x": [1.0, 2.0, 4.0, 8.0]}
    assert bootstrap(cols, lambda m: m["x"]) == bootstrap(cols, lambda m: m["x"])
    with pytest.raises(ValueError, match="one length"):
        bootstrap({"a": [1.0, 2.0], "b": [1.0]}, lambda m: m["a"])
    with pytest.raises(ValueError, match="at least 2 windows"):
        bootstrap({"a": [1.0]}, lambda m: m["a"], what="windows")
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap({"a": [1.0, math.nan]}, lambda m: m["a"])


def test_equivalence_is_two_sided() -> None:
    assert equivalence({"lo": -0.01, "hi": 0.02}, -0.05, 0.05) == "equivalent"
    assert equivalence({"lo": -0.08, "hi": 0.02}, -0.05, 0.05) == "inconclusive"
    assert equivalence({"lo": 0.06, "hi": 0.09}, -0.05, 0.05) == "different"
    assert equivalence({"lo": -0.09, "hi": -0.06}, -0.05, 0.05) == "different"  # below counts too
    with pytest.raises(ValueError, match="lo_margin < hi_margin"):
        equivalence({"lo": 0, "hi": 1}, 0.1, 0.1)
