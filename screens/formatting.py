"""How numbers and source states are written on screen: short, fixed-width, N/A for unknown."""

from __future__ import annotations

import time

from console.models import SourceStatus

NA = "N/A"


def seconds(value: float | None) -> str:
    if value is None:
        return NA
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 100:
        return f"{value:.2f}s"
    return f"{value:.0f}s"


def number(value: float | None, digits: int = 0) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return NA if value is None else f"{value:.0f}%"


def usd(value: float | None) -> str:
    if value is None:
        return NA
    return f"${value:,.2f}" if value < 1000 else f"${value:,.0f}"


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def source_state(status: SourceStatus | None) -> str:
    """At most 14 characters: ok, waiting, retrying, DOWN (never answered) or
    ``STALE HH:MM:SS``, the time of the last good answer (the "stale since" marker)."""
    if status is None:
        return "-"
    if status.stale:
        if status.last_ok_at is None:
            return "DOWN"
        return f"STALE {clock(status.last_ok_at)}"
    if status.consecutive_failures:
        return "retrying"
    if status.last_ok_at is None:
        return "waiting"
    if status.warning:
        return "ok, warnings"
    return "ok"


def worst(*statuses: SourceStatus | None) -> SourceStatus | None:
    """The status to show for a row fed by several sources: a stale one wins."""
    present = [s for s in statuses if s is not None]
    for status in present:
        if status.stale:
            return status
    for status in present:
        if status.consecutive_failures:
            return status
    return present[0] if present else None
