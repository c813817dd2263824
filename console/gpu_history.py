"""Per-GPU history for the GPU screen's graphs: util, memory, power and temperature.

Two rings per GPU: every poll for the last few minutes (the 1 m and 5 m graphs), and one
point per ``COARSE_STEP_S`` for the last hour (15 m and 1 h). Values live in ``array('d')``
rings, eight bytes each, so an hour of 256 nodes x 8 GPUs stays in tens of MB rather than
the hundreds a deque of float objects would take. A figure the GPU does not report is kept
as NaN and comes back as None: a gap in the graph, never a zero.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

from console.models import GpuReading

METRICS = ("util_pct", "memory_pct", "power_w", "temperature_c")
FINE_SPAN_S = 300.0  # every poll, for the 1 m and 5 m graphs
COARSE_STEP_S = 15.0
COARSE_SPAN_S = 3600.0
WINDOWS_S = (60.0, 300.0, 900.0, 3600.0)  # what the GPU screen offers: 1 m, 5 m, 15 m, 1 h


def _values(reading: GpuReading) -> tuple[float, ...]:
    memory_pct = (
        100 * reading.memory_used_mib / reading.memory_total_mib
        if reading.memory_used_mib is not None and reading.memory_total_mib
        else None
    )
    values = (reading.util_pct, memory_pct, reading.power_w, reading.temperature_c)
    return tuple(math.nan if v is None else float(v) for v in values)


class _Ring:
    """A fixed number of (time, values) points, oldest overwritten first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.times = array("d", [math.nan]) * size
        self.values = [array("d", [math.nan]) * size for _ in METRICS]
        self.next = 0  # where the next point goes
        self.count = 0

    def add(self, ts: float, values: tuple[float, ...]) -> None:
        self.times[self.next] = ts
        for column, value in zip(self.values, values, strict=True):
            column[self.next] = value
        self.next = (self.next + 1) % self.size
        self.count = min(self.count + 1, self.size)

    @property
    def last_ts(self) -> float | None:
        return self.times[(self.next - 1) % self.size] if self.count else None

    def since(self, start: float, metric: int) -> list[float | None]:
        """The points at or after ``start``, oldest first."""
        out: list[float | None] = []
        column = self.values[metric]
        for offset in range(self.count):
            slot = (self.next - self.count + offset) % self.size
            if self.times[slot] >= start:
                value = column[slot]
                out.append(None if math.isnan(value) else value)
        return out


@dataclass(frozen=True)
class GpuSeries:
    """One metric of one GPU over a window, oldest first; None where it was not reported."""

    metric: str
    window_s: float
    points: tuple[float | None, ...]
    step_s: float  # the spacing of the points: the poll interval, or COARSE_STEP_S


class GpuHistory:
    """The history of one GPU."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s = max(poll_s, 0.1)
        self._fine = _Ring(max(2, math.ceil(FINE_SPAN_S / self.poll_s)))
        self._coarse = _Ring(math.ceil(COARSE_SPAN_S / COARSE_STEP_S))

    def add(self, ts: float, reading: GpuReading) -> None:
        values = _values(reading)
        self._fine.add(ts, values)
        last = self._coarse.last_ts
        # One point per COARSE_STEP_S bucket of the clock: steady spacing whatever the poll.
        if last is None or ts // COARSE_STEP_S != last // COARSE_STEP_S:
            self._coarse.add(ts, values)

    def series(self, metric: str, window_s: float, now: float) -> GpuSeries:
        index = METRICS.index(metric)
        fine = window_s <= FINE_SPAN_S
        ring = self._fine if fine else self._coarse
        return GpuSeries(
            metric=metric,
            window_s=window_s,
            points=tuple(ring.since(now - window_s, index)),
            step_s=self.poll_s if fine else COARSE_STEP_S,
        )

    def recent(self, metric: str, count: int) -> tuple[float, ...]:
        """The last ``count`` reported values (the overview's sparkline), gaps left out."""
        index = METRICS.index(metric)
        points = self._fine.since(float("-inf"), index)
        return tuple(p for p in points[-count:] if p is not None)
