"""The incident lifecycle: alerts open and join incidents (once across consoles), states move
forward with who and when, notes, and the runbooks the evidence suggests, on real SQLite
files; two processes writing one database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from console.alerts import AlertEngine, AlertEvent
from console.cli import main
from console.config import load_config
from console.facts import FigureReader
from console.hub import Hub
from console.incidents import IncidentLog, StateRefused, incident_json, incident_markdown
from console.runbook import RunbookError, load_folders, load_runbook, shipped_folder
from console.store import Store
from console.triage import IncidentDesk, affected
from tests.test_facts import T0, Clock, scrape

CONFIG = """
environment: test
store: {store}
nodes:
  - {{name: gpu-a1, host: 127.0.0.1, engine: {{kind: vllm, url: "http://127.0.0.1:9"}}}}
  - {{name: gpu-a2, host: 127.0.0.1, engine: {{kind: vllm, url: "http://127.0.0.1:9"}}}}
endpoints:
  - {{name: chat-api, kind: openai, base_url: "http://127.0.0.1:9/v1", model: m,
     nodes: [gpu-a1]}}
alerts:
  threshold_rules: false
  rules:
    - {{name: kv-full, figure: kv_cache_pct, node: "*", above: 90, for: 2s,
       resolve_after: 5s, severity: page, runbook: latency-spike}}
"""


def make_config(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(store=tmp_path / "incidents.db"))
    return load_config(path)


def firing(subject: str = "gpu-a1", rule: str = "kv-full") -> AlertEvent:
    return AlertEvent(
        kind="alert.firing",
        rule=rule,
        subject_kind="node",
        subject=subject,
        severity="page",
        at=T0,
        message=f"{rule} firing: kv_cache_pct of {subject} 97.0% (above 90.0%) for 2s",
        runbook="latency-spike",
    )


def resolved(subject: str = "gpu-a1") -> AlertEvent:
    event = firing(subject)
    message = f"kv-full resolved: kv_cache_pct of {subject} clear for 5s"
    return AlertEvent(**{**event.__dict__, "kind": "alert.resolved", "message": message})


def desk_for(hub: Hub, store: Store, clock: Clock) -> IncidentDesk:
    runbooks, problems = load_folders([shipped_folder()])
    assert not problems
    return IncidentDesk(IncidentLog(store, clock=clock), hub.config, runbooks, FigureReader(hub))


def record(desk: IncidentDesk, hub: Hub, event: AlertEvent):
    return desk.record(desk.prepare(event, hub.snapshot()))


def test_an_alert_opens_an_incident_and_firing_again_joins_it(tmp_path: Path) -> None:
    clock = Clock()
    config = make_config(tmp_path)
    hub = Hub(config, clock=clock)
    store = Store(tmp_path / "incidents.db")
    desk = desk_for(hub, store, clock)
    log = desk.log

    opened = record(desk, hub, firing())
    assert opened is not None and opened.kind == "incident.opened"
    incident = log.incident(opened.incident_id)
    assert (incident.state, incident.severity, incident.target) == ("open", "page", "gpu-a1")
    # What a node alert touches: the node, the endpoint it serves.
    assert incident.affected == {"endpoints": ["chat-api"], "nodes": ["gpu-a1"], "upstreams": []}
    # A second console logging the same firing adds nothing.
    assert record(desk, hub, firing()) is None
    # Another subject of the same rule is another incident.
    other = record(desk, hub, firing("gpu-a2"))
    assert other is not None and other.incident_id != opened.incident_id
    # Resolved and firing again (a flap past the resolve delay): joins the open incident.
    change = record(desk, hub, resolved())
    assert change is not None and change.kind == "alert.resolved"
    assert record(desk, hub, resolved()) is None  # logged once
    joined = record(desk, hub, firing())
    assert joined is not None
    assert (joined.kind, joined.incident_id) == ("incident.joined", opened.incident_id)
    kinds = [e["kind"] for e in log.events(incident_id=opened.incident_id)]
    assert kinds == [
        "alert.firing",
        "incident.opened",
        "alert.resolved",
        "alert.firing",
    ]
    # Once an engineer resolved it, the alert coming back is a new incident.
    log.set_state(opened.incident_id, "resolved", "ana@bastion", "KV cache back under 80%")
    again = record(desk, hub, firing())
    assert again is not None and again.kind == "incident.opened"
    assert again.incident_id not in (opened.incident_id, other.incident_id)
    store.close()


def test_states_move_forward_with_who_and_why(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "incidents.db")
    log = IncidentLog(store, clock=clock, secrets=("sk-live-123",))
    incident_id = log.open_incident("KV cache full on gpu-a1", "gpu-a1", "ana@bastion", "page")
    clock.now += 60
    log.set_state(incident_id, "acknowledged", "ana@bastion")
    with pytest.raises(StateRefused, match="is acknowledged: it cannot be acknowledged again"):
        log.set_state(incident_id, "acknowledged", "bo@bastion")
    clock.now += 60
    # Straight to resolved is allowed; back is not.
    log.set_state(incident_id, "resolved", "bo@bastion", "key sk-live-123 rotated")
    with pytest.raises(StateRefused, match="resolved already, past mitigated"):
        log.set_state(incident_id, "mitigated", "ana@bastion")
    with pytest.raises(KeyError):
        log.set_state(999, "resolved", "ana@bastion")
    log.add_note(incident_id, "raise the KV cache alert to 95%", "bo@bastion", follow_up=True)
    with pytest.raises(ValueError, match="empty note"):
        log.add_note(incident_id, "  ", "bo@bastion")
    events = log.events(incident_id=incident_id)
    changes = [(e["kind"], e["operator"], e["ts"]) for e in events]
    assert changes == [
        ("incident.opened", "ana@bastion", T0),
        ("incident.acknowledged", "ana@bastion", T0 + 60),
        ("incident.resolved", "bo@bastion", T0 + 120),
        ("incident.follow_up", "bo@bastion", T0 + 120),
    ]
    assert "sk-live-123" not in json.dumps(events)  # a note is redacted on its way in
    assert log.incident(incident_id).state == "resolved"
    assert log.open_count() == 0
    store.close()


def test_the_evidence_ranks_the_runbooks_and_prefills_the_target(tmp_path: Path) -> None:
    """KV cache at 97% on gpu-a1 with preemptions: latency-spike has evidence, the provider
    runbooks none (no endpoint error) and are left out or ranked below."""
    clock = Clock()
    hub = Hub(make_config(tmp_path), clock=clock)
    hub.readings.engine_window("gpu-a1").add(T0, scrape(30, 0.97))
    hub.scheduler.record_ok("engine:gpu-a1")
    store = Store(tmp_path / "incidents.db")
    desk = desk_for(hub, store, clock)
    pending = desk.prepare(firing(), hub.snapshot())
    first = pending.suggestions[0]
    assert first.runbook == "latency-spike"
    assert first.params == {"node": "gpu-a1"}
    assert first.held == 1 and first.of == 3
    shown = [line.shown for line in first.evidence]
    assert "kv_cache_pct of gpu-a1 97.0% (above 90.0%)" in shown
    # The rule names it; its answers.alerts lists latency figures, not the KV cache.
    assert first.linked and not first.answers_alert
    # The ranking and the figures as they were are kept with the incident.
    change = desk.record(pending)
    assert change is not None
    opened = [e for e in desk.log.events(incident_id=change.incident_id)]
    kept = opened[0]["data"]["suggestions"][0]
    assert kept["runbook"] == "latency-spike"
    assert "1 of 3 evidence holds" in kept["why"]
    assert desk.log.incident(change.incident_id).runbook == "latency-spike"
    store.close()


def test_an_endpoint_alert_reads_evidence_on_its_nodes(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert affected(config, "endpoint", "chat-api") == {
        "endpoints": ["chat-api"],
        "nodes": ["gpu-a1"],
        "upstreams": [],
    }
    assert affected(config, "node", "gpu-a2")["endpoints"] == []


def test_two_consoles_racing_on_one_alert_open_one_incident(tmp_path: Path) -> None:
    """A TUI and `llmops watch` see the same alert fire in the same second: one incident, and
    one alert.firing in it, whichever wins."""
    clock = Clock()
    hub = Hub(make_config(tmp_path), clock=clock)
    stores = [Store(tmp_path / "incidents.db") for _ in range(2)]
    desks = [desk_for(hub, s, clock) for s in stores]
    for round_ in range(20):
        event = firing(f"node-{round_}")
        pending = [d.prepare(event, hub.snapshot()) for d in desks]
        barrier = threading.Barrier(2)
        results: list[object] = [None, None]

        def race(i: int, pending=pending, barrier=barrier, results=results) -> None:
            barrier.wait()
            results[i] = desks[i].record(pending[i])

        threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r is not None for r in results) == 1
    log = desks[0].log
    assert len(log.incidents()) == 20
    for incident in log.incidents():
        kinds = [e["kind"] for e in log.events(incident_id=incident.id)]
        assert kinds.count("alert.firing") == 1
    for store in stores:
        store.close()


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.5, 10.0), st.sampled_from([0.5, 0.97, None])),
        min_size=1,
        max_size=60,
    )
)
def test_a_flapping_figure_opens_at_most_one_incident(tmp_path_factory, steps) -> None:
    """Whatever the KV cache does, the rule opens one incident per node until an engineer
    resolves it; its firings and resolves land in that one incident, alternating."""
    tmp_path = tmp_path_factory.mktemp("flap")
    clock = Clock()
    hub = Hub(make_config(tmp_path), clock=clock)
    store = Store(tmp_path / "incidents.db")
    desk = desk_for(hub, store, clock)
    engine = AlertEngine(hub.config, FigureReader(hub), clock)
    for dt, kv in steps:
        clock.now += dt
        if kv is not None:
            hub.readings.engine_window("gpu-a1").add(clock.now, scrape(10, kv))
            hub.scheduler.record_ok("engine:gpu-a1")
        for event in engine.evaluate():
            desk.record(desk.prepare(event, hub.snapshot()))
    incidents = desk.log.incidents()
    assert len(incidents) <= 1
    for incident in incidents:
        kinds = [
            e["kind"]
            for e in desk.log.events(incident_id=incident.id)
            if e["kind"].startswith("alert.")
        ]
        assert kinds[::2] == ["alert.firing"] * len(kinds[::2])
        assert kinds[1::2] == ["alert.resolved"] * len(kinds[1::2])
    store.close()


WRITER = """
import sys, time
from pathlib import Path
from console.incidents import IncidentLog
from console.store import Store

path, who = Path(sys.argv[1]), sys.argv[2]
count, incident, other = (int(a) for a in sys.argv[3:6])
store = Store(path)
for i in range(count):
    store.append_event("drill.tick", f"{who} {i}", source=who, data={"seq": i})
log = IncidentLog(store)
log.set_state(incident, "acknowledged", who)
# The other process's change, seen from here once it has landed.
deadline = time.monotonic() + 60
while log.incident(other).state != "acknowledged":
    assert time.monotonic() < deadline, "the other console's change never showed"
    time.sleep(0.05)
print("saw", other)
"""


def test_two_processes_append_to_one_database(tmp_path: Path) -> None:
    """Two consoles on one bastion: 10,000 events each, all 20,000 there, each process's in
    its own order; each acknowledges an incident and sees the other's acknowledgement."""
    path = tmp_path / "shared.db"
    store = Store(path)
    log = IncidentLog(store)
    first = log.open_incident("one", "gpu-a1", "ana@bastion")
    second = log.open_incident("two", "gpu-a2", "bo@bastion")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = Path(__file__).parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), who, "10000", str(mine), str(theirs)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who, mine, theirs in (("a", first, second), ("b", second, first))
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert out.startswith("saw")
    for who in ("a", "b"):
        rows = store.query("SELECT data FROM events WHERE source = ? ORDER BY id", [who])
        assert [json.loads(r["data"])["seq"] for r in rows] == list(range(10000))
    assert {i.state for i in log.incidents()} == {"acknowledged"}
    store.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_incidents_ack_mitigate_resolve_and_note_from_the_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(store=tmp_path / "incidents.db"))
    store = Store(tmp_path / "incidents.db")
    incident_id = IncidentLog(store).open_incident("KV full", "gpu-a1", "alert kv-full", "page")
    store.close()
    c = ("--config", str(config))
    code, out, _ = run_cli(capsys, "incidents", "ack", str(incident_id), *c)
    assert (code, out.strip()) == (0, f"incident {incident_id} is acknowledged: KV full")
    code, _, err = run_cli(capsys, "incidents", "ack", str(incident_id), *c)
    assert code == 2 and "cannot be acknowledged again" in err and len(err.splitlines()) == 1
    code, out, _ = run_cli(
        capsys, "incidents", "note", str(incident_id), "check the batch size", "--follow-up", *c
    )
    assert code == 0 and "follow-up added" in out
    code, out, _ = run_cli(capsys, "incidents", "mitigate", str(incident_id), *c)
    assert code == 0
    code, out, _ = run_cli(
        capsys, "incidents", "resolve", str(incident_id), "--note", "batch size lowered", *c
    )
    assert code == 0 and "is resolved" in out
    code, _, err = run_cli(capsys, "incidents", "resolve", "99", *c)
    assert code == 2 and "no incident 99" in err
    code, out, _ = run_cli(capsys, "incidents", "list", *c)
    assert "resolved" in out and "page" in out and "gpu-a1" in out
    code, out, _ = run_cli(capsys, "incidents", "show", str(incident_id), "--json", *c)
    kinds = [e["kind"] for e in json.loads(out)["events"]]
    assert kinds == [
        "incident.opened",
        "incident.acknowledged",
        "incident.follow_up",
        "incident.mitigated",
        "incident.resolved",
    ]


async def test_a_watching_hub_opens_incidents_and_counts_the_open_ones(tmp_path: Path) -> None:
    """Through the hub's housekeeping path: the evaluation's events are written in a thread,
    the listeners told, and the open incidents read back for the header."""
    clock = Clock()
    config = make_config(tmp_path)
    store = Store(tmp_path / "incidents.db")
    hub = Hub(config, store, clock=clock)
    hub.keep_incidents(desk_for(hub, store, clock))
    told = []
    hub.incident_listeners.append(told.append)
    for dt in (0.0, 1.0, 1.5):
        clock.now += dt
        hub.readings.engine_window("gpu-a1").add(clock.now, scrape(10, 0.97))
        hub.scheduler.record_ok("engine:gpu-a1")
        hub.evaluate_alerts()
        await hub.record_incidents()
    assert [c.kind for c in told] == ["incident.opened"]
    assert [i.target for i in hub.open_incidents] == ["gpu-a1"]
    await asyncio.sleep(0)
    store.close()


def test_the_postmortem_holds_the_impact_decisions_and_follow_ups(tmp_path: Path) -> None:
    """The KV cache climbs to 99% and comes back: the postmortem's impact row reads the
    figure when the alert fired, at its worst and when it resolved, each with its time."""
    clock = Clock()
    hub = Hub(make_config(tmp_path), clock=clock)
    store = Store(tmp_path / "incidents.db")
    desk = desk_for(hub, store, clock)
    engine = AlertEngine(hub.config, FigureReader(hub), clock)
    for dt, kv in [(0, 0.95), (1, 0.95), (1, 0.96), (1, 0.99), (1, 0.97), (1, 0.5)] + [
        (1, 0.5)
    ] * 6:
        clock.now += dt
        hub.readings.engine_window("gpu-a1").add(clock.now, scrape(10, kv))
        hub.scheduler.record_ok("engine:gpu-a1")
        for event in engine.evaluate():
            desk.record(desk.prepare(event, hub.snapshot()))
    (incident,) = desk.log.incidents()
    log = desk.log
    log.set_state(incident.id, "acknowledged", "ana@bastion")
    log.add_note(incident.id, "alert on KV cache at 85% instead", "ana@bastion", follow_up=True)
    log.set_state(incident.id, "resolved", "ana@bastion", "traffic back to normal")
    (impact,) = incident_json(log, incident.id)["impact"]
    assert impact["at_open"]["value"] == pytest.approx(96.0)
    assert impact["worst"] == {"value": pytest.approx(99.0), "ts": T0 + 3}
    assert impact["at_resolve"]["value"] == pytest.approx(50.0)
    text = incident_markdown(log, incident.id)
    for section in ("## Summary", "## Impact", "## Evidence at open", "## Timeline"):
        assert section in text
    row = next(line for line in text.splitlines() if line.startswith("| kv-full on gpu-a1"))
    assert "| 96.0% at " in row and "| 99.0% at " in row and "| 50.0% at " in row
    assert "acknowledged by ana@bastion" in text.split("## Decisions")[1]
    assert "- [ ] alert on KV cache at 85% instead" in text.split("## Follow-ups")[1]
    store.close()


@pytest.mark.parametrize(
    ("evidence", "error"),
    [
        ("{figure: kv_cache_pct, node: gpu-a1, above: 90}", "answers.evidence[0].node: 'gpu-a1'"),
        ("{figure: kv_cache_pct, node: '*'}", "answers.evidence[0]: no comparison"),
        ("{figure: kv_cache, node: '*', above: 90}", "answers.evidence[0].figure: unknown figure"),
        (
            "{figure: kv_cache_pct, endpoint: '*', above: 90}",
            "kv_cache_pct is not a figure of an endpoint",
        ),
        (
            "{figure: itl_p95, node: '*', at_most: {times: 2, of: {node: a}}}",
            "answers.evidence[0].at_most: not allowed in evidence",
        ),
    ],
)
def test_broken_evidence_is_one_line_at_its_line(tmp_path: Path, evidence: str, error: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "id: bad\ntitle: Bad\nanswers:\n  evidence:\n"
        f"    - {evidence}\nsteps:\n  - {{id: n, kind: note, text: hi}}\n"
    )
    with pytest.raises(RunbookError) as raised:
        load_runbook(path)
    (problem,) = raised.value.problems
    assert problem.startswith(f"{path}:5: ") and error in problem, problem
