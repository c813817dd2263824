"""Collectors: one poll of one source, turned into readings kept for the snapshots.

A collector asks a backend (GPUs over the shared SSH pool, an engine's ``/metrics``, an
endpoint's streaming probe, or the Prometheus server for the nodes set to be read there),
keeps what came back in :class:`FleetReadings` and hands it to the store writer. It raises on
failure, so that the scheduler records it and backs off; what an answer had to drop
(malformed or non-finite metric lines) is a warning on the source. Collectors do not
schedule, aggregate or write to the store themselves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from backends.engines import MetricsScraper, engine_stats_from_text
from backends.gpu import GpuCollector, snapshot_warning
from backends.host import HostCollector
from backends.prometheus import PROMETHEUS, PrometheusFleet, Server, exposition_text
from backends.providers import ProbeTarget, probe
from backends.ssh import SshPool
from console.config import Config, EndpointConfig, NodeConfig, PrometheusConfig
from console.gpu_history import GpuHistory
from console.models import EngineStats, GpuReading, GpuSnapshot, HostHealth, ProbeResult
from console.store_writer import StoreWriter
from console.windows import EngineWindow

HISTORY_LEN = 30  # points kept for sparklines
HISTORY_STEP_S = 2.0


@dataclass
class FleetReadings:
    """What the collectors have read: the rolling state the snapshots are computed from."""

    window_s: float  # how far back engine scrapes are kept
    probe_window_s: float  # probes are sparse: their percentiles cover a longer span
    gpus: dict[str, tuple[GpuReading, ...]] = field(default_factory=dict)
    gpu_snapshots: dict[str, GpuSnapshot] = field(default_factory=dict)  # with how each was read
    gpu_history: dict[tuple[str, int], GpuHistory] = field(default_factory=dict)
    host: HostHealth | None = None  # the console's own host
    engines: dict[str, EngineWindow] = field(default_factory=dict)
    probes: dict[str, deque[ProbeResult]] = field(default_factory=dict)
    endpoint_history: dict[str, deque[float]] = field(default_factory=dict)
    endpoint_history_at: dict[str, float] = field(default_factory=dict)
    first_model: dict[str, str] = field(default_factory=dict)

    def engine_window(self, node: str) -> EngineWindow:
        window = self.engines.get(node)
        if window is None:
            window = self.engines[node] = EngineWindow(max_age_s=self.window_s)
        return window

    def add_gpus(self, node: str, gpus: tuple[GpuReading, ...], now: float, poll_s: float) -> None:
        """One poll of a node's GPUs: its latest readings, and a point of each one's history
        (the replay fills its readings through here too)."""
        self.gpus[node] = gpus
        for r in gpus:
            key = (node, r.index)
            history = self.gpu_history.get(key)
            if history is None:
                history = self.gpu_history[key] = GpuHistory(poll_s)
            history.add(now, r)

    def add_probe(self, result: ProbeResult) -> None:
        """One probe result, into its endpoint's window (the replay's too)."""
        window = self.probes.setdefault(result.endpoint, deque())
        window.append(result)
        while window and window[0].started_at < result.started_at - self.probe_window_s:
            window.popleft()
        if result.ok and result.model:
            # APIs answer an alias with a dated name: compare with the first answer, not config.
            self.first_model.setdefault(result.endpoint, result.model)

    def add_history_point(self, endpoint: str, now: float, value: float) -> None:
        """One sparkline point per ``HISTORY_STEP_S`` at most, so the trend spans a minute."""
        if now - self.endpoint_history_at.get(endpoint, float("-inf")) < HISTORY_STEP_S:
            return
        self.endpoint_history.setdefault(endpoint, deque(maxlen=HISTORY_LEN)).append(value)
        self.endpoint_history_at[endpoint] = now


class ProbeFailed(Exception):
    """A probe got no answer, an error status, or a stream without content."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, answered: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the scheduler waits at least this long
        # The endpoint answered with an error (a 500): it is probed at its interval, not
        # backed off, since its probes are what its error rate is made of.
        self.answered = answered


# Sets (text) or clears (None) the warning shown on a source.
Warn = Callable[[str, str | None], None]
# Says how a source is read ("nvml", "nvidia-smi", "psutil") and why not the first choice.
Via = Callable[[str, str, str | None], None]

DISK_WARN_PCT = 90.0  # the store's disk: past this the incident log may soon stop
MEMORY_WARN_PCT = 90.0


class Collectors:
    def __init__(
        self,
        config: Config,
        readings: FleetReadings,
        *,
        http: httpx.AsyncClient,
        ssh: SshPool,
        writer: StoreWriter,
        warn: Warn,
        via: Via,
        clock: Callable[[], float],
        host: HostCollector | None = None,
    ) -> None:
        self.config = config
        self.readings = readings
        self._http = http
        self._writer = writer
        self._warn = warn
        self._via = via
        self._clock = clock
        self._ssh = ssh
        self._gpu_readers = {
            n.name: GpuCollector(n.name, ssh.runner(n.name))
            for n in config.nodes
            if n.gpus_from == "ssh"
        }
        self.host_collector = host
        self.prometheus = (
            prometheus_fleet(config, config.prometheus, http) if config.prometheus else None
        )
        # Per directly read engine: it asks only for what the console reads, once it knows it.
        self._scrapers: dict[str, MetricsScraper] = {}
        # Per Prometheus-read engine: the server's time of the scrape last added to its window.
        self._scraped_at: dict[str, float] = {}

    async def gpus(self, node: NodeConfig) -> None:
        if node.gpus_from == PROMETHEUS:
            assert self.prometheus is not None  # the config refuses one without the other
            snapshot = await self.prometheus.gpus(node.name)
            via_note: str | None = self.prometheus.server.name
        else:
            snapshot = await self._gpu_readers[node.name].read()
            via_note = snapshot.fallback_reason
        self.readings.gpu_snapshots[node.name] = snapshot
        now = self._clock()
        self.readings.add_gpus(node.name, snapshot.gpus, now, self.config.poll.gpus_s)
        self._writer.add_gpus(snapshot.gpus, now)
        self._via(f"gpus:{node.name}", snapshot.method, via_note)
        self._warn(f"gpus:{node.name}", snapshot_warning(snapshot))

    async def host(self) -> None:
        """The console's own host: CPU, memory, load, the store's disk, and its GPUs."""
        assert self.host_collector is not None
        health = await self.host_collector.read()
        self.readings.host = health
        name = f"host:{health.host}"
        self._via(name, "psutil, nvml" if health.gpus else "psutil", health.gpu_note)
        warnings = [*health.errors]
        if health.disk_pct is not None and health.disk_pct >= DISK_WARN_PCT:
            warnings.append(
                f"disk {health.disk_path} {health.disk_pct:.0f}% full: the incident log needs room"
            )
        if health.memory_pct is not None and health.memory_pct >= MEMORY_WARN_PCT:
            warnings.append(f"memory {health.memory_pct:.0f}% used")
        self._warn(name, "; ".join(warnings) or None)

    async def engine(self, node: NodeConfig) -> None:
        assert node.engine is not None
        if node.engine.source == PROMETHEUS:
            await self._engine_from_prometheus(node)
            return
        scraper = self._scrapers.get(node.name)
        if scraper is None:
            scraper = self._scrapers[node.name] = MetricsScraper(
                node.name, node.engine.url, self._http.timeout
            )
        scraper.base_url = await engine_base_url(self._ssh, node)
        stats = await scraper.scrape()
        now = self._clock()
        self.readings.engine_window(node.name).add(now, stats)
        self._writer.add_engine(stats, now)  # under the window's time: the replay's too
        self._warn_dropped(node, stats)

    async def _engine_from_prometheus(self, node: NodeConfig) -> None:
        """The node's vLLM series from the server, into the same window a scrape feeds."""
        assert self.prometheus is not None
        series = await self.prometheus.engine_series(node.name)
        self._via(f"engine:{node.name}", PROMETHEUS, self.prometheus.server.name)
        if self._scraped_at.get(node.name) == series.scraped_at:
            return  # the server has not scraped it since: the window has this one already
        text = exposition_text(series, self.prometheus.server.node_label)
        stats = await asyncio.to_thread(engine_stats_from_text, node.name, text)
        # When the server scraped it, on the console's clock (the two clocks may differ).
        scraped = self._clock() - series.age_s
        self.readings.engine_window(node.name).add(scraped, stats)
        self._scraped_at[node.name] = series.scraped_at
        self._writer.add_engine(stats, scraped)
        self._warn_dropped(node, stats)

    def _warn_dropped(self, node: NodeConfig, stats: EngineStats) -> None:
        dropped = []
        if stats.skipped_lines:
            dropped.append(
                f"{len(stats.skipped_lines)} malformed metric line(s) skipped, first: "
                f"{stats.skipped_lines[0][:60]!r}"
            )
        if stats.non_finite:
            dropped.append(
                f"{len(stats.non_finite)} NaN/Inf sample(s) dropped, first: "
                f"{stats.non_finite[0][:60]!r}"
            )
        self._warn(f"engine:{node.name}", "; ".join(dropped) or None)

    async def aclose(self) -> None:
        """Close the engines' own HTTP clients."""
        scrapers, self._scrapers = list(self._scrapers.values()), {}
        await asyncio.gather(*(s.aclose() for s in scrapers), return_exceptions=True)

    async def probe(self, endpoint: EndpointConfig) -> None:
        result = await probe(self._http, probe_target(endpoint))
        self.readings.add_probe(result)
        self._writer.add_probe(result)
        if not result.ok:
            # Recorded above for error %, and raised so the source shows the failure. No answer
            # backs it off, and a 429 for as long as its Retry-After says; an error answered
            # (a 500) keeps the interval, so the error rate stays measured.
            answered = result.status is not None and result.status != 429
            raise ProbeFailed(
                result.error or "probe failed", result.retry_after_s, answered=answered
            )


async def engine_base_url(ssh: SshPool, node: NodeConfig) -> str:
    """Where the console reaches the node's engine: its url, or for an engine bound to the
    node's localhost (``via_ssh``), a local forward over the node's connection."""
    assert node.engine is not None
    if not node.engine.via_ssh:
        return node.engine.url
    return await ssh.forwarded_url(node.name, node.engine.url)


def prometheus_fleet(
    config: Config, prometheus: PrometheusConfig, http: httpx.AsyncClient
) -> PrometheusFleet:
    return PrometheusFleet(
        http,
        Server(
            url=prometheus.url,
            timeout_s=prometheus.timeout_s,
            node_label=prometheus.node_label,
            max_age_s=prometheus.max_age_s,
            bearer_token_env=prometheus.bearer_token_env,
            header_env=tuple(prometheus.header_env.items()),
        ),
        engine_nodes=[
            n.name for n in config.nodes if n.engine is not None and n.engine.source == PROMETHEUS
        ],
        gpu_nodes=[n.name for n in config.nodes if n.gpus_from == PROMETHEUS],
        engine_every_s=config.poll.engine_s,
        gpus_every_s=config.poll.gpus_s,
    )


def probe_target(endpoint: EndpointConfig) -> ProbeTarget:
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
