"""The hub against real loopback HTTP servers: scheduling, backoff, staleness, aggregation."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.config import Config, load_config
from console.hub import Hub
from console.models import Thresholds
from console.store import Store
from screens.cells import endpoint_cells
from screens.formatting import Alarm
from tests.loopback_http import LoopbackServer
from tests.sshd import free_port


def metrics(finished: int, slow: int = 0, running: int = 4) -> str:
    """vLLM 0.33-style exposition: ``finished`` requests, ``slow`` of them took 5-10 s."""
    fast = finished - slow
    labels = 'engine="0",model_name="m"'
    return "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {running}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} 0.42",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{labels},finished_reason="stop"}} {finished}',
            "# TYPE vllm:e2e_request_latency_seconds histogram",
            f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="1.0"}} {fast}',
            f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="5.0"}} {fast}',
            f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="10.0"}} {finished}',
            f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="+Inf"}} {finished}',
            f"vllm:e2e_request_latency_seconds_sum{{{labels}}} {fast * 0.5 + slow * 7}",
            f"vllm:e2e_request_latency_seconds_count{{{labels}}} {finished}",
            "",
        ]
    )


@pytest.fixture
def engine() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.metrics_text = metrics(100)
    yield server
    server.close()


@pytest.fixture
def provider() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()


def make_config(tmp_path: Path, engine: LoopbackServer, provider: LoopbackServer) -> Config:
    (tmp_path / "known_hosts").write_text("")
    path = tmp_path / "config.yaml"
    path.write_text(f"""
environment: test
store: store.db
ssh: {{known_hosts: known_hosts, connect_timeout: 1s}}
poll: {{gpus: 100ms, engine: 100ms, max_backoff: 800ms, stale_after_polls: 2}}
nodes:
  - name: gpu-a1
    host: 127.0.0.1
    port: {free_port()}
    cost_per_hour_usd: 10
    engine: {{kind: vllm, url: "{engine.url}"}}
endpoints:
  - name: chat-primary
    kind: openai
    base_url: "{engine.url}/v1"
    model: m
    nodes: [gpu-a1]
    probe: {{every: 100ms, timeout: 2s}}
  - name: chat-backup
    kind: openai
    base_url: "{provider.url}/v1"
    model: gpt-4o-mini
    price: {{input_per_mtok_usd: 1000, output_per_mtok_usd: 2000}}
    probe: {{every: 100ms, timeout: 2s}}
""")
    return load_config(path)


async def run_hub(hub: Hub, seconds: float) -> None:
    hub.start()
    await asyncio.sleep(seconds)


async def test_slow_source_never_has_two_polls_in_flight(tmp_path, engine, provider) -> None:
    engine.delay_s = 0.3  # three times the 100 ms interval
    hub = Hub(make_config(tmp_path, engine, provider))
    await run_hub(hub, 1.5)
    await hub.stop()
    scrapes = [t for t, path in engine.requests if path.startswith("/metrics")]
    assert 3 <= len(scrapes) <= 6
    assert engine.max_in_flight <= 2  # one scrape plus at most one probe of chat-primary
    gaps = [b - a for a, b in itertools.pairwise(scrapes)]
    assert min(gaps) >= 0.35  # 300 ms of work + 100 ms of interval, never overlapping


async def test_failing_source_backs_off_and_is_marked_stale(tmp_path, engine, provider) -> None:
    hub = Hub(make_config(tmp_path, engine, provider), Store(tmp_path / "store.db"))
    await run_hub(hub, 0.5)
    assert hub.snapshot().nodes[0].engine_status.stale is False
    engine.status = 500
    failed_at = time.monotonic()
    await asyncio.sleep(2.5)
    snapshot = hub.snapshot()
    status = snapshot.nodes[0].engine_status
    assert status.stale
    assert status.last_error == f"gpu-a1: GET {engine.url}/metrics: HTTP 500"
    assert status.last_ok_at is not None
    await hub.stop()
    failing = [t for t, path in engine.requests if path.startswith("/metrics") and t >= failed_at]
    gaps = [b - a for a, b in itertools.pairwise(failing)]
    # 100, 200, 400, 800, 800 ms: exponential, then capped; jitter takes up to 25 % off each.
    steps = [min(0.1 * 2**i, 0.8) for i in range(len(gaps))]
    for gap, step in zip(gaps, steps, strict=True):
        assert 0.75 * step - 0.03 <= gap <= step + 0.1, (gaps, steps)
    assert len(gaps) >= 4
    events = Store(tmp_path / "store.db").events()
    assert any(e["kind"] == "source.failed" and e["source"] == "engine:gpu-a1" for e in events)


async def test_dead_ssh_node_degrades_only_its_gpu_panel(tmp_path, engine, provider) -> None:
    hub = Hub(make_config(tmp_path, engine, provider))
    await run_hub(hub, 0.8)
    snapshot = hub.snapshot()
    await hub.stop()
    node = snapshot.nodes[0]
    assert node.gpu_status.stale
    assert node.gpu_status.last_error.startswith("gpu-a1 (llmops@127.0.0.1:")
    assert "cannot connect" in node.gpu_status.last_error
    assert node.engine_status.stale is False
    assert node.kv_cache_pct == pytest.approx(42)
    assert node.running == 4


async def test_engine_histograms_give_endpoint_latency_and_rate(tmp_path, engine, provider) -> None:
    hub = Hub(make_config(tmp_path, engine, provider))
    await hub.poll_once("engine:")
    await asyncio.sleep(0.5)
    engine.metrics_text = metrics(200, slow=10)  # 100 more requests, 10 of them slow
    await hub.poll_once("engine:")
    row = hub.snapshot().endpoints[0]
    await hub.stop()
    assert row.source == "engine"
    assert row.p50_s == pytest.approx(1.0 * 50 / 90)  # rank 50 of the 90 fast ones in (0, 1]
    assert 5.0 < row.p99_s <= 10.0
    assert row.requests_per_s == pytest.approx(100 / 0.5, rel=0.3)
    assert row.error_pct == 0
    assert row.gpu_cost_per_hour_usd == 10
    assert row.probe_spend_per_hour_usd is None  # its own GPUs, not a paid API
    assert row.n == 100


async def test_self_hosted_endpoint_refusing_requests_shows_errors(
    tmp_path, engine, provider
) -> None:
    engine.chat_status = 503  # the API server refuses; the engine's counters never see it
    hub = Hub(make_config(tmp_path, engine, provider))
    await hub.poll_once()
    await asyncio.sleep(0.2)
    engine.metrics_text = metrics(200)
    await hub.poll_once("engine:")
    row = hub.snapshot().endpoints[0]
    await hub.stop()
    assert row.source == "engine"
    assert row.error_pct == 100  # the probes' 503s, not the engine's 0 %
    assert row.status.last_error == "HTTP 503: overloaded"


async def test_every_engine_stale_keeps_their_last_figures_and_says_so(
    tmp_path, engine, provider
) -> None:
    # Issue 7, item 1: the row used to switch to the probes' 11 ms and say `ok`.
    hub = Hub(make_config(tmp_path, engine, provider))
    await hub.poll_once()
    await asyncio.sleep(0.2)
    engine.metrics_text = metrics(200, slow=60)  # 100 more requests, 60 of them 5-10 s
    await hub.poll_once()
    before = hub.snapshot().endpoints[0]
    engine.status = 500
    await asyncio.sleep(0.5)  # past two 100 ms intervals
    await hub.poll_once()  # the probes still answer, quickly
    row = hub.snapshot().endpoints[0]
    await hub.stop()
    assert before.p95_s > 5.0 and before.engines_stale == 0
    assert row.engines_stale == row.engines == 1
    assert row.source == "engine"  # never silently the probes
    assert row.p95_s == pytest.approx(before.p95_s)  # the last minute they reported
    cells = endpoint_cells(row, Thresholds())
    assert cells[1] == "engines STALE" and isinstance(cells[1], Alarm)
    assert isinstance(cells[3], Alarm)  # the P95 alarm stays


async def test_one_stale_engine_of_two_is_left_out_and_counted(tmp_path, engine, provider) -> None:
    second = LoopbackServer()
    second.metrics_text = metrics(100, slow=100)
    path = tmp_path / "config.yaml"
    make_config(tmp_path, engine, provider)
    text = (
        path.read_text()
        .replace(
            "    nodes: [gpu-a1]",
            "    nodes: [gpu-a1, gpu-a2]",
        )
        .replace(
            "endpoints:",
            f"""  - name: gpu-a2
    host: 127.0.0.1
    port: {free_port()}
    cost_per_hour_usd: 10
    engine: {{kind: vllm, url: "{second.url}"}}
endpoints:""",
        )
    )
    path.write_text(text)
    hub = Hub(load_config(path))
    try:
        await hub.poll_once("engine:")
        await asyncio.sleep(0.2)
        engine.metrics_text = metrics(200)
        second.metrics_text = metrics(200, slow=200)
        await hub.poll_once("engine:")
        both = hub.snapshot().endpoints[0]
        second.status = 500
        await asyncio.sleep(0.5)
        await hub.poll_once("engine:")
        row = hub.snapshot().endpoints[0]
    finally:
        await hub.stop()
        second.close()
    assert both.p95_s > 5.0  # half the requests were slow, on gpu-a2
    assert row.engines_stale == 1 and row.engines == 2
    assert row.p95_s < 1.0  # gpu-a2's slow minute is history now: gpu-a1's figures alone
    assert endpoint_cells(row, Thresholds())[1] == "1/2 eng STALE"
    assert row.gpu_cost_per_hour_usd == 20


async def test_quiet_minute_falls_back_to_since_start_percentiles(
    tmp_path, engine, provider
) -> None:
    engine.metrics_text = metrics(100, slow=50)
    hub = Hub(make_config(tmp_path, engine, provider))
    await hub.poll_once("engine:")
    engine.metrics_text = metrics(105, slow=50)  # five fast requests: too few to rank
    await hub.poll_once("engine:")
    row = hub.snapshot().endpoints[0]
    await hub.stop()
    assert row.source == "engine lifetime"
    assert row.n == 105
    assert 5.0 < row.p95_s <= 10.0  # half of all 105 requests were slow


async def test_malformed_metric_line_is_a_warning_not_a_failure(tmp_path, engine, provider) -> None:
    engine.metrics_text = metrics(10) + 'vllm:num_requests_waiting{engine="0" 3\n'
    hub = Hub(make_config(tmp_path, engine, provider))
    await hub.poll_once("engine:")
    snapshot = hub.snapshot()
    await hub.stop()
    status = snapshot.nodes[0].engine_status
    assert status.consecutive_failures == 0
    assert "1 malformed metric line(s) skipped" in status.warning
    assert snapshot.nodes[0].running == 4


async def test_probe_measures_ttft_tokens_and_cost(tmp_path, engine, provider) -> None:
    provider.chunks = ["o", "k"]
    hub = Hub(make_config(tmp_path, engine, provider))
    await hub.poll_once("probe:chat-backup")
    row = hub.snapshot().endpoints[1]
    provider.status = 429
    await hub.poll_once("probe:chat-backup")
    refused = hub.snapshot().endpoints[1]
    await hub.stop()
    assert row.source == "probe"
    assert row.served_model == "gpt-4o-mini"
    assert 0 < row.ttft_p95_s <= row.p50_s
    assert row.error_pct == 0
    assert row.requests_per_s is None  # probes are not the endpoint's traffic
    # From the first probe: (12 prompt x $1000/M + 2 completion x $2000/M) every 100 ms
    assert row.probe_spend_per_hour_usd == pytest.approx(0.016 * 36000)
    # a 429 costs nothing
    assert refused.probe_spend_per_hour_usd == pytest.approx(0.016 * 36000 / 2)
    assert row.gpu_cost_per_hour_usd is None  # an API: its usage is not known, never $0.00
    assert endpoint_cells(row, Thresholds())[8] == "N/A"
    assert row.n == 1 and row.p95_s is None  # one probe: one latency, not three percentiles


async def test_rate_limited_probe_counts_as_error_with_retry_after(
    tmp_path, engine, provider
) -> None:
    provider.status = 429
    provider.headers = {"retry-after": "7"}
    hub = Hub(make_config(tmp_path, engine, provider), Store(tmp_path / "store.db"))
    await hub.poll_once("probe:chat-backup")
    row = hub.snapshot().endpoints[1]
    await hub.stop()
    assert row.error_pct == 100
    assert row.status.consecutive_failures == 1  # the source is failing: status exits 1
    (source,) = [s for s in hub.sources if s.name == "probe:chat-backup"]
    assert hub.scheduler.delay_after(source) == 7.0  # not the 100 ms interval: it was told 7 s
    assert row.status.last_error == "HTTP 429: overloaded"
    assert endpoint_cells(row, Thresholds())[1] == "FAIL HTTP 429"
    probe = Store(tmp_path / "store.db").db["probes"].get(1)
    assert probe["status"] == 429
    assert probe["error"] == "HTTP 429: overloaded"


async def test_retry_after_holds_the_next_probe_back(tmp_path, engine, provider) -> None:
    provider.status = 429
    provider.headers = {"retry-after": "1"}
    hub = Hub(make_config(tmp_path, engine, provider))
    await run_hub(hub, 1.5)
    await hub.stop()
    probes = [t for t, path in provider.requests if path.endswith("/chat/completions")]
    # Backing off alone (100, 200, 400, 800 ms) would have sent five in 1.5 s.
    assert len(probes) == 2
    assert probes[1] - probes[0] >= 1.0


async def test_a_full_disk_keeps_the_rows_and_shows_on_the_store_source(
    tmp_path, engine, provider
) -> None:
    store = Store(tmp_path / "store.db")
    hub = Hub(make_config(tmp_path, engine, provider), store)
    # A real "database or disk is full": SQLite may not grow the file past its current size.
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    for _ in range(40):
        await hub.poll_once("probe:")
    await hub.flush()
    status = {s.name: s for s in hub.snapshot().sources}["store"]
    assert status.consecutive_failures == 1
    assert "full" in status.last_error
    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    await hub.flush()
    await hub.stop()
    assert {s.name: s for s in hub.snapshot().sources}["store"].consecutive_failures == 0
    assert store.db["probes"].count == 80  # nothing lost while the disk was full


async def test_a_node_shared_by_two_endpoints_is_counted_once_in_the_total(
    tmp_path, engine, provider
) -> None:
    path = tmp_path / "config.yaml"
    make_config(tmp_path, engine, provider)
    path.write_text(
        path.read_text().replace(
            "  - name: chat-backup",
            """  - name: chat-batch
    kind: openai
    base_url: "http://127.0.0.1:1/v1"
    model: m
    nodes: [gpu-a1]
  - name: chat-backup""",
        )
    )
    hub = Hub(load_config(path))
    snapshot = hub.snapshot()
    await hub.stop()
    rows = {e.name: e for e in snapshot.endpoints}
    assert rows["chat-primary"].gpu_cost_per_hour_usd == 10
    assert rows["chat-batch"].gpu_cost_per_hour_usd == 10  # the same node, shown on each row
    assert snapshot.gpu_cost_per_hour_usd == 10  # and once in the fleet's total
