"""Every shipped runbook, end to end on the embedded demo fleet: the fault is injected, the
runbook runs non-interactively, the demo's state really changes (arguments, revision,
weights), the verification passes on live figures, and the log holds every step in order.
A failing step proves the rollback restores what was there before.

Drills pass short windows as parameters (``window=5s``, ``soak=5s``), so each finishes in
seconds; the full-length drills run in bench/runbook_overhead.py.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from console.cli_runbooks import CliController, Printer, warm_up
from console.config import Config, load_config
from console.demo import DemoFleet
from console.facts import FigureReader
from console.incidents import IncidentLog
from console.runbook import ParamError, load_runbook
from console.runner import Run
from console.session import Session, open_session
from console.store import Store

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


# The providers' figures are their probes, the backup's one every 5 s (the demo config), and
# an error rate of probes needs two of them (console/facts.py MIN_PROBES): a window of three
# intervals always holds two; a 10 s one may hold one when a probe runs late.
PROVIDER_WINDOW = "15s"
PROVIDER_WINDOW_S = 15.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", deterministic=True) as demo:
        yield demo


@pytest.fixture
def config(fleet: DemoFleet) -> Config:
    return load_config(fleet.config_path)


@pytest.fixture
async def session(config: Config, tmp_path: Path) -> AsyncIterator[Session]:
    store = Store(tmp_path / "drill.db")
    async with open_session(config, store, read_only=False) as opened:
        await warm_up(opened.hub)
        yield opened
    store.close()


async def until(
    figures: FigureReader,
    kind: str,
    subject: str,
    figure: str,
    test,
    window_s: float,
    limit_s: float = 60,
) -> float:
    """Wait until a figure passes ``test`` (the fault shows, or a recovery holds)."""
    deadline = time.monotonic() + limit_s
    value = None
    while time.monotonic() < deadline:
        value = figures.figure(kind, subject, figure, window_s).value
        if value is not None and test(value):
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"{figure} of {subject} never passed: last {value}")


async def drill(
    session: Session, runbook: str, params: dict[str, str], *, mode: str = "live"
) -> tuple[Run, str, str]:
    out = io.StringIO()
    controller = CliController(
        yes=True, confirm_targets=(), operator_name=session.operator, interactive=False, out=out
    )
    printer = Printer(out)
    values, _ = await session.values(session.runbooks[runbook], params)
    run = session.start(session.runbooks[runbook], values, controller, mode=mode, listener=printer)
    printer.run = run
    outcome = await run.execute()
    return run, outcome, out.getvalue()


def step_events(log: IncidentLog, run: Run) -> list[tuple[str, str | None, str | None]]:
    return [
        (e["kind"], e["step"], e["data"].get("status"))
        for e in log.events(run_id=run.record.id)
        if e["kind"].startswith(("step.", "run.", "rollback."))
    ]


def finished_in_order(events, steps: list[str]) -> None:
    """Each step started (committed) before it finished, and the steps in runbook order."""
    started = [s for k, s, _ in events if k == "step.started"]
    assert started == steps
    for step in steps:
        kinds = [k for k, s, _ in events if s == step and k.startswith("step.")]
        assert kinds[0] == "step.started" and kinds[-1] in ("step.finished", "step.planned")


async def test_latency_spike_lowers_batched_tokens_and_itl_recovers(
    fleet: DemoFleet, session: Session
) -> None:
    fleet.inject("long-prompts", "gpu-a1")
    await until(session.figures, "node", "gpu-a1", "itl_p95", lambda v: v > 0.075, 5)
    run, outcome, out = await drill(session, "latency-spike", {"window": "5s"})
    assert outcome == "verified", out
    assert run.values["node"] == "gpu-a1"  # the worst ITL, from the facts
    args = fleet.engine_args("gpu-a1")
    assert args is not None and args.max_num_batched_tokens == 2048
    # Verified on live figures while the fault is still on: ITL back under the threshold.
    itl = session.figures.figure("node", "gpu-a1", "itl_p95", 5)
    assert itl.value is not None and itl.value < 0.075
    # min_requests counts requests, not the token gaps the ITL histogram observes.
    assert itl.n == session.figures.figure("node", "gpu-a1", "e2e_p95", 5).n
    events = step_events(session.log, run)
    finished_in_order(
        events,
        [
            "evidence",
            "lower-batched-tokens",
            "lower-batched-tokens-and-cap",
            "itl-recovers",
            "record",
        ],
    )
    assert ("step.finished", "lower-batched-tokens-and-cap", "skipped") in events
    assert "[2/5] lower-batched-tokens started" in out and "+max-num-batched-tokens: 2048" in out
    assert args.max_model_len is None  # no cap asked: the model's own length, as before


async def test_latency_spike_can_cap_max_model_len_in_the_same_restart(
    fleet: DemoFleet, session: Session
) -> None:
    """max_model_len=8192: one restart sets both (shown exactly in the dry run)."""
    before = fleet.engine_args("gpu-a1")
    run, outcome, out = await drill(
        session,
        "latency-spike",
        {"node": "gpu-a1", "max_model_len": "8192", "window": "5s"},
        mode="dry-run",
    )
    assert outcome == "dry-run", out
    assert "+max-model-len: 8192" in out and "+max-num-batched-tokens: 2048" in out
    statuses = {s.step.id: s.status for s in run.steps}
    assert statuses["lower-batched-tokens"] == "skipped"
    assert statuses["lower-batched-tokens-and-cap"] == "planned"
    assert fleet.engine_args("gpu-a1") == before


BREAKS_THE_ENGINE = """
id: no-chunked-prefill
title: Turn chunked prefill off (vLLM refuses to start with a small batch budget)
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: chunked-off
    kind: mutate
    action: engine.set_args
    with:
      node: "{{ node }}"
      set: {enable-chunked-prefill: false, max-num-batched-tokens: 2048}
      wait: 8s
  - id: never-reached
    kind: note
    text: not reached
"""


async def test_an_engine_that_fails_to_start_is_rolled_back(
    fleet: DemoFleet, session: Session, tmp_path: Path
) -> None:
    """vLLM exits at start-up (max_num_batched_tokens smaller than max_model_len without
    chunked prefill): the step fails with the journal's error and the old file comes back."""
    before = fleet.engine_args("gpu-a1")
    path = tmp_path / "no-chunked-prefill.yaml"
    path.write_text(BREAKS_THE_ENGINE)
    session.runbooks["no-chunked-prefill"] = load_runbook(path)
    run, outcome, out = await drill(session, "no-chunked-prefill", {})
    assert outcome == "failed", out
    assert "max_num_batched_tokens (2048) is smaller than max_model_len" in out
    # The compensation restarted the engine on the previous file, and it serves again.
    deadline = time.monotonic() + 20
    while fleet.engine_args("gpu-a1") != before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert fleet.engine_args("gpu-a1") == before
    events = step_events(session.log, run)
    kinds = [k for k, _, _ in events]
    assert kinds.index("rollback.started") > kinds.index("step.finished")
    assert ("rollback.finished", "chunked-off", None) in events
    assert "never-reached" not in {s for _, s, _ in events}


CHANGE_THEN_WAIT = """
id: change-then-wait
title: A change, then a wait that never holds
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: shrink
    kind: mutate
    action: engine.set_args
    with: {node: "{{ node }}", set: {max-num-batched-tokens: 2048}}
  - id: never
    kind: wait
    until: [{figure: requests_per_s, node: "{{ node }}", above: 1000000}]
    timeout: 120s
    every: 0.2s
"""


@pytest.mark.parametrize("rollback", [False, True], ids=["abort", "abort-and-roll-back"])
async def test_stopping_a_run_during_a_wait_ends_it_at_once(
    fleet: DemoFleet, session: Session, tmp_path: Path, rollback: bool
) -> None:
    """x (abort) or b (roll back) while a wait runs: the wait ends at its next read, not
    at its two-minute timeout; rolling back also restores the engine's arguments."""
    before = fleet.engine_args("gpu-a1")
    assert before is not None and before.max_num_batched_tokens != 2048
    path = tmp_path / "change-then-wait.yaml"
    path.write_text(CHANGE_THEN_WAIT)
    runbook = load_runbook(path)
    out = io.StringIO()
    controller = CliController(
        yes=True, confirm_targets=(), operator_name=session.operator, interactive=False, out=out
    )
    printer = Printer(out)

    def listen(update) -> None:
        printer(update)
        if update.kind == "progress" and update.step == "never":
            run.abort(rollback=rollback)

    values, _ = await session.values(runbook, {})
    run = session.start(runbook, values, controller, mode="live", listener=listen)
    printer.run = run
    started = time.monotonic()
    outcome = await run.execute()
    assert time.monotonic() - started < 60, out.getvalue()
    assert outcome == "aborted", out.getvalue()
    never = run.steps[1]
    assert never.status == "failed"
    events = session.log.events(run_id=run.record.id)
    ended = [e["message"] for e in events if e["kind"] == "step.finished" and e["step"] == "never"]
    verb = "rolled back" if rollback else "aborted"
    assert ended and f"{verb} by {session.operator} while waiting" in ended[0]
    args = fleet.engine_args("gpu-a1")
    assert args is not None
    if rollback:
        assert args == before
        assert [e["step"] for e in events if e["kind"] == "rollback.finished"] == ["shrink"]
    else:
        assert args.max_num_batched_tokens == 2048  # abort leaves the change, and says so
        assert not [e for e in events if e["kind"].startswith("rollback.")]


EVIDENCE = """
id: evidence-over-20s
title: A check over a window longer than the console has been watching
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: evidence
    kind: check
    expect: [{figure: e2e_p95, node: "{{ node }}", below: 60s, window: 20s}]
"""


async def test_a_check_waits_until_its_figures_cover_their_window(
    session: Session, tmp_path: Path
) -> None:
    """Just started, the console has seen seconds of traffic: a check "over 20s" gathers
    until its figures cover at least half of it, instead of judging on the first seconds."""
    path = tmp_path / "evidence.yaml"
    path.write_text(EVIDENCE)
    runbook = load_runbook(path)
    window = session.figures.figure("node", "gpu-a1", "e2e_p95", 20)
    assert window.window_s is not None and window.window_s < 10  # warm_up: a few seconds
    progress: list[str] = []

    def listen(update) -> None:
        if update.kind == "progress":
            progress.append(update.text)

    out = io.StringIO()
    controller = CliController(
        yes=True, confirm_targets=(), operator_name=session.operator, interactive=False, out=out
    )
    values, _ = await session.values(runbook, {})
    run = session.start(runbook, values, controller, mode="live", listener=listen)
    assert await run.execute() == "verified"
    assert progress and progress[0].startswith("gathering figures: ")
    covered = session.figures.figure("node", "gpu-a1", "e2e_p95", 20).window_s
    assert covered is not None and covered >= 10
    [ended] = [
        e["message"]
        for e in session.log.events(run_id=run.record.id)
        if e["kind"] == "step.finished"
    ]
    assert "ok   e2e_p95 of gpu-a1" in ended and "over" in ended  # says the span it covers


RETRIED = """
id: retried
title: A check retried, stopped while it waits to try again
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: look
    kind: check
    command: {node: "{{ node }}", run: "cat /etc/vllm/missing.yaml"}
    retry: {attempts: 5, delay: 30s}
"""


@pytest.mark.parametrize("where", ["gathering", "retry"])
async def test_abort_stops_a_check_that_gathers_or_retries(
    session: Session, tmp_path: Path, where: str
) -> None:
    """x while a check gathers figures, or between its tries: the run ends at once, not
    after the gathering or the remaining tries."""
    path = tmp_path / "stop.yaml"
    path.write_text(EVIDENCE if where == "gathering" else RETRIED)
    runbook = load_runbook(path)
    controller = CliController(
        yes=True, confirm_targets=(), operator_name=session.operator, interactive=False
    )
    marker = "gathering figures" if where == "gathering" else "retry 2/5"

    def listen(update) -> None:
        if update.kind == "progress" and update.text.startswith(marker):
            run.abort()

    values, _ = await session.values(runbook, {})
    run = session.start(runbook, values, controller, mode="live", listener=listen)
    started = time.monotonic()
    assert await run.execute() == "aborted"
    assert time.monotonic() - started < 8
    if where == "retry":
        tries = [e for e in session.log.events(run_id=run.record.id) if e["kind"] == "step.started"]
        assert len(tries) == 1  # no second try after the abort


ECHO_TOKEN = """
id: echo-token
title: A command that carries a token
params:
  node: {type: node, default: gpu-a1}
  word: {type: string}
steps:
  - id: send
    kind: mutate
    action: node.run
    with: {node: "{{ node }}", command: "echo Bearer {{ word }}"}
"""


async def test_a_steps_preview_is_redacted_like_the_log(session: Session, tmp_path: Path) -> None:
    """What the runner shows before a step (its plan) masks a secret, as the log does."""
    path = tmp_path / "echo-token.yaml"
    path.write_text(ECHO_TOKEN)
    runbook = load_runbook(path)
    token = "sk-proj-" + "a1b2c3d4e5" * 4
    values, _ = await session.values(runbook, {"word": token})
    out = io.StringIO()
    controller = CliController(
        yes=False, confirm_targets=(), operator_name=session.operator, interactive=False, out=out
    )
    run = session.start(runbook, values, controller, mode="live")
    plan = await run.preview(run.steps[0])
    assert plan is not None and plan.mutating
    assert token not in plan.detail and "[redacted]" in plan.detail
    assert token not in plan.summary


async def test_a_run_whose_parameter_was_a_secret_is_not_resumed_with_the_mask(
    session: Session, tmp_path: Path
) -> None:
    """The log keeps "[redacted]" for a secret parameter: resuming would send that instead
    of the secret, so resume is refused with why (rollback needs no parameter)."""
    path = tmp_path / "echo-token.yaml"
    path.write_text(ECHO_TOKEN)
    session.runbooks["echo-token"] = load_runbook(path)
    incident = session.log.open_incident("t", "gpu-a1", session.operator)
    token = "sk-proj-" + "a1b2c3d4e5" * 4
    run_id = session.log.start_run(
        incident, "echo-token", "t", {"node": "gpu-a1", "word": token}, session.operator, "live"
    )
    # Its process is gone: a pid no process has.
    session.log.store.update_row(
        "runbook_runs", run_id, {"pid": 2**22 + 17, "pid_started_at": 1.0}, None
    )
    controller = CliController(
        yes=True, confirm_targets=(), operator_name=session.operator, interactive=False
    )
    with pytest.raises(ParamError, match="parameter word held a secret"):
        await session.take_over(run_id, "resume", controller, "live")
    assert session.log.run(run_id).interrupted  # untouched: still there to roll back


async def test_provider_failover_moves_traffic_to_the_backup(
    fleet: DemoFleet, session: Session
) -> None:
    fleet.inject("provider-5xx", "primary-api")
    await until(session.figures, "endpoint", "gateway", "error_pct", lambda v: v > 20, 5)
    # What failing_upstream reads: the primary's own probes, which may not have run since
    # the fault while the gateway's already failed.
    await until(session.figures, "upstream", "primary-api", "error_pct", lambda v: v > 0, 5)
    run, outcome, out = await drill(session, "provider-failover", {"window": PROVIDER_WINDOW})
    assert outcome == "verified", out
    assert run.values["failing"] == "primary-api" and run.values["backup"] == "backup-api"
    weights = fleet.router_weights("chat-api")
    assert weights["primary-api"] == 0 and weights["backup-api"] == 100
    finished_in_order(
        step_events(session.log, run),
        ["failing-errors", "move-traffic", "gateway-recovers", "record"],
    )


async def test_provider_failback_returns_traffic_in_steps(
    fleet: DemoFleet, session: Session
) -> None:
    fleet.inject("provider-429", "primary-api")
    await until(session.figures, "endpoint", "gateway", "error_pct", lambda v: v > 20, 5)
    # What failing_upstream reads: the primary's own probes, which may not have run since
    # the fault while the gateway's already failed.
    await until(session.figures, "upstream", "primary-api", "error_pct", lambda v: v > 0, 5)
    _, outcome, out = await drill(session, "provider-failover", {"window": PROVIDER_WINDOW})
    assert outcome == "verified", out
    fleet.heal()
    # Clean over the drill's own window: a failing provider is probed at its interval, so
    # the window holds its failed probes until they age out of it.
    clean = PROVIDER_WINDOW_S
    await until(session.figures, "upstream", "primary-api", "error_pct", lambda v: v == 0, clean)
    run, outcome, out = await drill(session, "provider-failback", {"window": PROVIDER_WINDOW})
    assert outcome == "verified", out
    weights = fleet.router_weights("chat-api")
    assert weights["primary-api"] == 100 and weights["backup-api"] == 0
    details = [
        e["data"].get("facts", {}).get("weights_after")
        for e in session.log.events(run_id=run.record.id)
        if e["kind"] == "step.finished" and e["data"].get("action") == "routing.set_weights"
    ]
    assert [d["primary-api"] for d in details] == [25, 100]


async def test_model_rollback_restores_the_pinned_revision(
    fleet: DemoFleet, session: Session, config: Config
) -> None:
    pinned = config.node("gpu-a1").engine.pinned_revision
    fleet.inject("bad-revision", "gpu-a1")
    await until(session.figures, "node", "gpu-a1", "error_pct", lambda v: v > 3, 5)
    assert fleet.served_revision("gpu-a1") != pinned
    run, outcome, out = await drill(session, "model-rollback", {"window": "5s"})
    assert outcome == "verified", out
    assert run.values == {"node": "gpu-a1", "revision": pinned, "window": 5.0}
    assert fleet.served_revision("gpu-a1") == pinned
    args = fleet.engine_args("gpu-a1")
    assert args is not None and args.served_model_name == "meta-llama/Llama-3.1-8B-Instruct"
    started = next(
        e["data"]["facts"]
        for e in session.log.events(run_id=run.record.id)
        if e["kind"] == "step.finished" and e["step"] == "pin-revision"
    )
    assert started["revision"] == pinned


async def test_canary_ramp_reaches_100_percent_on_a_good_revision(
    fleet: DemoFleet, session: Session
) -> None:
    params = {
        "canary_node": "gpu-a2",
        "canary": "gpu-a2",
        "stable": "gpu-a1",
        "revision": "c0ffee1",
        "soak": "5s",
        "window": "5s",
    }
    _run, outcome, out = await drill(session, "canary-ramp", params)
    assert outcome == "verified", out
    assert fleet.served_revision("gpu-a2") == "c0ffee1"
    assert fleet.router_weights("chat") == {"gpu-a1": 0, "gpu-a2": 100}


async def test_a_bad_canary_fails_its_gate_and_everything_rolls_back(
    fleet: DemoFleet, session: Session
) -> None:
    weights = fleet.router_weights("chat")
    revision = fleet.served_revision("gpu-a2")
    fleet.inject("bad-canary", "gpu-a2")
    params = {
        "canary_node": "gpu-a2",
        "canary": "gpu-a2",
        "stable": "gpu-a1",
        "revision": "badc0de",
        "soak": "5s",
        "window": "5s",
    }
    run, outcome, out = await drill(session, "canary-ramp", params)
    assert outcome == "failed", out
    assert "gate-5 failed" in out or "gate-25 failed" in out
    assert fleet.router_weights("chat") == weights
    assert fleet.served_revision("gpu-a2") == revision
    undone = [s for k, s, _ in step_events(session.log, run) if k == "rollback.finished"]
    assert undone[-1] == "drain-canary" and "deploy" in undone


async def test_blue_green_switches_everything_to_green(fleet: DemoFleet, session: Session) -> None:
    _run, outcome, out = await drill(
        session, "blue-green", {"blue": "gpu-a1", "green": "gpu-a2", "soak": "5s", "window": "5s"}
    )
    assert outcome == "verified", out
    assert fleet.router_weights("chat") == {"gpu-a1": 0, "gpu-a2": 100}


@pytest.mark.parametrize(
    "runbook,params,fault",
    [
        ("latency-spike", {"window": "5s"}, ("long-prompts", "gpu-a1")),
        ("provider-failover", {"window": PROVIDER_WINDOW}, ("provider-5xx", "primary-api")),
        ("model-rollback", {"window": "5s"}, ("bad-revision", "gpu-a1")),
        (
            "canary-ramp",
            {
                "canary_node": "gpu-a2",
                "canary": "gpu-a2",
                "stable": "gpu-a1",
                "revision": "r2",
                "window": "5s",
            },
            None,
        ),
        ("blue-green", {"blue": "gpu-a1", "green": "gpu-a2", "window": "5s"}, None),
    ],
)
async def test_read_only_runs_the_checks_and_changes_nothing(
    fleet: DemoFleet, config: Config, tmp_path: Path, runbook: str, params: dict, fault
) -> None:
    if fault is not None:
        fleet.inject(*fault)
    deadline = time.monotonic() + 20
    while None in (fleet.served_revision("gpu-a1"), fleet.served_revision("gpu-a2")):
        assert time.monotonic() < deadline, "the demo engines did not come back"
        await asyncio.sleep(0.2)
    args = {n: fleet.engine_args(n) for n in ("gpu-a1", "gpu-a2")}
    router = fleet.router_file()
    store = Store(tmp_path / "ro.db")
    async with open_session(config, store, read_only=True) as session:
        await warm_up(session.hub)
        run, outcome, out = await drill(session, runbook, params, mode="read-only")
    store.close()
    assert outcome == "read-only", out
    # Every change is blocked; one whose `when` does not hold (the max-model-len cap) skipped.
    statuses = [s.status for s in run.steps if s.step.kind == "mutate"]
    assert "blocked" in statuses and set(statuses) <= {"blocked", "skipped"}, statuses
    assert {n: fleet.engine_args(n) for n in args} == args
    assert fleet.router_file() == router


async def test_a_literal_key_in_the_router_file_stays_out_of_the_diff_and_the_log(
    fleet: DemoFleet, session: Session, tmp_path: Path
) -> None:
    """A router file holding a key in clear (as a LiteLLM config may): the weights diff shows
    its context lines, and the key is masked there and in every stored event."""
    path = fleet._running_gateway().config_path
    key = "Backup-Prod-Key-7781"
    path.write_text(path.read_text().replace("os.environ/LLMOPS_DEMO_BACKUP_KEY", key))
    params = {"failing": "primary-api", "backup": "backup-api", "window": PROVIDER_WINDOW}
    run, outcome, out = await drill(session, "provider-failover", params, mode="dry-run")
    assert outcome == "dry-run", out
    assert "api_key: [redacted]" in out and key not in out
    stored = [repr(e) for e in session.log.events(run_id=run.record.id)]
    assert stored and not [e for e in stored if key in e]
    assert key in path.read_text()  # a dry run: the file itself is as it was


async def test_failback_does_not_start_where_no_failover_is_in_place(
    fleet: DemoFleet, session: Session
) -> None:
    """On a healthy fleet the idle upstream is the backup: a failback must not 'return'
    traffic to it. Its defaults exist only while a failover is in place."""
    with pytest.raises(ParamError, match="no failover in place"):
        await session.values(session.runbooks["provider-failback"], {"window": PROVIDER_WINDOW})
    assert fleet.router_weights("chat-api") == {"primary-api": 100, "backup-api": 0}
