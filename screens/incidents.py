"""Incidents in the TUI: the ``:incidents`` list, one incident's timeline, and its replay.

The list and the timeline read the incident log in workers (the log is a SQLite file another
console writes too), every few seconds while they are shown and at once after each change
made here; they only render what was read. The keys on an incident are the same on both
(:class:`IncidentKeys`): acknowledge, mitigate and resolve, each confirmed in a small dialog
with an optional note; a note or a follow-up; the suggested runbook's form, prefilled and
joined to the incident; the replay; the Markdown postmortem written to a file. A change the
log refuses (another engineer resolved the incident a moment ago) is a one-line notice.

Changing an incident's state or adding a note writes the incident log only, never the fleet,
so they work in read-only mode too (as ``llmops incidents ack`` does); a runbook started from
an incident runs in the console's mode, read-only included.

The replay (:class:`ReplayScreen`) shows the overview's tables at a past moment, computed by
:func:`console.replay.fleet_at` from the stored samples in a worker; the live snapshot never
reaches it (it is not a fleet view), and its banner says REPLAY and the time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    Checkbox,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    OptionList,
    Static,
)
from textual.widgets.option_list import Option

from console.incidents import (
    STATES,
    IncidentRecord,
    StateRefused,
    incident_markdown,
)
from console.models import FleetSnapshot
from console.replay import FleetReplay, event_times, fleet_at, next_time, previous_time
from screens.cells import Cells, alarm_if
from screens.formatting import clock
from screens.tables import EndpointTable, LiveTable, NodeTable, RowFilter
from screens.views import DetailView, FleetView

if TYPE_CHECKING:
    from console.session import Session

log = logging.getLogger(__name__)

REFRESH_S = 3.0  # the log is read again this often while a list or a timeline is shown
REPLAY_STEP_S = 10.0  # [ and ] move the replay's time cursor by this much
OUTPUT_LINES = 8  # of a step's command or output in the timeline; the export has them all
# The verb of each state change, for the dialog and the notices.
STATE_ACTIONS = {"acknowledged": "Acknowledge", "mitigated": "Mitigate", "resolved": "Resolve"}
HOLDS = {True: "holds", False: "does not hold", None: "n/a"}
TARGET_WIDTH, RUNS_WIDTH = 14, 18  # of the list's columns, which fit 80 columns

StartRunbook = Callable[[str, dict[str, str], int], None]  # runbook, values, incident id


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def age(seconds: float) -> str:
    """Four characters at most: 45s, 12m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def ordered(records: Iterable[IncidentRecord]) -> list[IncidentRecord]:
    """Open ones first, then newest first: what needs the engineer is on top."""
    return sorted(records, key=lambda r: (not r.is_open, -r.opened_at, -r.id))


def fit(text: str, width: int) -> str:
    """A cell cut to its column, so it never runs into the next one."""
    return text if len(text) <= width else text[: width - 1] + "…"


def runs_text(record: IncidentRecord) -> str:
    """How many runs, and how the latest went (the detail line names their runbooks)."""
    if not record.runs:
        return "-"
    return fit(f"{len(record.runs)} {record.runs[-1].state}", RUNS_WIDTH)


def incident_cells(record: IncidentRecord, now: float) -> Cells:
    return (
        str(record.id),
        # Reverse video for what nobody has taken yet: it shows with NO_COLOR too.
        alarm_if(record.state == "open", record.state),
        alarm_if(record.severity == "page", record.severity or "-"),
        fit(record.target or "-", TARGET_WIDTH),
        age(now - record.opened_at),
        runs_text(record),
        record.title,
    )


def allowed(record: IncidentRecord, state: str) -> bool:
    """Whether the incident may move to ``state`` (forward only, as the log enforces)."""
    return STATES.index(record.state) < STATES.index(state)


def suggestions_in(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ranked runbooks logged when the incident opened (the first event carrying them)."""
    for event in events:
        if event["kind"] in ("incident.opened", "alert.firing"):
            found = event["data"].get("suggestions")
            if found:
                return list(found)
    return []


def suggested(
    record: IncidentRecord, events: Sequence[Mapping[str, Any]] | None
) -> tuple[str, dict[str, str]] | None:
    """The suggested runbook and its prefilled values; None when nothing was suggested.
    Without the events read yet, the runbook alone (its values come with the events)."""
    found = suggestions_in(events or ())
    wanted = record.runbook or (found[0]["runbook"] if found else None)
    if wanted is None:
        return None
    for suggestion in found:
        if suggestion.get("runbook") == wanted:
            params = suggestion.get("params") or {}
            return wanted, {str(k): str(v) for k, v in params.items()}
    return wanted, {}


def export_path(store_path: Path, incident_id: int) -> Path:
    """Beside the store: the same folder for every console on the bastion, and writable
    where the store is (the directory the console was started in may not be)."""
    return Path(store_path).expanduser().parent / f"incident-{incident_id}.md"


# --- the timeline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One event of the incident as the timeline shows it: a headline, then its details."""

    event_id: int
    ts: float
    lines: tuple[str, ...]
    alarm: bool = False


def _cut(text: str, limit: int = OUTPUT_LINES) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"… {len(lines) - limit} more line(s): e exports them all"]


def evidence_lines(suggestions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each ranked runbook, why it ranks, and each evidence line with its figure."""
    lines = ["evidence (runbooks ranked on it):"]
    for n, s in enumerate(suggestions, start=1):
        lines.append(f"{n}. {s.get('runbook')}: {s.get('title', '')} ({s.get('why', '')})")
        for line in s.get("evidence") or ():
            mark = HOLDS.get(line.get("holds"), "n/a")
            lines.append(f"   {mark:<13} {line.get('shown', line.get('figure', ''))}")
        params = s.get("params") or {}
        if params:
            lines.append("   prefilled: " + " ".join(f"{k}={v}" for k, v in params.items()))
    return lines


def _result_lines(data: Mapping[str, Any]) -> list[str]:
    """A step's (or an undo's) command or plan, exit status and output."""
    lines: list[str] = []
    if data.get("detail"):
        lines += [f"  $ {line}" for line in _cut(str(data["detail"]))]
    if data.get("exit_status") is not None:
        lines.append(f"  exit status {data['exit_status']}")
    if data.get("output"):
        lines.append("  output:")
        lines += [f"  | {line}" for line in _cut(str(data["output"]))]
    return lines


LABELS = {
    "alert.firing": "ALERT",
    "alert.resolved": "ALERT OK",
    "incident.opened": "OPENED",
    "incident.acknowledged": "ACKED",
    "incident.mitigated": "MITIGATED",
    "incident.resolved": "RESOLVED",
    "incident.note": "NOTE",
    "incident.follow_up": "FOLLOW-UP",
    "note": "NOTE",
    "run.started": "RUN",
    "run.finished": "RUN",
    "step.started": "STEP",
    "step.finished": "STEP",
    "step.planned": "STEP",
    "step.decision": "DECISION",
    "rollback.started": "UNDO",
    "rollback.finished": "UNDO",
    "rollback.planned": "UNDO",
}


def timeline(events: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """The incident's events as the timeline shows them, oldest first.

    A step's start is left out once it finished (its finish says it all); progress reports of
    waits are left out (the export keeps them). The evidence is shown where it was logged,
    once while it stays the same (an alert's firing and the opening carry the same).
    """
    finished = {
        (e["run_id"], e["step"]) for e in events if e["kind"] in ("step.finished", "step.planned")
    }
    shown_evidence: list[Any] | None = None
    entries = []
    for event in events:
        kind, data = event["kind"], event["data"] or {}
        if kind == "step.progress":
            continue
        if kind == "step.started" and (event["run_id"], event["step"]) in finished:
            continue
        label = LABELS.get(kind, "EVENT")
        who = f" ({event['operator']})" if event.get("operator") else ""
        message = _one_line(str(event["message"]))
        if kind in ("incident.note", "incident.follow_up", "note"):
            message = f"{event.get('operator') or 'someone'}: {message}"
            who = ""
        lines = [f"{clock(event['ts'])} {label:<9} {message}{who}"]
        suggestions = data.get("suggestions")
        if suggestions and suggestions != shown_evidence:
            shown_evidence = suggestions
            lines += evidence_lines(suggestions)
        if kind in ("step.finished", "step.planned", "rollback.finished", "rollback.planned"):
            lines += _result_lines(data)
        failed = data.get("ok") is False or data.get("status") in ("failed", "declined")
        alarm = failed or kind == "alert.firing"
        entries.append(Entry(int(event["id"]), float(event["ts"]), tuple(lines), alarm))
    return entries


def summary_lines(record: IncidentRecord) -> list[str]:
    """The incident in a few lines: what, how bad, what it touches, its runs."""
    touched = "; ".join(
        f"{kind} {', '.join(names)}" for kind, names in record.affected.items() if names
    )
    lines = [
        f"#{record.id} {record.title}",
        f"{record.state.upper()} · {record.severity or 'no severity'} · target "
        f"{record.target or 'n/a'} · opened {_when(record.opened_at)} by {record.opened_by}",
    ]
    extra = []
    if touched:
        extra.append(f"affects {touched}")
    if record.runbook:
        extra.append(f"suggested runbook {record.runbook}")
    if record.runs:
        extra.append(
            "runs: "
            + ", ".join(f"{r.id} {r.runbook} {r.state} ({r.operator})" for r in record.runs)
        )
    if extra:
        lines.append(" · ".join(extra))
    return lines


# --- dialogs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateAnswer:
    note: str | None


class StateDialog(ModalScreen[StateAnswer | None]):
    """Move an incident on: enter (or Confirm) does it with the note typed, esc cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]  # noqa: RUF012
    DEFAULT_CSS = """
    StateDialog { align: center middle; }
    StateDialog > Vertical { width: 72; max-width: 100%; height: auto; border: round $accent;
                             background: $surface; padding: 0 1; }
    StateDialog #question { text-style: bold; }
    StateDialog .buttons { height: auto; margin-top: 1; align-horizontal: right; }
    StateDialog Button { margin-left: 2; }
    """

    def __init__(self, record: IncidentRecord, state: str) -> None:
        super().__init__()
        self.record = record
        self.state = state

    def compose(self) -> ComposeResult:
        verb = STATE_ACTIONS[self.state]
        with Vertical():
            yield Label(
                Text(f"{verb} incident {self.record.id}? {self.record.title}"), id="question"
            )
            yield Label(Text(f"now {self.record.state}; the log records who and when"))
            yield Input(placeholder="note (optional): why, what you did", id="note")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button(verb, id="confirm", variant="primary", compact=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._done()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "confirm":
            self._done()
        else:
            self.dismiss(None)

    def _done(self) -> None:
        note = self.query_one("#note", Input).value.strip()
        self.dismiss(StateAnswer(note or None))


@dataclass(frozen=True)
class NoteAnswer:
    text: str
    follow_up: bool


class IncidentNoteDialog(ModalScreen[NoteAnswer | None]):
    """A note, or with the box ticked a follow-up (the postmortem lists those as such)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]  # noqa: RUF012
    DEFAULT_CSS = """
    IncidentNoteDialog { align: center middle; }
    IncidentNoteDialog > Vertical { width: 72; max-width: 100%; height: auto;
                                    border: round $accent; background: $surface; padding: 0 1; }
    IncidentNoteDialog Checkbox { margin-top: 1; }
    """

    def __init__(self, record: IncidentRecord, *, follow_up: bool) -> None:
        super().__init__()
        self.record = record
        self.follow_up = follow_up

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"Note for incident {self.record.id} (enter adds, esc cancels)"))
            yield Input(placeholder="what you saw, did or decided", id="note")
            yield Checkbox("follow-up (to do after the incident)", self.follow_up, compact=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.notify("an empty note says nothing", severity="warning", timeout=3)
            return
        self.dismiss(NoteAnswer(text, self.query_one(Checkbox).value))


# --- the keys on an incident --------------------------------------------------------------------

INCIDENT_BINDINGS = [
    Binding("a", "set_state('acknowledged')", "Ack"),
    Binding("m", "set_state('mitigated')", "Mitigate"),
    Binding("R", "set_state('resolved')", "Resolve"),
    Binding("n", "note(False)", "Note"),
    Binding("N", "note(True)", "Follow-up", show=False),
    Binding("s", "start_suggested", "Run"),
    Binding("p", "replay", "Replay"),
    Binding("e", "export", "Export"),
]
INCIDENT_HELP = (
    ("N", "Add a follow-up (a note the postmortem lists as to do)"),
    ("s", "Open the suggested runbook's form, prefilled, joined to the incident"),
    ("p", "Replay the fleet's figures at the incident's (or the event's) time"),
    ("e", "Write the Markdown postmortem beside the store"),
)
INCIDENT_ACTIONS = frozenset(
    {"set_state", "note", "start_suggested", "replay", "export", "open_timeline"}
)


if TYPE_CHECKING:

    class _ScreenMixin(Screen[None]):
        """What the mixin below is mixed into, for the type checker."""

else:
    # A plain mixin at run time: Textual takes a screen's CSS (and its type names) from its
    # first DOMNode base only, which must be FleetView's line for the list.
    _ScreenMixin = object


class IncidentKeys(_ScreenMixin):
    """The keys on one incident, shared by the list (the row under the cursor) and the
    timeline. Every read and write of the log is in a worker thread."""

    def __init__(self, session: Session | None, start_runbook: StartRunbook) -> None:
        super().__init__()
        self.session = session
        self.start_runbook = start_runbook
        # The events of the incident under the cursor as last read (None: not yet), for s.
        self._events: tuple[int, list[dict[str, Any]]] | None = None

    def current(self) -> IncidentRecord | None:
        raise NotImplementedError

    def reload(self) -> None:
        """Read the log again (after a change made here)."""
        raise NotImplementedError

    def replay_at(self, record: IncidentRecord) -> float:
        return record.opened_at

    def _events_of(self, record: IncidentRecord) -> list[dict[str, Any]] | None:
        if self._events is not None and self._events[0] == record.id:
            return self._events[1]
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in INCIDENT_ACTIONS:
            return super().check_action(action, parameters)
        if isinstance(self.focused, Input):  # the filter line: these are characters to type
            return False
        record = self.current()
        if self.session is None or record is None:
            return False
        if action == "set_state":
            return allowed(record, str(parameters[0])) or None
        if action == "note":
            return True  # a note after the incident was resolved belongs in its postmortem
        if action == "start_suggested":
            found = suggested(record, self._events_of(record))
            loaded = found is not None and found[0] in self.session.runbooks
            return (loaded and record.is_open) or None
        return True

    # -- state changes

    def action_set_state(self, state: str) -> None:
        record = self.current()
        if record is None or self.session is None or not allowed(record, state):
            return
        self.app.push_screen(
            StateDialog(record, state), lambda answer: self._state_answered(record, state, answer)
        )

    def _state_answered(
        self, record: IncidentRecord, state: str, answer: StateAnswer | None
    ) -> None:
        if answer is not None:
            self.run_worker(
                self._change_state(record.id, state, answer.note),
                group="incident",
                exit_on_error=False,
            )

    async def _change_state(self, incident_id: int, state: str, note: str | None) -> None:
        session = self.session
        assert session is not None
        try:
            await asyncio.to_thread(
                session.log.set_state, incident_id, state, session.operator, note
            )
        except StateRefused as refused:  # another console moved it first: say so, read again
            self.notify(_one_line(str(refused)), title="not changed", severity="warning")
        except KeyError:
            self.notify(f"no incident {incident_id} in the log", severity="error")
        except Exception as exc:  # a locked or broken store: a notice, never a crash
            log.exception("changing incident %s failed", incident_id)
            self.notify(
                _one_line(f"{type(exc).__name__}: {exc}"), title="not changed", severity="error"
            )
        else:
            self.notify(f"incident {incident_id} {state}", timeout=4)
        self.reload()

    # -- notes

    def action_note(self, follow_up: bool) -> None:
        record = self.current()
        if record is None or self.session is None:
            return
        self.app.push_screen(
            IncidentNoteDialog(record, follow_up=follow_up),
            lambda answer: self._note_answered(record.id, answer),
        )

    def _note_answered(self, incident_id: int, answer: NoteAnswer | None) -> None:
        if answer is not None:
            self.run_worker(
                self._add_note(incident_id, answer), group="incident", exit_on_error=False
            )

    async def _add_note(self, incident_id: int, answer: NoteAnswer) -> None:
        session = self.session
        assert session is not None
        what = "follow-up" if answer.follow_up else "note"
        try:
            await asyncio.to_thread(
                session.log.add_note,
                incident_id,
                answer.text,
                session.operator,
                follow_up=answer.follow_up,
            )
        except Exception as exc:  # said, not raised: the note is still in the engineer's head
            log.exception("adding a note to incident %s failed", incident_id)
            self.notify(_one_line(f"{what} not added: {exc}"), severity="error")
        else:
            self.notify(f"{what} added to incident {incident_id}", timeout=4)
        self.reload()

    # -- the suggested runbook

    def action_start_suggested(self) -> None:
        record = self.current()
        if record is None or self.session is None:
            return
        self.run_worker(self._start_suggested(record), group="incident", exit_on_error=False)

    async def _start_suggested(self, record: IncidentRecord) -> None:
        session = self.session
        assert session is not None
        events = self._events_of(record)
        if events is None:  # the list has not read this incident's events: read them now
            try:
                events = await asyncio.to_thread(session.log.events, incident_id=record.id)
            except Exception as exc:
                log.exception("reading incident %s failed", record.id)
                self.notify(_one_line(f"incident {record.id} not read: {exc}"), severity="error")
                return
        found = suggested(record, events)
        if found is None or found[0] not in session.runbooks:
            self.notify(f"incident {record.id} has no suggested runbook loaded", severity="warning")
            return
        runbook, values = found
        self.start_runbook(runbook, values, record.id)

    # -- replay and export

    def action_replay(self) -> None:
        record = self.current()
        if record is not None and self.session is not None:
            self.app.push_screen(ReplayScreen(self.session, record.id, self.replay_at(record)))

    def action_export(self) -> None:
        record = self.current()
        if record is not None and self.session is not None:
            self.run_worker(self._export(record.id), group="incident", exit_on_error=False)

    async def _export(self, incident_id: int) -> None:
        session = self.session
        assert session is not None
        path = export_path(session.log.store.path, incident_id)

        def write() -> None:
            path.write_text(incident_markdown(session.log, incident_id))

        try:
            await asyncio.to_thread(write)
        except Exception as exc:
            log.exception("exporting incident %s failed", incident_id)
            self.notify(_one_line(f"{path}: {exc}"), title="not exported", severity="error")
            return
        self.notify(str(path), title=f"incident {incident_id} postmortem written", timeout=10)


# --- the list -----------------------------------------------------------------------------------


class IncidentTable(LiveTable):
    """The incidents as the screen last read them (``records``), not the fleet snapshot."""

    COLUMNS = (
        ("id", "#", 4),
        ("state", "State", 12),
        ("sev", "Sev", 6),
        ("target", "Target", TARGET_WIDTH),
        ("age", "Age", 4),
        ("runs", "Runs", RUNS_WIDTH),
        ("title", "Title", 40),
    )

    def __init__(self, *, id: str) -> None:
        super().__init__(id=id)
        self.records: list[IncidentRecord] = []
        self.now: Callable[[], float] = time.time

    def rows_for(
        self, snapshot: FleetSnapshot | None, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        now = self.now()
        for r in self.records:
            names = (str(r.id), r.state, r.severity or "", r.target or "", r.title, r.runbook or "")
            if row_filter.keeps(*names):
                yield f"incident:{r.id}", incident_cells(r, now)

    @property
    def selected(self) -> IncidentRecord | None:
        key = self.selected_key
        return next((r for r in self.records if f"incident:{r.id}" == key), None)


class IncidentsScreen(IncidentKeys, DetailView):
    """``:incidents``: open first, newest first; enter opens the timeline."""

    VIEW_NAME = "incidents"
    BINDINGS = [  # noqa: RUF012
        *FleetView.BINDINGS,
        Binding("enter", "open_timeline", "Timeline"),
        *INCIDENT_BINDINGS,
    ]
    HELP_KEYS = (("enter", "The timeline of the incident under the cursor"), *INCIDENT_HELP)
    DEFAULT_CSS = """
    IncidentsScreen IncidentTable { height: 1fr; }
    """

    def body(self) -> ComposeResult:
        if self.session is None:
            caption = "Incidents need a config with a store: none is loaded"
        else:
            caption = "Incidents: open first, newest first; enter opens the timeline"
        yield Label(caption, classes="caption", id="caption")
        yield IncidentTable(id="incidents")
        yield Static(id="detail", classes="detail")

    def on_mount(self) -> None:
        self.set_interval(REFRESH_S, self._tick)
        self.query_one(Footer).compact = True  # every incident key in 80 columns

    def on_screen_resume(self) -> None:
        # Textual calls FleetView's handler too (each class's in the MRO): not super() here.
        self.reload()

    def _tick(self) -> None:
        if self.is_current:  # a hidden list (another view, the timeline on top) is not read
            self.reload()

    def reload(self) -> None:
        self.read_incidents()

    # One read at a time, the latest replacing one under way (@work makes the coroutine when
    # the worker starts, so a read replaced before it began leaves none unawaited).
    @work(group="incidents", exclusive=True, exit_on_error=False)
    async def read_incidents(self) -> None:
        """Every incident with its runs, off the UI loop (the log is a SQLite file)."""
        if self.session is None:
            return
        caption = self.query_one("#caption", Label)
        try:
            records = await asyncio.to_thread(self.session.log.incidents)
        except Exception as exc:  # the list stays as it was; the caption says why
            log.exception("reading the incidents failed")
            if not self.is_attached:
                return
            caption.update(Text(_one_line(f"incidents not read: {exc}")))
            return
        if not self.is_attached:  # the app closed (or the mode went) during the read
            return
        open_count = sum(r.is_open for r in records)
        caption.update(
            Text(f"Incidents ({open_count} open, {len(records)} in all): enter opens the timeline")
        )
        self.query_one(IncidentTable).records = ordered(records)
        self._reapply()

    def apply(self, snapshot: FleetSnapshot) -> None:
        # The app's tick: the ages move on; the rows are the last read of the log.
        self._snapshot = snapshot
        self._reapply()

    def _reapply(self) -> None:
        table = self.query_one(IncidentTable)
        table.apply(self._snapshot, self.row_filter)  # type: ignore[arg-type]
        self._show_detail()
        self.refresh_bindings()

    def _show_detail(self) -> None:
        record = self.current()
        text = "\n".join(summary_lines(record)[1:]) if record is not None else ""
        self.query_one("#detail", Static).update(Text(text))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()
        self.refresh_bindings()  # one incident may be resolved, the next not

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_timeline()

    def current(self) -> IncidentRecord | None:
        return self.query_one(IncidentTable).selected

    def action_open_timeline(self) -> None:
        record = self.current()
        if record is not None and self.session is not None:
            self.app.push_screen(TimelineScreen(self.session, record.id, self.start_runbook))

    def detail(self, key: str | None, snapshot: FleetSnapshot) -> str:
        return ""  # _show_detail above paints it from the records


# --- one incident -------------------------------------------------------------------------------


class TimelineList(OptionList):
    """The events, one option each; the highlighted one is the replay's moment."""

    BINDINGS = [  # noqa: RUF012
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "first", "Top", show=False),
        Binding("G", "last", "Bottom", show=False),
    ]
    DEFAULT_CSS = """
    TimelineList { height: 1fr; border: none; scrollbar-size-vertical: 1; }
    TimelineList:focus { border: none; }
    /* Reverse video: the highlighted event shows with NO_COLOR too. */
    TimelineList:focus > .option-list--option-highlighted { text-style: bold reverse; }
    """


class TimelineScreen(IncidentKeys, Screen[None]):
    """One incident: its summary, then every event (alerts with their evidence, state changes,
    notes, each run's steps with commands and results), read again every few seconds."""

    BINDINGS = [  # noqa: RUF012
        *INCIDENT_BINDINGS,
        Binding("escape", "back", "Back"),
    ]
    HELP_KEYS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("j k ↑ ↓", "Move between events"),
        ("g G", "First / last event"),
        *INCIDENT_HELP,
    )
    DEFAULT_CSS = """
    TimelineScreen #summary { height: auto; max-height: 5; padding: 0 1;
                              border-bottom: solid $panel; }
    TimelineScreen #problem { height: auto; padding: 0 1; }
    """

    def __init__(self, session: Session, incident_id: int, start_runbook: StartRunbook) -> None:
        super().__init__(session, start_runbook)
        self.incident_id = incident_id
        self.record: IncidentRecord | None = None
        self.entries: list[Entry] = []
        self.sub_title = f"incident {incident_id}"

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical():
            yield Static(Text(f"incident {self.incident_id}: reading the log…"), id="summary")
            yield Static(id="problem")
            yield TimelineList(id="timeline")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(REFRESH_S, self._tick)
        self.query_one(Footer).compact = True  # every incident key in 80 columns
        self.query_one(TimelineList).focus()

    def on_screen_resume(self) -> None:
        self.reload()

    def _tick(self) -> None:
        if self.is_current:
            self.reload()

    def reload(self) -> None:
        self.read_incident()

    @work(group="timeline", exclusive=True, exit_on_error=False)
    async def read_incident(self) -> None:
        session = self.session
        assert session is not None

        def read() -> tuple[IncidentRecord, list[dict[str, Any]]]:
            return (
                session.log.incident(self.incident_id),
                session.log.events(incident_id=self.incident_id),
            )

        problem = self.query_one("#problem", Static)
        try:
            record, events = await asyncio.to_thread(read)
        except KeyError:
            problem.update(Text(f"no incident {self.incident_id} in the log"))
            return
        except Exception as exc:  # shown; the last read stays on screen
            log.exception("reading incident %s failed", self.incident_id)
            problem.update(Text(_one_line(f"not read: {exc}")))
            return
        if not self.is_attached:  # closed during the read
            return
        problem.update("")
        self.show(record, events)

    def show(self, record: IncidentRecord, events: list[dict[str, Any]]) -> None:
        self.record = record
        self._events = (record.id, events)
        self.query_one("#summary", Static).update(Text("\n".join(summary_lines(record))))
        entries = timeline(events)
        if entries != self.entries:
            self._rebuild(entries)
        self.refresh_bindings()

    def _rebuild(self, entries: list[Entry]) -> None:
        """All options again, the highlight kept on its event (a new one: at the end if the
        last one was highlighted, so the newest event stays in sight)."""
        listing = self.query_one(TimelineList)
        was = self._highlighted()
        at_end = was is None or (self.entries and was.event_id == self.entries[-1].event_id)
        self.entries = entries
        listing.clear_options()
        listing.add_options(Option(_entry_text(e), id=f"event:{e.event_id}") for e in entries)
        if not entries:
            return
        ids = [e.event_id for e in entries]
        if at_end:
            listing.highlighted = len(entries) - 1
        elif was is not None and was.event_id in ids:
            listing.highlighted = ids.index(was.event_id)

    def _highlighted(self) -> Entry | None:
        index = self.query_one(TimelineList).highlighted
        if index is None or not 0 <= index < len(self.entries):
            return None
        return self.entries[index]

    def current(self) -> IncidentRecord | None:
        return self.record

    def replay_at(self, record: IncidentRecord) -> float:
        entry = self._highlighted()
        return entry.ts if entry is not None else record.opened_at

    def action_back(self) -> None:
        self.app.pop_screen()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return True
        return super().check_action(action, parameters)


def _entry_text(entry: Entry) -> Text:
    text = Text()
    head, *rest = entry.lines
    # An alert or a failed step in reverse video on its headline: visible with NO_COLOR too.
    text.append(head, style="bold reverse" if entry.alarm else "bold")
    for line in rest:
        text.append("\n" + line)
    return text


# --- the replay ---------------------------------------------------------------------------------


class ReplayNodeTable(NodeTable):
    """The nodes and GPUs as they were: enter would open the live GPU view, so it is off."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return action != "open_gpus"


class ReplayScreen(Screen[None]):
    """The overview's figures at a past moment of an incident, from the stored samples.

    ``[`` and ``]`` move the time cursor by ten seconds, ``n`` and ``N`` to the incident's
    next and previous event; each move is computed again in a worker (the latest wins).
    """

    BINDINGS = [  # noqa: RUF012
        Binding("left_square_bracket", "move(-1)", "-10s"),
        Binding("right_square_bracket", "move(1)", "+10s"),
        Binding("n", "jump(1)", "Next event"),
        Binding("N", "jump(-1)", "Prev event"),
        Binding("escape", "back", "Back"),
    ]
    HELP_KEYS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("[ ]", f"Time cursor {REPLAY_STEP_S:.0f} s back / forward"),
        ("n N", "The incident's next / previous event"),
        ("tab", "Next table"),
    )
    DEFAULT_CSS = """
    ReplayScreen #banner { height: auto; padding: 0 1; text-style: bold reverse; }
    ReplayScreen #about { height: auto; max-height: 2; padding: 0 1; }
    ReplayScreen LiveTable { height: 1fr; scrollbar-size-vertical: 1; }
    ReplayScreen #endpoints { height: auto; max-height: 40%; }
    """

    def __init__(self, session: Session, incident_id: int, at: float) -> None:
        super().__init__()
        self.session = session
        self.incident_id = incident_id
        self.at = at
        self.times: list[float] = []
        self.messages: dict[float, str] = {}  # event time -> what happened then
        self.replay: FleetReplay | None = None
        self.sub_title = f"REPLAY · incident {incident_id}"

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical():
            yield Static(Text(self._banner(computing=True)), id="banner")
            yield Static(id="about")
            yield EndpointTable(id="endpoints")
            yield ReplayNodeTable(id="nodes")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(ReplayNodeTable).focus()
        self.compute()

    def _banner(self, *, computing: bool = False) -> str:
        parts = [f"REPLAY {_when(self.at)}", f"incident {self.incident_id}"]
        if self.at in self.messages:
            parts.append(_one_line(self.messages[self.at]))
        elif self.times:
            before = previous_time(self.times, self.at)
            if before is not None:
                parts.append(f"{self.at - before:+.0f}s after an event")
        if computing:
            parts.append("computing…")
        return " · ".join(parts)

    @work(group="replay", exclusive=True, exit_on_error=False)
    async def compute(self) -> None:
        """The snapshot at the cursor from the stored samples, off the UI loop."""
        session, at = self.session, self.at
        store, config = session.log.store, session.config
        first = not self.times

        def read() -> tuple[FleetReplay, list[float], dict[float, str]]:
            replay = fleet_at(store, config, at)
            if not first:
                return replay, self.times, self.messages
            times = event_times(store, self.incident_id)
            events = session.log.events(incident_id=self.incident_id)
            messages: dict[float, str] = {}
            for e in events:  # of events at one instant, the first (the alert, the opening)
                messages.setdefault(e["ts"], e["message"])
            return replay, times, messages

        banner = self.query_one("#banner", Static)
        banner.update(Text(self._banner(computing=True)))
        try:
            replay, times, messages = await asyncio.to_thread(read)
        except Exception as exc:  # said on the banner; the tables keep the last moment shown
            log.exception("replay at %s failed", at)
            banner.update(Text(f"REPLAY {_when(at)} · not computed: {_one_line(str(exc))}"))
            return
        if not self.is_attached:  # esc during the computation
            return
        self.replay, self.times, self.messages = replay, times, messages
        self.show(replay)

    def show(self, replay: FleetReplay) -> None:
        self.query_one("#banner", Static).update(Text(self._banner()))
        samples = sum(s.samples for s in replay.sources)
        if replay.span is None:
            about = "the store holds no samples: nothing to replay"
        elif not samples:
            about = (
                f"no samples stored in the {replay.window_s:.0f}s before this moment "
                f"(stored: {_when(replay.span[0])} to {_when(replay.span[1])})"
            )
        else:
            had = sum(s.had_data for s in replay.sources)
            about = (
                f"figures over the {replay.window_s:.0f}s before it, from {samples} stored "
                f"sample(s) of {had}/{len(replay.sources)} source(s) · esc back to the timeline"
            )
        self.query_one("#about", Static).update(Text(about))
        with self.app.batch_update():
            for table in self.query(LiveTable):
                table.apply(replay.snapshot, RowFilter())

    def action_move(self, direction: int) -> None:
        self.at += direction * REPLAY_STEP_S
        self.compute()

    def action_jump(self, direction: int) -> None:
        found = (
            next_time(self.times, self.at) if direction > 0 else previous_time(self.times, self.at)
        )
        if found is None:
            self.notify("no later event" if direction > 0 else "no earlier event", timeout=2)
            return
        self.at = found
        self.compute()

    def action_back(self) -> None:
        self.app.pop_screen()
