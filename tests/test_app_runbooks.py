"""Runbooks in the TUI: the real app, driven by Pilot, on the embedded demo fleet.

The runbooks are written into a temporary folder named by the config (``runbooks:``): a check
running ``uptime`` on the node, an engine.set_args step on gpu-a1 and a note; a wait step that
never holds; a change followed by a check that fails; a parameter whose fact is not known (no
upstream fails).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Button, Input

from bench.synthetic_fleet import StaticSource
from console.app import LlmopsApp
from console.demo import DemoFleet
from console.hub import Hub
from console.session import make_session
from console.store import Store
from screens.modals import ConfirmDialog
from screens.runbooks import RunDriver, RunnerScreen, StepTable
from tests.test_app_demo import fast_config, wait_for

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
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "shrink.yaml").write_text(SHRINK)
    (folder / "hold.yaml").write_text(HOLD)
    (folder / "pick.yaml").write_text(PICK)
    (folder / "undo.yaml").write_text(UNDO)
    update: dict[str, object] = {"runbooks": (folder,)}
    if environment is not None:
        update["environment"] = environment
    config = fast_config(fleet).model_copy(update=update)
    store = Store(tmp_path / "console.db")
    hub = Hub(config, store)
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
        assert hint == "no default: failing_upstream not known (no upstream has errors now)"
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
        assert str(screen.query_one("#hint-tokens").render()) == "default"
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
        # The cursor follows the run to the step it waits before; the check's output is kept.
        assert app.screen.query_one(StepTable).selected_id == "shrink"
        assert "plan: made when the step starts" in detail(app)
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
        assert [s.status for s in driver.run.steps] == ["ok", "blocked", "ok"]
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
