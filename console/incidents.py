"""The incident log: incidents, the runbook runs that belong to them, and their events.

Every write is committed before it returns (the store's transactions), so a console killed
with SIGKILL leaves a trail that ends where it died. A run whose process is gone without a
``run.finished`` event reads as ``interrupted at STEP``, or ``interrupted during rollback at
STEP`` once its rollback had begun (such a run can only be rolled back). Exports (Markdown
and JSON) are built from the log alone, so they show what was recorded, not what a process
remembers.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from console.facts import Figure, figure_text
from console.redact import REDACTED, names_a_variable, redact, secret_key_name
from console.store import Store, Transaction

# How a run ended; None (NULL) while it runs or after its process died.
OUTCOMES = (
    "verified",
    "failed",
    "needs attention",
    "declined",
    "aborted",
    "dry-run",
    "read-only",
    "settled",  # needs attention, or interrupted, then put right by hand (`runbook settle`)
)
SETTLEABLE = ("needs attention",)  # besides an interrupted run

# An incident's states, in order; each change is an event with who and when. Any state may
# move forward (an engineer may resolve an incident nobody acknowledged), never back: an
# incident that comes back after it was resolved is a new incident.
STATES = ("open", "acknowledged", "mitigated", "resolved")
STATE_VERBS = {"acknowledged": "ack", "mitigated": "mitigate", "resolved": "resolve"}


def operator() -> str:
    """Who is acting, as user@host (the bastion's login, not a name anyone typed)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _process_started_at(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class RunRecord:
    id: int
    incident_id: int
    runbook: str
    title: str
    params: dict[str, Any]
    operator: str
    mode: str  # live, dry-run or read-only
    started_at: float
    finished_at: float | None
    outcome: str | None
    host: str
    pid: int
    # Derived from the events: the step that started last and has not finished.
    open_step: str | None = None
    interrupted: bool = False  # a live run with no outcome whose process is gone
    # A dry-run or read-only run whose process is gone: it changed nothing, so there is
    # nothing to resume or undo (a resume would carry it on for real).
    cut_off: bool = False
    # The step whose undo began last, once the run's rollback has begun.
    rollback_step: str | None = None

    @property
    def state(self) -> str:
        if self.outcome is not None:
            return self.outcome
        if self.cut_off:
            at = f" at {self.open_step}" if self.open_step else ""
            return f"cut off{at} ({self.mode}: nothing was changed)"
        if self.interrupted:
            if self.rollback_step is not None:
                return f"interrupted during rollback at {self.rollback_step}"
            return f"interrupted at {self.open_step}" if self.open_step else "interrupted"
        if self.rollback_step is not None:
            return f"rolling back {self.rollback_step}"
        return f"running {self.open_step}" if self.open_step else "running"


class TakenOver(Exception):
    """Another process took the run over between reading it and claiming it."""


class StateRefused(ValueError):
    """An incident cannot move to that state (it is there already, or past it)."""


@dataclass(frozen=True)
class IncidentRecord:
    id: int
    opened_at: float
    title: str
    state: str
    severity: str | None
    target: str | None
    opened_by: str
    updated_at: float
    # The alert (rule and subject) that opened it: the same alert firing again joins it.
    alert_key: str | None = None
    # {"endpoints": [...], "nodes": [...]}: what the target touches, as the config said then.
    affected: dict[str, list[str]] = field(default_factory=dict)
    runbook: str | None = None  # the suggested runbook, first of the ranking at open
    runs: tuple[RunRecord, ...] = field(default_factory=tuple)

    @property
    def is_open(self) -> bool:
        return self.state != "resolved"


@dataclass(frozen=True)
class AlertOpening:
    """What an alert's firing did to the log: opened an incident, joined an open one, or
    nothing (another console logged the same firing first)."""

    incident_id: int
    opened: bool
    logged: bool


class IncidentLog:
    """Incidents and runbook runs over the shared store; safe for two consoles on one file."""

    def __init__(self, store: Store, clock: Any = time.time, secrets: Sequence[str] = ()) -> None:
        self.store = store
        self.clock = clock
        # Every text on its way in is redacted here, whoever wrote it (a parameter, a note).
        self.secrets = tuple(secrets)

    def _clean(self, value: Any, names_variables: bool = False) -> Any:
        """``value`` as it may be kept: text redacted, and whatever a mapping holds under a
        secret-named key (vLLM's ``api-key`` in the arguments an engine started with) masked
        whatever its type, at any depth: a number or a list is as secret as a string. Only
        None (nothing to hide) and a reference to where the secret is (``${NAME}``) stay.
        The values of a ``header_env`` mapping name environment variables and are kept."""
        if isinstance(value, str):
            return redact(value, known=self.secrets)
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if not isinstance(value, dict):
            return value
        cleaned: dict[Any, Any] = {}
        for key, item in value.items():
            named = isinstance(key, str) and secret_key_name(key) and not names_variables
            if not named or item is None:
                item = self._clean(item, key == "header_env")
            elif not (isinstance(item, str) and names_a_variable(item)):
                item = REDACTED
            # A key can be the secret itself (a mapping keyed by API key).
            cleaned[self._clean(key) if isinstance(key, str) else key] = item
        return cleaned

    # -- writing

    def open_incident(
        self, title: str, target: str | None, opened_by: str, severity: str | None = None
    ) -> int:
        now = self.clock()
        return self.store.insert_row(
            "incidents",
            {
                "opened_at": now,
                "title": self._clean(title),
                "state": "open",
                "severity": severity,
                "target": target,
                "opened_by": opened_by,
                "updated_at": now,
            },
            {
                "kind": "incident.opened",
                "message": self._clean(f"incident opened: {title}"),
                "operator": opened_by,
                "incident_id": "new",
                "ts": now,
                "source": "console",
            },
        )

    def alert_fired(
        self,
        key: str,
        title: str,
        message: str,
        *,
        target: str,
        severity: str,
        affected: dict[str, list[str]],
        runbook: str | None,
        data: dict[str, Any],
    ) -> AlertOpening:
        """An alert fired: open an incident for it, or join the open one for the same rule
        and target, in one write transaction.

        Two consoles on one database (a TUI and ``llmops watch``) evaluate the same rules:
        the firing each sees is logged once, since the later one finds the incident's last
        alert event for the key to be a firing already.
        """
        now = self.clock()
        data, message, title = self._clean(data), self._clean(message), self._clean(title)
        with self.store.transaction() as tx:
            rows = tx.query(
                "SELECT id FROM incidents WHERE alert_key = ? AND state != 'resolved'", [key]
            )
            alert_event = {
                "kind": "alert.firing",
                "message": message,
                "source": f"alert:{key}",
                "data": data,
                "ts": now,
            }
            if rows:
                incident_id = int(rows[0]["id"])
                if self._last_alert_kind(tx, incident_id, key) == "alert.firing":
                    return AlertOpening(incident_id, opened=False, logged=False)
                tx.event(alert_event | {"incident_id": incident_id})
                return AlertOpening(incident_id, opened=False, logged=True)
            incident_id = tx.insert(
                "incidents",
                {
                    "opened_at": now,
                    "title": title,
                    "state": "open",
                    "severity": severity,
                    "target": target,
                    "opened_by": f"alert {key.split('|')[0]}",
                    "updated_at": now,
                    "alert_key": key,
                    "affected": json.dumps(affected, sort_keys=True),
                    "runbook": runbook,
                },
            )
            tx.event(alert_event | {"incident_id": incident_id})
            tx.event(
                {
                    "kind": "incident.opened",
                    "message": f"incident {incident_id} opened: {title}",
                    "source": "console",
                    "data": data,
                    "ts": now,
                    "incident_id": incident_id,
                }
            )
            return AlertOpening(incident_id, opened=True, logged=True)

    def alert_resolved(self, key: str, message: str, data: dict[str, Any]) -> int | None:
        """An alert resolved: logged in the open incident it belongs to (once across
        consoles); the incident itself stays until an engineer resolves it. Its id, or None
        when no open incident has the alert or the resolve was logged already."""
        now = self.clock()
        with self.store.transaction() as tx:
            rows = tx.query(
                "SELECT id FROM incidents WHERE alert_key = ? AND state != 'resolved'", [key]
            )
            if not rows:
                return None
            incident_id = int(rows[0]["id"])
            if self._last_alert_kind(tx, incident_id, key) != "alert.firing":
                return None
            tx.event(
                {
                    "kind": "alert.resolved",
                    "message": self._clean(message),
                    "source": f"alert:{key}",
                    "data": self._clean(data),
                    "ts": now,
                    "incident_id": incident_id,
                }
            )
            return incident_id

    @staticmethod
    def _last_alert_kind(tx: Transaction, incident_id: int, key: str) -> str | None:
        rows = tx.query(
            "SELECT kind FROM events WHERE incident_id = ? AND source = ? "
            "AND kind IN ('alert.firing', 'alert.resolved') ORDER BY id DESC LIMIT 1",
            [incident_id, f"alert:{key}"],
        )
        return rows[0]["kind"] if rows else None

    def set_state(
        self, incident_id: int, state: str, operator_name: str, note: str | None = None
    ) -> IncidentRecord:
        """Move an incident forward to ``state`` (acknowledged, mitigated, resolved), with who
        did it and why. Raises KeyError for no such incident, StateRefused when it is in that
        state already or past it (another engineer may have moved it a moment ago)."""
        if state not in STATE_VERBS:
            raise ValueError(f"unknown incident state {state!r}")
        now = self.clock()
        with self.store.transaction() as tx:
            rows = tx.query("SELECT state FROM incidents WHERE id = ?", [incident_id])
            if not rows:
                raise KeyError(incident_id)
            was = rows[0]["state"]
            if STATES.index(was) >= STATES.index(state):
                raise StateRefused(
                    f"incident {incident_id} is {was}: it cannot be {state} again"
                    if was == state
                    else f"incident {incident_id} is {was} already, past {state}"
                )
            tx.update("incidents", incident_id, {"state": state, "updated_at": now})
            said = f": {note}" if note else ""
            tx.event(
                {
                    "kind": f"incident.{state}",
                    "message": self._clean(f"incident {incident_id} {state} by {operator_name}")
                    + self._clean(said),
                    "source": "console",
                    "data": self._clean({"was": was, "note": note}) if note else {"was": was},
                    "operator": operator_name,
                    "ts": now,
                    "incident_id": incident_id,
                }
            )
        return self.incident(incident_id)

    def log_incident(
        self,
        incident_id: int,
        kind: str,
        message: str,
        operator_name: str | None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """An event of the incident itself (not of one of its runs), committed on return."""
        self.store.append_event(
            kind,
            self._clean(message),
            source="console",
            data=self._clean(data),
            operator=operator_name,
            ts=self.clock(),
            incident_id=incident_id,
        )

    def add_note(
        self, incident_id: int, text: str, operator_name: str, *, follow_up: bool = False
    ) -> None:
        """A note at any time; a follow-up is listed as such in the postmortem."""
        if not text.strip():
            raise ValueError("an empty note says nothing")
        self.incident(incident_id)  # KeyError for no such incident
        kind = "incident.follow_up" if follow_up else "incident.note"
        self.store.append_event(
            kind,
            self._clean(text),
            source="console",
            operator=operator_name,
            ts=self.clock(),
            incident_id=incident_id,
        )
        self.store.update_row("incidents", incident_id, {"updated_at": self.clock()}, None)

    def start_run(
        self,
        incident_id: int,
        runbook: str,
        title: str,
        params: dict[str, Any],
        operator_name: str,
        mode: str,
    ) -> int:
        """Record a run and its ``run.started`` event together."""
        now = self.clock()
        params = self._clean(params)
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        return self.store.insert_row(
            "runbook_runs",
            {
                "incident_id": incident_id,
                "runbook": runbook,
                "title": title,
                "params": json.dumps(params, sort_keys=True),
                "operator": operator_name,
                "mode": mode,
                "started_at": now,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_started_at": _process_started_at(os.getpid()),
            },
            {
                "kind": "run.started",
                "message": f"runbook {runbook} started by {operator_name} ({mode})"
                + (f": {shown}" if shown else ""),
                "operator": operator_name,
                "incident_id": incident_id,
                "run_id": "new",
                "data": {"runbook": runbook, "params": params, "mode": mode},
                "ts": now,
                "source": "runbook",
            },
        )

    def log(
        self,
        run: RunRecord | int,
        kind: str,
        message: str,
        *,
        step: str | None = None,
        data: dict[str, Any] | None = None,
        operator_name: str | None = None,
    ) -> None:
        """One event of a run, committed before this returns."""
        record = run if isinstance(run, RunRecord) else self.run(run)
        self.store.append_event(
            kind,
            self._clean(message),
            source="runbook",
            data=self._clean(data),
            operator=operator_name,
            ts=self.clock(),
            incident_id=record.incident_id,
            run_id=record.id,
            step=step,
        )

    def finish_run(self, run: RunRecord, outcome: str, message: str, data: dict[str, Any]) -> None:
        now = self.clock()
        self.store.update_row(
            "runbook_runs",
            run.id,
            {"finished_at": now, "outcome": outcome},
            {
                "kind": "run.finished",
                "message": self._clean(message),
                "source": "runbook",
                "data": self._clean({"outcome": outcome, **data}),
                "ts": now,
                "incident_id": run.incident_id,
                "run_id": run.id,
                "operator": run.operator,
            },
        )

    def take_over(self, run: RunRecord, operator_name: str, how: str) -> RunRecord:
        """This process now runs ``run`` (resumed or rolled back after an interruption).

        Claimed in one transaction, against the process the run was judged interrupted
        under: two consoles taking it over at once would both undo (and restart) the same
        change; the second is refused with :class:`TakenOver`.
        """
        claimed = self.store.claim_row(
            "runbook_runs",
            run.id,
            {"pid": run.pid, "host": run.host, "outcome": None},
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_started_at": _process_started_at(os.getpid()),
            },
            {
                "kind": f"run.{how}",
                "message": f"run {run.id} {how} by {operator_name} after it was {run.state}",
                "source": "runbook",
                "ts": self.clock(),
                "incident_id": run.incident_id,
                "run_id": run.id,
                "operator": operator_name,
                "step": run.open_step,
            },
        )
        if not claimed:
            now = self.run(run.id)
            raise TakenOver(f"run {run.id} was taken over by another console first: {now.state}")
        return self.run(run.id)

    def release(self, run: RunRecord, message: str) -> None:
        """This process stops running ``run`` without an outcome (a rollback declined part
        way): it reads interrupted again, for another take-over to finish."""
        self.store.update_row(
            "runbook_runs",
            run.id,
            {"pid": 0, "pid_started_at": None},
            {
                "kind": "run.released",
                "message": self._clean(message),
                "source": "runbook",
                "ts": self.clock(),
                "incident_id": run.incident_id,
                "run_id": run.id,
                "operator": run.operator,
            },
        )

    def settle_run(self, run_id: int, operator_name: str, note: str) -> RunRecord:
        """An engineer put a run's target right by hand: a run that needs attention (a
        rollback failed) or was interrupted ends ``settled``, with who and what they did.
        Raises KeyError for no such run, ValueError for a run in another state."""
        run = self.run(run_id)
        if run.outcome not in SETTLEABLE and not run.interrupted:
            raise ValueError(
                f"run {run_id} is {run.state}: only a run that needs attention or was "
                "interrupted can be settled"
            )
        now = self.clock()
        self.store.update_row(
            "runbook_runs",
            run.id,
            {"finished_at": now, "outcome": "settled"},
            {
                "kind": "run.settled",
                "message": self._clean(
                    f"settled by {operator_name} after it was {run.state}: {note}"
                ),
                "source": "runbook",
                "data": self._clean({"was": run.state, "note": note}),
                "ts": now,
                "incident_id": run.incident_id,
                "run_id": run.id,
                "operator": operator_name,
                "step": run.open_step,
            },
        )
        return self.run(run.id)

    # -- reading

    def run(self, run_id: int) -> RunRecord:
        rows = self.store.query("SELECT * FROM runbook_runs WHERE id = ?", [run_id])
        if not rows:
            raise KeyError(run_id)
        return self._record(rows[0])

    def runs(self, incident_id: int | None = None) -> list[RunRecord]:
        if incident_id is None:
            rows = self.store.query("SELECT * FROM runbook_runs ORDER BY id")
        else:
            rows = self.store.query(
                "SELECT * FROM runbook_runs WHERE incident_id = ? ORDER BY id", [incident_id]
            )
        return [self._record(r) for r in rows]

    def _record(self, row: dict[str, Any]) -> RunRecord:
        open_step = self._open_step(row["id"])
        gone = row["outcome"] is None and not self._alive(row)
        interrupted = gone and row["mode"] == "live"
        return RunRecord(
            id=row["id"],
            incident_id=row["incident_id"],
            runbook=row["runbook"],
            title=row["title"],
            params=json.loads(row["params"]),
            operator=row["operator"],
            mode=row["mode"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            outcome=row["outcome"],
            host=row["host"],
            pid=row["pid"],
            open_step=open_step,
            interrupted=interrupted,
            cut_off=gone and not interrupted,
            rollback_step=self._rollback_step(row["id"]),
        )

    def _open_step(self, run_id: int) -> str | None:
        """The step of the newest step.started event that no step.finished follows."""
        rows = self.store.query(
            "SELECT kind, step FROM events WHERE run_id = ? AND kind IN "
            "('step.started', 'step.finished', 'step.planned') ORDER BY id DESC LIMIT 1",
            [run_id],
        )
        return rows[0]["step"] if rows and rows[0]["kind"] == "step.started" else None

    def _rollback_step(self, run_id: int) -> str | None:
        rows = self.store.query(
            "SELECT step FROM events WHERE run_id = ? AND kind = 'rollback.started' "
            "ORDER BY id DESC LIMIT 1",
            [run_id],
        )
        return rows[0]["step"] if rows else None

    @staticmethod
    def _alive(row: dict[str, Any]) -> bool:
        """Whether the process recorded for a run still runs (another host: assumed so)."""
        if not row["pid"]:  # released: no process runs it
            return False
        if row["host"] != socket.gethostname():
            return True
        started = _process_started_at(row["pid"])
        if started is None:
            return False
        # A reused pid belongs to a process started later than the one recorded.
        recorded = row["pid_started_at"]
        return recorded is None or abs(started - recorded) < 1.0

    def events(self, *, incident_id: int | None = None, run_id: int | None = None) -> list[dict]:
        if run_id is not None:
            rows = self.store.query("SELECT * FROM events WHERE run_id = ? ORDER BY id", [run_id])
        else:
            rows = self.store.query(
                "SELECT * FROM events WHERE incident_id = ? ORDER BY id", [incident_id]
            )
        for row in rows:
            row["data"] = json.loads(row["data"]) if row["data"] else {}
        return rows

    def incident(self, incident_id: int) -> IncidentRecord:
        rows = self.store.query("SELECT * FROM incidents WHERE id = ?", [incident_id])
        if not rows:
            raise KeyError(incident_id)
        return self._incident(rows[0])

    def incidents(self, *, open_only: bool = False) -> list[IncidentRecord]:
        where = " WHERE state != 'resolved'" if open_only else ""
        rows = self.store.query(f"SELECT * FROM incidents{where} ORDER BY id DESC")
        return [self._incident(r) for r in rows]

    def open_count(self) -> int:
        rows = self.store.query("SELECT count(*) AS n FROM incidents WHERE state != 'resolved'")
        return int(rows[0]["n"])

    def _incident(self, row: dict[str, Any]) -> IncidentRecord:
        row = dict(row)
        row["affected"] = json.loads(row["affected"]) if row.get("affected") else {}
        return IncidentRecord(**row, runs=tuple(self.runs(row["id"])))


# --- exports -------------------------------------------------------------------------------------


def incident_json(log: IncidentLog, incident_id: int) -> dict[str, Any]:
    """The incident, each run with its events in order, and what the postmortem draws from
    them (impact, evidence, decisions, follow-ups): what tickets and archives keep."""
    incident = log.incident(incident_id)
    events = log.events(incident_id=incident_id)
    data = asdict(incident)
    data["runs"] = []
    for run in incident.runs:
        entry = asdict(run)
        entry["state"] = run.state
        entry["events"] = [e for e in events if e["run_id"] == run.id]
        data["runs"].append(entry)
    data["events"] = [e for e in events if e["run_id"] is None]
    data["impact"] = _impact(events)
    data["suggestions"] = _suggestions(events)
    data["decisions"] = _decisions(events)
    data["follow_ups"] = [
        {"ts": e["ts"], "operator": e["operator"], "text": e["message"]}
        for e in events
        if e["kind"] == "incident.follow_up"
    ]
    return data


def _impact(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per alert of the incident: its figure when it fired, at its worst, and when it
    resolved (None while it still fires), each with its time."""
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["kind"] not in ("alert.firing", "alert.resolved"):
            continue
        data = event["data"]
        key = event["source"] or ""
        entry = found.setdefault(
            key,
            {
                "alert": f"{data.get('rule')} on {data.get('subject')}",
                "figure": data.get("figure"),
                "at_open": None,
                "worst": None,
                "at_resolve": None,
            },
        )
        point = {"value": data.get("value"), "ts": event["ts"]}
        if event["kind"] == "alert.firing":
            if entry["at_open"] is None:
                entry["at_open"] = point
            entry["at_resolve"] = None  # fired again: not resolved (yet)
        else:
            entry["at_resolve"] = point
            worst = data.get("worst")
            if worst is not None and _worse(entry, worst):
                entry["worst"] = {"value": worst, "ts": data.get("worst_at")}
    return list(found.values())


def _worse(entry: dict[str, Any], value: float) -> bool:
    known = entry["worst"]
    return known is None or known["value"] is None or abs(value) > abs(known["value"])


def _suggestions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    opened = next((e for e in events if e["kind"] == "incident.opened"), None)
    return list(opened["data"].get("suggestions", [])) if opened else []


def _decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Who decided what: each confirmation asked of an engineer, and each state change."""
    kinds = ("step.decision", *(f"incident.{s}" for s in STATE_VERBS))
    return [
        {
            "ts": e["ts"],
            "operator": e["operator"],
            "step": e["step"],
            "kind": e["kind"],
            "decision": e["message"],
        }
        for e in events
        if e["kind"] in kinds
    ]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts is not None else "?"


def _span(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {secs}s" if hours else f"{minutes}m {secs}s"


def _point(figure: str | None, point: dict[str, Any] | None) -> str:
    if point is None:
        return "still firing" if figure is not None else "-"
    value = point["value"]
    if value is None or figure is None:
        return f"at {_clock(point['ts'])}"
    return f"{figure_text(figure, Figure(value))} at {_clock(point['ts'])}"


def incident_markdown(log: IncidentLog, incident_id: int) -> str:
    """A postmortem draft: summary, impact, evidence, timeline, actions with the exact
    commands, diffs and results, decisions and who made them, and follow-ups."""
    data = incident_json(log, incident_id)
    incident = log.incident(incident_id)
    events = log.events(incident_id=incident_id)
    changes = {e["kind"]: e for e in events if e["kind"].startswith("incident.")}
    lines = [f"# Incident {incident.id}: {incident.title}", "", "## Summary", ""]
    lines.append(f"- State: {incident.state}")
    lines.append(f"- Severity: {incident.severity or 'n/a'}")
    touched = "; ".join(f"{k}: {', '.join(v)}" for k, v in incident.affected.items() if v)
    lines.append(f"- Target: {incident.target or 'n/a'}" + (f" ({touched})" if touched else ""))
    lines.append(f"- Opened: {_when(incident.opened_at)} by {incident.opened_by}")
    for state in STATES[1:]:
        change = changes.get(f"incident.{state}")
        if change is not None:
            lines.append(f"- {state.capitalize()}: {_when(change['ts'])} by {change['operator']}")
    resolved = changes.get("incident.resolved")
    if resolved is not None:
        lines.append(f"- Open for: {_span(resolved['ts'] - incident.opened_at)}")
    if incident.runbook:
        lines.append(f"- Suggested runbook: {incident.runbook}")
    runs = ", ".join(f"run {r.id} {r.runbook}: {r.state}" for r in incident.runs) or "none"
    lines.append(f"- Runbook runs: {runs}")
    if data["impact"]:
        lines += [
            "",
            "## Impact",
            "",
            "| Alert | At open | Worst | At resolve |",
            "|---|---|---|---|",
        ]
        for item in data["impact"]:
            figure = item["figure"]
            what = f"{item['alert']} ({figure})" if figure else item["alert"]
            worst = _point(figure, item["worst"]) if item["worst"] else "-"
            lines.append(
                f"| {what} | {_point(figure, item['at_open'])} | {worst} "
                f"| {_point(figure, item['at_resolve'])} |"
            )
    if data["suggestions"]:
        lines += ["", "## Evidence at open", ""]
        for suggestion in data["suggestions"]:
            lines.append(f"- {suggestion['runbook']}: {suggestion['why']}")
            for line in suggestion["evidence"]:
                mark = {True: "holds", False: "does not hold"}.get(line["holds"], "not known")
                lines.append(f"  - {mark}: {line['shown']}")
    lines += ["", "## Timeline", ""]
    for event in events:
        who = f" ({event['operator']})" if event["operator"] else ""
        step = f" [{event['step']}]" if event["step"] else ""
        lines.append(f"- {_when(event['ts'])}{step} {event['message']}{who}")
    if incident.runs:
        lines += ["", "## Actions"]
    for run in incident.runs:
        lines += ["", f"### Run {run.id}: {run.runbook} ({run.state})", ""]
        lines.append(f"Started {_when(run.started_at)} by {run.operator}, mode {run.mode}.")
        if run.params:
            shown = ", ".join(f"`{k}={v}`" for k, v in run.params.items())
            lines.append(f"Parameters: {shown}.")
        for event in (e for e in events if e["run_id"] == run.id):
            details = event["data"]
            if event["kind"] not in (
                "step.finished",
                "step.planned",
                "rollback.finished",
                "rollback.planned",
            ):
                continue
            lines += ["", f"#### {event['step']}: {event['message']}", ""]
            if details.get("detail"):
                lines += ["```", details["detail"].rstrip("\n"), "```"]
            if details.get("exit_status") is not None:
                lines.append(f"Exit status {details['exit_status']}.")
            if details.get("output"):
                lines += ["", "Output:", "```", details["output"].rstrip("\n"), "```"]
    lines += ["", "## Decisions", ""]
    for decision in data["decisions"]:
        step = f" [{decision['step']}]" if decision["step"] else ""
        lines.append(f"- {_when(decision['ts'])}{step} {decision['decision']}")
    if not data["decisions"]:
        lines.append("None recorded.")
    lines += ["", "## Follow-ups", ""]
    for follow_up in data["follow_ups"]:
        lines.append(
            f"- [ ] {follow_up['text']} ({follow_up['operator']}, {_when(follow_up['ts'])})"
        )
    if not data["follow_ups"]:
        lines.append("None recorded (`llmops incidents note ID TEXT --follow-up`).")
    return "\n".join(lines) + "\n"
