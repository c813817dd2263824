"""Alert rules on the live windows: for, hysteresis, missing data, thresholds as rules, and a
fault on the real demo fleet firing and resolving into the incident log."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from console.alerts import AlertEngine, AlertState, _step, rules_of
from console.config import AlertRule, load_config
from console.demo import DemoFleet
from console.facts import FigureReader
from console.hub import Hub
from console.store import Store
from tests.test_facts import T0, Clock, make_hub, scrape


def rule(**fields: object) -> AlertRule:
    return AlertRule.model_validate({"name": "kv", "figure": "kv_cache_pct", **fields})


def engine_for(hub: Hub, clock: Clock, *rules: AlertRule) -> AlertEngine:
    return AlertEngine(hub.config, FigureReader(hub), clock, rules=rules)


def feed(hub: Hub, clock: Clock, kv: float | None) -> None:
    """A scrape now with the KV cache at ``kv`` (None: the engine stopped answering)."""
    if kv is not None:
        hub.readings.engine_window("gpu-a1").add(clock.now, scrape(10, kv))
        hub.scheduler.record_ok("engine:gpu-a1")


KV_CACHE = [0.5, 0.95, 0.95, 0.95, 0.97, 0.5, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
RESOLVED = "kv resolved: kv_cache_pct of gpu-a1 50.0% (above 90.0%) clear for 5s"


def test_a_rule_fires_after_its_for_and_resolves_after_its_delay(tmp_path: Path) -> None:
    clock = Clock()
    hub = make_hub(tmp_path, clock)
    alerts = engine_for(
        hub, clock, rule(node="gpu-a1", above=90, **{"for": "3s", "resolve_after": "5s"})
    )
    kinds = []
    for second, kv in enumerate(
        [0.5, 0.95, 0.95, 0.95, 0.97, 0.5, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    ):
        clock.now = T0 + second
        feed(hub, clock, kv)
        kinds += [(second, e.kind, e.message) for e in alerts.evaluate()]
    assert kinds == [
        (4, "alert.firing", "kv firing: kv_cache_pct of gpu-a1 97.0% (above 90.0%) for 3s"),
        # Clear at 5, held again at 6 (no second firing), clear from 7: resolved 5 s later.
        (12, "alert.resolved", RESOLVED),
    ]


def test_a_figure_that_is_not_known_neither_fires_nor_resolves(tmp_path: Path) -> None:
    clock = Clock()
    hub = make_hub(tmp_path, clock)
    alerts = engine_for(hub, clock, rule(node="gpu-a1", above=90, **{"for": "1s"}))
    feed(hub, clock, 0.95)
    assert alerts.evaluate() == []
    clock.now += 1
    feed(hub, clock, 0.95)
    assert [e.kind for e in alerts.evaluate()] == ["alert.firing"]
    # The engine stops answering: its gauge is unknown after the window, for minutes.
    for _ in range(300):
        clock.now += 1
        assert alerts.evaluate() == []
    (state,) = alerts.firing()
    assert state.value is None and "no scrape" in state.note


@given(
    st.lists(
        st.tuples(st.floats(0.1, 20.0), st.sampled_from([True, False, None])),
        min_size=1,
        max_size=200,
    )
)
def test_flapping_fires_at_most_once_per_resolve_delay(steps) -> None:
    """Whatever the figure does, two firings of one rule for one subject are at least its
    resolve delay apart, with a resolution between them: one incident, not one per flap."""
    state = AlertState(rule(node="gpu-a1", above=90, **{"for": "2s", "resolve_after": "30s"}), "n")
    now = 0.0
    firings: list[float] = []
    resolutions: list[float] = []
    for dt, holds in steps:
        now += dt
        event = _step(state, holds, now)
        if event == "alert.firing":
            assert len(firings) == len(resolutions)  # resolved since the last one
            firings.append(now)
        elif event == "alert.resolved":
            resolutions.append(now)
    for earlier, later in itertools.pairwise(firings):
        assert later - earlier >= 30.0


def test_the_thresholds_are_rules_of_their_own(tmp_path: Path) -> None:
    clock = Clock()
    hub = make_hub(tmp_path, clock)
    names = {(r.name, r.figure, r.subject_kind, r.subject, r.bound) for r in rules_of(hub.config)}
    assert names == {
        ("threshold.p95-latency", "e2e_p95", "endpoint", "*", ("above", 4.0)),
        ("threshold.ttft-p95", "ttft_p95", "endpoint", "*", ("above", 1.5)),
        ("threshold.error-rate", "error_pct", "endpoint", "*", ("above", 5.0)),
        ("threshold.gpu-temperature", "gpu_temp_max_c", "node", "*", ("above", 85.0)),
        ("threshold.kv-cache-full", "kv_cache_pct", "node", "*", ("above", 90.0)),
    }
    # Every node and every endpoint: the hub's engine evaluates them all.
    hub.alerts.evaluate()
    assert {(s.rule.name, s.subject) for s in hub.alerts.states} >= {
        ("threshold.kv-cache-full", "gpu-a1"),
        ("threshold.error-rate", "chat-api"),
    }


def alerting_config(fleet: DemoFleet, tmp_path: Path, **rule: str) -> Path:
    """The demo's config with probes every 500 ms and one fast rule on the primary provider's
    error rate (no threshold rules): a provider-5xx fault fires it within seconds."""
    data = yaml.safe_load(fleet.config_path.read_text())
    data["store"] = str(tmp_path / "alerts.db")
    for endpoint in data["endpoints"]:
        endpoint["probe"]["every"] = "500ms"
    fast = {"name": "primary-errors", "figure": "error_pct", "endpoint": "chat-api"}
    fast |= {"above": 20, "for": "2s", "window": "10s", "severity": "page", **rule}
    data["alerts"] = {"threshold_rules": False, "rules": [fast]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_a_provider_fault_fires_a_rule_and_healing_resolves_it(tmp_path: Path) -> None:
    with DemoFleet(tmp_path / "demo", deterministic=True) as fleet:
        fleet.start()
        config = load_config(alerting_config(fleet, tmp_path, resolve_after="2s"))
        store = Store(tmp_path / "alerts.db")
        hub = Hub(config, store)
        hub.start()
        try:
            await asyncio.sleep(3)
            fleet.inject("provider-5xx", "primary-api")
            injected = time.monotonic()
            fired = await wait_for_event(store, "alert.firing", 40)
            # Within the rule's for plus a few probe intervals, not its window.
            assert time.monotonic() - injected < 2 + 10
            assert "primary-errors firing: error_pct of chat-api" in fired
            fleet.heal()
            resolved = await wait_for_event(store, "alert.resolved", 60)
            assert "primary-errors resolved" in resolved
        finally:
            await hub.stop()
            store.close()


async def wait_for_event(store: Store, kind: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [e for e in store.events() if e["kind"] == kind]
        if rows:
            return str(rows[-1]["message"])
        await asyncio.sleep(0.25)
    raise AssertionError(f"no {kind} event in {timeout_s:g}s")


@pytest.mark.parametrize("figure", ["e2e_p95", "itl_p95"])
def test_a_latency_rule_takes_a_duration(figure: str) -> None:
    assert rule(figure=figure, node="*", above="150ms").bound == ("above", 0.15)
