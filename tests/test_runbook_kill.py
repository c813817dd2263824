"""A real ``llmops runbook run`` killed with SIGKILL during a step: the incident log shows the
run interrupted at that step with nothing missing, and a later process resumes it (after
re-running the checks that still gate a change) or rolls it back. Killed during its rollback,
it can only be rolled back; a take-over is confirmed, and in dry-run or read-only mode leaves
the run as it was.

The demo fleet runs in the test's process, so it outlives the killed console the way real
nodes do; the console talks to it through the config the fleet wrote, like any fleet.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from console import cli
from console.actions import Registry
from console.demo import DemoFleet
from console.demo.engine_args import EngineArgs
from console.incidents import IncidentLog
from console.store import Store

# A change, then a wait that takes a while whatever the figures: where the kill lands.
KILL_DRILL = """
id: kill-drill
title: Lower the batch budget, then watch the node for a while
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: look
    kind: check
    show: [{figure: requests_per_s, node: "{{ node }}"}]
  - id: shrink
    kind: mutate
    action: engine.set_args
    with: {node: "{{ node }}", set: {max-num-batched-tokens: 4096}}
  - id: watch
    kind: wait
    until: [{figure: requests_per_s, node: "{{ node }}", above: 0, min_requests: 1}]
    hold: 6s
    timeout: 2m
    every: 1s
    window: 10s
  - id: record
    kind: note
    text: watched {{ node }}
"""

# A change, then a wait that cannot hold (requests never go below 0): it fails in seconds
# and the change is rolled back.
UNDO_DRILL = """
id: undo-drill
title: Raise the sequence budget, then a check that fails
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: change
    kind: mutate
    action: engine.set_args
    with: {node: "{{ node }}", set: {max-num-seqs: 72}}
  - id: verify
    kind: wait
    until: [{figure: requests_per_s, node: "{{ node }}", below: 0}]
    timeout: 3s
    every: 1s
  - id: record
    kind: note
    text: max-num-seqs of {{ node }} raised to 72
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", nodes=2, deterministic=True) as demo:
        yield demo


@pytest.fixture
def config_path(fleet: DemoFleet, tmp_path: Path) -> Path:
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "kill-drill.yaml").write_text(KILL_DRILL)
    (folder / "undo-drill.yaml").write_text(UNDO_DRILL)
    config = yaml.safe_load(fleet.config_path.read_text())
    config["runbooks"] = [str(folder)]
    config["store"] = str(tmp_path / "incidents.db")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def llmops(*args: str, config: Path, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def run_until_killed(config: Path, marker: str, runbook: str = "kill-drill") -> str:
    """Start a run, SIGKILL it as soon as ``marker`` is printed; what it printed."""
    return killed_at(config, marker, "runbook", "run", runbook, "--yes")


def killed_at(config: Path, marker: str, *args: str, nth: int = 1) -> str:
    """Run ``llmops ARGS``, SIGKILL it when ``marker`` is printed the ``nth`` time."""
    process = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not selector.select(timeout=1):
            continue
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line and (nth := nth - 1) == 0:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


def only_run(config: Path) -> dict:
    listed = llmops("incidents", "list", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    (incident,) = json.loads(listed.stdout)
    (run,) = incident["runs"]
    return run


def run_state(config: Path, run_id: int) -> str:
    store = Store(Path(yaml.safe_load(config.read_text())["store"]))
    try:
        return IncidentLog(store).run(run_id).state
    finally:
        store.close()


def serving(fleet: DemoFleet, node: str = "gpu-a1", limit_s: float = 30) -> EngineArgs:
    """The arguments the node's engine runs with, once it runs (it may be restarting)."""
    deadline = time.monotonic() + limit_s
    while (args := fleet.engine_args(node)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert args is not None, f"{node} never served again"
    return args


def settles_to(fleet: DemoFleet, wanted: EngineArgs, limit_s: float = 30) -> None:
    """The node's engine comes to run with ``wanted`` (a restart may still be under way)."""
    deadline = time.monotonic() + limit_s
    while fleet.engine_args("gpu-a1") != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fleet.engine_args("gpu-a1") == wanted


def test_killed_during_a_step_it_reads_interrupted_and_rolls_back(
    fleet: DemoFleet, config_path: Path, tmp_path: Path
) -> None:
    before = fleet.engine_args("gpu-a1")
    assert before is not None and before.max_num_batched_tokens == 8192
    run_until_killed(config_path, "[3/4] watch started")
    args = fleet.engine_args("gpu-a1")
    assert args is not None and args.max_num_batched_tokens == 4096  # the change stays
    run = only_run(config_path)
    assert run["state"] == "interrupted at watch"
    kinds = [(e["kind"], e["step"]) for e in run["events"]]
    # Nothing missing: every step up to the kill, each started before it finished.
    assert kinds == [
        ("run.started", None),
        ("step.started", "look"),
        ("step.finished", "look"),
        ("step.started", "shrink"),
        ("step.decision", "shrink"),
        ("step.finished", "shrink"),
        ("step.started", "watch"),
    ]
    shown = llmops("incidents", "show", str(run["incident_id"]), config=config_path)
    assert "interrupted at watch" in shown.stdout
    assert f"llmops runbook rollback {run['id']}" in shown.stdout

    undone = llmops("runbook", "rollback", str(run["id"]), "--yes", config=config_path)
    assert undone.returncode == 0, undone.stdout + undone.stderr  # the rollback asked, done
    assert "rolled back" in undone.stdout
    assert fleet.engine_args("gpu-a1") == before
    store = Store(tmp_path / "incidents.db")
    record = IncidentLog(store).run(run["id"])
    store.close()
    assert record.state == "failed"


def test_killed_during_a_step_it_resumes_there_after_its_checks(
    fleet: DemoFleet, config_path: Path
) -> None:
    run_until_killed(config_path, "[3/4] watch started")
    run = only_run(config_path)
    assert run["state"] == "interrupted at watch"
    resumed = llmops("runbook", "resume", str(run["id"]), "--yes", config=config_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = only_run(config_path)
    assert run["state"] == "verified"
    steps = [(e["kind"], e["step"]) for e in run["events"] if e["kind"] != "step.progress"]
    after = steps[steps.index(("run.resumed", "watch")) :]
    # The check before the change is logged, not judged again (the change landed since: it
    # may have made the check false, as a fix does), then the run went on from the step it
    # died in; the change was not made twice.
    assert after == [
        ("run.resumed", "watch"),
        ("step.started", "look"),
        ("step.finished", "look"),
        ("step.started", "watch"),
        ("step.finished", "watch"),
        ("step.started", "record"),
        ("note", "record"),
        ("step.finished", "record"),
        ("run.finished", None),
    ]
    (look,) = [
        e for e in run["events"][-8:] if e["kind"] == "step.finished" and e["step"] == "look"
    ]
    assert "passed before the interruption (not re-checked" in look["message"]
    args = fleet.engine_args("gpu-a1")
    assert args is not None and args.max_num_batched_tokens == 4096


def test_killed_as_a_change_begins_the_rollback_finds_nothing_to_undo(
    fleet: DemoFleet, config_path: Path
) -> None:
    """Killed right after the change's step started (the backup the plan named may not be
    written yet): the rollback puts the file back if it changed, and otherwise says there was
    nothing to undo; either way the run ends failed-and-rolled-back, not needs attention."""
    before = fleet.engine_args("gpu-a1")
    run_until_killed(config_path, "[2/4] shrink started")
    run = only_run(config_path)
    assert run["state"] == "interrupted at shrink"
    undone = llmops("runbook", "rollback", str(run["id"]), "--yes", config=config_path)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "ROLLBACK FAILED" not in undone.stdout
    assert "nothing to undo" in undone.stdout or "rolled back" in undone.stdout
    assert only_run(config_path)["state"] == "failed"
    deadline = time.monotonic() + 30
    while fleet.engine_args("gpu-a1") != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fleet.engine_args("gpu-a1") == before


def test_killed_during_its_rollback_it_can_only_be_rolled_back(
    fleet: DemoFleet, config_path: Path
) -> None:
    """Resuming would skip the step that failed and report the run verified while the fleet
    is half rolled back: the run reads interrupted during its rollback, resume is refused in
    one line, and rollback finishes the undo (exit 0: what was asked is done)."""
    before = serving(fleet)
    run_until_killed(config_path, "undoing change", runbook="undo-drill")
    run = only_run(config_path)
    assert run["state"] == "interrupted during rollback at change"
    shown = llmops("incidents", "show", str(run["incident_id"]), config=config_path)
    assert "interrupted during rollback at change" in shown.stdout
    assert f"llmops runbook rollback {run['id']}" in shown.stdout
    assert "llmops runbook resume" not in shown.stdout

    resumed = llmops("runbook", "resume", str(run["id"]), "--yes", config=config_path)
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    assert resumed.stdout == ""
    (line,) = resumed.stderr.strip().splitlines()
    assert "cannot be resumed" in line and f"llmops runbook rollback {run['id']}" in line
    assert run_state(config_path, run["id"]) == "interrupted during rollback at change"

    undone = llmops("runbook", "rollback", str(run["id"]), "--yes", config=config_path)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "ROLLBACK FAILED" not in undone.stdout
    settles_to(fleet, before)
    assert run_state(config_path, run["id"]) == "failed"


def test_killed_after_a_change_landed_the_resume_tracks_and_undoes_it(
    fleet: DemoFleet, config_path: Path
) -> None:
    """Killed while the engine restarts on the new file: the resume finds the file changed
    (not "refused before anything changed"), restarts on it and verifies, and when a later
    step fails the change is rolled back with the others, leaving the node as it was."""
    before = serving(fleet)
    run_until_killed(config_path, "waiting up to", runbook="undo-drill")
    assert serving(fleet).max_num_seqs == 72  # the change landed
    run = only_run(config_path)
    assert run["state"] == "interrupted at change"

    resumed = llmops("runbook", "resume", str(run["id"]), "--yes", config=config_path)
    out = resumed.stdout
    assert resumed.returncode == 1, out + resumed.stderr  # verify failed, then the rollback
    assert "max-num-seqs=72 in the file already, restart to run it" in out
    assert "[1/3] change ok: engine.set_args on gpu-a1 (/etc/vllm/args.yaml held it already)" in out
    assert "refused before anything changed" not in out
    assert "[2/3] verify failed: timed out" in out
    assert "[1/3] change rolled back: engine.restore_args" in out
    assert out.count("rolled back: engine.restore_args") == 1  # one change, undone once
    settles_to(fleet, before)
    assert run_state(config_path, run["id"]) == "failed"


def test_a_take_over_is_confirmed_and_dry_run_or_read_only_leave_the_run_as_it_was(
    fleet: DemoFleet, config_path: Path, capfd
) -> None:
    """In a protected environment: rollback --dry-run shows the undo exactly and changes
    nothing, resume --dry-run too, --read-only is refused up front, --yes without the target
    typed declines the undo; each leaves the run to be rolled back, which then does it."""
    run_until_killed(config_path, "[3/4] watch started")
    config = yaml.safe_load(config_path.read_text())
    config["environment"] = "prod"
    config_path.write_text(yaml.safe_dump(config))
    run_id = str(only_run(config_path)["id"])
    changed = serving(fleet)
    assert changed.max_num_batched_tokens == 4096

    def llmops_here(*args: str) -> tuple[int, str]:
        """The command in this process (no interpreter to start): exit status and stdout."""
        capfd.readouterr()
        code = cli.run(["--config", str(config_path), *args])
        return code, capfd.readouterr().out

    code, out = llmops_here("runbook", "rollback", run_id, "--dry-run")
    assert code == 0, out
    assert "would undo shrink: engine.restore_args" in out
    assert "      > -max-num-batched-tokens: 4096" in out  # the exact diff
    assert f"run {run_id} is still interrupted at watch" in out
    code, out = llmops_here("runbook", "resume", run_id, "--dry-run")
    assert code == 0, out
    assert f"run {run_id} is still interrupted at watch" in out
    with pytest.raises(cli.UsageError, match="read-only mode blocks the changes a rollback"):
        llmops_here("--read-only", "runbook", "rollback", run_id, "--yes")
    assert fleet.engine_args("gpu-a1") == changed
    assert run_state(config_path, int(run_id)) == "interrupted at watch"

    code, out = llmops_here("runbook", "rollback", run_id, "--yes")
    assert code == 3, out
    assert "--confirm-target gpu-a1 is needed" in out
    assert fleet.engine_args("gpu-a1") == changed
    # Declined before anything changed: the run is as it was, still resumable.
    assert run_state(config_path, int(run_id)) == "interrupted at watch"
    code, out = llmops_here("runbook", "resume", run_id, "--dry-run")
    assert code == 0, out
    assert f"run {run_id} is still interrupted at watch" in out

    code, out = llmops_here("runbook", "rollback", run_id, "--yes", "--confirm-target", "gpu-a1")
    assert code == 0, out
    assert serving(fleet).max_num_batched_tokens == 8192
    assert run_state(config_path, int(run_id)) == "failed"
    # The dry runs are runs of their own in the incident, each a dry-run.
    store = Store(Path(config["store"]))
    states = [r.state for r in IncidentLog(store).runs()]
    store.close()
    assert states == ["failed", "dry-run", "dry-run", "dry-run"]


def test_a_resume_restarts_on_a_file_that_landed_without_its_restart(
    fleet: DemoFleet, config_path: Path
) -> None:
    """Killed once the new file is written, before the restart: the engine still runs the
    old args. The resume does not take the file for done: it restarts (planned and confirmed
    like any change) and verifies the engine serves with the args, then goes on."""
    run_until_killed(config_path, "| wrote /etc/vllm/args.yaml")
    assert serving(fleet).max_num_batched_tokens == 8192  # no restart happened
    run = only_run(config_path)
    assert run["state"] == "interrupted at shrink"

    resumed = llmops("runbook", "resume", str(run["id"]), "--yes", config=config_path)
    out = resumed.stdout
    assert resumed.returncode == 0, out + resumed.stderr
    assert "in place already" not in out
    assert (
        "      > /etc/vllm/args.yaml on gpu-a1 already holds the change; nothing is written" in out
    )
    assert "      > run on gpu-a1: sudo systemctl restart vllm.service" in out
    assert "[2/4] shrink confirmed by" in out
    assert "[2/4] shrink ok: engine.set_args on gpu-a1 (/etc/vllm/args.yaml held it already)" in out
    assert "run verified" in out
    assert serving(fleet).max_num_batched_tokens == 4096


def test_a_rollback_cut_off_between_file_and_restart_restarts_when_taken_up(
    fleet: DemoFleet, config_path: Path
) -> None:
    """Killed while its rollback writes the old file back (before the restart): the file
    matches the backup, the engine still runs the bad args. The next rollback does not say
    "nothing to undo": it restarts and verifies, and the engine runs the old args again."""
    before = serving(fleet)
    run_until_killed(config_path, "undoing change", runbook="undo-drill")
    run_id = str(only_run(config_path)["id"])
    taken = subprocess.Popen(
        [
            *(sys.executable, "-m", "console.cli", "--config", str(config_path)),
            *("runbook", "rollback", run_id, "--yes"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert taken.stdout is not None
    for line in taken.stdout:
        if "| wrote /etc/vllm/args.yaml" in line:
            os.kill(taken.pid, signal.SIGKILL)
            break
    taken.wait(timeout=30)
    assert taken.returncode == -signal.SIGKILL
    assert serving(fleet).max_num_seqs == 72  # the file is back, the engine is not
    assert run_state(config_path, int(run_id)) == "interrupted during rollback at change"

    undone = llmops("runbook", "rollback", run_id, "--yes", config=config_path)
    out = undone.stdout
    assert undone.returncode == 0, out + undone.stderr
    assert "nothing to undo" not in out
    assert (
        "      > /etc/vllm/args.yaml on gpu-a1 already holds the change; nothing is written" in out
    )
    assert "      > run on gpu-a1: sudo systemctl restart vllm.service" in out
    assert "[1/3] change rolled back: engine.restore_args on gpu-a1 (" in out
    assert serving(fleet) == before
    assert run_state(config_path, int(run_id)) == "failed"


def test_a_dry_run_notes_nothing_and_an_unknown_incident_is_one_line(
    fleet: DemoFleet, config_path: Path, capfd
) -> None:
    with pytest.raises(cli.UsageError, match=r"^--incident 999: no incident 999 in the"):
        cli.run(["--config", str(config_path), "runbook", "run", "undo-drill", "--incident", "999"])
    assert cli.run(["--config", str(config_path), "runbook", "run", "undo-drill", "--dry-run"]) == 0
    run = only_run(config_path)
    assert [e for e in run["events"] if e["kind"] == "note"] == []
    (record,) = [e for e in run["events"] if e["step"] == "record" and e["kind"] != "step.started"]
    assert record["message"] == (
        "step record planned: not noted (dry-run), would note: max-num-seqs of gpu-a1 raised to 72"
    )
    capfd.readouterr()
    assert cli.run(["--config", str(config_path), "incidents", "export", "1"]) == 0
    export = capfd.readouterr().out
    assert "] max-num-seqs of gpu-a1 raised to 72" not in export  # no timeline entry as done
    assert "would note: max-num-seqs of gpu-a1 raised to 72" in export


def test_an_undo_refused_for_another_reason_than_nothing_to_undo_needs_attention(
    fleet: DemoFleet, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The undo names a backup that is taken by the time it runs ("exists already; plan it
    again"): that is not "nothing to undo", the change stays, and the run needs attention."""
    before = serving(fleet)
    free_name = Registry._free_backup_name

    async def taken(self: Registry, action: str, host: str, path: str) -> str:
        if action == "engine.restore_args":  # the backup the change kept: it exists
            return await self._newest_backup(host, path)
        return await free_name(self, action, host, path)

    monkeypatch.setattr(Registry, "_free_backup_name", taken)
    assert cli.run(["--config", str(config_path), "runbook", "run", "undo-drill", "--yes"]) == 1
    run = only_run(config_path)
    assert run["state"] == "needs attention"
    (undo,) = [e["message"] for e in run["events"] if e["kind"] == "rollback.finished"]
    assert undo.startswith("ROLLBACK FAILED: refused: engine.restore_args on gpu-a1 not run: ")
    assert undo.endswith(" exists already; plan it again")
    assert serving(fleet) != before  # the change stays: the run said so
