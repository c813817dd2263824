"""Everything a runbook run needs, wired once for the CLI and the TUI alike.

A session holds the runbooks loaded from the shipped folder and the config's folders, the
action registry (on the hub's SSH pool and HTTP client), the figure reader and the incident
log. :func:`prepare` turns a runbook id and the engineer's ``NAME=VALUE`` strings into a
:class:`console.runner.Run` that belongs to an incident: the one it joins, or a new one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from console.actions import Registry, read_engine_args, read_routes, read_weights
from console.config import Config
from console.facts import FigureReader
from console.hub import Hub
from console.incidents import IncidentLog, RunRecord, TakenOver, operator
from console.redact import REDACTED
from console.runbook import (
    ParamError,
    Runbook,
    check_value,
    format_value,
    load_folders,
    parse_param,
    shipped_folder,
)
from console.runner import Controller, Run, RunUpdate, recorded_progress
from console.store import Store
from console.triage import IncidentDesk

TARGET_TYPES = ("node", "upstream", "endpoint")
log = logging.getLogger(__name__)


class FleetWorld:
    """The read-only facts that need the fleet itself: router weights, argument files."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def weights(self, router: str) -> dict[str, float]:
        return await read_weights(self.registry, router)

    async def routes(self, router: str) -> dict[str, str]:
        return await read_routes(self.registry, router)

    async def engine_args(self, node: str) -> dict[str, object]:
        return await read_engine_args(self.registry, node)


def load_runbooks(config: Config) -> tuple[dict[str, Runbook], list[str]]:
    """The shipped runbooks, then the config's folders (a later one replaces an id)."""
    return load_folders([shipped_folder(), *config.runbooks])


def secrets_of(config: Config) -> tuple[str, ...]:
    """Values the log must never hold: every API key the config names."""
    names = [e.api_key_env for e in config.endpoints if e.api_key_env]
    return tuple(v for n in names if (v := os.environ.get(n)))


@dataclass
class Session:
    config: Config
    hub: Hub
    registry: Registry
    figures: FigureReader
    log: IncidentLog
    runbooks: dict[str, Runbook]
    operator: str
    read_only: bool
    problems: list[str] = field(default_factory=list)  # runbooks that did not load

    def incident_desk(self) -> IncidentDesk:
        """Where this session's hub opens incidents from alerts, ranking its runbooks."""
        return IncidentDesk(self.log, self.config, self.runbooks, self.figures)

    async def defaults(self, runbook: Runbook) -> dict[str, tuple[object | None, str]]:
        """Each parameter's default now: a value (None: none known) and where it came from."""
        return await self._defaults_given(runbook, {})

    async def values(
        self, runbook: Runbook, given: Mapping[str, str]
    ) -> tuple[dict[str, object], list[str]]:
        """Typed parameter values from NAME=VALUE strings, defaults and facts; raise ParamError.

        The second item says where each value taken from a fact came from, for the log.
        """
        unknown = sorted(set(given) - {p.name for p in runbook.params})
        if unknown:
            known = ", ".join(p.name for p in runbook.params) or "none"
            raise ParamError(
                f"--param {unknown[0]}: {runbook.id} has no such parameter (it has: {known})"
            )
        values = {p.name: parse_param(p, given[p.name]) for p in runbook.params if p.name in given}
        notes: list[str] = []
        if len(values) < len(runbook.params):
            # Facts "of" a parameter read the value given for it, not its default.
            defaults = await self._defaults_given(runbook, values)
            for param in runbook.params:
                if param.name in values:
                    continue
                value, how = defaults[param.name]
                if value is None:
                    what = f"no default from {how}" if param.fact else how
                    raise ParamError(f"--param {param.name}: {what}; give one")
                values[param.name] = value
                if param.fact:
                    notes.append(f"{param.name}={value} from {how}")
        for param in runbook.params:
            self._check_known(param.name, param.type, values[param.name])
        return values, notes

    async def _defaults_given(
        self, runbook: Runbook, given: Mapping[str, object]
    ) -> dict[str, tuple[object | None, str]]:
        found: dict[str, tuple[object | None, str]] = {k: (v, "given") for k, v in given.items()}
        for param in runbook.params:
            if param.name not in found and param.default is not None:
                found[param.name] = (param.default, "the runbook's default")
        # Facts second: a fact "of" a parameter reads that parameter's value.
        for param in runbook.params:
            if param.name in found:
                continue
            if param.fact is None:
                found[param.name] = (None, f"required ({param.description or param.type})")
                continue
            of = found.get(param.fact_of or "", (None, ""))[0]
            try:
                value, how = await self.figures.fact(param.fact, of)
            except Exception as exc:  # one unreadable fact leaves only its own value unknown
                log.warning("reading fact %s failed: %s", param.fact, exc)
                value, how = None, f"unreadable ({type(exc).__name__}: {exc})"
            if value is not None:
                try:
                    value = check_value(param, value)
                except ParamError as exc:
                    value, how = None, str(exc)
            found[param.name] = (value, f"{param.fact}: {how}")
        return found

    def _check_known(self, name: str, kind: str, value: object) -> None:
        known: list[str] = []
        if kind == "node":
            known = [n.name for n in self.config.nodes]
        elif kind == "endpoint":
            known = [e.name for e in self.config.endpoints]
        elif kind == "upstream":
            known = [u for r in self.config.routers for u in r.upstreams]
        else:
            return
        if value not in known:
            shown = ", ".join(known) or "none configured"
            raise ParamError(f"--param {name}={value}: unknown {kind} (known: {shown})")

    def target(self, runbook: Runbook, values: Mapping[str, object]) -> str | None:
        """What the run acts on, for the incident's title: its first node, upstream or endpoint."""
        for kind in TARGET_TYPES:
            for param in runbook.params:
                if param.type == kind:
                    return str(values[param.name])
        return None

    def start(
        self,
        runbook: Runbook,
        values: Mapping[str, object],
        controller: Controller,
        *,
        mode: str,
        incident_id: int | None = None,
        listener: Callable[[RunUpdate], None] | None = None,
    ) -> Run:
        """Record the run (joining ``incident_id`` or opening an incident) and make it.
        Raises ParamError for an incident the log does not hold."""
        if incident_id is None:
            target = self.target(runbook, values)
            where = f" on {target}" if target else ""
            incident_id = self.log.open_incident(
                f"{runbook.id}{where}, started by {self.operator}", target, self.operator
            )
        else:
            try:
                self.log.incident(incident_id)
            except KeyError:
                raise ParamError(
                    f"--incident {incident_id}: no incident {incident_id} in the incident log"
                ) from None
        # As the engineer would type them (30s, true): what resume reads back.
        plain = {p.name: format_value(values[p.name], p.type) for p in runbook.params}
        run_id = self.log.start_run(
            incident_id, runbook.id, runbook.title, plain, self.operator, mode
        )
        return self.run_for(self.log.run(run_id), runbook, values, controller, mode, listener)

    def interrupted_runs(self) -> list[RunRecord]:
        """The runs a killed console left cut off, oldest first: what the TUI offers to resume
        or roll back. Only the unfinished runs are read (a finished one has its outcome), so
        this stays cheap however long the log grows; safe to call from a thread."""
        rows = self.log.store.query("SELECT id FROM runbook_runs WHERE outcome IS NULL ORDER BY id")
        runs = (self.log.run(row["id"]) for row in rows)
        return [run for run in runs if run.interrupted]

    async def take_over(
        self,
        run_id: int,
        how: str,
        controller: Controller,
        mode: str,
        listener: Any = None,
    ) -> str:
        """Resume (``resume``) or undo (``rollback``) a run that was interrupted.

        In ``dry-run`` mode the take-over is shown as a dry-run run of its own in the same
        incident, and the interrupted run stays as it was, for the real one; ``read-only``
        mode is refused before anything is recorded (both change the fleet).
        """
        try:
            record = self.log.run(run_id)
        except KeyError:
            raise ParamError(f"no run {run_id} in the incident log") from None
        if not record.interrupted:
            raise ParamError(
                f"run {run_id} is {record.state}: only an interrupted run can be taken over"
            )
        runbook = self.runbooks.get(record.runbook)
        if runbook is None:
            raise ParamError(f"run {run_id} ran runbook {record.runbook}, which is not loaded now")
        if mode == "read-only":
            raise ParamError(
                f"run {run_id}: read-only mode blocks the changes a {how} makes; the run stays "
                f"{record.state} (--dry-run shows what the {how} would do)"
            )
        if how == "resume" and record.rollback_step is not None:
            raise ParamError(
                f"run {run_id} was {record.state}: it cannot be resumed, only rolled back "
                f"(`llmops runbook rollback {run_id}` undoes what is not undone yet)"
            )
        if how == "resume":
            for param in runbook.params:
                recorded = record.params.get(param.name)
                if recorded is None:
                    raise ParamError(
                        f"run {run_id}: runbook {runbook.id} has a parameter {param.name} the "
                        "run did not record (the runbook changed since); roll back, or start "
                        "it again"
                    )
                if REDACTED in str(recorded):
                    raise ParamError(
                        f"run {run_id}: parameter {param.name} held a secret, which the log "
                        "does not keep; roll back, or start the runbook again"
                    )
        values = {
            p.name: parse_param(p, str(record.params[p.name]))
            for p in runbook.params
            if p.name in record.params
        }
        progress = recorded_progress(self.log, record, runbook)
        if mode == "dry-run":
            preview = self.log.start_run(
                record.incident_id, runbook.id, runbook.title, record.params, self.operator, mode
            )
            self.log.log(
                preview,
                "run.preview",
                f"dry-run of the {how} of run {run_id}, which stays {record.state}",
                operator_name=self.operator,
            )
            record = self.log.run(preview)
        else:
            try:
                record = self.log.take_over(
                    record, self.operator, "resumed" if how == "resume" else "rolled back"
                )
            except TakenOver as exc:
                raise ParamError(str(exc)) from None
        run = self.run_for(record, runbook, values, controller, mode, listener)
        if listener is not None and hasattr(listener, "run"):
            listener.run = run
        if how == "resume":
            return await run.resume(progress)
        return await run.roll_back_interrupted(progress)

    def run_for(
        self,
        record: RunRecord,
        runbook: Runbook,
        values: Mapping[str, object],
        controller: Controller,
        mode: str,
        listener: Callable[[RunUpdate], None] | None = None,
    ) -> Run:
        run: Run

        async def note(text: str) -> None:  # incident.note lands in this run's incident
            self.log.log(run.record, "note", text, operator_name=self.operator)

        registry = Registry(
            self.config, self.hub.ssh, self.hub.http, read_only=self.read_only, note=note
        )
        run = Run(
            runbook,
            values,
            registry=registry,
            figures=self.figures,
            log=self.log,
            controller=controller,
            operator=self.operator,
            record=record,
            mode=mode,
            secrets=secrets_of(self.config),
            listener=listener,
        )
        return run


def make_session(config: Config, hub: Hub, store: Store, *, read_only: bool) -> Session:
    """A session on a running hub (the TUI's, or one the CLI started)."""
    read_only = read_only or config.read_only
    runbooks, problems = load_runbooks(config)
    # Reads only (facts, previews); each run gets a registry of its own (Session.run_for).
    registry = Registry(config, hub.ssh, hub.http, read_only=read_only)
    return Session(
        config=config,
        hub=hub,
        registry=registry,
        figures=FigureReader(hub, FleetWorld(registry)),
        log=IncidentLog(store, secrets=secrets_of(config)),
        runbooks=runbooks,
        operator=operator(),
        read_only=read_only,
        problems=problems,
    )


@asynccontextmanager
async def open_session(config: Config, store: Store, *, read_only: bool) -> AsyncIterator[Session]:
    """A hub of its own, started, and a session on it; stopped on the way out."""
    hub = Hub(config, store)
    hub.start()
    try:
        yield make_session(config, hub, store, read_only=read_only)
    finally:
        await hub.stop()
