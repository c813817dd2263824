"""vLLM /metrics parsing: the vLLM docs' real samples and malformed input."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.engines import EngineError, engine_stats_from_text, fetch_metrics, parse_samples
from console.stats import histogram_quantile
from tests.conftest import FIXTURES
from tests.sshd import free_port

DESIGN_EXCERPT = (FIXTURES / "vllm" / "metrics-vllm-docs-design-v1-excerpt.txt").read_text()
USAGE_EXCERPT = (FIXTURES / "vllm" / "metrics-vllm-docs-usage-excerpt.txt").read_text()


def test_docs_excerpt_parses_and_reports_the_elisions() -> None:
    stats = engine_stats_from_text("gpu-a1", DESIGN_EXCERPT)
    assert stats.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert stats.running == 8
    assert stats.generation_tokens_total == 27453
    assert stats.requests_finished_total == {"stop": 1, "length": 131, "abort": 0}
    assert stats.ttft is not None
    assert stats.ttft.count == 140
    assert stats.ttft.buckets[3] == (0.02, 13)
    # The doc authors' "..." lines are not exposition lines: skipped and reported.
    assert stats.skipped_lines == ("...", "...", "...")


def test_histogram_named_total_is_a_histogram() -> None:
    samples, skipped = parse_samples(USAGE_EXCERPT)
    names = {s.name for s in samples}
    assert "vllm:iteration_tokens_total_bucket" in names
    assert skipped == ["..."]


def test_ttft_quantile_from_docs_sample() -> None:
    stats = engine_stats_from_text("n", DESIGN_EXCERPT)
    # 140 observations, rank 133 of the p95 lies in (0.06, 0.08] holding 123..138.
    assert histogram_quantile(stats.ttft, 0.95) == pytest.approx(0.06 + 0.02 * (133 - 123) / 15)


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
    assert stats.ttft is not None
    assert stats.ttft.buckets == ((0.1, 4), (float("inf"), 6))
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
