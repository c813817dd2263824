"""The hub: polls every source on its own schedule and turns readings into snapshots.

Each source (GPUs of a node over SSH, a node's engine ``/metrics``, an endpoint's probe) runs
in its own asyncio task: the next poll is scheduled only after the last one finished, so polls
never overlap, and failures back off exponentially up to ``poll.max_backoff``. Per source the
hub records when it last succeeded and its last error; a source whose last good answer is
older than ``stale_after_polls`` intervals is *stale*. Readings are kept in rolling windows,
written to the store in batches from a worker thread, and summarised on demand by
:meth:`Hub.snapshot`. The hub knows nothing of Textual: screens read snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

import httpx

from backends.engines import engine_stats_from_text, fetch_metrics
from backends.gpu import GpuReader
from backends.providers import ProbeTarget, probe
from backends.ssh import NodeConnection, SshTarget
from console.config import Config, EndpointConfig, NodeConfig
from console.models import (
    EndpointRow,
    EngineStats,
    FleetSnapshot,
    GpuReading,
    GpuRow,
    Histogram,
    NodeRow,
    ProbeResult,
    SourceStatus,
)
from console.stats import (
    counter_delta,
    histogram_delta,
    histogram_quantile,
    merge_histograms,
    percentile,
)
from console.store import Store

log = logging.getLogger(__name__)

WINDOW_S = 60.0  # figures on screen cover the last minute
MIN_WINDOW_REQUESTS = 20  # fewer requests than this in the minute: use since-start histograms
PROBE_WINDOW_S = 300.0  # probes are sparse: percentiles over five minutes of them
HISTORY_LEN = 30  # points kept for sparklines
HISTORY_STEP_S = 2.0
STORE_FLUSH_S = 1.0
PURGE_EVERY_S = 600.0
MAX_PENDING_SAMPLES = 50_000  # rows kept in memory while the store cannot be written


@dataclass(frozen=True)
class Source:
    name: str
    interval_s: float
    poll: Callable[[], Awaitable[None]]


class Hub:
    """Owns the collectors, their schedules and the rolling windows."""

    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # One pooled client for every engine and endpoint: keep a connection to each alive
        # (the default pool of 20 would reconnect, and skew probe TTFT, on a big fleet).
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        self._connections = {n.name: NodeConnection(_ssh_target(config, n)) for n in config.nodes}
        self._gpu_readers = {
            name: GpuReader(name, conn.run) for name, conn in self._connections.items()
        }
        self._status: dict[str, SourceStatus] = {}
        self._ok_duration: dict[str, float] = {}
        self._gpus: dict[str, tuple[GpuReading, ...]] = {}
        self._gpu_history: dict[tuple[str, int], deque[float]] = {}
        self._engine: dict[str, deque[tuple[float, EngineStats]]] = {}
        self._probes: dict[str, deque[ProbeResult]] = {e.name: deque() for e in config.endpoints}
        self._endpoint_history: dict[str, deque[tuple[float, float]]] = {}
        self._first_model: dict[str, str] = {}
        self._pending_probes: list[ProbeResult] = []
        self._pending_gpus: list[GpuReading] = []
        self._pending_engines: list[EngineStats] = []
        self._pending_events: list[tuple[str, str, str]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.sources = self._build_sources()
        for source in self.sources:
            self._status[source.name] = SourceStatus(source.name, source.interval_s)
        if store is not None:  # the incident log's health is shown like any source's
            self._status["store"] = SourceStatus("store", STORE_FLUSH_S)

    # -- sources ---------------------------------------------------------------------------

    def _build_sources(self) -> list[Source]:
        poll = self.config.poll
        sources = []
        for node in self.config.nodes:
            sources.append(Source(f"gpus:{node.name}", poll.gpus_s, partial(self._poll_gpus, node)))
            if node.engine is not None:
                sources.append(
                    Source(f"engine:{node.name}", poll.engine_s, partial(self._poll_engine, node))
                )
        for endpoint in self.config.endpoints:
            sources.append(
                Source(
                    f"probe:{endpoint.name}",
                    endpoint.probe.every_s,
                    partial(self._poll_probe, endpoint),
                )
            )
        return sources

    async def _poll_gpus(self, node: NodeConfig) -> None:
        readings = tuple(await self._gpu_readers[node.name].read())
        self._gpus[node.name] = readings
        for r in readings:
            history = self._gpu_history.setdefault((node.name, r.index), deque(maxlen=HISTORY_LEN))
            if r.util_pct is not None:
                history.append(r.util_pct)
        self._pending_gpus.extend(readings)

    async def _poll_engine(self, node: NodeConfig) -> None:
        assert node.engine is not None
        text = await fetch_metrics(self._http, node.name, node.engine.url)
        # Parsing a large scrape is CPU work: keep it off the event loop the UI runs on.
        stats = await asyncio.to_thread(engine_stats_from_text, node.name, text)
        now = self.clock()
        window = self._engine.setdefault(node.name, deque())
        window.append((now, stats))
        while len(window) > 2 and window[1][0] < now - WINDOW_S:
            window.popleft()
        self._pending_engines.append(stats)
        if stats.skipped_lines:
            self._set_status(
                f"engine:{node.name}",
                warning=f"{len(stats.skipped_lines)} malformed metric line(s) skipped, first: "
                f"{stats.skipped_lines[0][:60]!r}",
            )
        else:
            self._set_status(f"engine:{node.name}", warning=None)

    async def _poll_probe(self, endpoint: EndpointConfig) -> None:
        result = await probe(self._http, _probe_target(endpoint))
        window = self._probes[endpoint.name]
        window.append(result)
        while window and window[0].started_at < result.started_at - PROBE_WINDOW_S:
            window.popleft()
        self._pending_probes.append(result)
        if result.ok and result.model:
            # APIs answer an alias with a dated name: compare with the first answer, not config.
            self._first_model.setdefault(endpoint.name, result.model)
        if not result.ok:
            # Recorded above for error %, and raised so the source shows the failure and backs
            # off (a 429 asks for exactly that).
            raise ProbeFailed(result.error or "probe failed")

    # -- scheduling --------------------------------------------------------------------------

    def _set_status(self, name: str, **changes: object) -> None:
        self._status[name] = replace(self._status[name], **changes)  # type: ignore[arg-type]

    async def _poll(self, source: Source) -> None:
        started = time.perf_counter()
        before = self._status[source.name]
        try:
            await source.poll()
        except Exception as exc:  # any failure degrades this source only
            message = _one_line(exc)
            self._set_status(
                source.name,
                last_error=message,
                last_error_at=self.clock(),
                consecutive_failures=before.consecutive_failures + 1,
            )
            if before.consecutive_failures == 0:
                self._pending_events.append(("source.failed", source.name, message))
            return
        self._ok_duration[source.name] = time.perf_counter() - started
        # The last error stays on record (the sources view shows what failed last time);
        # consecutive_failures says whether it is failing now.
        self._set_status(source.name, last_ok_at=self.clock(), consecutive_failures=0)
        if before.consecutive_failures > 0:
            self._pending_events.append(
                ("source.recovered", source.name, f"{source.name} answers again")
            )

    def _delay_after(self, source: Source) -> float:
        failures = self._status[source.name].consecutive_failures
        if failures == 0:
            return source.interval_s
        return min(source.interval_s * 2 ** (failures - 1), self.config.poll.max_backoff_s)

    async def _run_source(self, source: Source) -> None:
        while True:
            await self._poll(source)
            await asyncio.sleep(self._delay_after(source))

    async def _run_housekeeping(self) -> None:
        """Once a second: a sparkline point per endpoint, then the store; purge now and then."""
        last_purge = float("-inf")  # purge once at start, then every PURGE_EVERY_S
        while True:
            await asyncio.sleep(STORE_FLUSH_S)
            try:
                self._sample_history()
            except Exception:  # a bug here must not stop the store writes below, or for good
                log.exception("sparkline sampling failed")
            await self.flush()
            if self.store is not None and time.monotonic() - last_purge > PURGE_EVERY_S:
                last_purge = time.monotonic()
                await self._purge()

    def _sample_history(self) -> None:
        now = self.clock()
        for endpoint in self.config.endpoints:
            history = self._endpoint_history.setdefault(endpoint.name, deque(maxlen=HISTORY_LEN))
            if history and now - history[-1][0] < HISTORY_STEP_S:
                continue
            p95 = self._endpoint_row(endpoint, now).p95_s
            if p95 is not None:
                history.append((now, p95))

    async def _purge(self) -> None:
        store = self.store
        assert store is not None
        try:
            await asyncio.to_thread(store.purge, self.clock())
        except Exception as exc:  # retention is housekeeping: never stop the collectors
            log.warning("store purge failed: %s", _one_line(exc))

    async def flush(self) -> None:
        """Write what was collected since the last flush, from a worker thread.

        A failed write (locked, full or read-only disk) keeps the rows for the next try and
        shows on the ``store`` source; samples beyond ``MAX_PENDING_SAMPLES`` are dropped
        first, events and probe results never.
        """
        store = self.store
        if store is None:
            self._pending_probes, self._pending_gpus, self._pending_engines = [], [], []
            self._pending_events = []
            return
        probes, gpus, engines, events = (
            self._pending_probes,
            self._pending_gpus,
            self._pending_engines,
            self._pending_events,
        )
        self._pending_probes, self._pending_gpus, self._pending_engines = [], [], []
        self._pending_events = []

        def write() -> None:
            store.add_probes(probes)
            store.add_samples(self.clock(), gpus, engines)
            for kind, source, message in events:
                store.append_event(kind, message, source=source)

        before = self._status["store"]
        try:
            await asyncio.to_thread(write)
        except Exception as exc:  # a locked or full disk must not stop the collectors
            self._pending_probes[:0] = probes
            self._pending_events[:0] = events
            self._pending_gpus[:0] = gpus[-MAX_PENDING_SAMPLES:]
            self._pending_engines[:0] = engines[-MAX_PENDING_SAMPLES:]
            self._set_status(
                "store",
                last_error=f"{store.path}: {_one_line(exc)}",
                last_error_at=self.clock(),
                consecutive_failures=before.consecutive_failures + 1,
            )
            return
        self._set_status("store", last_ok_at=self.clock(), consecutive_failures=0)

    def start(self) -> None:
        """Start every collector as an asyncio task on the running loop."""
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._run_source(s), name=s.name) for s in self.sources]
        self._tasks.append(asyncio.create_task(self._run_housekeeping(), name="housekeeping"))

    async def poll_once(self, prefix: str = "") -> None:
        """Poll every source (or those whose name starts with ``prefix``) once, together."""
        await asyncio.gather(*(self._poll(s) for s in self.sources if s.name.startswith(prefix)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()
        for conn in self._connections.values():
            with contextlib.suppress(Exception):
                await conn.close()
        await self._http.aclose()

    # -- snapshots ---------------------------------------------------------------------------

    def source_status(self, name: str, now: float | None = None) -> SourceStatus:
        status = self._status[name]
        now = self.clock() if now is None else now
        if status.last_ok_at is None:
            stale = status.consecutive_failures > 0
        else:
            limit = self.config.poll.stale_after_polls * status.interval_s
            stale = now - status.last_ok_at > limit + self._ok_duration.get(name, 0.0)
        return replace(status, stale=stale)

    def snapshot(self) -> FleetSnapshot:
        now = self.clock()
        nodes = tuple(self._node_row(n, now) for n in self.config.nodes)
        endpoints = tuple(self._endpoint_row(e, now) for e in self.config.endpoints)
        return FleetSnapshot(
            taken_at=now,
            environment=self.config.environment,
            endpoints=endpoints,
            nodes=nodes,
            sources=tuple(self.source_status(name, now) for name in self._status),
            thresholds=self.config.alerts,
        )

    def _node_row(self, node: NodeConfig, now: float) -> NodeRow:
        gpus = tuple(
            GpuRow(r, tuple(self._gpu_history.get((node.name, r.index), ())))
            for r in self._gpus.get(node.name, ())
        )
        window = self._engine.get(node.name)
        latest = window[-1][1] if window else None
        preemptions = None
        if window and len(window) >= 2:
            (t0, first), (t1, last) = window[0], window[-1]
            if first.preemptions_total is not None and last.preemptions_total is not None:
                preemptions = counter_delta(last.preemptions_total, first.preemptions_total) / (
                    t1 - t0
                )
        kv = latest.kv_cache_usage if latest else None
        return NodeRow(
            name=node.name,
            host=node.host,
            gpus=gpus,
            kv_cache_pct=kv * 100 if kv is not None else None,
            running=latest.running if latest else None,
            waiting=latest.waiting if latest else None,
            preemptions_per_s=preemptions,
            cost_per_hour_usd=node.cost_per_hour_usd,
            gpu_status=self.source_status(f"gpus:{node.name}", now),
            engine_status=(self.source_status(f"engine:{node.name}", now) if node.engine else None),
            expected_gpus=node.gpus,
        )

    def _engine_window(self, endpoint: EndpointConfig, now: float) -> _EngineWindow | None:
        """Request figures for the endpoint's nodes over the last minute of scrapes.

        A node whose engine source is stale is left out: its last minute is history, not
        the endpoint's present. Rates are summed per node (each over its own span).
        Percentiles of a handful of requests mislead, so a minute holding fewer than
        ``MIN_WINDOW_REQUESTS`` falls back to the histograms since each engine started.
        """
        window_e2e, window_ttft, total_e2e, total_ttft = [], [], [], []
        finished_per_s = errors_per_s = 0.0
        have_rate = False
        for node in endpoint.nodes:
            window = self._engine.get(node)
            if not window or self.source_status(f"engine:{node}", now).stale:
                continue
            (t0, first), (t1, last) = window[0], window[-1]
            if last.e2e_latency:
                total_e2e.append(last.e2e_latency)
                window_e2e.append(histogram_delta(last.e2e_latency, first.e2e_latency))
            if last.ttft:
                total_ttft.append(last.ttft)
                window_ttft.append(histogram_delta(last.ttft, first.ttft))
            if t1 > t0:
                have_rate = True
                for reason, total in last.requests_finished_total.items():
                    delta = counter_delta(total, first.requests_finished_total.get(reason, 0.0))
                    finished_per_s += delta / (t1 - t0)
                    if reason in ("error", "abort"):
                        errors_per_s += delta / (t1 - t0)
        e2e = merge_histograms(window_e2e)
        if e2e is None:
            return None
        since_start = e2e.count < MIN_WINDOW_REQUESTS
        if since_start:
            e2e = merge_histograms(total_e2e)
        ttft = merge_histograms(total_ttft if since_start else window_ttft)
        return _EngineWindow(
            e2e,
            ttft,
            finished_per_s if have_rate else None,
            errors_per_s if have_rate else None,
            since_start,
        )

    def _endpoint_row(self, endpoint: EndpointConfig, now: float) -> EndpointRow:
        probes = [p for p in self._probes[endpoint.name] if p.started_at >= now - PROBE_WINDOW_S]
        ok = [p for p in probes if p.ok]
        status = self.source_status(f"probe:{endpoint.name}", now)
        served = next((p.model for p in reversed(ok) if p.model), None)
        probe_error_pct = 100 * (len(probes) - len(ok)) / len(probes) if probes else None
        engine = self._engine_window(endpoint, now)
        if engine is not None and engine.e2e is not None and engine.e2e.count > 0:
            source = "engine since start" if engine.since_start else "engine"
            p50, p95, p99 = (histogram_quantile(engine.e2e, q) for q in (0.5, 0.95, 0.99))
            ttft95 = histogram_quantile(engine.ttft, 0.95)
            rate = engine.finished_per_s
            engine_error_pct = (
                100 * engine.errors_per_s / engine.finished_per_s
                if engine.finished_per_s and engine.errors_per_s is not None
                else None
            )
            # The engine never counts what its API server refused (a 503, a 429): the probes
            # see those, so the worse of the two is the endpoint's error rate.
            known = [e for e in (engine_error_pct, probe_error_pct) if e is not None]
            error_pct = max(known) if known else None
        else:
            source = "probe"
            latencies = [p.latency_s for p in ok if p.latency_s is not None]
            p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
            ttft95 = percentile([p.ttft_s for p in ok if p.ttft_s is not None], 95)
            rate = None  # probes are our own traffic, not the endpoint's request rate
            error_pct = probe_error_pct
        first_model = self._first_model.get(endpoint.name)
        return EndpointRow(
            name=endpoint.name,
            kind=endpoint.kind,
            model=endpoint.model,
            served_model=served,
            p50_s=p50,
            p95_s=p95,
            p99_s=p99,
            ttft_p95_s=ttft95,
            requests_per_s=rate,
            error_pct=error_pct,
            cost_per_hour_usd=self._cost_per_hour(endpoint, probes),
            latency_history=tuple(v for _, v in self._endpoint_history.get(endpoint.name, ())),
            source=source,
            status=status,
            model_changed=served is not None and first_model not in (None, served),
        )

    def _cost_per_hour(self, endpoint: EndpointConfig, probes: list[ProbeResult]) -> float | None:
        if endpoint.nodes:
            return sum(self.config.node(n).cost_per_hour_usd for n in endpoint.nodes)
        if endpoint.price is None or not probes:
            return None
        # Without request logs the only API spend the console sees is its own probing: the
        # mean cost of a recent probe (a refused one costs nothing) at the configured cadence.
        usd_per_probe = sum(
            (p.prompt_tokens or 0) * endpoint.price.input_per_mtok_usd
            + (p.completion_tokens or 0) * endpoint.price.output_per_mtok_usd
            for p in probes
        ) / (1e6 * len(probes))
        return usd_per_probe * 3600 / endpoint.probe.every_s


@dataclass(frozen=True)
class _EngineWindow:
    e2e: Histogram | None
    ttft: Histogram | None
    finished_per_s: float | None  # None: a single scrape so far, no rate yet
    errors_per_s: float | None
    since_start: bool  # percentiles cover each engine's whole life, not the last minute


class ProbeFailed(Exception):
    """A probe got no answer, an error status, or a stream without content."""


def _ssh_target(config: Config, node: NodeConfig) -> SshTarget:
    return SshTarget(
        node=node.name,
        host=node.host,
        port=node.port,
        user=config.ssh.user,
        known_hosts=config.ssh.known_hosts,
        identity_files=config.ssh.identity_files,
        connect_timeout_s=config.ssh.connect_timeout_s,
        keepalive_s=config.ssh.keepalive_s,
    )


def _probe_target(endpoint: EndpointConfig) -> ProbeTarget:
    return ProbeTarget(
        endpoint=endpoint.name,
        kind=endpoint.kind,
        base_url=endpoint.base_url,
        model=endpoint.model,
        prompt=endpoint.probe.prompt,
        max_tokens=endpoint.probe.max_tokens,
        timeout_s=endpoint.probe.timeout_s,
        api_key_env=endpoint.api_key_env,
    )


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
