"""Runbooks in the TUI: the real app, driven by Pilot, on the embedded demo fleet.

The runbooks are written into a temporary folder named by the config (``runbooks:``): a check
running ``uptime`` on the node, an engine.set_args step on gpu-a1 and a note; a wait step that
never holds; a change followed by a check that fails, or by a wait that never holds; a
parameter whose fact is not known (no upstream fails).

Runs a killed console left interrupted are made as tests/test_runbook_kill.py makes them (a real
``llmops runbook run`` on the same store, SIGKILLed during a step, or during its rollback), then
shown in ``:runbooks`` and resumed or rolled back from there through the runner.

Then every shipped runbook is drilled through the runner as an engineer would: the fault
injected, the form filled (short windows), c and the dialogs' Confirm, and the demo fleet's
state checked (the CLI's drills of the same runbooks are in tests/test_runbook_drills.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from textual.widgets import Button, Input

from bench.synthetic_fleet import StaticSource
from console.app import LlmopsApp
from console.demo import DemoFleet
from console.hub import Hub
from console.incidents import IncidentLog
from console.session import make_session
from console.store import Store
from screens.modals import ConfirmDialog
from screens.runbooks import (
    InterruptedTable,
    ParamInput,
    RunbooksScreen,
    RunbookTable,
    RunDriver,
    RunnerScreen,
    StepTable,
)
from tests.test_app_demo import fast_config, wait_for
from tests.test_runbook_drills import (
    CHANGE_THEN_WAIT,
    PROVIDER_WINDOW,
    PROVIDER_WINDOW_S,
    finished_in_order,
    step_events,
)
from tests.test_runbook_kill import KILL_DRILL, UNDO_DRILL, run_until_killed, serving, settles_to

SHRINK = """\
id: shrink-batch
title: Shrink the batch on one node
description: Lower max-num-batched-tokens on a node whose TTFT climbs.
answers:
  alerts: [ttft_p95]
params:
  node: {type: node, default: gpu-a1, description: the node to change}
  tokens: {type: int, default: 4096, min: 256, max: 65536}
steps:
  - id: look
    kind: check
    title: the node answers
    command: {node: "{{ node }}", run: uptime}
  - id: shrink
    kind: mutate
    title: fewer batched tokens
    action: engine.set_args
    with: {node: "{{ node }}", set: {max-num-batched-tokens: "{{ tokens }}"}}
    confirm: "Restart vLLM on {{ node }} with max-num-batched-tokens={{ tokens }}?"
  - id: tell
    kind: note
    text: "max-num-batched-tokens on {{ node }} is now {{ tokens }}"
"""

HOLD = """\
id: hold-on
title: Wait for a figure that never comes
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: hold
    kind: wait
    until: [{figure: requests_per_s, node: "{{ node }}", above: 1000000}]
    timeout: 4s
    every: 1s
"""

UNDO = """\
id: shrink-then-look
title: Shrink the batch, then find the node broken
params:
  node: {type: node, default: gpu-a1}
steps:
  - id: shrink
    kind: mutate
    action: engine.set_args
    with: {node: "{{ node }}", set: {max-num-batched-tokens: 2048}}
  - id: look
    kind: check
    command: {node: "{{ node }}", run: "cat /etc/vllm/missing.yaml"}
"""

PICK = """\
id: pick-upstream
title: Move traffic off the failing upstream
params:
  canary: {type: upstream, default: {fact: failing_upstream}}
steps:
  - {id: tell, kind: note, text: "{{ canary }} is failing"}
"""


DEFAULT_TOKENS = 8192  # what the demo's engines start with
HUB_WINDOW_S = 10.0
STORE = "console.db"


def write_runbooks(tmp_path: Path) -> Path:
    """The folder of the tests' runbooks (the app's, and the killed console's)."""
    folder = tmp_path / "runbooks"
    if not folder.exists():
        folder.mkdir()
        for name, text in {
            "shrink": SHRINK,
            "hold": HOLD,
            "pick": PICK,
            "undo": UNDO,
            "wait": CHANGE_THEN_WAIT,
            "kill-drill": KILL_DRILL,
            "undo-drill": UNDO_DRILL,
        }.items():
            (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", seed=1, deterministic=True) as demo:
        yield demo


def make_app(
    fleet: DemoFleet,
    tmp_path: Path,
    *,
    environment: str | None = None,
    read_only: bool = False,
) -> LlmopsApp:
    update: dict[str, object] = {"runbooks": (write_runbooks(tmp_path),)}
    if environment is not None:
        update["environment"] = environment
    config = fast_config(fleet).model_copy(update=update)
    store = Store(tmp_path / STORE)
    # A figure with no window of its own covers the console's: a check first waits until it
    # covers half of it (5s here, not the 30s of a real console's minute).
    hub = Hub(config, store, window_s=HUB_WINDOW_S)
    session = make_session(config, hub, store, read_only=read_only)
    return LlmopsApp(
        hub,
        environment=config.environment,
        faults=fleet,
        refresh_s=0.2,
        session=session,
        read_only=read_only,
    )


def tokens(fleet: DemoFleet, node: str = "gpu-a1") -> int:
    args = fleet.engine_args(node)
    assert args is not None
    return args.max_num_batched_tokens


async def open_runner(pilot, app: LlmopsApp, runbook_id: str) -> RunDriver:
    if isinstance(app.screen, RunnerScreen):
        await pilot.press("escape")  # :runbooks would show this runner again
    await pilot.press("colon", *"runbooks", "enter")
    await pilot.pause()
    table = app.screen.query_one("#runbooks")
    table.focus()
    table.move_cursor(row=list(table._rows).index(f"runbook:{runbook_id}"))
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, RunnerScreen))
    driver = app.runs[runbook_id]
    await wait_for(pilot, lambda: driver.defaults_read)
    await pilot.pause()
    return driver


async def wait_ask(pilot, driver: RunDriver, kind: str, step: str, timeout_s: float = 30) -> None:
    def waiting() -> bool:
        ask = driver.ask
        return ask is not None and ask.kind == kind and ask.step.id == step

    await wait_for(pilot, waiting, timeout_s)
    await pilot.pause()


def footer_keys(app: LlmopsApp) -> dict[str, bool]:
    """key -> enabled, for the keys the footer shows (dimmed ones: False)."""
    return {
        active.binding.key: active.enabled
        for active in app.screen.active_bindings.values()
        if active.binding.show
    }


def detail(app: LlmopsApp) -> str:
    return str(app.screen.query_one("#detail").render())


async def test_the_list_shows_the_runbooks_and_the_palette_opens_one(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("colon", *"runb", "tab", "enter")
        assert app.current_mode == "runbooks"
        table = app.screen.query_one("#runbooks")
        assert {"runbook:shrink-batch", "runbook:hold-on", "runbook:pick-upstream"} <= set(
            table._rows
        )
        await pilot.press("slash", *"shrink-b", "enter")
        assert list(table._rows) == ["runbook:shrink-batch"]
        await pilot.pause()
        assert "parameters: node (node, default gpu-a1), tokens (int, default 4096)" in str(
            app.screen.query_one("#detail").render()
        )
        await pilot.press("escape", "escape")
        assert app.current_mode == "overview"
        await pilot.press("ctrl+p", *"runbook: pick")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunnerScreen))
        assert app.current_mode == "runbooks"
        driver = app.runs["pick-upstream"]
        await wait_for(pilot, lambda: driver.defaults_read)
        await pilot.pause()
        # A fact that is not known leaves its field empty, and says why under it.
        assert app.screen.query_one("#param-canary", Input).value == ""
        hint = str(app.screen.query_one("#hint-canary").render())
        assert hint == "no default: failing_upstream: no upstream has errors now"
        assert footer_keys(app)["ctrl+s"] is False  # an empty field: nothing to start


async def test_a_bad_value_is_shown_under_its_field_and_start_is_refused(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "shrink-batch")
        screen = app.screen
        assert screen.query_one("#param-node", Input).value == "gpu-a1"
        field = screen.query_one("#param-tokens", Input)
        assert field.value == "4096"  # the typed default, written back as text
        assert footer_keys(app)["ctrl+s"] is True
        field.focus()
        await pilot.press("ctrl+a", "ctrl+k", *"12x")
        hint = str(screen.query_one("#hint-tokens").render())
        assert hint == "tokens=12x: not an integer (expected an integer from 256 to 65536)"
        assert footer_keys(app)["ctrl+s"] is False
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert driver.run is None and not driver.running
        assert "fix tokens first" in str(screen.query_one("#prompt").render())
        await pilot.press("ctrl+a", "ctrl+k", *"100")  # below min
        assert "out of range" in str(screen.query_one("#hint-tokens").render())
        await pilot.press("ctrl+a", "ctrl+k", *"2048")
        assert str(screen.query_one("#hint-tokens").render()) == "the runbook's default"
        assert footer_keys(app)["ctrl+s"] is True
        # A name of the right shape that the config does not know: the session refuses it.
        screen.query_one("#param-node", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", *"gpu-a9")
        assert footer_keys(app)["ctrl+s"] is True
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not driver.running)
        await pilot.pause()
        assert driver.run is None
        assert str(screen.query_one("#prompt").render()).startswith(
            "not started: node=gpu-a9: unknown node (known: gpu-a1, "
        )


async def test_step_by_step_a_declined_change_then_a_confirmed_one(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "shrink-batch")
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "look")
        keys = footer_keys(app)
        assert keys["n"] and keys["s"] and keys["c"] and keys["x"]
        assert keys["r"] is False and keys["b"] is False  # no failure to retry or undo
        assert "ctrl+s" not in keys  # a run is going: no second start
        await pilot.press("n")
        await wait_ask(pilot, driver, "step", "shrink")
        assert driver.run is not None and driver.run.steps[0].status == "ok"
        # The cursor follows the run to the step it waits before, whose plan is read ahead;
        # the check's output is kept.
        assert app.screen.query_one(StepTable).selected_id == "shrink"
        await wait_for(pilot, lambda: "+max-num-batched-tokens: 4096" in detail(app))
        await pilot.press("k")
        assert "load average" in detail(app)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog = app.screen
        assert isinstance(app.focused, Button) and app.focused.id == "cancel"
        shown = str(dialog.query_one("#plan Static").render())
        assert f"-max-num-batched-tokens: {DEFAULT_TOKENS}" in shown
        assert "+max-num-batched-tokens: 4096" in shown
        assert "Restart vLLM on gpu-a1 with max-num-batched-tokens=4096?" in str(
            dialog.query_one("#question").render()
        )
        await pilot.press("enter")  # on Cancel
        await wait_for(pilot, lambda: driver.ended)
        assert driver.run.outcome == "declined"
        assert [s.status for s in driver.run.steps] == ["ok", "declined", "pending"]
        assert tokens(fleet) == DEFAULT_TOKENS
        assert isinstance(app.screen, RunnerScreen)
        await pilot.pause()
        # The declined step still shows its plan: the exact diff it would have written.
        app.screen.query_one(StepTable).move_cursor(row=1)
        await pilot.pause()
        assert "+max-num-batched-tokens: 4096" in detail(app)

        first = driver.run
        await pilot.press("ctrl+s")  # a second run, the same values
        await wait_ask(pilot, driver, "step", "look")
        await pilot.press("c")  # on to the next decision: the confirmation
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), 30)
        assert driver.run is not first
        await pilot.press("tab", "enter")  # onto Confirm
        await wait_ask(pilot, driver, "step", "tell", 60)
        assert tokens(fleet) == 4096
        await pilot.press("n")
        await wait_for(pilot, lambda: driver.ended)
        assert driver.run.outcome == "verified"
        assert [s.status for s in driver.run.steps] == ["ok", "ok", "ok"]
        await pilot.press("m", *"looks better", "enter")
        await pilot.pause()
        events = driver.session.log.events(run_id=driver.run.record.id)
        notes = [e for e in events if e["kind"] == "note"]
        assert [n["message"] for n in notes][-1] == "looks better"
        decisions = [e["message"] for e in events if e["kind"] == "step.decision"]
        assert decisions and decisions[0].startswith("confirmed by ")


async def test_a_protected_environment_needs_the_target_typed(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path, environment="prod")
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "shrink-batch")
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "look")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), 30)
        dialog = app.screen
        confirm = dialog.query_one("#confirm", Button)
        assert confirm.disabled
        assert isinstance(app.focused, Button) and app.focused.id == "cancel"
        typed = dialog.query_one("#typed", Input)
        typed.focus()
        await pilot.press(*"gpu-a2")
        assert confirm.disabled  # another node's name does not confirm this one
        await pilot.press("backspace", "1")
        assert not confirm.disabled
        await pilot.press("enter")  # the name typed: the focus goes to Confirm
        assert app.focused is confirm
        await pilot.press("enter")
        await wait_ask(pilot, driver, "step", "tell", 60)
        assert tokens(fleet) == 4096
        events = driver.session.log.events(run_id=driver.run.record.id)
        decision = next(e for e in events if e["kind"] == "step.decision")
        assert decision["data"]["typed_target"] == "gpu-a1"


async def test_the_run_goes_on_while_another_view_is_shown(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "hold-on")
        runner = app.screen
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "hold")
        await pilot.press("n")
        await wait_for(pilot, lambda: driver.run.steps[0].progress != "")
        await pilot.press("colon", *"overview", "enter")
        assert app.current_mode == "overview"
        # The wait goes on and times out while the overview is shown; the app says where the
        # run waits now.
        await wait_ask(pilot, driver, "failure", "hold", 15)
        assert app.current_mode == "overview"
        assert driver.run.steps[0].status == "failed"
        assert any("waits for your choice" in n.message for n in app._notifications)
        await pilot.press("colon", *"runbooks", "enter")
        assert app.screen is runner  # the same runner, where it was left
        await pilot.pause()
        assert str(runner.query_one("#prompt").render()).startswith("hold failed (why: below)")
        assert "\ntimed out after 4s: requests_per_s of gpu-a1 " in detail(app)
        keys = footer_keys(app)
        assert keys["r"] and keys["c"] and keys["x"]
        assert keys["b"] is False  # nothing was changed: nothing to roll back
        await pilot.press("r")  # the wait again, from the start
        await wait_for(pilot, lambda: driver.run.steps[0].status == "running")
        assert driver.ask is None
        await wait_ask(pilot, driver, "failure", "hold", 15)
        await pilot.press("escape")  # back to the list: the run still waits
        assert not isinstance(app.screen, RunnerScreen)
        assert str(app.screen.query_one("#runbooks").get_cell("runbook:hold-on", "run")) == (
            "waits for you"
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunnerScreen))
        await pilot.pause()
        await pilot.press("x")
        await wait_for(pilot, lambda: driver.ended)
        assert driver.run.outcome == "aborted"


async def test_read_only_blocks_the_change_and_dims_the_mutating_keys(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path, read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        assert "READ-ONLY" in app.title
        driver = await open_runner(pilot, app, "shrink-batch")
        assert "READ-ONLY" in str(app.screen.query_one("#run").render())
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "look")
        keys = footer_keys(app)
        assert keys["r"] is False and keys["b"] is False
        assert app.screen.check_action("retry", ()) is None  # dimmed, not hidden
        await pilot.press("c")
        await wait_for(pilot, lambda: driver.ended, 30)
        assert driver.run.mode == "read-only"
        assert driver.run.outcome == "read-only"
        assert [s.status for s in driver.run.steps] == ["ok", "blocked", "planned"]  # not noted
        assert tokens(fleet) == DEFAULT_TOKENS
        assert not any(isinstance(s, ConfirmDialog) for s in app.screen_stack)


async def test_roll_back_after_a_failure_undoes_the_change(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "shrink-then-look")
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "shrink")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), 30)
        await pilot.press("tab", "enter")
        await wait_ask(pilot, driver, "step", "look", 60)  # step mode again after a decision
        assert tokens(fleet) == 2048
        await pilot.press("n")
        await wait_ask(pilot, driver, "failure", "look")
        assert "No such file or directory" in detail(app)
        keys = footer_keys(app)
        assert keys["b"] and keys["r"]
        await pilot.press("b")
        await wait_for(pilot, lambda: driver.ended, 60)
        assert driver.run.outcome == "failed"
        assert [s.status for s in driver.run.steps] == ["rolled back", "failed"]
        assert tokens(fleet) == DEFAULT_TOKENS
        await pilot.pause()
        app.screen.query_one(StepTable).move_cursor(row=0)
        await pilot.pause()
        assert "» rolled back: " in detail(app)


async def test_without_a_session_the_view_says_why() -> None:
    app = LlmopsApp(StaticSource(), environment="staging", refresh_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("colon", *"runbooks", "enter")
        assert app.current_mode == "runbooks"
        caption = str(app.screen.query_one(".caption").render())
        assert caption == "Runbooks need a config with a store: none is loaded"
        assert app.screen.query_one("#runbooks").row_count == 0
        await pilot.press("enter")  # nothing to open
        assert app.current_mode == "runbooks" and not app.runs


def prompt(app: LlmopsApp) -> str:
    return str(app.screen.query_one("#prompt").render())


def screen_text(app: LlmopsApp) -> str:
    """What the terminal shows, as text (the composition export_screenshot prints; private
    API, pinned with the Textual release as the snapshots need anyway)."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return "\n".join(
        "".join(segment.text for strip in line for segment in strip)
        for line in update.strips  # type: ignore[union-attr]
    )


async def test_step_mode_shows_a_changes_plan_before_it_runs(
    fleet, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a mutate step, in step mode: the diff it would write now, on an 80x24 screen
    without colours; or, when planning refuses, why the step would fail."""
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color
        driver = await open_runner(pilot, app, "shrink-batch")
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "look")
        await pilot.press("n")
        await wait_ask(pilot, driver, "step", "shrink")
        await wait_for(pilot, lambda: "+max-num-batched-tokens: 4096" in screen_text(app))
        shown = screen_text(app)
        assert "plan if it ran now: " in shown
        assert f"-max-num-batched-tokens: {DEFAULT_TOKENS}" in shown
        assert "next: shrink (mutate) (its plan: below). n runs it" in shown
        # Shown, not run: the engine keeps its arguments and the log has no start of the step.
        assert tokens(fleet) == DEFAULT_TOKENS
        assert driver.run is not None
        events = driver.session.log.events(run_id=driver.run.record.id)
        assert [e["step"] for e in events if e["kind"] == "step.started"] == ["look"]
        await pilot.press("x")
        await wait_for(pilot, lambda: driver.ended)
        assert driver.run.outcome == "aborted"
        assert [s.status for s in driver.run.steps] == ["ok", "pending", "pending"]

        # The arguments it would set are the engine's already: planning refuses, and says so.
        await fill(pilot, app, tokens=str(DEFAULT_TOKENS))
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "look")
        await pilot.press("n")
        await wait_ask(pilot, driver, "step", "shrink")
        await wait_for(pilot, lambda: "plan if it ran now: refused" in screen_text(app))
        shown = " ".join(screen_text(app).split())
        assert "already set" in shown and "the step would fail, changing nothing" in shown
        await pilot.press("x")
        await wait_for(pilot, lambda: driver.ended)


@pytest.mark.parametrize("key", ["x", "b"], ids=["abort", "roll-back"])
async def test_x_or_b_during_a_wait_stops_the_run_at_once(fleet, tmp_path, key: str) -> None:
    """A wait of two minutes that never holds, after a change: x ends the run at the wait's
    next read and leaves the change; b ends it as soon and undoes the change."""
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "change-then-wait")
        await pilot.press("ctrl+s")
        await wait_ask(pilot, driver, "step", "shrink")
        assert footer_keys(app)["b"] is False  # nothing changed yet: nothing to roll back
        await pilot.press("c")
        await confirm(pilot, app)
        await wait_ask(pilot, driver, "step", "never", 60)
        assert tokens(fleet) == 2048
        assert footer_keys(app)["b"] is True  # before the next step: the change can be undone
        await pilot.press("n")
        run = driver.run
        assert run is not None
        await wait_for(pilot, lambda: run.steps[1].progress != "")
        await pilot.pause()
        keys = footer_keys(app)
        assert keys["x"] and keys["b"]
        assert not (keys["n"] or keys["s"] or keys["c"] or keys["r"])  # no step to answer
        assert prompt(app) == "running never. x aborts, b aborts and rolls back"
        pressed = time.time()
        await pilot.press(key)
        await pilot.pause()
        keys = footer_keys(app)  # dimmed, or gone with the run: asked once, not twice
        assert not keys.get("x", False) and not keys.get("b", False)
        await wait_for(pilot, lambda: driver.ended, 60)
        never = run.steps[1]
        assert never.finished_at is not None
        assert never.finished_at - pressed < 15, "the wait went on"  # its timeout is 120s
        assert run.outcome == "aborted"
        assert never.status == "failed"
        verb = "rolled back" if key == "b" else "aborted"
        assert f"{verb} by {driver.session.operator} while waiting" in never.summary
        await pilot.pause()
        assert prompt(app).startswith(f"run {run.record.id} aborted: {verb} by ")
        if key == "b":
            assert tokens(fleet) == DEFAULT_TOKENS
            assert run.steps[0].status == "rolled back"
            assert "rolled back 1 change(s)" in prompt(app)
        else:
            assert tokens(fleet) == 2048  # the change stays
            assert run.steps[0].status == "ok"


# --- runs a killed console left interrupted -----------------------------------------------------


def kill_a_run(fleet: DemoFleet, tmp_path: Path, marker: str, runbook: str = "kill-drill") -> int:
    """A real ``llmops runbook run`` on the demo fleet and the app's store, SIGKILLed as soon as
    it prints ``marker`` (as in tests/test_runbook_kill.py); the id of the run it left."""
    config = yaml.safe_load(fleet.config_path.read_text())
    config["runbooks"] = [str(write_runbooks(tmp_path))]
    config["store"] = str(tmp_path / STORE)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config))
    run_until_killed(path, marker, runbook)
    store = Store(tmp_path / STORE)
    try:
        (run,) = IncidentLog(store).runs()
    finally:
        store.close()
    assert run.interrupted, run.state
    return run.id


def shown_runs(app: LlmopsApp) -> dict[int, str]:
    """run id -> state, as ``:runbooks`` lists the interrupted runs (none while hidden)."""
    table = app.screen.query_one(InterruptedTable)
    if not table.display:
        return {}
    return {
        int(str(table.get_cell(key, "run"))): str(table.get_cell(key, "state"))
        for key in table._rows
    }


async def listed(pilot, app: LlmopsApp, runs: dict[int, str]) -> None:
    """``:runbooks`` (back from the runner, or opened), once it lists exactly ``runs``."""
    if isinstance(app.screen, RunnerScreen):
        await pilot.press("escape")
    elif not isinstance(app.screen, RunbooksScreen):
        await pilot.press("colon", *"runbooks", "enter")
    await wait_for(pilot, lambda: shown_runs(app) == runs)
    await pilot.pause()


def run_state(app: LlmopsApp, run_id: int) -> str:
    assert app.session is not None
    return app.session.log.run(run_id).state


async def test_an_interrupted_run_is_shown_and_rolled_back_after_a_declined_undo(
    fleet, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed during its wait, after a change: the next console says so at start and lists the
    run; b opens the runner on its rollback, whose undo shows its diff and is confirmed (Cancel
    focused). Declined, the run is still interrupted, now during its rollback: r is dimmed and
    says why, b finishes the undo and the node is back as it was. 80x24, no colours."""
    monkeypatch.setenv("NO_COLOR", "1")
    before = serving(fleet)
    run_id = kill_a_run(fleet, tmp_path, "[3/4] watch started")
    assert tokens(fleet) == 4096  # the change stays
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: bool(app._notifications))
        (notice,) = app._notifications
        assert notice.title == "1 run interrupted"
        assert f"run {run_id} (kill-drill) interrupted at watch" in notice.message
        await listed(pilot, app, {run_id: "interrupted at watch"})
        assert isinstance(app.focused, InterruptedTable)  # on top, with its keys
        shown = screen_text(app)
        assert "Interrupted runs (1): r resumes, b rolls back" in shown
        assert "r resumes it at watch (checks a landed change cured are not judged again)" in shown
        assert footer_keys(app)["r"] is True and footer_keys(app)["b"] is True

        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), 30)
        dialog = app.screen
        assert str(dialog.query_one("#question").render()).startswith(
            "Undo shrink: engine.restore_args"
        )
        plan = str(dialog.query_one("#plan Static").render())
        assert "-max-num-batched-tokens: 4096" in plan
        assert f"+max-num-batched-tokens: {DEFAULT_TOKENS}" in plan
        await wait_for(pilot, lambda: isinstance(app.focused, Button))
        assert app.focused.id == "cancel"
        await pilot.press("enter")  # declined
        driver = app.runs["kill-drill"]
        await wait_for(pilot, lambda: driver.ended)
        await pilot.pause()
        assert f"rollback of run {run_id}, which was interrupted at watch" in screen_text(app)
        assert tokens(fleet) == 4096
        # Declined before anything changed: the run is as it was, resume still offered (the
        # dimmed r of a run cut off during its rollback is the test after the next).
        await listed(pilot, app, {run_id: "interrupted at watch"})
        keys = footer_keys(app)
        assert keys["r"] is True and keys["b"] is True

        await pilot.press("b")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: driver.ended, 60)
        assert driver.run is not None and driver.run.outcome == "failed"
        assert [s.status for s in driver.run.steps][1] == "rolled back"
        assert prompt(app).startswith(f"run {run_id} failed: interrupted; rolled back 1 change")
        assert prompt(app).endswith("ctrl+s starts a new run")
        await asyncio.to_thread(settles_to, fleet, before)
        assert run_state(app, run_id) == "failed"
        await listed(pilot, app, {})
        assert isinstance(app.focused, RunbookTable)


async def test_an_interrupted_run_resumes_from_its_step_after_its_checks(fleet, tmp_path) -> None:
    """r: the runner on the resume; the check before the step runs again, then the run waits
    before the step it died in, as in step mode, and goes on from there to verified. The change
    made before the kill is not made twice."""
    run_id = kill_a_run(fleet, tmp_path, "[3/4] watch started")
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await listed(pilot, app, {run_id: "interrupted at watch"})
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunnerScreen))
        driver = app.runs["kill-drill"]
        await wait_ask(pilot, driver, "step", "watch")
        assert driver.run is not None and driver.run.record.id == run_id
        assert [s.status for s in driver.run.steps] == ["ok", "ok", "pending", "pending"]
        assert f"resume of run {run_id}, which was interrupted at watch" in screen_text(app)
        assert app.screen.query_one(StepTable).selected_id == "watch"
        keys = footer_keys(app)
        assert keys["n"] and keys["c"] and keys["b"]  # b: the change made before the kill
        await pilot.press("c")
        await wait_for(pilot, lambda: driver.ended, 60)
        verified(app, driver)
        assert tokens(fleet) == 4096
        kinds = [(k, s) for k, s, _ in step_events(driver.session.log, driver.run)]
        after = kinds[kinds.index(("run.resumed", "watch")) :]
        assert [s for k, s in after if k == "step.started"] == ["look", "watch", "record"]
        await listed(pilot, app, {})
        assert run_state(app, run_id) == "verified"


async def test_killed_during_its_rollback_read_only_dims_both_and_prod_types_the_target(
    fleet, tmp_path
) -> None:
    """A run killed while its failed check was being undone. In read-only mode r and b are
    dimmed, each saying why, and the run stays; in a protected environment only b is offered,
    and the undo is confirmed with the target's name typed, after which the node is back."""
    before = serving(fleet)
    run_id = kill_a_run(fleet, tmp_path, "undoing change", runbook="undo-drill")
    state = "interrupted during rollback at change"
    app = make_app(fleet, tmp_path, read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await listed(pilot, app, {run_id: state})
        keys = footer_keys(app)
        assert keys["r"] is False and keys["b"] is False
        shown = " ".join(screen_text(app).split())
        assert "r dimmed: read-only mode: a resume changes the fleet" in shown
        assert "b dimmed: read-only mode: a rollback changes the fleet" in shown
        await pilot.press("r", "b")
        await pilot.pause()
        assert not app.runs and run_state(app, run_id) == state

    app = make_app(fleet, tmp_path, environment="prod")
    async with app.run_test(size=(80, 24)) as pilot:
        await listed(pilot, app, {run_id: state})
        keys = footer_keys(app)
        assert keys["r"] is False and keys["b"] is True
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), 30)
        dialog = app.screen
        assert dialog.query_one("#confirm", Button).disabled
        dialog.query_one("#typed", Input).focus()
        await pilot.press(*"gpu-a1", "enter", "enter")  # typed: the focus goes to Confirm
        driver = app.runs["undo-drill"]
        await wait_for(pilot, lambda: driver.ended, 60)
        assert driver.run is not None and driver.run.outcome == "failed"
        await asyncio.to_thread(settles_to, fleet, before)
        events = driver.session.log.events(run_id=run_id)
        decision = [e for e in events if e["kind"] == "step.decision"][-1]
        assert decision["data"]["typed_target"] == "gpu-a1"
        await listed(pilot, app, {})
        assert run_state(app, run_id) == "failed"


# --- drills of the shipped runbooks, through the runner -----------------------------------------


async def shows(
    app: LlmopsApp,
    kind: str,
    subject: str,
    figure: str,
    test: Callable[[float], bool],
    window_s: float = 5,
    *,
    covering: bool = True,
) -> None:
    """Wait until a figure over the drill's window passes ``test`` (the fault shows, or it is
    gone); ``covering``: over enough of the window that a check judges it at once."""
    assert app.session is not None
    deadline = time.monotonic() + 60
    while True:
        got = app.session.figures.figure(kind, subject, figure, window_s)
        covered = not covering or got.window_s is None or got.window_s >= window_s / 2
        if got.value is not None and test(got.value) and covered:
            return
        assert time.monotonic() < deadline, f"{figure} of {subject} never passed: {got}"
        await asyncio.sleep(0.5)


async def fill(pilot, app: LlmopsApp, **texts: str) -> None:
    """Type into the form's fields as the engineer does, the old text cleared first."""
    for name, text in texts.items():
        app.screen.query_one(f"#param-{name}", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", *text)
    await pilot.pause()
    assert footer_keys(app)["ctrl+s"] is True, prompt(app)


async def confirm(pilot, app: LlmopsApp) -> str:
    """Confirm in the dialog (it opens with Cancel focused); returns its question."""
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), 60)
    dialog = app.screen
    # The screen is pushed before its widgets are mounted: wait for the question itself.
    await wait_for(pilot, lambda: bool(dialog.query("#question")))
    question = str(dialog.query_one("#question").render())
    await wait_for(pilot, lambda: isinstance(app.focused, Button))  # set once it is mounted
    assert isinstance(app.focused, Button) and app.focused.id == "cancel"
    await pilot.press("tab")
    assert isinstance(app.focused, Button) and app.focused.id == "confirm"
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.screen is not dialog)
    return question


async def run_through(
    pilot, app: LlmopsApp, driver: RunDriver, timeout_s: float = 240
) -> list[str]:
    """ctrl+s, then what the engineer does in a run that goes well: c before each step (it
    runs on to the next decision) and Confirm in each dialog. Until the run ends, or waits for
    the choice after a failure; returns the questions confirmed."""
    await pilot.press("ctrl+s")
    questions: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not driver.ended:
        assert time.monotonic() < deadline, f"the run did not end: {prompt(app)}"
        ask = driver.ask
        if isinstance(app.screen, ConfirmDialog):
            questions.append(await confirm(pilot, app))
        elif ask is not None and ask.kind == "step":
            await pilot.press("c")
            await wait_for(pilot, lambda asked=ask: driver.ask is not asked)
        elif ask is not None and ask.kind == "failure":
            break
        else:
            await pilot.pause(0.2)
    await pilot.pause()
    return questions


def field_values(app: LlmopsApp) -> dict[str, str]:
    return {f.param_name: f.value for f in app.screen.query(ParamInput)}


def ran_in_order(driver: RunDriver, steps: list[str] | None = None) -> None:
    """The incident log holds every step (or those given), each started before it finished."""
    assert driver.run is not None
    steps = steps if steps is not None else [s.id for s in driver.runbook.steps]
    finished_in_order(step_events(driver.session.log, driver.run), steps)


def verified(app: LlmopsApp, driver: RunDriver) -> None:
    """The run ended verified, and the runner says so."""
    run = driver.run
    assert run is not None and driver.ended, f"{prompt(app)}\n{detail(app)}"
    assert run.outcome == "verified", f"{prompt(app)}\n{detail(app)}"
    assert prompt(app).startswith(f"run {run.record.id} verified: finished and verified")
    assert {s.status for s in run.steps} <= {"ok", "skipped"}  # skipped: its `when` is false


async def test_latency_spike_drill_through_the_runner(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        fleet.inject("long-prompts", "gpu-a1")
        await shows(app, "node", "gpu-a1", "itl_p95", lambda v: v > 0.075)
        driver = await open_runner(pilot, app, "latency-spike")
        # The node with the worst ITL, from the facts, and the hint says so.
        assert field_values(app)["node"] == "gpu-a1"
        assert str(app.screen.query_one("#hint-node").render()).startswith("worst_itl_node: ")
        await fill(pilot, app, window="5s")
        questions = await run_through(pilot, app, driver)
        verified(app, driver)
        assert questions == [
            "Restart vLLM on gpu-a1 with max-num-batched-tokens=2048? Requests in flight on "
            "it are cut off."
        ]
        assert tokens(fleet) == 2048
        assert driver.run.steps[2].status == "skipped"  # the max-model-len cap: none asked
        ran_in_order(driver)


async def test_provider_failover_then_failback_through_the_runner(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        # A provider's figures span its answered probes: the console watches it answer for a
        # few seconds first, as a console that was running when the fault came has.
        await shows(app, "upstream", "primary-api", "error_pct", lambda v: v == 0)
        fleet.inject("provider-5xx", "primary-api")
        # Failing probes back off: the gateway's figure covers little of the window.
        await shows(app, "endpoint", "gateway", "error_pct", lambda v: v > 20, covering=False)
        await shows(app, "upstream", "primary-api", "error_pct", lambda v: v > 5)
        driver = await open_runner(pilot, app, "provider-failover")
        assert field_values(app) == {
            "failing": "primary-api",
            "backup": "backup-api",
            "gateway": "gateway",
            "window": "30s",
        }
        await fill(pilot, app, window=PROVIDER_WINDOW)
        questions = await run_through(pilot, app, driver)
        verified(app, driver)
        assert questions == ["Move all traffic from primary-api to backup-api?"]
        weights = fleet.router_weights("chat-api")
        assert weights["primary-api"] == 0 and weights["backup-api"] == 100
        ran_in_order(driver)

        fleet.heal()
        # Clean over the drill's window: the failed probes (at their interval, a failure
        # answered is not backed off) age out of it first.
        clean = PROVIDER_WINDOW_S
        await shows(app, "upstream", "primary-api", "error_pct", lambda v: v == 0, clean)
        back = await open_runner(pilot, app, "provider-failback")
        # After the failover, the facts name the idle primary and the serving backup.
        values = field_values(app)
        assert (values["primary"], values["backup"]) == ("primary-api", "backup-api")
        await fill(pilot, app, window=PROVIDER_WINDOW)
        questions = await run_through(pilot, app, back)
        verified(app, back)
        assert len(questions) == 2  # each move of the weights, confirmed
        weights = fleet.router_weights("chat-api")
        assert weights["primary-api"] == 100 and weights["backup-api"] == 0
        ran_in_order(back)


async def test_model_rollback_drill_through_the_runner(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        pinned = app.session.config.node("gpu-a1").engine.pinned_revision
        fleet.inject("bad-revision", "gpu-a1")
        await shows(app, "node", "gpu-a1", "error_pct", lambda v: v > 3)
        assert fleet.served_revision("gpu-a1") != pinned
        driver = await open_runner(pilot, app, "model-rollback")
        values = field_values(app)
        assert (values["node"], values["revision"]) == ("gpu-a1", pinned)
        await fill(pilot, app, window="5s")
        questions = await run_through(pilot, app, driver)
        verified(app, driver)
        assert questions == [
            f"Restart vLLM on gpu-a1 with revision {pinned} (served name unchanged)?"
        ]
        assert fleet.served_revision("gpu-a1") == pinned
        args = fleet.engine_args("gpu-a1")
        assert args is not None and args.served_model_name == "meta-llama/Llama-3.1-8B-Instruct"
        ran_in_order(driver)


# The shortest soak; a check window of 3s (a 1s one may hold no request at all).
CANARY = {
    "canary_node": "gpu-a2",
    "canary": "gpu-a2",
    "stable": "gpu-a1",
    "soak": "1s",
    "window": "3s",
}


async def test_canary_ramp_drill_through_the_runner(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "canary-ramp")
        await fill(pilot, app, **CANARY, revision="c0ffee1")
        questions = await run_through(pilot, app, driver)
        verified(app, driver)
        assert len(questions) == 5  # drain, deploy, then 5%, 25% and 100%
        assert fleet.served_revision("gpu-a2") == "c0ffee1"
        assert fleet.router_weights("chat") == {"gpu-a1": 0, "gpu-a2": 100}
        ran_in_order(driver)


async def test_a_bad_canary_fails_its_gate_and_b_rolls_everything_back(fleet, tmp_path) -> None:
    """The gate fails on the canary's figures; the runner says what the runbook does after a
    failure (roll back), b does it: the weights and the revision are back as they were."""
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        weights = fleet.router_weights("chat")
        revision = fleet.served_revision("gpu-a2")
        fleet.inject("bad-canary", "gpu-a2")
        driver = await open_runner(pilot, app, "canary-ramp")
        await fill(pilot, app, **CANARY, revision="badc0de")
        await run_through(pilot, app, driver)
        ask = driver.ask
        assert ask is not None and ask.kind == "failure", prompt(app)
        gate = ask.step.id
        assert gate in ("gate-5", "gate-25")
        assert prompt(app).startswith(f"{gate} failed (why: below). r retries, b rolls back")
        assert prompt(app).endswith("(the runbook says: rollback)")
        assert "FAIL " in detail(app)  # the gate's figures, on the failed step
        assert fleet.router_weights("chat") != weights  # the canary has its share now
        assert footer_keys(app)["b"] is True
        await pilot.press("b")
        await wait_for(pilot, lambda: driver.ended, 120)
        run = driver.run
        assert run is not None and run.outcome == "failed"
        assert fleet.router_weights("chat") == weights
        assert fleet.served_revision("gpu-a2") == revision
        ids = [s.id for s in driver.runbook.steps]
        ran_in_order(driver, ids[: ids.index(gate) + 1])
        undone = [s for k, s, _ in step_events(driver.session.log, run) if k == "rollback.finished"]
        changed = [s.step.id for s in run.steps if s.step.kind == "mutate" and s.started_at]
        assert undone == changed[::-1]  # newest first, down to the drain
        assert {s.status for s in run.steps if s.step.id in changed} == {"rolled back"}


async def test_blue_green_drill_through_the_runner(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        driver = await open_runner(pilot, app, "blue-green")
        await fill(pilot, app, blue="gpu-a1", green="gpu-a2", soak="1s", window="3s")
        questions = await run_through(pilot, app, driver)
        verified(app, driver)
        assert questions == ["Switch all traffic from gpu-a1 to gpu-a2?"]
        assert fleet.router_weights("chat") == {"gpu-a1": 0, "gpu-a2": 100}
        ran_in_order(driver)
