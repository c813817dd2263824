"""The Textual application: views as modes, global keys, the command palette, runbook runs.

The app starts the hub's collectors on its event loop (they are async I/O, and CPU-heavy
parsing goes to threads), then once per ``refresh_s`` takes the hub's latest snapshot and
hands it to the visible view. Paused, it keeps collecting but stops repainting.

Runbook runs belong to the app (one :class:`~screens.runbooks.RunDriver` per runbook, each run
one of the app's workers), so a run goes on whichever view is shown; read-only mode is shown
in the header and passed to every run, and the action registry enforces it. A run that a killed
console left interrupted is said at start, and resumed or rolled back by that runbook's driver.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Protocol

from textual.actions import parse as parse_action
from textual.app import App, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from console.models import FleetSnapshot, SourceStatus
from screens.gpus import GpuHistorySource, GpusScreen
from screens.incidents import IncidentsScreen, TimelineScreen
from screens.modals import CommandLine, FaultPicker, HelpScreen
from screens.runbooks import (
    RUNNER_KEYS,
    RunbooksScreen,
    RunDriver,
    RunnerScreen,
    RunUpdated,
    TakeOverRequested,
)
from screens.tables import GpusRequested
from screens.views import VIEWS, FleetView

if TYPE_CHECKING:
    from console.incidents import IncidentRecord
    from console.session import Session

log = logging.getLogger(__name__)

VIEW_NAMES = (*VIEWS, "gpus", "runbooks", "incidents")
COMMANDS = (*VIEW_NAMES, "quit")  # what the ``:`` line takes
FLEET_KEYS = (  # what the help lists besides a fleet view's footer keys
    ("/!text", "Inverse filter"),
    ("esc", "Clear filter, then back to overview"),
    ("tab", "Next table"),
    ("j k ↑ ↓", "Move down / up"),
    ("g G", "Top / bottom"),
    ("pgup pgdn", "Page up / down"),
    ("ctrl+p", "Command palette"),
)
STARTUP_REFRESH_S = 0.1
STARTUP_WAIT_S = 15.0  # sources that have not answered by then are shown at the normal pace
INCIDENT_CHECK_S = 1.0  # the hub reads the open incidents once a second: look as often


def _action(text: str) -> tuple[str, tuple[object, ...]]:
    """A binding's action as check_action is asked about it: ``set_state('resolved')`` is
    ``set_state`` with ``('resolved',)``, as Textual asks when it dims a key."""
    _, name, parameters = parse_action(text)
    return name, parameters


class SnapshotSource(Protocol):
    """What the app needs from the hub (tests give it fixed snapshots)."""

    def start(self) -> None: ...

    async def stop(self, reason: str | None = None) -> None: ...

    def snapshot(self) -> FleetSnapshot: ...

    def record_event(self, kind: str, message: str) -> None: ...


class FaultInjector(Protocol):
    """The demo fleet's fault controls (thread-safe; each call may take a moment)."""

    faults: ClassVar[dict[str, str]]  # fault name -> what it does

    def targets(self, name: str) -> list[str]: ...

    def inject(self, name: str, target: str | None = None) -> str: ...

    def heal(self) -> None: ...


class LlmopsApp(App[None]):
    TITLE = "llmops"
    CSS = """
    LlmopsApp.-prod Header { background: $error; color: $text; }
    """
    MODES = VIEWS  # type: ignore[assignment]
    DEFAULT_MODE = "overview"
    BINDINGS = [  # noqa: RUF012
        Binding("question_mark", "help", "Help"),
        Binding("colon", "command_line", "View"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("f", "inject_fault", "Fault"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        source: SnapshotSource,
        *,
        environment: str,
        faults: FaultInjector | None = None,
        refresh_s: float = 1.0,
        handle_signals: bool = False,
        session: Session | None = None,
        read_only: bool = False,
        bell: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.bell_on_incident = bell  # a new incident rings the terminal bell once
        self.environment = environment
        # None: no store to log runs in, so no runbooks (the view says so).
        self.session = session
        self.read_only = read_only or (session is not None and session.read_only)
        self.runs: dict[str, RunDriver] = {}  # runbook id -> its latest run in this console
        self.add_mode("runbooks", self._runbooks_screen)
        self.add_mode("incidents", self._incidents_screen)
        # The GPU graphs read the hub's history rings; a source without them gets none.
        history = source if isinstance(source, GpuHistorySource) else None
        self.add_mode("gpus", partial(GpusScreen, history))
        self.faults = faults
        self.refresh_s = refresh_s
        self.handle_signals = handle_signals
        self.paused = False
        self.snapshot: FleetSnapshot | None = None
        self.stopped_by_signal: int | None = None
        # A view whose repaint raised: shown on the sources view like a failing source.
        self._view_errors: dict[str, SourceStatus] = {}
        # The open incidents as last looked at (the hub's tuple), and every id seen open: a
        # new id is a new incident, whichever console opened it.
        self._incidents_seen_in: tuple[IncidentRecord, ...] | None = None
        self._incident_ids: set[int] = set()
        self._started_wall = time.time()

    def on_load(self) -> None:
        # Collect from the moment the loop runs: the first polls (SSH handshakes, scrapes)
        # overlap with building the screens instead of waiting for them.
        self.source.record_event("console.started", f"console started ({self.environment})")
        self.source.start()

    def on_mount(self) -> None:
        self.title = f"llmops · {self.environment}" + (" · READ-ONLY" if self.read_only else "")
        # A production fleet gets a red header, so nobody mistakes it for staging at 3 a.m.
        self.set_class(self.environment == "prod", "-prod")
        self._update_subtitle()
        if self.handle_signals:
            # SIGHUP (the SSH session went away) and SIGTERM end the app as `q` does, so the
            # hub stops and writes what is pending before the process exits.
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGHUP, signal.SIGTERM):
                loop.add_signal_handler(signum, self._exit_on_signal, signum)
        self.set_interval(self.refresh_s, self.refresh_view)
        self._started_wall = time.time()  # an incident opened before this is not news
        # Not paused with the repaint: a new incident is told even while the screen stands still.
        self.set_interval(min(self.refresh_s, INCIDENT_CHECK_S), self._watch_incidents)
        # Until every source has answered once, repaint often: the first readings show as
        # soon as they arrive, not up to a refresh interval later.
        self._first_answers = self.set_interval(STARTUP_REFRESH_S, self._refresh_until_answered)
        self._started_at = time.monotonic()
        self.refresh_view()
        if self.session is not None:
            self.run_worker(self._tell_interrupted(self.session), group="interrupted")

    async def _tell_interrupted(self, session: Session) -> None:
        """At start, once: the runs a console killed mid-step left, for the engineer to resume
        or roll back (:runbooks lists them). Read off the UI loop: the log is a SQLite file."""
        try:
            runs = await asyncio.to_thread(session.interrupted_runs)
        except Exception:  # only a notice: :runbooks reads them again, and says what failed
            log.exception("reading the interrupted runs failed")
            return
        if runs:
            shown = "; ".join(f"run {r.id} ({r.runbook}) {r.state}" for r in runs[:3])
            more = f"; {len(runs) - 3} more" if len(runs) > 3 else ""
            self.notify(
                f"{shown}{more}. :runbooks resumes or rolls back",
                title=f"{len(runs)} run{'s' if len(runs) > 1 else ''} interrupted",
                severity="warning",
                timeout=15,
            )

    def _refresh_until_answered(self) -> None:
        self.refresh_view()
        snapshot = self.snapshot
        waiting = snapshot is None or any(
            s.last_ok_at is None and not s.consecutive_failures for s in snapshot.sources
        )
        if not waiting or time.monotonic() - self._started_at > STARTUP_WAIT_S:
            self._first_answers.stop()

    def _exit_on_signal(self, signum: int) -> None:
        self.stopped_by_signal = signum
        self.exit()

    async def on_unmount(self) -> None:
        if self.stopped_by_signal is not None:
            reason = f"stopped by {signal.Signals(self.stopped_by_signal).name}"
        else:
            reason = "quit"
        await self.source.stop(reason)

    def refresh_view(self) -> None:
        if self.paused:
            return
        try:
            self.snapshot = self.source.snapshot()
        except Exception as exc:  # keep showing the last good picture rather than exiting
            log.exception("snapshot failed")
            self.notify(f"could not refresh: {exc}", severity="error", timeout=5)
            return
        if self._view_errors:
            self.snapshot = replace(
                self.snapshot, sources=self.snapshot.sources + tuple(self._view_errors.values())
            )
        try:
            screen = self.screen
        except ScreenStackError:  # the timer fired while the app was closing its screens
            return
        if isinstance(screen, FleetView):
            self.repaint_view(screen, self.snapshot)

    def repaint_view(self, screen: FleetView, snapshot: FleetSnapshot) -> None:
        """One view's repaint; a failure is logged and shown, and never ends the app."""
        name = f"view:{screen.VIEW_NAME}"
        try:
            screen.apply(snapshot)
        except Exception as exc:
            log.exception("repainting %s failed", name)
            before = self._view_errors.get(name, SourceStatus(name, self.refresh_s))
            self._view_errors[name] = replace(
                before,
                last_error=f"repaint failed: {type(exc).__name__}: {exc}".splitlines()[0],
                last_error_at=snapshot.taken_at,
                consecutive_failures=before.consecutive_failures + 1,
            )
            return
        if name in self._view_errors:  # painted again: keep the record, clear the failure
            self._view_errors[name] = replace(
                self._view_errors[name], consecutive_failures=0, last_ok_at=snapshot.taken_at
            )

    def open_incidents(self) -> tuple[IncidentRecord, ...] | None:
        """The open incidents as the hub last read them (in its thread: no SQLite here);
        None when the source keeps no incident log (a hub that opens no incidents)."""
        if getattr(self.source, "incident_desk", True) is None:
            return None
        return getattr(self.source, "open_incidents", None)

    def _watch_incidents(self) -> None:
        """The header's count, and a toast and one bell for each incident not seen before.

        The incidents open when the console started were there before it: no toast for them
        (they are older than the console, and the count says they are there).
        """
        records = self.open_incidents()
        if records is None or records is self._incidents_seen_in:
            return
        counted = self._incidents_seen_in is not None
        was = len(self._incidents_seen_in or ())
        self._incidents_seen_in = records
        new = [r for r in records if r.id not in self._incident_ids]
        self._incident_ids.update(r.id for r in records)
        if not counted or len(records) != was:
            self._update_subtitle()
        news = [r for r in new if r.opened_at >= self._started_wall]
        for record in news:
            runbook = (
                f"; suggested runbook {record.runbook} (:incidents, s)" if record.runbook else ""
            )
            self.notify(
                f"{record.title} · {record.severity or 'no severity'}{runbook}",
                title=f"incident {record.id} opened",
                severity="error" if record.severity == "page" else "warning",
                timeout=20,
            )
        if news and self.bell_on_incident:
            self.bell()  # once, however many opened together

    def _update_subtitle(self) -> None:
        parts = [self.current_mode]
        records = self._incidents_seen_in
        if records is not None:
            n = len(records)
            parts.append(f"{n} incident{'s' if n != 1 else ''} open" if n else "no incident open")
        if self.paused:
            parts.append("PAUSED (space resumes)")
        self.sub_title = " · ".join(parts)

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._update_subtitle()
        if not self.paused:
            self.refresh_view()

    def action_show_view(self, name: str) -> None:
        if name == "gpus":  # `:gpus` shows every node, as k9s's `:pods` every namespace
            self.open_gpus(None)
            return
        self.switch_mode(name)
        self._update_subtitle()

    def open_gpus(self, node: str | None, gpu_index: int | None = None) -> None:
        """The GPU view on one node (None: all), the cursor on a GPU; esc comes back here."""
        came_from = self.current_mode
        self.switch_mode("gpus")
        self._update_subtitle()
        screen = self.screen_stack[0]  # the mode's own screen, under any modal
        assert isinstance(screen, GpusScreen)
        screen.show(node, gpu_index, came_from)

    def on_gpus_requested(self, message: GpusRequested) -> None:
        self.open_gpus(message.node, message.gpu_index)

    def action_help(self) -> None:
        screen = self.screen
        keys = [
            (self.get_key_display(binding), binding.description)
            for node, bindings in ((self, self.BINDINGS), (screen, screen.BINDINGS))
            for binding in bindings
            if isinstance(binding, Binding)
            and binding.show
            and node.check_action(*_action(binding.action))
        ]
        if isinstance(screen, FleetView):
            keys += (*screen.HELP_KEYS, *FLEET_KEYS)
        else:  # the runner's keys, or those a screen of its own lists (an incident's timeline)
            keys += getattr(screen, "HELP_KEYS", RUNNER_KEYS)
        self.push_screen(HelpScreen(self.current_mode, keys))

    def action_command_line(self) -> None:
        self.push_screen(CommandLine(COMMANDS), self._run_command)

    def _run_command(self, command: str | None) -> None:
        if not command:
            return
        # As in k9s, a unique beginning is enough: ":no" is the nodes view.
        matches = [name for name in COMMANDS if name.startswith(command.lower())]
        if matches == ["quit"]:
            self.exit()
        elif len(matches) == 1:
            self.action_show_view(matches[0])
        else:
            self.notify(f"unknown view {command!r}: try {', '.join(VIEW_NAMES)}", severity="error")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Only the demo fleet takes faults: hide the key elsewhere.
        return not (action == "inject_fault" and self.faults is None)

    def _fault_choices(self) -> list[tuple[str, str]]:
        """``(choice, label)`` for the picker and the palette: every fault on every target."""
        assert self.faults is not None
        choices = [
            (f"{name}@{target}", f"{name} → {target}: {text}")
            for name, text in self.faults.faults.items()
            for target in self.faults.targets(name)
        ]
        choices.append(("heal", "heal: clear every active fault"))
        return choices

    def action_inject_fault(self) -> None:
        if self.faults is not None:
            self.push_screen(FaultPicker(self._fault_choices()), self._apply_fault)

    def _apply_fault(self, choice: str | None) -> None:
        if choice is not None and self.faults is not None:
            self.run_worker(self._fault_worker(self.faults, choice), group="faults")

    async def _fault_worker(self, faults: FaultInjector, choice: str) -> None:
        # The fleet answers from its own thread: wait for it off the UI loop.
        try:
            if choice == "heal":
                await asyncio.to_thread(faults.heal)
                self.source.record_event("demo.healed", "demo fleet: every fault cleared")
                self.notify("every fault cleared", title="demo fleet")
                return
            name, target = choice.split("@", 1)
            text = await asyncio.to_thread(faults.inject, name, target)
            # A drill's trail: the log says which fault was injected when.
            self.source.record_event("demo.fault", f"demo fleet: {text}")
            self.notify(text, title="fault injected", severity="warning")
        except Exception as exc:  # a fault that cannot be applied must not take the app down
            self.notify(f"{choice}: {exc}", title="fault not injected", severity="error")

    # -- incidents

    def _incidents_screen(self) -> IncidentsScreen:
        return IncidentsScreen(self.session, self.start_from_incident)

    def open_incident(self, incident_id: int) -> None:
        """One incident's timeline, on the incidents view (the palette's ``incident: #N``)."""
        if self.session is None:
            return
        self.action_show_view("incidents")
        timeline = TimelineScreen(self.session, incident_id, self.start_from_incident)
        if isinstance(self.screen, TimelineScreen):
            self.switch_screen(timeline)
        else:
            self.push_screen(timeline)

    def start_from_incident(
        self, runbook_id: str, values: dict[str, str], incident_id: int
    ) -> None:
        """``s`` on an incident: the runbook's form with the incident's values, the run joined
        to the incident. A run of that runbook going here is shown instead (one at a time)."""
        if self.session is None or runbook_id not in self.session.runbooks:
            return
        driver = self._run_driver(self.session, runbook_id)
        if driver.running:
            self.notify(
                f"runbook {runbook_id} has a run going here: finish it first",
                title=f"incident {incident_id}",
                severity="warning",
            )
        else:
            driver.prefill(values, incident_id, f"from incident {incident_id}")
        self._show_runner(driver)

    # -- runbooks

    def _runbooks_screen(self) -> RunbooksScreen:
        return RunbooksScreen(
            self.session, self.open_runbook, self._run_state, read_only=self.read_only
        )

    def _run_state(self, runbook_id: str) -> str:
        driver = self.runs.get(runbook_id)
        return driver.state_text() if driver is not None else ""

    def open_runbook(self, runbook_id: str) -> None:
        """The runner of a runbook, on the runbooks view: its latest run, or a new form."""
        if self.session is not None:
            self._show_runner(self._run_driver(self.session, runbook_id))

    def _run_driver(self, session: Session, runbook_id: str) -> RunDriver:
        driver = self.runs.get(runbook_id)
        if driver is None:
            runbook = session.runbooks[runbook_id]
            driver = RunDriver(self, session, runbook, read_only=self.read_only)
            self.runs[runbook_id] = driver
        return driver

    def on_take_over_requested(self, message: TakeOverRequested) -> None:
        """r or b on an interrupted run: its runbook's runner runs the take-over."""
        if self.session is None:
            return
        record = message.record
        driver = self._run_driver(self.session, record.runbook)
        if driver.running:  # one run per runbook in a console: the runner shows one
            self.notify(
                f"runbook {record.runbook} has a run going here: finish it first (enter on it)",
                title=f"run {record.id} not taken over",
                severity="error",
            )
            return
        driver.take_over(record, message.how)
        self._show_runner(driver)

    def _show_runner(self, driver: RunDriver) -> None:
        self.action_show_view("runbooks")
        runner = RunnerScreen(driver)
        if isinstance(self.screen, RunnerScreen):
            self.switch_screen(runner)
        else:
            self.push_screen(runner)

    def on_run_updated(self, message: RunUpdated) -> None:
        driver = message.driver
        driver.apply(message.update)
        if message.update is not None and message.update.kind == "run.finished":
            screen = self.screen
            if isinstance(screen, RunbooksScreen):  # a take-over may have ended: read again
                screen.refresh_runs()
        ask = driver.needs_engineer()
        if ask is not None:
            ask.announced = True  # said once; the runner shows it when it is opened
            what = "a confirmation" if ask.kind == "confirm" else "your choice after a failure"
            self.notify(
                f"step {ask.step.id} waits for {what} (:runbooks, then enter on it)",
                title=f"runbook {driver.runbook.id}",
                severity="warning",
                timeout=10,
            )

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for name in VIEW_NAMES:
            yield SystemCommand(
                f"view: {name}", f"Show the {name} view", partial(self.action_show_view, name)
            )
        if self.session is not None:
            for runbook in sorted(self.session.runbooks.values(), key=lambda r: r.id):
                yield SystemCommand(
                    f"runbook: {runbook.id}", runbook.title, partial(self.open_runbook, runbook.id)
                )
        if self.session is not None:
            for record in self.open_incidents() or ():
                yield SystemCommand(
                    f"incident: #{record.id}",
                    f"{record.state} · {record.title}",
                    partial(self.open_incident, record.id),
                )
        yield SystemCommand("pause: toggle", "Stop or resume repainting", self.action_toggle_pause)
        if self.faults is not None:
            for choice, label in self._fault_choices():
                title, _, text = label.partition(": ")
                yield SystemCommand(f"fault: {title}", text, partial(self._apply_fault, choice))
        yield from super().get_system_commands(screen)
