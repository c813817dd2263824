"""Aggregation: the collectors' readings and the sources' status turned into a snapshot.

Pure functions, no I/O and no clock of their own: tests build :class:`FleetReadings` by hand
and check every figure. The rules that keep figures honest live here:

- An endpoint's latency comes from its engines' histograms over the window; with fewer than
  ``MIN_WINDOW_REQUESTS`` in it, from their lifetime histograms, labelled so; an API endpoint's
  from its probes. The row always says which (``EndpointRow.source``) and on how many requests.
- A stale engine is left out: its last minute is history. When every engine is stale, the row
  keeps the figures of their last minute and says ``engines STALE``; it never falls back to
  probe latencies in silence.
- A quantile that lands in the +Inf bucket is a floor (``> 10s``), not a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from backends.engines import CACHED_TOKENS, GENERATION_TOKENS, PREEMPTIONS, PROMPT_TOKENS
from console.collectors import HISTORY_LEN, FleetReadings
from console.config import Config, EndpointConfig, NodeConfig
from console.models import (
    EndpointRow,
    FleetSnapshot,
    GpuRow,
    Histogram,
    NodeEngine,
    NodeRow,
    ProbeResult,
    SourceStatus,
    Thresholds,
)
from console.stats import percentile, quantile
from console.windows import EngineFigures, EngineWindow, lifetime_figures, window_figures

MIN_WINDOW_REQUESTS = 20  # fewer requests than this in the window: lifetime percentiles
# vLLM's prefix cache, in tokens: looked up, and found cached (its own "prefix cache hit rate").
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"


@dataclass(frozen=True)
class _Latency:
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    ttft_p95_s: float | None = None
    requests: float | None = None
    floors: frozenset[str] = frozenset()


def thresholds(config: Config) -> Thresholds:
    a = config.alerts
    return Thresholds(
        p95_latency_s=a.p95_latency_s,
        ttft_p95_s=a.ttft_p95_s,
        error_rate_pct=a.error_rate_pct,
        gpu_temp_c=a.gpu_temp_c,
        kv_cache_pct=a.kv_cache_pct,
    )


def fleet_snapshot(
    config: Config,
    readings: FleetReadings,
    statuses: Mapping[str, SourceStatus],
    now: float,
    window_s: float,
) -> FleetSnapshot:
    return FleetSnapshot(
        taken_at=now,
        environment=config.environment,
        endpoints=tuple(
            endpoint_row(config, e, readings, statuses, now, window_s) for e in config.endpoints
        ),
        nodes=tuple(node_row(n, readings, statuses, now, window_s) for n in config.nodes),
        sources=tuple(statuses.values()),
        thresholds=thresholds(config),
        window_s=window_s,
        gpu_cost_per_hour_usd=gpu_cost_per_hour(config.nodes),
        host=readings.host,
    )


def _util_history(readings: FleetReadings, node: str, index: int) -> tuple[float, ...]:
    history = readings.gpu_history.get((node, index))
    return history.recent("util_pct", HISTORY_LEN) if history else ()


def node_row(
    node: NodeConfig,
    readings: FleetReadings,
    statuses: Mapping[str, SourceStatus],
    now: float,
    window_s: float,
) -> NodeRow:
    gpus = tuple(
        GpuRow(r, _util_history(readings, node.name, r.index))
        for r in readings.gpus.get(node.name, ())
    )
    window = readings.engines.get(node.name)
    latest = window.latest() if window else None
    kv = latest.kv_cache_usage if latest else None
    engine_status = statuses.get(f"engine:{node.name}") if node.engine else None
    engine_stale = engine_status is not None and engine_status.stale
    return NodeRow(
        name=node.name,
        host=node.host,
        gpus=gpus,
        kv_cache_pct=kv * 100 if kv is not None else None,
        running=latest.running if latest else None,
        waiting=latest.waiting if latest else None,
        preemptions_per_s=(
            window.rate("vllm:num_preemptions_total", now, window_s) if window else None
        ),
        cost_per_hour_usd=node.cost_per_hour_usd,
        gpu_status=statuses.get(f"gpus:{node.name}"),
        engine_status=engine_status,
        expected_gpus=node.gpus,
        engine=node_engine(window, engine_stale, now, window_s),
    )


def node_engine(
    window: EngineWindow | None, stale: bool, now: float, window_s: float
) -> NodeEngine | None:
    """The engine panel's figures of one node over ``window_s``; None before a scrape."""
    if window is None or window.last_ts is None:
        return None
    # A stale engine's last window, not an empty one: the panel shows them marked stale.
    at = window.last_ts if stale else now
    figures = window_figures((window,), at, window_s)

    def rate(family: str) -> float | None:
        return window.rate(family, at, window_s)

    def mark(name: str, q: float, hist: Histogram | None) -> float | None:
        result = quantile(q, hist)
        if result is None:
            return None
        if result.floor:
            floors.add(name)
        return result.value

    floors: set[str] = set()
    ttft = figures.ttft if figures else None
    itl = figures.itl if figures else None
    hits, looked_up = rate(PREFIX_HITS), rate(PREFIX_QUERIES)
    if looked_up is None:  # SGLang has no prefix-cache counters: its cached prompt tokens
        hits, looked_up = rate(CACHED_TOKENS), rate(PROMPT_TOKENS)
    latest = window.latest()
    return NodeEngine(
        at=at,
        covered_s=figures.covered_s if figures else None,
        requests=figures.requests if figures else None,
        preemptions_per_s=rate(PREEMPTIONS),
        prompt_tokens_per_s=rate(PROMPT_TOKENS),
        generation_tokens_per_s=rate(GENERATION_TOKENS),
        ttft_p50_s=mark("ttft_p50", 0.5, ttft),
        ttft_p95_s=mark("ttft_p95", 0.95, ttft),
        itl_p50_s=mark("itl_p50", 0.5, itl),
        itl_p95_s=mark("itl_p95", 0.95, itl),
        prefix_hit_pct=100 * hits / looked_up if hits is not None and looked_up else None,
        floors=frozenset(floors),
        model_name=latest.model_name if latest else None,
    )


def _engine_latency(figures: EngineFigures) -> _Latency:
    marks = {}
    floors = set()
    for name, q, hist in (
        ("p50", 0.5, figures.e2e),
        ("p95", 0.95, figures.e2e),
        ("p99", 0.99, figures.e2e),
        ("ttft", 0.95, figures.ttft),
    ):
        result = quantile(q, hist)
        marks[name] = result.value if result is not None else None
        if result is not None and result.floor:
            floors.add(name)
    return _Latency(
        p50_s=marks["p50"],
        p95_s=marks["p95"],
        p99_s=marks["p99"],
        ttft_p95_s=marks["ttft"],
        requests=figures.requests,
        floors=frozenset(floors),
    )


def _probe_latency(ok: Sequence[ProbeResult]) -> _Latency:
    latencies = [p.latency_s for p in ok if p.latency_s is not None]
    ttfts = [p.ttft_s for p in ok if p.ttft_s is not None]
    if not latencies:
        return _Latency(requests=0)
    if len(latencies) == 1:  # one request has one latency, not three percentiles
        return _Latency(p50_s=latencies[0], ttft_p95_s=percentile(ttfts, 95), requests=1)
    return _Latency(
        p50_s=percentile(latencies, 50),
        p95_s=percentile(latencies, 95),
        p99_s=percentile(latencies, 99),
        ttft_p95_s=percentile(ttfts, 95),
        requests=len(latencies),
    )


def _last_scrape(windows: Sequence[EngineWindow]) -> float | None:
    times = [w.last_ts for w in windows if w.last_ts is not None]
    return max(times) if times else None


def _engine_figures(
    windows: Sequence[EngineWindow], now: float, window_s: float
) -> tuple[EngineFigures | None, str]:
    """The window's figures, or the lifetime's when the window holds too few requests."""
    figures = window_figures(windows, now, window_s)
    if figures is not None and figures.requests >= MIN_WINDOW_REQUESTS:
        return figures, "engine"
    lifetime = lifetime_figures(windows)
    if lifetime is not None and lifetime.requests > 0:
        # The rate is still the window's: only the percentiles need more requests.
        return (
            EngineFigures(
                covered_s=None,
                requests=lifetime.requests,
                e2e=lifetime.e2e,
                ttft=lifetime.ttft,
                itl=lifetime.itl,
                requests_per_s=figures.requests_per_s if figures else None,
                errors_per_s=figures.errors_per_s if figures else None,
                mismatched=lifetime.mismatched,
            ),
            "engine lifetime",
        )
    return figures, "engine"


def endpoint_row(
    config: Config,
    endpoint: EndpointConfig,
    readings: FleetReadings,
    statuses: Mapping[str, SourceStatus],
    now: float,
    window_s: float,
) -> EndpointRow:
    since = now - readings.probe_window_s
    probes = [p for p in readings.probes.get(endpoint.name, ()) if p.started_at >= since]
    ok = [p for p in probes if p.ok]
    served = next((p.model for p in reversed(ok) if p.model), None)
    # Errors over the same window as the other figures (percentiles of sparse probes need the
    # longer one): a recovered endpoint stops alarming a minute later, not five.
    recent = [p for p in probes if p.started_at >= now - window_s]
    failed = sum(1 for p in recent if not p.ok)
    probe_error_pct = 100 * failed / len(recent) if recent else None

    engine_nodes = [n for n in endpoint.nodes if config.node(n).engine is not None]
    # The windows with scrapes in them, by whether their source is stale.
    live: list[EngineWindow] = []
    stale: list[EngineWindow] = []
    stale_count = 0
    for name in engine_nodes:
        window = readings.engines.get(name)
        status = statuses.get(f"engine:{name}")
        is_stale = status is not None and status.stale
        stale_count += is_stale
        if window is not None and window.latest() is not None:
            (stale if is_stale else live).append(window)

    figures: EngineFigures | None = None
    source = "none"
    used = live
    if live:
        figures, source = _engine_figures(live, now, window_s)
    elif stale:
        # No engine reports now: the last minute of those that stopped is the best knowledge
        # there is, and the row says it is stale, rather than showing the probes' latencies.
        used = stale
        last = _last_scrape(stale)
        if last is not None:
            figures, source = _engine_figures(stale, last, window_s)

    if figures is not None and figures.requests > 0:
        latency = _engine_latency(figures)
        rate = figures.requests_per_s
        engine_error_pct = (
            100 * figures.errors_per_s / figures.requests_per_s
            if figures.requests_per_s and figures.errors_per_s is not None
            else None
        )
        # The engine never counts what its API server refused (a 503, a 429): the probes
        # see those, so the worse of the two is the endpoint's error rate.
        known = [e for e in (engine_error_pct, probe_error_pct) if e is not None]
        error_pct = max(known) if known else None
        covered = figures.covered_s
    elif figures is not None:  # the engines answer, but no request has finished yet
        latency, rate = _Latency(requests=0), figures.requests_per_s
        error_pct, covered = probe_error_pct, figures.covered_s
    elif stale_count:
        # Its engines have no figures and some fail: the probes' latency is not the
        # endpoint's (a handful of the console's own requests); nothing is shown but the alarm.
        latency, rate, error_pct, covered = _Latency(), None, probe_error_pct, None
        source = "none"
    else:
        latency = _probe_latency(ok)
        source = "probe" if latency.requests else "none"
        rate = None  # probes are our own traffic, not the endpoint's request rate
        error_pct = probe_error_pct
        covered = _probe_span(ok) if ok else None

    first_model = readings.first_model.get(endpoint.name)
    return EndpointRow(
        name=endpoint.name,
        kind=endpoint.kind,
        model=endpoint.model,
        served_model=served,
        p50_s=latency.p50_s,
        p95_s=latency.p95_s,
        p99_s=latency.p99_s,
        ttft_p95_s=latency.ttft_p95_s,
        requests_per_s=rate,
        error_pct=error_pct,
        gpu_cost_per_hour_usd=gpu_cost_per_hour(config.node(n) for n in endpoint.nodes),
        probe_spend_per_hour_usd=probe_spend_per_hour(endpoint, probes),
        latency_history=tuple(readings.endpoint_history.get(endpoint.name, ())),
        source=source,
        n=latency.requests,
        window_s=covered,
        floors=latency.floors,
        engines=len(engine_nodes),
        engines_used=len(used) if figures is not None else 0,
        figures_stale=figures is not None and not live,
        left_out=figures.mismatched if figures is not None else (),
        engines_stale=stale_count,
        status=statuses.get(f"probe:{endpoint.name}"),
        model_changed=served is not None and first_model not in (None, served),
    )


def gpu_cost_per_hour(nodes: Iterable[NodeConfig]) -> float | None:
    """What the nodes cost an hour, each once; unknown (None) when any has no cost set."""
    costs = [n.cost_per_hour_usd for n in {n.name: n for n in nodes}.values()]
    if not costs or any(c is None for c in costs):
        return None
    return sum(c for c in costs if c is not None)


def _probe_span(ok: Sequence[ProbeResult]) -> float:
    return max(p.started_at for p in ok) - min(p.started_at for p in ok)


def probe_spend_per_hour(endpoint: EndpointConfig, probes: Sequence[ProbeResult]) -> float | None:
    """What the console's own probing costs an hour on a paid API (None: no price known).

    The mean cost of a recent probe (a refused one costs nothing) at the configured cadence.
    A probe whose usage the API did not report makes the figure unknown, not zero.
    """
    if endpoint.nodes or endpoint.price is None or not probes:
        return None
    answered = [p for p in probes if p.ok]
    if any(p.prompt_tokens is None or p.completion_tokens is None for p in answered):
        return None
    usd = sum(
        (p.prompt_tokens or 0) * endpoint.price.input_per_mtok_usd
        + (p.completion_tokens or 0) * endpoint.price.output_per_mtok_usd
        for p in answered
    )
    return usd / (1e6 * len(probes)) * 3600 / endpoint.probe.every_s
