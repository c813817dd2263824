"""An incident's silences, against the real ``prometheus-alertmanager``: a runbook run in the
incident silences an alert through the registry, and resolving the incident with
``--expire-silences`` expires it again, shown and confirmed like any change, and logged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from console import cli
from console.incidents import IncidentLog
from console.store import Store
from tests.alertmanager_server import running_alertmanager

RUNBOOK = """\
id: quiet-drill
title: Silence the drill alert while the fix lands
steps:
  - id: silence
    kind: mutate
    title: Silence DrillAlert for an hour
    action: alert.silence
    with:
      matchers: {alertname: DrillAlert}
      duration: 1h
      comment: drill in progress
"""


@pytest.fixture
def am_url(tmp_path: Path) -> Iterator[str]:
    with running_alertmanager(tmp_path / "alertmanager") as url:
        yield url


def state_of(am_url: str, silence_id: str) -> str:
    return httpx.get(f"{am_url}/api/v2/silence/{silence_id}", timeout=5).json()["status"]["state"]


def test_resolving_with_expire_silences_expires_what_the_incident_silenced(
    am_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "quiet-drill.yaml").write_text(RUNBOOK)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"environment: test\nstore: {tmp_path / 'llmops.db'}\nnodes: []\n"
        "endpoints: [{name: chat-api, kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m}]\n"
        f"runbooks: [{tmp_path / 'runbooks'}]\nalertmanager: {{url: {am_url}, every: 1s}}\n"
    )
    store = Store(tmp_path / "llmops.db")
    incident_id = IncidentLog(store).open_incident("drill", None, "ana@bastion", "page")
    store.close()
    c = ["--config", str(config)]
    run = ["runbook", "run", "quiet-drill", "--yes", "--incident", str(incident_id), *c]
    assert cli.run(run) == 0, capsys.readouterr()
    capsys.readouterr()
    store = Store(tmp_path / "llmops.db")
    events = IncidentLog(store).events(incident_id=incident_id)
    (silence_id,) = {
        e["data"]["facts"]["silence_id"]
        for e in events
        if e["data"].get("facts", {}).get("silence_id")
    }
    store.close()
    assert state_of(am_url, silence_id) == "active"

    # Without --yes it is shown, not run, and the incident stays open.
    resolve = ["incidents", "resolve", str(incident_id), "--expire-silences", *c]
    assert cli.run(resolve) == 1
    out, err = capsys.readouterr()
    assert f"DELETE {am_url}/api/v2/silence/{silence_id}" in out
    assert "--yes is needed" in out and "stays as it is" in err
    assert state_of(am_url, silence_id) == "active"

    assert cli.run([*resolve, "--yes"]) == 0
    out, _ = capsys.readouterr()
    assert f"silence {silence_id} expired" in out and "is resolved" in out
    assert state_of(am_url, silence_id) == "expired"
    # A second resolve has nothing to expire and says the incident is resolved already.
    with pytest.raises(cli.UsageError, match="is resolved: it cannot be resolved again"):
        cli.run([*resolve, "--yes"])
    capsys.readouterr()
    assert cli.run(["incidents", "show", str(incident_id), "--json", *c]) == 0
    shown = json.loads(capsys.readouterr().out)
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds[-2:] == ["alert.silence_expired", "incident.resolved"]
