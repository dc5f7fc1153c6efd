"""Percentiles, spread and ratios for benchmark reports."""

from __future__ import annotations

import math

from orchestrator.bench.summary import fmt, mean_std, percentile, ratio


def test_percentile_interpolates_between_samples() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 4.0
    assert percentile(values, 0.5) == 2.5
    assert math.isclose(percentile(list(range(101)), 0.99), 99.0)
    assert math.isnan(percentile([], 0.5))


def test_mean_std_and_ratio_say_nan_when_there_is_nothing_to_say() -> None:
    assert mean_std([2.0, 4.0]) == (3.0, math.sqrt(2.0))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))
    assert fmt(math.nan) == "-" and fmt(1.23456, 2, " ms") == "1.23 ms"
