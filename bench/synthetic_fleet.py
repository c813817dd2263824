"""Deterministic fleet snapshots of any size, for benchmarks and screen snapshot tests.

Synthetic, not captured: every GPU starts from the real H100 capture in
tests/fixtures/gpu (name, memory size, power limit, number formats) and gets utilisation,
memory, temperature and power from a fixed formula of its position, so two runs draw the
same screen.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from backends.gpu import parse_query_csv
from console.models import (
    EndpointRow,
    FleetSnapshot,
    GpuReading,
    GpuRow,
    NodeRow,
    SourceStatus,
)

CAPTURE = Path(__file__).parent.parent / "tests" / "fixtures" / "gpu" / "nvidia-smi-query-load.csv"
TAKEN_AT = 1_795_830_000.0  # 2026-11-28 00:20:00 UTC


def _base_gpu() -> GpuReading:
    (gpu,) = parse_query_csv("template", CAPTURE.read_text())
    return gpu


def _wave(i: int, tick: int, period: int = 17) -> float:
    """0..1, a triangle wave so values move between ticks but stay reproducible."""
    x = (i * 7 + tick * 3) % period
    return (x if x <= period // 2 else period - x) / (period // 2)


def make_snapshot(
    nodes: int = 4,
    gpus_per_node: int = 8,
    endpoints: int = 3,
    tick: int = 0,
    stale_nodes: tuple[str, ...] = (),
    failing_endpoints: tuple[str, ...] = (),
) -> FleetSnapshot:
    """``stale_nodes`` stopped answering a minute ago; ``failing_endpoints`` answer 503 and
    are slow (P95 and TTFT past the default thresholds)."""
    base = _base_gpu()
    now = TAKEN_AT + tick * 2
    node_rows = []
    for n in range(nodes):
        name = f"gpu-a{n + 1}"
        gpu_rows = []
        for g in range(gpus_per_node):
            load = _wave(n * gpus_per_node + g, tick)
            reading = replace(
                base,
                node=name,
                index=g,
                uuid=f"GPU-5e1ec7ed-0000-4000-8000-{n:06x}{g:06x}",
                util_pct=round(40 + 60 * load),
                memory_used_mib=round(20000 + 50000 * load),
                temperature_c=round(45 + 30 * load),
                power_w=round(200 + 490 * load, 2),
                throttle_reasons=0x4 if load > 0.9 else 0x0,  # SW power cap near the limit
                clock_events=("power cap",) if load > 0.9 else (),
            )
            history = tuple(40 + 60 * _wave(n * gpus_per_node + g, t) for t in range(tick + 1))
            gpu_rows.append(GpuRow(reading, history[-30:]))
        stale = name in stale_nodes
        gpu_status = SourceStatus(
            f"gpus:{name}",
            2.0,
            last_ok_at=now - (60 if stale else 1),
            last_error="connection refused" if stale else None,
            last_error_at=now - 2 if stale else None,
            consecutive_failures=5 if stale else 0,
            stale=stale,
        )
        engine_status = replace(gpu_status, name=f"engine:{name}")
        node_rows.append(
            NodeRow(
                name=name,
                host=f"10.0.3.{11 + n}",
                gpus=tuple(gpu_rows),
                kv_cache_pct=30 + 60 * _wave(n, tick),
                running=8 + n,
                waiting=n % 3,
                preemptions_per_s=0.0,
                cost_per_hour_usd=98.32,
                gpu_status=gpu_status,
                engine_status=engine_status,
                expected_gpus=gpus_per_node,
            )
        )
    endpoint_rows = []
    for e in range(endpoints):
        load = _wave(e, tick)
        name = f"chat-{e + 1}"
        failing = name in failing_endpoints
        status = SourceStatus(
            f"probe:{name}",
            5.0,
            last_ok_at=now - 1,
            last_error="HTTP 503: overloaded" if failing else None,
            last_error_at=now - 3 if failing else None,
            consecutive_failures=3 if failing else 0,
        )
        slow = 4.0 if failing else 0.0
        endpoint_rows.append(
            EndpointRow(
                name=name,
                kind="openai",
                model="meta-llama/Llama-3.1-8B-Instruct",
                served_model="meta-llama/Llama-3.1-8B-Instruct",
                p50_s=0.4 + load,
                p95_s=1.2 + 2 * load + slow,
                p99_s=2.0 + 3 * load + slow,
                ttft_p95_s=0.15 + 0.5 * load + slow / 2,
                requests_per_s=20 + 10 * e,
                error_pct=35.0 if failing else 0.5 * load,
                gpu_cost_per_hour_usd=196.64,
                latency_history=tuple(1.2 + 2 * _wave(e, t) for t in range(tick + 1))[-30:],
                source="engine",
                n=(20 + 10 * e) * 60,
                window_s=58.0,
                engines=2,
                engines_used=2,
                status=status,
            )
        )
    sources = tuple(
        s for row in node_rows for s in (row.gpu_status, row.engine_status) if s is not None
    ) + tuple(row.status for row in endpoint_rows if row.status is not None)
    return FleetSnapshot(now, "demo", tuple(endpoint_rows), tuple(node_rows), sources)


class StaticSource:
    """A snapshot source that replays ``make_snapshot`` ticks instead of polling anything."""

    def __init__(self, **shape: object) -> None:
        self.shape = shape
        self.tick = 0

    def start(self) -> None:
        """Nothing to start: the data is computed."""

    async def stop(self, reason: str | None = None) -> None:
        """Nothing to stop."""

    def record_event(self, kind: str, message: str) -> None:
        """No incident log here."""

    def snapshot(self) -> FleetSnapshot:
        return make_snapshot(tick=self.tick, **self.shape)  # type: ignore[arg-type]
