"""Fault names, the ``NAME[:TARGET]@SECONDS[+DURATION]`` syntax, and target defaults.

This module only describes faults; applying one is the fleet's job. It must not import
anything that runs servers, so a CLI can validate ``--fault`` arguments before starting any.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

BACKUP_PROVIDER = "backup-provider"
SLOWDOWN = 3.0  # latency-spike: how many times longer every engine step takes
RETRY_AFTER_S = 20  # provider-429: the retry-after a rate-limited client is given

FAULTS: dict[str, str] = {
    "latency-spike": f"engine steps on a node take {SLOWDOWN:g}x longer: TTFT, ITL and e2e rise",
    "node-down": "a node's SSH and HTTP servers stop listening and drop their connections",
    "provider-5xx": "the backup provider (or a node's vLLM server) answers chat with 503",
    "provider-429": "the backup provider (or a node's vLLM server) rate-limits chat with 429",
    "model-version-change": (
        "a node is redeployed with a new model revision and served name (the backup "
        "provider: its aliases answer with a newer dated model)"
    ),
    "token-blowup": "completions on a node run to max_tokens: generation tokens balloon",
}

# Faults aimed at the backup provider unless told otherwise, and those aimed at a node that can
# hit the backup provider too; the others need a node.
_PROVIDER_FAULTS = frozenset({"provider-5xx", "provider-429"})
_ALSO_PROVIDER = frozenset({"model-version-change"})

_SPEC = re.compile(
    r"(?P<name>[a-z0-9-]+)(?::(?P<target>[A-Za-z0-9._-]+))?"
    r"@(?P<at>\d+(?:\.\d+)?)(?:\+(?P<duration>\d+(?:\.\d+)?))?"
)


@dataclass(frozen=True)
class FaultSpec:
    """A fault injected ``at_s`` after start, lasting ``duration_s`` (None: until healed)."""

    name: str
    target: str | None = None
    at_s: float = 0.0
    duration_s: float | None = None


@dataclass
class ActiveFaults:
    """The overlays one node or the backup provider is under right now (mutable, loop-owned)."""

    slowdown: float = 1.0  # latency-spike: every engine step takes this many times longer
    token_blowup: bool = False  # completions run to max_tokens
    chat_error_status: int | None = None  # provider-5xx / provider-429: answer chat with this


def parse_fault(text: str) -> FaultSpec:
    """Parse ``NAME[:TARGET]@SECONDS[+DURATION]``, e.g. ``node-down:gpu-a2@30+60``."""
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"bad fault {text!r}: expected NAME[:TARGET]@SECONDS[+DURATION], "
            "e.g. node-down:gpu-a2@30+60"
        )
    name = match["name"]
    check_fault_name(name)
    duration = float(match["duration"]) if match["duration"] is not None else None
    if duration == 0:
        raise ValueError(f"bad fault {text!r}: duration must be more than 0 seconds")
    return FaultSpec(name, match["target"], float(match["at"]), duration)


def check_fault_name(name: str) -> None:
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r} (expected one of: {', '.join(FAULTS)})")


def fault_targets(name: str, node_names: Sequence[str]) -> list[str]:
    """Everything ``name`` can hit, its default first."""
    check_fault_name(name)
    if name in _PROVIDER_FAULTS:
        return [BACKUP_PROVIDER, *node_names]
    if name in _ALSO_PROVIDER:
        return [*node_names, BACKUP_PROVIDER]
    return list(node_names)


def resolve_target(name: str, target: str | None, node_names: Sequence[str]) -> str:
    """The target a fault applies to: the given one if valid, else the fault's default."""
    allowed = fault_targets(name, node_names)
    if target is None:
        return allowed[0]
    if target not in allowed:
        raise ValueError(
            f"unknown target {target!r} for {name} (expected one of: {', '.join(allowed)})"
        )
    return target
