"""``llmops runbook ...`` and ``llmops incidents ...``: runbooks and the incident log from a shell.

``runbook run`` prints one line per step as it starts and as it ends, flushed at once so a
pipe or a log sees progress, and exits 0 when the run finished and verified, 1 when it failed
(after its rollback) or needs attention, 2 for a usage or lint error, 3 when it was declined
or aborted. ``runbook rollback`` exits 0 once the interrupted run's changes are undone, 1 when
it needs attention (an undo failed), 3 when an undo was declined (the run stays interrupted).
A mutating step, and the undo of a run taken over, runs only with ``--yes`` when nobody is at
a terminal, and in a protected environment only with ``--confirm-target NAME`` for each
target as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from console.config import Config
from console.incidents import (
    STATE_VERBS,
    IncidentLog,
    incident_json,
    incident_markdown,
    operator,
)
from console.runbook import ParamError, Runbook, duration_text, lint, shipped_folder
from console.runner import ConfirmRequest, Decision, Run, RunUpdate, StepState
from console.store import Store

EXIT_FOR = {
    "verified": 0,
    "dry-run": 0,
    "read-only": 0,
    "failed": 1,
    "needs attention": 1,
    "declined": 3,
    "aborted": 3,
}
# A rolled-back run ends failed: for `runbook rollback`, that is what was asked.
ROLLBACK_EXIT_FOR = {**EXIT_FOR, "failed": 0}
WARM_UP_S = 10.0  # at most, for every source to answer and engines to have two scrapes
PROGRESS_EVERY_S = 5.0  # a wait step's progress line, in a pipe


class CliUsageError(Exception):
    """A one-line problem with what was asked (exit status 2)."""


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    runbook = commands.add_parser("runbook", help="list, check, show and run runbooks")
    actions = runbook.add_subparsers(dest="runbook_command", metavar="ACTION", required=True)
    lint_cmd = actions.add_parser(
        "lint", parents=[common], help="check runbook files (default: every runbook loaded)"
    )
    lint_cmd.add_argument("files", nargs="*", type=Path, metavar="FILE")
    list_cmd = actions.add_parser("list", parents=[common], help="list the runbooks")
    list_cmd.add_argument("--json", action="store_true")
    show = actions.add_parser("show", parents=[common], help="print one runbook's steps")
    show.add_argument("id")
    run = actions.add_parser("run", parents=[common], help="run a runbook")
    run.add_argument("id")
    for parser in (run,):
        parser.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a parameter value (repeatable); unset ones take their defaults",
        )
        parser.add_argument("--incident", type=int, metavar="ID", help="join this open incident")
    for name, parser in (
        ("run", run),
        (
            "resume",
            actions.add_parser("resume", parents=[common], help="resume an interrupted run"),
        ),
        (
            "rollback",
            actions.add_parser(
                "rollback",
                parents=[common],
                help="undo the changes of an interrupted run (exit 0 once undone, 1 when it "
                "needs attention, 3 when an undo is declined)",
            ),
        ),
    ):
        if name != "run":
            parser.add_argument("run_id", type=int, metavar="RUN")
        parser.add_argument(
            "--dry-run", action="store_true", help="show every step exactly; change nothing"
        )
        parser.add_argument(
            "--yes", action="store_true", help="confirm mutating steps without asking"
        )
        parser.add_argument(
            "--confirm-target",
            action="append",
            default=[],
            metavar="NAME",
            help="in a protected environment: the target names confirmed (repeatable)",
        )
    settle = actions.add_parser(
        "settle",
        parents=[common],
        help="mark a run that needs attention (or was interrupted) as put right by hand",
    )
    settle.add_argument("run_id", type=int, metavar="RUN")
    settle.add_argument(
        "--note", required=True, help="what was done by hand (kept in the incident log)"
    )
    incidents = commands.add_parser("incidents", help="the incident log")
    inc = incidents.add_subparsers(dest="incidents_command", metavar="ACTION", required=True)
    inc_list = inc.add_parser("list", parents=[common], help="list incidents")
    inc_list.add_argument("--json", action="store_true")
    inc_show = inc.add_parser("show", parents=[common], help="one incident with its runs")
    inc_show.add_argument("id", type=int)
    inc_show.add_argument("--json", action="store_true")
    export = inc.add_parser("export", parents=[common], help="an incident as a postmortem")
    export.add_argument("id", type=int)
    export.add_argument("--format", choices=("md", "json"), default="md")
    for state, verb in STATE_VERBS.items():
        change = inc.add_parser(verb, parents=[common], help=f"mark an incident {state}")
        change.add_argument("id", type=int)
        change.add_argument("--note", metavar="TEXT", help="why (kept with the change)")
        if state == "resolved":
            change.add_argument(
                "--expire-silences",
                action="store_true",
                help="first expire the Alertmanager silences the incident's runbooks made",
            )
            change.add_argument("--yes", action="store_true", help="confirm each expiry")
            change.add_argument(
                "--confirm-target",
                action="append",
                default=[],
                metavar="HOST",
                help="in a protected environment: the Alertmanager host, typed to confirm",
            )
    note = inc.add_parser("note", parents=[common], help="add a note to an incident")
    note.add_argument("id", type=int)
    note.add_argument("text", metavar="TEXT")
    note.add_argument(
        "--follow-up", action="store_true", help="a follow-up: listed as such in the postmortem"
    )


# --- runbook lint, list, show ------------------------------------------------------------------


def unknown_runbook(runbook_id: str, runbooks: dict[str, Runbook], problems: list[str]) -> str:
    """Why a runbook id is not there: it is unknown, or perhaps one that did not load."""
    known = ", ".join(sorted(runbooks)) or "none"
    if problems:
        files = sorted({p.split(":", 1)[0] for p in problems})
        return (
            f"runbook {runbook_id!r} is not loaded: unknown, or in a file that did not load "
            f"({', '.join(files)}: see `llmops runbook lint`) (loaded: {known})"
        )
    return f"unknown runbook {runbook_id!r} (known: {known})"


def runbook_lint(files: Sequence[Path], config: Config | None) -> int:
    paths = list(files) or [shipped_folder(), *(config.runbooks if config else ())]
    problems = lint(paths)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    print(f"{len(paths)} path(s): ok" if files else "every runbook: ok")
    return 0


def runbook_list(runbooks: dict[str, Runbook], as_json: bool) -> int:
    if as_json:
        rows = [
            {"id": r.id, "title": r.title, "alerts": list(r.alerts), "path": str(r.path)}
            for r in runbooks.values()
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(i) for i in runbooks), default=2)
    for runbook in sorted(runbooks.values(), key=lambda r: r.id):
        print(f"{runbook.id:<{width}}  {runbook.title}")
    return 0


def describe(runbook: Runbook) -> list[str]:
    """A runbook as text: parameters with their types and defaults, then every step."""
    lines = [f"{runbook.id}: {runbook.title}", f"file: {runbook.path}"]
    if runbook.description:
        lines += ["", runbook.description.strip()]
    if runbook.alerts or runbook.symptoms:
        lines += ["", "answers: " + ", ".join([*runbook.alerts, *runbook.symptoms])]
    lines += ["", "parameters:"]
    for p in runbook.params:
        if p.fact:
            default = f"default: {p.fact}" + (f" of {p.fact_of}" if p.fact_of else "")
        elif p.type == "duration" and isinstance(p.default, int | float):
            default = f"default: {duration_text(float(p.default))}"  # 30s, not 30.0
        elif p.default is not None:
            default = f"default: {p.default}"
        else:
            default = "required" if p.required else "optional"
        lines.append(
            f"  {p.name} ({p.type}, {default}){': ' + p.description if p.description else ''}"
        )
    lines += ["", "steps:"]
    for i, step in enumerate(runbook.steps, start=1):
        what = step.action.action if step.action is not None else ""
        title = f" - {step.title}" if step.title else ""
        lines.append(f"  {i}. {step.id} [{step.kind}{' ' + what if what else ''}]{title}")
    return lines


# --- runbook run --------------------------------------------------------------------------------


class CliController:
    """Confirmations from flags (--yes, --confirm-target) or, at a terminal, a prompt."""

    def __init__(
        self,
        *,
        yes: bool,
        confirm_targets: Sequence[str],
        operator_name: str,
        interactive: bool,
        ask: Callable[[str], str] = input,
        out: TextIO = sys.stdout,
    ) -> None:
        self.yes = yes
        self.confirm_targets = set(confirm_targets)
        self.operator = operator_name
        self.interactive = interactive
        self.ask = ask
        self.out = out

    async def confirm(self, request: ConfirmRequest) -> Decision:
        if self.yes:
            if request.protected and request.target not in self.confirm_targets:
                return Decision(
                    False,
                    self.operator,
                    how=f"protected environment: --confirm-target {request.target} is needed",
                )
            typed = request.target if request.protected else None
            how = f"--yes --confirm-target {typed}" if typed else "--yes"
            return Decision(True, self.operator, typed, how)
        if not self.interactive:
            return Decision(False, self.operator, how="no terminal to ask and no --yes")
        for line in request.evidence:
            print(f"      evidence: {line}", file=self.out, flush=True)
        if request.protected:
            answer = await asyncio.to_thread(
                self.ask, f"      {request.question} Type {request.target} to confirm: "
            )
            confirmed = answer.strip() == request.target
            return Decision(confirmed, self.operator, answer.strip() or None, "typed")
        answer = await asyncio.to_thread(self.ask, f"      {request.question} [y/N] ")
        return Decision(answer.strip().lower() in ("y", "yes"), self.operator, how="prompt")

    async def before_step(self, run: Run, step: StepState) -> str:
        return "run"

    async def after_failure(self, run: Run, step: StepState, default: str) -> str:
        return default


class Printer:
    """A run's updates as lines: one per step start and end, output indented, flushed."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.run: Run | None = None
        self._progress_at: dict[str, float] = {}

    def __call__(self, update: RunUpdate) -> None:
        prefix = self._prefix(update.step)
        if update.kind == "step.started":
            self._print(f"{prefix} started: {update.text}")
        elif update.kind == "step.finished":
            self._print(f"{prefix} {update.text}")
        elif update.kind == "plan":
            self._print(f"      > {update.text}")
        elif update.kind == "output":
            self._print(f"      | {update.text}")
        elif update.kind == "progress":
            now = time.monotonic()
            key = update.step or ""
            if now - self._progress_at.get(key, float("-inf")) >= PROGRESS_EVERY_S:
                self._progress_at[key] = now
                self._print(f"{prefix} waiting: {update.text}")
        elif update.kind in ("decision", "rollback"):
            self._print(f"{prefix} {update.text}")
        elif update.kind == "run.finished":
            self._print(f"run {update.text}")

    def _prefix(self, step: str | None) -> str:
        if self.run is None or step is None:
            return "     "
        states = self.run.steps
        index = next((s.index for s in states if s.step.id == step), 0)
        return f"[{index + 1}/{len(states)}] {step}"

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def parse_params(texts: Sequence[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise CliUsageError(f"--param {text!r}: expected NAME=VALUE")
        if name in given:
            raise CliUsageError(f"--param {name}: given twice")
        given[name] = value
    return given


async def warm_up(hub: object, limit_s: float = WARM_UP_S) -> None:
    """Wait until every source has answered or failed once and engines have two scrapes."""
    from console.hub import Hub

    assert isinstance(hub, Hub)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        statuses = hub.scheduler.statuses()
        answered = all(s.last_ok_at is not None or s.consecutive_failures for s in statuses)
        now = hub.clock()
        scraped = all(w.span(now, 3600.0) is not None for w in hub.readings.engines.values())
        # A fleet of API endpoints alone has no engine to wait for.
        engines = hub.readings.engines or not any(n.engine for n in hub.config.nodes)
        if answered and scraped and engines:
            return
        await asyncio.sleep(0.2)


async def run_runbook(
    config: Config,
    store: Store,
    args: argparse.Namespace,
    read_only: bool,
    out: TextIO | None = None,
) -> int:
    from console.session import open_session

    out = out or sys.stdout  # read when called: a test (or a redirect) may have replaced it

    async with open_session(config, store, read_only=read_only) as session:
        for problem in session.problems:  # runbooks that did not load, as lint says them
            print(problem, file=sys.stderr)
        given = parse_params(args.param) if args.runbook_command == "run" else {}
        controller = CliController(
            yes=args.yes,
            confirm_targets=args.confirm_target,
            operator_name=session.operator,
            interactive=sys.stdin.isatty() and out.isatty(),
        )
        printer = Printer(out)
        mode = "dry-run" if args.dry_run else "read-only" if session.read_only else "live"
        if args.runbook_command == "run":
            runbook = session.runbooks.get(args.id)
            if runbook is None:
                raise CliUsageError(unknown_runbook(args.id, session.runbooks, session.problems))
            await warm_up(session.hub)
            try:
                values, notes = await session.values(runbook, given)
            except ParamError as exc:
                raise CliUsageError(str(exc)) from None
            try:
                run = session.start(
                    runbook,
                    values,
                    controller,
                    mode=mode,
                    incident_id=args.incident,
                    listener=printer,
                )
            except ParamError as exc:
                raise CliUsageError(str(exc)) from None
            printer.run = run
            shown = " ".join(f"{k}={v}" for k, v in run.record.params.items())
            print(
                f"run {run.record.id} of {runbook.id} (incident {run.record.incident_id}, "
                f"{mode}): {shown}",
                file=out,
                flush=True,
            )
            for note in notes:
                print(f"      default {note}", file=out, flush=True)
            outcome = await run.execute()
        else:
            await warm_up(session.hub)
            try:
                outcome = await session.take_over(
                    args.run_id, args.runbook_command, controller, mode, printer
                )
            except ParamError as exc:
                raise CliUsageError(str(exc)) from None
            if mode == "dry-run":
                state = session.log.run(args.run_id).state
                print(f"run {args.run_id} is still {state}", file=out, flush=True)
            if args.runbook_command == "rollback":
                return ROLLBACK_EXIT_FOR.get(outcome, 1)
        return EXIT_FOR.get(outcome, 1)


def settle_run(store: Store, args: argparse.Namespace, secrets: Sequence[str] = ()) -> int:
    # The note is typed by hand about what was put right: a key rotated by hand is named in
    # it as easily as anywhere, so the config's known secrets are masked like in a run.
    log = IncidentLog(store, secrets=secrets)
    if not args.note.strip():
        raise CliUsageError("--note: say what was done by hand")
    try:
        record = log.settle_run(args.run_id, operator(), args.note)
    except KeyError:
        raise CliUsageError(f"no run {args.run_id} in {store.path}") from None
    except ValueError as exc:
        raise CliUsageError(str(exc)) from None
    print(f"run {record.id} of {record.runbook}: settled by {operator()}")
    return 0


# --- incidents ----------------------------------------------------------------------------------


def _age(ts: float) -> str:
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


# `incidents ack ID`: the command for each state an engineer moves an incident to.
STATE_COMMANDS = {verb: state for state, verb in STATE_VERBS.items()}


def incidents_command(
    store: Store,
    args: argparse.Namespace,
    out: TextIO | None = None,
    secrets: Sequence[str] = (),
) -> int:
    out = out or sys.stdout  # read when called: a test (or a redirect) may have replaced it
    log = IncidentLog(store, secrets=secrets)
    command = args.incidents_command
    if command == "list":
        incidents = log.incidents()
        if args.json:
            print(json.dumps([incident_json(log, i.id) for i in incidents], indent=2), file=out)
            return 0
        for i in incidents:
            runs = ", ".join(f"run {r.id} {r.runbook}: {r.state}" for r in i.runs) or "no runs"
            print(
                f"#{i.id}  {i.state:<12} {i.severity or '-':<6} {i.target or '-':<12} "
                f"{_age(i.opened_at):>4}  {i.title}  [{runs}]",
                file=out,
            )
        return 0
    try:
        if command in STATE_COMMANDS:
            record = log.set_state(args.id, STATE_COMMANDS[command], operator(), args.note)
            print(f"incident {record.id} is {record.state}: {record.title}", file=out)
            return 0
        if command == "note":
            log.add_note(args.id, args.text, operator(), follow_up=args.follow_up)
            kind = "follow-up" if args.follow_up else "note"
            print(f"{kind} added to incident {args.id}", file=out)
            return 0
        data = incident_json(log, args.id)
    except KeyError:
        raise CliUsageError(f"no incident {args.id} in {store.path}") from None
    except ValueError as exc:  # a state it is in or past, an empty note
        raise CliUsageError(str(exc)) from None
    if command == "export":
        if args.format == "json":
            print(json.dumps(data, indent=2), file=out)
        else:
            print(incident_markdown(log, args.id), end="", file=out)
        return 0
    if args.json:
        print(json.dumps(data, indent=2), file=out)
        return 0
    print(f"incident {data['id']}: {data['title']} ({data['state']})", file=out)
    for run in data["runs"]:
        print(f"  run {run['id']} {run['runbook']} by {run['operator']}: {run['state']}", file=out)
        for event in run["events"]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
            print(f"    {stamp} {event['message']}", file=out)
        if run["state"].startswith("interrupted during rollback"):
            print(f"    finish the undo: llmops runbook rollback {run['id']}", file=out)
        elif run["state"].startswith("interrupted"):
            print(
                f"    resume: llmops runbook resume {run['id']}   "
                f"undo: llmops runbook rollback {run['id']}",
                file=out,
            )
        if run["state"].startswith("interrupted") or run["state"] == "needs attention":
            print(
                f"    put right by hand: llmops runbook settle {run['id']} --note 'WHAT YOU DID'",
                file=out,
            )
    return 0
