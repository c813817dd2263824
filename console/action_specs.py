"""What each action of the registry takes, declared once: read by the runbook linter and the
registry (console/actions.py), so a runbook's ``with:`` is checked before anything runs.

An argument's kind says how a runbook value reaching it is validated and rendered:

* ``node``, ``endpoint``, ``upstream``, ``router``: a name the config knows;
* ``shell``: a command line for a remote POSIX shell; every parameter templated into it is
  validated against its type and quoted with :func:`shlex.quote`;
* ``text``, ``int``, ``duration``, ``bool``: a plain value;
* ``mapping``: a mapping of names to values (``set:`` of engine.set_args, ``weights:``);
* ``names``: a list of names (``unset:`` of engine.set_args).

This module holds no code that acts; it must import nothing of the console's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ARG_KINDS = frozenset(
    {
        "node",
        "endpoint",
        "upstream",
        "router",
        "shell",
        "text",
        "int",
        "duration",
        "bool",
        "mapping",
        "names",
    }
)


@dataclass(frozen=True)
class ArgSpec:
    kind: str
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class ActionSpec:
    name: str
    mutating: bool
    description: str
    args: dict[str, ArgSpec] = field(default_factory=dict)
    # The argument that names what the action changes: in a protected environment the engineer
    # types its value to confirm. None: the action's target is fixed (the incident log).
    target_arg: str | None = None
    # The action that undoes this one by default, fed with what the execution reported.
    compensation: str | None = None


ACTION_SPECS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            "node.run",
            mutating=True,
            description="run a command on a node over SSH (stdout and stderr streamed)",
            args={
                "node": ArgSpec("node", required=True),
                "command": ArgSpec("shell", required=True),
                "timeout": ArgSpec("duration", description="default 60s"),
            },
            target_arg="node",
        ),
        ActionSpec(
            "node.inspect",
            mutating=False,
            description=(
                "run a read-only command on a node (journalctl, systemctl status|is-active|show, "
                "nvidia-smi, cat, tail, head, uptime, free, df, ls); anything else is refused"
            ),
            args={
                "node": ArgSpec("node", required=True),
                "command": ArgSpec("shell", required=True),
                "timeout": ArgSpec("duration", description="default 30s"),
            },
            target_arg="node",
        ),
        ActionSpec(
            "engine.set_args",
            mutating=True,
            description=(
                "change vLLM arguments in the node's argument file (checked against the node's "
                "vLLM version first), restart the engine and wait until it serves"
            ),
            args={
                "node": ArgSpec("node", required=True),
                "set": ArgSpec("mapping", description="flag (without --) -> value"),
                "unset": ArgSpec("names", description="flags to remove"),
                "wait": ArgSpec("duration", description="how long to wait for /health, default 5m"),
            },
            target_arg="node",
            compensation="engine.restore_args",
        ),
        ActionSpec(
            "engine.restore_args",
            mutating=True,
            description=(
                "put back a previous argument file (the given backup, or the newest one), "
                "restart the engine and wait until it serves"
            ),
            args={
                "node": ArgSpec("node", required=True),
                "backup": ArgSpec("text", description="path of the kept version on the node"),
                "wait": ArgSpec("duration", description="how long to wait for /health, default 5m"),
            },
            target_arg="node",
        ),
        ActionSpec(
            "routing.set_weights",
            mutating=True,
            description=(
                "set the traffic weights of named upstreams in a router's configuration file, "
                "keep the previous version, validate the result and reload the router"
            ),
            args={
                "router": ArgSpec("router", description="default: the only router configured"),
                "weights": ArgSpec("mapping", required=True, description="upstream -> weight"),
            },
            target_arg="router",
            compensation="routing.set_weights",
        ),
        ActionSpec(
            "http.request",
            mutating=True,
            description="send one HTTP request to an admin API (GET and HEAD change nothing)",
            args={
                "method": ArgSpec("text", required=True),
                "url": ArgSpec("text", required=True),
                "headers": ArgSpec("mapping"),
                "header_env": ArgSpec(
                    "mapping", description="header -> environment variable holding its value"
                ),
                "json": ArgSpec("mapping"),
                "timeout": ArgSpec("duration", description="default 30s"),
            },
            target_arg="url",
        ),
        ActionSpec(
            "alert.silence",
            mutating=True,
            description=(
                "create a silence in the config's alertmanager: (its matchers, from now for the "
                "duration, with the comment, created by user@host), verified active"
            ),
            args={
                "matchers": ArgSpec(
                    "mapping",
                    required=True,
                    description=(
                        "label -> value it equals; '~REGEX' (or {regex: REGEX}) for a regular "
                        "expression, {value: TEXT} for a literal starting with ~, "
                        "equal: false beside either to negate"
                    ),
                ),
                "duration": ArgSpec("duration", required=True, description="how long, from now"),
                "comment": ArgSpec("text", required=True, description="why, for the others"),
            },
            compensation="alert.expire_silence",
        ),
        ActionSpec(
            "alert.expire_silence",
            mutating=True,
            description="expire a silence in the config's alertmanager: (kept there, expired)",
            args={"silence_id": ArgSpec("text", required=True)},
        ),
        ActionSpec(
            "incident.note",
            mutating=False,
            description="add a note to the run's incident",
            args={"text": ArgSpec("text", required=True)},
        ),
    )
}
