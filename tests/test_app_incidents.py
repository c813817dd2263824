"""``:incidents`` in the TUI: the real app, driven by Pilot, on a real SQLite store.

Incidents are made in the store directly, as consoles make them: an alert through the
incident desk (the real ranking of the shipped runbooks on a KV cache at 97%), a runbook
run's steps through the incident log, a change by "another console" through a second
IncidentLog on the same file. The app's source is a fixed snapshot whose ``open_incidents``
the tests set as the hub's housekeeping sets it; the last test runs a real hub on the demo
fleet, where the housekeeping reads an incident another console opened and the replay reads
the samples that hub stored.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Checkbox

from bench.synthetic_fleet import StaticSource
from console.app import LlmopsApp
from console.demo import DemoFleet
from console.hub import Hub
from console.incidents import IncidentLog, IncidentRecord
from console.models import EngineStats, GpuReading
from console.session import Session, make_session
from console.store import Store
from screens.incidents import (
    IncidentNoteDialog,
    IncidentsScreen,
    IncidentTable,
    ReplayScreen,
    StateDialog,
    TimelineList,
    TimelineScreen,
)
from screens.runbooks import ParamInput, RunnerScreen
from tests.test_app_demo import fast_config, wait_for
from tests.test_incident_lifecycle import firing, make_config

OP = "bob@bastion"


class IncidentSource(StaticSource):
    """Fixed snapshots, and the open incidents as a hub's housekeeping would publish them."""

    def __init__(self) -> None:
        super().__init__()
        self.open_incidents: tuple[IncidentRecord, ...] = ()


def kv_scrape(kv: float) -> EngineStats:
    return EngineStats("gpu-a1", "m", 30, 0.0, kv, counters={}, histograms={})


def build(
    tmp_path: Path, *, bell: bool = True, read_only: bool = False
) -> tuple[LlmopsApp, IncidentSource, Session, Hub]:
    config = make_config(tmp_path)
    store = Store(tmp_path / "incidents.db")
    hub = Hub(config, store)  # never started: its readings are what the test puts there
    session = make_session(config, hub, store, read_only=read_only)
    source = IncidentSource()
    app = LlmopsApp(
        source,
        environment="test",
        refresh_s=0.1,
        session=session,
        read_only=read_only,
        bell=bell,
    )
    return app, source, session, hub


def alert_incident(session: Session, hub: Hub) -> int:
    """An incident as the desk opens it: kv-full firing on gpu-a1 with its KV cache at 97%."""
    hub.readings.engine_window("gpu-a1").add(time.time(), kv_scrape(0.97))
    hub.scheduler.record_ok("engine:gpu-a1")
    desk = session.incident_desk()
    change = desk.record(desk.prepare(firing(), hub.snapshot()))
    assert change is not None and change.kind == "incident.opened"
    return change.incident_id


def run_with_steps(log: IncidentLog, incident_id: int) -> int:
    """A runbook run of the incident, its check step with its command, exit status, output."""
    run_id = log.start_run(
        incident_id, "latency-spike", "Latency spike", {"node": "gpu-a1"}, OP, "live"
    )
    log.log(
        run_id, "step.started", "step look (check) started", step="look", data={"kind": "check"}
    )
    log.log(
        run_id,
        "step.finished",
        "step look ok: the node answers",
        step="look",
        data={
            "status": "ok",
            "detail": "ssh gpu-a1 -- uptime",
            "exit_status": 0,
            "output": " 10:00:01 up 3 days,  load average: 0.10",
            "ok": True,
        },
        operator_name=OP,
    )
    log.finish_run(log.run(run_id), "verified", "run verified", {})
    return run_id


async def open_list(pilot, app: LlmopsApp) -> IncidentTable:
    await pilot.press("colon", *"inc", "enter")  # a unique beginning is enough
    assert app.current_mode == "incidents"
    table = app.screen.query_one(IncidentTable)
    await wait_for(pilot, lambda: bool(table._rows), 5)
    await pilot.pause()
    return table


async def select(pilot, table: IncidentTable, incident_id: int) -> None:
    table.focus()
    table.move_cursor(row=list(table._rows).index(f"incident:{incident_id}"))
    await pilot.pause()


def cells(table: IncidentTable, incident_id: int) -> dict[str, str]:
    return {
        column: str(table.get_cell(f"incident:{incident_id}", column))
        for column in ("id", "state", "sev", "target", "runs")
    }


def footer_keys(app: LlmopsApp) -> dict[str, bool]:
    return {
        active.binding.key: active.enabled
        for active in app.screen.active_bindings.values()
        if active.binding.show
    }


def notices(app: LlmopsApp) -> list[tuple[str, str]]:
    return [(n.title, n.message) for n in app._notifications]


def timeline_text(app: LlmopsApp) -> str:
    listing = app.screen.query_one(TimelineList)
    return "\n".join(
        str(listing.get_option_at_index(i).prompt) for i in range(listing.option_count)
    )


async def test_the_list_shows_each_incident_open_first_and_filters(tmp_path: Path) -> None:
    app, _, session, hub = build(tmp_path)
    log = session.log
    old = log.open_incident("gpu-a2 fell off the bus", "gpu-a2", OP)
    log.set_state(old, "resolved", OP)
    alerted = alert_incident(session, hub)
    by_hand = log.open_incident("chat-api slow for the eu tenant", "chat-api", OP, "ticket")
    run_with_steps(log, alerted)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_list(pilot, app)
        # Open first, newest first; the resolved one last.
        assert list(table._rows) == [f"incident:{i}" for i in (by_hand, alerted, old)]
        assert cells(table, alerted) == {
            "id": str(alerted),
            "state": "open",
            "sev": "page",
            "target": "gpu-a1",
            "runs": "1 verified",
        }
        assert cells(table, old)["state"] == "resolved"
        assert cells(table, by_hand)["sev"] == "ticket"
        await pilot.press("slash", *"gpu-a1", "enter")
        assert list(table._rows) == [f"incident:{alerted}"]
        await pilot.press("escape")  # clears the filter
        assert len(table._rows) == 3
        assert table.selected_key == f"incident:{alerted}"  # the cursor kept its row
        await pilot.pause()
        detail = str(app.screen.query_one("#detail").render())
        assert "affects endpoints chat-api; nodes gpu-a1" in detail
        await pilot.press("j")  # the resolved one: its state keys dimmed
        keys = footer_keys(app)
        assert (keys["a"], keys["m"], keys["R"]) == (False, False, False)
        assert keys["n"] is True and keys["e"] is True and keys["p"] is True
        # ? lists the keys that work here.
        await pilot.press("question_mark")
        help_rows = [str(r) for r in app.screen.query_one("DataTable")._data.values()]
        assert any("Note" in r for r in help_rows) and any("follow-up" in r for r in help_rows)
        assert not any("Resolve" in r for r in help_rows)


async def test_a_m_and_shift_r_move_the_incident_on_in_the_log(tmp_path: Path) -> None:
    app, _, session, hub = build(tmp_path)
    alerted = alert_incident(session, hub)
    other = IncidentLog(Store(tmp_path / "incidents.db"))  # another console on the file
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_list(pilot, app)
        assert footer_keys(app)["a"] is True
        await pilot.press("a")
        assert isinstance(app.screen, StateDialog)
        await pilot.press(*"on it", "enter")
        await wait_for(pilot, lambda: other.incident(alerted).state == "acknowledged", 3)
        acked = [
            e for e in other.events(incident_id=alerted) if e["kind"] == "incident.acknowledged"
        ]
        assert acked[0]["data"]["note"] == "on it" and acked[0]["operator"] == session.operator
        await wait_for(pilot, lambda: cells(table, alerted)["state"] == "acknowledged", 3)
        await pilot.pause()
        assert footer_keys(app)["a"] is False  # dimmed: it is past acknowledged
        await pilot.press("m", "enter")  # no note: enter in the empty field confirms
        await wait_for(pilot, lambda: other.incident(alerted).state == "mitigated", 3)
        await pilot.press("R", "escape")  # the dialog cancelled: nothing changes
        await pilot.pause()
        assert other.incident(alerted).state == "mitigated"
        await pilot.press("R", "enter")
        await wait_for(pilot, lambda: other.incident(alerted).state == "resolved", 3)
        kinds = [e["kind"] for e in other.events(incident_id=alerted)]
        assert kinds[-3:] == ["incident.acknowledged", "incident.mitigated", "incident.resolved"]


async def test_a_change_another_console_made_first_is_a_notice(tmp_path: Path) -> None:
    app, _, session, hub = build(tmp_path)
    incident = alert_incident(session, hub)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_list(pilot, app)
        await select(pilot, table, incident)
        # The other engineer resolves it between this console's reads.
        IncidentLog(Store(tmp_path / "incidents.db")).set_state(incident, "resolved", "alice@b")
        await pilot.press("a", "enter")
        await wait_for(pilot, lambda: any(t == "not changed" for t, _ in notices(app)), 3)
        (message,) = [m for t, m in notices(app) if t == "not changed"]
        assert message == f"incident {incident} is resolved already, past acknowledged"
        assert "\n" not in message
        await wait_for(pilot, lambda: cells(table, incident)["state"] == "resolved", 3)
        assert app.is_running


async def test_a_note_and_a_follow_up_are_saved(tmp_path: Path) -> None:
    app, _, session, hub = build(tmp_path, read_only=True)  # the log is not the fleet
    incident = alert_incident(session, hub)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_list(pilot, app)
        await select(pilot, table, incident)
        await pilot.press("n")
        assert isinstance(app.screen, IncidentNoteDialog)
        assert app.screen.query_one(Checkbox).value is False
        await pilot.press(*"kv full", "enter")
        await pilot.pause()
        await pilot.press("N")
        assert app.screen.query_one(Checkbox).value is True
        await pilot.press(*"alert sooner", "enter")

        def kinds() -> list[tuple[str, str]]:
            return [
                (e["kind"], e["message"])
                for e in session.log.events(incident_id=incident)
                if e["kind"] in ("incident.note", "incident.follow_up")
            ]

        await wait_for(pilot, lambda: len(kinds()) == 2, 3)
        assert kinds() == [
            ("incident.note", "kv full"),
            ("incident.follow_up", "alert sooner"),
        ]


async def test_the_timeline_shows_evidence_steps_and_notes_with_no_color(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app, _, session, hub = build(tmp_path)
    incident = alert_incident(session, hub)
    run_with_steps(session.log, incident)
    session.log.set_state(incident, "acknowledged", "alice@b", "looking")
    session.log.add_note(incident, "rollback planned", "alice@b", follow_up=True)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color
        table = await open_list(pilot, app)
        await select(pilot, table, incident)
        await pilot.press("enter")
        assert isinstance(app.screen, TimelineScreen)
        await wait_for(pilot, lambda: app.screen.query_one(TimelineList).option_count > 0, 3)
        text = timeline_text(app)
        # The alert, and the evidence the runbooks were ranked on, each line marked.
        assert "ALERT" in text and "kv-full firing" in text
        assert "1. latency-spike:" in text
        assert "holds         kv_cache_pct of gpu-a1 97.0% (above 90.0%)" in text
        assert "n/a           itl_p95" in text
        assert "prefilled: node=gpu-a1" in text
        # The run's step with its command and result.
        assert "runbook latency-spike started by" in text
        assert "step look ok: the node answers" in text
        assert "$ ssh gpu-a1 -- uptime" in text and "exit status 0" in text
        assert "|  10:00:01 up 3 days" in text
        # State changes with who, notes and follow-ups.
        assert f"incident {incident} acknowledged by alice@b: looking" in text
        assert "FOLLOW-UP alice@b: rollback planned" in text
        # The evidence is shown once (the firing and the opening carry the same).
        assert text.count("1. latency-spike:") == 1
        summary = str(app.screen.query_one("#summary").render())
        assert "ACKNOWLEDGED · page · target gpu-a1" in summary
        # The state keys work here too; esc goes back to the list.
        await pilot.press("m", "enter")
        await wait_for(pilot, lambda: session.log.incident(incident).state == "mitigated", 3)
        await wait_for(pilot, lambda: "MITIGATED" in timeline_text(app), 5)
        await pilot.press("escape")
        assert isinstance(app.screen, IncidentsScreen)


async def test_s_opens_the_suggested_runbook_prefilled_and_joined(tmp_path: Path) -> None:
    app, _, session, hub = build(tmp_path)
    incident = alert_incident(session, hub)
    plain = session.log.open_incident("someone's hunch", None, OP)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_list(pilot, app)
        await select(pilot, table, plain)
        assert footer_keys(app)["s"] is False  # nothing suggested: dimmed
        await select(pilot, table, incident)
        assert footer_keys(app)["s"] is True
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunnerScreen), 3)
        driver = app.runs["latency-spike"]
        assert driver.incident_id == incident
        await wait_for(pilot, lambda: driver.defaults_read, 5)
        await pilot.pause()
        assert app.screen.query_one("#param-node", ParamInput).value == "gpu-a1"
        hint = str(app.screen.query_one("#hint-node").render())
        assert hint.startswith(f"from incident {incident}")
        assert f"joins incident {incident}" in str(app.screen.query_one("#run").render())


async def test_a_new_incident_toasts_and_rings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rings: list[None] = []
    monkeypatch.setattr(LlmopsApp, "bell", lambda self: rings.append(None))
    app, source, session, hub = build(tmp_path)
    log = session.log
    log.open_incident("open before the console started", "gpu-a2", OP, "ticket")
    source.open_incidents = tuple(log.incidents(open_only=True))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "1 incident open" in app.sub_title, 3)
        assert rings == [] and notices(app) == []
        incident = alert_incident(session, hub)  # watch (or this console's hub) opened it
        source.open_incidents = tuple(log.incidents(open_only=True))
        await wait_for(pilot, lambda: bool(rings), 3)
        assert app.sub_title == "overview · 2 incidents open"
        ((title, message),) = notices(app)
        assert title == f"incident {incident} opened"
        assert "kv-full on gpu-a1 · page" in message and "latency-spike" in message
        # The next refresh (a new tuple, the same incidents) rings no more.
        source.open_incidents = tuple(log.incidents(open_only=True))
        await pilot.pause(0.3)
        assert len(rings) == 1 and len(notices(app)) == 1
        # The palette offers each open incident.
        await pilot.press("ctrl+p", *f"incident: #{incident}")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TimelineScreen), 3)
        assert app.screen.incident_id == incident


async def test_with_the_bell_off_a_new_incident_only_toasts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rings: list[None] = []
    monkeypatch.setattr(LlmopsApp, "bell", lambda self: rings.append(None))
    app, source, session, hub = build(tmp_path, bell=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "no incident open" in app.sub_title, 3)
        alert_incident(session, hub)
        source.open_incidents = tuple(session.log.incidents(open_only=True))
        await wait_for(pilot, lambda: bool(notices(app)), 3)
        await pilot.pause(0.2)
        assert rings == []


async def test_export_writes_the_postmortem_beside_the_store(tmp_path: Path) -> None:
    app, _, session, hub = build(tmp_path)
    incident = alert_incident(session, hub)
    run_with_steps(session.log, incident)
    session.log.add_note(incident, "kv alert threshold too late", OP, follow_up=True)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_list(pilot, app)
        await select(pilot, table, incident)
        await pilot.press("e")
        path = tmp_path / f"incident-{incident}.md"
        await wait_for(pilot, lambda: any(str(path) == m for _, m in notices(app)), 3)
        text = path.read_text()
        assert text.startswith(f"# Incident {incident}: kv-full on gpu-a1")
        assert "## Timeline" in text and "kv alert threshold too late" in text
        assert "ssh gpu-a1 -- uptime" in text


def reading(node: str, index: int, util: float) -> GpuReading:
    return GpuReading(
        node=node,
        index=index,
        uuid=f"GPU-{node}-{index}",
        name="NVIDIA H100 80GB HBM3",
        util_pct=util,
        memory_util_pct=40.0,
        memory_total_mib=81559.0,
        memory_used_mib=40000.0,
        temperature_c=61.0,
        power_w=500.0,
        power_limit_w=700.0,
        clock_events=(),
    )


def node_util(app: LlmopsApp) -> str:
    nodes = app.screen.query_one("#nodes")
    return str(nodes.get_cell("node:gpu-a1", "util"))


async def test_replay_shows_the_figures_stored_at_the_events_time(tmp_path: Path) -> None:
    app, _, session, hub = build(tmp_path)
    store = session.log.store
    incident = alert_incident(session, hub)
    opened = session.log.incident(incident).opened_at
    # Stored polls of gpu-a1: 20% busy until the incident, 90% from then on.
    samples: list[tuple[float, GpuReading]] = []
    for k in range(-60, 61, 2):
        util = 20.0 if k < 0 else 90.0
        samples += [(opened + k, reading("gpu-a1", i, util)) for i in range(2)]
    store.add_gpu_samples(samples)
    later = session.log.open_incident("unrelated", None, OP)  # an event of another incident
    assert later
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_list(pilot, app)
        await select(pilot, table, incident)
        await pilot.press("p")
        assert isinstance(app.screen, ReplayScreen)
        replay = app.screen
        await wait_for(pilot, lambda: replay.replay is not None, 5)
        await pilot.pause()
        banner = str(replay.query_one("#banner").render())
        assert banner.startswith(
            f"REPLAY {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(opened))}"
        )
        assert f"incident {incident}" in banner
        assert node_util(app) == "90%"  # the poll at the opening itself
        assert str(replay.query_one("#nodes").get_cell("gpu:gpu-a1:1", "util")) == "90%"
        for _ in range(3):
            await pilot.press("left_square_bracket")  # 30 s before: 20% busy
        await wait_for(
            pilot, lambda: replay.replay is not None and replay.replay.at == opened - 30, 5
        )
        await wait_for(pilot, lambda: node_util(app) == "20%", 5)
        assert "REPLAY" in str(replay.query_one("#banner").render())
        await pilot.press("n")  # the next event: the opening again
        await wait_for(pilot, lambda: replay.replay is not None and replay.replay.at == opened, 5)
        await wait_for(pilot, lambda: node_util(app) == "90%", 5)
        await pilot.press("escape")
        assert isinstance(app.screen, IncidentsScreen)


async def test_on_the_demo_fleet_the_hub_tells_of_an_incident_another_console_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real hub keeping incidents: its housekeeping reads the incident `watch` opened on the
    same file, the header counts it, the app toasts and rings once; the replay at its time
    shows the figures that hub stored."""
    rings: list[None] = []
    monkeypatch.setattr(LlmopsApp, "bell", lambda self: rings.append(None))
    with DemoFleet(tmp_path / "demo", seed=1, deterministic=True) as fleet:
        config = fast_config(fleet)
        store = Store(tmp_path / "console.db")
        hub = Hub(config, store)
        session = make_session(config, hub, store, read_only=False)
        hub.keep_incidents(session.incident_desk())
        app = LlmopsApp(
            hub, environment="demo", faults=fleet, refresh_s=0.2, session=session, bell=True
        )
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: "no incident open" in app.sub_title, 5)
            # Samples stored for a few seconds: something to replay.
            await wait_for(pilot, lambda: store.sample_span() is not None, 10)
            watch = IncidentLog(Store(tmp_path / "console.db"))
            opening = watch.alert_fired(
                "node-hot|node|gpu-a1",
                "node-hot on gpu-a1",
                "node-hot firing: gpu_temp_c of gpu-a1 91C",
                target="gpu-a1",
                severity="page",
                affected={"endpoints": [], "nodes": ["gpu-a1"], "upstreams": []},
                runbook=None,
                data={},
            )
            await wait_for(pilot, lambda: bool(rings), 5)
            assert "1 incident open" in app.sub_title
            assert notices(app)[-1][0] == f"incident {opening.incident_id} opened"
            await pilot.pause(1.1)  # another housekeeping read: no second ring
            assert len(rings) == 1
            table = await open_list(pilot, app)
            await select(pilot, table, opening.incident_id)
            await pilot.press("p")
            replay: Any = app.screen
            assert isinstance(replay, ReplayScreen)
            await wait_for(pilot, lambda: replay.replay is not None, 10)
            await pilot.pause()
            assert "REPLAY" in str(replay.query_one("#banner").render())
            assert node_util(app).endswith("%")  # a figure from the stored polls, not N/A
            about = str(replay.query_one("#about").render())
            assert "stored sample(s)" in about
