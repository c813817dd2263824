"""Taking a run over after a kill, and retrying a step, on the demo fleet with real
``llmops`` processes (as tests/test_runbook_kill.py does): a resume does not judge again the
check a landed change made false, a finish cut off twice is finished, engine.restore_args puts
back the backup its first plan chose (not the safety copy an earlier attempt kept), a retry
after a written file restarts on it, a part-declined rollback names what it left, and a
read-only run runs no action of a mutate step at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from console import cli
from console.actions import Registry
from console.config import EngineConfig
from console.demo import DemoFleet
from tests.loopback_http import LoopbackServer
from tests.test_runbook_kill import (
    killed_at,
    llmops,
    only_run,
    run_state,
    run_until_killed,
    serving,
)

# The change, then a wait that holds for a while: the kill lands in the wait, after the fix.
PRECHECK_DRILL = """
id: precheck-drill
title: Lower the batch budget where ITL is up, then watch
steps:
  - id: evidence
    kind: check
    expect: [{figure: itl_p95, node: gpu-a1, above: 75ms, window: 5s}]
  - id: shrink
    kind: mutate
    action: engine.set_args
    with: {node: gpu-a1, set: {max-num-batched-tokens: 4096}}
  - id: watch
    kind: wait
    until: [{figure: requests_per_s, node: gpu-a1, above: 0, min_requests: 1}]
    hold: 4s
    timeout: 1m
    every: 1s
    window: 10s
"""

SHRINK_DRILL = """
id: shrink-drill
title: Lower the batch budget
steps:
  - id: shrink
    kind: mutate
    action: engine.set_args
    with: {node: gpu-a1, set: {max-num-batched-tokens: 4096}}
    retry: {attempts: 2, delay: 1s}
"""

# A change, then the same change put back by name-less engine.restore_args (the newest backup).
PUT_BACK_DRILL = """
id: put-back-drill
title: Raise the sequence budget, then put the file back
steps:
  - id: change
    kind: mutate
    action: engine.set_args
    with: {node: gpu-a1, set: {max-num-seqs: 72}}
  - id: put-back
    kind: mutate
    action: engine.restore_args
    with: {node: gpu-a1}
    retry: {attempts: 2, delay: 1s}
    on_failure: stop
"""

TWO_DRILL = """
id: two-drill
title: Two changes, then a long wait
steps:
  - id: one
    kind: mutate
    action: engine.set_args
    with: {node: gpu-a1, set: {max-num-seqs: 72}}
  - id: two
    kind: mutate
    action: engine.set_args
    with: {node: gpu-a2, set: {max-num-seqs: 96}}
  - id: watch
    kind: wait
    until: [{figure: requests_per_s, node: gpu-a1, below: 0}]
    timeout: 2m
    every: 1s
"""

READ_ONLY_DRILL = """
id: read-only-drill
title: Move traffic, say so, ask a tool
steps:
  - id: move
    kind: mutate
    action: routing.set_weights
    with: {router: gw-1, weights: {primary-api: 0, backup-api: 100}}
  - id: tell
    kind: mutate
    action: incident.note
    with: {text: "Traffic moved from primary-api to backup-api"}
  - id: ping
    kind: mutate
    action: http.request
    with: {method: GET, url: "URL"}
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", nodes=2, deterministic=True) as demo:
        yield demo


def config_with(fleet: DemoFleet, tmp_path: Path, *runbooks: str) -> Path:
    folder = tmp_path / "runbooks"
    folder.mkdir()
    for text in runbooks:
        (folder / f"{yaml.safe_load(text)['id']}.yaml").write_text(text)
    config = yaml.safe_load(fleet.config_path.read_text())
    config["runbooks"] = [str(folder)]
    config["store"] = str(tmp_path / "incidents.db")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def not_serving_on_calls(monkeypatch: pytest.MonkeyPatch, *calls: int) -> None:
    """The engine "does not serve" on those calls of the wait (1 is the first): as vLLM that
    takes longer to load than the step waits. Restarts and files are real."""
    real = Registry._wait_serving
    count = 0

    async def wait(
        self: Registry, node: str, engine: EngineConfig, wait_s: float
    ) -> tuple[list[str] | None, float, str]:
        nonlocal count
        count += 1
        if count in calls:
            await asyncio.sleep(0.1)
            return None, 0.1, "still loading"
        return await real(self, node, engine, wait_s)

    monkeypatch.setattr(Registry, "_wait_serving", wait)


def test_a_resume_after_the_change_does_not_judge_the_problem_again(
    fleet: DemoFleet, tmp_path: Path
) -> None:
    """Killed after the fix landed: the check that found the problem (ITL up) is false now,
    as the fix meant. The resume does not judge it again (that would fail and roll the fix
    back): it says it passed before the interruption and goes on to verify."""
    config = config_with(fleet, tmp_path, PRECHECK_DRILL)
    fleet.inject("latency-spike", "gpu-a1")
    run_until_killed(config, "[3/3] watch started", runbook="precheck-drill")
    fleet.heal()  # the problem is gone, as the fix makes it go
    run_id = str(only_run(config)["id"])
    resumed = llmops("runbook", "resume", run_id, "--yes", config=config)
    out = resumed.stdout
    assert resumed.returncode == 0, out + resumed.stderr
    assert (
        "[1/3] evidence ok: passed before the interruption (not re-checked: shrink has "
        "changed what it judged since)"
    ) in out
    assert "rolled back" not in out
    assert serving(fleet).max_num_batched_tokens == 4096  # the fix stays
    assert run_state(config, int(run_id)) == "verified"


def test_a_finish_killed_again_is_finished_by_the_next_resume(
    fleet: DemoFleet, tmp_path: Path
) -> None:
    """Killed once the file is written, then the resume killed as it restarts: the next
    resume restarts on the file again (not "already set; nothing to do", then a rollback)."""
    config = config_with(fleet, tmp_path, SHRINK_DRILL)
    run_until_killed(config, "| wrote /etc/vllm/args.yaml", runbook="shrink-drill")
    run_id = str(only_run(config)["id"])
    killed_at(config, "| $ sudo systemctl restart", "runbook", "resume", run_id, "--yes")
    assert run_state(config, int(run_id)) == "interrupted at shrink"
    resumed = llmops("runbook", "resume", run_id, "--yes", config=config)
    out = resumed.stdout
    assert resumed.returncode == 0, out + resumed.stderr
    assert "max-num-batched-tokens=4096 in the file already, restart to run it" in out
    assert "nothing to do" not in out and "rolled back" not in out
    assert serving(fleet).max_num_batched_tokens == 4096


def test_a_forward_restore_cut_off_is_finished_on_the_backup_it_chose(
    fleet: DemoFleet, tmp_path: Path
) -> None:
    """engine.restore_args without a backup named, killed once it wrote the file: the resume
    restarts on the backup its first plan chose, not on the newest one, which is the safety
    copy the killed attempt kept of the file it replaced (the change it meant to remove)."""
    before = serving(fleet).max_num_seqs
    config = config_with(fleet, tmp_path, PUT_BACK_DRILL)
    run = ("runbook", "run", "put-back-drill", "--yes")
    out = killed_at(config, "| wrote /etc/vllm/args.yaml", *run, nth=2)
    chosen = out.split("put back ")[1].split(",")[0]  # the backup the change kept
    run_id = str(only_run(config)["id"])
    resumed = llmops("runbook", "resume", run_id, "--yes", config=config)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"/etc/vllm/args.yaml matches {chosen} already, restart to run it" in resumed.stdout
    assert before != 72 and serving(fleet).max_num_seqs == before


def test_a_restore_retried_puts_back_the_backup_its_first_attempt_chose(
    fleet: DemoFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """The first attempt of the put-back wrote the file and the engine did not serve in
    time: the second restarts on the same backup, not on the copy the first one kept."""
    before = serving(fleet).max_num_seqs
    config = config_with(fleet, tmp_path, PUT_BACK_DRILL)
    not_serving_on_calls(monkeypatch, 2)  # 1 is the change's, 2 the put-back's first
    code = cli.run(["--config", str(config), "runbook", "run", "put-back-drill", "--yes"])
    out = capfd.readouterr().out
    assert code == 0, out
    assert "[2/2] put-back started: engine.restore_args on gpu-a1: /etc/vllm/args.yaml matches" in (
        out
    )
    assert serving(fleet).max_num_seqs == before


def test_a_restore_that_never_verifies_says_what_it_left(
    fleet: DemoFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    config = config_with(fleet, tmp_path, PUT_BACK_DRILL)
    not_serving_on_calls(monkeypatch, 2, 3)
    code = cli.run(["--config", str(config), "runbook", "run", "put-back-drill", "--yes"])
    out = capfd.readouterr().out
    assert code == 1, out
    assert (
        "run failed: put-back failed; 1 change(s) left in place: change (its file put back, "
        "the engine not verified on it)"
    ) in out


def test_a_retry_after_the_file_was_written_restarts_on_it(
    fleet: DemoFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """The first attempt wrote the file and the engine did not serve in time: the second
    restarts on the file (not "already set; nothing to do") and verifies; one undo is kept."""
    config = config_with(fleet, tmp_path, SHRINK_DRILL)
    not_serving_on_calls(monkeypatch, 1)
    code = cli.run(["--config", str(config), "runbook", "run", "shrink-drill", "--yes"])
    out = capfd.readouterr().out
    assert code == 0, out
    assert (
        "[1/1] shrink started: engine.set_args on gpu-a1: max-num-batched-tokens=4096 in the "
        "file already, restart to run it"
    ) in out
    assert serving(fleet).max_num_batched_tokens == 4096
    undos = [e for e in only_run(config)["events"] if e["data"].get("undo")]
    assert len(undos) == 1


def test_a_partly_declined_rollback_names_what_it_did_not_undo(
    fleet: DemoFleet, tmp_path: Path
) -> None:
    """In prod, a take-over rollback confirmed for gpu-a2 only: two is undone, one is not.
    The run reads interrupted during rollback at one (whose undo is pending), and the
    release names it."""
    config = config_with(fleet, tmp_path, TWO_DRILL)
    run_until_killed(config, "[3/3] watch started", runbook="two-drill")
    run_id = str(only_run(config)["id"])
    data = yaml.safe_load(config.read_text())
    data["environment"] = "prod"
    config.write_text(yaml.safe_dump(data))
    undone = llmops(
        "runbook", "rollback", run_id, "--yes", "--confirm-target", "gpu-a2", config=config
    )
    assert undone.returncode == 3, undone.stdout + undone.stderr
    assert "the undo of one was declined; not undone: one (engine.restore_args)" in undone.stdout
    assert run_state(config, int(run_id)) == "interrupted during rollback at one"
    assert serving(fleet, "gpu-a2").max_num_seqs != 96 and serving(fleet).max_num_seqs == 72


def test_read_only_runs_no_action_of_a_mutate_step(fleet: DemoFleet, tmp_path: Path) -> None:
    """Neither the note (the move above it was blocked) nor the GET (which the registry lets
    through unconfirmed) runs; the run ends read-only, not failed."""
    tool = LoopbackServer()
    try:
        config = config_with(fleet, tmp_path, READ_ONLY_DRILL.replace("URL", tool.url + "/x"))
        ran = llmops("--read-only", "runbook", "run", "read-only-drill", config=config)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert tool.requests == []
    finally:
        tool.close()
    assert "[2/3] tell planned: not noted (read-only), would note: Traffic moved" in ran.stdout
    run = only_run(config)
    assert run["state"] == "read-only"
    assert [e for e in run["events"] if e["kind"] == "note"] == []
    shown = json.dumps(run["events"])
    assert "started: incident.note: Traffic moved" not in shown
