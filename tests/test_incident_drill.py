"""An incident drill end to end on the demo fleet, headless: `llmops watch` keeps watch, a
fault fires the demo's rule after its `for:`, an incident opens with the right runbook
ranked first and its evidence, the runbook runs with --yes inside the incident, the
engineer mitigates and resolves it, and the exported postmortem holds every step."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from console import cli
from console.demo import DemoFleet

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
ROOT = Path(__file__).parents[1]


class Lines:
    """A subprocess's stdout, read in a thread, so a test can wait for a line with a limit."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: [self._queue.put(x) for x in stream], daemon=True).start()

    def until(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout_s}s; saw: {self.seen}")

    def next_lines(self, count: int, timeout_s: float = 5) -> list[str]:
        return [self._queue.get(timeout=timeout_s) for _ in range(count)]


def test_a_fault_opens_an_incident_that_a_runbook_mitigates_and_a_postmortem_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with DemoFleet(tmp_path / "demo", deterministic=True) as fleet:
        fleet.start()
        config = str(fleet.config_path)
        watch = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "watch", "--config", config],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = Lines(watch)
            lines.until("alert rules", 30)
            time.sleep(3)  # healthy probes first, as before a real outage
            fleet.inject("provider-5xx")  # the primary API answers 503
            injected = time.monotonic()
            fired = lines.until("alert.firing page demo.provider-errors", 60)
            # The rule's for (10 s) plus a few probe intervals, not a minute.
            assert time.monotonic() - injected < 10 + 15, fired
            opened = lines.until("incident.opened", 10)
            assert "suggested runbook provider-failover" in opened
            first, evidence = lines.next_lines(2)
            assert first.strip().startswith("runbook provider-failover: 1 of 1 evidence holds")
            assert "holds: error_pct of chat-api" in evidence
            capsys.readouterr()
            assert cli.run(["incidents", "list", "--json", "--config", config]) == 0
            (incident,) = json.loads(capsys.readouterr().out)
            assert (incident["state"], incident["target"]) == ("open", "chat-api")
            assert incident["affected"]["upstreams"] == ["primary-api"]
            kept = incident["suggestions"][0]
            assert kept["runbook"] == "provider-failover"
            assert kept["params"] == {"failing": "primary-api"}
            incident_id = str(incident["id"])

            assert cli.run(["incidents", "ack", incident_id, "--config", config]) == 0
            run = [
                "runbook", "run", "provider-failover", "--config", config, "--yes",
                "--incident", incident_id, "--param", "failing=primary-api",
                "--param", "window=15s",
            ]  # fmt: skip
            assert cli.run(run) == 0, capsys.readouterr()
            assert fleet.router_weights("chat-api")["backup-api"] > 0
            note = ["incidents", "note", incident_id, "page the provider's status channel"]
            assert cli.run([*note, "--follow-up", "--config", config]) == 0
            assert cli.run(["incidents", "mitigate", incident_id, "--config", config]) == 0
            fleet.heal()
            change = ["incidents", "resolve", incident_id, "--note", "provider back"]
            assert cli.run([*change, "--config", config]) == 0
            capsys.readouterr()
            assert cli.run(["incidents", "export", incident_id, "--config", config]) == 0
            postmortem = capsys.readouterr().out
        finally:
            watch.send_signal(signal.SIGTERM)
            watch.communicate(timeout=30)
    summary = postmortem.split("## Impact")[0]
    assert "- State: resolved" in summary and "- Severity: page" in summary
    assert "| demo.provider-errors on chat-api (error_pct) |" in postmortem
    timeline = postmortem.split("## Timeline")[1].split("## Actions")[0]
    for step in ("failing-errors", "move-traffic", "gateway-recovers", "record"):
        assert f"[{step}]" in timeline, step
    for kind in ("acknowledged by", "mitigated by", "resolved by"):
        assert kind in postmortem.split("## Decisions")[1]
    actions = postmortem.split("## Actions")[1]
    assert "#### move-traffic" in actions and "backup-api" in actions
    assert "- [ ] page the provider's status channel" in postmortem


async def test_the_same_drill_through_the_tui(tmp_path: Path) -> None:
    """Through Pilot: the fault opens an incident (the header counts it, a toast names the
    runbook), `s` on it starts provider-failover prefilled and joined to it, the run is
    confirmed through the runner, `m` and `R` close it, and `e` writes the postmortem."""
    from tests.test_app_demo import wait_for
    from tests.test_app_incidents import notices, open_list, select
    from tests.test_app_runbooks import (
        PROVIDER_WINDOW,
        fill,
        make_app,
        ran_in_order,
        run_through,
        shows,
        verified,
    )

    with DemoFleet(tmp_path / "demo", seed=1, deterministic=True) as fleet:
        app = make_app(fleet, tmp_path)
        assert app.session is not None
        app.source.keep_incidents(app.session.incident_desk())  # as `llmops` itself does
        async with app.run_test(size=(80, 24)) as pilot:
            await shows(app, "upstream", "primary-api", "error_pct", lambda v: v == 0)
            fleet.inject("provider-5xx", "primary-api")
            await wait_for(pilot, lambda: "1 incident open" in app.sub_title, 60)
            (incident,) = app.source.open_incidents
            assert incident.runbook == "provider-failover"
            assert any("provider-failover" in message for _, message in notices(app))
            table = await open_list(pilot, app)
            await select(pilot, table, incident.id)
            await pilot.press("s")
            driver = app.runs["provider-failover"]
            await wait_for(pilot, lambda: driver.defaults_read, 10)
            await pilot.pause()
            assert driver.incident_id == incident.id
            await fill(pilot, app, window=PROVIDER_WINDOW)
            questions = await run_through(pilot, app, driver)
            verified(app, driver)
            assert questions == ["Move all traffic from primary-api to backup-api?"]
            ran_in_order(driver)
            assert driver.run is not None and driver.run.record.incident_id == incident.id
            await pilot.press("colon", *"inc", "enter")
            table = await open_list(pilot, app)
            await select(pilot, table, incident.id)
            await pilot.press("m", "enter")
            log = app.session.log
            await wait_for(pilot, lambda: log.incident(incident.id).state == "mitigated", 5)
            await pilot.press("R", *"failed over to the backup", "enter")
            await wait_for(pilot, lambda: log.incident(incident.id).state == "resolved", 5)
            await pilot.press("e")
            path = tmp_path / f"incident-{incident.id}.md"
            await wait_for(pilot, lambda: path.exists(), 5)
    postmortem = path.read_text()
    timeline = postmortem.split("## Timeline")[1].split("## Actions")[0]
    for step in ("failing-errors", "move-traffic", "gateway-recovers", "record"):
        assert f"[{step}]" in timeline, step
    assert "confirmed by" in postmortem.split("## Decisions")[1]
    assert "resolved by" in postmortem.split("## Decisions")[1]
