"""Figures and facts runbooks may name: the vocabulary, and how they are read off the hub.

A *figure* is a number the console computes for a subject (a node, an endpoint, or an
upstream of a router, read where the config says its figures come from) over a window. A
*fact* is a value a parameter's default can come from ("the node with the worst ITL P95").
Both are read from the hub's readings only: nothing here talks to the world.
"""

from __future__ import annotations

from dataclasses import dataclass

# figure -> (the subjects it exists for, its unit: "s", "pct", "per_s", "per_min", "count")
FIGURES: dict[str, tuple[frozenset[str], str]] = {
    "e2e_p50": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "e2e_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "e2e_p99": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "ttft_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "itl_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "queue_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "error_pct": (frozenset({"node", "endpoint", "upstream"}), "pct"),
    "requests_per_s": (frozenset({"node", "endpoint", "upstream"}), "per_s"),
    "kv_cache_pct": (frozenset({"node"}), "pct"),
    "running": (frozenset({"node"}), "count"),
    "waiting": (frozenset({"node"}), "count"),
    "preemptions_per_min": (frozenset({"node"}), "per_min"),
    "gpu_temp_max_c": (frozenset({"node"}), "c"),
}

# fact -> the parameter type it gives. A fact "of" another parameter is read for the value
# that parameter has (pinned_revision of node); the others are fleet-wide.
FACTS: dict[str, str] = {
    "worst_itl_node": "node",  # the node with the highest ITL P95 now
    "worst_ttft_node": "node",  # the node with the highest TTFT P95 now
    "worst_e2e_node": "node",  # the node with the highest end-to-end P95 now
    "failing_upstream": "upstream",  # the upstream with the highest error rate now
    "backup_upstream": "upstream",  # an upstream of the same router carrying no traffic
    "serving_upstream": "upstream",  # the upstream of a router with the most weight
    "idle_upstream": "upstream",  # an upstream of a router with weight 0
    "pinned_revision": "string",  # of a node: the revision its engine should run (config)
    "running_revision": "string",  # of a node: the revision its argument file names now
}
FACTS_OF = frozenset({"pinned_revision", "running_revision"})  # these need `of: PARAM`


@dataclass(frozen=True)
class Figure:
    """One figure as read now: its value (None: not known) and what it stands on."""

    value: float | None
    n: float | None = None  # requests behind a percentile or rate; None where not counted
    window_s: float | None = None  # the time it covers
    note: str = ""  # where it came from, for the log ("engine", "engine lifetime", "probe")
