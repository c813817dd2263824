"""Figures runbooks read (console/facts.py): what they stand on, and when they are not known."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from console.config import load_config
from console.facts import MIN_PROBES, FigureReader
from console.hub import Hub
from console.models import EngineStats, ProbeResult

CONFIG = """
environment: test
nodes:
  - {name: gpu-a1, host: 127.0.0.1, engine: {kind: vllm, url: "http://127.0.0.1:9"}}
endpoints:
  - {name: chat-api, kind: openai, base_url: "http://127.0.0.1:9/v1", model: gpt-4o-mini}
"""
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_hub(tmp_path: Path, clock: Clock) -> Hub:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return Hub(load_config(path), clock=clock)


def scrape(running: float, kv: float) -> EngineStats:
    return EngineStats("gpu-a1", "m", running, 0.0, kv, counters={}, histograms={})


def test_a_gauge_is_known_only_from_a_scrape_inside_the_window(tmp_path: Path) -> None:
    """Right after a change the runner's window starts at the change: the last scrape before
    it tells of the engine as it was (26 running before a restart), and must not pass for now."""
    clock = Clock()
    hub = make_hub(tmp_path, clock)
    hub.readings.engine_window("gpu-a1").add(T0, scrape(26, 0.35))
    hub.scheduler.record_ok("engine:gpu-a1")
    figures = FigureReader(hub)
    clock.now = T0 + 1.0
    running = figures.figure("node", "gpu-a1", "running", window_s=30.0)
    assert running.value == 26 and running.window_s == 1.0
    clock.now = T0 + 3.0  # a change 2 s ago, no scrape since
    for name in ("running", "kv_cache_pct", "waiting"):
        since_change = figures.figure("node", "gpu-a1", name, window_s=2.0)
        assert since_change.value is None, name
        assert since_change.note == "engine: no scrape in the last 2s yet"
    hub.readings.engine_window("gpu-a1").add(T0 + 2.5, scrape(0, 0.0))  # the restarted engine
    assert figures.figure("node", "gpu-a1", "kv_cache_pct", window_s=2.0).value == 0.0


def probe(at: float, ok: bool) -> ProbeResult:
    return ProbeResult("chat-api", at, ok, 200 if ok else 500, 0.1 if ok else None, 0.2)


def test_a_probe_error_rate_counts_every_probe_and_needs_more_than_one(tmp_path: Path) -> None:
    clock = Clock()
    hub = make_hub(tmp_path, clock)
    figures = FigureReader(hub)
    hub.readings.probes["chat-api"] = deque([probe(T0, False)])
    clock.now = T0 + 1.0
    one = figures.figure("endpoint", "chat-api", "error_pct", window_s=10.0)
    # One failed probe is not a 100% error rate yet, and it counts as one probe, not zero.
    assert (one.value, one.n) == (None, 1)
    assert one.note == f"probe: 1 probe(s) in the window, {MIN_PROBES} needed"
    assert one.wait_s == hub.config.endpoint("chat-api").probe.every_s  # a check waits that long
    hub.readings.probes["chat-api"].extend([probe(T0 + 5, False), probe(T0 + 9, True)])
    clock.now = T0 + 10.0
    three = figures.figure("endpoint", "chat-api", "error_pct", window_s=10.0)
    assert three.value is not None and round(three.value, 1) == 66.7
    assert (three.n, three.window_s, three.note) == (3, 10.0, "probe")
