"""The cells of the endpoint, node and GPU rows: what each figure looks like as text.

Pure functions of snapshot rows, with no Textual in them: the live tables and the one-shot
``llmops status`` table print the same cells. Every cell is a finite figure, ``N/A`` or a
state word; a cell that must stand out is an :class:`~screens.formatting.Alarm`.
"""

from __future__ import annotations

from collections.abc import Sequence

from console.models import EndpointRow, GpuReading, GpuRow, NodeRow, Thresholds
from console.stats import sparkline
from screens import formatting as fmt
from screens.formatting import Alarm

Cells = tuple[str, ...]
Column = tuple[str, str, int]  # (key, label, width)

ENDPOINT_COLUMNS: tuple[Column, ...] = (
    ("name", "Endpoint", 12),
    ("state", "State", 14),
    ("p50", "P50", 5),
    ("p95", "P95", 5),
    ("p99", "P99", 5),
    ("ttft", "TTFT95", 6),
    ("rps", "req/s", 5),
    ("err", "err%", 4),
    # Only what the endpoint's GPU nodes cost: an API's spend is not known yet (N/A).
    ("cost", "GPU$/h", 7),
    ("trend", "trend", 6),
)

NODE_COLUMNS: tuple[Column, ...] = (
    ("name", "Node/GPU", 12),
    ("state", "State", 14),
    ("util", "Util", 4),
    ("mem", "Mem GiB", 7),
    ("temp", "Temp", 4),
    ("power", "Power", 6),
    ("kv", "KV%", 3),
    ("run", "Run", 3),
    ("wait", "Wait", 4),
    ("trend", "Util trend", 10),
)

SMALL_SAMPLE = 20  # fewer requests than this behind a percentile: say how many
# Clock events that mean the GPU is being slowed against the workload's will.
_BAD_CLOCK_EVENTS = frozenset({"HW slowdown", "HW thermal", "SW thermal", "power brake"})
_SOURCE_TAGS = {"engine": "eng", "engine lifetime": "life", "probe": "probe"}


def alarm_if(condition: bool, text: str) -> str:
    return Alarm(text) if condition else text


def _over(value: float | None, threshold: float) -> bool:
    return value is not None and value > threshold


def endpoint_state(e: EndpointRow) -> str:
    """At most 14 characters: health, where the figures come from, and n when it is small."""
    status = e.status
    if e.figures_stale:  # the figures are the last minute of engines that stopped answering
        return Alarm("engines STALE")
    if e.engines_stale and e.source == "none":  # no engine figures at all, and some fail
        return Alarm("engines DOWN")
    if status is not None and status.consecutive_failures:
        return Alarm(f"FAIL {fmt.failure_label(status.last_error)}")
    if e.engines_stale:
        return Alarm(f"{e.engines_stale}/{e.engines} eng STALE")
    state = fmt.source_state(status)
    if state != "ok":
        return state
    if e.model_changed:
        return Alarm("model changed")
    if e.left_out:  # some engines' histograms could not be merged: the detail line says which
        return Alarm("eng partial")
    tag = _SOURCE_TAGS.get(e.source)
    if tag is None:
        return "ok"
    small = e.n is not None and e.n < SMALL_SAMPLE
    return f"ok {tag}" + (f" n={e.n:.0f}" if small else "")


def _latency(e: EndpointRow, name: str, value: float | None) -> str:
    if value is not None and name in e.floors:
        return fmt.floor_seconds(value)  # the quantile fell in the +Inf bucket
    return fmt.seconds(value)


def endpoint_cells(e: EndpointRow, limits: Thresholds) -> Cells:
    # A single request: its latency alone, in the P50 column, judged against the P95 limit.
    single = e.n == 1
    p95_limit_breached = _over(e.p95_s if not single else e.p50_s, limits.p95_latency_s)
    return (
        e.name,
        endpoint_state(e),
        alarm_if(single and p95_limit_breached, _latency(e, "p50", e.p50_s)),
        alarm_if(not single and p95_limit_breached, _latency(e, "p95", e.p95_s)),
        _latency(e, "p99", e.p99_s),
        alarm_if(_over(e.ttft_p95_s, limits.ttft_p95_s), _latency(e, "ttft", e.ttft_p95_s)),
        fmt.number(e.requests_per_s, 1),
        alarm_if(_over(e.error_pct, limits.error_rate_pct), fmt.error_pct(e.error_pct)),
        fmt.usd(e.gpu_cost_per_hour_usd),
        sparkline(e.latency_history, width=6),
    )


def _memory(used_mib: float | None, total_mib: float | None, used_digits: int = 0) -> str:
    """``used/total`` in GiB; a single N/A when neither is known."""
    if used_mib is None and total_mib is None:
        return fmt.NA
    used = None if used_mib is None else used_mib / 1024
    total = None if total_mib is None else total_mib / 1024
    return f"{fmt.number(used, used_digits)}/{fmt.number(total)}"


def _with_unit(text: str, unit: str) -> str:
    return text if text == fmt.NA else text + unit


def _sum(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _gpu_alarm(r: GpuReading) -> str | None:
    """What is wrong with a GPU, in a few words, or None."""
    if r.lost:
        return "GPU LOST"
    if r.ecc_uncorrected:
        return f"ECC {r.ecc_uncorrected} uncorr"
    bad = [w for w in r.clock_events or () if w in _BAD_CLOCK_EVENTS]
    return bad[0] if bad else None


def node_cells(node: NodeRow, limits: Thresholds) -> Cells:
    readings = [g.reading for g in node.gpus]
    used = _sum([r.memory_used_mib for r in readings])
    total = _sum([r.memory_total_mib for r in readings])
    temps = [r.temperature_c for r in readings if r.temperature_c is not None]
    power = _sum([r.power_w for r in readings])
    status = fmt.worst(node.gpu_status, node.engine_status)
    state = fmt.source_state(status)
    if status is not None and status is node.engine_status and status.stale:
        # Only the engine is gone: the GPU figures beside it are live.
        state = Alarm("engine DOWN" if status.last_ok_at is None else "engine STALE")
    if state == "ok":
        if node.expected_gpus is not None and len(readings) < node.expected_gpus:
            state = Alarm(f"{len(readings)}/{node.expected_gpus} GPU")  # a GPU fell off
        elif any(_gpu_alarm(r) for r in readings):
            problems = [p for r in readings if (p := _gpu_alarm(r))]
            state = Alarm(problems[0] if len(problems) == 1 else f"{len(problems)} GPUs bad")
        else:
            state = f"{len(readings)} GPU" if readings else "no GPUs"
    hottest = max(temps) if temps else None
    history = [
        sum(values) / len(values)
        for values in zip(*(g.util_history for g in node.gpus), strict=False)
    ]
    return (
        node.name,
        state,
        fmt.pct(node.util_pct),
        _memory(used, total),
        alarm_if(_over(hottest, limits.gpu_temp_c), fmt.celsius(hottest)),
        _with_unit(fmt.number(None if power is None else power / 1000, 2), "kW"),
        alarm_if(_over(node.kv_cache_pct, limits.kv_cache_pct), fmt.number(node.kv_cache_pct)),
        fmt.number(node.running),
        fmt.number(node.waiting),
        sparkline(history, width=10, low=0, high=100),
    )


def gpu_state(r: GpuReading, stale: bool) -> str:
    if stale:
        return "last known"  # the node stopped answering: these are its last readings
    problem = _gpu_alarm(r)
    if problem:
        return Alarm(problem)
    words = [w for w in r.clock_events or () if w != "idle"]
    if not words:
        return ""
    text = words[0] if len(words) == 1 else f"{words[0]} +{len(words) - 1}"
    return text[:14]


def gpu_cells(gpu: GpuRow, limits: Thresholds, stale: bool) -> Cells:
    r = gpu.reading
    return (
        f" └ {r.index}",
        gpu_state(r, stale),
        fmt.pct(r.util_pct),
        _memory(r.memory_used_mib, r.memory_total_mib, 1),
        alarm_if(_over(r.temperature_c, limits.gpu_temp_c), fmt.celsius(r.temperature_c)),
        _with_unit(fmt.number(r.power_w), "W"),
        "",
        "",
        "",
        sparkline(gpu.util_history, width=10, low=0, high=100),
    )


def endpoint_detail(e: EndpointRow) -> str:
    """One line under the endpoints table: where the selected row's figures come from."""
    n = "no requests" if not e.n else f"{e.n:.0f} request" + ("s" if e.n != 1 else "")
    if e.source == "engine":
        span = f"over {e.window_s:.0f}s" if e.window_s is not None else "in the window"
        origin = f"engine histograms of {e.engines_used} node(s) {span} ({n})"
    elif e.source == "engine lifetime":
        origin = f"engine histograms since each engine started ({n}; too few in the window)"
    elif e.source == "probe":
        span = f" over {e.window_s:.0f}s" if e.window_s else ""
        origin = f"the console's own probes{span} ({n})"
    else:
        origin = "nothing yet"
    parts = [f"{e.name}: figures from {origin}"]
    if e.figures_stale:
        parts.append("engines STALE: their last minute before they stopped answering")
    elif e.engines_stale:
        parts.append(f"{e.engines_stale} of {e.engines} engines STALE, left out")
    if e.left_out:
        parts.append(f"left out of the percentiles, other bucket bounds: {', '.join(e.left_out)}")
    if e.floors:
        parts.append("'>': past the highest histogram bucket")
    if e.gpu_cost_per_hour_usd is not None:
        parts.append(f"GPU nodes {fmt.usd(e.gpu_cost_per_hour_usd)}/h")
    if e.probe_spend_per_hour_usd is not None:
        parts.append(
            f"the console's probes spend {fmt.usd(e.probe_spend_per_hour_usd)}/h "
            "(other traffic to it is not seen)"
        )
    if e.served_model and e.served_model != e.model:
        parts.append(f"serves {e.served_model}")
    return "; ".join(parts)
