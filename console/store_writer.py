"""The store writer: readings and events batched into the SQLite store from a worker thread.

Collectors and the scheduler hand rows over as they come; :meth:`StoreWriter.flush` writes
them once a second off the event loop. While the store cannot be written (locked, full or
read-only disk) rows wait in memory, bounded: samples go first (the oldest of them), then
probe results (the oldest), and events, the incident log itself, only past a much larger
bound. Whatever was dropped is counted and shown on the ``store`` source. The writer knows
nothing of how rows were collected.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from console.models import EngineStats, GpuReading, ProbeResult
from console.scheduler import one_line
from console.store import Store

log = logging.getLogger(__name__)

MAX_PENDING_SAMPLES = 50_000  # GPU and engine rows kept while the store cannot be written
MAX_PENDING_PROBES = 20_000
MAX_PENDING_EVENTS = 100_000


@dataclass(frozen=True)
class PendingEvent:
    kind: str
    source: str
    message: str
    ts: float


class StoreWriter:
    """Pending rows for one store, and their flush."""

    def __init__(
        self,
        store: Store | None,
        *,
        clock: Callable[[], float],
        record_ok: Callable[[], None],
        record_failure: Callable[[str], None],
        warn: Callable[[str | None], None],
    ) -> None:
        self.store = store
        self._clock = clock
        self._record_ok = record_ok
        self._record_failure = record_failure
        self._warn = warn
        self._gpus: deque[tuple[float, GpuReading]] = deque(maxlen=MAX_PENDING_SAMPLES)
        self._engines: deque[tuple[float, EngineStats]] = deque(maxlen=MAX_PENDING_SAMPLES)
        self._probes: deque[ProbeResult] = deque(maxlen=MAX_PENDING_PROBES)
        self._events: deque[PendingEvent] = deque(maxlen=MAX_PENDING_EVENTS)
        self.dropped = {"samples": 0, "probe results": 0, "events": 0}

    @property
    def pending(self) -> int:
        return len(self._gpus) + len(self._engines) + len(self._probes) + len(self._events)

    def _append(self, queue: deque[Any], kind: str, item: object) -> None:
        if self.store is None:
            return
        if len(queue) == queue.maxlen:  # a full deque drops its oldest on append
            self.dropped[kind] += 1
        queue.append(item)

    def add_gpus(self, readings: Iterable[GpuReading], ts: float | None = None) -> None:
        """One poll of one node's GPUs, taken at ``ts`` (now when not given): the time the
        readings' own windows keep them under, so that a replay sees what the screen saw."""
        now = self._clock() if ts is None else ts
        for r in readings:
            self._append(self._gpus, "samples", (now, r))

    def add_engine(self, stats: EngineStats, ts: float | None = None) -> None:
        """One engine scrape, taken at ``ts`` (now when not given; a Prometheus-read engine's
        is when the server scraped it)."""
        self._append(self._engines, "samples", (self._clock() if ts is None else ts, stats))

    def add_probe(self, result: ProbeResult) -> None:
        self._append(self._probes, "probe results", result)

    def add_event(self, kind: str, source: str, message: str) -> None:
        self._append(self._events, "events", PendingEvent(kind, source, message, self._clock()))

    async def flush(self) -> None:
        """Write what is pending from a worker thread; on failure keep it for the next try."""
        store = self.store
        if store is None or not self.pending:
            return
        # Take the queues as they are; rows that arrive during the write go into new ones.
        gpus, engines, probes, events = self._gpus, self._engines, self._probes, self._events
        self._gpus, self._engines = deque(maxlen=gpus.maxlen), deque(maxlen=engines.maxlen)
        self._probes, self._events = deque(maxlen=probes.maxlen), deque(maxlen=events.maxlen)

        def write() -> None:
            # One transaction: a failure leaves nothing half-written to be written twice.
            store.write_batch(
                probes,
                gpus,
                engines,
                [
                    {"kind": e.kind, "message": e.message, "source": e.source, "ts": e.ts}
                    for e in events
                ],
            )

        try:
            await asyncio.to_thread(write)
        except Exception as exc:  # a locked or full disk must not stop the collectors
            self._gpus = self._requeue(gpus, self._gpus, "samples")
            self._engines = self._requeue(engines, self._engines, "samples")
            self._probes = self._requeue(probes, self._probes, "probe results")
            self._events = self._requeue(events, self._events, "events")
            self._record_failure(f"{store.path}: {one_line(exc)}")
            self._warn(self._dropped_text())
            return
        self._record_ok()
        self._warn(self._dropped_text())

    def _requeue(self, older: deque[Any], newer: deque[Any], kind: str) -> deque[Any]:
        """Unwritten rows back in front of the new ones, the oldest dropped past the bound."""
        merged = deque(older, maxlen=older.maxlen)
        overflow = max(0, len(older) + len(newer) - (older.maxlen or 0))
        self.dropped[kind] += overflow
        merged.extend(newer)
        return merged

    def _dropped_text(self) -> str | None:
        parts = [f"{n} {kind}" for kind, n in self.dropped.items() if n]
        return f"dropped while the store failed: {', '.join(parts)}" if parts else None

    async def purge(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            await asyncio.to_thread(store.purge, self._clock())
        except Exception as exc:  # retention is housekeeping: never stop the collectors
            log.warning("store purge failed: %s", one_line(exc))
