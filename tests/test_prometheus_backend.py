"""The Prometheus backend: a real Prometheus scraping the demo fleet, and a loopback server
for the replies a healthy one never gives (errors, old samples, missing nodes).

The real-Prometheus test skips where the binary is missing, unless LLMOPS_REQUIRE_PROMETHEUS=1
(tests/prometheus_server.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from backends.prometheus import (
    DCGM_FIELDS,
    ENGINE_FAMILIES,
    SCRAPED_AT,
    NodeSeries,
    Sample,
    Server,
    dcgm_snapshot,
)
from console.config import Config, load_config
from console.demo import DemoFleet
from console.hub import Hub
from console.models import FleetSnapshot, GpuReading, SourceStatus
from console.stats import histogram_quantile
from console.windows import window_figures
from tests.loopback_http import LoopbackServer
from tests.prometheus_server import needs_prometheus, running_prometheus
from tests.sshd import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "dcgm"


# --- a loopback stand-in for the server ----------------------------------------------------------


class FakePrometheus(LoopbackServer):
    """Answers ``POST /api/v1/query`` with ``answer(query)``: (status, JSON body); keeps
    every query it was sent."""

    def __init__(self) -> None:
        self.answer: Callable[[str], tuple[int, bytes]] = lambda query: (200, reply([]))
        self.queries: list[str] = []
        super().__init__()

    def _handler(self) -> type:
        server = self
        base = super()._handler()

        class Handler(base):  # type: ignore[misc,valid-type]
            def do_POST(self) -> None:
                self._enter()
                try:
                    length = int(self.headers.get("content-length", 0))
                    form = parse_qs(self.rfile.read(length).decode())
                    query = form.get("query", [""])[0]
                    server.queries.append(query)
                    server.received_headers.append(dict(self.headers))
                    status, body = server.answer(query)
                    self._send(status, body, "application/json")
                finally:
                    self._leave()

        return Handler


def reply(result: list[dict], at: float | None = None) -> bytes:
    at = time.time() if at is None else at
    for item in result:
        item["value"] = [at, item["value"]]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


def engine_series(node: str, finished: int, scraped_at: float, job: str = "vllm") -> list[dict]:
    """A vLLM engine's series as Prometheus returns them, with its up and scrape time."""
    target = {"job": job, "instance": f"{node}:8000", "node": node}
    base = {**target, "engine": "0", "model_name": "m"}
    e2e = "vllm:e2e_request_latency_seconds"
    return [
        {"metric": {"__name__": "vllm:num_requests_running", **base}, "value": "3"},
        {
            "metric": {"__name__": "vllm:request_success_total", **base, "finished_reason": "stop"},
            "value": str(finished),
        },
        *(
            {"metric": {"__name__": f"{e2e}_bucket", **base, "le": le}, "value": str(finished)}
            for le in ("1.0", "+Inf")
        ),
        {"metric": {"__name__": f"{e2e}_sum", **base}, "value": str(finished * 0.5)},
        {"metric": {"__name__": f"{e2e}_count", **base}, "value": str(finished)},
        {"metric": {"__name__": "up", **target}, "value": "1"},
        {"metric": {**target, SCRAPED_AT: "1"}, "value": str(scraped_at)},
    ]


def dcgm_series(node: str, scraped_at: float) -> list[dict]:
    target = {"job": "dcgm", "instance": f"{node}:9400", "node": node}
    gpu = {
        **target,
        "gpu": "0",
        "UUID": "GPU-1",
        "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3",
        "Hostname": node,
    }
    values = {"DCGM_FI_DEV_GPU_UTIL": "87", "DCGM_FI_DEV_FB_USED": "70000"}
    return [
        *({"metric": {"__name__": k, **gpu}, "value": v} for k, v in values.items()),
        {"metric": {"__name__": "up", **target}, "value": "1"},
        {"metric": {**target, SCRAPED_AT: "1"}, "value": str(scraped_at)},
    ]


def fleet_config(
    tmp_path: Path, url: str, nodes: list[str], *, every: str = "2s", extra: str = ""
) -> Config:
    lines = [
        "environment: test",
        f"poll: {{gpus: {every}, engine: {every}, max_backoff: 1s}}",
        f"prometheus: {{url: {url}, timeout: 1s, max_age: 30s{extra}}}",
        "nodes:",
    ]
    for name in nodes:
        lines.append(
            f"  - {{name: {name}, host: 127.0.0.1, gpus_from: prometheus,"
            f" engine: {{from: prometheus, url: 'http://127.0.0.1:1'}}}}"
        )
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.close()


def statuses(hub: Hub) -> dict[str, SourceStatus]:
    return {s.name: s for s in hub.scheduler.statuses()}


def poll(hub: Hub) -> dict[str, SourceStatus]:
    async def go() -> None:
        try:
            await hub.poll_once()
        finally:
            await hub.stop()

    asyncio.run(go())
    return statuses(hub)


# --- one query per interval, whatever the fleet's size -------------------------------------------


def fleet_answer(nodes: list[str]) -> Callable[[str], tuple[int, bytes]]:
    """Every node's engine or DCGM series, fresh, whichever kind the query asks for."""

    def answer(query: str) -> tuple[int, bytes]:
        now = time.time()
        series = [
            s
            for n in nodes
            for s in (engine_series(n, 10, now) if "vllm:" in query else dcgm_series(n, now))
        ]
        return 200, reply(series)

    return answer


def test_many_nodes_share_one_query_per_kind(tmp_path: Path, fake: FakePrometheus) -> None:
    nodes = [f"gpu-{i:03}" for i in range(40)]
    fake.answer = fleet_answer(nodes)
    hub = Hub(fleet_config(tmp_path, fake.url, nodes))
    found = poll(hub)
    # 80 sources polled together: one engine query and one DCGM query.
    assert len(fake.queries) == 2, fake.queries
    assert sum("vllm:" in q for q in fake.queries) == 1
    failed = {n: s.last_error for n, s in found.items() if s.consecutive_failures}
    assert failed == {}
    assert {s.via for n, s in found.items()} == {"prometheus"}
    assert found["gpus:gpu-000"].via_note == fake.url
    assert hub.readings.gpus["gpu-039"][0].util_pct == 87.0


def test_running_sources_send_one_query_per_kind_and_interval(
    tmp_path: Path, fake: FakePrometheus
) -> None:
    nodes = [f"gpu-{i:02}" for i in range(30)]
    fake.answer = fleet_answer(nodes)
    hub = Hub(fleet_config(tmp_path, fake.url, nodes, every="200ms"))

    async def run() -> None:
        hub.start()
        await asyncio.sleep(1.5)
        await hub.stop()

    asyncio.run(run())
    intervals = 1.5 / 0.2
    engine_queries = sum("vllm:" in q for q in fake.queries)
    # Without coalescing: 30 per interval and kind (about 225 each here).
    assert 2 <= engine_queries <= intervals + 2, engine_queries
    assert 2 <= len(fake.queries) - engine_queries <= intervals + 2


# --- freshness and missing nodes -----------------------------------------------------------------


def test_old_samples_and_missing_nodes_fail_only_their_own_sources(
    tmp_path: Path, fake: FakePrometheus
) -> None:
    def answer(query: str) -> tuple[int, bytes]:
        now = time.time()
        if "vllm:" in query:
            result = engine_series("fresh", 10, now - 1) + engine_series("old", 10, now - 47)
        else:
            result = dcgm_series("fresh", now - 1)
            down = {"job": "dcgm", "instance": "down:9400", "node": "down"}
            result.append({"metric": {"__name__": "up", **down}, "value": "0"})
        return 200, reply(result, at=now)

    fake.answer = answer
    hub = Hub(fleet_config(tmp_path, fake.url, ["fresh", "old", "down", "gone"]))
    found = poll(hub)
    errors = {n: s.last_error for n, s in found.items() if s.consecutive_failures}
    server = f"prometheus {fake.url}"
    assert errors == {
        "engine:old": f"{server}: old: last scraped 47 s ago (max_age 30 s)",
        "engine:down": f'{server}: no vLLM series for down (no target labelled node="down")',
        "engine:gone": f'{server}: no vLLM series for gone (no target labelled node="gone")',
        "gpus:old": f'{server}: no DCGM series for old (no target labelled node="old")',
        "gpus:down": f"{server}: no DCGM series for down (down: down:9400 job dcgm)",
        "gpus:gone": f'{server}: no DCGM series for gone (no target labelled node="gone")',
    }
    assert found["engine:fresh"].consecutive_failures == 0
    stats = hub.readings.engines["fresh"].latest()
    assert stats is not None and stats.running == 3.0
    # The series the engine itself serves: the target labels Prometheus added are gone.
    assert list(stats.counters["vllm:request_success_total"]) == [
        (("engine", "0"), ("finished_reason", "stop"), ("model_name", "m"))
    ]


def test_a_scrape_seen_twice_is_added_to_the_window_once(
    tmp_path: Path, fake: FakePrometheus
) -> None:
    scraped = time.time() - 1
    fake.answer = lambda q: (200, reply(engine_series("a", 10, scraped) if "vllm:" in q else []))
    hub = Hub(fleet_config(tmp_path, fake.url, ["a"], every="100ms"))

    async def twice() -> None:
        await hub.poll_once("engine:")
        await asyncio.sleep(0.1)  # past the shared query's reuse: a second query
        await hub.poll_once("engine:")
        await hub.stop()

    asyncio.run(twice())
    assert len(fake.queries) == 2
    window = hub.readings.engines["a"]
    assert window.span(time.time(), 60) is None  # one scrape, not two copies of it


# --- errors --------------------------------------------------------------------------------------

PROM_ERROR = json.dumps(
    {
        "status": "error",
        "errorType": "bad_data",
        "error": 'invalid parameter "query": 1:5: parse error\nmore',
    }
).encode()


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retry_after"),
    [
        (500, b"internal error\n", {}, "HTTP 500", None),
        (429, b"slow down", {"Retry-After": "7"}, "HTTP 429 (retry after 7 s)", 7.0),
        (503, b"", {"Retry-After": "12"}, "HTTP 503 (retry after 12 s)", 12.0),
        (
            400,
            PROM_ERROR,
            {},
            'HTTP 400: bad_data: invalid parameter "query": 1:5: parse error',
            None,
        ),
        (200, b"<html>not json</html>", {}, "the reply is not JSON", None),
        (
            200,
            json.dumps(
                {"status": "success", "data": {"resultType": "matrix", "result": []}}
            ).encode(),
            {},
            "malformed reply: a matrix where a vector was asked for",
            None,
        ),
        (
            200,
            b'{"status": "success", "data": {"result": []}}',
            {},
            "malformed reply: 'resultType'",
            None,
        ),
    ],
)
def test_error_replies_are_one_line_naming_the_server(
    tmp_path: Path,
    fake: FakePrometheus,
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: str,
    retry_after: float | None,
) -> None:
    fake.answer = lambda q: (status, body)
    fake.headers = headers
    hub = Hub(fleet_config(tmp_path, fake.url, ["a", "b"]))
    found = poll(hub)
    assert len(fake.queries) == 2  # a failure is shared as well: one query per kind
    for name in ("engine:a", "engine:b", "gpus:a", "gpus:b"):
        assert found[name].last_error == f"prometheus {fake.url}: {expected}"
    # The scheduler waits as long as the server asked.
    assert hub.scheduler._retry_after.get("engine:a") == retry_after


def test_a_timeout_and_a_refused_connection_are_one_line(
    tmp_path: Path, fake: FakePrometheus
) -> None:
    fake.delay_s = 1.5  # past the 1 s timeout
    found = poll(Hub(fleet_config(tmp_path, fake.url, ["a"])))
    assert found["engine:a"].last_error == f"prometheus {fake.url}: no answer within 1 s"
    closed = f"http://127.0.0.1:{free_port()}"
    found = poll(Hub(fleet_config(tmp_path, closed, ["a"])))
    assert found["gpus:a"].last_error == (
        f"prometheus {closed}: connection refused or host unreachable"
    )


def test_headers_come_from_the_environment_and_stay_out_of_messages(
    tmp_path: Path, fake: FakePrometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ", bearer_token_env: PROM_TOKEN, header_env: {X-Scope-OrgID: PROM_TENANT}"
    monkeypatch.setenv("PROM_TOKEN", "s3cr3t-token-value")
    monkeypatch.delenv("PROM_TENANT", raising=False)
    found = poll(Hub(fleet_config(tmp_path, fake.url, ["a"], extra=extra)))
    assert fake.queries == []  # nothing is sent without every header
    assert found["engine:a"].last_error == (
        f"prometheus {fake.url}: environment variable PROM_TENANT is not set"
        " (the X-Scope-OrgID header)"
    )
    monkeypatch.setenv("PROM_TENANT", "team-a")
    fake.answer = lambda q: (403, b"forbidden")
    found = poll(Hub(fleet_config(tmp_path, fake.url, ["a"], extra=extra)))
    sent = fake.received_headers[-1]
    assert sent["Authorization"] == "Bearer s3cr3t-token-value"
    assert sent["X-Scope-OrgID"] == "team-a"
    assert all("s3cr3t" not in (s.last_error or "") for s in found.values())


def test_the_server_is_named_without_its_credentials() -> None:
    assert (
        Server("https://user:pw@thanos.example:9091/prom/").name
        == "https://thanos.example:9091/prom"
    )


# --- dcgm-exporter's series ----------------------------------------------------------------------


def catalogue() -> set[str]:
    names = set()
    for path in FIXTURES.glob("*.tsv"):
        for line in path.read_text().splitlines():
            if line.startswith("DCGM_"):
                names.add(line.split("\t")[0])
    return names


def test_every_dcgm_field_read_is_a_known_dcgm_name() -> None:
    assert catalogue() >= DCGM_FIELDS, DCGM_FIELDS - catalogue()


def test_engine_families_are_the_ones_the_direct_path_reads() -> None:
    assert "vllm:e2e_request_latency_seconds_bucket" in ENGINE_FAMILIES
    assert "vllm:request_success_total" in ENGINE_FAMILIES


def _node_series(samples: list[tuple[str, dict[str, str], float]]) -> NodeSeries:
    return NodeSeries(
        node="gpu-a1",
        samples=tuple(Sample({"__name__": n, **labels}, v) for n, labels, v in samples),
        scraped_at=0.0,
        age_s=0.0,
        targets=1,
    )


def test_dcgm_series_become_readings_with_n_a_for_what_dcgm_does_not_export() -> None:
    """A constructed sample (not a capture), labelled as dcgm-exporter labels samples."""
    gpu0 = {
        "gpu": "0",
        "UUID": "GPU-0",
        "modelName": "NVIDIA H100 80GB HBM3",
        "DCGM_FI_DRIVER_VERSION": "580.1",
    }
    gpu1 = {"gpu": "1", "uuid": "GPU-1", "modelName": "NVIDIA H100 80GB HBM3"}
    mig = {**gpu0, "GPU_I_ID": "1", "GPU_I_PROFILE": "1g.10gb"}
    series = _node_series(
        [
            ("DCGM_FI_DEV_GPU_UTIL", gpu0, 91),
            ("DCGM_FI_DEV_GPU_UTIL", mig, 5),  # a MIG instance's share: not the GPU's figure
            ("DCGM_FI_DEV_FB_USED", gpu0, 70000),
            ("DCGM_FI_DEV_FB_FREE", gpu0, 11000),
            ("DCGM_FI_DEV_FB_RESERVED", gpu0, 559),
            ("DCGM_FI_DEV_GPU_TEMP", gpu0, 61),
            ("DCGM_FI_DEV_POWER_USAGE", gpu0, 690.5),
            ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu0, 0x4 | 0x40),
            ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", gpu0, 2),
            ("DCGM_FI_DEV_ROW_REMAP_FAILURE", gpu0, 0),
            ("DCGM_FI_DEV_XID_ERRORS", gpu1, 79),
            ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", gpu1, 0),  # the pre-3.3 name
            ("DCGM_FI_DEV_GPU_TEMP", gpu1, math.nan),
        ]
    )
    snapshot = dcgm_snapshot(Server("http://p:9090"), series)
    assert snapshot.method == "prometheus" and snapshot.driver_version == "580.1"
    assert snapshot.warnings == ("GPU 1: XID 79 reported",)
    a, b = snapshot.gpus
    assert isinstance(a, GpuReading)
    assert (a.index, a.uuid, a.util_pct, a.memory_used_mib, a.memory_total_mib) == (
        0,
        "GPU-0",
        91,
        70000,
        81559,
    )
    assert (a.temperature_c, a.power_w, a.clock_events) == (61, 690.5, ("power cap", "HW thermal"))
    assert (a.ecc_uncorrected, a.ecc_corrected, a.remapped_rows_failed) == (2, None, False)
    # Not exported by dcgm-exporter: N/A, never 0.
    assert (a.power_limit_w, a.fan_pct, a.pstate, a.processes, a.memory_temperature_c) == (
        None,
    ) * 5
    assert (b.uuid, b.clock_events, b.temperature_c, b.memory_total_mib) == (
        "GPU-1",
        (),
        None,
        None,
    )


def test_the_demo_exporter_speaks_dcgm_exporter_names_and_labels(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from console.demo.dcgm_exporter import render
    from console.demo.gpu_sim import GpuSim

    text = render(GpuSim("gpu-a1", 2, 0, None), "gpu-a1").decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {}
    for line in (FIXTURES / "dcgm-exporter-counters.tsv").read_text().splitlines():
        if line.startswith("DCGM_"):
            field, kind = line.split("\t")[:2]
            kinds[field] = kind
    for name, family in families.items():
        base = name.removesuffix("_total")  # the parser's name for a counter family
        assert base in catalogue(), name
        if base in kinds:
            assert family.type == kinds[base], name
        sample = family.samples[0]
        assert list(sample.labels)[:6] == [
            "gpu",
            "UUID",
            "pci_bus_id",
            "device",
            "modelName",
            "Hostname",
        ]


# --- a real Prometheus scraping the demo fleet ---------------------------------------------------

SCRAPE = "500ms"
POLL = "1s"
WINDOW_S = 30.0  # long enough for chat-large's ~36 requests: window figures, not lifetime
RUN_S = WINDOW_S + 4  # the window full on both sides, plus the first polls
MOMENTS = 3
SAMPLE_GAP_S = 2.0
# Endpoint figures. Both hubs compute them with the same window code, but from different
# scrapes: the direct hub's own (every 1 s), and Prometheus's (every 0.5 s, taken by the other
# hub every 1 s). Their 30 s windows start and end up to a poll apart, so the requests at the
# edges (a poll's worth, ~3% of the window at each end) can be in one and not the other; rates
# move by that, quantiles less, except where a tail quantile of few requests sits inside a
# wide bucket. So: within REL_TOL, or between the direct side's quantiles QUANTILE_SLACK
# either side (the ranks those edge requests can shift). A wrong conversion (series summed
# twice, the sample time ignored, the window fed the same scrape each poll) is off by far more.
REL_TOL = 0.10
QUANTILE_SLACK = 0.03
# GPUs: both read the same simulated GPUs, a poll apart at most. Memory changes only when an
# engine restarts: equal. Utilisation is another matter: under the demo's random traffic it
# jumps by tens of points from one 0.5 s tick to the next (a standard deviation of ~20 points,
# nearly uncorrelated tick to tick), so two readings a poll apart need not be alike at all.
# Utilisation, power (which follows it, ~6 W a point) and temperature (20 s thermal time
# constant, printed rounded) are compared as their means over the window on each side: two
# samplings of one signal, whose means differ by sampling noise alone. The bound is GPU_SIGMAS
# standard errors of that difference, from the two series' own spread (~5 points of util
# here), and at least GPU_FLOOR (a steady signal, rounded to whole units). A conversion error
# (MiB read as bytes, a ratio read as a percentage, GPUs swapped) is off by far more.
GPU_SIGMAS = 5.0
GPU_FLOOR = {"util_pct": 1.0, "power_w": 5.0, "temperature_c": 1.0}
QUANTILES = {"p50_s": 0.5, "p95_s": 0.95, "p99_s": 0.99, "ttft_p95_s": 0.95}


def _prometheus_reading_config(fleet: DemoFleet, url: str, path: Path) -> Config:
    """The demo's config, with its nodes read from Prometheus: gpu-a3 mixed (GPUs from
    Prometheus, engine direct), and gpu-a9, which Prometheus does not scrape."""
    data = yaml.safe_load(fleet.config_path.read_text())
    data["poll"].update(gpus=POLL, engine=POLL)
    data["prometheus"] = {"url": url, "timeout": "2s", "max_age": "5s"}
    for node in data["nodes"]:
        node["gpus_from"] = "prometheus"
        if node["name"] != "gpu-a3":
            node["engine"]["from"] = "prometheus"
    data["nodes"].append(
        {
            "name": "gpu-a9",
            "host": "127.0.0.1",
            "gpus_from": "prometheus",
            "engine": {"from": "prometheus", "url": "http://127.0.0.1:1"},
        }
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def _direct_config(fleet: DemoFleet, path: Path) -> Config:
    data = yaml.safe_load(fleet.config_path.read_text())
    data["poll"].update(gpus=POLL, engine=POLL)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def _slack(
    hub: Hub, config: Config, endpoint: str, name: str, at: float
) -> tuple[float, float] | None:
    """The direct side's quantiles QUANTILE_SLACK either side of the row's quantile."""
    nodes = config.endpoint(endpoint).nodes
    figures = window_figures(
        [hub.readings.engines[n] for n in nodes if n in hub.readings.engines], at, WINDOW_S
    )
    hist = None if figures is None else (figures.ttft if name == "ttft_p95_s" else figures.e2e)
    if hist is None:
        return None
    q = QUANTILES[name]
    return (
        histogram_quantile(max(q - QUANTILE_SLACK, 0), hist),
        histogram_quantile(min(q + QUANTILE_SLACK, 1), hist),
    )


Compared = list[tuple[str, str, float | None, float | None, tuple[float, float] | None]]


def _compare_endpoints(
    ours: FleetSnapshot, theirs: FleetSnapshot, direct: Hub, config: Config
) -> Compared:
    rows = {r.name: r for r in theirs.endpoints}
    pairs: Compared = []
    for row in ours.endpoints:
        if row.source != "engine":
            continue
        ref = rows[row.name]
        assert ref.source == "engine", (row.name, ref.source)
        for name in ("p50_s", "p95_s", "p99_s", "ttft_p95_s", "requests_per_s"):
            slack = (
                _slack(direct, config, row.name, name, theirs.taken_at)
                if name in QUANTILES
                else None
            )
            pairs.append((row.name, name, getattr(row, name), getattr(ref, name), slack))
    return pairs


def _mean(hub: Hub, node: str, index: int, metric: str) -> tuple[float, float]:
    """A GPU's mean of ``metric`` over the window, and its standard error."""
    points = [v for v in hub.gpu_series(node, index, metric, WINDOW_S).points if v is not None]
    assert len(points) > 2, (node, index, metric, points)
    mean = sum(points) / len(points)
    variance = sum((v - mean) ** 2 for v in points) / (len(points) - 1)
    return mean, math.sqrt(variance / len(points))


GpuPair = tuple[str, str, float | None, float | None, float]  # gpu, figure, ours, theirs, tol


def _gpu_pairs(
    ours: FleetSnapshot, theirs: FleetSnapshot, ours_hub: Hub, theirs_hub: Hub
) -> list[GpuPair]:
    """Memory as read now, with its tolerance; utilisation, power and temperature as their
    means over the window (each side's GPU history), within GPU_SIGMAS standard errors of
    their difference (at least GPU_FLOOR)."""
    direct = {(n.name, g.reading.index): g.reading for n in theirs.nodes for g in n.gpus}
    pairs: list[GpuPair] = []
    for node in ours.nodes:
        for g in node.gpus:
            index = g.reading.index
            gpu = f"{node.name}/{index}"
            ref = direct[(node.name, index)]
            for name in ("memory_used_mib", "memory_total_mib"):
                pairs.append((gpu, name, getattr(g.reading, name), getattr(ref, name), 0.0))
            for name, floor in GPU_FLOOR.items():
                mine, my_error = _mean(ours_hub, node.name, index, name)
                other, other_error = _mean(theirs_hub, node.name, index, name)
                tol = max(floor, GPU_SIGMAS * math.hypot(my_error, other_error))
                pairs.append((gpu, f"mean {name}", mine, other, tol))
    return pairs


@needs_prometheus
def test_prometheus_backend_agrees_with_the_direct_path(tmp_path: Path) -> None:
    with DemoFleet(tmp_path / "demo") as fleet:
        scrape = yaml.safe_load(fleet.prometheus_config_path.read_text())
        scrape["global"] = {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE}
        with running_prometheus(scrape, tmp_path) as url:
            via_prom = _prometheus_reading_config(fleet, url, tmp_path / "via-prometheus.yaml")
            direct_config = _direct_config(fleet, tmp_path / "direct.yaml")
            endpoints, gpus, sources, after_down = asyncio.run(
                _run_both(fleet, via_prom, direct_config)
            )
    for endpoint, name, ours, theirs, _ in endpoints:
        diff = abs(ours / theirs - 1) if ours is not None and theirs else math.nan
        print(f"{endpoint:14} {name:15} prometheus {ours!s:22} direct {theirs!s:22} {diff:.2%}")
    worst: dict[str, tuple[float, float]] = {}
    for _, name, ours, theirs, tol in gpus:
        if (
            ours is not None
            and theirs is not None
            and abs(ours - theirs) >= worst.get(name, (-1.0, 0.0))[0]
        ):
            worst[name] = (abs(ours - theirs), tol)
    print("largest GPU differences (difference, its bound):", worst)

    # Both demo vLLM endpoints, five figures each, at every moment: no silent skip.
    assert len(endpoints) == MOMENTS * 2 * 5, endpoints
    for endpoint, name, ours, theirs, slack in endpoints:
        assert ours is not None and theirs is not None, (endpoint, name, ours, theirs)
        close = ours == pytest.approx(theirs, rel=REL_TOL)
        between = slack is not None and slack[0] <= ours <= slack[1]
        assert close or between, f"{endpoint} {name}: prometheus {ours}, direct {theirs} ({slack})"
    assert len(gpus) == MOMENTS * 4 * 8 * 5
    for gpu, name, ours, theirs, tol in gpus:
        assert ours is not None and theirs is not None, (gpu, name)
        assert abs(ours - theirs) <= tol, f"{gpu} {name}: prometheus {ours}, direct {theirs}"

    # The sources say where each figure comes from; gpu-a9 (not scraped) fails alone.
    failing = {n: s.last_error for n, s in sources.items() if s.consecutive_failures}
    unscraped = '(no target labelled node="gpu-a9")'
    assert failing == {
        "gpus:gpu-a9": f"prometheus {url}: no DCGM series for gpu-a9 {unscraped}",
        "engine:gpu-a9": f"prometheus {url}: no vLLM series for gpu-a9 {unscraped}",
    }, failing
    for node in ("gpu-a1", "gpu-a2", "gpu-a3", "gpu-a4"):
        assert (sources[f"gpus:{node}"].via, sources[f"gpus:{node}"].via_note) == (
            "prometheus",
            url,
        )
    assert sources["engine:gpu-a1"].via == "prometheus"
    assert sources["engine:gpu-a3"].via is None  # the mixed node's engine: scraped directly
    # gpu-a2 down: its targets fail their scrapes, and its sources say so; the others go on.
    # Both of its targets, by job: which one is the engine's is not known without its series.
    targets = [
        f"127.0.0.1:{ports['gpu-a2']} job {job}"
        for job, ports in (("dcgm", fleet.dcgm_ports), ("vllm", fleet.http_ports))
    ]
    for kind in ("engine", "gpus"):
        what = "vLLM" if kind == "engine" else "DCGM"
        assert after_down[f"{kind}:gpu-a2"] == (
            f"prometheus {url}: no {what} series for gpu-a2 (down: {', '.join(targets)})"
        )
    assert set(after_down) == {"engine:gpu-a2", "gpus:gpu-a2", "engine:gpu-a9", "gpus:gpu-a9"}


async def _run_both(
    fleet: DemoFleet, via_prom: Config, direct_config: Config
) -> tuple[Compared, list[GpuPair], dict[str, SourceStatus], dict[str, str | None]]:
    ours, theirs = Hub(via_prom, window_s=WINDOW_S), Hub(direct_config, window_s=WINDOW_S)
    ours.start()
    theirs.start()
    endpoints: Compared = []
    gpus: list[GpuPair] = []
    try:
        await asyncio.sleep(RUN_S)
        for _ in range(MOMENTS):
            a, b = ours.snapshot(), theirs.snapshot()
            endpoints += _compare_endpoints(a, b, theirs, direct_config)
            gpus += _gpu_pairs(a, b, ours, theirs)
            await asyncio.sleep(SAMPLE_GAP_S)
        sources = statuses(ours)
        await asyncio.to_thread(fleet.inject, "node-down", "gpu-a2")
        await asyncio.sleep(3.0)  # a few failed scrapes, and a poll after them
        after_down = {n: s.last_error for n, s in statuses(ours).items() if s.consecutive_failures}
    finally:
        await ours.stop()
        await theirs.stop()
    return endpoints, gpus, sources, after_down
