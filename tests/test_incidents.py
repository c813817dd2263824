"""The incident log keeps no secret, whoever hands it one: a parameter, a note, a message; and
a run that needs attention can be settled by hand, with who and what."""

from __future__ import annotations

from pathlib import Path

import pytest

from console import cli
from console.incidents import IncidentLog, TakenOver
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


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"environment: test\nstore: {tmp_path / 'log.db'}\n"
        "nodes: [{name: gpu-a1, host: 10.0.3.11}]\n"
    )
    return path


def test_a_run_put_right_by_hand_is_settled_with_who_and_what(tmp_path: Path, capfd) -> None:
    """A failed rollback leaves a run needing attention; an interrupted run waits for resume
    or rollback. `llmops runbook settle RUN --note` records what the engineer did by hand and
    ends either; any other run is refused with its state, exit 2."""
    config = _config(tmp_path)
    store = Store(tmp_path / "log.db")
    log = IncidentLog(store)
    incident = log.open_incident("latency-spike on gpu-a1", "gpu-a1", "ann@bastion")
    stuck = log.start_run(incident, "latency-spike", "t", {}, "ann@bastion", "live")
    log.finish_run(log.run(stuck), "needs attention", "a rollback step failed", {})
    gone = log.start_run(incident, "latency-spike", "t", {}, "ann@bastion", "live")
    # The process that ran it is gone: a pid no process has.
    store.update_row("runbook_runs", gone, {"pid": 2**22 + 17, "pid_started_at": 1.0}, None)
    fine = log.start_run(incident, "latency-spike", "t", {}, "ann@bastion", "live")
    log.finish_run(log.run(fine), "verified", "ok", {})
    assert log.run(gone).state == "interrupted"
    assert cli.run(["--config", str(config), "incidents", "show", str(incident)]) == 0
    shown = capfd.readouterr().out
    for run_id in (stuck, gone):
        assert f"llmops runbook settle {run_id} --note" in shown
    assert f"llmops runbook settle {fine} " not in shown

    assert (
        cli.run(
            [
                "--config",
                str(config),
                "runbook",
                "settle",
                str(stuck),
                "--note",
                "restored args.yaml by hand from the backup",
            ]
        )
        == 0
    )
    assert "settled by" in capfd.readouterr().out
    assert cli.run(["--config", str(config), "runbook", "settle", str(gone), "--note", "x"]) == 0
    assert log.run(stuck).state == "settled" and log.run(gone).state == "settled"
    [event] = [e for e in log.events(run_id=stuck) if e["kind"] == "run.settled"]
    assert event["message"].endswith(
        "after it was needs attention: restored args.yaml by hand from the backup"
    )
    assert event["operator"]

    with pytest.raises(cli.UsageError, match=f"run {fine} is verified: only a run that needs"):
        cli.run(["--config", str(config), "runbook", "settle", str(fine), "--note", "x"])
    with pytest.raises(cli.UsageError, match="no run 99 in"):
        cli.run(["--config", str(config), "runbook", "settle", "99", "--note", "x"])
    store.close()


def test_a_run_that_died_during_its_rollback_is_offered_the_rollback_only(
    tmp_path: Path, capfd
) -> None:
    """Its state names the step whose undo had begun; `incidents show` offers to finish the
    undo, not to resume (which would go on as if the failed step had passed)."""
    config = _config(tmp_path)
    store = Store(tmp_path / "log.db")
    log = IncidentLog(store)
    incident = log.open_incident("latency-spike on gpu-a1", "gpu-a1", "ann@bastion")
    run_id = log.start_run(incident, "latency-spike", "t", {}, "ann@bastion", "live")
    run = log.run(run_id)
    log.log(run, "step.started", "step change started", step="change")
    log.log(run, "step.finished", "step change ok", step="change", data={"status": "ok"})
    log.log(run, "step.started", "step verify started", step="verify")
    log.log(run, "step.finished", "step verify failed", step="verify", data={"status": "failed"})
    log.log(run, "rollback.started", "undoing change: engine.restore_args", step="change")
    assert log.run(run_id).state == "rolling back change"  # this process still runs it
    log.release(log.run(run_id), "an undo was declined")  # ...and lets it go
    assert log.run(run_id).state == "interrupted during rollback at change"
    assert cli.run(["--config", str(config), "incidents", "show", str(incident)]) == 0
    shown = capfd.readouterr().out
    state = f"run {run_id} latency-spike by ann@bastion: interrupted during rollback at change"
    assert state in shown
    assert f"finish the undo: llmops runbook rollback {run_id}" in shown
    assert "llmops runbook resume" not in shown
    assert f"llmops runbook settle {run_id} --note" in shown
    store.close()


def test_a_dry_run_cut_off_by_a_kill_is_not_offered_for_a_take_over(tmp_path: Path) -> None:
    """It changed nothing: there is nothing to undo, and a resume would carry it on for
    real. It reads cut off, and no take-over accepts it."""
    store = Store(tmp_path / "log.db")
    log = IncidentLog(store)
    incident = log.open_incident("latency-spike on gpu-a1", "gpu-a1", "ann@bastion")
    run_id = log.start_run(incident, "latency-spike", "t", {}, "ann@bastion", "dry-run")
    log.log(log.run(run_id), "step.started", "step change started", step="change")
    store.update_row("runbook_runs", run_id, {"pid": 2**22 + 17, "pid_started_at": 1.0}, None)
    run = log.run(run_id)
    assert (run.interrupted, run.cut_off) == (False, True)
    assert run.state == "cut off at change (dry-run: nothing was changed)"
    store.close()


def test_of_two_consoles_taking_over_one_run_at_once_only_one_does(tmp_path: Path) -> None:
    """Both read the run as interrupted; the claim is one transaction against the process
    it was read under, so the second is told instead of undoing the change a second time."""
    first, second = Store(tmp_path / "log.db"), Store(tmp_path / "log.db")
    log_a, log_b = IncidentLog(first), IncidentLog(second)
    incident = log_a.open_incident("latency-spike on gpu-a1", "gpu-a1", "ann@bastion")
    run_id = log_a.start_run(incident, "latency-spike", "t", {}, "ann@bastion", "live")
    first.update_row("runbook_runs", run_id, {"pid": 2**22 + 17, "pid_started_at": 1.0}, None)
    seen_a, seen_b = log_a.run(run_id), log_b.run(run_id)
    assert seen_a.interrupted and seen_b.interrupted
    log_a.take_over(seen_a, "ann@bastion", "rolled back")
    with pytest.raises(TakenOver, match=f"run {run_id} was taken over by another console first"):
        log_b.take_over(seen_b, "bob@bastion", "rolled back")
    kinds = [e["kind"] for e in log_a.events(run_id=run_id)]
    assert kinds.count("run.rolled back") == 1
    first.close()
    second.close()
