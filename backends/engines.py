"""vLLM engine state from its HTTP surface: ``/metrics``, ``/health``, ``/v1/models``.

``/metrics`` is parsed with prometheus_client's text parser. A malformed line drops that line
(reported in ``EngineStats.skipped_lines``), not the scrape: one bad exporter line must not
blank the engine panel. Families are read by the vLLM 0.33 names (``engine`` and
``model_name`` labels); older scrapes without the ``engine`` label parse the same way.
Knows nothing of the UI.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from console.models import EngineStats, Histogram


class EngineError(Exception):
    """The engine could not be scraped (connection refused, HTTP error, not Prometheus text)."""


def _blocks(text: str) -> Iterator[list[str]]:
    """Split exposition text into per-family blocks: leading comment lines plus samples."""
    block: list[str] = []
    in_samples = False
    for line in text.splitlines():
        if line.startswith("#"):
            if in_samples and block:
                yield block
                block, in_samples = [], False
        elif line.strip():
            in_samples = True
        block.append(line)
    if block:
        yield block


def _parse(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def parse_samples(text: str) -> tuple[list[Sample], list[str]]:
    """All samples in ``text`` and the lines that had to be skipped as malformed."""
    samples: list[Sample] = []
    skipped: list[str] = []
    for block in _blocks(text):
        try:
            samples.extend(_parse("\n".join(block) + "\n"))
            continue
        except ValueError:
            pass
        # Retry line by line under the block's own HELP/TYPE lines to keep every good sample.
        header = [line for line in block if line.startswith("#")]
        for line in block:
            if line.startswith("#") or not line.strip():
                continue
            try:
                samples.extend(_parse("\n".join([*header, line]) + "\n"))
            except ValueError:
                skipped.append(line)
    return samples, skipped


def _sum(samples: Iterable[Sample], name: str) -> float | None:
    values = [s.value for s in samples if s.name == name]
    return sum(values) if values else None


def _bucket_bound(sample: Sample) -> float | None:
    try:
        return float(sample.labels["le"])
    except (KeyError, ValueError):
        return None


def _histogram(samples: list[Sample], family: str) -> Histogram | None:
    """Sum one histogram family over its engines (data-parallel ranks)."""
    buckets: dict[float, float] = defaultdict(float)
    for s in samples:
        if s.name == f"{family}_bucket" and (bound := _bucket_bound(s)) is not None:
            buckets[bound] += s.value
    if not buckets:
        return None
    return Histogram(
        buckets=tuple(sorted(buckets.items())),
        sum=_sum(samples, f"{family}_sum") or 0.0,
        count=_sum(samples, f"{family}_count") or 0.0,
    )


def engine_stats_from_text(node: str, text: str) -> EngineStats:
    samples, skipped = parse_samples(text)
    # A bucket whose bound is not a number is as malformed as a bad line: drop and report it.
    bad_buckets = [s for s in samples if s.name.endswith("_bucket") and _bucket_bound(s) is None]
    if bad_buckets:
        samples = [s for s in samples if s not in bad_buckets]
        skipped += [f"{s.name}{s.labels} {s.value}" for s in bad_buckets]
    if not samples and text.strip():
        raise EngineError(f"{node}: /metrics has no Prometheus samples")
    model = next(
        (
            s.labels["model_name"]
            for s in samples
            if s.name.startswith("vllm:") and "model_name" in s.labels
        ),
        None,
    )
    kv_values = [s.value for s in samples if s.name == "vllm:kv_cache_usage_perc"]
    finished: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == "vllm:request_success_total":
            finished[s.labels.get("finished_reason", "unknown")] += s.value
    return EngineStats(
        node=node,
        model_name=model,
        running=_sum(samples, "vllm:num_requests_running"),
        waiting=_sum(samples, "vllm:num_requests_waiting"),
        # One value per DP rank: the fleet view wants the mean fill, not a sum over 100%.
        kv_cache_usage=sum(kv_values) / len(kv_values) if kv_values else None,
        preemptions_total=_sum(samples, "vllm:num_preemptions_total"),
        prompt_tokens_total=_sum(samples, "vllm:prompt_tokens_total"),
        generation_tokens_total=_sum(samples, "vllm:generation_tokens_total"),
        requests_finished_total=dict(finished),
        ttft=_histogram(samples, "vllm:time_to_first_token_seconds"),
        e2e_latency=_histogram(samples, "vllm:e2e_request_latency_seconds"),
        inter_token_latency=_histogram(samples, "vllm:inter_token_latency_seconds"),
        skipped_lines=tuple(skipped),
    )


async def fetch_metrics(client: httpx.AsyncClient, node: str, base_url: str) -> str:
    """GET ``{base_url}/metrics``; the text is parsed by :func:`engine_stats_from_text`."""
    url = f"{base_url.rstrip('/')}/metrics"
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise EngineError(f"{node}: GET {url}: {describe_http_error(exc)}") from exc
    except httpx.InvalidURL as exc:  # not an HTTPError: raised before any connection
        raise EngineError(f"{node}: GET {url}: invalid URL: {exc}") from exc
    if response.status_code != 200:
        raise EngineError(f"{node}: GET {url}: HTTP {response.status_code}")
    return response.text


def describe_http_error(exc: httpx.HTTPError) -> str:
    """A short, one-line reason for a transport failure."""
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
