"""The replay (console/replay.py): a past moment's overview rebuilt from the store.

The first test is the independent check: a live hub polls the demo fleet on a fake clock and
writes through its real collectors and store writer; the snapshot replayed from the store at
the last moment must equal the one the hub showed then, figure for figure.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from backends import providers
from backends.engines import engine_stats_from_text
from backends.gpu import parse_query_csv
from console.config import Config, load_config
from console.demo import DemoFleet
from console.hub import Hub
from console.models import EngineStats, FleetSnapshot, GpuReading, ProbeResult, SourceStatus
from console.replay import (
    event_times,
    fleet_at,
    gpu_series_at,
    next_time,
    previous_time,
    sample_span,
)
from console.store import Store
from tests.conftest import FIXTURES
from tests.test_hub import metrics

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _status(status: SourceStatus | None) -> tuple[str, bool] | None:
    # Live, staleness is judged on the monotonic clock and errors carry the scheduler's
    # detail; what the overview's figures rest on is whether the source was stale.
    return None if status is None else (status.name, status.stale)


def comparable(snapshot: FleetSnapshot) -> FleetSnapshot:
    """The snapshot with each source status reduced to its name and staleness."""
    return replace(
        snapshot,
        sources=(),
        endpoints=tuple(replace(e, status=_status(e.status)) for e in snapshot.endpoints),
        nodes=tuple(
            replace(n, gpu_status=_status(n.gpu_status), engine_status=_status(n.engine_status))
            for n in snapshot.nodes
        ),
    )


def demo_config(fleet: DemoFleet, tmp_path: Path) -> Config:
    """The demo's config with every probe a minute apart: the test polls them itself."""
    data = yaml.safe_load(fleet.config_path.read_text())
    for endpoint in data["endpoints"]:
        endpoint["probe"]["every"] = "60s"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def test_a_replayed_moment_shows_what_the_live_hub_showed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(T0)
    # Probes stamp their results with the wall clock: the hub's fake one, here.
    wall = SimpleNamespace(time=clock, monotonic=time.monotonic, perf_counter=time.perf_counter)
    monkeypatch.setattr(providers, "time", wall)
    with DemoFleet(tmp_path / "demo", nodes=2, deterministic=True) as fleet:
        config = demo_config(fleet, tmp_path)
        store = Store(tmp_path / "replay.db")
        hub = Hub(config, store, clock=clock)
        try:
            for step in range(40):  # 80 s on the clock, a poll of GPUs and engines every 2 s
                await hub.poll_once("gpus:")
                await hub.poll_once("engine:")
                if step in (5, 30, 39):
                    await hub.poll_once("probe:")
                hub._sample_history(hub.snapshot())  # what housekeeping does every second
                await hub.flush()
                if step < 39:
                    clock.now += 2.0
            live = hub.snapshot()
        finally:
            await hub.stop()
        replay = fleet_at(store, config, clock.now, hub.window_s)

    # Something to compare: latency percentiles, GPU figures, KV cache, queues, sparklines.
    primary = next(e for e in live.endpoints if e.name == "chat-primary")
    assert primary.p95_s is not None and primary.requests_per_s is not None
    assert len(primary.latency_history) > 1
    node = live.nodes[0]
    assert len(node.gpus) == 8 and node.gpus[0].reading.power_w is not None
    assert node.kv_cache_pct is not None and node.running is not None
    assert node.engine is not None and node.engine.itl_p95_s is not None
    assert any(e.served_model for e in live.endpoints)

    assert comparable(replay.snapshot) == comparable(live)
    assert replay.at == live.taken_at
    assert all(s.had_data for s in replay.sources), replay.sources


# -- a fleet written straight to the store


CONFIG = """
environment: test
poll: {gpus: 2s, engine: 2s, stale_after_polls: 2}
nodes:
  - {name: gpu-a1, host: 127.0.0.1, gpus: 8, engine: {kind: vllm, url: "http://127.0.0.1:9"}}
  - {name: gpu-a2, host: 127.0.0.1, gpus: 8, engine: {kind: vllm, url: "http://127.0.0.1:9"}}
  - {name: gpu-a3, host: 127.0.0.1, gpus: 8, engine: {kind: vllm, url: "http://127.0.0.1:9"}}
endpoints:
  - name: chat
    kind: openai
    base_url: "http://127.0.0.1:9/v1"
    model: m
    nodes: [gpu-a1, gpu-a2]
"""


def small_config(tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return load_config(path)


def gpus(node: str, util: float) -> list[GpuReading]:
    (reading,) = parse_query_csv(node, (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text())
    return [replace(reading, index=i, util_pct=util) for i in range(8)]


def engine(node: str, finished: int, running: int) -> EngineStats:
    return replace(engine_stats_from_text(node, metrics(finished, running=running)), node=node)


def write_polls(store: Store, node: str, start: float, end: float, util: float) -> None:
    """A node polled every 2 s over [start, end]: 8 GPUs, and its engine with 5 req/s."""
    ts = start
    while ts <= end:
        store.write_batch(
            gpus=[(ts, g) for g in gpus(node, util)],
            engines=[(ts, engine(node, int((ts - T0) * 5), running=3))],
        )
        ts += 2.0


def test_a_node_without_samples_in_the_window_reads_stale_or_absent_not_zeros(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "x.db")
    at = T0 + 600.0
    write_polls(store, "gpu-a1", at - 150, at, util=80.0)  # answering throughout
    write_polls(store, "gpu-a2", at - 400, at - 300, util=55.0)  # silent for 5 minutes
    # gpu-a3: never a sample.
    store.add_probes([ProbeResult("chat", at - 30, True, 200, 0.1, 0.5, 10, 3, "m")])
    replay = fleet_at(store, small_config(tmp_path), at)
    a1, a2, a3 = replay.snapshot.nodes

    assert [g.reading.util_pct for g in a1.gpus] == [80.0] * 8
    assert a1.kv_cache_pct == 42.0 and a1.running == 3
    assert not a1.gpu_status.stale and not a1.engine_status.stale
    assert replay.source("gpus:gpu-a1").samples == 30  # (at - 60, at], every 2 s

    # Its last readings, marked stale: what a live console still showed ("last known").
    assert a2.gpu_status.stale and a2.gpu_status.last_ok_at == at - 300
    assert [g.reading.util_pct for g in a2.gpus] == [55.0] * 8
    assert a2.engine_status.stale and a2.engine is not None and a2.engine.at == at - 300
    assert not replay.source("gpus:gpu-a2").had_data
    assert replay.source("gpus:gpu-a2").last_at == at - 300

    # Never sampled: absent (DOWN), nothing shown as 0.
    assert a3.gpus == () and a3.kv_cache_pct is None and a3.running is None
    assert a3.engine is None and a3.preemptions_per_s is None
    assert a3.gpu_status.stale and a3.gpu_status.last_ok_at is None
    assert replay.source("engine:gpu-a3") == dataclasses.replace(
        replay.source("engine:gpu-a3"), samples=0, last_at=None
    )

    # The endpoint's figures come from gpu-a1 alone, the stale engine counted and left out.
    (chat,) = replay.snapshot.endpoints
    assert chat.engines == 2 and chat.engines_stale == 1 and chat.engines_used == 1
    assert chat.requests_per_s == 5.0 and chat.p95_s is not None
    assert chat.served_model == "m"
    assert replay.span == (at - 400, at)
    # The GPU screen's graph of the moment: every poll of the minute before it.
    series = gpu_series_at(store, small_config(tmp_path), "gpu-a1", 3, "util_pct", 60.0, at)
    assert series.points == (80.0,) * 31 and series.step_s == 2.0


def test_the_cursor_steps_through_an_incidents_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    opened = T0 + 100
    incident = store.insert_row(
        "incidents",
        {
            "opened_at": opened,
            "title": "chat slow",
            "state": "open",
            "opened_by": "sre@bastion",
            "updated_at": opened,
        },
        {"kind": "incident.opened", "message": "opened", "ts": opened, "incident_id": "new"},
    )
    run = store.insert_row(
        "runbook_runs",
        {
            "incident_id": incident,
            "runbook": "latency-spike",
            "title": "Latency spike",
            "params": "{}",
            "operator": "sre@bastion",
            "mode": "live",
            "started_at": opened + 60,
            "host": "bastion",
            "pid": 1,
        },
        {"kind": "run.started", "message": "started", "ts": opened + 60, "run_id": "new"},
    )
    store.append_event("step.finished", "shrink", ts=opened + 90, run_id=run)
    store.append_event("note", "looks better", ts=opened + 120, incident_id=incident)
    store.append_event("note", "another incident", ts=opened + 30, incident_id=incident + 1)

    times = event_times(store, incident)
    assert times == [opened, opened + 60, opened + 90, opened + 120]
    assert next_time(times, opened) == opened + 60
    assert next_time(times, opened + 61) == opened + 90
    assert next_time(times, opened + 120) is None
    assert previous_time(times, opened + 90) == opened + 60
    assert previous_time(times, opened) is None
    assert sample_span(store) is None
    write_polls(store, "gpu-a1", opened - 10, opened + 10, util=50.0)
    assert sample_span(store) == (opened - 10, opened + 10)
