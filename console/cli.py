"""The ``llmops`` command: the console, ``demo``, ``status`` and ``config check``.

Every user error (bad config, bad fault spec, unusable store path) is one line on stderr and
exit status 2; ``status`` exits 1 when a source failed, for scripts and cron. ``--demo`` on any
command starts the embedded demo fleet for the length of that command and uses its config.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.cli_hosts import HostsUsageError, hosts_command
from console.cli_hosts import add_commands as add_hosts_commands
from console.cli_runbooks import (
    CliUsageError,
    add_commands,
    describe,
    incidents_command,
    run_runbook,
    runbook_lint,
    runbook_list,
    settle_run,
    unknown_runbook,
)
from console.config import (
    Config,
    ConfigError,
    check_config,
    default_config_path,
    default_store_path,
    load_config,
)
from console.models import FleetSnapshot
from console.runbook import load_folders, shipped_folder
from console.store import Store
from console.yamlconf import parse_duration

if TYPE_CHECKING:
    from console.demo import DemoFleet

STATUS_WINDOW_S = 15.0  # long enough for ~100 requests at 10 req/s; short enough for cron


class UsageError(Exception):
    """A one-line problem with what the user asked for (exit status 2)."""


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS lets the options appear before or after the subcommand without clobbering.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"config file (default {default_config_path()})",
    )
    common.add_argument(
        "--demo",
        action="store_true",
        default=argparse.SUPPRESS,
        help="start the embedded demo fleet for this command and use its config",
    )
    common.add_argument(
        "--fault",
        action="append",
        metavar="NAME[:TARGET]@SECONDS[+DURATION]",
        default=argparse.SUPPRESS,
        help="demo fleet: inject a fault at a time after start (repeatable)",
    )
    common.add_argument(
        "--nodes",
        type=int,
        default=argparse.SUPPRESS,
        help="demo fleet: number of nodes, 1 to 64 (default 4)",
    )
    common.add_argument(
        "--gpus",
        type=int,
        default=argparse.SUPPRESS,
        help="demo fleet: GPUs per node, 1 to 8 (default 8)",
    )
    common.add_argument(
        "--seed", type=int, default=argparse.SUPPRESS, help="demo fleet: random seed (default 0)"
    )
    common.add_argument(
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no terminal bell when an incident opens (as alerts: {bell: false})",
    )
    common.add_argument(
        "--read-only",
        action="store_true",
        default=argparse.SUPPRESS,
        help="run no mutating action at all (checks still run); as read_only: true in the config",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="llmops",
        parents=[common],
        description="Terminal console for the on-call engineers of LLM applications.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo", parents=[common], help="start the embedded demo fleet and the console on it"
    )
    status = commands.add_parser(
        "status", parents=[common], help="poll every source once and print what it said"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--window",
        type=_duration,
        default=STATUS_WINDOW_S,
        metavar="DURATION",
        help=f"measure over this long, e.g. 30s or 2m (default {STATUS_WINDOW_S:g}s, at most 10m)",
    )
    watch = commands.add_parser(
        "watch",
        parents=[common],
        help="the hub without the TUI: evaluate the alert rules, write samples and events, "
        "print each alert as one line (run it as a service on the bastion)",
    )
    watch.add_argument(
        "--for",
        dest="for_s",
        type=_watch_duration,
        metavar="DURATION",
        help="stop after this long, e.g. 30s or 8h (default: until stopped)",
    )
    config = commands.add_parser("config", help="config file tools")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_commands.add_parser(
        "check", parents=[common], help="print every problem in a config file"
    )
    check.add_argument("file", nargs="?", type=Path, help="config file to check")
    add_commands(commands, common)
    add_hosts_commands(commands, common)
    return parser


def _duration(text: str) -> float:
    seconds = parse_duration(text.strip())  # the config's units
    if seconds is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 15s or 2m")
    if not 1.0 <= seconds <= 600.0:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 1s..10m")
    return seconds


def _watch_duration(text: str) -> float:
    seconds = parse_duration(text.strip())
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s or 8h")
    return seconds


def _option(args: argparse.Namespace, name: str, default: Any) -> Any:
    return getattr(args, name, default)


@contextmanager
def _demo_fleet(args: argparse.Namespace) -> Iterator[DemoFleet]:
    from console.demo import DemoFleet, parse_fault

    try:
        faults = [parse_fault(text) for text in _option(args, "fault", [])]
    except ValueError as exc:
        raise UsageError(f"--fault: {exc}") from exc
    _remove_dead_demo_folders()
    workdir = Path(tempfile.mkdtemp(prefix="llmops-demo-"))
    # Whose folder this is: a later start removes it if this process died without unwinding.
    (workdir / "pid").write_text(f"{os.getpid()}\n")
    try:
        try:
            fleet = DemoFleet(
                workdir,
                nodes=int(_option(args, "nodes", 4)),
                gpus_per_node=int(_option(args, "gpus", 8)),
                seed=int(_option(args, "seed", 0)),
                faults=faults,
                store=default_store_path().with_name("demo.db"),
            )
        except ValueError as exc:  # a fault target that is not a node, a bad size
            raise UsageError(f"demo fleet: {exc}") from exc
        try:
            fleet.start()
            yield fleet
        finally:
            fleet.stop()
    finally:
        # The folder holds the demo's private client key: never leave it behind.
        shutil.rmtree(workdir, ignore_errors=True)


def _remove_dead_demo_folders() -> None:
    """Remove demo folders (each holds a private key) left by a demo that was killed -9."""
    for folder in Path(tempfile.gettempdir()).glob("llmops-demo-*"):
        try:
            pid = int((folder / "pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):  # not ours, still starting, or another user's
            continue


def _load(path: Path) -> Config:
    if not path.exists() and path == default_config_path():
        raise UsageError(
            f"{path}: no config file here; copy config.example.yaml there, "
            "pass --config FILE, or try `llmops demo`"
        )
    return load_config(path)


def _open_store(config: Config) -> Store:
    try:
        return Store(config.store)
    except (OSError, sqlite3.Error) as exc:
        where = f"{config.path}:{config.store_line}" if config.store_line else str(config.path)
        raise UsageError(f"{where}: store: cannot open {config.store}: {exc}") from exc


def _run_console(
    config: Config, fleet: DemoFleet | None, read_only: bool = False, quiet: bool = False
) -> int:
    from backends.host import HostCollector
    from console.app import LlmopsApp
    from console.hub import Hub
    from console.session import make_session

    store = _open_store(config)
    try:
        hub = Hub(config, store, host=HostCollector(config.store))
        session = make_session(config, hub, store, read_only=read_only)
        hub.keep_incidents(session.incident_desk())
        app = LlmopsApp(
            hub,
            environment=config.environment,
            faults=fleet,
            handle_signals=True,
            session=session,
            read_only=read_only,
            bell=config.alerts.bell and not quiet,
        )
        app.run()
        # The app's loop took SIGHUP and SIGTERM over while it ran: take them back.
        for signum in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(signum, _exit_on_signal)
        return 128 + app.stopped_by_signal if app.stopped_by_signal else 0
    finally:
        store.close()


def _watch(config: Config, for_s: float | None) -> int:
    """Run the hub headless; each alert event is one flushed line on stdout."""
    store = _open_store(config)
    try:
        asyncio.run(_run_watch(config, store, for_s))
    finally:
        store.close()
    return 0


async def _run_watch(config: Config, store: Store, for_s: float | None) -> None:
    from backends.host import HostCollector
    from console.alerts import AlertEvent
    from console.hub import Hub
    from console.session import make_session
    from console.triage import SUGGESTED, IncidentChange

    hub = Hub(config, store, host=HostCollector(config.store))
    # Reads only: the desk ranks runbooks on figures and writes to the incident log alone.
    hub.keep_incidents(make_session(config, hub, store, read_only=True).incident_desk())

    def stamp() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(hub.clock()))

    def show(event: AlertEvent) -> None:
        print(f"{stamp()} {event.kind} {event.severity} {event.message}", flush=True)

    def show_incident(change: IncidentChange) -> None:
        print(f"{stamp()} {change.kind} {change.message}", flush=True)
        for suggestion in change.suggestions[:SUGGESTED]:
            print(f"    runbook {suggestion.runbook}: {suggestion.why}", flush=True)
            for line in suggestion.evidence:
                mark = "holds" if line.holds else "n/a" if line.holds is None else "does not hold"
                print(f"      {mark}: {line.shown}", flush=True)

    hub.alert_listeners.append(show)
    hub.incident_listeners.append(show_incident)
    rules = len(hub.alerts.rules)
    print(
        f"watching {len(config.nodes)} nodes and {len(config.endpoints)} endpoints; "
        f"{rules} alert rules; incident log {config.store}",
        flush=True,
    )
    hub.start()
    hub.record_event("console.started", "watch started")
    reason = "stopped"
    try:
        if for_s is None:
            await asyncio.Event().wait()  # until a signal ends the process
        else:
            await asyncio.sleep(for_s)
            reason = f"ended after {for_s:g}s"
    finally:
        await hub.stop(f"watch {reason}")


async def _poll_status(config: Config, store: Store, window_s: float) -> FleetSnapshot:
    from backends.host import HostCollector
    from console.hub import Hub

    hub = Hub(config, store, window_s=window_s, host=HostCollector(config.store))
    try:
        # Measured over a stated window, not two scrapes a second apart: rates and
        # percentiles of a moment are noise.
        hub.start()
        await asyncio.sleep(window_s)
        return hub.snapshot()
    finally:
        await hub.stop()


def _print_status(snapshot: FleetSnapshot) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from screens.cells import ENDPOINT_COLUMNS, NODE_COLUMNS, endpoint_cells, node_cells
    from screens.formatting import Alarm

    # Rich honours NO_COLOR and writes plain text where stdout is not a terminal.
    out = Console(highlight=False, soft_wrap=False)
    # Reverse video marks an alarm (with NO_COLOR too); a pipe or cron mail has no video,
    # so there an alarm is marked with a leading "!".
    marker = "" if out.is_terminal else "!"

    def table(columns: Sequence[tuple[str, str, int]], rows: list[tuple[str, ...]]) -> Table:
        # One run has no history: the trend columns would be empty, and push past 80 columns.
        keep = [i for i, (key, _, _) in enumerate(columns) if key != "trend"]
        grid = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 2, 0, 0))
        for i in keep:
            grid.add_column(columns[i][1], no_wrap=True, header_style="bold")
        for row in rows:
            grid.add_row(
                *(
                    Text(marker + row[i], "bold reverse")
                    if isinstance(row[i], Alarm)
                    else Text(row[i])
                    for i in keep
                )
            )
        return grid

    limits = snapshot.thresholds
    out.print(f"environment: {snapshot.environment}")
    out.print(f"figures over the last {snapshot.window_s:g}s; n=: requests behind percentiles")
    out.print("life: too few requests in the window, percentiles since each engine started")
    out.print()
    out.print(table(ENDPOINT_COLUMNS, [endpoint_cells(e, limits) for e in snapshot.endpoints]))
    out.print()
    out.print(table(NODE_COLUMNS, [node_cells(n, limits) for n in snapshot.nodes]))
    if snapshot.nodes:
        out.print()
        unknown = [n.name for n in snapshot.nodes if n.cost_per_hour_usd is None]
        if snapshot.gpu_cost_per_hour_usd is not None:
            out.print(
                f"GPU nodes: ${snapshot.gpu_cost_per_hour_usd:,.2f}/hour "
                f"({len(snapshot.nodes)} nodes, each counted once)"
            )
        else:
            out.print(f"GPU nodes: N/A/hour (no cost_per_hour_usd for {', '.join(unknown)})")
    failed = snapshot.failed_sources
    if failed:
        out.print()
        for s in failed:
            out.print(Text(f"FAILED {s.name}: {s.last_error}"))


def _jsonable(value: Any) -> Any:
    """Plain JSON values: records as objects, sets sorted, NaN and infinities as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _status(config: Config, as_json: bool, window_s: float) -> int:
    store = _open_store(config)
    try:
        snapshot = asyncio.run(_poll_status(config, store, window_s))
    finally:
        store.close()
    if as_json:
        # allow_nan=False: a NaN that slipped through is a bug to see, not invalid JSON to emit.
        print(json.dumps(_jsonable(snapshot), indent=2, allow_nan=False))
    else:
        _print_status(snapshot)
    return 1 if snapshot.failed_sources else 0


def _check(path: Path) -> int:
    problems = check_config(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    print(f"{path}: ok")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    demo = args.command == "demo" or _option(args, "demo", False)
    config_path: Path = _option(args, "config", default_config_path())
    if args.command == "config":
        if demo:
            with _demo_fleet(args) as fleet:
                return _check(args.file or fleet.config_path)
        return _check(args.file or config_path)
    if args.command == "runbook" and args.runbook_command == "lint" and not demo:
        # Files need no config, nor a fleet; without files, the shipped runbooks and the
        # config's folders, when there is a config.
        has_config = args.files or config_path.exists() or config_path != default_config_path()
        config = _load(config_path) if not args.files and has_config else None
        return runbook_lint(args.files, config)
    if (
        args.command == "runbook"
        and args.runbook_command in ("list", "show")
        and not demo
        and not config_path.exists()
        and config_path == default_config_path()
    ):
        # No config yet (a first look on a new bastion): the shipped runbooks.
        return _runbook_catalogue(args, load_folders([shipped_folder()]))
    if args.command == "incidents" and demo:
        # The demo's incident log outlives the demo: read it without starting a fleet.
        store = Store(default_store_path().with_name("demo.db"))
        try:
            return incidents_command(store, args)
        except CliUsageError as exc:
            raise UsageError(str(exc)) from None
        finally:
            store.close()
    if demo:
        with _demo_fleet(args) as fleet:
            return _command(args, load_config(fleet.config_path), fleet)
    if _option(args, "fault", None):
        raise UsageError("--fault: faults can only be injected into the demo fleet (add --demo)")
    return _command(args, _load(config_path), None)


def _command(args: argparse.Namespace, config: Config, fleet: DemoFleet | None) -> int:
    read_only = bool(_option(args, "read_only", False)) or config.read_only
    if args.command == "status":
        return _status(config, args.json, args.window)
    if args.command == "watch":
        return _watch(config, args.for_s)
    if args.command == "incidents":
        from console.session import secrets_of

        secrets = secrets_of(config)
        if getattr(args, "expire_silences", False):
            expired = _with_store(config, lambda store: _expire(config, store, args, read_only))
            if not expired:
                print(
                    f"incident {args.id} stays as it is: a silence was not expired", file=sys.stderr
                )
                return 1
        return _with_store(config, lambda store: incidents_command(store, args, secrets=secrets))
    if args.command == "runbook":
        return _runbook_command(args, config, read_only)
    if args.command == "hosts":
        try:
            return hosts_command(config, args)
        except HostsUsageError as exc:
            raise UsageError(str(exc)) from None
    return _run_console(config, fleet, read_only, bool(_option(args, "quiet", False)))


def _expire(config: Config, store: Store, args: argparse.Namespace, read_only: bool) -> bool:
    """`incidents resolve --expire-silences`: the incident's silences, expired first."""
    from console.incidents import IncidentLog, operator
    from console.session import secrets_of
    from console.silences import expire_silences

    log = IncidentLog(store, secrets=secrets_of(config))
    try:
        log.incident(args.id)
    except KeyError:
        raise UsageError(f"no incident {args.id} in {store.path}") from None
    print(f"incident {args.id}: expiring the silences its runbooks made")
    return asyncio.run(
        expire_silences(
            config,
            log,
            args.id,
            operator(),
            yes=args.yes,
            confirm_targets=args.confirm_target,
            read_only=read_only,
            out=sys.stdout,
        )
    )


def _runbook_catalogue(args: argparse.Namespace, loaded: tuple[dict, list[str]]) -> int:
    """runbook list and show, over the runbooks that loaded (the others said on stderr)."""
    runbooks, problems = loaded
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.runbook_command == "list":
        return runbook_list(runbooks, args.json) or (2 if problems else 0)
    runbook = runbooks.get(args.id)
    if runbook is None:
        raise UsageError(unknown_runbook(args.id, runbooks, problems))
    print("\n".join(describe(runbook)))
    return 0


def _runbook_command(args: argparse.Namespace, config: Config, read_only: bool) -> int:
    from console.session import load_runbooks

    command = args.runbook_command
    if command == "lint":
        return runbook_lint(args.files, config)
    if command in ("list", "show"):
        return _runbook_catalogue(args, load_runbooks(config))
    if command == "settle":
        from console.session import secrets_of

        secrets = secrets_of(config)
        return _with_store(config, lambda store: settle_run(store, args, secrets))
    return _with_store(
        config, lambda store: asyncio.run(run_runbook(config, store, args, read_only))
    )


def _with_store(config: Config, use: Any) -> int:
    store = _open_store(config)
    try:
        return int(use(store))
    except CliUsageError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()


def _exit_on_signal(signum: int, frame: object) -> None:
    # The SSH session went away (SIGHUP) or someone asked us to stop (SIGTERM, timeout,
    # systemd): unwind, so the demo fleet stops and its folder (with its private key) is
    # removed, instead of dying where we stand.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, _exit_on_signal)
    try:
        code = run(argv)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        code = 2
    except UsageError as exc:
        print(f"llmops: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    main()
