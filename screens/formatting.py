"""How numbers and source states are written on screen: short, fixed-width, N/A for unknown."""

from __future__ import annotations

import math
import time

from console.models import HostHealth, SourceStatus

NA = "N/A"  # not known; NaN and infinities are shown so too: they are never figures


class Alarm(str):
    """Cell text to make stand out: a stale source, a failure, a figure past its threshold."""

    __slots__ = ()


def seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return NA
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 10:
        return f"{value:.2f}s"
    if value < 100:
        return f"{value:.1f}s"
    if value < 100_000:
        return f"{value:.0f}s"
    return f"{value:.0e}s"  # an absurd bucket bound still fits its column


def floor_seconds(value: float) -> str:
    """A lower bound: the true figure is above it (``>10s``, ``>2.5s``, ``>500ms``)."""
    if not math.isfinite(value):
        return NA
    if value < 1:
        return f">{value * 1000:.0f}ms"
    return f">{value:.1f}s".replace(".0s", "s") if value < 100 else f">{value:.0f}s"


def number(value: float | None, digits: int = 0) -> str:
    return NA if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def error_pct(value: float | None) -> str:
    """Four characters at most: 0.0 .. 99.9, then 100."""
    if value is None or not math.isfinite(value):
        return NA
    return f"{value:.1f}" if value < 99.95 else f"{value:.0f}"


def celsius(value: float | None) -> str:
    return NA if value is None or not math.isfinite(value) else f"{value:.0f}C"


def failure_label(error: str | None) -> str:
    """Nine characters at most for why a probe failed; the sources view has the whole text."""
    if not error:
        return "unknown"
    if error.startswith("HTTP "):
        return error.split(":", 1)[0]
    for needle, label in (
        ("refused", "refused"),
        ("timed out", "timeout"),
        ("without a content token", "no tokens"),
        ("is not set", "no key"),
    ):
        if needle in error:
            return label
    return error[:9]


def pct(value: float | None) -> str:
    return NA if value is None or not math.isfinite(value) else f"{value:.0f}%"


def usd(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return NA
    if 0 < value < 0.005:  # a few probes an hour: small, but not nothing
        return "<$0.01"
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
            return Alarm("DOWN")
        return Alarm(f"STALE {clock(status.last_ok_at)}")
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


def host_summary(health: HostHealth) -> str:
    """The console's own host on one line; N/A for what psutil could not read."""

    def pct(value: float | None) -> str:
        return "N/A" if value is None or not math.isfinite(value) else f"{value:.0f}%"

    def amount(used: float | None, total: float | None, scale: float) -> str:
        if used is None or total is None:
            return "N/A"
        return f"{used / scale:.1f}/{total / scale:.1f} GiB"

    loads = (health.load_1m, health.load_5m, health.load_15m)
    load = " ".join("N/A" if v is None else f"{v:.2f}" for v in loads)
    cores = f" of {health.cpu_count} cores" if health.cpu_count else ""
    gpus = f"{len(health.gpus)} GPU(s)" if health.gpus else (health.gpu_note or "no GPUs")
    return (
        f"cpu {pct(health.cpu_pct)}{cores} · memory "
        f"{amount(health.memory_used_mib, health.memory_total_mib, 1024)} "
        f"({pct(health.memory_pct)}) · disk {health.disk_path} "
        f"{amount(health.disk_used_gib, health.disk_total_gib, 1)} ({pct(health.disk_pct)}) · "
        f"load {load} · {gpus}"
    )
