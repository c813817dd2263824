"""Fault names, the ``NAME[:TARGET]@SECONDS[+DURATION]`` syntax, and target defaults.

This module only describes faults; applying one is the fleet's job. It must not import
anything that runs servers, so a CLI can validate ``--fault`` arguments before starting any.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

PRIMARY_PROVIDER = "primary-api"
BACKUP_PROVIDER = "backup-provider"
PROVIDERS = (PRIMARY_PROVIDER, BACKUP_PROVIDER)
SLOWDOWN = 3.0  # latency-spike: how many times longer every engine step takes
RETRY_AFTER_S = 20  # provider-429: the retry-after a rate-limited client is given
# long-prompts: the share of a node's requests that carry a long document, how many times the
# mean prompt it is, and the short answer it gets (extraction, classification). Calibrated with
# the simulator (tests/test_demo_faults.py): at max-num-batched-tokens 8192 the document's
# prefill chunks make ITL P95 ~0.13 s, at 2048 ~0.04 s, healthy ~0.01 s: a runbook's threshold
# of 75 ms tells them apart.
LONG_PROMPT_SHARE = 0.3
LONG_PROMPT_FACTOR = 8
LONG_PROMPT_ANSWER_TOKENS = 20
# bad-revision, bad-canary: what a bad revision does to the engine that runs it.
BAD_REVISION_SLOWDOWN = 2.5
BAD_REVISION_ERROR_SHARE = 0.1

FAULTS: dict[str, str] = {
    "latency-spike": f"engine steps on a node take {SLOWDOWN:g}x longer: TTFT, ITL and e2e rise",
    "node-down": "a node's SSH and HTTP servers stop listening and drop their connections",
    "provider-5xx": "the primary API (or the backup, or a node's vLLM server) answers chat 503",
    "provider-429": "the primary API (or the backup, or a node's vLLM server) answers chat 429",
    "model-version-change": (
        "a node is redeployed with a new model revision and served name (a provider: its "
        "aliases answer with a newer dated model)"
    ),
    "token-blowup": "completions on a node run to max_tokens: generation tokens balloon",
    "long-prompts": (
        f"{LONG_PROMPT_SHARE:.0%} of a node's requests carry {LONG_PROMPT_FACTOR}x longer prompts: "
        "long prefill chunks stall decodes, ITL and e2e rise"
    ),
    "bad-revision": (
        "a deploy restarts a node on a new, bad revision (old args file kept beside it): "
        f"steps {BAD_REVISION_SLOWDOWN:g}x slower, {BAD_REVISION_ERROR_SHARE:.0%} of requests fail"
    ),
    "bad-canary": (
        "from now on any revision deployed to a node, other than the one it runs, is bad "
        f"(steps {BAD_REVISION_SLOWDOWN:g}x slower, {BAD_REVISION_ERROR_SHARE:.0%} of requests "
        "fail)"
    ),
}

# Faults aimed at the primary API unless told otherwise, and those aimed at a node that can hit
# a provider too; the others need a node.
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
    """The overlays one node or provider is under right now (mutable, loop-owned)."""

    slowdown: float = 1.0  # latency-spike: every engine step takes this many times longer
    token_blowup: bool = False  # completions run to max_tokens
    chat_error_status: int | None = None  # provider-5xx / provider-429: answer chat with this
    long_prompts: bool = False  # long-prompts: some requests carry long documents
    # A bad revision belongs to the model, not to the engine that happens to run it: restarting
    # on it stays bad, rolling back to another heals. bad-revision names revisions; bad-canary
    # pins the one good revision (any other is bad).
    bad_revisions: set[str] = field(default_factory=set)
    good_revision: str | None = None

    def revision_is_bad(self, revision: str) -> bool:
        if revision in self.bad_revisions:
            return True
        return self.good_revision is not None and revision != self.good_revision


def every_share(n: int, share: float) -> bool:
    """Whether the ``n``-th of a series (from 1) is one of its ``share``: exactly that share,
    spread evenly and the same on every run, the first at once (1 in 10: the 1st, 11th, ...),
    so even a short look at a faulty upstream sees the fault."""
    exact = Fraction(share).limit_denominator(1000)  # floats would drift: 10 * 0.1 < 1
    return math.ceil(n * exact) > math.ceil((n - 1) * exact)


def model_groups(node_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The nodes serving the small model (the first half, behind the router) and the rest."""
    half = (len(node_names) + 1) // 2
    return list(node_names[:half]), list(node_names[half:])


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
        return [*PROVIDERS, *node_names]
    if name in _ALSO_PROVIDER:
        return [*node_names, *PROVIDERS]
    if name == "bad-canary":  # a canary is the last node of the routed group
        canary = model_groups(node_names)[0][-1]
        return [canary, *(n for n in node_names if n != canary)]
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
