"""vLLM engine state from its HTTP surface: ``/metrics``, ``/health``, ``/v1/models``, ``/version``.

``/metrics`` is parsed with prometheus_client's text parser. A malformed line drops that line
(reported in ``EngineStats.skipped_lines``), not the scrape: one bad exporter line must not
blank the engine panel. A NaN or infinite sample value is dropped and reported in
``EngineStats.non_finite`` (the ``le="+Inf"`` bound itself is of course fine). Counters and
histograms are kept per series (``engine`` rank, ``finished_reason``...). Families are read
by the vLLM 0.33 names (``engine`` and ``model_name`` labels); older scrapes without the
``engine`` label parse the same way.
Knows nothing of the UI.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from console.models import EngineStats, Histogram, SeriesLabels

# A scrape of 32 MiB is already ~100k series: past that it is an exporter fault, not data.
MAX_METRICS_BYTES = 32 * 2**20


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


def _labels(sample: Sample) -> SeriesLabels:
    return tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))


def _describe(sample: Sample) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{inner}}} {sample.value}"


def _histograms(samples: list[Sample]) -> dict[str, dict[SeriesLabels, Histogram]]:
    """Histogram family (base name) -> series -> cumulative buckets, one entry per series."""
    buckets: dict[tuple[str, SeriesLabels], dict[float, float]] = defaultdict(dict)
    for s in samples:
        if s.name.endswith("_bucket") and (bound := _bucket_bound(s)) is not None:
            series = buckets[(s.name.removesuffix("_bucket"), _labels(s))]
            # le="0.2" and le="2e-1" are two series with one bound: PromQL adds them.
            series[bound] = series.get(bound, 0.0) + s.value
    extra: dict[tuple[str, SeriesLabels, str], float] = {}
    for s in samples:
        for part in ("sum", "count"):
            base = s.name.removesuffix(f"_{part}")
            if base != s.name and (base, _labels(s)) in buckets:
                extra[(base, _labels(s), part)] = s.value
    families: dict[str, dict[SeriesLabels, Histogram]] = defaultdict(dict)
    for (family, labels), series in buckets.items():
        ordered = tuple(sorted(series.items()))
        families[family][labels] = Histogram(
            buckets=ordered,
            sum=extra.get((family, labels, "sum"), 0.0),
            # Without a _count line, the +Inf bucket holds the same number.
            count=extra.get((family, labels, "count"), ordered[-1][1]),
        )
    return dict(families)


def _counters(samples: list[Sample]) -> dict[str, dict[SeriesLabels, float]]:
    """Counter samples (``*_total``) -> series -> value; works without ``# TYPE`` lines."""
    counters: dict[str, dict[SeriesLabels, float]] = defaultdict(dict)
    for s in samples:
        if s.name.endswith("_total"):
            counters[s.name][_labels(s)] = s.value
    return dict(counters)


def _histogram_series(sample: Sample) -> tuple[str, SeriesLabels] | None:
    """The histogram series a ``_bucket``/``_sum``/``_count`` sample belongs to."""
    for part in ("_bucket", "_sum", "_count"):
        if sample.name.endswith(part):
            return sample.name.removesuffix(part), _labels(sample)
    return None


def _drop_non_finite(samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """Drop NaN and +-Inf values; a histogram series with one loses the whole series.

    A histogram missing one bucket (a NaN ``+Inf`` bucket, say) would still yield a figure,
    and a wrong one, so its series is left out of this scrape entirely.
    """
    bad = [s for s in samples if not math.isfinite(s.value)]
    if not bad:
        return samples, []
    broken = {_histogram_series(s) for s in bad} - {None}
    kept = [s for s in samples if math.isfinite(s.value) and _histogram_series(s) not in broken]
    return kept, [_describe(s) for s in bad]


def engine_stats_from_text(node: str, text: str) -> EngineStats:
    """One scrape of ``/metrics`` as an :class:`EngineStats` (counters, histograms per series)."""
    samples, skipped = parse_samples(text)
    # A bucket whose bound is not a number is as malformed as a bad line: drop and report it.
    bad_buckets = [s for s in samples if s.name.endswith("_bucket") and _bucket_bound(s) is None]
    if bad_buckets:
        samples = [s for s in samples if s not in bad_buckets]
        skipped += [_describe(s) for s in bad_buckets]
    if not samples and text.strip():
        raise EngineError(f"{node}: /metrics has no Prometheus samples")
    samples, non_finite = _drop_non_finite(samples)
    model = next(
        (
            s.labels["model_name"]
            for s in samples
            if s.name.startswith("vllm:") and "model_name" in s.labels
        ),
        None,
    )
    kv_values = [s.value for s in samples if s.name == "vllm:kv_cache_usage_perc"]
    return EngineStats(
        node=node,
        model_name=model,
        running=_sum(samples, "vllm:num_requests_running"),
        waiting=_sum(samples, "vllm:num_requests_waiting"),
        # One value per DP rank: the fleet view wants the mean fill, not a sum over 100%.
        kv_cache_usage=sum(kv_values) / len(kv_values) if kv_values else None,
        counters=_counters(samples),
        histograms=_histograms(samples),
        skipped_lines=tuple(skipped),
        non_finite=tuple(non_finite),
    )


async def fetch_metrics(
    client: httpx.AsyncClient, node: str, base_url: str, *, max_bytes: int = MAX_METRICS_BYTES
) -> str:
    """GET ``{base_url}/metrics``; the text is parsed by :func:`engine_stats_from_text`.

    The body is read only up to ``max_bytes``: a runaway exporter (label explosion) must not
    take the console's memory with it.
    """
    url = f"{base_url.rstrip('/')}/metrics"
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise EngineError(f"{node}: GET {url}: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise EngineError(f"{node}: GET {url}: body over the {max_bytes}-byte limit")
            return body.decode(response.encoding or "utf-8", errors="replace")
    except httpx.HTTPError as exc:
        raise EngineError(f"{node}: GET {url}: {describe_http_error(exc)}") from exc
    except httpx.InvalidURL as exc:  # not an HTTPError: raised before any connection
        raise EngineError(f"{node}: GET {url}: invalid URL: {exc}") from exc


def describe_http_error(exc: httpx.HTTPError) -> str:
    """A short, one-line reason for a transport failure."""
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def fetch_version(
    client: httpx.AsyncClient, node: str, base_url: str, *, timeout_s: float = 10.0
) -> str:
    """The version the engine reports on ``GET {base_url}/version`` (vLLM: ``{"version": ...}``)."""
    url = f"{base_url.rstrip('/')}/version"
    data = await _get_json(client, node, url, timeout_s)
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version.strip():
        raise EngineError(f"{node}: GET {url}: no version in the answer")
    return version.strip()


async def fetch_ready_models(
    client: httpx.AsyncClient, node: str, base_url: str, *, timeout_s: float = 10.0
) -> list[str]:
    """The model ids an engine that serves lists, the name it answers as first.

    Serving means ``/health`` answers 200 and ``/v1/models`` lists at least one model: vLLM's
    /health turns 200 before the OpenAI routes are up on some versions, so both are asked.
    Raises :class:`EngineError` saying which of the two is not there yet.
    """
    base = base_url.rstrip("/")
    health = await _get(client, node, f"{base}/health", timeout_s)
    if health.status_code != 200:
        raise EngineError(f"{node}: GET {base}/health: HTTP {health.status_code}")
    data = await _get_json(client, node, f"{base}/v1/models", timeout_s)
    cards = data.get("data") if isinstance(data, dict) else None
    ids = [c["id"] for c in cards or () if isinstance(c, dict) and isinstance(c.get("id"), str)]
    if not ids:
        raise EngineError(f"{node}: GET {base}/v1/models: no model listed")
    return ids


async def _get(client: httpx.AsyncClient, node: str, url: str, timeout_s: float) -> httpx.Response:
    try:
        return await client.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EngineError(f"{node}: GET {url}: {describe_http_error(exc)}") from exc
    except httpx.InvalidURL as exc:
        raise EngineError(f"{node}: GET {url}: invalid URL: {exc}") from exc


async def _get_json(client: httpx.AsyncClient, node: str, url: str, timeout_s: float) -> object:
    response = await _get(client, node, url, timeout_s)
    if response.status_code != 200:
        raise EngineError(f"{node}: GET {url}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError as exc:
        raise EngineError(f"{node}: GET {url}: not JSON") from exc
