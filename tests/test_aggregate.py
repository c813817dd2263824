"""Aggregation without servers: readings and source states in, the rows an engineer reads out."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from backends.engines import engine_stats_from_text
from console.aggregate import fleet_snapshot
from console.collectors import FleetReadings
from console.config import Config, load_config
from console.models import ProbeResult, SourceStatus
from screens.cells import endpoint_cells, endpoint_detail, node_cells
from screens.formatting import Alarm

LABELS = 'engine="0",model_name="m"'


def histogram(bounds: tuple[str, ...], counts: tuple[int, ...]) -> str:
    lines = ["# TYPE vllm:e2e_request_latency_seconds histogram"]
    for le, count in zip(bounds, counts, strict=True):
        lines.append(f'vllm:e2e_request_latency_seconds_bucket{{{LABELS},le="{le}"}} {count}')
    lines.append(f"vllm:e2e_request_latency_seconds_count{{{LABELS}}} {counts[-1]}")
    lines.append(f"vllm:e2e_request_latency_seconds_sum{{{LABELS}}} 0")
    return "\n".join(lines) + "\n"


def config(tmp_path: Path, costs: str = "cost_per_hour_usd: 10") -> Config:
    (tmp_path / "known_hosts").write_text("")
    path = tmp_path / "config.yaml"
    path.write_text(f"""
environment: test
ssh: {{known_hosts: known_hosts}}
nodes:
  - {{name: gpu-a, host: 127.0.0.1, gpus: 8, {costs}, engine: {{kind: vllm}}}}
  - {{name: gpu-b, host: 127.0.0.2, gpus: 8, engine: {{kind: vllm}}}}
endpoints:
  - {{name: chat, kind: openai, base_url: "http://127.0.0.1:8000/v1", model: m,
      nodes: [gpu-a, gpu-b]}}
""")
    return load_config(path)


def ok(*names: str) -> dict[str, SourceStatus]:
    return {name: SourceStatus(name, 2.0, last_ok_at=100.0) for name in names}


def test_a_node_with_other_bucket_bounds_is_named_not_silently_dropped(tmp_path: Path) -> None:
    readings = FleetReadings(window_s=60.0, probe_window_s=300.0)
    a, b = readings.engine_window("gpu-a"), readings.engine_window("gpu-b")
    a.add(50.0, engine_stats_from_text("gpu-a", histogram(("0.5", "1", "+Inf"), (0, 0, 0))))
    a.add(100.0, engine_stats_from_text("gpu-a", histogram(("0.5", "1", "+Inf"), (90, 100, 100))))
    slow = ("0.25", "1", "2", "+Inf")
    b.add(50.0, engine_stats_from_text("gpu-b", histogram(slow, (0, 0, 0, 0))))
    b.add(100.0, engine_stats_from_text("gpu-b", histogram(slow, (0, 0, 0, 60))))
    statuses = ok("engine:gpu-a", "engine:gpu-b", "gpus:gpu-a", "gpus:gpu-b", "probe:chat")
    snapshot = fleet_snapshot(config(tmp_path), readings, statuses, 100.0, 60.0)
    (row,) = snapshot.endpoints
    assert row.n == 100  # the percentiles stand on gpu-a's requests alone...
    assert row.left_out and all(name.startswith("gpu-b ") for name in row.left_out)
    state = endpoint_cells(row, snapshot.thresholds)[1]
    assert state == "eng partial" and isinstance(state, Alarm)  # ...and the row says so
    assert "left out of the percentiles, other bucket bounds: gpu-b" in endpoint_detail(row)


def test_engines_that_never_answered_show_no_probe_latency_as_theirs(tmp_path: Path) -> None:
    readings = FleetReadings(window_s=60.0, probe_window_s=300.0)
    statuses = ok("gpus:gpu-a", "gpus:gpu-b", "probe:chat")
    for node in ("gpu-a", "gpu-b"):
        statuses[f"engine:{node}"] = SourceStatus(
            f"engine:{node}", 2.0, last_error="refused", consecutive_failures=3, stale=True
        )
    readings.probes["chat"] = deque([ProbeResult("chat", 99.0, True, 200, 0.05, 0.08, 10, 2, "m")])
    snapshot = fleet_snapshot(config(tmp_path), readings, statuses, 100.0, 60.0)
    (row,) = snapshot.endpoints
    cells = endpoint_cells(row, snapshot.thresholds)
    assert cells[1] == "engines DOWN" and isinstance(cells[1], Alarm)
    assert cells[2:6] == ("N/A", "N/A", "N/A", "N/A")  # not the probe's 80 ms
    node = node_cells(snapshot.nodes[0], snapshot.thresholds)[1]
    assert node == "engine DOWN"  # the GPUs beside it answer


def test_a_node_without_a_cost_makes_the_cost_unknown_not_zero(tmp_path: Path) -> None:
    # gpu-b has no cost_per_hour_usd: the endpoint's GPU$/h is not gpu-a's alone, nor $0.00.
    snapshot = fleet_snapshot(config(tmp_path), FleetReadings(60.0, 300.0), {}, 100.0, 60.0)
    (row,) = snapshot.endpoints
    assert row.gpu_cost_per_hour_usd is None
    assert endpoint_cells(row, snapshot.thresholds)[8] == "N/A"
    assert snapshot.gpu_cost_per_hour_usd is None
    assert snapshot.nodes[0].cost_per_hour_usd == 10
    assert snapshot.nodes[1].cost_per_hour_usd is None


def test_one_engine_stale_and_the_other_not_reporting_yet_keeps_the_stale_minute(
    tmp_path: Path,
) -> None:
    # Found by the second review: the row fell back to the probe's 80 ms as the endpoint's.
    readings = FleetReadings(window_s=60.0, probe_window_s=300.0)
    b = readings.engine_window("gpu-b")
    slow = ("1", "5", "10", "+Inf")
    b.add(30.0, engine_stats_from_text("gpu-b", histogram(slow, (0, 0, 0, 0))))
    b.add(60.0, engine_stats_from_text("gpu-b", histogram(slow, (0, 10, 60, 60))))
    statuses = ok("gpus:gpu-a", "gpus:gpu-b", "probe:chat")
    statuses["engine:gpu-a"] = SourceStatus("engine:gpu-a", 2.0)  # its first scrape hangs
    statuses["engine:gpu-b"] = SourceStatus(
        "engine:gpu-b", 2.0, last_ok_at=60.0, consecutive_failures=4, stale=True
    )
    readings.probes["chat"] = deque([ProbeResult("chat", 99.0, True, 200, 0.05, 0.08, 10, 2, "m")])
    snapshot = fleet_snapshot(config(tmp_path), readings, statuses, 100.0, 60.0)
    (row,) = snapshot.endpoints
    assert row.source == "engine" and row.figures_stale and row.engines_used == 1
    assert row.p50_s is not None and row.p50_s > 5.0  # gpu-b's last minute, not the probe
    assert endpoint_cells(row, snapshot.thresholds)[1] == "engines STALE"
    assert "engine histograms of 1 node(s)" in endpoint_detail(row)


def test_probe_errors_count_over_the_window_not_five_minutes(tmp_path: Path) -> None:
    readings = FleetReadings(window_s=60.0, probe_window_s=300.0)
    failed = [ProbeResult("chat", 100.0 + t, False, 503, None, 0.01) for t in range(0, 120, 10)]
    answered = [
        ProbeResult("chat", 230.0 + t, True, 200, 0.05, 0.08, 10, 2) for t in range(0, 70, 10)
    ]
    readings.probes["chat"] = deque(failed + answered)
    snapshot = fleet_snapshot(config(tmp_path), readings, ok("probe:chat"), 300.0, 60.0)
    (row,) = snapshot.endpoints
    assert row.error_pct == 0  # recovered 70 s ago: the minute holds no failure
