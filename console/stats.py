"""Small statistics for live data: percentiles, histogram quantiles, counter rates.

Pure functions on plain numbers and :class:`~console.models.Histogram` records, so that the
figures on screen can be checked against hand-computed values in tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from console.models import Histogram

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


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
    """Increase of a counter between two scrapes; a drop means the process restarted."""
    return current - previous if current >= previous else current


def histogram_delta(current: Histogram, previous: Histogram | None) -> Histogram:
    """Observations made between two scrapes of the same cumulative histogram."""
    if previous is None:
        return current
    if current.count < previous.count:  # the engine restarted: counting began again
        return current
    before = dict(previous.buckets)
    return Histogram(
        buckets=tuple((le, count - before.get(le, 0.0)) for le, count in current.buckets),
        sum=current.sum - previous.sum,
        count=current.count - previous.count,
    )


def histogram_quantile(hist: Histogram | None, q: float) -> float | None:
    """Estimate the ``q`` quantile (0..1) the way PromQL's ``histogram_quantile`` does.

    Linear interpolation inside the bucket holding the rank; when the rank falls in the
    ``+Inf`` bucket the highest finite bound is returned.
    """
    if hist is None or not hist.buckets:
        return None
    total = hist.buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in hist.buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def merge_histograms(hists: Sequence[Histogram]) -> Histogram | None:
    """Add histograms with the same bucket bounds (one per node behind an endpoint)."""
    if not hists:
        return None
    buckets: dict[float, float] = {}
    for hist in hists:
        for le, count in hist.buckets:
            buckets[le] = buckets.get(le, 0.0) + count
    return Histogram(
        buckets=tuple(sorted(buckets.items())),
        sum=sum(h.sum for h in hists),
        count=sum(h.count for h in hists),
    )


def sparkline(
    values: Sequence[float],
    width: int = 12,
    low: float | None = None,
    high: float | None = None,
) -> str:
    """Unicode block sparkline of the last ``width`` values (empty when no data).

    ``low``/``high`` fix the scale (0..100 for a percentage); by default it fits the data.
    """
    recent = list(values)[-width:]
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
