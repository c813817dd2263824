"""Typed records that flow from the backends through the hub to the screens.

Backends return these; the hub aggregates them into a :class:`FleetSnapshot`; screens only
read snapshots. Units are in the field names. ``None`` means "not known" (a field the
hardware does not report, or a source that has not answered) and is shown as ``N/A``, never 0.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuProcess:
    """A compute process holding memory on a GPU."""

    pid: int
    name: str | None  # as NVML (or nvidia-smi's process_name) gives it
    user: str | None  # the process owner where the node could tell; None when not known
    memory_used_mib: float | None  # None on MIG-enabled GPUs and where not reported
    gpu_instance_id: int | None = None  # the MIG instance it runs in; None without MIG
    compute_instance_id: int | None = None


@dataclass(frozen=True)
class MigDevice:
    """One MIG instance of a GPU whose MIG mode is enabled."""

    index: int  # its slot under the parent GPU
    uuid: str | None
    name: str | None
    gpu_instance_id: int | None
    compute_instance_id: int | None
    memory_total_mib: float | None
    memory_used_mib: float | None


@dataclass(frozen=True)
class GpuReading:
    """One GPU as reported by one ``nvidia-smi --query-gpu`` row (or NVML).

    Every figure the GPU (or the source) does not report is None, shown as N/A, never 0.
    """

    node: str
    index: int
    uuid: str
    name: str
    util_pct: float | None
    memory_util_pct: float | None
    memory_total_mib: float | None
    memory_used_mib: float | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    sm_clock_mhz: float | None = None
    fan_pct: float | None = None
    pstate: str | None = None
    ecc_uncorrected: int | None = None  # volatile (since the driver loaded)
    ecc_corrected: int | None = None
    throttle_reasons: int | None = None  # the clocks_event_reasons bit mask as reported
    # The mask decoded to words ("power cap", "HW slowdown"); () when nothing slows the clocks,
    # None when the GPU does not report it.
    clock_events: tuple[str, ...] | None = None
    lost: bool = False  # nvidia-smi printed [GPU is lost] for it: the GPU fell off the bus
    memory_clock_mhz: float | None = None
    # NVML's v2 memory info: what the driver sets aside, not counted in memory_used_mib (as in
    # nvidia-smi). None from NVML v1, whose "used" includes it, and from nvidia-smi.
    memory_reserved_mib: float | None = None
    memory_temperature_c: float | None = None  # HBM, where reported
    ecc_uncorrected_aggregate: int | None = None  # over the GPU's life (kept in its infoROM)
    ecc_corrected_aggregate: int | None = None
    # Page retirement (GPUs before Ampere): pages retired for repeated single-bit or for
    # double-bit errors, and whether a retirement waits for the next driver reload.
    retired_pages_single_bit: int | None = None
    retired_pages_double_bit: int | None = None
    retired_pages_pending: bool | None = None
    # Row remapping (A100, H100 and later), which replaces page retirement.
    remapped_rows_corrected: int | None = None
    remapped_rows_uncorrected: int | None = None
    remapped_rows_pending: bool | None = None  # a remap waits for a GPU reset
    remapped_rows_failed: bool | None = None  # a remap failed: the GPU needs service
    mig_mode: str | None = None  # "Enabled" / "Disabled" now
    mig_mode_pending: str | None = None  # what it becomes at the next GPU reset
    mig_devices: tuple[MigDevice, ...] = ()  # () when MIG is off or its devices are not known
    processes: tuple[GpuProcess, ...] | None = None  # None: not read
    driver_version: str | None = None
    # Readings that failed for another reason than "not supported", one line each
    # ("power draw: NVMLError_Unknown: Unknown Error"); those figures are None.
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuSnapshot:
    """One poll of one node's GPUs, and which tool answered it."""

    node: str
    method: str  # "nvml" (the node's python3 and nvidia-ml-py) or "nvidia-smi"
    gpus: tuple[GpuReading, ...]
    driver_version: str | None = None
    fallback_reason: str | None = None  # why NVML is not used on this node, one line
    warnings: tuple[str, ...] = ()  # what this poll could not read (the process list, ...)


@dataclass(frozen=True)
class HostHealth:
    """The console's own host (the bastion it runs on), a source like any node."""

    host: str
    taken_at: float
    cpu_pct: float | None  # all cores, since the previous reading
    cpu_count: int | None
    memory_used_mib: float | None  # in use: total less what is available
    memory_total_mib: float | None
    memory_pct: float | None
    disk_path: str  # the store's folder (or its nearest existing parent)
    disk_used_gib: float | None
    disk_total_gib: float | None
    disk_pct: float | None
    load_1m: float | None
    load_5m: float | None
    load_15m: float | None
    gpus: tuple[GpuReading, ...] = ()
    gpu_note: str | None = None  # why there are no GPU readings ("no NVIDIA driver (...)")
    errors: tuple[str, ...] = ()  # figures that could not be read, one line each


@dataclass(frozen=True)
class Histogram:
    """A cumulative Prometheus histogram: ``(upper_bound, cumulative_count)`` pairs."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float


# A series' labels other than ``le``, sorted: ``(("engine", "0"), ("model_name", "m"))``.
SeriesLabels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class EngineStats:
    """One scrape of an engine's ``/metrics`` (vLLM's, or SGLang's or TGI's read onto the
    vLLM family names the figures use).

    Gauges are summed over the engine's data-parallel ranks (``engine`` label). Counters and
    histograms are kept per series, as Prometheus stores them, so that rates and increases are
    taken per series (with counter-reset detection) before anything is added up.
    """

    node: str
    model_name: str | None
    running: float | None
    waiting: float | None
    kv_cache_usage: float | None  # 0..1, the mean over ranks
    # Counter family (e.g. "vllm:request_success_total") -> series -> cumulative value.
    counters: Mapping[str, Mapping[SeriesLabels, float]] = field(default_factory=dict)
    # Histogram family (e.g. "vllm:e2e_request_latency_seconds") -> series -> cumulative buckets.
    histograms: Mapping[str, Mapping[SeriesLabels, Histogram]] = field(default_factory=dict)
    skipped_lines: tuple[str, ...] = ()  # malformed exposition lines that were dropped
    non_finite: tuple[str, ...] = ()  # samples dropped because their value was NaN or +-Inf
    engine: str | None = None  # "vllm", "sglang" or "tgi": whose exporter the scrape came from


@dataclass(frozen=True)
class ProbeResult:
    """One streaming request sent by the console to an endpoint."""

    endpoint: str
    started_at: float
    ok: bool
    status: int | None  # HTTP status, None when no response came
    ttft_s: float | None  # first content token
    latency_s: float | None  # whole response
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None  # the model the endpoint says answered
    error: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class SourceStatus:
    """How one polled source is doing: the basis of the "stale since" marker."""

    name: str  # e.g. "gpus:gpu-a1", "engine:gpu-a1", "probe:chat-primary"
    interval_s: float
    last_ok_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    stale: bool = False  # no good answer for longer than the configured number of intervals
    warning: str | None = None  # answered, but with something dropped (malformed lines)
    via: str | None = None  # how it is read: "nvml", "nvidia-smi", "psutil"
    via_note: str | None = None  # why not the first choice ("python3: command not found")


@dataclass(frozen=True)
class EndpointRow:
    """What the overview shows for one endpoint, computed over the hub's rolling window."""

    name: str
    kind: str
    model: str
    served_model: str | None
    p50_s: float | None
    p95_s: float | None  # None too when a single request is behind the figures (see p50_s)
    p99_s: float | None
    ttft_p95_s: float | None
    requests_per_s: float | None
    error_pct: float | None
    # Two different things, never added up: what the endpoint's nodes cost by the GPU-hour
    # (self-hosted), and what the console's own probes spend on a paid API.
    gpu_cost_per_hour_usd: float | None = None
    probe_spend_per_hour_usd: float | None = None
    latency_history: tuple[float, ...] = ()  # recent P95 values, oldest first, for sparklines
    # Where the latency figures come from: "engine" (the window), "engine lifetime" (too few
    # requests in the window: since each engine started), "probe", or "none".
    source: str = "none"
    n: float | None = None  # how many requests the percentiles stand on
    window_s: float | None = None  # the time the figures really cover; None for lifetime
    # Figures that are floors: the quantile fell in the +Inf bucket ("> 10s").
    floors: frozenset[str] = frozenset()
    engines: int = 0  # engines behind the endpoint
    engines_stale: int = 0  # of which stale: left out, unless no other engine reports
    engines_used: int = 0  # engines whose histograms the figures come from
    figures_stale: bool = False  # every engine that reports is stale: their last minute
    # Histogram series left out of the percentiles: their bucket bounds differ from the rest.
    left_out: tuple[str, ...] = ()
    status: SourceStatus | None = None  # the endpoint's probe source
    model_changed: bool = False  # answers with another model than when the console started


@dataclass(frozen=True)
class GpuRow:
    reading: GpuReading
    util_history: tuple[float, ...] = ()


@dataclass(frozen=True)
class NodeEngine:
    """A node's engine over the hub's window: the GPU screen's engine panel.

    Rates and percentiles cover ``covered_s`` of scrapes. A stale engine's are those of the
    window that ended with its last scrape (``at``): its last figures, which the panel marks
    stale. None: not known (fewer than two scrapes, no request finished, not exposed).
    """

    at: float  # the instant the figures end at: now, or the last scrape of a stale engine
    covered_s: float | None
    requests: float | None  # requests finished in the window, behind the percentiles
    preemptions_per_s: float | None
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    itl_p50_s: float | None
    itl_p95_s: float | None
    prefix_hit_pct: float | None  # prefix-cache hits of the tokens looked up, 0..100
    # Figures that are floors: the quantile fell in the +Inf bucket ("> 10s").
    floors: frozenset[str] = frozenset()
    model_name: str | None = None


@dataclass(frozen=True)
class NodeRow:
    name: str
    host: str
    gpus: tuple[GpuRow, ...]
    kv_cache_pct: float | None
    running: float | None
    waiting: float | None
    preemptions_per_s: float | None
    cost_per_hour_usd: float | None  # None: not configured
    gpu_status: SourceStatus | None = None
    engine_status: SourceStatus | None = None  # None: no engine configured on this node
    expected_gpus: int | None = None
    engine: NodeEngine | None = None  # None: no scrape of its engine yet (or no engine)

    @property
    def util_pct(self) -> float | None:
        values = [g.reading.util_pct for g in self.gpus if g.reading.util_pct is not None]
        return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Thresholds:
    """Figures past which a cell alarms (the config's ``alerts:``)."""

    p95_latency_s: float = 4.0
    ttft_p95_s: float = 1.5
    error_rate_pct: float = 5.0
    gpu_temp_c: float = 85.0
    kv_cache_pct: float = 90.0


@dataclass(frozen=True)
class FleetSnapshot:
    """Everything the overview needs at one instant; immutable, so screens can keep it."""

    taken_at: float
    environment: str
    endpoints: tuple[EndpointRow, ...]
    nodes: tuple[NodeRow, ...]
    sources: tuple[SourceStatus, ...]
    thresholds: Thresholds = field(default_factory=Thresholds)  # cells past them alarm
    window_s: float = 60.0  # the span the figures are asked over
    # Every node once, even when two endpoints share it; None when a node has no cost set.
    gpu_cost_per_hour_usd: float | None = None
    host: HostHealth | None = None  # the console's own host, when it is watched

    @property
    def failed_sources(self) -> tuple[SourceStatus, ...]:
        """Sources whose latest poll failed."""
        return tuple(s for s in self.sources if s.consecutive_failures > 0)

    @functools.cached_property
    def node_rows(self) -> dict[str, NodeRow]:
        """The node rows by name (alert rules look a thousand up per evaluation)."""
        return {n.name: n for n in self.nodes}

    @functools.cached_property
    def endpoint_rows(self) -> dict[str, EndpointRow]:
        return {e.name: e for e in self.endpoints}
