"""Percentiles, histogram quantiles, merges and sparklines, against Prometheus's own cases.

The PromQL cases are read from ``tests/fixtures/promql/histograms-classic.test``, a verbatim
excerpt of Prometheus's ``promqltest/testdata/histograms.test``. The reader below understands
the part of the promqltest language that excerpt uses and fails on anything else. Series are
rendered as exposition text per load timestamp and go through the console's own parser
(``engine_stats_from_text``) and rolling window (``EngineWindow``), so the whole path from
``/metrics`` text to the quantile is what is checked.

One difference is deliberate: the console's rate is the increase over the span its scrapes
cover, where PromQL's ``rate`` also extrapolates to the range's edges (see console/windows.py:
after an outage the window must read the rate of what it covers). Both scale every bucket of
a series by the same factor, so quantiles agree exactly; the one plain ``rate`` case is 0.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.engines import engine_stats_from_text
from console.models import EngineStats, Histogram, SeriesLabels
from console.stats import (
    Quantile,
    counter_delta,
    histogram_quantile,
    merge_histograms,
    percentile,
    quantile,
    sparkline,
)
from console.windows import EngineWindow
from tests.conftest import FIXTURES

INF = math.inf
PROMQL_CASES = FIXTURES / "promql" / "histograms-classic.test"
LOOKBACK_S = 300.0  # Prometheus's default lookback delta for instant selectors


# -- a reader for the promqltest subset in the fixture ----------------------------------------


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)([smh])", text)
    if not match:
        raise ValueError(f"duration {text!r}")
    return int(match[1]) * units[match[2]]


def _expand(values: str) -> list[float]:
    """promqltest's series notation: ``a+bxN``, ``a-bxN``, ``axN`` and plain numbers."""
    out: list[float] = []
    for token in values.split():
        if match := re.fullmatch(r"(-?[\d.]+)([+-][\d.]+)?x(\d+)", token):
            start, step = float(match[1]), float(match[2] or 0)
            out += [start + step * i for i in range(int(match[3]) + 1)]
        elif re.fullmatch(r"-?[\d.]+", token):
            out.append(float(token))
        else:
            raise ValueError(f"series value {token!r}")
    return out


def _labels(text: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', text))


@dataclass
class PromCase:
    line: int
    at_s: float
    expr: str
    expected: list[tuple[dict[str, str], float]] = field(default_factory=list)


@dataclass
class PromData:
    # family -> timestamp -> exposition lines
    lines: dict[str, dict[float, list[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    cases: list[PromCase] = field(default_factory=list)


def _read_script(text: str) -> PromData:
    data = PromData()
    interval: float | None = None
    case: PromCase | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw[0].isspace():
            interval, case = None, None
            if match := re.fullmatch(r"load(?:_with_nhcb)? (\w+)", line):
                interval = _seconds(match[1])
            elif match := re.fullmatch(r"eval instant at (\w+) (.+)", line):
                case = PromCase(number, _seconds(match[1]), match[2])
                data.cases.append(case)
            else:
                raise ValueError(f"{PROMQL_CASES.name}:{number}: not understood: {line}")
        elif interval is not None:
            match = re.fullmatch(r"([\w:]+)\{(.*)\}\s+(.+)", line)
            if not match:
                raise ValueError(f"{PROMQL_CASES.name}:{number}: series {line}")
            name, labels, values = match[1], match[2], match[3]
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            rendered = ",".join(f'{k}="{v}"' for k, v in _labels(labels).items())
            for i, value in enumerate(_expand(values)):
                data.lines[family][i * interval].append(f"{name}{{{rendered}}} {value}")
        elif case is not None:
            if line.startswith("expect "):
                continue  # annotations: the console has none (see SOURCES.md)
            match = re.fullmatch(r"[\w:]*(\{.*\})\s+(\S+)", line)
            if not match:
                raise ValueError(f"{PROMQL_CASES.name}:{number}: result {line}")
            case.expected.append((_labels(match[1]), float(match[2])))
    return data


DATA = _read_script(PROMQL_CASES.read_text())


def _scrapes(family: str) -> list[tuple[float, EngineStats]]:
    by_ts = DATA.lines[family]
    return [(ts, engine_stats_from_text("t", "\n".join(by_ts[ts]) + "\n")) for ts in sorted(by_ts)]


def _instant(family: str, at_s: float) -> dict[SeriesLabels, Histogram]:
    stats = [s for ts, s in _scrapes(family) if at_s - LOOKBACK_S < ts <= at_s][-1]
    return dict(stats.histograms[family])


def _window(family: str) -> EngineWindow:
    window = EngineWindow(max_age_s=INF)
    for ts, stats in _scrapes(family):
        window.add(ts, stats)
    return window


def _by(groups: str, series: dict[SeriesLabels, Histogram]) -> dict[SeriesLabels, Histogram]:
    """``sum by (le, ...)``: add the series that share the named labels (le aside)."""
    keep = {g.strip() for g in groups.split(",")} - {"le"}
    grouped: dict[SeriesLabels, list[tuple[str, Histogram]]] = defaultdict(list)
    for labels, hist in series.items():
        grouped[tuple((k, v) for k, v in labels if k in keep)].append((str(labels), hist))
    out = {}
    for labels, items in grouped.items():
        merged = merge_histograms(items)
        assert merged.histogram is not None and merged.mismatched == ()
        out[labels] = merged.histogram
    return out


SEL = r"(\w+)_bucket"
RATE = rf"rate\({SEL}\[(\w+)\]\)"


def _histograms(expr: str, at_s: float) -> dict[SeriesLabels, Histogram]:
    if match := re.fullmatch(SEL, expr):
        return _instant(match[1], at_s)
    if match := re.fullmatch(RATE, expr):
        return _window(match[1]).histogram_increases(match[1], at_s, _seconds(match[2]))
    match = re.fullmatch(rf"sum\({RATE}\) by \(([\w, ]+)\)", expr) or re.fullmatch(
        rf"sum by \(([\w, ]+)\) \({RATE}\)", expr
    )
    if match is None:
        raise ValueError(f"expression not understood: {expr}")
    groups, family, range_ = (
        (match[3], match[1], match[2]) if expr.startswith("sum(") else match.groups()
    )
    return _by(groups, _window(family).histogram_increases(family, at_s, _seconds(range_)))


def _number(text: str) -> float:
    return math.prod(float(p) ** (-1 if i else 1) for i, p in enumerate(text.split("/")))


def evaluate(case: PromCase) -> dict[frozenset[tuple[str, str]], float]:
    """The console's answer for one case, keyed like the expected result lines."""
    if match := re.fullmatch(r"histogram_quantile\(([^,]+), (.+)\)", case.expr):
        q = _number(match[1])
        return {
            frozenset(labels): histogram_quantile(q, hist)
            for labels, hist in _histograms(match[2], case.at_s).items()
        }
    if match := re.fullmatch(RATE, case.expr):
        family, range_s = match[1], _seconds(match[2])
        window = _window(family)
        span = window.span(case.at_s, range_s)
        assert span is not None
        return {
            frozenset({*labels, ("le", repr(le))}): count / (span[1] - span[0])
            for labels, hist in window.histogram_increases(family, case.at_s, range_s).items()
            for le, count in hist.buckets
        }
    raise ValueError(f"{PROMQL_CASES.name}:{case.line}: not understood: {case.expr}")


def _key(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    # A bound is a number, whatever its spelling ("0.0", "+Inf").
    return frozenset((k, repr(float(v)) if k == "le" else v) for k, v in labels.items())


def _same(expected: float, actual: float) -> bool:
    if math.isnan(expected) or math.isinf(expected):
        return math.isnan(actual) if math.isnan(expected) else expected == actual
    return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-12)  # promqltest's epsilon


def test_the_excerpt_holds_all_the_cases() -> None:
    # 41 evals were copied; a reader that lost some would pass vacuously.
    assert len(DATA.cases) == 41
    assert sum(len(c.expected) for c in DATA.cases) == 79


@pytest.mark.parametrize("case", DATA.cases, ids=lambda c: f"line{c.line}:{c.expr}")
def test_agrees_with_prometheus_test_suite(case: PromCase) -> None:
    actual = evaluate(case)
    expected = {_key(labels): value for labels, value in case.expected}
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert _same(value, actual[key]), f"{dict(key)}: expected {value}, got {actual[key]}"


# -- hand-worked cases ------------------------------------------------------------------------


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


HIST = Histogram(buckets=((0.1, 10.0), (0.5, 60.0), (1.0, 90.0), (INF, 100.0)), sum=40.0, count=100)


def test_histogram_quantile_like_promql() -> None:
    assert histogram_quantile(0.5, HIST) == pytest.approx(0.1 + 0.4 * 40 / 50)
    assert histogram_quantile(0.9, HIST) == pytest.approx(1.0)
    assert histogram_quantile(0.99, HIST) == 1.0  # in +Inf: highest finite bound
    assert histogram_quantile(0.05, HIST) == pytest.approx(0.05)  # lowest bucket starts at 0


def test_histogram_quantile_nan_cases() -> None:
    no_inf = Histogram(buckets=((0.1, 10.0), (1.0, 20.0)), sum=3.0, count=20)
    only_inf = Histogram(buckets=((INF, 20.0),), sum=3.0, count=20)
    empty = Histogram(buckets=((1.0, 0.0), (INF, 0.0)), sum=0, count=0)
    for hist in (no_inf, only_inf, empty, Histogram((), 0, 0)):
        assert math.isnan(histogram_quantile(0.5, hist))
        assert quantile(0.5, hist) is None
    assert quantile(0.5, None) is None
    assert histogram_quantile(-0.5, HIST) == -INF
    assert histogram_quantile(1.5, HIST) == INF


def test_count_is_the_inf_bucket_not_the_count_line() -> None:
    # _count disagrees with +Inf (scraped a moment apart): PromQL trusts the +Inf bucket.
    hist = Histogram(buckets=((1.0, 50.0), (2.0, 100.0), (INF, 100.0)), sum=0, count=1000)
    assert histogram_quantile(0.5, hist) == 1.0
    assert quantile(0.5, hist) == Quantile(1.0, floor=False, n=100.0)


def test_quantile_in_the_inf_bucket_is_a_floor() -> None:
    slow = Histogram(buckets=((5.0, 2.0), (10.0, 3.0), (INF, 40.0)), sum=900, count=40)
    assert quantile(0.95, slow) == Quantile(10.0, floor=True, n=40.0)
    assert quantile(0.05, slow) == Quantile(5.0, floor=False, n=40.0)


def test_non_monotonic_buckets_are_fixed_up() -> None:
    # A scrape racing the exporter: the 0.5 bucket reads less than the 0.1 bucket.
    hist = Histogram(buckets=((0.1, 30.0), (0.5, 20.0), (1.0, 40.0), (INF, 40.0)), sum=0, count=40)
    # Flattened to 30: rank 32 lies 2 of the 10 observations into (0.5, 1] (unfixed: 0.8).
    assert histogram_quantile(0.8, hist) == pytest.approx(0.6)


def test_counter_reset_counts_from_zero() -> None:
    assert counter_delta(150, 100) == 50
    assert counter_delta(7, 100) == 7


def test_merge_adds_only_equal_bounds() -> None:
    merged = merge_histograms([("a", HIST), ("b", HIST)])
    assert merged.histogram is not None
    assert merged.histogram.buckets[0] == (0.1, 20.0)
    assert merged.histogram.count == 200
    assert merged.mismatched == ()
    other = Histogram(buckets=((0.2, 5.0), (INF, 7.0)), sum=1.0, count=7)
    merged = merge_histograms([("a", HIST), ("odd", other), ("b", HIST)])
    assert merged.histogram is not None
    assert merged.histogram.buckets == tuple((le, 2 * c) for le, c in HIST.buckets)
    assert merged.mismatched == ("odd",)
    # The group with the most observations wins, whatever the order.
    big = Histogram(buckets=((0.2, 500.0), (INF, 700.0)), sum=1.0, count=700)
    merged = merge_histograms([("a", HIST), ("big", big)])
    assert merged.histogram == big
    assert merged.mismatched == ("a",)
    assert merge_histograms([]).histogram is None


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 50, 100], low=0, high=100) == "▁▅█"
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], width=4) == "▁▃▆█"
    assert len(sparkline(list(range(100)), width=12)) == 12


def test_sparkline_skips_values_that_are_not_numbers() -> None:
    # round(NaN) raised ValueError here and ended the app.
    assert sparkline([1.0, math.nan, 3.0, INF, -INF]) == "▁█"
    assert sparkline([math.nan, math.nan]) == ""
    assert sparkline([0, math.nan, 100], low=0, high=100) == "▁█"
