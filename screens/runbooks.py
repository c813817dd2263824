"""Runbooks in the TUI: the ``:runbooks`` list, the runner screen of one run, and its driver.

A run does not belong to its screen. :class:`RunDriver` belongs to the app, which runs the run
as one of its own workers, so the run goes on while the engineer looks at another view (or
leaves the runner with esc); the runner screen is a view of the driver and may come and go.
The run's updates are posted to the app as :class:`RunUpdated` messages (its listener may be
called from an action's thread) and reach the screen from the app's handler, on the UI loop.

A run a killed console left interrupted is listed above the runbooks; r resumes it and b rolls
it back (:meth:`RunDriver.take_over`), through the same runner: each step, each undo's plan and
each confirmation go by the engineer as in a new run.

Screens only ask. Whether a plan may run (read-only mode, the confirmation's digest, the typed
target of a protected environment) is decided by the action registry, never here: the keys of
read-only mode are dimmed for the engineer's sake, and the registry refuses anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from console.actions import ActionRefused, Plan
from console.incidents import RunRecord
from console.models import FleetSnapshot
from console.redact import redact
from console.runbook import (
    ParamError,
    Runbook,
    Step,
    format_value,
    parse_param,
    render_shell,
    render_text,
)
from console.runner import OUTPUT_LINES_SHOWN, ConfirmRequest, Decision, Run, RunUpdate, StepState
from screens.cells import Cells, alarm_if
from screens.formatting import clock
from screens.modals import ConfirmDialog, NoteDialog
from screens.tables import LiveTable, RowFilter
from screens.views import DetailView

if TYPE_CHECKING:
    from console.session import Session

log = logging.getLogger(__name__)

Render = Callable[[str, Mapping[str, object]], str]

# States that need the engineer's eye, in reverse video (it shows with NO_COLOR too).
PLAN_CAPTION = "plan if it ran now"  # before a step, in step mode: what it would change
ALARM_STATES = frozenset({"failed", "declined", "blocked", "undo failed"})
RUNNER_KEYS = (  # what the help lists besides the footer's keys
    ("j k ↑ ↓", "Move between steps"),
    ("tab", "Next field / the step's detail"),
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _rendered(text: str, values: Mapping[str, object], render: Render) -> str:
    """A template with the values it names, or as written while one of them is not valid."""
    try:
        return render(text, values)
    except KeyError:
        return text


def _param_problem(error: ParamError) -> str:
    """A ParamError as the form shows it: the CLI's ``--param`` prefix means nothing here."""
    return _one_line(str(error)).removeprefix("--param ")


def _plan_lines(plan: Plan, secrets: Sequence[str], caption: str = "plan") -> list[str]:
    """A plan as the screen shows it, redacted: its summary, then the exact command, diff or
    request, then its notes."""
    lines = [
        f"{caption}: {plan.summary}",
        *plan.detail.rstrip("\n").splitlines(),
        *(f"note: {note}" for note in plan.notes),
    ]
    return redact("\n".join(lines), known=secrets).splitlines()


# --- the run, owned by the app ------------------------------------------------------------------


class RunUpdated(Message):
    """A run moved on (``update``), or it waits for the engineer or stopped (``update`` None)."""

    def __init__(self, driver: RunDriver, update: RunUpdate | None) -> None:
        super().__init__()
        self.driver = driver
        self.update = update


@dataclass(eq=False)
class Ask:
    """What a run waits for: the move before a step, a decision, or the choice after a failure."""

    kind: str  # step, confirm or failure
    step: Step
    future: asyncio.Future[str | Decision]
    request: ConfirmRequest | None = None
    default: str = ""  # after a failure: what the runbook's on_failure says
    shown: bool = False  # its confirmation dialog has been opened
    announced: bool = False  # the engineer was told, on another view, that the run waits
    state: StepState | None = None  # before a step: the run's state of it (for its preview)
    plan: tuple[str, ...] | None = None  # before a mutate step: its plan now, as shown


@dataclass(eq=False)
class TuiController:
    """runner.Controller for the TUI: every answer is a key of the runner screen.

    In step mode the run waits before each step; ``continue`` runs on until the next decision
    (a confirmation or a failure), then it is step mode again. An abort asked while a step
    runs is the run's own (:meth:`Run.abort`): it stops a wait at once.
    """

    operator: str
    changed: Callable[[], None]
    pace: str = "step"  # step or continue
    ask: Ask | None = None

    async def before_step(self, run: Run, step: StepState) -> str:
        if self.pace == "continue":
            return "run"
        move = await self._wait(Ask("step", step.step, self._future(), state=step))
        assert isinstance(move, str)
        return move

    async def confirm(self, request: ConfirmRequest) -> Decision:
        self.pace = "step"
        decision = await self._wait(Ask("confirm", request.step, self._future(), request))
        assert isinstance(decision, Decision)
        return decision

    async def after_failure(self, run: Run, step: StepState, default: str) -> str:
        self.pace = "step"
        if run.abort_requested:  # asked while the step ran: the run stops (and rolls back)
            return "abort"
        choice = await self._wait(Ask("failure", step.step, self._future(), default=default))
        assert isinstance(choice, str)
        return choice

    def answer(self, value: str | Decision) -> None:
        """The engineer's answer to what the run waits for (ignored when it waits for nothing)."""
        ask, self.ask = self.ask, None
        if ask is not None and not ask.future.done():
            ask.future.set_result(value)
        self.changed()

    def stop(self, run: Run, *, rollback: bool = False) -> None:
        """x (abort) or b (roll back): the answer to what the run waits for, if it waits
        before a step or after a failure; else the running step is stopped (a wait at its next
        read of the figures, an action once it finished) and the run ends there."""
        if self.ask is not None and self.ask.kind != "confirm":
            self.answer("rollback" if rollback else "abort")
            return
        run.abort(rollback=rollback)
        self.changed()

    @staticmethod
    def _future() -> asyncio.Future[str | Decision]:
        return asyncio.get_running_loop().create_future()

    async def _wait(self, ask: Ask) -> str | Decision:
        self.ask = ask
        self.changed()
        try:
            return await ask.future
        finally:
            if self.ask is ask:  # cancelled (the app is closing): nothing waits any more
                self.ask = None


@dataclass(eq=False, repr=False)
class RunDriver:
    """One runbook's runs in this console: the form's texts, the latest run and what the runner
    screen shows of it. Owned by the app, which runs each run as one of its workers."""

    app: App[None]
    session: Session
    runbook: Runbook
    read_only: bool
    texts: dict[str, str] = field(default_factory=dict)  # the form, as typed
    hints: dict[str, str] = field(default_factory=dict)  # where a default came from, or why none
    defaults_read: bool = False
    run: Run | None = None
    controller: TuiController | None = None
    starting: bool = False
    ended: bool = False
    problem: str = ""  # why the last start was refused, or why the run stopped unexpectedly
    taken_over: str = ""  # the latest run is a take-over: which, and what the run was
    output: dict[str, deque[str]] = field(default_factory=dict)  # step id -> lines shown
    events: deque[str] = field(default_factory=lambda: deque(maxlen=50))  # notes, the outcome
    undoing: set[str] = field(default_factory=set)  # steps whose undo began: its plan is shown
    screen: RunnerScreen | None = None  # the runner showing this driver now, if any
    # The incident the next run started from the form joins (None: the run opens one); set
    # when the form is opened from an incident (``s`` on :incidents).
    incident_id: int | None = None
    prefilled: set[str] = field(default_factory=set)  # fields an incident filled: kept as set

    @property
    def mode(self) -> str:
        return "read-only" if self.read_only else "live"

    @property
    def running(self) -> bool:
        return self.starting or (self.run is not None and not self.ended)

    @property
    def ask(self) -> Ask | None:
        return self.controller.ask if self.controller is not None and self.running else None

    def state_text(self) -> str:
        """A few words for the list: what the latest run is doing, or how it ended."""
        if self.ask is not None:
            return "waits for you"
        if self.run is None:
            return "starting" if self.starting else ""
        if not self.ended:
            done = sum(s.status not in ("pending", "running") for s in self.run.steps)
            return f"running {done + 1}/{len(self.run.steps)}"
        return self.run.outcome or "stopped"

    # -- what the app starts

    def read_defaults(self) -> None:
        self.app.run_worker(self._read_defaults(), group="runbooks", exit_on_error=False)

    async def _read_defaults(self) -> None:
        """Fill the form with the session's defaults: a fact that is not known leaves only its
        own field empty, with why (the engineer types a value)."""
        try:
            found = await self.session.defaults(self.runbook)
        except Exception as exc:  # the form must open anyway: the engineer types the values
            log.exception("reading the defaults of %s failed", self.runbook.id)
            why = f"not read ({type(exc).__name__}: {exc})"
            found = {p.name: (None, why) for p in self.runbook.params}
        for param in self.runbook.params:
            value, how = found[param.name]
            if value is None:
                self._fill(param.name, "", f"no default: {how}")
            else:
                self._fill(param.name, format_value(value, param.type), how)
        self.defaults_read = True
        self.changed()

    def prefill(self, values: Mapping[str, str], incident_id: int, why: str) -> None:
        """Open the form for an incident: its suggested values, and the run joins it."""
        self.prefilled = set()
        for name, text in values.items():
            if any(p.name == name for p in self.runbook.params):
                self.texts[name] = text
                self.hints[name] = why
                self.prefilled.add(name)
        self.incident_id = incident_id
        self.changed()

    def _fill(self, name: str, text: str, hint: str) -> None:
        if name in self.prefilled:  # the incident's value and why it is there stay
            return
        if not self.texts.get(name):  # what the engineer typed meanwhile stays
            self.texts[name] = text
        self.hints[name] = _one_line(hint)

    def start(self) -> None:
        """ctrl+s: a new run with the form's values."""
        given = dict(self.texts)
        self._launch("", lambda: self._execute(given))

    def take_over(self, record: RunRecord, how: str) -> None:
        """Resume (``resume``) or roll back (``rollback``) a run a killed console left
        interrupted. The session records the run as this console's and makes it with this
        driver's controller, so it waits before each step and asks for each confirmation
        (each undo's too: another process made the change) exactly as a new run does."""
        what = f"{how} of run {record.id}, which was {record.state}"
        self._launch(what, lambda: self._take_over(record.id, how))

    def _launch(self, taken_over: str, job: Callable[[], Awaitable[None]]) -> None:
        if self.running:
            return
        self.starting = True
        self.problem = ""
        self.taken_over = taken_over
        self.app.run_worker(self._guarded(job), group="runbooks", exit_on_error=False)
        self.changed()

    async def _guarded(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception as exc:  # a failing run must not take the console down with it
            log.exception("run of %s failed", self.runbook.id)
            self.problem = _one_line(f"the run stopped: {type(exc).__name__}: {exc}")
        finally:
            self.starting = False
            self.ended = True
            self.changed()

    def _fresh(self) -> TuiController:
        """A new run's controller; nothing shown of the last run any more."""
        self.controller = TuiController(self.session.operator, self.changed)
        self.output = {}
        self.undoing = set()
        self.events.clear()
        self.ended = False
        return self.controller

    async def _execute(self, given: Mapping[str, str]) -> None:
        try:
            values, _ = await self.session.values(self.runbook, given)
        except ParamError as exc:
            self.problem = f"not started: {_param_problem(exc)}"
            return
        controller = self._fresh()
        self.run = self.session.start(
            self.runbook,
            values,
            controller,
            mode=self.mode,
            incident_id=self.incident_id,
            listener=self._listen,
        )
        self.starting = False
        self.changed()
        await self.run.execute()

    async def _take_over(self, run_id: int, how: str) -> None:
        controller = self._fresh()
        self.run = None  # until the session hands the run over (_Handover)
        try:
            await self.session.take_over(run_id, how, controller, self.mode, _Handover(self))
        except ParamError as exc:  # refused before anything was recorded: the run stays
            self.problem = f"not taken over: {_one_line(str(exc))}"

    def stop(self, *, rollback: bool = False) -> None:
        """x (abort) or, with ``rollback``, b (abort and undo the changes made so far)."""
        assert self.run is not None and self.controller is not None
        self.controller.stop(self.run, rollback=rollback)

    def _plan_ahead(self) -> None:
        """Before a mutate step in step mode: read the plan it would run now, to show it."""
        ask, run = self.ask, self.run
        if ask is None or ask.kind != "step" or ask.state is None or ask.plan is not None:
            return
        if ask.step.kind != "mutate" or run is None:
            return
        ask.plan = (f"{PLAN_CAPTION}: reading what the step would change…",)
        self.app.run_worker(self._preview(run, ask), group="runbooks", exit_on_error=False)

    async def _preview(self, run: Run, ask: Ask) -> None:
        assert ask.state is not None
        caption = PLAN_CAPTION
        try:
            skipped = await run.skip_reason(ask.state)
            if skipped is not None:
                ask.plan = (f"it would be skipped now ({skipped}), changing nothing",)
                self.changed()
                return
            plan = await run.preview(ask.state)
        except ActionRefused as refusal:
            why = _one_line(redact(str(refusal), known=run.secrets))
            ask.plan = (f"{caption}: refused ({why}); the step would fail, changing nothing",)
        except Exception as exc:  # the plan is only shown: the step plans again when it starts
            log.exception("preview of %s failed", ask.step.id)
            why = _one_line(redact(f"{type(exc).__name__}: {exc}", known=run.secrets))
            ask.plan = (f"{caption}: not known ({why})",)
        else:
            ask.plan = () if plan is None else tuple(_plan_lines(plan, run.secrets, caption))
        self.changed()

    def note(self, text: str) -> None:
        """The engineer's note, in the incident log of the latest run."""
        assert self.run is not None
        operator = self.session.operator
        self.session.log.log(self.run.record, "note", text, operator_name=operator)
        self.events.append(f"note by {operator}: {text}")
        self.changed()

    # -- updates: posted from anywhere, applied on the UI loop

    def _listen(self, update: RunUpdate) -> None:
        self.app.post_message(RunUpdated(self, update))

    def changed(self) -> None:
        self.app.post_message(RunUpdated(self, None))

    def apply(self, update: RunUpdate | None) -> None:
        """Record one update (called by the app's message handler) and repaint the runner."""
        if update is not None:
            if update.kind == "output" and update.step is not None:
                self._lines(update.step).append(update.text)
            elif update.kind in ("decision", "rollback") and update.step is not None:
                self._lines(update.step).append(f"» {update.text}")
                if update.kind == "rollback":
                    self.undoing.add(update.step)
            elif update.kind == "plan" and update.step in self.undoing:
                # An undo's plan, shown before its confirmation (a change another process made):
                # a mutate step's own plan is on its state, not here.
                self._lines(update.step).append(f"  {update.text}")
            elif update.kind == "run.finished":
                self.events.append(f"run {update.text}")
        self._plan_ahead()
        if self.screen is not None:
            self.screen.repaint()

    def _lines(self, step_id: str) -> deque[str]:
        return self.output.setdefault(step_id, deque(maxlen=OUTPUT_LINES_SHOWN))

    def needs_engineer(self) -> Ask | None:
        """A decision or failure choice waiting with no runner in sight to show it."""
        ask = self.ask
        if ask is None or ask.kind == "step" or ask.announced or ask.shown:
            return None
        return ask if self.screen is None else None


class _Handover:
    """The listener :meth:`Session.take_over` is given. The session makes the run itself and
    hands it over by setting ``run`` on a listener that has one (as on the CLI's printer):
    from then on the driver shows it."""

    def __init__(self, driver: RunDriver) -> None:
        self.driver = driver

    def __call__(self, update: RunUpdate) -> None:
        self.driver._listen(update)

    @property
    def run(self) -> Run | None:
        return self.driver.run

    @run.setter
    def run(self, run: Run) -> None:
        self.driver.run = run
        self.driver.starting = False
        self.driver.changed()


# --- the list -----------------------------------------------------------------------------------


class RunbookTable(LiveTable):
    """The loaded runbooks: what they are for, and what their latest run is doing."""

    COLUMNS = (
        ("id", "Runbook", 18),
        ("title", "Title", 27),
        ("answers", "Answers", 15),
        ("run", "Last run", 14),
    )

    def __init__(
        self, runbooks: Iterable[Runbook], run_state: Callable[[str], str], *, id: str
    ) -> None:
        super().__init__(id=id)
        self.runbooks = sorted(runbooks, key=lambda r: r.id)
        self.run_state = run_state

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        for r in self.runbooks:
            answers = ", ".join((*r.alerts, *r.symptoms))
            if row_filter.keeps(r.id, r.title, answers):
                yield f"runbook:{r.id}", (r.id, r.title, answers, self.run_state(r.id))


class TakeOverRequested(Message):
    """r or b on an interrupted run: the app opens the runner on its resume or rollback."""

    def __init__(self, record: RunRecord, how: str) -> None:
        super().__init__()
        self.record = record
        self.how = how  # resume or rollback


class InterruptedTable(LiveTable):
    """The runs a killed console left interrupted: r resumes the one under the cursor, b rolls
    it back. Its rows are the screen's latest read of the log (``records``), not the snapshot."""

    COLUMNS = (
        ("run", "Run", 4),
        ("runbook", "Runbook", 16),
        ("state", "State", 37),
        ("incident", "Inc", 4),
        ("when", "Started", 8),
        ("operator", "By", 24),
    )
    BINDINGS = [  # noqa: RUF012
        *LiveTable.BINDINGS,
        Binding("r", "take_over('resume')", "Resume"),
        Binding("b", "take_over('rollback')", "Roll back"),
    ]

    def __init__(self, *, read_only: bool, loaded: Collection[str], id: str) -> None:
        super().__init__(id=id)
        self.read_only = read_only
        self.loaded = loaded  # the runbook ids the session holds
        self.records: dict[str, RunRecord] = {}

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        for key, r in self.records.items():
            if row_filter.keeps(r.runbook, r.state, r.operator):
                cells = (
                    str(r.id),
                    r.runbook,
                    alarm_if(True, r.state),  # reverse video: it shows with NO_COLOR too
                    str(r.incident_id),
                    clock(r.started_at),
                    r.operator,
                )
                yield key, cells

    @property
    def selected(self) -> RunRecord | None:
        key = self.selected_key
        return self.records.get(key) if key is not None else None

    def refusal(self, record: RunRecord, how: str) -> str | None:
        """Why ``how`` is not offered for the run (its key dimmed), or None. The session
        refuses these anyway; this is for the engineer to see before pressing."""
        if record.runbook not in self.loaded:
            return f"runbook {record.runbook} is not loaded now"
        if self.read_only:
            return f"read-only mode: a {how} changes the fleet"
        if how == "resume" and record.rollback_step is not None:
            return "interrupted during its rollback, it can only be rolled back"
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action != "take_over":
            return True
        record = self.selected
        if record is None:
            return False
        return self.refusal(record, str(parameters[0])) is None or None

    def action_take_over(self, how: str) -> None:
        record = self.selected
        if record is not None and self.refusal(record, how) is None:
            self.post_message(TakeOverRequested(record, how))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_bindings()  # one run may be resumed, the next not


class RunbooksScreen(DetailView):
    """``:runbooks``: filterable like every view; enter opens the runner of the selected one.

    Above the runbooks, shown only while there are some, the runs a killed console left
    interrupted, read through the session each time the view is shown and when a run ends.
    """

    VIEW_NAME = "runbooks"
    HELP_KEYS = (
        ("enter", "Open the runner of the runbook under the cursor"),
        ("r b", "Resume / roll back the interrupted run under the cursor"),
    )
    DEFAULT_CSS = """
    RunbooksScreen #problems { height: auto; max-height: 3; padding: 0 1; }
    RunbooksScreen .detail { max-height: 5; }
    RunbooksScreen #interrupted-caption { display: none; height: 1; padding: 0 1;
                                          text-style: bold; }
    RunbooksScreen #interrupted { display: none; height: auto; max-height: 5; }
    RunbooksScreen #interrupted-caption.-shown, RunbooksScreen #interrupted.-shown {
        display: block; }
    """

    def __init__(
        self,
        session: Session | None,
        open_runner: Callable[[str], None],
        run_state: Callable[[str], str],
        *,
        read_only: bool,
    ) -> None:
        super().__init__()
        self.session = session
        self.read_only = read_only
        self.open_runner = open_runner
        self.run_state = run_state

    def body(self) -> ComposeResult:
        loaded = self.session.runbooks if self.session is not None else {}
        # On top, while there are some: a console died in the middle of these.
        yield Static(id="interrupted-caption")
        yield InterruptedTable(read_only=self.read_only, loaded=loaded, id="interrupted")
        if self.session is None:
            caption = "Runbooks need a config with a store: none is loaded"
        else:
            caption = f"Runbooks ({len(loaded)}): enter opens the runner"
        yield Label(caption, classes="caption")
        problems = self.session.problems if self.session is not None else []
        if problems:
            lines = [f"{len(problems)} problem(s) in runbook files:", *problems]
            yield Static(Text("\n".join(lines)), id="problems")
        yield RunbookTable(loaded.values(), self.run_state, id="runbooks")
        yield Static(id="detail", classes="detail")

    def on_screen_resume(self) -> None:
        # Textual calls FleetView's handler too (every class's in the MRO): not super() here.
        self.refresh_runs()

    # A worker of its own, the latest read replacing one under way; @work makes the coroutine
    # when the worker starts, so a read replaced before it began leaves none unawaited.
    @work(group="interrupted", exclusive=True)
    async def refresh_runs(self) -> None:
        """Read the interrupted runs again, off the UI loop (the log is a SQLite file)."""
        if self.session is None:
            return
        caption = self.query_one("#interrupted-caption", Static)
        try:
            runs = await asyncio.to_thread(self.session.interrupted_runs)
        except Exception as exc:  # the list must open anyway; say why the runs are missing
            log.exception("reading the interrupted runs failed")
            caption.update(Text(_one_line(f"interrupted runs not read: {exc}")))
            caption.add_class("-shown")
            return
        table = self.query_one(InterruptedTable)
        appearing = bool(runs) and not table.records
        table.records = {f"run:{r.id}": r for r in runs}
        caption.update(Text(f"Interrupted runs ({len(runs)}): r resumes, b rolls back"))
        for widget in (caption, table):
            widget.set_class(bool(runs), "-shown")
        self._reapply()
        if appearing:
            table.focus()  # what needs the engineer first, its keys in the footer
        elif not runs and self.focused is table:
            self.query_one(RunbookTable).focus()
        self._show_detail()

    def _show_detail(self) -> None:
        # The detail follows the table with the focus (the base follows the first table).
        focused = self.focused
        table = focused if isinstance(focused, LiveTable) else self.query_one(RunbookTable)
        text = self.detail(table.selected_key, self._snapshot) if self._snapshot else ""
        self.query_one("#detail", Static).update(Text(text))

    def on_descendant_focus(self) -> None:
        self._show_detail()

    def detail(self, key: str | None, snapshot: FleetSnapshot) -> str:
        if self.session is None or key is None:
            return ""
        if key.startswith("run:"):
            table = self.query_one(InterruptedTable)
            record = table.records.get(key)  # None: read again, its row not rebuilt yet
            return self._run_detail(table, record) if record is not None else ""
        runbook = self.session.runbooks[key.removeprefix("runbook:")]
        lines = [_one_line(runbook.description)] if runbook.description else []
        params = ", ".join(
            f"{p.name} ({p.type}"
            + (f", default {format_value(p.default, p.type)}" if p.default is not None else "")
            + (f", from {p.fact}" if p.fact else "")
            + ")"
            for p in runbook.params
        )
        lines.append(f"parameters: {params or 'none'}")
        kinds = [s.kind for s in runbook.steps]
        lines.append(
            f"{len(kinds)} step(s): "
            + ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
        )
        return "\n".join(lines)

    @staticmethod
    def _run_detail(table: InterruptedTable, record: RunRecord) -> str:
        """Who ran the interrupted run, with what, and what r and b would do (or why not)."""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
        params = " ".join(f"{k}={v}" for k, v in record.params.items())
        at = f"at {record.open_step}" if record.open_step else "after its last finished step"
        offers = {
            "resume": f"r resumes it {at} (checks a landed change cured are not judged again)",
            "rollback": "b undoes its changes, newest first, each undo confirmed",
        }
        lines = [
            f"run {record.id} of {record.runbook} · incident {record.incident_id} · "
            f"{record.mode} · started {started} by {record.operator}"
            + (f" · {params}" if params else ""),
        ]
        for how, offer in offers.items():
            why = table.refusal(record, how)
            key = offer.split(" ", 1)[0]
            lines.append(f"{key} dimmed: {why}" if why else offer)
        return "\n".join(lines)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key is not None and key.startswith("runbook:"):
            self.open_runner(key.removeprefix("runbook:"))


# --- the runner ---------------------------------------------------------------------------------


class StepTable(DataTable[Text]):
    """The run's steps and their states, updated cell by cell (the cursor never jumps)."""

    BINDINGS = LiveTable.BINDINGS
    COLUMNS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("n", "#", 2),
        ("step", "Step", 20),
        ("kind", "Kind", 7),
        ("state", "State", 12),
        ("what", "What", 32),
    )

    def __init__(self, steps: Iterable[Step], *, id: str) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, cell_padding=0)
        for key, label, width in self.COLUMNS:
            self.add_column(label, key=key, width=width + 1)
        self._cells: dict[str, str] = {}
        for i, step in enumerate(steps, start=1):
            what = step.title or (step.action.action if step.action else step.question or "")
            cells = (str(i), step.id, step.kind, "pending", _one_line(what or step.text or ""))
            self.add_row(*(Text(c, no_wrap=True) for c in cells), key=step.id)
            self._cells[step.id] = "pending"

    def show_state(self, step_id: str, state: str) -> None:
        if self._cells.get(step_id) != state:
            self._cells[step_id] = state
            style = "bold reverse" if state in ALARM_STATES else ""
            self.update_cell(step_id, "state", Text(state, style=style, no_wrap=True))

    @property
    def selected_id(self) -> str | None:
        ids = list(self._cells)
        return ids[self.cursor_row] if 0 <= self.cursor_row < len(ids) else None

    def select(self, step_id: str) -> None:
        ids = list(self._cells)
        if step_id in ids and self.cursor_row != ids.index(step_id):
            self.move_cursor(row=ids.index(step_id), animate=False)


class ParamInput(Input):
    """One parameter's field: names and choices the config knows are offered as you type."""

    def __init__(self, name: str, value: str, placeholder: str, choices: list[str]) -> None:
        suggester = SuggestFromList(choices, case_sensitive=False) if choices else None
        super().__init__(
            value, placeholder=placeholder, suggester=suggester, id=f"param-{name}", compact=True
        )
        self.param_name = name


class RunnerScreen(Screen[None]):
    """One runbook's run: the parameters form, the steps, and the selected step below them."""

    BINDINGS = [  # noqa: RUF012
        Binding("ctrl+s", "start", "Start"),
        Binding("n", "next_step", "Next"),
        Binding("c", "go_on", "Continue"),
        Binding("s", "skip", "Skip"),
        Binding("r", "retry", "Retry"),
        Binding("b", "roll_back", "Roll back"),
        Binding("x", "abort", "Abort"),
        Binding("m", "note", "Note"),
        Binding("escape", "back", "Back", tooltip="Back to the list; the run goes on"),
    ]
    DEFAULT_CSS = """
    RunnerScreen .line { height: auto; padding: 0 1; }
    RunnerScreen #form { height: auto; max-height: 8; scrollbar-size-vertical: 1; }
    RunnerScreen .field { height: 1; }
    RunnerScreen .field Label { width: 28; padding: 0 1; }
    RunnerScreen .field Input { width: 1fr; }
    RunnerScreen .field Input:focus { text-style: bold; }
    RunnerScreen .hint { height: 1; padding: 0 1 0 29; color: $text-muted; }
    RunnerScreen .hint.-error { color: $text; text-style: reverse; }
    RunnerScreen StepTable { height: auto; max-height: 9; scrollbar-size-vertical: 1; }
    RunnerScreen #detail-box { height: 1fr; min-height: 3; padding: 0 1;
                               scrollbar-size-vertical: 1; border-top: solid $panel; }
    RunnerScreen #prompt { text-style: bold; }
    """

    def __init__(self, driver: RunDriver) -> None:
        super().__init__()
        self.driver = driver
        self.errors: dict[str, str] = {}
        self._followed: str | None = None  # the step the cursor last followed the run to
        self._shown: tuple[str | None, str] = (None, "")  # the step shown below, its status
        runbook = driver.runbook
        self.sub_title = f"runbook {runbook.id}"

    # -- layout

    def compose(self) -> ComposeResult:
        driver = self.driver
        config = driver.session.config
        known = {
            "node": [n.name for n in config.nodes],
            "endpoint": [e.name for e in config.endpoints],
            "upstream": [u for r in config.routers for u in r.upstreams],
            "bool": ["true", "false"],
        }
        yield Header(show_clock=False)
        with Vertical():
            yield Static(id="run", classes="line")
            with VerticalScroll(id="form"):
                for param in driver.runbook.params:
                    with Horizontal(classes="field"):
                        yield Label(f"{param.name} ({param.type})")
                        yield ParamInput(
                            param.name,
                            driver.texts.get(param.name, ""),
                            param.expected,
                            list(param.choices) or known.get(param.type, []),
                        )
                    yield Static(id=f"hint-{param.name}", classes="hint")
            yield StepTable(driver.runbook.steps, id="steps")
            with VerticalScroll(id="detail-box"):
                yield Static(id="detail")
            yield Static(id="prompt", classes="line")
        yield Footer()

    def on_mount(self) -> None:
        if not self.driver.defaults_read:
            self.driver.read_defaults()
        for field_input in self.query(ParamInput):
            self._validate(field_input)
        fields = list(self.query(ParamInput))
        # The form is hidden while a run (or a take-over) starts: its keys go to the steps.
        form = bool(fields) and self.driver.run is None and not self.driver.running
        (fields[0] if form else self.query_one(StepTable)).focus()

    def on_screen_resume(self) -> None:
        self.driver.screen = self
        self.repaint()

    def on_screen_suspend(self) -> None:
        if self.driver.screen is self:
            self.driver.screen = None

    def on_unmount(self) -> None:
        self.on_screen_suspend()

    # -- painting: from the driver's state, whole (a run has a handful of steps)

    def repaint(self) -> None:
        driver = self.driver
        self._fill_form()
        run = driver.run
        table = self.query_one(StepTable)
        ask = driver.ask
        for i, step in enumerate(driver.runbook.steps):
            status = run.steps[i].status if run is not None else "pending"
            if ask is not None and ask.kind == "step" and ask.step is step:
                status = "next"
            table.show_state(step.id, status)
        current = self._current_step()
        if current is not None and current != self._followed:
            self._followed = current
            table.select(current)
        self.query_one("#run", Static).update(Text(self._run_line()))
        self.query_one("#prompt", Static).update(Text(self._prompt()))
        self._show_detail()
        self.refresh_bindings()
        if ask is not None and ask.kind == "confirm" and not ask.shown and self.is_current:
            assert ask.request is not None
            ask.shown = True
            controller = driver.controller
            assert controller is not None
            environment = driver.session.config.environment
            secrets = driver.run.secrets if driver.run is not None else ()
            self.app.push_screen(
                ConfirmDialog(ask.request, controller.operator, environment, secrets),
                self._decided,
            )

    def _fill_form(self) -> None:
        driver = self.driver
        # While a run goes, its values are on the run line: the steps get the rows.
        self.query_one("#form").display = not driver.running
        for field_input in self.query(ParamInput):
            text = driver.texts.get(field_input.param_name, "")
            if field_input.value != text:
                field_input.value = text  # a default read since the screen opened
            self._validate(field_input)  # its hint may have arrived with the defaults

    def _current_step(self) -> str | None:
        """The step the run is in, or waits before; the cursor follows it."""
        driver = self.driver
        if driver.ask is not None:
            return driver.ask.step.id
        if driver.run is not None:
            for state in driver.run.steps:
                if state.status == "running":
                    return state.step.id
        return None

    def _run_line(self) -> str:
        driver = self.driver
        parts = [driver.runbook.title]
        if driver.read_only:
            parts.append("READ-ONLY: mutating steps are shown, not run")
        run = driver.run
        if driver.incident_id is not None and not driver.running:
            parts.append(f"a run started here joins incident {driver.incident_id}")
        if run is not None:
            record = run.record
            parts.append(f"run {record.id} · incident {record.incident_id} · {run.mode}")
            if driver.taken_over:
                parts.append(driver.taken_over)
            if driver.running:
                runbook = driver.runbook
                parts += [
                    f"{p.name}={format_value(run.values[p.name], p.type)}" for p in runbook.params
                ]
        return " · ".join(parts)

    def _prompt(self) -> str:
        driver = self.driver
        ask, run = driver.ask, driver.run
        if driver.problem and not driver.running:
            return driver.problem
        if driver.starting:
            return "starting…"
        if ask is not None:
            step = ask.step
            undo = ", b rolls back" if self._can_roll_back() else ""
            if ask.kind == "step":
                plan = " (its plan: below)" if ask.plan is not None else ""
                return (
                    f"next: {step.id} ({step.kind}){plan}. n runs it, s skips it, "
                    f"c runs on to the next decision, x aborts{undo}"
                )
            if ask.kind == "confirm":
                return f"{step.id} waits for your decision"
            return (
                f"{step.id} failed (why: below). r retries{undo}, c goes on, "
                f"x aborts (the runbook says: {ask.default})"
            )
        if run is not None and driver.ended:
            what = run.summary or driver.problem or "stopped"
            again = "starts a new run" if driver.taken_over else "runs it again"
            return f"run {run.record.id} {run.outcome or 'stopped'}: {what}. ctrl+s {again}"
        if run is not None:
            controller = driver.controller
            assert controller is not None
            if run.abort_requested:
                what = "roll back" if run.rollback_requested else "abort"
                then = f", then {len(run.done)} change(s) undone" if run.rollback_requested else ""
                return (
                    f"{what} asked: a wait stops at its next read, an action that runs "
                    f"finishes first{then}"
                )
            current = self._current_step()
            going = " (running on to the next decision)" if controller.pace == "continue" else ""
            undo = ", b aborts and rolls back" if self._can_roll_back() else ""
            return f"running {current or 'the next step'}{going}. x aborts{undo}"
        if not driver.defaults_read:
            return "reading the defaults…"
        bad = next(iter(self.errors.items()), None)
        if bad is not None:
            return f"fix {bad[0]} first: {bad[1]}"
        return "ctrl+s starts the run; it waits before each step for your n"

    def _show_detail(self) -> None:
        table = self.query_one(StepTable)
        step_id = table.selected_id
        box = self.query_one("#detail-box", VerticalScroll)
        text = self._detail(step_id) if step_id is not None else ""
        self.query_one("#detail", Static).update(Text(text))
        shown = (step_id, self._status(step_id) if step_id is not None else "")
        if shown[1] == "running":
            box.scroll_end(animate=False)  # live output: keep its newest line in sight
        elif shown != self._shown:
            box.scroll_home(animate=False)  # another step, or it ended: from its first line
        self._shown = shown

    def _status(self, step_id: str) -> str:
        run = self.driver.run
        if run is None:
            return "pending"
        return next(s.status for s in run.steps if s.step.id == step_id)

    def _detail(self, step_id: str) -> str:
        """The selected step: its plan (a mutating step's default view), figures, output."""
        driver = self.driver
        run = driver.run
        step = next(s for s in driver.runbook.steps if s.id == step_id)
        state = next(s for s in run.steps if s.step.id == step_id) if run is not None else None
        status = state.status if state is not None else "pending"
        what = f"{step.kind} {step.action.action}" if step.action else step.kind
        lines = [f"{step.id} · {what} · {status}" + (f" · {step.title}" if step.title else "")]
        shown = driver.output.get(step_id) if run is not None else None
        # A check's summary is its figure lines joined: they are shown one a line below.
        if state is not None and state.summary and not (step.kind == "check" and shown):
            lines.append(_one_line(state.summary))
        if state is not None and state.progress:
            lines.append(f"waiting: {state.progress}")
        plan = state.plan if state is not None else None
        ask = driver.ask
        if plan is not None:
            assert run is not None
            lines += _plan_lines(plan, run.secrets)
        elif ask is not None and ask.step is step and ask.plan is not None:
            lines += ask.plan  # step mode, before the step: made again when it starts
        elif step.kind == "mutate" and status == "pending":
            lines.append(
                "plan: made when the step starts, and shown here and in the confirmation "
                "before anything changes"
            )
        if status == "pending":
            values = run.values if run is not None else self._typed_values()
            if step.command is not None:
                node = _rendered(step.command.node, values, render_text)
                lines.append(f"runs on {node}: {_rendered(step.command.run, values, render_shell)}")
            if step.kind == "confirm" and step.question:
                lines.append(f"asks: {_rendered(step.question, values, render_text)}")
            if step.kind == "note" and step.text:
                lines.append(f"notes: {_rendered(step.text, values, render_text)}")
        if shown:
            lines.append("output:")
            lines += [f"  {line}" for line in shown]
        if run is not None and driver.events:
            lines.append("run:")
            lines += [f"  {event}" for event in driver.events]
        return "\n".join(lines)

    # -- the form

    def _typed_values(self) -> dict[str, object]:
        """The form's values that parse: a pending step is shown as they would run it."""
        values: dict[str, object] = {}
        for param in self.driver.runbook.params:
            if param.name not in self.errors:
                values[param.name] = parse_param(param, self.driver.texts.get(param.name, ""))
        return values

    def on_input_changed(self, event: Input.Changed) -> None:
        if isinstance(event.input, ParamInput):
            self.driver.texts[event.input.param_name] = event.value
            self._validate(event.input)
            self.query_one("#prompt", Static).update(Text(self._prompt()))
            self.refresh_bindings()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, ParamInput):
            self.focus_next()

    def _validate(self, field_input: ParamInput) -> None:
        """Typed as you type: the parameter's own parse; its problem in one line under it."""
        name = field_input.param_name
        hint = self.query_one(f"#hint-{name}", Static)
        try:
            parse_param(self.driver.runbook.param(name), field_input.value)
        except ParamError as exc:
            self.errors[name] = _param_problem(exc)
            why = self.driver.hints.get(name, "")
            shown = self.errors[name] if field_input.value or not why else why
            hint.update(Text(shown, no_wrap=True, overflow="ellipsis"))
            hint.set_class(True, "-error")
            return
        self.errors.pop(name, None)
        param = self.driver.runbook.param(name)
        about = " · ".join(filter(None, (self.driver.hints.get(name), param.description)))
        hint.update(Text(about, no_wrap=True, overflow="ellipsis"))
        hint.set_class(False, "-error")

    # -- keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        driver = self.driver
        ask = driver.ask
        running = driver.run is not None and driver.running
        if action == "start":
            if driver.running:
                return False
            return (driver.defaults_read and not self.errors) or None
        if action == "note":
            return driver.run is not None
        if action == "back":
            return True
        if not running:
            return False  # the run's own keys: shown once there is a run
        kind = ask.kind if ask is not None else None
        if action in ("next_step", "skip"):
            return kind == "step" or None
        if action == "go_on":
            return kind in ("step", "failure") or None
        if action == "retry":
            # Mutating keys: dimmed in read-only mode (the registry would refuse anyway).
            return (kind == "failure" and not driver.read_only) or None
        if action == "roll_back":
            return self._can_roll_back() or None
        if action == "abort":
            assert driver.run is not None
            return (kind != "confirm" and not driver.run.abort_requested) or None
        return True

    def _can_roll_back(self) -> bool:
        """b: while the run goes (or waits before a step or after a failure) with changes made
        that it can undo; a mutating key, dimmed in read-only mode."""
        driver, run = self.driver, self.driver.run
        if run is None or not driver.running or driver.read_only or run.abort_requested:
            return False
        ask = driver.ask
        return bool(run.done) and (ask is None or ask.kind != "confirm")

    def _decided(self, decision: Decision | None) -> None:
        controller = self.driver.controller
        assert controller is not None and decision is not None  # the dialog always decides
        controller.answer(decision)

    def _answer(self, value: str) -> None:
        assert self.driver.controller is not None
        self.driver.controller.answer(value)

    def action_start(self) -> None:
        self.driver.start()
        self.query_one(StepTable).focus()

    def action_next_step(self) -> None:
        self._answer("run")

    def action_skip(self) -> None:
        self._answer("skip")

    def action_go_on(self) -> None:
        controller = self.driver.controller
        assert controller is not None and controller.ask is not None
        if controller.ask.kind == "step":
            controller.pace = "continue"
            self._answer("run")
        else:
            self._answer("continue")

    def action_retry(self) -> None:
        self._answer("retry")

    def action_roll_back(self) -> None:
        self.driver.stop(rollback=True)

    def action_abort(self) -> None:
        self.driver.stop()

    def action_note(self) -> None:
        run = self.driver.run
        assert run is not None
        self.app.push_screen(NoteDialog(f"run {run.record.id} of {run.runbook.id}"), self._note)

    def _note(self, text: str | None) -> None:
        if text:
            self.driver.note(text)

    def action_back(self) -> None:
        self.app.pop_screen()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()
