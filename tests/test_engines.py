"""Engine /metrics parsing: vLLM's real doc samples, SGLang's and TGI's, and malformed input.

The SGLang and TGI samples are partly real (SGLang's docs example) and partly constructed from
the engines' source definitions (tests/fixtures/sglang/SOURCES.md, tests/fixtures/tgi/SOURCES.md).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from backends.engines import (
    CACHED_TOKENS,
    E2E,
    GENERATION_TOKENS,
    ITL,
    PREEMPTIONS,
    PREFIX_HITS,
    PREFIX_QUERIES,
    PROMPT_TOKENS,
    QUEUE,
    SAMPLE_NAMES,
    SGLANG_COUNTERS,
    SGLANG_HISTOGRAMS,
    SUCCESS,
    TGI_HISTOGRAMS,
    TTFT,
    EngineError,
    MetricsScraper,
    detect_engine,
    engine_stats_from_text,
    fetch_metrics,
    parse_samples,
    scan_samples,
)
from console.demo.engine_metrics import EngineMetrics, FinishedRequest
from console.models import Histogram
from console.stats import histogram_quantile, quantile
from console.windows import EngineWindow, window_figures
from tests.conftest import FIXTURES
from tests.loopback_http import LoopbackServer
from tests.sshd import free_port

DESIGN_EXCERPT = (FIXTURES / "vllm" / "metrics-vllm-docs-design-v1-excerpt.txt").read_text()
USAGE_EXCERPT = (FIXTURES / "vllm" / "metrics-vllm-docs-usage-excerpt.txt").read_text()


MODEL = "meta-llama/Llama-3.1-8B-Instruct"


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


# --- SGLang and TGI ------------------------------------------------------------------------

SGLANG_SAMPLE = (FIXTURES / "sglang" / "metrics-sglang-v0.5.23-constructed.txt").read_text()
SGLANG_DOCS = (
    FIXTURES / "sglang" / "metrics-sglang-docs-production-metrics-example.txt"
).read_text()
TGI_SAMPLE = (FIXTURES / "tgi" / "metrics-tgi-v3.3.7-constructed.txt").read_text()
EXPOSITIONS = sorted(
    p for engine in ("vllm", "sglang", "tgi") for p in (FIXTURES / engine).glob("*.txt")
)
CATALOGUES = sorted(
    p for engine in ("vllm", "sglang", "tgi") for p in (FIXTURES / engine).glob("*.tsv")
)
CATALOGUES_BY_NAME = {p.name: p for p in CATALOGUES}
SG = (("engine_type", "unified"), ("model_name", MODEL))  # SGLang tokenizer-side labels


def _rank(dp: str) -> tuple[tuple[str, str], ...]:
    """An SGLang scheduler series' labels in the constructed sample (DP rank ``dp``)."""
    return (
        ("dp_rank", dp),
        ("engine_type", "unified"),
        ("model_name", MODEL),
        ("moe_ep_rank", "0"),
        ("pp_rank", "0"),
        ("tp_rank", "0"),
    )


def _streaming(value: str) -> tuple[tuple[str, str], ...]:
    return (("engine_type", "unified"), ("is_streaming", value), ("model_name", MODEL))


def _series(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    """A series as prometheus_client writes it (labels sorted, as ours are)."""
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def _bucket(hist: Histogram, bound: float) -> float:
    return dict(hist.buckets)[bound]


def _catalogue(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == len(header) for row in rows), path.name
    return [dict(zip(header, row, strict=True)) for row in rows]


@pytest.mark.parametrize("path", EXPOSITIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_exposition_fixture_parses(path: Path) -> None:
    text = path.read_text()
    stats = engine_stats_from_text("n", text)
    assert detect_engine(text) == path.parent.name
    assert stats.histograms or stats.counters
    # Only the vLLM docs' "..." elision lines are not exposition lines.
    assert set(stats.skipped_lines) <= {"..."}
    assert stats.non_finite == ()


@pytest.mark.parametrize("path", CATALOGUES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_catalogue_fixture_parses(path: Path) -> None:
    rows = _catalogue(path)
    prefix = {"vllm": "vllm:", "sglang": "sglang:", "tgi": "tgi_"}[path.parent.name]
    assert rows and all(row["family"].startswith(prefix) for row in rows)


def test_the_mapped_families_have_the_types_their_catalogues_give() -> None:
    sglang = {
        r["family"]: r
        for r in _catalogue(CATALOGUES_BY_NAME["metric-catalogue-v0.5.23-derived.tsv"])
    }
    tgi = {
        r["family"]: r
        for r in _catalogue(CATALOGUES_BY_NAME["metric-catalogue-v3.3.7-derived.tsv"])
    }
    vllm = {
        r["family"]: r
        for r in _catalogue(CATALOGUES_BY_NAME["metric-catalogue-v0.33.0-derived.tsv"])
    }
    for family, target in SGLANG_HISTOGRAMS.items():
        assert sglang[family]["type"] == "histogram", family
        assert vllm[target]["type"] == "histogram", target
    for family, target in SGLANG_COUNTERS.items():
        assert sglang[family]["type"] == "counter", family
        assert f"{family}" in sglang[family]["exposition_names"].split(",")
        assert vllm[target.removesuffix("_total")]["type"] == "counter", target
    for family, target in TGI_HISTOGRAMS.items():
        # A histogram! without a bucket matcher is exposed as a summary: none of those here.
        assert tgi[family]["exposed_type"] == "histogram", family
        assert vllm[target]["type"] == "histogram", target
    assert tgi["tgi_request_skipped_tokens"]["exposed_type"] == "summary"
    assert {tgi[n]["unit"] for n in ("tgi_request_duration", "tgi_request_queue_duration")} == {
        "Seconds"
    }


@pytest.mark.parametrize(
    ("text", "engine"),
    [
        (DESIGN_EXCERPT, "vllm"),
        (SGLANG_SAMPLE, "sglang"),
        (SGLANG_DOCS, "sglang"),
        (TGI_SAMPLE, "tgi"),
        ('x_bucket{le="+Inf"} 1\n', None),
        # Comment lines do not count, only samples.
        ("# TYPE tgi_queue_size gauge\nvllm:num_requests_running 1\n", "vllm"),
        # The most frequent prefix wins.
        ("tgi_queue_size 1\nsglang:num_queue_reqs 1\nsglang:num_running_reqs 2\n", "sglang"),
    ],
)
def test_the_engine_is_detected_from_the_sample_names(text: str, engine: str | None) -> None:
    assert detect_engine(text) == engine


def test_sglang_sample_gives_the_vllm_figures() -> None:
    stats = engine_stats_from_text("gpu-s1", SGLANG_SAMPLE)
    assert stats.model_name == MODEL
    # Two DP schedulers: requests added up, KV use averaged (0.41 and 0.27).
    assert (stats.running, stats.waiting) == (12, 3)
    assert stats.kv_cache_usage == pytest.approx(0.34)
    e2e = stats.histograms[E2E]
    assert {labels: h.count for labels, h in e2e.items()} == {
        _streaming("true"): 1684,
        _streaming("false"): 236,
    }
    assert _bucket(e2e[_streaming("true")], 6.0) == 1287
    assert _bucket(e2e[_streaming("true")], math.inf) == 1684
    ttft = stats.histograms[TTFT][_streaming("true")]
    assert (_bucket(ttft, 0.2), _bucket(ttft, 0.4), ttft.count) == (502, 1247, 1684)
    # ITL counts tokens, not requests: every generated token but each request's first.
    itl = stats.histograms[ITL][SG]
    assert (itl.count, _bucket(itl, 0.02)) == (474079, 322603)
    assert itl.count == sum(stats.counters[GENERATION_TOKENS].values()) - 1920
    queue = stats.histograms[QUEUE]
    assert {labels: h.count for labels, h in queue.items()} == {_rank("0"): 980, _rank("1"): 940}
    assert _bucket(queue[_rank("0")], 0.5) == 725
    # Finished requests, with no finish reason: SGLang does not say which failed.
    assert stats.counters[SUCCESS] == {_streaming("true"): 1684, _streaming("false"): 236}
    assert stats.counters[PREEMPTIONS] == {_rank("0"): 3}
    assert stats.counters[PROMPT_TOKENS] == {
        _streaming("true"): 2164392,
        _streaming("false"): 278417,
    }
    # SGLang's own families stay under their names too.
    assert stats.counters["sglang:num_aborted_requests_total"] == {SG: 9}
    assert stats.skipped_lines == ()


def test_sglang_docs_example_keeps_unknown_what_it_does_not_report() -> None:
    stats = engine_stats_from_text("gpu-s2", SGLANG_DOCS)
    assert (stats.model_name, stats.running, stats.waiting) == (MODEL, 162, 2826)
    assert stats.kv_cache_usage == pytest.approx(0.28)
    ttft = stats.histograms[TTFT][(("model_name", MODEL),)]
    assert (ttft.count, _bucket(ttft, 1.0), _bucket(ttft, 30.0)) == (11008, 27, 2513)
    assert stats.histograms[E2E][(("model_name", MODEL),)].count == 11228
    # That old release's time_per_output_token was a running TPOT, not the per-token ITL.
    for family in (ITL, QUEUE):
        assert family not in stats.histograms
    for family in (SUCCESS, PREEMPTIONS):
        assert family not in stats.counters


def test_tgi_sample_gives_the_vllm_figures() -> None:
    stats = engine_stats_from_text("gpu-t1", TGI_SAMPLE)
    assert stats.model_name is None  # TGI's metrics name no model
    assert (stats.running, stats.waiting) == (12, 5)
    # KV blocks held by the batch over all blocks, both in tokens: 24832 / 131072.
    assert stats.kv_cache_usage == 24832 / 131072
    e2e = stats.histograms[E2E][()]
    assert e2e.count == 1261
    assert len(e2e.buckets) == 36  # 35 geometric bounds from 0.00015 s, and +Inf
    assert e2e.buckets[0][0] == pytest.approx(0.00015)
    assert _bucket(e2e, 8.52226929923929) == 865  # seconds, as TGI records them
    assert e2e.sum == pytest.approx(9503.149684563776)
    assert _bucket(stats.histograms[QUEUE][()], 0.14778918800354002) == 925
    assert stats.counters[SUCCESS] == {
        (("finished_reason", "success"),): 1261,
        (("err", "dropped"), ("finished_reason", "abort")): 4,
        (("err", "generation"), ("finished_reason", "error")): 3,
    }  # the 7 refused at validation never reached the queue: not requests, as in vLLM
    assert stats.counters[PROMPT_TOKENS] == {(): 1406047}
    assert stats.counters[GENERATION_TOKENS] == {(): 404235}
    # TGI reports no TTFT, no per-token ITL and no preemptions: unknown, not 0.
    assert TTFT not in stats.histograms and ITL not in stats.histograms
    assert PREEMPTIONS not in stats.counters
    # The summary (no bucket matcher) is no histogram.
    assert "tgi_request_skipped_tokens" not in stats.histograms


def _edit(text: str, *changes: tuple[str, str]) -> str:
    """``text`` with each ``old`` (found exactly once) replaced by ``new``."""
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def test_tgi_request_and_error_rates_as_the_overview_computes_them() -> None:
    window = EngineWindow(max_age_s=60)
    window.add(100.0, engine_stats_from_text("n", TGI_SAMPLE))
    later = _edit(
        TGI_SAMPLE,
        ("tgi_request_success 1261", "tgi_request_success 1281"),
        ('{err="dropped"} 4', '{err="dropped"} 5'),
        ('{err="validation"} 7', '{err="validation"} 30'),
    )
    window.add(110.0, engine_stats_from_text("n", later))
    figures = window_figures([window], now=110.0, range_s=60)
    assert figures is not None
    # 20 successes and 1 client abort in 10 s; the 23 refused requests are not counted.
    assert figures.requests_per_s == pytest.approx(2.1)
    assert figures.errors_per_s == pytest.approx(0.1)
    assert (figures.ttft, figures.itl) == (None, None)
    assert window.rate(PREEMPTIONS, 110.0, 60) is None
    assert stats_engine(later) == "tgi"


def stats_engine(text: str) -> str | None:
    return engine_stats_from_text("n", text).engine


def test_each_scrape_says_whose_exporter_it_came_from() -> None:
    assert stats_engine(TGI_SAMPLE) == "tgi"
    assert stats_engine(SGLANG_SAMPLE) == "sglang"
    assert stats_engine(USAGE_EXCERPT) == "vllm"


def test_sglang_request_and_preemption_rates() -> None:
    window = EngineWindow(max_age_s=60)
    window.add(100.0, engine_stats_from_text("n", SGLANG_SAMPLE))
    finished = _series("sglang:num_requests_total", _streaming("true"))
    retracted = _series("sglang:num_retracted_requests_total", _rank("0"))
    later = _edit(
        SGLANG_SAMPLE,
        (f"{finished} 1684.0", f"{finished} 1714.0"),
        (f"{retracted} 3.0", f"{retracted} 5.0"),
    )
    window.add(110.0, engine_stats_from_text("n", later))
    figures = window_figures([window], now=110.0, range_s=60)
    assert figures is not None
    assert figures.requests_per_s == pytest.approx(3.0)
    # SGLang's request counter says nothing of how requests ended: errors unknown, not 0.
    assert figures.errors_per_s is None
    assert window.rate(PREEMPTIONS, 110.0, 60) == pytest.approx(0.2)


def test_sglang_copies_of_one_scheduler_are_counted_once() -> None:
    base = 'engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0"'
    text = (
        "# TYPE sglang:num_running_reqs gauge\n"
        # --enable-metrics-for-all-schedulers: TP ranks 0 and 1 report the same scheduler.
        f'sglang:num_running_reqs{{{base},priority="",tp_rank="0"}} 6.0\n'
        f'sglang:num_running_reqs{{{base},priority="",tp_rank="1"}} 6.0\n'
        # Priority scheduling: the total is priority="", the rest break it down.
        f'sglang:num_running_reqs{{{base},priority="1",tp_rank="0"}} 4.0\n'
        f'sglang:num_running_reqs{{{base},priority="2",tp_rank="0"}} 2.0\n'
        "# TYPE sglang:num_queue_reqs gauge\n"
        f'sglang:num_queue_reqs{{dp_rank="0",{base},tp_rank="0"}} 2.0\n'
        f'sglang:num_queue_reqs{{dp_rank="1",{base},tp_rank="0"}} 3.0\n'
        "# TYPE sglang:num_retracted_requests_total counter\n"
        f'sglang:num_retracted_requests_total{{{base},priority="",tp_rank="1"}} 4.0\n'
        f'sglang:num_retracted_requests_total{{{base},priority="",tp_rank="0"}} 4.0\n'
    )
    stats = engine_stats_from_text("n", text)
    assert stats.running == 6
    assert stats.waiting == 5  # two DP schedulers, each with its own queue
    assert list(stats.counters[PREEMPTIONS].values()) == [4]
    assert dict(next(iter(stats.counters[PREEMPTIONS])))["tp_rank"] == "0"
    assert stats.kv_cache_usage is None  # no token_usage gauge: unknown, not 0


def test_tgi_without_type_lines_and_before_warm_up() -> None:
    # No # TYPE lines: counters keep TGI's bare names; no max_total_tokens (v2 backend).
    text = (
        "tgi_request_success 5\n"
        'tgi_request_failure{err="overloaded"} 2\n'
        "tgi_batch_current_max_tokens 800\n"
    )
    stats = engine_stats_from_text("n", text)
    assert stats.counters[SUCCESS] == {(("finished_reason", "success"),): 5}
    assert stats.kv_cache_usage is None
    # Gauges appear only once set: a TGI that has run no batch yet reports none.
    assert (stats.running, stats.waiting) == (None, None)


@pytest.mark.parametrize(
    ("text", "figure"),
    [
        (
            "# TYPE tgi_queue_size gauge\ntgi_queue_size 4\ntgi_queue_size{ 9\n"
            "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 2\n",
            "waiting",
        ),
        (
            '# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{model_name="m"} 4\n'
            'sglang:num_queue_reqs{model_name="m"} four\n'
            '# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{model_name="m"} 2\n',
            "waiting",
        ),
    ],
    ids=["tgi", "sglang"],
)
def test_a_malformed_line_drops_that_line_only_for_every_engine(text: str, figure: str) -> None:
    stats = engine_stats_from_text("n", text)
    assert (getattr(stats, figure), stats.running) == (4, 2)
    assert len(stats.skipped_lines) == 1


def test_a_malformed_bucket_line_in_a_tgi_histogram_keeps_the_rest() -> None:
    lines = TGI_SAMPLE.splitlines()
    at = lines.index('tgi_request_duration_bucket{le="8.52226929923929"} 865')
    lines[at] = 'tgi_request_duration_bucket{le="8.52226929923929" 865'
    stats = engine_stats_from_text("n", "\n".join(lines) + "\n")
    assert stats.skipped_lines == ('tgi_request_duration_bucket{le="8.52226929923929" 865',)
    e2e = stats.histograms[E2E][()]
    assert 8.52226929923929 not in dict(e2e.buckets)
    assert (e2e.count, stats.running) == (1261, 12)


def test_a_vllm_scrape_gets_no_families_added() -> None:
    stats = engine_stats_from_text("n", DESIGN_EXCERPT)
    assert set(stats.histograms) == {TTFT}
    assert set(stats.counters) == {"vllm:generation_tokens_total", "vllm:request_success_total"}


# -- asking for only the samples the console reads (?name[]=...) ---------------------------


class _Parsed(Collector):
    """A registry collector serving the families parsed from a text exposition."""

    def __init__(self, text: str) -> None:
        # An excerpt's "..." lines: the console skips them, a real server never sends them.
        _, skipped = parse_samples(text)
        kept = "\n".join(line for line in text.splitlines() if line.strip() not in skipped)
        self.families = list(text_string_to_metric_families(kept + "\n"))

    def collect(self) -> list:
        return self.families


def _as_served(text: str, names: tuple[str, ...]) -> str:
    """What prometheus_client's exposition (vLLM's, SGLang's) serves for ``?name[]=...``."""
    registry = CollectorRegistry(auto_describe=True)  # names from collect(), as vLLM registers
    registry.register(_Parsed(text))
    return generate_latest(registry.restricted_registry(names)).decode()


def _demo_engine_text() -> str:
    """A demo engine's real prometheus_client registry after a few requests."""
    metrics = EngineMetrics("m", 8192, {"block_size": "16"})
    metrics.set_scheduler_state(3, 2, 0.4)
    for i in range(5):
        metrics.admitted(1000 + i, 200)
        metrics.first_token(1000 + i, 0.05 * i)
        metrics.finished(
            FinishedRequest(
                "stop" if i else "abort",
                1000 + i,
                50,
                64,
                800,
                1.0 + i,
                0.01 * i,
                0.05 * i,
                0.9,
                i % 2,
            )
        )
    return metrics.render().decode()


# What the console reads of a scrape, under vLLM's names (SGLang's are mapped onto them).
READ_COUNTERS = {SUCCESS, PREEMPTIONS, PROMPT_TOKENS, GENERATION_TOKENS, CACHED_TOKENS}
READ_COUNTERS |= {PREFIX_QUERIES, PREFIX_HITS}
READ_HISTOGRAMS = {E2E, TTFT, ITL, QUEUE}


def _holds_what_the_console_reads(text: str) -> bool:
    stats = engine_stats_from_text("n", text)
    return bool(READ_COUNTERS & stats.counters.keys() or READ_HISTOGRAMS & stats.histograms.keys())


@pytest.mark.parametrize(
    "text",
    # (The usage-docs excerpt holds one family only, iteration_tokens_total: nothing to read.)
    [pytest.param(p.read_text(), id=p.name) for p in EXPOSITIONS]
    + [pytest.param(_demo_engine_text(), id="demo-engine-registry")],
)
def test_asking_for_the_consoles_samples_reads_the_same_figures(text: str) -> None:
    full = engine_stats_from_text("n", text)
    names = SAMPLE_NAMES.get(full.engine)
    if names is None:  # TGI's exporter ignores name[]: it is never asked
        assert full.engine == "tgi"
        return
    served = _as_served(text, names)
    if not _holds_what_the_console_reads(text):
        assert "_bucket" not in served and "_total" not in served  # nothing else comes back
        return
    asked = engine_stats_from_text("n", served)
    assert len(served) < len(text)
    for field in ("engine", "model_name", "running", "waiting", "kv_cache_usage"):
        assert getattr(asked, field) == getattr(full, field), field
    # Every family the console reads holds the same series; what came back is a part of the
    # full scrape, unchanged.
    for family in READ_COUNTERS & full.counters.keys():
        assert asked.counters[family] == full.counters[family], family
    for family in READ_HISTOGRAMS & full.histograms.keys():
        assert asked.histograms[family] == full.histograms[family], family
    assert all(full.counters[f] == v for f, v in asked.counters.items())
    assert all(full.histograms[f] == v for f, v in asked.histograms.items())


def test_the_demo_engine_is_asked_for_under_a_third_of_its_text() -> None:
    text = _demo_engine_text()
    assert len(_as_served(text, SAMPLE_NAMES["vllm"])) < len(text) / 3


async def test_the_scraper_asks_for_everything_first_then_only_what_it_reads() -> None:
    server = LoopbackServer()
    server.metrics_text = DESIGN_EXCERPT
    try:
        scraper = MetricsScraper("gpu-a1", server.url, httpx.Timeout(5.0))
        await scraper.scrape()
        await scraper.scrape()
        server.metrics_text = "garbage that is no exposition {\n"
        with pytest.raises(EngineError):
            await scraper.scrape()
        server.metrics_text = DESIGN_EXCERPT
        await scraper.scrape()
        await scraper.aclose()
    finally:
        server.close()
    paths = [path for _, path in server.requests]
    assert paths[0] == "/metrics"  # which engine is it? everything
    query = parse_qs(urlsplit(paths[1]).query)
    assert query == {"name[]": list(SAMPLE_NAMES["vllm"])}
    assert paths[2].startswith("/metrics?")
    assert paths[3] == "/metrics"  # a reply that did not parse: ask for everything again


def test_the_kv_cache_gauge_of_vllm_before_0_10_is_read_under_its_old_name() -> None:
    old = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.37\n'
    )
    assert engine_stats_from_text("n", old).kv_cache_usage == pytest.approx(0.37)
    both = old + (
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
    )
    assert engine_stats_from_text("n", both).kv_cache_usage == pytest.approx(0.5)  # new wins


# -- the narrow scanner against prometheus_client's parser (differential) -------------------


def _library_samples(text: str) -> list | None:
    """What prometheus_client's parser reads (None where it refuses the text)."""
    try:
        return [s for f in text_string_to_metric_families(text) for s in f.samples]
    except ValueError:
        return None


def _comparable(samples: list) -> list:
    """NaN equals NaN here; an int value equals its float, as it does in arithmetic."""
    return [
        (s.name, s.labels, "nan" if s.value != s.value else float(s.value), s.timestamp)
        for s in samples
    ]


@pytest.mark.parametrize(
    "text",
    [pytest.param(p.read_text(), id=p.name) for p in EXPOSITIONS]
    + [pytest.param(_demo_engine_text(), id="demo-engine-registry")],
)
def test_the_scanner_reads_every_fixture_as_the_library_does(text: str) -> None:
    scanned = scan_samples(text)
    library = _library_samples(text)
    if scanned is None:  # left to the library: only text with lines the scanner does not read
        assert library is None or "..." in text
        return
    assert library is not None and _comparable(scanned) == _comparable(library)


def test_the_scanner_reads_what_engines_serve() -> None:
    """The fast path is the usual one: prometheus_client's own output, and the engines'."""
    for text in (_demo_engine_text(), SGLANG_SAMPLE, TGI_SAMPLE):
        assert scan_samples(text) is not None


_NAMES = st.sampled_from(
    ["vllm:x", "vllm:x_total", "y_bucket", "y_count", "y_sum", "y", "z_created"]
)
_LABEL_VALUES = st.text(alphabet=st.sampled_from(list('ab "\\\n#{},=é\x85\u2028\t')), max_size=6)
_VALUES = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e3", "1_000", "0x10", "", "1.5.2"]),
)


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@st.composite
def _exposition(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(
            st.sampled_from(["sample", "sample", "sample", "type", "help", "comment", "junk"])
        )
        name = draw(_NAMES)
        if kind == "type":
            family = draw(st.sampled_from(["vllm:x", "y", "vllm:x_total", "z"]))
            typ = draw(st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped"]))
            lines.append(f"# TYPE {family} {typ}")
        elif kind == "help":
            lines.append(f'# HELP {draw(_NAMES)} some help "quoted"')
        elif kind == "comment":
            lines.append(draw(st.sampled_from(["# a comment", "#HELP x", "# TYPE", "#"])))
        elif kind == "junk":
            lines.append(draw(st.sampled_from(["...", "x{a=b} 1", 'x{a="1" 1', "{} 1", " "])))
        else:
            labels = draw(
                st.dictionaries(
                    st.sampled_from(["le", "a", "model_name"]), _LABEL_VALUES, max_size=3
                )
            )
            inner = ",".join(f'{k}="{_escaped(v)}"' for k, v in labels.items())
            trailing = draw(st.sampled_from(["", ","])) if labels else ""
            braces = f"{{{inner}{trailing}}}" if labels or draw(st.booleans()) else ""
            sep = draw(st.sampled_from([" ", "\t", "  "]))
            stamp = draw(st.one_of(st.none(), st.integers(0, 2**41).map(str)))
            tail = f"{sep}{stamp}" if stamp is not None else ""
            lines.append(f"{name}{braces}{sep}{draw(_VALUES)}{tail}")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


@given(_exposition())
def test_the_scanner_agrees_with_the_library_on_generated_text(text: str) -> None:
    """Whatever the scanner reads, it reads as the library does; what it cannot tell, it
    leaves to the library (never a sample the library would not give)."""
    scanned = scan_samples(text)
    if scanned is not None:
        library = _library_samples(text)
        assert library is not None, "the scanner read text the library refuses"
        assert _comparable(scanned) == _comparable(library)
