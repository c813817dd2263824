"""The hub: wires the parts that turn the fleet's answers into snapshots.

- :mod:`console.scheduler` runs each source on its interval (no overlapping polls, backoff
  with jitter, Retry-After, staleness) and keeps its status;
- :mod:`console.collectors` polls one source through the backends and keeps the readings;
- :mod:`console.windows` holds the engines' rolling windows;
- :mod:`console.aggregate` turns readings and status into a :class:`FleetSnapshot` (pure);
- :mod:`console.store_writer` batches rows and events into the store.

The hub owns the shared clients (one pooled HTTP client, one SSH pool that the runbook engine
will share) and shuts everything down with bounded waits. It knows nothing of Textual: screens
read snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

import httpx

from backends.host import HostCollector
from backends.ssh import SshPool, SshTarget
from console.aggregate import fleet_snapshot
from console.alertmanager_source import alertmanager_source
from console.alerts import AlertEngine, AlertEvent
from console.collectors import Collectors, FleetReadings
from console.config import Config, NodeConfig, RouterConfig
from console.facts import FigureReader
from console.gpu_history import GpuSeries
from console.incidents import IncidentRecord
from console.models import FleetSnapshot, SourceStatus
from console.scheduler import Scheduler, Source
from console.store import Store
from console.store_writer import StoreWriter
from console.triage import IncidentChange, IncidentDesk, PendingAlert

log = logging.getLogger(__name__)

WINDOW_S = 60.0  # figures on screen cover the last minute
PROBE_WINDOW_S = 300.0  # probes are sparse: percentiles over five minutes of them
STORE_FLUSH_S = 1.0
PURGE_EVERY_S = 600.0
CLOSE_TIMEOUT_S = 5.0  # each shutdown step (final flush, SSH close, HTTP close) at most


class Hub:
    """Owns the collectors, their schedules, the readings and the store writer."""

    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.time,
        window_s: float = WINDOW_S,
        host: HostCollector | None = None,
    ) -> None:
        """``host`` reads the console's own host (``host:NAME``); without one it is not a
        source (a test's figures should not depend on the machine running it)."""
        self.config = config
        self.store = store
        self.clock = clock
        self.window_s = window_s
        # One pooled client for every engine and endpoint: keep a connection to each alive
        # (the default pool of 20 would reconnect, and skew probe TTFT, on a big fleet).
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        # Routers' hosts too: runbooks change their weights over the same pool.
        hosts: list[NodeConfig | RouterConfig] = [*config.nodes, *config.routers]
        self.ssh = SshPool(ssh_target(config, h) for h in hosts)
        self.readings = FleetReadings(
            window_s=max(window_s, WINDOW_S), probe_window_s=max(window_s, PROBE_WINDOW_S)
        )
        self.writer = StoreWriter(
            store,
            clock=clock,
            record_ok=lambda: self.scheduler.record_ok("store"),
            record_failure=lambda message: self.scheduler.record_failure("store", message),
            warn=lambda text: self.scheduler.update("store", warning=text),
        )
        self.collectors = Collectors(
            config,
            self.readings,
            http=self.http,
            ssh=self.ssh,
            writer=self.writer,
            warn=lambda name, text: self.scheduler.update(name, warning=text),
            via=lambda name, via, note: self.scheduler.update(name, via=via, via_note=note),
            clock=clock,
            host=host,
        )
        self.scheduler = Scheduler(
            self._build_sources(),
            max_backoff_s=config.poll.max_backoff_s,
            stale_after_polls=config.poll.stale_after_polls,
            on_event=self.writer.add_event,
            clock=clock,
        )
        if store is not None:  # the incident log's health is shown like any source's
            self.scheduler.add_status("store", STORE_FLUSH_S)
        # Rules on the live windows, once a second (console/alerts.py).
        self.alerts = AlertEngine(config, FigureReader(self), clock)
        # Told each alert event as it is logged (`llmops watch` prints them).
        self.alert_listeners: list[Callable[[AlertEvent], None]] = []
        # Where alerts open and join incidents (console/triage.py): only in the hubs that
        # keep watch (the TUI's, `llmops watch`), not in one a CLI command starts for a while.
        self.incident_desk: IncidentDesk | None = None
        self.incident_listeners: list[Callable[[IncidentChange], None]] = []
        self._pending_alerts: list[PendingAlert] = []
        # The open incidents as the last housekeeping read them (both consoles' alike): what
        # the header counts and the TUI raises a toast for. Read in a thread, never here.
        self.open_incidents: tuple[IncidentRecord, ...] = ()
        self._housekeeping: asyncio.Task[None] | None = None

    @property
    def sources(self) -> list[Source]:
        return self.scheduler.sources

    def _build_sources(self) -> list[Source]:
        poll = self.config.poll
        c = self.collectors
        sources = []
        for node in self.config.nodes:
            sources.append(Source(f"gpus:{node.name}", poll.gpus_s, partial(c.gpus, node)))
            if node.engine is not None:
                sources.append(
                    Source(f"engine:{node.name}", poll.engine_s, partial(c.engine, node))
                )
        for endpoint in self.config.endpoints:
            sources.append(
                Source(f"probe:{endpoint.name}", endpoint.probe.every_s, partial(c.probe, endpoint))
            )
        if c.host_collector is not None:
            sources.append(Source(f"host:{c.host_collector.name}", poll.gpus_s, c.host))
        if self.config.alertmanager is not None:  # its alerts are published as our own
            sources.append(
                alertmanager_source(self.config, self.http, self.clock, self.publish_alert)
            )
        return sources

    # -- running

    def start(self) -> None:
        """Start every collector as an asyncio task on the running loop."""
        if self._housekeeping is not None:
            return
        self.scheduler.start()
        self._housekeeping = asyncio.create_task(self._run_housekeeping(), name="housekeeping")

    async def poll_once(self, prefix: str = "") -> None:
        """Poll every source (or those whose name starts with ``prefix``) once, together."""
        await self.scheduler.poll_all(prefix)

    async def _run_housekeeping(self) -> None:
        """Once a second: a sparkline point per endpoint, then the store; purge now and then."""
        last_purge = float("-inf")  # purge once at start, then every PURGE_EVERY_S
        while True:
            await asyncio.sleep(STORE_FLUSH_S)
            snapshot = None
            try:
                # One snapshot a second, for the sparklines and the alert rules alike.
                snapshot = self.snapshot()
                self._sample_history(snapshot)
            except Exception:  # a bug here must not stop the store writes below, or for good
                log.exception("sparkline sampling failed")
            try:
                self.evaluate_alerts(snapshot)
            except Exception:  # likewise: the alerts fail, the store writes go on
                log.exception("alert evaluation failed")
            if self.incident_desk is not None:
                try:
                    await self.record_incidents()
                except Exception:  # the incident log fails: the readings go on
                    log.exception("recording incidents failed")
            await self.writer.flush()
            if self.store is not None and time.monotonic() - last_purge > PURGE_EVERY_S:
                last_purge = time.monotonic()
                await self.writer.purge()

    def _sample_history(self, snapshot: FleetSnapshot) -> None:
        for row in snapshot.endpoints:
            # A stale row's figures are frozen: the trend shows only what was measured.
            frozen = row.engines and row.engines_stale == row.engines
            if row.p95_s is not None and not frozen:
                self.readings.add_history_point(row.name, snapshot.taken_at, row.p95_s)

    def evaluate_alerts(self, snapshot: FleetSnapshot | None = None) -> list[AlertEvent]:
        """Evaluate every alert rule once (on ``snapshot``, taken over the hub's window just
        now, when given); what fired or resolved goes to the incident log."""
        events = self.alerts.evaluate(snapshot)
        for event in events:
            self.publish_alert(event, snapshot)
        return events

    def publish_alert(self, event: AlertEvent, snapshot: FleetSnapshot | None = None) -> None:
        """One alert event, from the rules or from an outside source (Alertmanager): to the
        incident log, and to every listener."""
        log.info("%s", event.message)
        if self.incident_desk is None:
            self.writer.add_event(event.kind, event.source, event.message)
        else:  # logged with its incident by record_incidents, in the incident's transaction
            # Its evidence is read now, on the figures that fired it.
            snapshot = snapshot if snapshot is not None else self.snapshot()
            self._pending_alerts.append(self.incident_desk.prepare(event, snapshot))
        for listener in self.alert_listeners:
            listener(event)

    def keep_incidents(self, desk: IncidentDesk) -> None:
        """From now on alerts open and join incidents through ``desk``."""
        self.incident_desk = desk

    async def record_incidents(self) -> list[IncidentChange]:
        """Write the alerts of the last evaluation to the incident log (in a thread: SQLite
        may wait on another console's write), then read the open incidents back."""
        desk = self.incident_desk
        if desk is None:
            return []
        pending, self._pending_alerts = self._pending_alerts, []

        def write() -> tuple[list[IncidentChange], tuple[IncidentRecord, ...]]:
            changes = [c for p in pending if (c := desk.record(p)) is not None]
            return changes, tuple(desk.log.incidents(open_only=True))

        changes, self.open_incidents = await asyncio.to_thread(write)
        for change in changes:
            log.info("%s", change.message)
            for listener in self.incident_listeners:
                listener(change)
        return changes

    def record_event(self, kind: str, message: str, source: str = "console") -> None:
        """An event for the incident log, written with the next flush."""
        self.writer.add_event(kind, source, message)

    async def flush(self) -> None:
        await self.writer.flush()

    async def stop(self, reason: str | None = None) -> None:
        """Stop the collectors, write what is pending, close the connections: bounded waits.

        With a ``reason`` (the console quit, or a signal ended it) the stop is logged too.
        """
        await self.scheduler.stop()
        if reason is not None:
            self.record_event("console.stopped", f"console {reason}")
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._housekeeping
            self._housekeeping = None
        for step, closing in (
            ("final store flush", self.writer.flush),
            ("SSH close", partial(self.ssh.close, CLOSE_TIMEOUT_S)),
            ("HTTP close", self.http.aclose),
            ("engine HTTP close", self.collectors.aclose),
        ):
            try:
                await asyncio.wait_for(closing(), CLOSE_TIMEOUT_S)
            except Exception as exc:  # shutting down: say what did not finish, and go on
                log.warning("%s did not finish: %s", step, exc or type(exc).__name__)

    # -- snapshots

    def _statuses(self) -> dict[str, SourceStatus]:
        return {s.name: s for s in self.scheduler.statuses()}

    def snapshot(self, window_s: float | None = None) -> FleetSnapshot:
        return fleet_snapshot(
            self.config,
            self.readings,
            self._statuses(),
            self.clock(),
            self.window_s if window_s is None else window_s,
        )

    def gpu_series(self, node: str, index: int, metric: str, window_s: float) -> GpuSeries:
        """One GPU's history of one metric (``console.gpu_history.METRICS``) over a window,
        for the GPU screen's graphs; empty before the first reading."""
        history = self.readings.gpu_history.get((node, index))
        if history is None:
            return GpuSeries(metric, window_s, (), self.config.poll.gpus_s)
        return history.series(metric, window_s, self.clock())


def ssh_target(config: Config, node: NodeConfig | RouterConfig) -> SshTarget:
    """The SSH target of a node, or of a router's host (the pool names it by the router).

    A value the llmops config sets explicitly wins over the OpenSSH client config
    (``ssh.config``); one it leaves out is left to ssh_config, then to the defaults.
    """
    ssh = config.ssh
    explicit = ssh.model_fields_set
    return SshTarget(
        node=node.name,
        host=node.host,
        port=node.port if "port" in node.model_fields_set else None,
        user=ssh.user if "user" in explicit else None,
        known_hosts=ssh.known_hosts if "known_hosts" in explicit else None,
        identity_files=ssh.identity_files if "identity_files" in explicit else None,
        connect_timeout_s=ssh.connect_timeout_s if "connect_timeout_s" in explicit else None,
        keepalive_s=ssh.keepalive_s if "keepalive_s" in explicit else None,
        ssh_config=ssh.config,
    )
