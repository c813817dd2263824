"""A real ``llmops runbook run`` killed with SIGKILL during a step: the incident log shows the
run interrupted at that step with nothing missing, and a later process resumes it (after
re-running its checks) or rolls it back.

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

from console.demo import DemoFleet
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


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", nodes=2, deterministic=True) as demo:
        yield demo


@pytest.fixture
def config_path(fleet: DemoFleet, tmp_path: Path) -> Path:
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "kill-drill.yaml").write_text(KILL_DRILL)
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


def run_until_killed(config: Path, marker: str) -> str:
    """Start a run, SIGKILL it as soon as ``marker`` is printed; what it printed."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "console.cli", "--config", str(config)),
            *("runbook", "run", "kill-drill", "--yes"),
        ],
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
        if marker in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


def only_run(config: Path) -> dict:
    listed = llmops("incidents", "list", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    (incident,) = json.loads(listed.stdout)
    (run,) = incident["runs"]
    return run


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
    assert undone.returncode == 1, undone.stdout + undone.stderr  # failed, after its rollback
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
    # The check ran again before the run went on from the step it died in; the change was
    # not made twice.
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
    assert undone.returncode == 1, undone.stdout + undone.stderr
    assert "ROLLBACK FAILED" not in undone.stdout
    assert "nothing to undo" in undone.stdout or "rolled back" in undone.stdout
    assert only_run(config_path)["state"] == "failed"
    deadline = time.monotonic() + 30
    while fleet.engine_args("gpu-a1") != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fleet.engine_args("gpu-a1") == before
