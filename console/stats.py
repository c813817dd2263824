"""Small statistics for live data: percentiles, counter increases, histogram quantiles.

Pure functions on plain numbers and :class:`~console.models.Histogram` records. Counter and
histogram arithmetic follows PromQL (Prometheus's ``promql/quantile.go`` and ``functions.go``)
so that a figure on screen can be checked against ``histogram_quantile(... rate(...))`` on a
real Prometheus, and against the cases of Prometheus's own test suite. No I/O, no clocks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from console.models import Histogram

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
# PromQL ignores relative differences this small between adjacent buckets: float noise.
_SMALL_DELTA = 1e-12
_MIN_NORMAL = 2.2250738585072014e-308


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def counter_delta(current: float, previous: float) -> float:
    """Increase of a counter between two consecutive samples.

    A drop means the process restarted and counted from 0 again, so the new value is all
    increase (PromQL's counter-reset rule).
    """
    return current - previous if current >= previous else current


def _almost_equal(a: float, b: float) -> bool:
    """Prometheus's ``almost.Equal`` with the histogram_quantile tolerance."""
    if a == b:
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < _MIN_NORMAL:
        return diff < _SMALL_DELTA * _MIN_NORMAL
    return diff / min(abs_sum, 1.7976931348623157e308) < _SMALL_DELTA


def _prepared(buckets: Iterable[tuple[float, float]]) -> list[list[float]]:
    """Sorted, equal bounds coalesced, small deltas ignored and counts made monotonic."""
    ordered = sorted(buckets, key=lambda b: b[0])
    merged: list[list[float]] = []
    for le, count in ordered:
        if merged and merged[-1][0] == le:  # "0.2" and "2e-1" are one bound
            merged[-1][1] += count
        else:
            merged.append([le, count])
    if not merged:
        return merged
    prev = merged[0][1]
    for bucket in merged[1:]:
        # As ensureMonotonicAndIgnoreSmallDeltas: a decrease (or float noise) is flattened,
        # and ``prev`` keeps the value the decrease was measured against.
        if bucket[1] == prev:
            continue
        if _almost_equal(prev, bucket[1]) or bucket[1] < prev:
            bucket[1] = prev
            continue
        prev = bucket[1]
    return merged


# Histograms prepared lately, by identity: the screens, the alert rules and the runbook
# checks take several quantiles of the same merged histogram each second. Each entry holds
# its histogram, so an id is not reused while its entry stands.
_PREPARED: dict[int, tuple[Histogram, list[list[float]]]] = {}
_PREPARED_ENTRIES = 4096


def _prepared_of(hist: Histogram) -> list[list[float]]:
    """:func:`_prepared` of ``hist``'s buckets, remembered (the result is never changed)."""
    entry = _PREPARED.get(id(hist))
    if entry is not None and entry[0] is hist:
        return entry[1]
    if len(_PREPARED) >= _PREPARED_ENTRIES:
        _PREPARED.clear()
    prepared = _prepared(hist.buckets)
    _PREPARED[id(hist)] = (hist, prepared)
    return prepared


def _bucket_quantile(q: float, hist: Histogram) -> tuple[float, bool, float]:
    """PromQL's BucketQuantile: (value, whether the rank fell in +Inf, observations)."""
    if math.isnan(q):
        return math.nan, False, 0.0
    if q < 0:
        return -math.inf, False, 0.0
    if q > 1:
        return math.inf, False, 0.0
    if not hist.buckets:
        return math.nan, False, 0.0
    buckets = _prepared_of(hist)
    if buckets[-1][0] != math.inf:  # sorted: the highest bound is the last
        return math.nan, False, 0.0
    if len(buckets) < 2:
        return math.nan, False, 0.0
    observations = buckets[-1][1]
    if observations == 0:
        return math.nan, False, 0.0
    rank = q * observations
    # The first bucket holding the rank, searched among all but +Inf (sort.Search).
    b = next((i for i, (_, c) in enumerate(buckets[:-1]) if c >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0], True, observations
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0], False, observations
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / count), False, observations


def histogram_quantile(q: float, hist: Histogram) -> float:
    """The ``q`` quantile (0..1) of a cumulative histogram, exactly as PromQL computes it.

    NaN without a +Inf bucket, with only a +Inf bucket, or with no observations; -Inf/+Inf
    for q < 0 / q > 1. Buckets are sorted, equal bounds coalesced and counts made monotonic;
    the count is the +Inf bucket's. Linear interpolation inside the bucket holding the rank,
    from 0 in the lowest bucket when its bound is positive; the highest finite bound when the
    rank falls in the +Inf bucket.
    """
    return _bucket_quantile(q, hist)[0]


@dataclass(frozen=True)
class Quantile:
    """A quantile fit for display.

    ``floor``: the rank fell in the +Inf bucket, so the true value is above ``value`` (the
    highest finite bound) and the screen prints "> 10s". ``n``: the observations behind it.
    """

    value: float
    floor: bool
    n: float


def quantile(q: float, hist: Histogram | None) -> Quantile | None:
    """:func:`histogram_quantile` for display: None without data or where PromQL's answer is
    not a finite number (NaN; +-Inf for a ``q`` outside 0..1)."""
    if hist is None:
        return None
    value, floor, n = _bucket_quantile(q, hist)
    if not math.isfinite(value):
        return None
    return Quantile(value, floor, n)


def observations(hist: Histogram) -> float:
    """Observations in a histogram as PromQL counts them: its +Inf bucket (0 without one)."""
    return next((c for le, c in hist.buckets if le == math.inf), 0.0)


@dataclass(frozen=True)
class Merged:
    """The sum of the histograms that share bucket bounds, and the names of the others."""

    histogram: Histogram | None
    mismatched: tuple[str, ...] = ()


def merge_histograms(hists: Iterable[tuple[str, Histogram]]) -> Merged:
    """Add named histograms (series of several ranks and nodes) bucket by bucket.

    Adding buckets with different bounds gives a histogram that describes nothing, so only
    histograms with equal bounds are added: the group with the most observations wins (the
    first seen on a tie), and the names of the rest are returned as ``mismatched``.
    """
    groups: dict[tuple[float, ...], list[tuple[str, Histogram]]] = defaultdict(list)
    for name, hist in hists:
        groups[tuple(sorted({le for le, _ in hist.buckets}))].append((name, hist))
    if not groups:
        return Merged(None)
    winner = max(groups.values(), key=lambda g: sum(observations(h) for _, h in g))
    buckets: dict[float, float] = defaultdict(float)
    for _, hist in winner:
        for le, count in hist.buckets:
            buckets[le] += count
    merged = Histogram(
        buckets=tuple(sorted(buckets.items())),
        sum=sum(h.sum for _, h in winner),
        count=sum(h.count for _, h in winner),
    )
    left_out = tuple(name for g in groups.values() if g is not winner for name, _ in g)
    return Merged(merged, left_out)


def sparkline(
    values: Sequence[float],
    width: int = 12,
    low: float | None = None,
    high: float | None = None,
) -> str:
    """Unicode block sparkline of the last ``width`` finite values (empty when no data).

    ``low``/``high`` fix the scale (0..100 for a percentage); by default it fits the data.
    NaN and infinities are skipped: they have no height.
    """
    recent = [v for v in values if math.isfinite(v)][-width:]
    if not recent:
        return ""
    low = min(recent) if low is None else low
    high = max(recent) if high is None else high
    recent = [min(max(v, low), high) for v in recent]
    span = high - low
    if span <= 0:
        return SPARK_BLOCKS[0 if high == 0 else 3] * len(recent)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((v - low) / span * top)] for v in recent)
