"""Scheduling of polled sources: one asyncio task each, backoff, staleness, and their record.

Each source runs in its own task and the next poll is scheduled only after the last one
finished, so polls never overlap. A failure backs off exponentially up to ``max_backoff_s``,
with jitter so that a fleet that failed together does not retry in lockstep, and never sooner
than a ``Retry-After`` the source was given. Durations (how long a poll took, how long since
the last good answer) are measured on the monotonic clock; the wall clock is only recorded
for display ("STALE 03:12:09"). A collector task that dies records why on its source.
This module knows nothing of what a source reads: it calls ``poll`` and records the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial

from console.models import SourceStatus

log = logging.getLogger(__name__)

JITTER = 0.25  # a backoff delay is drawn from [75%, 100%] of its exponential step
MAX_DOUBLINGS = 30  # 2**30 intervals is past any max_backoff anyone configures


@dataclass(frozen=True)
class Source:
    name: str
    interval_s: float
    poll: Callable[[], Awaitable[None]]


# What the scheduler reports for the incident log: (kind, source name, message).
EventSink = Callable[[str, str, str], None]


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Scheduler:
    """Runs sources on their intervals and keeps a :class:`SourceStatus` for each."""

    def __init__(
        self,
        sources: Iterable[Source],
        *,
        max_backoff_s: float,
        stale_after_polls: int,
        on_event: EventSink,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.sources = list(sources)
        self.max_backoff_s = max_backoff_s
        self.stale_after_polls = stale_after_polls
        self._on_event = on_event
        self._clock = clock
        self._monotonic = monotonic
        self._jitter = jitter
        self._status = {s.name: SourceStatus(s.name, s.interval_s) for s in self.sources}
        self._last_ok_mono: dict[str, float] = {}
        self._ok_duration: dict[str, float] = {}
        self._retry_after: dict[str, float] = {}
        self._steady: set[str] = set()  # failing with answers: no backoff
        self._tasks: list[asyncio.Task[None]] = []

    # -- the record

    def add_status(self, name: str, interval_s: float) -> None:
        """A source that is not polled here (the store writer) but is shown like one."""
        self._status[name] = SourceStatus(name, interval_s)

    def update(self, name: str, **changes: object) -> None:
        self._status[name] = replace(self._status[name], **changes)  # type: ignore[arg-type]

    def record_ok(self, name: str) -> None:
        before = self._status[name]
        self._last_ok_mono[name] = self._monotonic()
        # The last error stays on record (the sources view shows what failed last time);
        # consecutive_failures says whether it is failing now.
        self.update(name, last_ok_at=self._clock(), consecutive_failures=0)
        if before.consecutive_failures > 0:
            self._on_event("source.recovered", name, f"{name} answers again")

    def record_failure(self, name: str, message: str) -> None:
        before = self._status[name]
        self.update(
            name,
            last_error=message,
            last_error_at=self._clock(),
            consecutive_failures=before.consecutive_failures + 1,
        )
        if before.consecutive_failures == 0:
            self._on_event("source.failed", name, message)

    def status(self, name: str) -> SourceStatus:
        status = self._status[name]
        last_ok = self._last_ok_mono.get(name)
        if last_ok is None:
            stale = status.consecutive_failures > 0
        else:
            # A poll that itself takes a while (a big scrape) is not stale while it runs.
            limit = self.stale_after_polls * status.interval_s + self._ok_duration.get(name, 0.0)
            stale = self._monotonic() - last_ok > limit
        return replace(status, stale=stale)

    def statuses(self) -> tuple[SourceStatus, ...]:
        return tuple(self.status(name) for name in self._status)

    # -- polling

    async def poll(self, source: Source) -> None:
        started = self._monotonic()
        try:
            await source.poll()
        except Exception as exc:  # any failure degrades this source only
            retry_after = getattr(exc, "retry_after_s", None)
            if isinstance(retry_after, int | float) and retry_after > 0:
                self._retry_after[source.name] = float(retry_after)
            else:
                self._retry_after.pop(source.name, None)
            # A failure that was an answer (an HTTP 500 from a provider) is polled at the
            # usual interval: backing off would starve the very error rate it measures.
            if getattr(exc, "answered", False):
                self._steady.add(source.name)
            else:
                self._steady.discard(source.name)
            self.record_failure(source.name, one_line(exc))
            return
        self._retry_after.pop(source.name, None)
        self._steady.discard(source.name)
        self._ok_duration[source.name] = self._monotonic() - started
        self.record_ok(source.name)

    def delay_after(self, source: Source) -> float:
        failures = self._status[source.name].consecutive_failures
        if failures == 0 or source.name in self._steady:
            return max(source.interval_s, self._retry_after.get(source.name, 0.0))
        # The exponent is capped: 2 ** 1025 is past any float (a node down all weekend).
        doublings = min(failures - 1, MAX_DOUBLINGS)
        step = min(source.interval_s * 2.0**doublings, self.max_backoff_s)
        # Never sooner than a healthy source would be polled, whatever max_backoff says.
        delay = max(step * (1 - JITTER * self._jitter()), source.interval_s)
        # The server said when to come back (a 429's Retry-After): asking sooner is refused.
        return max(delay, self._retry_after.get(source.name, 0.0))

    async def _run(self, source: Source) -> None:
        while True:
            await self.poll(source)
            await asyncio.sleep(self.delay_after(source))

    def _task_ended(self, source: Source, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug in the loop itself: say so on the source, not in silence
            log.error("collector %s stopped", source.name, exc_info=exc)
            self.record_failure(source.name, f"collector stopped: {one_line(exc)}")

    def start(self) -> None:
        if self._tasks:
            return
        for source in self.sources:
            task = asyncio.create_task(self._run(source), name=source.name)
            task.add_done_callback(partial(self._task_ended, source))
            self._tasks.append(task)

    async def poll_all(self, prefix: str = "") -> None:
        """Poll every source (or those whose name starts with ``prefix``) once, together."""
        await asyncio.gather(*(self.poll(s) for s in self.sources if s.name.startswith(prefix)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
