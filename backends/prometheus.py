"""Fleet figures from a Prometheus-compatible server: vLLM series and dcgm-exporter's GPUs.

Prometheus, Thanos, Mimir and VictoriaMetrics all answer ``POST /api/v1/query``; it is the
only call made. Per poll, one instant query per kind returns the raw series of every node read
from the server at once (:func:`engine_query`, :func:`dcgm_query`), with each target's ``up``
and the time of its latest scrape (``timestamp(up)``), so that a node whose target is down or
whose samples are old fails on its own, with one line, instead of showing a stale figure.

Engine series are the cumulative vLLM families :func:`backends.engines.engine_stats_from_text`
reads: they are written back as exposition text and parsed by it, so windows and percentiles
come from exactly the code the direct scrape feeds. DCGM series become the same
:class:`~console.models.GpuReading` records nvidia-smi's do (``method`` ``"prometheus"``);
what dcgm-exporter does not export (fan, P-state, processes, MIG) is None, never 0.

Every failure (HTTP, Prometheus's own error JSON, 429/503 with Retry-After, a timeout, a
malformed reply) is a :class:`PrometheusError` of one line naming the server. Secrets come
from the environment at request time and appear in no message. Knows nothing of the UI.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx

from backends.engines import (
    CACHED_TOKENS,
    E2E,
    GENERATION_LEN,
    GENERATION_TOKENS,
    ITL,
    PREEMPTIONS,
    PROMPT_LEN,
    PROMPT_TOKENS,
    QUEUE,
    SUCCESS,
    TPOT,
    TTFT,
    describe_http_error,
)
from backends.gpu import clock_event_words
from backends.providers import parse_retry_after
from backends.urls import display_url
from console.models import GpuReading, GpuSnapshot

PROMETHEUS = "prometheus"  # the GpuSnapshot method and the sources view's Via
MAX_REPLY_BYTES = 256 * 2**20  # a reply past this is a query gone wrong, not a fleet
# The label the query puts on the timestamp(up) series, to tell them from the data.
SCRAPED_AT = "llmops_scraped_at"

# The vLLM families the console reads (backends/engines.py), as Prometheus stores them.
_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
_HISTOGRAMS = (E2E, TTFT, ITL, QUEUE, TPOT, PROMPT_LEN, GENERATION_LEN)
_COUNTERS = (SUCCESS, PREEMPTIONS, PROMPT_TOKENS, GENERATION_TOKENS, CACHED_TOKENS)
ENGINE_FAMILIES = frozenset(
    [
        *_GAUGES,
        *_COUNTERS,
        *(f"{h}_{part}" for h in _HISTOGRAMS for part in ("bucket", "sum", "count")),
    ]
)

# dcgm-exporter's field names (tests/fixtures/dcgm/SOURCES.md). Enabled by its default
# counters file: the first block; the rest are read where a counters file adds them.
UTIL = "DCGM_FI_DEV_GPU_UTIL"
MEM_COPY_UTIL = "DCGM_FI_DEV_MEM_COPY_UTIL"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
FB_RESERVED = "DCGM_FI_DEV_FB_RESERVED"
GPU_TEMP = "DCGM_FI_DEV_GPU_TEMP"
MEMORY_TEMP = "DCGM_FI_DEV_MEMORY_TEMP"
POWER_USAGE = "DCGM_FI_DEV_POWER_USAGE"
SM_CLOCK = "DCGM_FI_DEV_SM_CLOCK"
MEM_CLOCK = "DCGM_FI_DEV_MEM_CLOCK"
XID = "DCGM_FI_DEV_XID_ERRORS"
ROWS_CORRECTABLE = "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"
ROWS_UNCORRECTABLE = "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"
ROW_REMAP_FAILURE = "DCGM_FI_DEV_ROW_REMAP_FAILURE"
FB_TOTAL = "DCGM_FI_DEV_FB_TOTAL"
POWER_LIMIT = "DCGM_FI_DEV_POWER_MGMT_LIMIT"
CLOCK_EVENTS = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
CLOCK_THROTTLE = "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"  # its name before DCGM 3.3
ECC_SBE_VOL = "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"
ECC_DBE_VOL = "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"
ECC_SBE_AGG = "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"
ECC_DBE_AGG = "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"
RETIRED_SBE = "DCGM_FI_DEV_RETIRED_SBE"
RETIRED_DBE = "DCGM_FI_DEV_RETIRED_DBE"
RETIRED_PENDING = "DCGM_FI_DEV_RETIRED_PENDING"
DCGM_FIELDS = frozenset(
    {
        UTIL, MEM_COPY_UTIL, FB_USED, FB_FREE, FB_RESERVED, GPU_TEMP, MEMORY_TEMP, POWER_USAGE,
        SM_CLOCK, MEM_CLOCK, XID, ROWS_CORRECTABLE, ROWS_UNCORRECTABLE, ROW_REMAP_FAILURE,
        FB_TOTAL, POWER_LIMIT, CLOCK_EVENTS, CLOCK_THROTTLE, ECC_SBE_VOL, ECC_DBE_VOL,
        ECC_SBE_AGG, ECC_DBE_AGG, RETIRED_SBE, RETIRED_DBE, RETIRED_PENDING,
    }
)  # fmt: skip
# dcgm-exporter's MIG-instance labels: such a sample is one instance, not the whole GPU.
_MIG_LABELS = ("GPU_I_ID", "GPU_I_PROFILE")
DRIVER_LABEL = "DCGM_FI_DRIVER_VERSION"  # a 'label' field: a label on the other samples

T = TypeVar("T")


class PrometheusError(Exception):
    """A query failed, or a node's series are missing or old; one line naming the server."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the scheduler waits at least this long


@dataclass(frozen=True)
class Server:
    """Where and how to ask; header values are names of environment variables."""

    url: str
    timeout_s: float = 5.0
    node_label: str = "node"
    max_age_s: float = 60.0
    bearer_token_env: str | None = None
    header_env: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The URL as messages show it: never with a user or password in it."""
        return display_url(self.url)


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]  # with __name__, where the series has one
    value: float


@dataclass(frozen=True)
class InstantVector:
    at: float  # the evaluation time, on the server's clock
    samples: tuple[Sample, ...]


# --- the HTTP API ------------------------------------------------------------------------------


def _headers(server: Server) -> dict[str, str]:
    wanted = list(server.header_env)
    if server.bearer_token_env is not None:
        wanted.append(("Authorization", server.bearer_token_env))
    headers = {}
    for header, variable in wanted:
        value = os.environ.get(variable)
        if not value:
            raise PrometheusError(
                f"prometheus {server.name}: environment variable {variable} is not set "
                f"(the {header} header)"
            )
        headers[header] = f"Bearer {value}" if variable == server.bearer_token_env else value
    return headers


async def query(client: httpx.AsyncClient, server: Server, promql: str) -> InstantVector:
    """Evaluate ``promql`` now; raise :class:`PrometheusError` with one line on any failure.

    POST, not GET: a regex over hundreds of node names would be past some proxies' URL limit.
    """
    name = server.name
    url = f"{server.url.rstrip('/')}/api/v1/query"
    headers = _headers(server)
    try:
        async with client.stream(
            "POST", url, data={"query": promql}, headers=headers, timeout=server.timeout_s
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_REPLY_BYTES:
                    raise PrometheusError(
                        f"prometheus {name}: reply over the {MAX_REPLY_BYTES}-byte limit"
                    )
    except httpx.TimeoutException:
        raise PrometheusError(
            f"prometheus {name}: no answer within {server.timeout_s:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise PrometheusError(f"prometheus {name}: {describe_http_error(exc)}") from None
    return _read_reply(name, response, bytes(body))


def _one_line(text: object, limit: int = 160) -> str:
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _read_reply(name: str, response: httpx.Response, body: bytes) -> InstantVector:
    status = response.status_code
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if isinstance(reply, dict) and reply.get("status") == "error":
        # Prometheus's own error reply (400 bad_data, 422 execution, 503 timeout...).
        kind = _one_line(reply.get("errorType") or "error", 40)
        raise PrometheusError(
            f"prometheus {name}: HTTP {status}: {kind}: {_one_line(reply.get('error'))}",
            parse_retry_after(response.headers.get("retry-after"), time.time()),
        )
    if status != 200:
        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        later = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        raise PrometheusError(f"prometheus {name}: HTTP {status}{later}", retry_after)
    if reply is None:
        raise PrometheusError(f"prometheus {name}: the reply is not JSON")
    try:
        return _vector(reply)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PrometheusError(f"prometheus {name}: malformed reply: {_one_line(exc)}") from None


def _vector(reply: object) -> InstantVector:
    if not isinstance(reply, dict) or reply.get("status") != "success":
        raise ValueError("no status: success")
    data = reply["data"]
    if data["resultType"] != "vector":
        raise ValueError(f"a {data['resultType']} where a vector was asked for")
    samples = []
    at = math.nan
    for item in data["result"]:
        labels = item["metric"]
        if not isinstance(labels, dict):
            raise TypeError("a series' labels are not a mapping")
        at, text = item["value"]
        samples.append(Sample({str(k): str(v) for k, v in labels.items()}, float(text)))
    return InstantVector(float(at), tuple(samples))


# --- the queries -------------------------------------------------------------------------------


def _string(text: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _names_regex(names: Iterable[str]) -> str:
    # RE2 syntax; re.escape's output is valid there for these characters.
    return "|".join(re.escape(n) for n in sorted(names))


def _with_scrapes(families: Iterable[str], nodes: Iterable[str], node_label: str) -> str:
    """The families' series of ``nodes``, plus each of their targets' ``up`` and the time of
    its latest scrape, in one query (one evaluation instant for all of it)."""
    node_match = f"{node_label}=~{_string(_names_regex(nodes))}"
    names = _string(_names_regex([*families, "up"]))
    # label_replace adds a label no real series has: `or` matches label sets without
    # __name__, so the timestamps would otherwise be taken for `up` itself and dropped.
    scraped = f'label_replace(timestamp(up{{{node_match}}}), "{SCRAPED_AT}", "1", "", "")'
    return f"{{__name__=~{names}, {node_match}}} or {scraped}"


def engine_query(nodes: Iterable[str], node_label: str) -> str:
    return _with_scrapes(ENGINE_FAMILIES, nodes, node_label)


def dcgm_query(nodes: Iterable[str], node_label: str) -> str:
    return _with_scrapes(DCGM_FIELDS, nodes, node_label)


# --- per node ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSeries:
    """One node's series from one query, checked for freshness."""

    node: str
    samples: tuple[Sample, ...]  # the data, without up and the scrape times
    scraped_at: float  # the oldest latest scrape of its targets, on the server's clock
    age_s: float  # how long before the query that scrape was
    targets: int  # how many scrape targets its series came from


def _target(labels: Mapping[str, str]) -> tuple[str, str]:
    return labels.get("job", ""), labels.get("instance", "")


def split_by_node(
    server: Server, vector: InstantVector, nodes: Iterable[str], what: str
) -> dict[str, NodeSeries | PrometheusError]:
    """Each node's series, or why that node (and only it) has none to trust."""
    label = server.node_label
    data: dict[str, list[Sample]] = {}
    up: dict[str, dict[tuple[str, str], float]] = {}
    scraped: dict[str, dict[tuple[str, str], float]] = {}
    for s in vector.samples:
        node = s.labels.get(label)
        if node is None:
            continue
        if SCRAPED_AT in s.labels:
            scraped.setdefault(node, {})[_target(s.labels)] = s.value
        elif s.labels.get("__name__") == "up":
            up.setdefault(node, {})[_target(s.labels)] = s.value
        else:
            data.setdefault(node, []).append(s)
    found: dict[str, NodeSeries | PrometheusError] = {}
    for node in nodes:
        ups = up.get(node, {})
        prefix = f"prometheus {server.name}: {node}"
        samples = data.get(node)
        if not samples:
            # Which of the node's targets is this kind's is not known without its series:
            # every one that is down is named.
            down = [f"{instance} job {job}" for (job, instance), v in sorted(ups.items()) if v == 0]
            if down:
                hint = f" (down: {', '.join(down)})"
            else:
                hint = "" if ups else f" (no target labelled {label}={_string(node)})"
            found[node] = PrometheusError(
                f"prometheus {server.name}: no {what} series for {node}{hint}"
            )
            continue
        targets = {_target(s.labels) for s in samples}
        down_targets = sorted(t for t in targets if ups.get(t) == 0)
        times = scraped.get(node, {})
        unknown = sorted(targets - times.keys())
        if down_targets:  # its last samples still show, until Prometheus marks them stale
            job, instance = down_targets[0]
            found[node] = PrometheusError(f"{prefix}: target {instance} (job {job}) is down")
            continue
        if unknown:
            job, instance = unknown[0]
            found[node] = PrometheusError(
                f"{prefix}: no up series for target {instance} (job {job}); "
                f"is {label} a target label?"
            )
            continue
        oldest = min(times[t] for t in targets)
        age = vector.at - oldest
        if age > server.max_age_s:
            found[node] = PrometheusError(
                f"{prefix}: last scraped {age:.0f} s ago (max_age {server.max_age_s:g} s)"
            )
            continue
        found[node] = NodeSeries(node, tuple(samples), oldest, max(age, 0.0), len(targets))
    return found


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def exposition_text(series: NodeSeries, node_label: str) -> str:
    """The node's engine series as the exposition text its engine served.

    The labels Prometheus added for the target (job, instance, the node label) are left out,
    so the series are the ones a direct scrape yields; with several targets on one node
    instance stays, or their series would merge.
    """
    dropped = {"__name__", "job", node_label}
    if series.targets == 1:
        dropped.add("instance")
    lines = []
    for s in series.samples:
        inner = ",".join(
            f'{k}="{_label_value(v)}"' for k, v in sorted(s.labels.items()) if k not in dropped
        )
        lines.append(f"{s.labels['__name__']}{{{inner}}} {_number(s.value)}")
    return "\n".join(lines) + "\n"


# --- dcgm-exporter's GPUs ----------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _count(value: float | None) -> int | None:
    value = _finite(value)
    return int(value) if value is not None else None


def _flag(value: float | None) -> bool | None:
    value = _finite(value)
    return bool(value) if value is not None else None


def _total_mib(fields: Mapping[str, float]) -> float | None:
    """FB_TOTAL where exported, else used + free + reserved (nvidia-smi's total)."""
    if (total := _finite(fields.get(FB_TOTAL))) is not None:
        return total
    parts = [_finite(fields.get(f)) for f in (FB_USED, FB_FREE)]
    if any(p is None for p in parts):
        return None
    return sum(p for p in parts if p is not None) + (_finite(fields.get(FB_RESERVED)) or 0.0)


def dcgm_snapshot(server: Server, series: NodeSeries) -> GpuSnapshot:
    """One node's GPUs from its dcgm-exporter series (one sample per GPU and field)."""
    node = series.node
    by_gpu: dict[int, dict[str, float]] = {}
    about: dict[int, Mapping[str, str]] = {}
    for s in series.samples:
        if any(k in s.labels for k in _MIG_LABELS):
            continue  # a MIG instance's share, not the GPU's figure
        try:
            index = int(s.labels["gpu"])
        except (KeyError, ValueError):
            continue
        # With Kubernetes pod labels a GPU may show twice; its figures are the same.
        by_gpu.setdefault(index, {}).setdefault(s.labels["__name__"], s.value)
        about.setdefault(index, s.labels)
    readings = []
    warnings = []
    for index in sorted(by_gpu):
        f, labels = by_gpu[index], about[index]
        mask = _count(f.get(CLOCK_EVENTS, f.get(CLOCK_THROTTLE)))
        xid = _count(f.get(XID))
        if xid:  # 0: none since the exporter started
            warnings.append(f"GPU {index}: XID {xid} reported")
        readings.append(
            GpuReading(
                node=node,
                index=index,
                uuid=labels.get("UUID") or labels.get("uuid") or f"{node}:{index}",
                name=labels.get("modelName") or "unknown GPU",
                util_pct=_finite(f.get(UTIL)),
                memory_util_pct=_finite(f.get(MEM_COPY_UTIL)),
                memory_total_mib=_total_mib(f),
                memory_used_mib=_finite(f.get(FB_USED)),
                memory_reserved_mib=_finite(f.get(FB_RESERVED)),
                temperature_c=_finite(f.get(GPU_TEMP)),
                memory_temperature_c=_finite(f.get(MEMORY_TEMP)),
                power_w=_finite(f.get(POWER_USAGE)),
                power_limit_w=_finite(f.get(POWER_LIMIT)),
                sm_clock_mhz=_finite(f.get(SM_CLOCK)),
                memory_clock_mhz=_finite(f.get(MEM_CLOCK)),
                throttle_reasons=mask,
                clock_events=clock_event_words(mask),
                ecc_corrected=_count(f.get(ECC_SBE_VOL)),
                ecc_uncorrected=_count(f.get(ECC_DBE_VOL)),
                ecc_corrected_aggregate=_count(f.get(ECC_SBE_AGG)),
                ecc_uncorrected_aggregate=_count(f.get(ECC_DBE_AGG)),
                retired_pages_single_bit=_count(f.get(RETIRED_SBE)),
                retired_pages_double_bit=_count(f.get(RETIRED_DBE)),
                retired_pages_pending=_flag(f.get(RETIRED_PENDING)),
                remapped_rows_corrected=_count(f.get(ROWS_CORRECTABLE)),
                remapped_rows_uncorrected=_count(f.get(ROWS_UNCORRECTABLE)),
                remapped_rows_failed=_flag(f.get(ROW_REMAP_FAILURE)),
                driver_version=labels.get(DRIVER_LABEL),
            )
        )
    if not readings:
        raise PrometheusError(f"prometheus {server.name}: no per-GPU DCGM series for {node}")
    return GpuSnapshot(
        node=node,
        method=PROMETHEUS,
        gpus=tuple(readings),
        driver_version=next((g.driver_version for g in readings if g.driver_version), None),
        warnings=tuple(warnings),
    )


# --- one query for many sources ----------------------------------------------------------------


class SharedQuery(Generic[T]):
    """One fetch answers every caller within ``reuse_s`` of its start.

    Each node's source polls on its own, but they fall due together: the first to ask starts
    the query, those asking while it runs wait for it, and those asking soon after take its
    answer (or its failure: a failing server is not asked once per node either).
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[T]],
        reuse_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._reuse_s = reuse_s
        self._monotonic = monotonic
        self._task: asyncio.Future[T] | None = None
        self._started = -math.inf

    async def get(self) -> T:
        now = self._monotonic()
        if self._task is None or (self._task.done() and now - self._started >= self._reuse_s):
            self._started = now
            self._task = asyncio.ensure_future(self._fetch())
        # Shielded: a caller cancelled (the console stopping) must not cancel the others'.
        return await asyncio.shield(self._task)


class PrometheusFleet:
    """The nodes read from one server: their engine series and GPUs, one query per kind and
    poll interval for all of them."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        server: Server,
        *,
        engine_nodes: Iterable[str],
        gpu_nodes: Iterable[str],
        engine_every_s: float,
        gpus_every_s: float,
    ) -> None:
        self.server = server
        self._client = client
        self.engine_nodes = tuple(engine_nodes)
        self.gpu_nodes = tuple(gpu_nodes)
        # Half an interval: a node's poll a little late still shares the query; one due
        # a whole interval later asks again.
        self._engines = SharedQuery(self._fetch_engines, engine_every_s / 2)
        self._gpus = SharedQuery(self._fetch_gpus, gpus_every_s / 2)

    async def _fetch(
        self, promql: str, nodes: tuple[str, ...], what: str
    ) -> dict[str, NodeSeries | PrometheusError]:
        vector = await query(self._client, self.server, promql)
        return split_by_node(self.server, vector, nodes, what)

    async def _fetch_engines(self) -> dict[str, NodeSeries | PrometheusError]:
        promql = engine_query(self.engine_nodes, self.server.node_label)
        return await self._fetch(promql, self.engine_nodes, "vLLM")

    async def _fetch_gpus(self) -> dict[str, NodeSeries | PrometheusError]:
        promql = dcgm_query(self.gpu_nodes, self.server.node_label)
        return await self._fetch(promql, self.gpu_nodes, "DCGM")

    @staticmethod
    async def _of(
        shared: SharedQuery[dict[str, NodeSeries | PrometheusError]], node: str
    ) -> NodeSeries:
        try:
            series = (await shared.get())[node]
        except PrometheusError as exc:  # a copy each: the sources' tracebacks stay their own
            raise PrometheusError(str(exc), exc.retry_after_s) from None
        if isinstance(series, PrometheusError):
            raise PrometheusError(str(series)) from None
        return series

    async def engine_series(self, node: str) -> NodeSeries:
        """The node's vLLM series from this interval's shared query."""
        return await self._of(self._engines, node)

    async def gpus(self, node: str) -> GpuSnapshot:
        """The node's GPUs from this interval's shared query."""
        return dcgm_snapshot(self.server, await self._of(self._gpus, node))
