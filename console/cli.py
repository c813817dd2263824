"""The ``llmops`` command: the console, ``demo``, ``status`` and ``config check``.

Every user error (bad config, bad fault spec, unusable store path) is one line on stderr and
exit status 2; ``status`` exits 1 when a source failed, for scripts and cron. ``--demo`` on any
command starts the embedded demo fleet for the length of that command and uses its config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from console.config import (
    Config,
    ConfigError,
    check_config,
    default_config_path,
    default_store_path,
    load_config,
)
from console.models import FleetSnapshot
from console.store import Store


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
    config = commands.add_parser("config", help="config file tools")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_commands.add_parser(
        "check", parents=[common], help="print every problem in a config file"
    )
    check.add_argument("file", nargs="?", type=Path, help="config file to check")
    return parser


def _option(args: argparse.Namespace, name: str, default: object) -> object:
    return getattr(args, name, default)


@contextmanager
def _demo_fleet(args: argparse.Namespace) -> Iterator[object]:
    from console.demo import DemoFleet, parse_fault

    try:
        faults = [parse_fault(text) for text in _option(args, "fault", [])]  # type: ignore[union-attr]
    except ValueError as exc:
        raise UsageError(f"--fault: {exc}") from exc
    workdir = Path(tempfile.mkdtemp(prefix="llmops-demo-"))
    try:
        try:
            fleet = DemoFleet(
                workdir,
                nodes=int(_option(args, "nodes", 4)),  # type: ignore[arg-type]
                gpus_per_node=int(_option(args, "gpus", 8)),  # type: ignore[arg-type]
                seed=int(_option(args, "seed", 0)),  # type: ignore[arg-type]
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


def _run_console(config: Config, fleet: object | None) -> int:
    from console.app import LlmopsApp
    from console.hub import Hub

    store = _open_store(config)
    hub = Hub(config, store)
    app = LlmopsApp(hub, environment=config.environment, faults=fleet)  # type: ignore[arg-type]
    app.run()
    store.close()
    return 0


async def _poll_status(config: Config, store: Store) -> FleetSnapshot:
    from console.hub import Hub

    hub = Hub(config, store)
    try:
        await hub.poll_once()
        # A second scrape a second later turns engine counters into rates.
        await asyncio.sleep(1.0)
        await hub.poll_once("engine:")
        return hub.snapshot()
    finally:
        await hub.stop()


def _status_table(snapshot: FleetSnapshot) -> str:
    from screens.tables import EndpointTable, NodeTable, endpoint_cells, node_cells

    def block(columns: Sequence[tuple[str, str, int]], rows: list[tuple[str, ...]]) -> list[str]:
        # One poll has no history: the trend columns would be empty, and push past 80 columns.
        keep = [i for i, (key, _, _) in enumerate(columns) if key != "trend"]
        columns = [columns[i] for i in keep]
        rows = [tuple(r[i] for i in keep) for r in rows]
        widths = [
            max(len(label), *(len(r[i]) for r in rows)) if rows else len(label)
            for i, (_, label, _) in enumerate(columns)
        ]
        lines = [
            "  ".join(label.ljust(w) for (_, label, _), w in zip(columns, widths, strict=True))
        ]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
        return [line.rstrip() for line in lines]

    lines = [f"environment: {snapshot.environment}", ""]
    limits = snapshot.thresholds
    lines += block(EndpointTable.COLUMNS, [endpoint_cells(e, limits) for e in snapshot.endpoints])
    lines.append("")
    lines += block(NodeTable.COLUMNS, [node_cells(n, limits) for n in snapshot.nodes])
    failed = snapshot.failed_sources
    if failed:
        lines.append("")
        lines += [f"FAILED {s.name}: {s.last_error}" for s in failed]
    return "\n".join(lines)


def _status(config: Config, as_json: bool) -> int:
    store = _open_store(config)
    try:
        snapshot = asyncio.run(_poll_status(config, store))
    finally:
        store.close()
    if as_json:
        print(json.dumps(asdict(snapshot), indent=2, default=str))
    else:
        print(_status_table(snapshot))
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
    config_path: Path = _option(args, "config", default_config_path())  # type: ignore[assignment]
    if args.command == "config":
        if demo:
            with _demo_fleet(args) as fleet:
                return _check(args.file or fleet.config_path)  # type: ignore[attr-defined]
        return _check(args.file or config_path)
    if demo:
        with _demo_fleet(args) as fleet:
            config = load_config(fleet.config_path)  # type: ignore[attr-defined]
            if args.command == "status":
                return _status(config, args.json)
            return _run_console(config, fleet)
    if _option(args, "fault", None):
        raise UsageError("--fault: faults can only be injected into the demo fleet (add --demo)")
    config = _load(config_path)
    if args.command == "status":
        return _status(config, args.json)
    return _run_console(config, None)


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
