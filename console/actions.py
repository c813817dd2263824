"""The action registry: the only code in the console that changes the world.

Every action is split the same way. :meth:`Registry.plan` renders one call without changing
anything (it may read: the argument file, the router's weights, the engine's /version) into a
:class:`Plan` whose ``detail`` says exactly what will run: the command line as sent to SSH,
the unified diff of a file, the HTTP request with its secrets masked. :meth:`Registry.execute`
runs a plan and verifies that its effect is really there (the engine serves again, the file
holds the new weights), and :meth:`Registry.compensation` names the call that undoes it.

Safety is enforced here, whatever the caller: a mutating plan runs only when it is one this
registry made and has not run yet, the console is not read-only, the confirmation carries the
digest of the very plan the engineer saw, and, in a protected environment, the engineer typed
the plan's target. Refusals are :class:`ActionRefused`, one line, raised before anything
changed; what goes wrong once something may have changed is an :class:`Outcome` with
``ok=False`` (and ``undo`` set when the world was changed), never an exception.
Knows nothing of the UI (Textual is never imported here) or of the runbook engine.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import posixpath
import re
import shlex
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from backends.alertmanager import AlertmanagerClient, AlertmanagerError, Matcher, silence_body
from backends.engines import EngineError, describe_http_error, fetch_ready_models, fetch_version
from backends.ssh import CommandTimedOut, SshError, SshPool
from console.action_specs import ACTION_SPECS, ActionSpec
from console.config import Config, EngineConfig, RouterConfig
from console.incidents import operator
from console.redact import looks_secret, secret_key_name
from console.vllm_args import Catalogue, Match, catalogue_for, check_args, normal_key, resolve_args
from console.yamlconf import parse_duration, suggest

DEFAULT_WAIT_S = 300.0  # engine.set_args / restore_args: how long vLLM may take to serve again
HEALTH_POLL_S = 1.0
DEFAULT_TIMEOUT_S = {"node.run": 60.0, "node.inspect": 30.0, "http.request": 30.0}
FILE_TIMEOUT_S = 30.0
RESTART_TIMEOUT_S = 120.0  # the restart or reload command itself (not the engine's boot)
MAX_BODY_BYTES = 64 * 1024  # of an http.request response
MAX_OUTPUT_CHARS = 1_000_000  # kept of a command's output; the newest part is kept
JOURNAL_LINES = 200
FAILURE_JOURNAL_LINES = 20
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # UTC: a backup is PATH.<stamp>
MASK = "***"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_METHODS = SAFE_METHODS | {"POST", "PUT", "PATCH", "DELETE"}
_STAMP_RE = r"\d{8}T\d{6}Z"
# Plans made and not yet run; more than this many outstanding drops the oldest.
_ISSUED_PLANS = 1024
# Header names that carry credentials without saying "token" or "key" in them.
_SECRET_HEADERS = frozenset({"cookie", "proxy-authorization", "x-api-key", "api-key"})
_VERSION_LINE_RE = re.compile(r"vLLM API server version (\S+)")
_NON_DEFAULT = "non-default args: "

# node.inspect: the programs it runs, and per program what keeps them read-only.
_SHELL_CHARS = frozenset(";|&<>`$")
_SYSTEMCTL_VERBS = frozenset({"status", "is-active", "is-failed", "show", "list-units"})
_SMI_FLAGS = frozenset(
    {"-L", "--list-gpus", "-q", "--query", "-x", "--xml-format", "-u", "--unit", "-h", "--help"}
)
_SMI_WITH_VALUE = frozenset({"-i", "--id", "-d", "--display"})
_SMI_PREFIXES = (
    "--query-gpu=",
    "--query-compute-apps=",
    "--query-accounted-apps=",
    "--query-supported-clocks=",
    "--query-retired-pages=",
    "--query-remapped-rows=",
    "--format=",
    "--id=",
    "--display=",
)
_SYSTEMCTL_FLAGS = frozenset({"--no-pager", "-l", "--full", "--all", "-a", "--no-legend"})
_JOURNALCTL_WITH_VALUE = frozenset(
    {
        "-u",
        "--unit",
        "-S",
        "--since",
        "-U",
        "--until",
        "-o",
        "--output",
        "-p",
        "--priority",
        "-g",
        "--grep",
    }
)
# Options whose value is optional, and what journalctl takes as their value from the next
# word (src/journal/journalctl.c: a line count or "all"; a boot offset or boot ID[+-offset]).
_LINES_VALUE = re.compile(r"all|\+?[0-9]+")
_BOOT_VALUE = re.compile(r"all|[+-]?[0-9]+|(?:[0-9a-fA-F]{32}|[0-9a-fA-F-]{36})(?:[+-][0-9]+)?")
_JOURNALCTL_OPTIONAL_VALUE = {
    "-n": _LINES_VALUE,
    "--lines": _LINES_VALUE,
    "-b": _BOOT_VALUE,
    "--boot": _BOOT_VALUE,
}
_JOURNALCTL_FLAGS = frozenset(
    {
        "--no-pager",
        "-r",
        "--reverse",
        "-q",
        "--quiet",
        "-x",
        "--catalog",
        "-k",
        "--dmesg",
        "--utc",
        "--no-hostname",
        "-a",
        "--all",
        "-e",
        "--pager-end",
        "--system",
    }
)
_HOSTNAME_QUERIES = frozenset(
    {"-f", "--fqdn", "--long", "-s", "--short", "-i", "--ip-address", "-I", "-d", "--domain"}
) | {"--all-ip-addresses", "-A", "--all-fqdns", "-a", "--alias"}


class ActionRefused(Exception):
    """An action not run, said in one line before anything changed."""


class AlreadyDone(ActionRefused):
    """The state the call would make is the state already in place: there is nothing to do.
    Undoing, that says the change is not there (never made, or undone already). A call that
    died mid-change is planned with ``finish`` instead: its file may hold the change while
    the restart or reload never ran."""


class BackupMissing(ActionRefused):
    """engine.restore_args named a backup that does not exist. For the undo of a step that
    was interrupted, that says the change was never made: the backup is written first."""


@dataclass(frozen=True)
class Plan:
    """The dry-run rendering of one call, made without changing anything."""

    action: str
    args: Mapping[str, object]  # as rendered: typed values, secrets masked
    mutating: bool
    target: str | None  # typed to confirm in a protected environment: node, router, URL host
    summary: str  # one line
    detail: str  # exactly what will run; never a secret
    notes: tuple[str, ...] = ()  # e.g. which vLLM catalogue the arguments were checked against
    state: Mapping[str, object] = field(default_factory=dict)  # what execute needs; not shown
    # Writes nothing: restarts or reloads on a file an interrupted call changed, and verifies
    # (planned with ``finish``). What undoes the change is what undoes that call.
    finishes: bool = False
    # Arguments the planner chose from the world because the call left them out (the newest
    # backup engine.restore_args puts back). A later attempt of the same call, or its resume
    # in another process, passes them as given: by then the newest backup is the safety copy
    # the earlier attempt kept of the very file it meant to replace.
    chosen: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Confirmation:
    operator: str  # user@host
    digest: str  # Registry.digest(plan) of the plan the engineer saw
    typed_target: str | None = None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    summary: str  # one line
    exit_status: int | None = None
    output: str = ""  # raw stdout+stderr or body: the runner redacts and truncates it
    facts: Mapping[str, object] = field(default_factory=dict)
    undo: Mapping[str, object] | None = None  # the args of the compensating call
    duration_s: float = 0.0


OnOutput = Callable[[str], None]
Deadline = float | None  # time.monotonic() by which the call should be done


async def read_weights(registry: Registry, router: str) -> dict[str, float]:
    """The weights a router's file gives its upstreams now, read as routing.set_weights reads
    them and changing nothing (for facts such as the idle upstream). An entry without a
    weight is left out: its weight is the router's default, which only the router knows.
    Raises ActionRefused when the file cannot be read or is not what the config describes."""
    config = registry._router(router)
    where = f"weights of {config.name}"
    host = registry._router_host(config)
    text = await registry._read_text(where, host, config.file)
    entries = _router_entries(where, config, _load_router_file(where, config, text))
    weights = ((name, _number(_weight_of(config, entry))) for name, entry in entries)
    return {name: weight for name, weight in weights if weight is not None}


async def read_routes(registry: Registry, router: str) -> dict[str, str]:
    """The route each upstream of a router's file serves (its ``route_key``; "" for all when
    the config names none), read as routing.set_weights reads them; changes nothing."""
    config = registry._router(router)
    where = f"routes of {config.name}"
    host = registry._router_host(config)
    text = await registry._read_text(where, host, config.file)
    entries = _router_entries(where, config, _load_router_file(where, config, text))
    if config.route_key is None:
        return {name: "" for name, _ in entries}
    return {name: _route_of(config, entry) for name, entry in entries}


async def read_engine_args(registry: Registry, node: str) -> dict[str, object]:
    """A node's engine-argument file as a mapping, keys as the file writes them (for facts
    such as the revision a node runs); changes nothing. Raises ActionRefused when it cannot
    be read or is not a YAML mapping."""
    path = registry._engine(node).args_file
    text = await registry._read_text(f"arguments of {node}", node, path)
    return {str(k): v for k, v in _args_mapping(text, f"{node}: {path}").items()}


class Registry:
    def __init__(
        self,
        config: Config,
        ssh: SshPool,
        http: httpx.AsyncClient,
        *,
        read_only: bool = False,
        note: Callable[[str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.read_only = read_only or config.read_only
        self._ssh = ssh
        self._http = http
        self._note = note
        self._clock = clock  # wall-clock time, for backup names
        self._issued: OrderedDict[str, Plan] = OrderedDict()
        self._planners: dict[str, Callable[[str, dict[str, Any]], Awaitable[Plan]]] = {
            "node.run": self._plan_command,
            "node.inspect": self._plan_command,
            "engine.set_args": self._plan_set_args,
            "engine.restore_args": self._plan_restore_args,
            "routing.set_weights": self._plan_set_weights,
            "http.request": self._plan_http,
            "alert.silence": self._plan_silence,
            "alert.expire_silence": self._plan_expire_silence,
            "incident.note": self._plan_note,
        }
        # The planners of the file changes, for a call whose file already says what it asks.
        self._finish_planners: dict[str, Callable[[str, dict[str, Any]], Awaitable[Plan]]] = {
            "engine.set_args": functools.partial(self._plan_set_args, finish=True),
            "engine.restore_args": functools.partial(self._plan_restore_args, finish=True),
            "routing.set_weights": functools.partial(self._plan_set_weights, finish=True),
        }
        self._executors: dict[str, Callable[[Plan, OnOutput, Deadline], Awaitable[Outcome]]] = {
            "node.run": self._run_command,
            "node.inspect": self._run_command,
            "engine.set_args": self._change_engine_file,
            "engine.restore_args": self._change_engine_file,
            "routing.set_weights": self._run_set_weights,
            "http.request": self._run_http,
            "alert.silence": self._run_silence,
            "alert.expire_silence": self._run_expire_silence,
            "incident.note": self._run_note,
        }

    # -- the interface --------------------------------------------------------------------------

    @staticmethod
    def digest(plan: Plan) -> str:
        """What a confirmation names: the action, its rendered arguments and its detail."""
        text = json.dumps(
            {"action": plan.action, "args": plan.args, "detail": plan.detail},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def is_mutating(self, action: str, args: Mapping[str, object]) -> bool:
        spec = _spec(action)
        if action == "http.request":
            return str(args.get("method", "")).upper() not in SAFE_METHODS
        return spec.mutating

    async def plan(self, action: str, args: Mapping[str, object], *, finish: bool = False) -> Plan:
        """Render one call; may read the world, never changes it. Raises ActionRefused.

        With ``finish`` (the call a crash cut off, taken up again), a file that already says
        what is asked is not AlreadyDone: the file may have landed while the restart or reload
        never ran, so the plan runs the rest of the call (the restart or reload and the same
        verification) without writing anything. A file not changed yet is planned as usual.
        """
        checked = self._checked_args(_spec(action), args)
        planners = self._finish_planners if finish else {}
        plan = await planners.get(action, self._planners[action])(action, checked)
        digest = self.digest(plan)
        self._issued.pop(digest, None)
        self._issued[digest] = plan
        while len(self._issued) > _ISSUED_PLANS:
            self._issued.popitem(last=False)
        return plan

    async def execute(
        self,
        plan: Plan,
        confirmation: Confirmation | None,
        on_output: OnOutput = lambda line: None,
        timeout_s: float | None = None,
    ) -> Outcome:
        """Run a plan this registry made, verify its effect, and say what undoes it."""
        self._admit(plan, confirmation)
        start = time.monotonic()
        deadline = start + timeout_s if timeout_s is not None else None
        outcome = await self._executors[plan.action](plan, on_output, deadline)
        return dataclasses.replace(outcome, duration_s=time.monotonic() - start)

    def compensation(
        self, plan: Plan, outcome: Outcome | None
    ) -> tuple[str, dict[str, object]] | None:
        """The call that undoes ``plan`` as it ran; None when there is nothing to undo.

        Without an outcome (asked before executing, so that a crash mid-change can still be
        undone), the call that undoes the change should it have been made.
        """
        undo_action = _spec(plan.action).compensation
        undo = outcome.undo if outcome is not None else self._undo_for(plan)
        if undo_action is None or undo is None:
            return None
        return undo_action, dict(undo)

    # -- the gate -------------------------------------------------------------------------------

    def _admit(self, plan: Plan, confirmation: Confirmation | None) -> None:
        _spec(plan.action)
        digest = self.digest(plan)
        what = f"{plan.action} on {plan.target}" if plan.target else plan.action
        # Only a plan made here is run, unaltered (its state is not in the digest): a caller
        # cannot hand in a plan whose hidden state writes something other than its diff.
        if self._issued.get(digest) != plan:
            raise ActionRefused(
                f"{what} not run: the plan is not one this registry made, or it has run "
                "already; plan it again"
            )
        if not self.is_mutating(plan.action, plan.args):
            return
        if self.read_only:
            raise ActionRefused(f"read-only mode: {what} not run")
        if confirmation is None:
            raise ActionRefused(f"{what} not run: not confirmed")
        if confirmation.digest != digest:
            raise ActionRefused(
                f"{what} not run: the confirmation is for another plan than this one "
                "(the world or the arguments changed since it was shown); confirm it again"
            )
        if not confirmation.operator.strip():
            raise ActionRefused(f"{what} not run: the confirmation names no operator")
        if self.config.protected and confirmation.typed_target != plan.target:
            raise ActionRefused(
                f"{what} not run: in {self.config.environment}, confirm by typing "
                f"{plan.target!r} (got {confirmation.typed_target!r})"
            )
        del self._issued[digest]  # a mutating plan runs once

    def _checked_args(self, spec: ActionSpec, args: Mapping[str, object]) -> dict[str, Any]:
        unknown = [k for k in args if k not in spec.args]
        if unknown:
            raise ActionRefused(
                f"{spec.name}: unknown argument {unknown[0]!r} ({suggest(unknown[0], spec.args)})"
            )
        missing = [k for k, a in spec.args.items() if a.required and args.get(k) is None]
        if missing:
            raise ActionRefused(f"{spec.name}: argument {missing[0]!r} is required")
        checked: dict[str, Any] = {}
        for key, value in args.items():
            if value is not None:
                checked[key] = self._checked(spec, key, spec.args[key].kind, value)
        return checked

    def _checked(self, spec: ActionSpec, key: str, kind: str, value: object) -> object:
        where = f"{spec.name}: {key}"
        if kind == "node":
            names = [n.name for n in self.config.nodes]
            if value not in names:
                raise ActionRefused(
                    f"{where}: unknown node {value!r} ({suggest(str(value), names)})"
                )
        elif kind == "router":
            names = [r.name for r in self.config.routers]
            if value not in names:
                raise ActionRefused(
                    f"{where}: unknown router {value!r} ({suggest(str(value), names)})"
                )
        elif kind in ("shell", "text"):
            if not isinstance(value, str) or not value.strip():
                raise ActionRefused(f"{where}: expected a non-empty string, got {value!r}")
        elif kind == "duration":
            seconds = parse_duration(value) if isinstance(value, str) else _number(value)
            if seconds is None or not 0 < seconds < math.inf:
                raise ActionRefused(f"{where}: expected a duration such as 30s, got {value!r}")
            return seconds
        elif kind == "mapping":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise ActionRefused(f"{where}: expected a mapping, got {value!r}")
            return dict(value)
        elif kind == "names":
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ActionRefused(f"{where}: expected a list of names, got {value!r}")
            return list(value)
        return value

    # -- node.run, node.inspect -----------------------------------------------------------------

    async def _plan_command(self, action: str, args: dict[str, Any]) -> Plan:
        node, command = args["node"], args["command"]
        args.setdefault("timeout", DEFAULT_TIMEOUT_S[action])
        if action == "node.inspect":
            why = read_only_problem(command)
            if why:
                raise ActionRefused(
                    f"node.inspect on {node}: {command!r} refused: {why}; "
                    "node.run runs commands that may change the node"
                )
        return Plan(
            action=action,
            args=args,
            mutating=self.is_mutating(action, args),
            target=node,
            summary=f"{action} on {node}: {_one_line(command)}",
            detail=command,
        )

    async def _run_command(self, plan: Plan, on_output: OnOutput, deadline: Deadline) -> Outcome:
        node, command = str(plan.args["node"]), plan.detail
        output = _Output(on_output)
        timeout = _budget(_seconds(plan.args, "timeout"), deadline)
        try:
            status, _, _ = await self._ssh.stream(node, command, output.line, timeout)
        except CommandTimedOut:
            return Outcome(
                False,
                f"{plan.action} on {node}: `{_one_line(command)}` timed out after {timeout:g}s "
                "(killed)",
                output=output.text(),
            )
        except SshError as exc:
            return Outcome(False, f"{plan.action} on {node}: {exc}", output=output.text())
        return Outcome(
            status == 0,
            f"{plan.action} on {node}: `{_one_line(command)}` exited {status}",
            exit_status=status,
            output=output.text(),
        )

    # -- engine.set_args, engine.restore_args ---------------------------------------------------

    async def _plan_set_args(
        self, action: str, args: dict[str, Any], *, finish: bool = False
    ) -> Plan:
        node = args["node"]
        engine = self._engine(node)
        wanted, unset = args.get("set", {}), args.get("unset", [])
        if not wanted and not unset:
            raise ActionRefused(f"engine.set_args on {node}: give set, unset or both")
        version, catalogue, notes = await self._catalogue(node, engine)
        resolved = resolve_args(catalogue, wanted, unset)
        if resolved.problems:
            raise ActionRefused(
                f"vLLM {version} on {node}: {'; '.join(resolved.problems)}; nothing was changed"
            )
        path = engine.args_file
        before = await self._read_text(action, node, path)
        data = _args_mapping(before, f"engine.set_args on {node}: {path}")
        after_data, changes, unset_notes = _apply_args(
            data, resolved.set, resolved.unset, catalogue
        )
        wait = args.setdefault("wait", DEFAULT_WAIT_S)
        rendered = {"node": node, "set": resolved.set, "unset": list(resolved.unset), "wait": wait}
        verify: dict[str, object] = {"set": resolved.set, "catalogue": catalogue.version}
        if not changes:
            said = ", ".join([*(f"{k}={_show(v)}" for k, v in resolved.set.items()), *unset_notes])
            if not finish:
                raise AlreadyDone(f"engine.set_args on {node}: already set ({said}); nothing to do")
            return self._finish_engine_plan(
                action, rendered, f"{said} in the file already", before, verify, notes
            )
        touched = {normal_key(k) for k in (*resolved.set, *resolved.unset)}
        rest = {k: v for k, v in after_data.items() if normal_key(str(k)) not in touched}
        kept = [
            f"{path} also holds what vLLM {version} may refuse (kept as is): {problem}"
            for problem in check_args(catalogue, rest)
        ]
        after = yaml.safe_dump(after_data, sort_keys=False)
        backup = await self._free_backup_name(action, node, path)
        return Plan(
            action=action,
            args=rendered,
            mutating=True,
            target=node,
            summary=f"engine.set_args on {node}: {', '.join(changes)}, then restart",
            detail=_file_change_detail(node, path, backup, before, after, engine.restart_command)
            + _wait_line(engine, wait),
            notes=(*notes, *unset_notes, *kept),
            state={
                "path": path,
                "backup": backup,
                "before": before,
                "after": after,
                **verify,
            },
        )

    async def _plan_restore_args(
        self, action: str, args: dict[str, Any], *, finish: bool = False
    ) -> Plan:
        node = args["node"]
        engine = self._engine(node)
        path = engine.args_file
        given = args.get("backup")
        backup = given or await self._newest_backup(node, path)
        chosen: dict[str, object] = {} if given else {"backup": backup}
        if posixpath.basename(backup) not in await self._names_beside(action, node, backup):
            raise BackupMissing(f"engine.restore_args on {node}: there is no {backup}")
        current = await self._read_text(action, node, path)
        restored = await self._read_text(action, node, backup)
        wait = args.setdefault("wait", DEFAULT_WAIT_S)
        rendered = {"node": node, "backup": backup, "wait": wait}
        if restored == current:
            if not finish:
                raise AlreadyDone(
                    f"engine.restore_args on {node}: {path} already matches {backup}; nothing to do"
                )
            plan = self._finish_engine_plan(
                action, rendered, f"{path} matches {backup} already", current, {"set": {}}, ()
            )
            return dataclasses.replace(plan, chosen=chosen)
        notes: list[str] = [f"restores {backup}"]
        try:
            version, catalogue, version_notes = await self._catalogue(node, engine)
        except ActionRefused as exc:
            # A rollback must not wait on the catalogue: the engine's health says the rest.
            notes.append(f"not checked against a vLLM catalogue: {exc}")
        else:
            notes += version_notes
            data = _args_mapping(restored, f"engine.restore_args on {node}: {backup}")
            notes += [
                f"{backup} holds what vLLM {version} may refuse: {p}"
                for p in check_args(catalogue, data)
            ]
        keep = await self._free_backup_name(action, node, path)
        return Plan(
            action=action,
            args=rendered,
            mutating=True,
            target=node,
            summary=f"engine.restore_args on {node}: put back {backup}, then restart",
            detail=_file_change_detail(node, path, keep, current, restored, engine.restart_command)
            + _wait_line(engine, wait),
            notes=tuple(notes),
            state={"path": path, "backup": keep, "before": current, "after": restored, "set": {}},
            chosen=chosen,
        )

    def _finish_engine_plan(
        self,
        action: str,
        rendered: dict[str, Any],
        said: str,
        current: str,
        verify: dict[str, object],
        notes: Sequence[str],
    ) -> Plan:
        """The rest of an engine change whose file landed: restart, then verify as it does."""
        node = str(rendered["node"])
        engine = self._engine(node)
        path = engine.args_file
        return Plan(
            action=action,
            args=rendered,
            mutating=True,
            target=node,
            summary=f"{action} on {node}: {said}, restart to run it",
            detail=f"{path} on {node} already holds the change; nothing is written\n"
            f"run on {node}: {engine.restart_command}\n"
            + _wait_line(engine, _seconds(rendered, "wait")),
            notes=tuple(notes),
            state={"path": path, "before": current, "after": current, **verify},
            finishes=True,
        )

    async def _change_engine_file(
        self, plan: Plan, on_output: OnOutput, deadline: Deadline
    ) -> Outcome:
        """engine.set_args and restore_args once planned: back up, write, restart, verify
        (a plan that finishes a change whose file landed writes nothing)."""
        node = str(plan.args["node"])
        engine = self._engine(node)
        path, after = str(plan.state["path"]), str(plan.state["after"])
        output = _Output(on_output)
        what = f"{plan.action} on {node}"
        facts: dict[str, object] = {}
        if plan.finishes:
            await self._refuse_if_changed(plan, node, node, path)
            what += f" ({path} held it already)"
        else:
            failed = await self._replace_with_backup(plan, node, node, path, output)
            if failed is not None:
                return failed
            facts["backup"] = plan.state["backup"]
        undo = self._undo_for(plan)
        failed = await self._run_step(what, node, engine.restart_command, output, deadline)
        if failed is not None:
            return dataclasses.replace(failed, facts=facts, undo=undo)
        wait = _budget(_seconds(plan.args, "wait"), deadline)
        output.line(f"waiting up to {wait:g}s for vLLM on {node} to serve")
        models, waited, why = await self._wait_serving(node, engine, wait)
        journal, journal_problem = await self._journal(node, engine.service)
        if models is None:
            tail = journal.splitlines()[-FAILURE_JOURNAL_LINES:] if journal else []
            # vLLM's own error says why, more than systemd's "Failed with result" after it.
            errors = [line for line in tail if " ERROR " in f" {line} "]
            last = (errors or tail)[-1].strip() if tail else journal_problem or "empty"
            output.line(f"not serving: {why}")
            return Outcome(
                False,
                f"vLLM on {node} did not become healthy in {wait:g}s; journal: {last}",
                output=output.text() + "\n" + "\n".join(tail),
                facts=facts,
                undo=undo,
            )
        started, started_note = parse_started_args(journal)
        if journal_problem:
            started_note = f"the journal could not be read: {journal_problem}"
        facts.update(
            started_args=started,
            served_model=models[0],
            revision=_revision(started, after),
        )
        said = f"vLLM on {node} serves {models[0]} after {waited:.1f}s"
        if started is None:
            said += f"; started args unknown ({started_note})"
            return Outcome(True, f"{what}: {said}", output=output.text(), facts=facts, undo=undo)
        wanted = plan.state.get("set") or {}
        assert isinstance(wanted, dict)
        catalogue = _catalogue_named(str(plan.state.get("catalogue", "")))
        missed = _not_taken(started, wanted, catalogue) if catalogue else []
        if missed:
            return Outcome(
                False,
                f"{what}: {said}, but it did not take {'; '.join(missed)}",
                output=output.text(),
                facts=facts,
                undo=undo,
            )
        if wanted:
            said += "; it started with the args set"
        return Outcome(True, f"{what}: {said}", output=output.text(), facts=facts, undo=undo)

    async def _catalogue(
        self, node: str, engine: EngineConfig
    ) -> tuple[str, Catalogue, tuple[str, ...]]:
        """The node's vLLM version, its catalogue and notes on how both were found."""
        notes: list[str] = []
        try:
            version = await fetch_version(self._http, node, await self._engine_url(node, engine))
        except EngineError as exc:
            # A crashed engine (the very one a bad argument took down) answers no /version:
            # vLLM's own start-up line in the journal still names it.
            journal, problem = await self._journal(node, engine.service)
            found = _VERSION_LINE_RE.findall(journal)
            if not found:
                raise ActionRefused(
                    f"vLLM on {node}: cannot tell its version ({exc}; the journal names none"
                    f"{': ' + problem if problem else ''}); nothing was changed"
                ) from exc
            version = found[-1]
            notes.append(f"vLLM version {version} read from the journal ({exc})")
        try:
            catalogue, note = catalogue_for(version)
        except ValueError as exc:
            raise ActionRefused(f"vLLM on {node}: {exc}; nothing was changed") from exc
        notes.append(note or f"checked against the vLLM {catalogue.version} argument catalogue")
        return version, catalogue, tuple(notes)

    async def _newest_backup(self, node: str, path: str) -> str:
        folder, name = posixpath.split(path)
        names = await self._names_beside("engine.restore_args", node, path)
        stamped = re.compile(re.escape(name) + r"\." + _STAMP_RE)
        backups = sorted(n for n in names if stamped.fullmatch(n))
        if not backups:
            raise ActionRefused(f"engine.restore_args on {node}: no backup of {path} beside it")
        return posixpath.join(folder, backups[-1])

    async def _engine_url(self, node: str, engine: EngineConfig) -> str:
        """Where the engine answers: its url, or through a local forward over the node's
        SSH connection for one bound to the node's localhost (``via_ssh``)."""
        if not engine.via_ssh:
            return engine.url
        try:
            return await self._ssh.forwarded_url(node, engine.url)
        except SshError as exc:
            raise EngineError(str(exc)) from exc

    async def _wait_serving(
        self, node: str, engine: EngineConfig, wait_s: float
    ) -> tuple[list[str] | None, float, str]:
        """Poll /health and /v1/models every HEALTH_POLL_S until both answer or ``wait_s`` is
        over: the models, the seconds waited, and the last reason it was not serving."""
        start = time.monotonic()
        why = ""
        while True:
            remaining = wait_s - (time.monotonic() - start)
            try:
                url = await self._engine_url(node, engine)
                models = await fetch_ready_models(
                    self._http, node, url, timeout_s=max(0.5, min(5.0, remaining))
                )
                return models, time.monotonic() - start, ""
            except EngineError as exc:
                why = str(exc)
            remaining = wait_s - (time.monotonic() - start)
            if remaining <= 0:
                return None, time.monotonic() - start, why
            await asyncio.sleep(min(HEALTH_POLL_S, remaining))

    async def _journal(self, node: str, service: str) -> tuple[str, str]:
        """The engine unit's last journal lines, or "" and why they could not be read."""
        command = f"journalctl -u {shlex.quote(service)} -n {JOURNAL_LINES} --no-pager"
        try:
            return await self._ssh.run(node, command, FILE_TIMEOUT_S), ""
        except SshError as exc:
            return "", str(exc)

    def _engine(self, node: str) -> EngineConfig:
        found = next((n for n in self.config.nodes if n.name == node), None)
        if found is None:
            known = [n.name for n in self.config.nodes]
            raise ActionRefused(f"unknown node {node!r} ({suggest(node, known)})")
        engine = found.engine
        if engine is None:
            raise ActionRefused(f"{node} has no engine configured")
        return engine

    # -- routing.set_weights --------------------------------------------------------------------

    async def _plan_set_weights(
        self, action: str, args: dict[str, Any], *, finish: bool = False
    ) -> Plan:
        router = self._router(args.get("router"))
        where = f"routing.set_weights on {router.name}"
        weights = {name: _weight(where, name, w) for name, w in args["weights"].items()}
        if not weights:
            raise ActionRefused(f"{where}: no weights given")
        host = self._router_host(router)
        before = await self._read_text(action, host, router.file)
        doc = _load_router_file(where, router, before)
        entries = _router_entries(where, router, doc)
        known = [name for name, _ in entries]
        for name in weights:
            if name not in known:
                raise ActionRefused(
                    f"{where}: unknown upstream {name!r} in {router.file} (it has: "
                    f"{', '.join(known) or 'none'})"
                )
            if router.upstreams and name not in router.upstreams:
                raise ActionRefused(
                    f"{where}: {name!r} is not one of the upstreams the config lets runbooks "
                    f"move traffic between ({', '.join(router.upstreams)})"
                )
        if router.route_key is not None:
            # Weights share traffic within one route (one model name): moving it between
            # routes would send clients to another model.
            routes = {_route_of(router, e) for n, e in entries if n in weights}
            if len(routes) > 1:
                shown = ", ".join(
                    f"{n} ({_route_of(router, e)})" for n, e in entries if n in weights
                )
                raise ActionRefused(
                    f"{where}: the upstreams are in different routes ({shown}); weights move "
                    "traffic within one route"
                )
        previous = {name: _current_weight(router, entries, name) for name in weights}
        new_doc = copy.deepcopy(doc)
        for entry_name, entry in _router_entries(where, router, new_doc):
            if entry_name in weights:
                _set_path(where, entry, router.weight_key, weights[entry_name])
        _check_weights(where, router, _router_entries(where, router, new_doc))
        changes = [
            f"{name} {_show(previous[name])} -> {_show(w)}"
            for name, w in weights.items()
            if previous[name] != w or type(previous[name]) is not type(w)
        ]
        rendered = {"router": router.name, "weights": weights}
        if not changes:
            said = ", ".join(f"{n}={_show(w)}" for n, w in weights.items())
            if not finish:
                raise AlreadyDone(f"{where}: already set ({said}); nothing to do")
            # The rest of a change whose file landed: reload, then verify as it does.
            return Plan(
                action=action,
                args=rendered,
                mutating=True,
                target=router.name,
                summary=f"{where}: {said} in the file already, reload to load it",
                detail=f"{router.file} on {host} already holds the change; nothing is written\n"
                f"run on {host}: {router.reload_command}\n",
                state={"host": host, "before": before, "previous": previous},
                finishes=True,
            )
        after = _edit_weights(router, before, weights)
        if after is not None:
            try:
                # The text edit stands only if it reads back as the intended document.
                if _load_router_file(where, router, after) != new_doc:
                    after = None
            except ActionRefused:
                after = None
        backup = await self._free_backup_name(action, host, router.file)
        notes = [
            f"entries named {name} had different weights; undo sets them all to "
            f"{_show(previous[name])}"
            for name in weights
            if len({json.dumps(_weight_of(router, e)) for n, e in entries if n == name}) > 1
        ]
        if after is None:
            after = _dump_router_file(router, new_doc)
            notes.append(
                f"{router.file} is written whole: its weights could not be edited in place "
                "(comments and formatting are not kept)"
            )
        return Plan(
            action=action,
            args=rendered,
            mutating=True,
            target=router.name,
            summary=f"{where}: {', '.join(changes)}, then reload",
            detail=_file_change_detail(
                host, router.file, backup, before, after, router.reload_command
            ),
            notes=tuple(notes),
            state={
                "host": host,
                "backup": backup,
                "before": before,
                "after": after,
                "previous": previous,
            },
        )

    async def _run_set_weights(
        self, plan: Plan, on_output: OnOutput, deadline: Deadline
    ) -> Outcome:
        router = self._router(str(plan.args["router"]))
        where = f"routing.set_weights on {router.name}"
        host = str(plan.state["host"])
        previous = plan.state["previous"]
        wanted = plan.args["weights"]
        assert isinstance(previous, dict) and isinstance(wanted, dict)
        output = _Output(on_output)
        facts: dict[str, object] = {"weights_before": dict(previous)}
        if plan.finishes:
            await self._refuse_if_changed(plan, router.name, host, router.file)
        else:
            failed = await self._replace_with_backup(plan, router.name, host, router.file, output)
            if failed is not None:
                return failed
            facts["backup"] = plan.state["backup"]
        undo = self._undo_for(plan)
        failed = await self._run_step(where, host, router.reload_command, output, deadline)
        if failed is not None:
            return dataclasses.replace(failed, facts=facts, undo=undo)
        try:
            text = await self._ssh.read_file(host, router.file, _budget(FILE_TIMEOUT_S, deadline))
            entries = _router_entries(
                where, router, _load_router_file(where, router, text.decode())
            )
            now = {name: _current_weight(router, entries, name) for name in wanted}
        except (SshError, ActionRefused, UnicodeDecodeError) as exc:
            return Outcome(
                False,
                f"{where}: reloaded, but the file could not be read back: {exc}",
                output=output.text(),
                facts=facts,
                undo=undo,
            )
        facts["weights_after"] = now
        if now != wanted:
            return Outcome(
                False,
                f"{where}: {router.file} holds {_weights_text(now)}, not {_weights_text(wanted)}",
                output=output.text(),
                facts=facts,
                undo=undo,
            )
        was = "in the file already" if plan.finishes else f"was {_weights_text(previous)}"
        return Outcome(
            True,
            f"{where}: {_weights_text(now)} ({was}), reloaded",
            output=output.text(),
            facts=facts,
            undo=undo,
        )

    def _router(self, name: object) -> RouterConfig:
        routers = self.config.routers
        if name is None:
            if len(routers) != 1:
                said = (
                    "none is configured"
                    if not routers
                    else ("name one: " + ", ".join(r.name for r in routers))
                )
                raise ActionRefused(f"routing.set_weights: which router? {said}")
            return routers[0]
        found = next((r for r in routers if r.name == name), None)
        if found is None:
            known = [r.name for r in routers]
            raise ActionRefused(f"unknown router {name!r} ({suggest(str(name), known)})")
        return found

    def _router_host(self, router: RouterConfig) -> str:
        """The pool's name for the router's host: its own target, or the node at that address
        (a gateway that is also a GPU node needs no second connection)."""
        if router.name in self._ssh.nodes:
            return router.name
        address = (router.host, router.port)
        for node in self.config.nodes:
            if (node.host, node.port) == address and node.name in self._ssh.nodes:
                return node.name
        raise ActionRefused(
            f"routing.set_weights on {router.name}: no SSH connection to {router.host}:"
            f"{router.port} (the pool has no target for it)"
        )

    # -- http.request ---------------------------------------------------------------------------

    async def _plan_http(self, action: str, args: dict[str, Any]) -> Plan:
        method, url = args["method"].strip().upper(), args["url"].strip()
        where = f"http.request {method} {url}"
        if method not in _METHODS:
            raise ActionRefused(
                f"http.request: unknown method {method!r} ({', '.join(sorted(_METHODS))})"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ActionRefused(f"http.request: {url!r} is not an http(s) URL")
        if looks_secret(url):
            raise ActionRefused(
                "http.request: the URL holds a credential; send it in a header named in header_env"
            )
        headers = {str(k): str(v) for k, v in args.get("headers", {}).items()}
        from_env = {str(k): str(v) for k, v in args.get("header_env", {}).items()}
        for header, variable in from_env.items():
            if not os.environ.get(variable):
                raise ActionRefused(
                    f"{where}: environment variable {variable} (for header {header}) is not set"
                )
        body = args.get("json")
        timeout = args.setdefault("timeout", DEFAULT_TIMEOUT_S[action])
        shown = {k: MASK if _secret_header(k, v) else v for k, v in headers.items()}
        shown.update(dict.fromkeys(from_env, MASK))
        shown_body = _masked(body) if body is not None else None
        lines = [f"{method} {url}", *(f"{k}: {v}" for k, v in shown.items())]
        if shown_body is not None:
            lines += ["", json.dumps(shown_body, indent=2, ensure_ascii=False)]
        rendered = {
            "method": method,
            "url": url,
            "headers": {k: v for k, v in shown.items() if k not in from_env},
            "header_env": from_env,
            "json": shown_body,
            "timeout": timeout,
        }
        return Plan(
            action=action,
            args=rendered,
            mutating=method not in SAFE_METHODS,
            target=parts.hostname,
            summary=f"http.request: {method} {url}",
            detail="\n".join(lines),
            state={"headers": headers, "header_env": from_env, "json": body},
        )

    async def _run_http(self, plan: Plan, on_output: OnOutput, deadline: Deadline) -> Outcome:
        method, url = str(plan.args["method"]), str(plan.args["url"])
        given = plan.state["headers"]
        assert isinstance(given, dict)
        headers = dict(given)
        secrets = [v for k, v in headers.items() if _secret_header(k, v)]
        env = plan.state["header_env"]
        assert isinstance(env, dict)
        for header, variable in env.items():
            value = os.environ.get(variable)
            if not value:
                raise ActionRefused(
                    f"http.request {method} {url} not run: environment variable {variable} "
                    f"(for header {header}) is not set"
                )
            headers[header] = value
            secrets.append(value)
        timeout = _budget(_seconds(plan.args, "timeout"), deadline)
        body = bytearray()
        try:
            async with self._http.stream(
                method, url, headers=headers, json=plan.state["json"], timeout=timeout
            ) as response:
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        break
        except httpx.HTTPError as exc:
            reason = _without(describe_http_error(exc), secrets)
            return Outcome(False, f"http.request: {method} {url}: {reason}")
        truncated = len(body) > MAX_BODY_BYTES
        text = bytes(body[:MAX_BODY_BYTES]).decode(response.encoding or "utf-8", errors="replace")
        if truncated:
            text += f"\n[body cut at {MAX_BODY_BYTES} bytes]"
        status = response.status_code
        summary = f"http.request: {method} {url}: HTTP {status} {response.reason_phrase}".rstrip()
        return Outcome(
            200 <= status < 300,
            summary + (" (body cut at 64 KiB)" if truncated else ""),
            output=_without(text, secrets),
            facts={"status": status},
        )

    # -- alert.silence, alert.expire_silence ----------------------------------------------------

    def _alertmanager(self, action: str, deadline: Deadline = None) -> AlertmanagerClient:
        am = self.config.alertmanager
        if am is None:
            raise ActionRefused(
                f"{action}: the config has no alertmanager: section (expected alertmanager: "
                "{url: ...})"
            )
        client = AlertmanagerClient(
            self._http, am.url, timeout_s=_budget(am.timeout_s, deadline), header_env=am.header_env
        )
        try:
            client.headers()  # a header's variable unset: refused before anything is sent
        except AlertmanagerError as exc:
            raise ActionRefused(f"{action} not run: {exc}") from None
        return client

    def _request_lines(self, client: AlertmanagerClient, method: str, path: str) -> list[str]:
        """The request as the plan shows it: header values never (they are secrets)."""
        return [f"{method} {client.endpoint(path)}", *(f"{h}: {MASK}" for h in client.header_env)]

    async def _plan_silence(self, action: str, args: dict[str, Any]) -> Plan:
        client = self._alertmanager(action)
        matchers = _silence_matchers(args["matchers"])
        duration_s, comment = args["duration"], args["comment"]
        now = self._clock()
        body = silence_body(matchers, now, now + duration_s, operator(), comment)
        lines = self._request_lines(client, "POST", "/api/v2/silences")
        lines += ["Content-Type: application/json", "", json.dumps(body, indent=2)]
        shown = ", ".join(str(m) for m in matchers)
        return Plan(
            action=action,
            args={"matchers": args["matchers"], "duration": duration_s, "comment": comment},
            mutating=True,
            target=urlsplit(client.url).hostname,
            summary=f"alert.silence: {shown} for {_duration_text(duration_s)} in {client.name}",
            detail="\n".join(lines),
            notes=(
                "startsAt and endsAt are taken again when it runs: the silence lasts "
                f"{_duration_text(duration_s)} from then",
            ),
            state={"matchers": matchers},
        )

    async def _run_silence(self, plan: Plan, on_output: OnOutput, deadline: Deadline) -> Outcome:
        client = self._alertmanager(plan.action, deadline)
        matchers = plan.state["matchers"]
        assert isinstance(matchers, tuple)
        duration_s = _seconds(plan.args, "duration")
        now = self._clock()
        body = silence_body(matchers, now, now + duration_s, operator(), str(plan.args["comment"]))
        output = _Output(on_output)
        try:
            silence_id = await client.create_silence(body)
        except AlertmanagerError as exc:
            # Without an id there is nothing to expire; a timeout may still have made one.
            maybe = "" if exc.status is not None else " (it may exist: see its silences)"
            return Outcome(False, f"alert.silence: {exc}{maybe}", output=output.text())
        output.line(f"silence {silence_id} created in {client.name}")
        facts: dict[str, object] = {"silence_id": silence_id, "alertmanager": client.name}
        undo = {"silence_id": silence_id}
        try:
            silence = await client.silence(silence_id)
        except AlertmanagerError as exc:
            return Outcome(
                False,
                f"alert.silence: silence {silence_id} created, not verified: {exc}",
                output=output.text(),
                facts=facts,
                undo=undo,
            )
        output.line(f"silence {silence_id}: {silence.state} until {silence.ends_at}")
        facts |= {"ends_at": silence.ends_at, "matchers": [str(m) for m in silence.matchers]}
        if silence.state != "active":
            return Outcome(
                False,
                f"alert.silence: silence {silence_id} is {silence.state}, not active",
                output=output.text(),
                facts=facts,
                undo=undo,
            )
        shown = ", ".join(str(m) for m in silence.matchers)
        return Outcome(
            True,
            f"alert.silence: silence {silence_id} active until {silence.ends_at}: {shown}",
            output=output.text(),
            facts=facts,
            undo=undo,
        )

    async def _plan_expire_silence(self, action: str, args: dict[str, Any]) -> Plan:
        client = self._alertmanager(action)
        silence_id = args["silence_id"].strip()
        try:
            silence = await client.silence(silence_id)
        except AlertmanagerError as exc:
            if exc.status in (404, 422):  # none such (422: not even a silence id)
                raise AlreadyDone(
                    f"{action}: no silence {silence_id} in {client.name}; nothing to expire"
                ) from None
            raise ActionRefused(f"{action}: {exc}; nothing was changed") from None
        if silence.state == "expired":
            raise AlreadyDone(f"{action}: silence {silence_id} is expired already; nothing to do")
        shown = ", ".join(str(m) for m in silence.matchers)
        return Plan(
            action=action,
            args={"silence_id": silence_id},
            mutating=True,
            target=urlsplit(client.url).hostname,
            summary=f"alert.expire_silence: {silence_id} ({shown}) in {client.name}",
            detail="\n".join(
                self._request_lines(client, "DELETE", client.silence_path(silence_id))
            ),
            notes=(
                f"silence {silence_id} is {silence.state} until {silence.ends_at}, created by "
                f"{silence.created_by}: {_one_line(silence.comment)}",
            ),
        )

    async def _run_expire_silence(
        self, plan: Plan, on_output: OnOutput, deadline: Deadline
    ) -> Outcome:
        client = self._alertmanager(plan.action, deadline)
        silence_id = str(plan.args["silence_id"])
        facts = {"silence_id": silence_id, "alertmanager": client.name}
        output = _Output(on_output)
        try:
            await client.expire_silence(silence_id)
            silence = await client.silence(silence_id)
        except AlertmanagerError as exc:
            return Outcome(False, f"alert.expire_silence: {exc}", facts=facts)
        output.line(f"silence {silence_id}: {silence.state} since {silence.ends_at}")
        ok = silence.state == "expired"
        said = "expired" if ok else f"is {silence.state}, not expired"
        return Outcome(
            ok,
            f"alert.expire_silence: silence {silence_id} {said} in {client.name}",
            output=output.text(),
            facts=facts | {"ends_at": silence.ends_at},
        )

    # -- incident.note --------------------------------------------------------------------------

    async def _plan_note(self, action: str, args: dict[str, Any]) -> Plan:
        text = args["text"]
        notes = () if self._note else ("no incident log is attached: the note will not be kept",)
        return Plan(
            action=action,
            args=args,
            mutating=False,
            target=None,
            summary=f"incident.note: {_one_line(text)}",
            detail=text,
            notes=notes,
        )

    async def _run_note(self, plan: Plan, on_output: OnOutput, deadline: Deadline) -> Outcome:
        if self._note is None:
            return Outcome(False, "incident.note: no incident log to note in")
        await self._note(plan.detail)
        return Outcome(True, f"incident.note: noted: {_one_line(plan.detail)}")

    # -- shared steps ---------------------------------------------------------------------------

    async def _read_text(self, action: str, host: str, path: str) -> str:
        try:
            data = await self._ssh.read_file(host, path, FILE_TIMEOUT_S)
        except SshError as exc:
            raise ActionRefused(f"{action}: {exc}; nothing was changed") from exc
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise ActionRefused(f"{action}: {host}:{path} is not UTF-8 text") from exc

    async def _replace_with_backup(
        self, plan: Plan, target: str, host: str, path: str, output: _Output
    ) -> Outcome | None:
        """Keep the file as it was under the plan's backup name, then replace it atomically.
        None when done; else the failed Outcome (without undo when the file is known to be
        as it was). Refuses, changing nothing, when the file or the backup name moved on
        since the plan."""
        what = f"{plan.action} on {target}"
        before, after, backup = (str(plan.state[k]) for k in ("before", "after", "backup"))
        await self._refuse_if_changed(plan, target, host, path)
        if posixpath.basename(backup) in await self._names_beside(plan.action, host, path):
            raise ActionRefused(f"{what} not run: {backup} exists already; plan it again")
        try:
            await self._ssh.replace_file(
                host, backup, before.encode(), FILE_TIMEOUT_S, mode_of=path
            )
        except SshError as exc:
            return Outcome(
                False, f"{what}: could not keep the current file: {exc}; nothing changed"
            )
        output.line(f"kept {path} as {backup}")
        try:
            await self._ssh.replace_file(host, path, after.encode(), FILE_TIMEOUT_S)
        except SshError as exc:
            # The rename is atomic: the file is either as it was or new. Read which.
            try:
                now = await self._ssh.read_file(host, path, FILE_TIMEOUT_S)
            except SshError:
                now = None
            unchanged = now == before.encode()
            undo = None if unchanged else self._undo_for(plan)
            state = "unchanged" if unchanged else "maybe changed"
            return Outcome(False, f"{what}: could not write {path} ({state}): {exc}", undo=undo)
        output.line(f"wrote {path}")
        return None

    async def _refuse_if_changed(self, plan: Plan, target: str, host: str, path: str) -> None:
        """Refuse, changing nothing, when the file is no longer what the plan read."""
        if await self._read_text(plan.action, host, path) != plan.state["before"]:
            raise ActionRefused(
                f"{plan.action} on {target} not run: {path} changed since the plan was made; "
                "plan it again"
            )

    def _undo_for(self, plan: Plan) -> dict[str, object] | None:
        """The arguments of the compensating call, should the plan's change have been made
        (known when it is planned: the backup's name, the previous weights)."""
        if plan.finishes:
            return None  # writes nothing: the undo of the attempt that wrote the file stands
        if plan.action == "engine.set_args":
            return {"node": plan.args["node"], "backup": plan.state["backup"]}
        if plan.action == "routing.set_weights":
            previous = plan.state["previous"]
            assert isinstance(previous, dict)
            return {"router": plan.args["router"], "weights": dict(previous)}
        return None  # restore_args is not rolled back; the others change no file

    async def _names_beside(self, action: str, host: str, path: str) -> set[str]:
        try:
            return set(
                await self._ssh.listdir(host, posixpath.dirname(path) or ".", FILE_TIMEOUT_S)
            )
        except SshError as exc:
            raise ActionRefused(f"{action}: {exc}; nothing was changed") from exc

    async def _free_backup_name(self, action: str, host: str, path: str) -> str:
        """``PATH.<UTC stamp>`` of now that no earlier backup holds (a later second if need
        be): named when planned, so that the plan says it and its undo can name it."""
        taken = await self._names_beside(action, host, path)
        at = int(self._clock())
        while True:
            candidate = f"{path}.{time.strftime(STAMP_FORMAT, time.gmtime(at))}"
            if posixpath.basename(candidate) not in taken:
                return candidate
            at += 1

    async def _run_step(
        self, what: str, host: str, command: str, output: _Output, deadline: Deadline
    ) -> Outcome | None:
        """Run a restart or reload command, streaming it: None when it exited 0."""
        output.line(f"$ {command}")
        timeout = _budget(RESTART_TIMEOUT_S, deadline)
        try:
            status, _, stderr = await self._ssh.stream(host, command, output.line, timeout)
        except SshError as exc:
            return Outcome(False, f"{what}: {exc}; the file is changed", output=output.text())
        if status == 0:
            return None
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        return Outcome(
            False,
            f"{what}: `{_one_line(command)}` exited {status}: {last}; the file is changed",
            exit_status=status,
            output=output.text(),
        )


# --- node.inspect: what counts as read-only ----------------------------------------------------


def read_only_problem(command: str) -> str | None:
    """Why ``command`` is not one plain read-only command node.inspect may run; None if it is."""
    if "\n" in command or "\r" in command:
        return "it spans more than one line"
    shell = sorted({c for c in command if c in _SHELL_CHARS})
    if shell:
        return f"it holds shell syntax ({' '.join(shell)}): only one plain command is run"
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"it cannot be read as one command ({exc})"
    sudo = words[:1] == ["sudo"]
    if sudo:
        words = words[1:]
        if words[:1] == ["-n"]:
            words = words[1:]
        if words[:1] and words[0].startswith("-"):
            return f"sudo {words[0]}: only sudo -n is accepted"
    if not words:
        return "it names no program"
    program, rest = words[0], words[1:]
    if "/" in program:
        return f"{program}: name the program, not a path"
    check = _INSPECTABLE.get(program)
    if check is None:
        return f"{program} is not one of {', '.join(sorted(_INSPECTABLE))}"
    if sudo and program in _FILE_READERS:
        # What it prints is kept in the incident log: root may read keys and shadow files.
        return f"sudo {program}: files are read as the SSH user, not as root"
    if program in _FILE_READERS:
        # The node's shell expands these before the program sees a name: a pattern could
        # name what the private-path check below would refuse (~/.s?h, /etc/sh*dow).
        patterns = [w for w in rest if _GLOB_CHARS & set(w)]
        if patterns:
            return f"{program} {patterns[0]}: name files exactly, without * ? [ {{ or ~"
        if any(_private_path(w) for w in rest):
            return (
                f"{program}: private keys, password files, a process's environment and paths "
                "through .. stay out of the incident log"
            )
    return check(rest)


_FILE_READERS = frozenset({"cat", "head", "tail", "ls"})
_GLOB_CHARS = frozenset("*?[{~")


# /proc entries that reach other files or hold a process's secrets: its root and working
# directory (a way around any path check), its environment, memory and open files.
_PROC_PRIVATE_RE = re.compile(
    r"/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/(?:root|cwd|environ|mem|fd|map_files)(?:/|$)"
)


def _private_path(word: str) -> bool:
    if word.startswith("-"):
        return False  # an option, not a file
    if ".." in word.split("/"):
        return True  # ../../etc/shadow: where it leads depends on the directory it runs in
    path = posixpath.normpath(word)  # /etc/./shadow is /etc/shadow
    # POSIX lets normpath keep exactly two leading slashes (implementation-defined), but
    # Linux reads //etc/shadow as /etc/shadow: the checks below see it as the kernel does.
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if _PROC_PRIVATE_RE.match(path):
        return True
    return ".ssh" in path or path.startswith(("/etc/shadow", "/etc/gshadow", "/etc/sudoers"))


def _any_args(args: Sequence[str]) -> str | None:
    """cat, head, ls, df, free and uptime have no option that writes or follows."""
    return None


def _systemctl(args: Sequence[str]) -> str | None:
    # Options that take a value would hide the verb after them (-p status restart): only
    # options known to take none are let through, and a word after the verb is a unit.
    options = [a for a in args if a.startswith("-")]
    unknown = [a for a in options if a not in _SYSTEMCTL_FLAGS]
    if unknown:
        return f"systemctl {unknown[0]} is not one of {', '.join(sorted(_SYSTEMCTL_FLAGS))}"
    words = [a for a in args if not a.startswith("-")]
    verb = words[0] if words else "list-units"
    if verb not in _SYSTEMCTL_VERBS:
        return f"systemctl {verb} is not one of {', '.join(sorted(_SYSTEMCTL_VERBS))}"
    return None


def _nvidia_smi(args: Sequence[str]) -> str | None:
    if args[:1] == ["topo"]:
        extra = [a for a in args[1:] if a not in ("-m", "--matrix")]
        return f"nvidia-smi topo {extra[0]} is not a query (only topo -m)" if extra else None
    words = iter(args)
    for word in words:
        if word in _SMI_WITH_VALUE:
            next(words, None)
        elif word not in _SMI_FLAGS and not word.startswith(_SMI_PREFIXES):
            return f"nvidia-smi {word} is not a query option"
    return None


def _tail(args: Sequence[str]) -> str | None:
    for word in args:
        # "--f" is enough for tail to read --follow: any long option starting so follows.
        follows = word.startswith(("--f", "--r", "--p", "--s")) or (
            word.startswith("-") and not word.startswith("--") and ("f" in word or "F" in word)
        )
        if follows:
            return f"tail {word} follows the file and never ends"
    return None


def _journalctl(args: Sequence[str]) -> str | None:
    # Read options only, spelled out: journalctl takes abbreviations of its long options
    # (--rot is --rotate), so a list of what writes cannot be complete.
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        attached = not word.startswith("--") and len(word) > 2  # -n15
        name = word[:2] if attached else word.split("=", 1)[0]
        separate = not attached and "=" not in word
        if name in _JOURNALCTL_OPTIONAL_VALUE:
            # -n and -b take the next word only if it reads as their value (a count, a
            # boot); else journalctl reads it as an option of its own (-n --vacuum-size=1K).
            if separate and i < len(args) and _JOURNALCTL_OPTIONAL_VALUE[name].fullmatch(args[i]):
                i += 1
        elif name in _JOURNALCTL_WITH_VALUE:
            i += separate
        elif name not in _JOURNALCTL_FLAGS or attached:
            return f"journalctl {word} is not one of its read options (-u, -n, --since, ...)"
    return None


def _hostname(args: Sequence[str]) -> str | None:
    for word in args:
        if word not in _HOSTNAME_QUERIES:
            return f"hostname {word} may set the host name"
    return None


_INSPECTABLE: dict[str, Callable[[Sequence[str]], str | None]] = {
    "journalctl": _journalctl,
    "systemctl": _systemctl,
    "nvidia-smi": _nvidia_smi,
    "cat": _any_args,
    "tail": _tail,
    "head": _any_args,
    "uptime": _any_args,
    "free": _any_args,
    "df": _any_args,
    "ls": _any_args,
    "hostname": _hostname,
}


# --- engine argument files ---------------------------------------------------------------------


def parse_started_args(journal: str) -> tuple[dict[str, object] | None, str]:
    """The arguments vLLM logged at its latest start (``non-default args: {...}``, a Python
    dict repr), or None and why not."""
    lines = journal.splitlines()
    starts = [i for i, line in enumerate(lines) if _VERSION_LINE_RE.search(line)]
    # Only the latest start counts: an older line would describe the engine before the change.
    latest = lines[starts[-1] :] if starts else lines
    for line in reversed(latest):
        at = line.find(_NON_DEFAULT)
        if at < 0:
            continue
        try:
            value = ast.literal_eval(line[at + len(_NON_DEFAULT) :].strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None, "its `non-default args:` line is not a plain dict"
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}, ""
        return None, "its `non-default args:` line is not a dict"
    return None, "the journal has no `non-default args:` line for this start"


def _args_mapping(text: str, where: str) -> dict[Any, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ActionRefused(f"{where} is not YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ActionRefused(f"{where} is not a YAML mapping of flags to values")
    return data


def _apply_args(
    data: dict[Any, Any],
    wanted: Mapping[str, object],
    unset: Sequence[str],
    catalogue: Catalogue,
) -> tuple[dict[Any, Any], list[str], list[str]]:
    """The file's mapping with ``wanted`` set and ``unset`` removed, keys in their order and
    spelled as the file spells them; the changes, and notes on unsets that found nothing."""
    out = dict(data)
    changes: list[str] = []
    for key, value in wanted.items():
        match = catalogue.lookup(key)
        assert match is not None  # resolve_args refused anything else
        same = [k for k in out if _same_argument(catalogue, str(k), match)]
        if not same:
            out[key] = value
            changes.append(f"{key} (unset) -> {_show(value)}")
            continue
        first = same[0]
        held = catalogue.lookup(str(first))
        # --disable-X: true written over an existing --enable-X key is enable-X: false.
        new = (not value) if held is not None and held.negative != match.negative else value
        for duplicate in same[1:]:
            changes.append(f"{duplicate} {_show(out.pop(duplicate))} -> (unset, a duplicate)")
        if out[first] != new or type(out[first]) is not type(new):
            changes.append(f"{first} {_show(out[first])} -> {_show(new)}")
            out[first] = new
    notes: list[str] = []
    for name in unset:
        found = catalogue.lookup(name)
        keys = [
            k
            for k in out
            if (found and _same_argument(catalogue, str(k), found)) or normal_key(str(k)) == name
        ]
        for k in keys:
            changes.append(f"{k} {_show(out.pop(k))} -> (unset)")
        if not keys:
            notes.append(f"{name} is not in the file: nothing to unset")
    return out, changes, notes


def _same_argument(catalogue: Catalogue, key: str, match: Match) -> bool:
    held = catalogue.lookup(key)
    if held is not None:
        return held.argument.dest == match.argument.dest
    return normal_key(key) == match.key


def _not_taken(
    started: Mapping[str, object], wanted: Mapping[str, object], catalogue: Catalogue
) -> list[str]:
    """The set values the engine logged otherwise. A dest it did not log is at its default,
    and one logged in another type (32k as 32000) cannot be compared: neither is a miss."""
    missed = []
    for key, value in wanted.items():
        match = catalogue.lookup(key)
        if match is None or match.argument.dest not in started:
            continue
        expected = (not value) if match.negative else value
        got = started[match.argument.dest]
        if _comparable(got, expected) and got != expected:
            missed.append(f"{key}={_show(expected)} (it started with {_show(got)})")
    return missed


def _comparable(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if _is_number(a) and _is_number(b):
        return True
    return type(a) is type(b)


def _catalogue_named(version: str) -> Catalogue | None:
    if not version:
        return None
    catalogue, _ = catalogue_for(version)
    return catalogue


def _revision(started: Mapping[str, object] | None, args_text: str) -> object:
    """The model revision the engine runs: as it logged it, else as its file names it."""
    if started and started.get("revision"):
        return started["revision"]
    try:
        data = yaml.safe_load(args_text)
    except yaml.YAMLError:
        return None
    return data.get("revision") if isinstance(data, dict) else None


def _wait_line(engine: EngineConfig, wait_s: float) -> str:
    return (
        f"then wait up to {wait_s:g}s for GET {engine.url}/health"
        f"{' (through an SSH forward)' if engine.via_ssh else ''} to answer 200 and "
        "/v1/models to list a model\n"
    )


def _file_change_detail(
    host: str, path: str, backup: str, before: str, after: str, command: str
) -> str:
    """Exactly what a file change runs: the backup, the diff, the command after it."""
    name = path.lstrip("/")
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"a/{name}",
            tofile=f"b/{name}",
        )
    )
    if not diff.endswith("\n"):
        diff += "\n\\ No newline at end of file\n"
    return f"keep {path} on {host} as {backup}, then write:\n{diff}then run on {host}: {command}\n"


# --- router files ------------------------------------------------------------------------------


def _load_router_file(where: str, router: RouterConfig, text: str) -> object:
    try:
        return json.loads(text) if router.format == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        problem = " ".join(str(exc).split())
        raise ActionRefused(f"{where}: {router.file} is not {router.format}: {problem}") from exc


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _edit_weights(router: RouterConfig, text: str, weights: Mapping[str, object]) -> str | None:
    """The router file with only its weights changed, edited as text where each weight's
    scalar is (located through PyYAML's node marks): comments, quoting, key order and every
    other line stay as the file's owner wrote them, and the diff shows the weights alone.
    A weight not in the file yet is added to its mapping, one set to None removed. None when
    the file's shape is beyond an edit in place (no parent mapping, a weight that is not a
    plain scalar, ...); the caller also checks that the result reads back as intended."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    entries = _node_at(root, router.list_path)
    if not isinstance(entries, yaml.SequenceNode):
        return None
    *parents, last = router.weight_key.split(".")
    edits: list[tuple[int, int, str]] = []
    for entry in entries.value:
        name = _node_at(entry, router.name_key)
        if not isinstance(name, yaml.ScalarNode) or name.value not in weights:
            continue
        parent = _node_at(entry, ".".join(parents)) if parents else entry
        if not isinstance(parent, yaml.MappingNode):
            return None
        edit = _weight_edit(text, parent, last, weights[name.value], router.format == "json")
        if edit is None:
            return None
        edits.append(edit)
    for start, end, new in sorted(edits, reverse=True):  # from the end: marks stay right
        text = text[:start] + new + text[end:]
    return text


def _node_at(node: yaml.Node | None, path: str) -> yaml.Node | None:
    for part in path.split("."):
        if isinstance(node, yaml.MappingNode):
            node = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            return None
    return node


def _weight_edit(
    text: str, parent: yaml.MappingNode, key: str, weight: object, json_style: bool
) -> tuple[int, int, str] | None:
    """(start, end, replacement) that sets ``key`` of the mapping to ``weight`` (None: removes
    it), or None where that cannot be done in place."""
    pairs = parent.value
    at = next(
        (i for i, (k, _) in enumerate(pairs) if isinstance(k, yaml.ScalarNode) and k.value == key),
        None,
    )
    value = json.dumps(weight)  # a number: the same text in YAML and JSON
    if at is not None:
        k, v = pairs[at]
        if weight is not None:
            if not isinstance(v, yaml.ScalarNode):
                return None
            return v.start_mark.index, v.end_mark.index, value
        if parent.flow_style:  # {a: 1, weight: 2} -> {a: 1}
            if at > 0:
                return pairs[at - 1][1].end_mark.index, v.end_mark.index, ""
            end = pairs[1][0].start_mark.index if len(pairs) > 1 else v.end_mark.index
            return k.start_mark.index, end, ""
        # A block mapping: the key's whole line, when nothing else is on it.
        line_start = text.rfind("\n", 0, k.start_mark.index) + 1
        line_end = text.find("\n", v.end_mark.index)
        line_end = len(text) if line_end < 0 else line_end + 1
        rest = text[v.end_mark.index : line_end].strip()
        if text[line_start : k.start_mark.index].strip() or (rest and not rest.startswith("#")):
            return None
        return line_start, line_end, ""
    if weight is None:
        return 0, 0, ""  # not there: nothing to remove
    name = key if _PLAIN_KEY.fullmatch(key) and not json_style else json.dumps(key)
    if parent.flow_style:
        if pairs:  # {model: x} -> {model: x, weight: 100}
            last_key, last_value = pairs[-1]
            end = last_value.end_mark.index
            if "\n" in text[end : parent.end_mark.index]:  # one pair a line (JSON's indent)
                return end, end, f",\n{' ' * last_key.start_mark.column}{name}: {value}"
            return end, end, f", {name}: {value}"
        close = parent.end_mark.index - 1
        return (close, close, f"{name}: {value}") if text[close : close + 1] == "}" else None
    if not pairs:
        return None
    # A block mapping: a line of its own after the mapping's last line, at its keys' column.
    end = pairs[-1][1].end_mark.index
    if end > 0 and text[end - 1] == "\n":
        return end, end, " " * pairs[0][0].start_mark.column + f"{name}: {value}\n"
    line_end = text.find("\n", end)
    if line_end < 0:
        return len(text), len(text), "\n" + " " * pairs[0][0].start_mark.column + f"{name}: {value}"
    return line_end + 1, line_end + 1, " " * pairs[0][0].start_mark.column + f"{name}: {value}\n"


def _dump_router_file(router: RouterConfig, doc: object) -> str:
    if router.format == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _router_entries(where: str, router: RouterConfig, doc: object) -> list[tuple[str, dict]]:
    """(name, entry) of every entry of the list at ``list_path`` that has a name."""
    entries = _get_path(where, doc, router.list_path)
    if not isinstance(entries, list):
        raise ActionRefused(f"{where}: {router.list_path} in {router.file} is not a list")
    found = []
    for entry in entries:
        if isinstance(entry, dict):
            try:
                name = _get_path(where, entry, router.name_key)
            except ActionRefused:
                continue  # an entry without a name is no upstream
            found.append((str(name), entry))
    return found


def _get_path(where: str, doc: object, path: str) -> object:
    at: object = doc
    for part in path.split("."):
        if isinstance(at, list) and part.isdigit() and int(part) < len(at):
            at = at[int(part)]
        elif isinstance(at, dict) and part in at:
            at = at[part]
        else:
            raise ActionRefused(f"{where}: no {path} (stopped at {part!r})")
    return at


def _set_path(where: str, entry: dict, path: str, value: object) -> None:
    """Set (or, for None, remove) the value at a dotted key path, making the mappings on the
    way when they are absent."""
    *parents, last = path.split(".")
    at = entry
    for part in parents:
        child = at.setdefault(part, {})
        if not isinstance(child, dict):
            raise ActionRefused(f"{where}: {path}: {part} is not a mapping")
        at = child
    if value is None:
        at.pop(last, None)
    else:
        at[last] = value


def _weight_of(router: RouterConfig, entry: dict) -> object:
    try:
        return _get_path("", entry, router.weight_key)
    except ActionRefused:
        return None


def _current_weight(router: RouterConfig, entries: list[tuple[str, dict]], name: str) -> object:
    return next(_weight_of(router, e) for n, e in entries if n == name)


def _route_of(router: RouterConfig, entry: dict) -> str:
    assert router.route_key is not None
    try:
        return str(_get_path("", entry, router.route_key))
    except ActionRefused:
        return "?"


def _check_weights(where: str, router: RouterConfig, entries: list[tuple[str, dict]]) -> None:
    groups: dict[str, list[tuple[str, object]]] = {}
    for name, entry in entries:
        # Without a route key the routes are not known: the whole list is one group.
        route = _route_of(router, entry) if router.route_key is not None else ""
        groups.setdefault(route, []).append((name, _weight_of(router, entry)))
    for route, weights in groups.items():
        numbers = []
        for name, weight in weights:
            if weight is None:
                continue  # the router's default weight
            number = _number(weight)
            if number is None or not 0 <= number < math.inf:
                raise ActionRefused(
                    f"{where}: {name} would have weight {weight!r}, not a number >= 0"
                )
            numbers.append(number)
        if weights and len(numbers) == len(weights) and sum(numbers) <= 0:
            what = f"route {route}" if route else "every upstream"
            raise ActionRefused(f"{where}: every weight of {what} would be 0: no traffic")


def _weight(where: str, name: str, value: object) -> float | int | None:
    """A weight as given: a number >= 0, numeric text, or null (remove the key, which is how
    the undo of a weight that was never written puts it back)."""
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value) if value.strip().isdigit() else float(value)
    number = _number(value)
    if number is None or not 0 <= number < math.inf:
        raise ActionRefused(f"{where}: weight of {name} is {given!r}, not a number >= 0")
    return value if isinstance(value, int) else number


def _weights_text(weights: Mapping[str, object]) -> str:
    return ", ".join(f"{n}={_show(w)}" for n, w in weights.items())


# --- HTTP --------------------------------------------------------------------------------------


def _secret_header(name: str, value: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or secret_key_name(lowered) or looks_secret(value)


def _without(text: str, secrets: Sequence[str]) -> str:
    """``text`` with the exact secrets this call sent masked (an echoing server must not put
    them in the outcome); shape-based redaction is the runner's, on everything it keeps."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def _masked(value: object) -> object:
    """A JSON body with every value under a secret-named key, or shaped like a key, masked."""
    if isinstance(value, Mapping):
        return {
            k: MASK if secret_key_name(str(k)) and v is not None else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, str) and looks_secret(value):
        return MASK
    return value


# --- alert.silence -----------------------------------------------------------------------------

_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _silence_matchers(given: Mapping[str, object]) -> tuple[Matcher, ...]:
    """alert.silence's ``matchers:`` as Alertmanager matchers. A value is the label's value;
    ``~REGEX`` (or ``{regex: REGEX}``) a regular expression it fully matches; ``{value: TEXT}``
    a literal (one that starts with ~); ``equal: false`` beside ``value`` or ``regex``
    negates it. Alertmanager refuses a silence all of whose matchers match the empty string
    (it would silence everything): refused here too, before anything is sent."""
    where = "alert.silence: matchers"
    if not given:
        raise ActionRefused(f"{where}: none given (expected label: value pairs)")
    found = []
    for name, spec in given.items():
        if not _LABEL_NAME_RE.fullmatch(name):
            raise ActionRefused(f"{where}: {name!r} is not a label name")
        regex, equal = False, True
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"value", "regex", "equal"})
            kinds = [k for k in ("value", "regex") if k in spec]
            if unknown or len(kinds) != 1:
                raise ActionRefused(
                    f"{where}: {name}: expected {{value: TEXT}} or {{regex: REGEX}}, with "
                    f"equal: false to negate, got {spec!r}"
                )
            regex, value = kinds[0] == "regex", spec[kinds[0]]
            equal = spec.get("equal", True)
            if not isinstance(equal, bool):
                raise ActionRefused(f"{where}: {name}: equal is true or false, got {equal!r}")
        elif isinstance(spec, str) and spec.startswith("~"):
            regex, value = True, spec[1:]
        else:
            value = spec
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ActionRefused(f"{where}: {name}: expected a string, got {value!r}")
        value = str(value)
        if regex:
            try:
                re.compile(value)
            except re.error as exc:
                raise ActionRefused(f"{where}: {name}: {value!r} is not a regex: {exc}") from None
        found.append(Matcher(name, value, is_regex=regex, is_equal=equal))
    if all(_matches_empty(m) for m in found):
        raise ActionRefused(
            f"{where}: every matcher matches an empty label, so the silence would silence "
            "every alert (expected at least one that names a value)"
        )
    return tuple(found)


def _matches_empty(matcher: Matcher) -> bool:
    """Whether the matcher matches an alert without the label (Alertmanager's own check)."""
    if matcher.is_regex:
        matches = re.fullmatch(matcher.value, "") is not None
    else:
        matches = matcher.value == ""
    return matches == matcher.is_equal


def _duration_text(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# --- small helpers -----------------------------------------------------------------------------


class _Output:
    """A call's output lines: handed on as they come, and the newest MAX_OUTPUT_CHARS kept."""

    def __init__(self, on_output: OnOutput) -> None:
        self._on_output = on_output
        self._lines: deque[str] = deque()
        self._size = 0
        self._dropped = 0

    def line(self, text: str) -> None:
        self._on_output(text)
        self._lines.append(text)
        self._size += len(text) + 1
        while self._size > MAX_OUTPUT_CHARS and len(self._lines) > 1:
            self._size -= len(self._lines.popleft()) + 1
            self._dropped += 1

    def text(self) -> str:
        head = [f"[{self._dropped} earlier lines dropped]"] if self._dropped else []
        return "\n".join([*head, *self._lines])


def _spec(action: str) -> ActionSpec:
    spec = ACTION_SPECS.get(action)
    if spec is None:
        raise ActionRefused(f"unknown action {action!r} ({suggest(action, ACTION_SPECS)})")
    return spec


def _budget(default_s: float, deadline: Deadline) -> float:
    """A step's timeout: its own, cut to what is left of the call's (never under 1 s, so a
    late step still gets to say why it failed)."""
    if deadline is None:
        return default_s
    # Tenths: said back to the engineer ("healthy in 59.9s"), not 59.9663s.
    return max(1.0, round(min(default_s, deadline - time.monotonic()), 1))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> float | None:
    """``value`` as a float when it is an int or a float (a bool is neither here)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _seconds(args: Mapping[str, object], key: str) -> float:
    """A duration argument of a plan (checked and made a float when it was planned)."""
    value = args[key]
    assert isinstance(value, float)
    return value


def _show(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 120 else line[:117] + "..."
