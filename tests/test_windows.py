"""Rolling windows of engine scrapes: outages, restarts, resets and mismatched buckets.

Scrapes are vLLM-shaped exposition text parsed by the console's own parser, so what is
checked is the path a real scrape takes from ``/metrics`` to a figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest

from backends.engines import engine_stats_from_text
from console.models import EngineStats
from console.stats import histogram_quantile, quantile
from console.windows import (
    E2E,
    SUCCESS,
    EngineWindow,
    lifetime_figures,
    window_figures,
)

INF = math.inf
BOUNDS = (0.5, 1.0, 2.5, 5.0, 10.0, INF)


def _le(bound: float) -> str:
    return "+Inf" if bound == INF else repr(bound)


def scrape(
    node: str,
    ranks: Mapping[str, tuple[Mapping[str, float], Sequence[float]]],
    bounds: Sequence[float] = BOUNDS,
    inf_value: str | None = None,
) -> EngineStats:
    """/metrics of one engine: per DP rank, finished requests by reason and e2e buckets."""
    lines = [
        "# TYPE vllm:request_success_total counter",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
    ]
    for rank, (finished, cumulative) in ranks.items():
        common = f'engine="{rank}",model_name="m"'
        for reason, value in finished.items():
            lines.append(
                f'vllm:request_success_total{{{common},finished_reason="{reason}"}} {value}'
            )
        for le, count in zip(bounds, cumulative, strict=True):
            value = inf_value if le == INF and inf_value is not None else count
            lines.append(
                f'vllm:e2e_request_latency_seconds_bucket{{{common},le="{_le(le)}"}} {value}'
            )
        lines.append(f"vllm:e2e_request_latency_seconds_count{{{common}}} {cumulative[-1]}")
        lines.append(f"vllm:e2e_request_latency_seconds_sum{{{common}}} {cumulative[-1] * 0.7}")
    return engine_stats_from_text(node, "\n".join(lines) + "\n")


def steady(total: float) -> tuple[Mapping[str, float], Sequence[float]]:
    """``total`` requests so far, all between 0.5 s and 1 s."""
    return {"stop": total}, (0, total, total, total, total, total)


def test_an_outage_leaves_the_window_instead_of_diluting_the_rate() -> None:
    window = EngineWindow(max_age_s=60)
    for t in range(0, 61, 2):  # a minute at 1 req/s
        window.add(t, scrape("gpu-a1", {"0": steady(t)}))
    # Ten minutes without a scrape, then 50 req/s.
    window.add(660, scrape("gpu-a1", {"0": steady(60)}))
    assert window.rate(SUCCESS, 660, 60) is None  # one scrape: no rate yet
    assert window_figures([window], 660, 60) is None
    for t in range(662, 681, 2):
        window.add(t, scrape("gpu-a1", {"0": steady(60 + 50 * (t - 660))}))
    # Before the fix the pre-outage scrape stayed the base: 1060 requests over 620 s.
    assert window.rate(SUCCESS, 680, 60) == pytest.approx(50)
    # Pruned by age: even a longer range no longer reaches the scrapes from before.
    assert window.rate(SUCCESS, 680, 3600) == pytest.approx(50)
    figures = window_figures([window], 680, 60)
    assert figures is not None
    assert figures.requests_per_s == pytest.approx(50)
    assert figures.covered_s == 20  # what the window really spans
    assert figures.requests == 1000


def test_one_rank_restarting_gives_the_histogram_of_what_was_served() -> None:
    window = EngineWindow(max_age_s=60)
    rank0 = [1000, 1010, 1020, 1030]  # all in (0.5, 1]
    rank1 = [800, 810, 5, 15]  # all in (2.5, 5]: restarted between t=10 and t=20
    for i, t in enumerate((0, 10, 20, 30)):
        slow = rank1[i]
        window.add(
            t,
            scrape(
                "gpu-a1",
                {
                    "0": steady(rank0[i]),
                    "1": ({"stop": slow}, (0, 0, 0, slow, slow, slow)),
                },
            ),
        )
    figures = window_figures([window], 30, 60)
    assert figures is not None and figures.e2e is not None
    # 30 fast + (10 + 5 + 10) slow requests; summing ranks first gave negative deltas.
    assert figures.requests == 55
    assert dict(figures.e2e.buckets)[1.0] == 30
    assert histogram_quantile(0.5, figures.e2e) == pytest.approx(0.5 + 0.5 * 27.5 / 30)
    assert histogram_quantile(0.95, figures.e2e) == pytest.approx(2.5 + 2.5 * (52.25 - 30) / 25)
    assert figures.requests_per_s == pytest.approx(55 / 30)


def test_counter_reset_counts_the_new_value() -> None:
    window = EngineWindow(max_age_s=60)
    for t, total in zip((0, 10, 20, 30), (100, 150, 7, 20), strict=True):
        window.add(t, scrape("gpu-a1", {"0": steady(total)}))
    assert window.rate(SUCCESS, 30, 60) == pytest.approx((50 + 7 + 13) / 30)


def test_errors_count_error_and_abort_including_a_series_that_appears() -> None:
    window = EngineWindow(max_age_s=60)
    window.add(0, scrape("n", {"0": ({"stop": 100, "abort": 1}, (0, 101, 101, 101, 101, 101))}))
    window.add(10, scrape("n", {"0": ({"stop": 140, "abort": 3}, (0, 143, 143, 143, 143, 143))}))
    window.add(
        20,
        scrape("n", {"0": ({"stop": 180, "abort": 5, "error": 2}, (0, 187, 187, 187, 187, 187))}),
    )
    # Like PromQL, a series counts from its first sample: "error" appeared at t=20.
    window.add(
        30,
        scrape("n", {"0": ({"stop": 220, "abort": 5, "error": 6}, (0, 231, 231, 231, 231, 231))}),
    )
    figures = window_figures([window], 30, 60)
    assert figures is not None
    assert figures.errors_per_s == pytest.approx((4 + 4) / 30)
    assert figures.requests_per_s == pytest.approx((120 + 4 + 4) / 30)


def test_histograms_with_other_bounds_are_left_out_and_named() -> None:
    a, b = EngineWindow(max_age_s=60), EngineWindow(max_age_s=60)
    other = (1.0, 2.0, INF)
    for t in (0, 10):
        a.add(t, scrape("gpu-a1", {"0": steady(100 + 10 * t)}))
        b.add(t, scrape("gpu-a2", {"0": ({"stop": 5 * t}, (0, 5 * t, 5 * t))}, bounds=other))
    figures = window_figures([a, b], 10, 60)
    assert figures is not None and figures.e2e is not None
    assert figures.requests == 100  # gpu-a1's alone: the larger group by observations
    assert figures.mismatched == (f'gpu-a2 {E2E}{{engine="0",model_name="m"}}',)
    assert figures.requests_per_s == pytest.approx(10 + 5)  # counters need no common bounds


def test_nodes_add_up_and_cover_the_shortest_span() -> None:
    a, b = EngineWindow(max_age_s=60), EngineWindow(max_age_s=60)
    for t in range(0, 61, 10):
        a.add(t, scrape("gpu-a1", {"0": steady(10 * t)}))
    for t in (40, 50, 60):  # joined late
        b.add(t, scrape("gpu-a2", {"0": steady(1000 + 20 * t)}))
    figures = window_figures([a, b], 60, 60)
    assert figures is not None
    assert figures.requests_per_s == pytest.approx(10 + 20)
    assert figures.covered_s == 20
    assert figures.requests == 10 * 50 + 20 * 20  # (0, 60] holds a1's scrapes from t=10


def test_lifetime_figures_are_the_latest_cumulative_histograms() -> None:
    a, b = EngineWindow(max_age_s=60), EngineWindow(max_age_s=60)
    a.add(0, scrape("gpu-a1", {"0": steady(30), "1": steady(12)}))
    b.add(5, scrape("gpu-a2", {"0": steady(8)}))
    figures = lifetime_figures([a, b, EngineWindow(max_age_s=60)])
    assert figures is not None
    assert figures.covered_s is None
    assert figures.requests == 50
    assert figures.requests_per_s is None
    assert lifetime_figures([EngineWindow(max_age_s=60)]) is None


def test_a_nan_bucket_never_reaches_a_figure() -> None:
    window = EngineWindow(max_age_s=60)
    window.add(0, scrape("n", {"0": steady(100)}))
    broken = scrape("n", {"0": steady(120)}, inf_value="NaN")
    assert broken.non_finite == (
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} nan',
    )
    window.add(10, broken)
    window.add(20, scrape("n", {"0": steady(140)}))
    figures = window_figures([window], 20, 60)
    assert figures is not None and figures.e2e is not None
    assert figures.requests == 40
    p95 = quantile(0.95, figures.e2e)
    assert p95 is not None and math.isfinite(p95.value)
    # At the broken scrape alone, the series is absent: no figure rather than a wrong one.
    alone = lifetime_figures([_window_of(broken)])
    assert alone is not None and alone.e2e is None and alone.requests == 0


def _window_of(stats: EngineStats) -> EngineWindow:
    window = EngineWindow(max_age_s=60)
    window.add(0, stats)
    return window


def test_a_clock_going_back_starts_the_window_again() -> None:
    window = EngineWindow(max_age_s=60)
    window.add(100, scrape("n", {"0": steady(10)}))
    window.add(110, scrape("n", {"0": steady(20)}))
    window.add(50, scrape("n", {"0": steady(30)}))
    assert window.last_ts == 50
    assert window.rate(SUCCESS, 50, 60) is None
    assert window.latest() is not None and window.node == "n"


def test_a_second_scrape_at_the_same_instant_replaces_the_first() -> None:
    window = EngineWindow(max_age_s=60)
    window.add(0, scrape("n", {"0": steady(10)}))
    window.add(10, scrape("n", {"0": steady(20)}))
    window.add(10, scrape("n", {"0": steady(25)}))
    assert window.rate(SUCCESS, 10, 60) == pytest.approx(1.5)
