"""Percentiles, histogram quantiles, counter rates and sparklines against hand-worked values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.models import Histogram
from console.stats import (
    counter_delta,
    histogram_delta,
    histogram_quantile,
    merge_histograms,
    percentile,
    sparkline,
)


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_stays_within_the_data(values: list[float], q: float) -> None:
    result = percentile(values, q)
    assert result is not None
    assert min(values) - 1e-6 <= result <= max(values) + 1e-6


HIST = Histogram(
    buckets=((0.1, 10.0), (0.5, 60.0), (1.0, 90.0), (float("inf"), 100.0)), sum=40.0, count=100.0
)


def test_histogram_quantile_like_promql() -> None:
    assert histogram_quantile(HIST, 0.5) == pytest.approx(0.1 + 0.4 * 40 / 50)
    assert histogram_quantile(HIST, 0.9) == pytest.approx(1.0)
    assert histogram_quantile(HIST, 0.99) == 1.0  # in +Inf: highest finite bound
    assert histogram_quantile(None, 0.5) is None
    empty = Histogram(buckets=((1.0, 0.0), (float("inf"), 0.0)), sum=0, count=0)
    assert histogram_quantile(empty, 0.5) is None


def test_histogram_delta_and_restart() -> None:
    later = Histogram(
        buckets=((0.1, 15.0), (0.5, 70.0), (1.0, 95.0), (float("inf"), 110.0)),
        sum=45.0,
        count=110.0,
    )
    delta = histogram_delta(later, HIST)
    assert delta.buckets == ((0.1, 5.0), (0.5, 10.0), (1.0, 5.0), (float("inf"), 10.0))
    assert delta.count == 10
    restarted = Histogram(buckets=((0.1, 1.0), (float("inf"), 2.0)), sum=0.3, count=2.0)
    assert histogram_delta(restarted, HIST) == restarted


def test_counter_reset_counts_from_zero() -> None:
    assert counter_delta(150, 100) == 50
    assert counter_delta(7, 100) == 7


def test_merge_histograms_adds_buckets() -> None:
    merged = merge_histograms([HIST, HIST])
    assert merged is not None
    assert merged.count == 200
    assert merged.buckets[0] == (0.1, 20.0)
    assert merge_histograms([]) is None


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 50, 100], low=0, high=100) == "▁▅█"
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], width=4) == "▁▃▆█"
    assert len(sparkline(list(range(100)), width=12)) == 12
