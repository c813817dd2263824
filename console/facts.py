"""Figures and facts runbooks may name: the vocabulary, and how they are read off the hub.

A *figure* is a number the console computes for a subject (a node, an endpoint, or an
upstream of a router, read where the config says its figures come from) over a window. A
*fact* is a value a parameter's default can come from ("the node with the worst ITL P95").
Both are read from the hub's readings only: nothing here talks to the world.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from console.config import Config, NodeConfig
from console.figures import FIGURES
from console.models import FleetSnapshot, Histogram
from console.stats import merge_histograms, observations, quantile
from console.windows import E2E, ITL, TTFT, EngineWindow, window_figures

if TYPE_CHECKING:
    from console.hub import Hub

# fact -> the parameter type it gives. A fact "of" another parameter is read for the value
# that parameter has (pinned_revision of node); the others are fleet-wide.
FACTS: dict[str, str] = {
    "worst_itl_node": "node",  # the node with the highest ITL P95 now
    "worst_ttft_node": "node",  # the node with the highest TTFT P95 now
    "worst_e2e_node": "node",  # the node with the highest end-to-end P95 now
    "failing_upstream": "upstream",  # the upstream with the highest error rate now
    "backup_upstream": "upstream",  # an upstream (of the same route as `of`) with no traffic
    "serving_upstream": "upstream",  # the upstream of a router with the most weight
    "idle_upstream": "upstream",  # an upstream of a router with weight 0
    # After a failover: an upstream not marked `backup` at weight 0 while a backup of its
    # route carries traffic; and that backup (of: the failed-over upstream).
    "failed_over_upstream": "upstream",
    "serving_backup": "upstream",
    "gateway_endpoint": "endpoint",  # the endpoint whose probes go through a router
    "unpinned_node": "node",  # a node whose argument file names another revision than pinned
    "pinned_revision": "string",  # of a node: the revision its engine should run (config)
    "running_revision": "string",  # of a node: the revision its argument file names now
}
# Facts read for another parameter (`of: PARAM`): the type that parameter must have, and
# whether the fact needs one.
FACTS_OF: dict[str, tuple[str, bool]] = {
    "pinned_revision": ("node", True),
    "running_revision": ("node", True),
    "backup_upstream": ("upstream", False),  # with of: on the failing upstream's route
    "serving_backup": ("upstream", False),  # with of: on the failed-over upstream's route
}


@dataclass(frozen=True)
class Figure:
    """One figure as read now: its value (None: not known) and what it stands on."""

    value: float | None
    n: float | None = None  # requests behind a percentile or rate; None where not counted
    window_s: float | None = None  # the time it covers
    note: str = ""  # where it came from, for the log ("engine", "engine lifetime", "probe")
    wait_s: float | None = None  # not known yet, and about how long until it may be


# Histogram families behind the latency figures, and the quantile each figure takes.
_QUANTILES: dict[str, tuple[str, float]] = {
    "e2e_p50": ("vllm:e2e_request_latency_seconds", 0.5),
    "e2e_p95": ("vllm:e2e_request_latency_seconds", 0.95),
    "e2e_p99": ("vllm:e2e_request_latency_seconds", 0.99),
    "ttft_p95": ("vllm:time_to_first_token_seconds", 0.95),
    "itl_p95": ("vllm:inter_token_latency_seconds", 0.95),
    "queue_p95": ("vllm:request_queue_time_seconds", 0.95),
}
_ENDPOINT_FIELDS = {
    "e2e_p50": "p50_s",
    "e2e_p95": "p95_s",
    "e2e_p99": "p99_s",
    "ttft_p95": "ttft_p95_s",
    "error_pct": "error_pct",
    "requests_per_s": "requests_per_s",
}
UNKNOWN = Figure(None, note="not known")
# The histograms window_figures merges (and remembers per engine), by family.
_WINDOW_FAMILIES = {E2E: "e2e", TTFT: "ttft", ITL: "itl"}
MIN_PROBES = 2  # probes behind an error rate of probes alone
_T = TypeVar("_T")
_MEMO_ENTRIES = 20_000  # figures a reader remembers (a few evaluations of 1,000 rules)
GAUGES = ("kv_cache_pct", "running", "waiting")  # read off the latest scrape


class FigureReader:
    """Reads figures off the hub's readings and snapshot; the only I/O is through ``world``.

    ``world`` answers what the readings do not hold: the weights a router's file gives its
    upstreams, and the revision a node's argument file names (both read-only, over SSH).
    """

    def __init__(self, hub: Hub, world: World | None = None) -> None:
        self.hub = hub
        self.world = world
        self._memo: dict[tuple[object, ...], object] = {}

    @property
    def config(self) -> Config:
        return self.hub.config

    def figure(self, kind: str, subject: str, name: str, window_s: float | None = None) -> Figure:
        """``name`` of a node, endpoint or upstream now; value None when it is not known."""
        window = window_s if window_s is not None else self.hub.window_s
        return self.figure_at(self.hub.snapshot(window), kind, subject, name, window)

    def figure_at(
        self, snapshot: FleetSnapshot, kind: str, subject: str, name: str, window: float
    ) -> Figure:
        """The same, off a snapshot taken over ``window`` (many figures, one snapshot)."""
        if kind == "upstream":
            router = self.config.upstream_router(subject)
            if router is None:
                return Figure(None, note=f"unknown upstream {subject}")
            source = router.upstreams[subject]
            if source.node is not None:
                return self.figure_at(snapshot, "node", source.node, name, window)
            assert source.endpoint is not None
            return self.figure_at(snapshot, "endpoint", source.endpoint, name, window)
        if kind == "endpoint":
            return self._endpoint_figure(snapshot, subject, name, window)
        return self._node_figure(snapshot, subject, name, window)

    def _endpoint_figure(
        self, snapshot: FleetSnapshot, endpoint: str, name: str, window_s: float
    ) -> Figure:
        row = snapshot.endpoint_rows.get(endpoint)
        if row is None:
            return Figure(None, note=f"unknown endpoint {endpoint}")
        if name == "model_changed":
            if row.model is None:
                return Figure(None, note="no answer yet")
            return Figure(float(row.model_changed), note=f"answers with {row.model}")
        if name == "error_pct" and not row.source.startswith("engine"):  # probes alone
            return self._probe_errors(endpoint, row.error_pct, snapshot.taken_at, window_s)
        if name in _ENDPOINT_FIELDS:
            stale = " (stale)" if row.figures_stale else ""
            value = getattr(row, _ENDPOINT_FIELDS[name])
            return Figure(value, row.n, row.window_s, note=row.source + stale)
        # ITL and queue time exist only where engines report them: merge the endpoint's.
        nodes = self.config.endpoint(endpoint).nodes
        return self._engine_quantile(nodes, name, snapshot.taken_at, window_s)

    def _probe_errors(
        self, endpoint: str, error_pct: float | None, now: float, window_s: float
    ) -> Figure:
        """An error rate of probes alone stands on every probe in the window, failed ones too
        (the row's n counts the answers that have a latency), and on at least MIN_PROBES: one
        probe is 0% or 100%, not a rate."""
        probes = [
            p for p in self.hub.readings.probes.get(endpoint, ()) if p.started_at >= now - window_s
        ]
        if len(probes) < MIN_PROBES:
            every_s = self.config.endpoint(endpoint).probe.every_s
            return Figure(
                None,
                len(probes),
                note=f"probe: {len(probes)} probe(s) in the window, {MIN_PROBES} needed",
                wait_s=every_s * (MIN_PROBES - len(probes)),
            )
        covered = now - min(p.started_at for p in probes)
        return Figure(error_pct, len(probes), covered, note="probe")

    def _node_figure(
        self, snapshot: FleetSnapshot, node: str, name: str, window_s: float
    ) -> Figure:
        row = snapshot.node_rows.get(node)
        if row is None:
            return Figure(None, note=f"unknown node {node}")
        if name == "gpu_temp_max_c":
            temps = [g.reading.temperature_c for g in row.gpus if g.reading.temperature_c]
            return Figure(max(temps) if temps else None, note="gpus")
        if name == "gpu_ecc_uncorrected":
            # N/A on a GPU without ECC: known only where some GPU reports it.
            counts = [g.reading.ecc_uncorrected for g in row.gpus]
            known = [c for c in counts if c is not None]
            return Figure(sum(known) if known else None, note="gpus")
        status = row.engine_status
        if status is None:
            return Figure(None, note="no engine")
        if status.stale or status.last_ok_at is None:
            return Figure(None, note="engine stale" if status.stale else "engine not read yet")
        if name in GAUGES:
            # The latest scrape counts only inside the window: right after a change the window
            # starts at the change, and the scrape before it tells of the engine as it was.
            engine = self.hub.readings.engines.get(node)
            last = engine.last_ts if engine else None
            if last is None or last < snapshot.taken_at - window_s:
                return Figure(None, note=f"engine: no scrape in the last {window_s:.3g}s yet")
            value = row.kv_cache_pct if name == "kv_cache_pct" else getattr(row, name)
            return Figure(value, window_s=snapshot.taken_at - last, note="engine")
        if name == "preemptions_per_min":
            rate = row.preemptions_per_s
            return Figure(rate * 60 if rate is not None else None, note="engine")
        if name in _QUANTILES:
            return self._engine_quantile((node,), name, snapshot.taken_at, window_s)
        figures = window_figures(self._windows((node,)), snapshot.taken_at, window_s)
        if figures is None or figures.requests_per_s is None:
            return Figure(None, note="engine: fewer than two scrapes in the window")
        if name == "requests_per_s":
            return Figure(figures.requests_per_s, figures.requests, figures.covered_s, "engine")
        # error_pct: errors and aborts among the requests finished in the window.
        if not figures.requests_per_s:
            return Figure(None, 0, figures.covered_s, note="engine: no request finished")
        errors = figures.errors_per_s or 0.0
        pct = 100 * errors / figures.requests_per_s
        return Figure(pct, figures.requests, figures.covered_s, "engine")

    def _windows(self, nodes: Sequence[str]) -> list[EngineWindow]:
        return [w for n in nodes if (w := self.hub.readings.engines.get(n)) is not None]

    def _remembered(
        self,
        what: tuple[object, ...],
        nodes: Sequence[str],
        now: float,
        window_s: float,
        make: Callable[[], _T],
    ) -> _T:
        """``make()``, remembered for the scrapes the nodes' windows hold in range: a thousand
        alert rules ask for a few hundred distinct figures, and until a scrape enters or leaves
        a window its figures stay the same."""
        spans = tuple(w.span_key(now, window_s) for w in self._windows(nodes))
        key = (*what, tuple(nodes), spans)
        if key not in self._memo:
            if len(self._memo) > _MEMO_ENTRIES:  # entries of older scrapes are never asked again
                self._memo.clear()
            self._memo[key] = make()
        return self._memo[key]  # type: ignore[return-value]

    def _merged(
        self, nodes: Sequence[str], family: str, now: float, window_s: float
    ) -> Histogram | None:
        windows = self._windows(nodes)
        if len(windows) == 1 and family in _WINDOW_FAMILIES:  # merged by window_figures already
            figures = window_figures(windows, now, window_s)
            return getattr(figures, _WINDOW_FAMILIES[family]) if figures else None

        def merge() -> Histogram | None:
            parts = [
                (f"{w.node} {family}", hist)
                for w in self._windows(nodes)
                for hist in w.histogram_increases(family, now, window_s).values()
            ]
            return merge_histograms(parts).histogram

        return self._remembered(("merged", family), nodes, now, window_s, merge)

    def _engine_quantile(
        self, nodes: Sequence[str], name: str, now: float, window_s: float
    ) -> Figure:
        def make() -> Figure:
            family, q = _QUANTILES[name]
            merged = self._merged(nodes, family, now, window_s)
            result = quantile(q, merged)
            covered = self._covered(nodes, now, window_s)
            if merged is None or result is None:
                return Figure(None, 0, covered, note="engine: no request in the window")
            n = result.n
            if name == "itl_p95":  # its histogram counts token gaps; n counts requests
                e2e = self._merged(nodes, _QUANTILES["e2e_p95"][0], now, window_s)
                n = observations(e2e) if e2e is not None else 0.0
            note = "engine" + (" floor" if result.floor else "")
            return Figure(result.value, n, covered, note=note)

        # A Figure is frozen, and the same for the same scrapes: one per rule is not needed.
        return self._remembered(("quantile", name), nodes, now, window_s, make)

    def _covered(self, nodes: Sequence[str], now: float, window_s: float) -> float | None:
        """The time the scrapes in the window span (the shortest of the engines'): what a
        figure asked over ``window_s`` really covers. None with fewer than two scrapes."""
        spans = [s[1] - s[0] for w in self._windows(nodes) if (s := w.span(now, window_s))]
        return min(spans) if spans else None

    # -- facts

    async def fact(self, name: str, of: object = None) -> tuple[object | None, str]:
        """A fact's value now (None: not known) and how it was found, for the log."""
        if name in ("worst_itl_node", "worst_ttft_node", "worst_e2e_node"):
            figure = {"worst_itl_node": "itl_p95", "worst_ttft_node": "ttft_p95"}.get(
                name, "e2e_p95"
            )
            return self._worst_node(figure)
        if name == "failing_upstream":
            return self._failing_upstream()
        if name in ("serving_upstream", "idle_upstream", "backup_upstream"):
            return await self._upstream_by_weight(name, of)
        if name in ("failed_over_upstream", "serving_backup"):
            return await self._failover_in_place(name, of)
        if name == "gateway_endpoint":
            routed = [r for r in self.config.routers if r.endpoint is not None]
            if not routed:
                return None, "no router has an endpoint configured"
            return routed[0].endpoint, f"the endpoint probed through router {routed[0].name}"
        if name == "unpinned_node":
            return await self._unpinned_node()
        if name == "pinned_revision":
            node = self._node_config(of)
            if node is None or node.engine is None or node.engine.pinned_revision is None:
                return None, f"no engine.pinned_revision configured for {of}"
            return node.engine.pinned_revision, f"engine.pinned_revision of {of} in the config"
        if name == "running_revision":
            if self.world is None or self._node_config(of) is None:
                return None, f"cannot read the argument file of {of}"
            args = await self.world.engine_args(str(of))
            revision = args.get("revision")
            return (
                (str(revision), f"revision in {of}'s argument file")
                if revision
                else (
                    None,
                    f"{of}'s argument file names no revision",
                )
            )
        raise ValueError(f"unknown fact {name!r}")

    async def _unpinned_node(self) -> tuple[str | None, str]:
        if self.world is None:
            return None, "cannot read argument files"
        for node in self.config.nodes:
            if node.engine is None or node.engine.pinned_revision is None:
                continue
            revision = (await self.world.engine_args(node.name)).get("revision")
            if revision != node.engine.pinned_revision:
                return node.name, (
                    f"{node.name} runs revision {revision}, pinned {node.engine.pinned_revision}"
                )
        return None, "every node runs its pinned revision"

    def _node_config(self, name: object) -> NodeConfig | None:
        return next((n for n in self.config.nodes if n.name == name), None)

    def _worst_node(self, figure: str) -> tuple[str | None, str]:
        known = [
            (value, node.name)
            for node in self.config.nodes
            if node.engine is not None
            and (value := self.figure("node", node.name, figure).value) is not None
        ]
        if not known:
            return None, f"no node reports {figure} now"
        value, node = max(known)
        return node, f"{figure} {value * 1000:.0f} ms on {node}, the highest of {len(known)}"

    def _failing_upstream(self) -> tuple[str | None, str]:
        known = [
            (value, name)
            for router in self.config.routers
            for name in router.upstreams
            if (value := self.figure("upstream", name, "error_pct").value) is not None
        ]
        failing = [k for k in known if k[0] > 0]
        if not failing:
            return None, "no upstream has errors now"
        value, name = max(failing)
        return name, f"error rate {value:.1f}% on {name}, the highest of {len(known)} upstreams"

    async def _upstream_by_weight(self, name: str, of: object = None) -> tuple[str | None, str]:
        if self.world is None or not self.config.routers:
            return None, "no router configured"
        candidates: list[tuple[float, str]] = []
        for router in self.config.routers:
            weights = await self.world.weights(router.name)
            upstreams = [u for u in weights if u in router.upstreams]
            if name == "backup_upstream" and of is not None:
                # A backup serves what the failing upstream serves: its router, its route.
                if of not in router.upstreams:
                    continue
                routes = await self.world.routes(router.name)
                upstreams = [u for u in upstreams if u != of and routes.get(u) == routes.get(of)]
            candidates += [(weights[u], u) for u in upstreams]
        if name == "serving_upstream":
            serving = [c for c in candidates if c[0] > 0]
            if not serving:
                return None, "no upstream has weight"
            weight, upstream = max(serving)
            return upstream, f"{upstream} has the most weight ({weight:g})"
        idle = [u for w, u in candidates if w == 0]
        if not idle:
            if name == "backup_upstream" and of is not None:
                return None, f"no upstream of {of}'s route has weight 0"
            return None, "every upstream has weight"
        if name == "idle_upstream":
            return idle[0], f"{idle[0]} has weight 0"
        # backup: the idle upstream with the fewest errors, where that is known.
        scored = sorted((self.figure("upstream", u, "error_pct").value or 0.0, u) for u in idle)
        pct, upstream = scored[0]
        same = f" on {of}'s route" if of is not None else ""
        return upstream, f"{upstream} has weight 0{same} and an error rate of {pct:.1f}%"

    async def _failover_in_place(self, name: str, of: object = None) -> tuple[str | None, str]:
        """The primary a failover left at weight 0, or the backup serving in its place: what
        a failback undoes. None when no failover is in place (a failback must not start)."""
        if self.world is None or not self.config.routers:
            return None, "no router configured"
        for router in self.config.routers:
            if of is not None and of not in router.upstreams:
                continue
            weights = await self.world.weights(router.name)
            routes = await self.world.routes(router.name)
            for primary, figures in router.upstreams.items():
                if figures.backup or weights.get(primary) != 0 or primary not in weights:
                    continue
                if of is not None and primary != of:
                    continue
                serving = [
                    (weights[u], u)
                    for u, f in router.upstreams.items()
                    if f.backup and weights.get(u, 0) > 0 and routes.get(u) == routes.get(primary)
                ]
                if serving:
                    weight, backup = max(serving)
                    if name == "failed_over_upstream":
                        return primary, f"{primary} has weight 0 while backup {backup} serves"
                    return backup, f"backup {backup} serves {primary}'s route ({weight:g})"
        marked = [u for r in self.config.routers for u, f in r.upstreams.items() if f.backup]
        if not marked:
            return None, "no upstream is marked backup: true in the config"
        return None, "no failover in place: no primary is at weight 0 while a backup serves"


class World(Protocol):
    """What facts read from the fleet itself (read-only)."""

    async def weights(self, router: str) -> dict[str, float]: ...

    async def routes(self, router: str) -> dict[str, str]: ...

    async def engine_args(self, node: str) -> dict[str, object]: ...


def figure_text(name: str, figure: Figure) -> str:
    """``212 ms``, ``4.2%``, ``3.1/s``: a figure as the log and the screen show it."""
    value = figure.value
    if value is None:
        return f"N/A ({figure.note})" if figure.note else "N/A"
    unit = FIGURES[name][1]
    if unit == "s":
        ms = value * 1000
        # Whole ms from 10 ms up; below, two significant digits (a limit of 0.1 ms is not "0").
        text = f"{value:.2f} s" if value >= 1 else f"{ms:.0f} ms" if ms >= 10 else f"{ms:.2g} ms"
    elif unit == "pct":
        text = f"{value:.1f}%"
    elif unit == "per_s":
        text = f"{value:.2f}/s"
    elif unit == "per_min":
        text = f"{value:.1f}/min"
    elif unit == "c":
        text = f"{value:.0f} °C"
    else:
        text = f"{value:g}"
    if figure.n is not None:
        text += f" (n={figure.n:.0f})"
    return text
