"""vLLM /metrics parsing: the vLLM docs' real samples and malformed input."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.engines import EngineError, engine_stats_from_text, fetch_metrics, parse_samples
from console.stats import histogram_quantile, quantile
from tests.conftest import FIXTURES
from tests.loopback_http import LoopbackServer
from tests.sshd import free_port

DESIGN_EXCERPT = (FIXTURES / "vllm" / "metrics-vllm-docs-design-v1-excerpt.txt").read_text()
USAGE_EXCERPT = (FIXTURES / "vllm" / "metrics-vllm-docs-usage-excerpt.txt").read_text()


MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TTFT = "vllm:time_to_first_token_seconds"


def test_docs_excerpt_parses_and_reports_the_elisions() -> None:
    stats = engine_stats_from_text("gpu-a1", DESIGN_EXCERPT)
    assert stats.model_name == MODEL
    assert stats.running == 8
    assert stats.counters["vllm:generation_tokens_total"] == {(("model_name", MODEL),): 27453}
    assert stats.counters["vllm:request_success_total"] == {
        (("finished_reason", reason), ("model_name", MODEL)): value
        for reason, value in (("stop", 1), ("length", 131), ("abort", 0))
    }
    ttft = stats.histograms[TTFT][(("model_name", MODEL),)]
    assert ttft.count == 140
    assert ttft.buckets[3] == (0.02, 13)
    # The doc authors' "..." lines are not exposition lines: skipped and reported.
    assert stats.skipped_lines == ("...", "...", "...")


def test_histogram_named_total_is_a_histogram() -> None:
    samples, skipped = parse_samples(USAGE_EXCERPT)
    names = {s.name for s in samples}
    assert "vllm:iteration_tokens_total_bucket" in names
    assert skipped == ["..."]


def test_ttft_quantile_from_docs_sample() -> None:
    stats = engine_stats_from_text("n", DESIGN_EXCERPT)
    ttft = stats.histograms[TTFT][(("model_name", MODEL),)]
    # The excerpt stops at le="0.1": without a +Inf bucket PromQL has no quantile (NaN),
    # and the console shows none rather than one from a truncated histogram.
    assert math.isnan(histogram_quantile(0.95, ttft))
    assert quantile(0.95, ttft) is None
    # With the +Inf bucket the _count line implies: rank 133 lies in (0.06, 0.08] (123..138).
    whole = replace(ttft, buckets=(*ttft.buckets, (math.inf, 140.0)))
    assert histogram_quantile(0.95, whole) == pytest.approx(0.06 + 0.02 * (133 - 123) / 15)


def test_one_malformed_line_drops_only_that_line() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} three\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 5.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m" 0.5\n'
    )
    stats = engine_stats_from_text("n", text)
    assert stats.running == 3
    assert stats.waiting == 5
    assert len(stats.skipped_lines) == 2


def test_bucket_with_a_bound_that_is_not_a_number_is_skipped() -> None:
    text = (
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4\n'
        'vllm:time_to_first_token_seconds_bucket{le="abc",model_name="m"} 5\n'
        'vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 6\n'
    )
    stats = engine_stats_from_text("n", text)
    assert stats.histograms[TTFT][(("model_name", "m"),)].buckets == ((0.1, 4), (math.inf, 6))
    assert len(stats.skipped_lines) == 1


def test_data_parallel_ranks_are_summed_and_kv_averaged() -> None:
    text = "".join(
        f'vllm:num_requests_running{{engine="{i}",model_name="m"}} {i + 1}.0\n'
        f'vllm:kv_cache_usage_perc{{engine="{i}",model_name="m"}} {0.2 * (i + 1)}\n'
        for i in range(2)
    )
    stats = engine_stats_from_text("n", text)
    assert stats.running == 3
    assert stats.kv_cache_usage == pytest.approx(0.3)


def test_text_that_is_not_prometheus_is_an_error() -> None:
    with pytest.raises(EngineError, match="no Prometheus samples"):
        engine_stats_from_text("gpu-a3", "<html>502 Bad Gateway</html>\n")


@given(st.text(max_size=400))
def test_parser_never_raises_anything_but_engine_error(text: str) -> None:
    with contextlib.suppress(EngineError):
        engine_stats_from_text("n", text)


async def test_metrics_fetch_failures_are_engine_errors_naming_node_and_url() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(EngineError, match=r"^gpu-a1: GET http://\[::1/metrics: invalid URL"):
            await fetch_metrics(client, "gpu-a1", "http://[::1")
        down = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(EngineError, match=f"^gpu-a1: GET {down}/metrics: connection refused"):
            await fetch_metrics(client, "gpu-a1", down)


def test_counters_and_histograms_are_kept_per_rank() -> None:
    text = "".join(
        f'vllm:request_success_total{{engine="{i}",finished_reason="stop",model_name="m"}} '
        f"{10 * (i + 1)}\n"
        f'vllm:e2e_request_latency_seconds_bucket{{engine="{i}",le="1.0",model_name="m"}} {i}\n'
        f'vllm:e2e_request_latency_seconds_bucket{{engine="{i}",le="+Inf",model_name="m"}} 5\n'
        f'vllm:e2e_request_latency_seconds_count{{engine="{i}",model_name="m"}} 5\n'
        f'vllm:e2e_request_latency_seconds_sum{{engine="{i}",model_name="m"}} 2.5\n'
        for i in range(2)
    )
    stats = engine_stats_from_text("n", text)
    rank = {i: (("engine", str(i)), ("model_name", "m")) for i in range(2)}
    assert stats.counters["vllm:request_success_total"] == {
        (rank[i][0], ("finished_reason", "stop"), rank[i][1]): 10.0 * (i + 1) for i in range(2)
    }
    e2e = stats.histograms["vllm:e2e_request_latency_seconds"]
    assert e2e[rank[1]].buckets == ((1.0, 1.0), (math.inf, 5.0))
    assert (e2e[rank[0]].count, e2e[rank[0]].sum) == (5.0, 2.5)


def test_non_finite_values_are_dropped_and_reported() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} +Inf\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} -Inf\n'
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} NaN\n'
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 4\n'
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} NaN\n'
        'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 6\n'
        'vllm:time_to_first_token_seconds_bucket{engine="1",le="0.1",model_name="m"} 2\n'
        'vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 3\n'
    )
    stats = engine_stats_from_text("n", text)
    assert stats.running == 3
    assert stats.waiting is None
    assert stats.counters.get("vllm:request_success_total", {}) == {}
    # Rank 0's histogram lost its +Inf bucket: the whole series is left out of this scrape.
    assert list(stats.histograms[TTFT]) == [(("engine", "1"), ("model_name", "m"))]
    assert len(stats.non_finite) == 4
    assert 'vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} nan' in (
        stats.non_finite
    )
    assert stats.skipped_lines == ()


def test_equal_bounds_spelled_differently_are_added() -> None:
    # PromQL coalesces le="0.2" and le="2e-1" (histograms.test, "mixed_bucket").
    text = "".join(
        f'x_bucket{{le="{le}"}} {n}\n'
        for le, n in (("0.2", 1), ("2e-1", 2), ("+Inf", 4), ("+inf", 1))
    )
    stats = engine_stats_from_text("n", text)
    assert stats.histograms["x"][()].buckets == ((0.2, 3.0), (math.inf, 5.0))


async def test_a_metrics_body_over_the_limit_is_an_error_naming_node_and_url() -> None:
    server = LoopbackServer()
    try:
        server.metrics_text = "vllm:num_requests_running 1\n" * 200
        async with httpx.AsyncClient() as client:
            text = await fetch_metrics(client, "gpu-a1", server.url, max_bytes=10_000)
            assert engine_stats_from_text("gpu-a1", text).running == 200
            with pytest.raises(
                EngineError,
                match=rf"^gpu-a1: GET {server.url}/metrics: body over the 1000-byte limit$",
            ):
                await fetch_metrics(client, "gpu-a1", server.url, max_bytes=1000)
    finally:
        server.close()
