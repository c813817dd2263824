"""The incident log keeps no secret, whoever hands it one: a parameter, a note, a message."""

from __future__ import annotations

from pathlib import Path

from console.incidents import IncidentLog
from console.store import Store

KEY = "sk-demo-0123456789abcdef0123456789abcdef"


def test_secrets_in_parameters_notes_and_messages_never_reach_the_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "log.db")
    log = IncidentLog(store, secrets=["hunter2-not-shaped-like-a-key"])
    incident = log.open_incident(f"token {KEY} leaked", "gpu-a1", "ann@bastion")
    run_id = log.start_run(
        incident,
        "t-http",
        "send a header",
        {"tok": KEY, "password": "hunter2-not-shaped-like-a-key"},
        "ann@bastion",
        "live",
    )
    run = log.run(run_id)
    log.log(run, "note", f"used {KEY}", data={"output": "pw hunter2-not-shaped-like-a-key"})
    log.finish_run(run, "verified", f"done with {KEY}", {"detail": f"Bearer {KEY}"})
    assert log.run(run_id).params["tok"] == "[redacted]"
    store.close()
    data = (tmp_path / "log.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("log.db-*")
    )
    assert KEY.encode() not in data
    assert b"hunter2-not-shaped-like-a-key" not in data
