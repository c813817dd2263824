"""Engine state from its HTTP surface: ``/metrics``, ``/health``, ``/v1/models``, ``/version``.

``/metrics`` is parsed with prometheus_client's text parser. A malformed line drops that line
(reported in ``EngineStats.skipped_lines``), not the scrape: one bad exporter line must not
blank the engine panel. A NaN or infinite sample value is dropped and reported in
``EngineStats.non_finite`` (the ``le="+Inf"`` bound itself is of course fine). Counters and
histograms are kept per series (``engine`` rank, ``finished_reason``...). Families are read
by the vLLM 0.33 names (``engine`` and ``model_name`` labels); older scrapes without the
``engine`` label parse the same way.

SGLang (``sglang:`` names) and Hugging Face TGI (``tgi_`` names) are read too: the engine is
told from the metric names in the text (:func:`detect_engine`), and its families are copied
under the vLLM names the console reads (the tables below; both engines already count in
seconds and tokens, so no unit changes), next to their own names. A figure an engine does not
report (TGI has no TTFT, ITL or preemptions) has no vLLM family and stays unknown, never 0.
Knows nothing of the UI.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from console.models import EngineStats, Histogram, SeriesLabels

# A scrape of 32 MiB is already ~100k series: past that it is an exporter fault, not data.
MAX_METRICS_BYTES = 32 * 2**20

VLLM, SGLANG, TGI = "vllm", "sglang", "tgi"
# Metric-name prefix of each engine: how a scrape says which engine exposed it.
_PREFIXES = ((VLLM, "vllm:"), (SGLANG, "sglang:"), (TGI, "tgi_"))
_NAME = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")

# The vLLM 0.33 families the console reads (console/windows.py, aggregate.py, facts.py).
E2E = "vllm:e2e_request_latency_seconds"
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
QUEUE = "vllm:request_queue_time_seconds"
TPOT = "vllm:request_time_per_output_token_seconds"
PROMPT_LEN = "vllm:request_prompt_tokens"
GENERATION_LEN = "vllm:request_generation_tokens"
SUCCESS = "vllm:request_success_total"
PREEMPTIONS = "vllm:num_preemptions_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
CACHED_TOKENS = "vllm:prompt_tokens_cached_total"

# SGLang 0.5.23 family -> vLLM family (tests/fixtures/sglang/SOURCES.md has the source lines).
# Same units on both sides: seconds, tokens, requests.
SGLANG_HISTOGRAMS = {
    "sglang:e2e_request_latency_seconds": E2E,
    "sglang:time_to_first_token_seconds": TTFT,
    # Per token, as vLLM's: each interval is divided by the tokens it brought.
    "sglang:inter_token_latency_seconds": ITL,
    "sglang:queue_time_seconds": QUEUE,
    "sglang:request_time_per_output_token_seconds": TPOT,
    "sglang:prompt_tokens_histogram": PROMPT_LEN,
    "sglang:generation_tokens_histogram": GENERATION_LEN,
}
SGLANG_COUNTERS = {
    # Every finished request, aborted ones included, with no finish reason: the request rate
    # is known, how many failed is not (num_aborted_requests_total overlaps it).
    "sglang:num_requests_total": SUCCESS,
    # A retraction is SGLang's preemption: a running request sent back to the queue.
    "sglang:num_retracted_requests_total": PREEMPTIONS,
    "sglang:prompt_tokens_total": PROMPT_TOKENS,
    "sglang:generation_tokens_total": GENERATION_TOKENS,
    "sglang:cached_tokens_total": CACHED_TOKENS,
}
# Labels that tell apart copies of one scheduler's view (TP/PP/EP ranks of one DP group, the
# multiprocess pid); ``dp_rank`` tells apart schedulers with requests of their own.
_SGLANG_REPLICA_LABELS = ("tp_rank", "pp_rank", "moe_ep_rank", "pid")

# TGI 3.3.7 family -> vLLM family (tests/fixtures/tgi/SOURCES.md). TGI records durations
# with ``as_secs_f64()``: seconds, as vLLM's.
TGI_HISTOGRAMS = {
    "tgi_request_duration": E2E,
    "tgi_request_queue_duration": QUEUE,
    "tgi_request_input_length": PROMPT_LEN,
    "tgi_request_generated_tokens": GENERATION_LEN,
}
# TGI's counters carry no ``_total``; the parser adds it where a ``# TYPE`` line says counter.
_TGI_COUNTERS = frozenset(
    {
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_failure",
        "tgi_batch_concat",
        "tgi_batch_inference_count",
        "tgi_batch_inference_success",
        "tgi_batch_inference_failure",
    }
)


# The vLLM families read besides the histograms and counters above.
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_BEFORE_0_10 = "vllm:gpu_cache_usage_perc"  # its name until vLLM 0.10 removed it
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")
# Not TPOT nor the prompt and generation lengths: no figure reads them yet.
_READ_HISTOGRAMS = (E2E, TTFT, ITL, QUEUE)


def _histogram_samples(families: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"{family}{part}" for family in families for part in _HISTOGRAM_PARTS)


# The sample names the console reads, by engine: a scrape asks for only these (``name[]``),
# which prometheus_client's exposition honours. vLLM and SGLang serve theirs with it; TGI's
# Rust exporter ignores the parameter and sends everything, so it is not asked.
SAMPLE_NAMES: dict[str, tuple[str, ...]] = {
    VLLM: (
        *_histogram_samples(_READ_HISTOGRAMS),
        SUCCESS,
        PREEMPTIONS,
        PROMPT_TOKENS,
        GENERATION_TOKENS,
        CACHED_TOKENS,
        PREFIX_QUERIES,
        PREFIX_HITS,
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        KV_CACHE,
        KV_CACHE_BEFORE_0_10,
    ),
    SGLANG: (
        *_histogram_samples(
            k for k, v in SGLANG_HISTOGRAMS.items() if v in (E2E, TTFT, ITL, QUEUE)
        ),
        *SGLANG_COUNTERS,
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
    ),
}
# tgi_request_failure{err} -> vLLM finished_reason. validation, template and overloaded are
# refused before the queue, where vLLM counts no request either, so they are left out.
TGI_FAILURE_REASONS = {"dropped": "abort", "generation": "error", "incomplete": "error"}
TGI_REFUSED = frozenset({"validation", "template", "overloaded"})


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


# The narrow scanner below reads well-formed exposition text (what prometheus_client and
# the other exporters write) at a fraction of the library parser's cost; any line it does not
# recognise exactly sends the whole text to the library. Its output equals the library's on
# every fixture and on generated text (tests/test_engines.py, differential tests).
_SCAN_SAMPLE_RE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\[\\n\"])*\",?)*)\})?"
    r"[ \t]+([^ \t_]+)(?:[ \t]+([^ \t_]+))?"
)
_SCAN_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\n"])*)"')
_SCAN_ESCAPE_RE = re.compile(r'\\[\\n"]')
_SCAN_ESCAPES = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_SCAN_COMMENT_RE = re.compile(r"#[ \t]+(HELP|TYPE)[ \t]+([a-zA-Z_:][a-zA-Z0-9_:]*)(?:[ \t]+(.*))?")
_ALLOWED_SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "summary": ("_count", "_sum", ""),
    "histogram": ("_count", "_sum", "_bucket"),
}


def _number(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def scan_samples(text: str) -> list[Sample] | None:
    """The samples of well-formed exposition text, exactly as prometheus_client's parser
    gives them (counters declared without ``_total`` get it, as there); None for text it does
    not recognise line by line, which the library then reads."""
    samples: list[Sample] = []
    name, typ, allowed = "", "untyped", frozenset[str]()
    try:
        # Lines end at \n only, as the library reads them (splitlines would also cut at \x85
        # or \u2028 inside a label value).
        for raw in text.split("\n"):
            line = raw.strip()
            if not line:
                continue
            if line[0] == "#":
                comment = _SCAN_COMMENT_RE.fullmatch(line)
                if comment is None:
                    if line.startswith(("# HELP", "# TYPE", "#HELP", "#TYPE")) or '"' in line:
                        return None  # a form of HELP/TYPE this scanner does not read
                    continue  # another comment: ignored, as the library does
                kind, candidate, rest = comment.groups()
                if kind == "HELP":
                    if candidate != name:
                        name, typ, allowed = candidate, "untyped", frozenset({candidate})
                else:
                    if rest is None:
                        return None
                    name, typ = candidate, rest
                    allowed = frozenset(name + s for s in _ALLOWED_SUFFIXES.get(typ, ("",)))
                continue
            match = _SCAN_SAMPLE_RE.fullmatch(line)
            if match is None or " # " in line:
                return None
            sample_name, label_text, value, timestamp = match.groups()
            labels = {
                k: _SCAN_ESCAPE_RE.sub(lambda m: _SCAN_ESCAPES[m[0]], v)
                for k, v in _SCAN_LABEL_RE.findall(label_text or "")
            }
            if "__name__" in labels:
                return None
            sample = Sample(
                sample_name,
                labels,
                _number(value),
                _number(timestamp) / 1000 if timestamp is not None else None,
            )
            if sample_name not in allowed:
                name, typ, allowed = "", "untyped", frozenset()  # an untyped singleton
            elif typ == "counter" and not name.endswith("_total"):
                sample = sample._replace(name=sample_name + "_total")
            samples.append(sample)
    except ValueError:  # a value that is not a number
        return None
    return samples


def parse_samples(text: str) -> tuple[list[Sample], list[str]]:
    """All samples in ``text`` and the lines that had to be skipped as malformed."""
    scanned = scan_samples(text)
    if scanned is not None:
        return scanned, []
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


def _engine_of(names: Iterable[str]) -> str | None:
    counts = Counter(
        engine for name in names for engine, prefix in _PREFIXES if name.startswith(prefix)
    )
    return counts.most_common(1)[0][0] if counts else None


def detect_engine(text: str) -> str | None:
    """Which engine exposed this ``/metrics`` text: ``"vllm"``, ``"sglang"``, ``"tgi"`` or None.

    Told by the sample names (``vllm:``, ``sglang:``, ``tgi_``), the most frequent prefix
    winning; comment lines do not count. None when no sample has one of the prefixes.
    """
    names = (
        match.group(1)
        for line in text.splitlines()
        if not line.lstrip().startswith("#") and (match := _NAME.match(line))
    )
    return _engine_of(names)


def engine_stats_from_text(node: str, text: str) -> EngineStats:
    """One scrape of ``/metrics`` as an :class:`EngineStats` (counters, histograms per series).

    vLLM, SGLang and TGI text alike: the engine is detected from the sample names, and
    SGLang's and TGI's families are added under the vLLM names as well (module docstring).
    """
    samples, skipped = parse_samples(text)
    # A bucket whose bound is not a number is as malformed as a bad line: drop and report it.
    bad_buckets = [s for s in samples if s.name.endswith("_bucket") and _bucket_bound(s) is None]
    if bad_buckets:
        samples = [s for s in samples if s not in bad_buckets]
        skipped += [_describe(s) for s in bad_buckets]
    if not samples and text.strip():
        raise EngineError(f"{node}: /metrics has no Prometheus samples")
    samples, non_finite = _drop_non_finite(samples)
    engine = _engine_of(s.name for s in samples)
    if engine == TGI:
        # Without a ``# TYPE`` line the parser leaves a counter's name as TGI wrote it.
        samples = [
            s._replace(name=f"{s.name}_total") if s.name in _TGI_COUNTERS else s for s in samples
        ]
    counters = _counters(samples)
    histograms = _histograms(samples)
    if engine == SGLANG:
        return _sglang_stats(node, samples, counters, histograms, skipped, non_finite)
    if engine == TGI:
        return _tgi_stats(node, samples, counters, histograms, skipped, non_finite)
    model = next(
        (
            s.labels["model_name"]
            for s in samples
            if s.name.startswith("vllm:") and "model_name" in s.labels
        ),
        None,
    )
    kv_values = [s.value for s in samples if s.name == KV_CACHE] or [
        s.value for s in samples if s.name == KV_CACHE_BEFORE_0_10
    ]
    return EngineStats(
        node=node,
        model_name=model,
        running=_sum(samples, "vllm:num_requests_running"),
        waiting=_sum(samples, "vllm:num_requests_waiting"),
        # One value per DP rank: the fleet view wants the mean fill, not a sum over 100%.
        kv_cache_usage=sum(kv_values) / len(kv_values) if kv_values else None,
        counters=counters,
        histograms=histograms,
        skipped_lines=tuple(skipped),
        non_finite=tuple(non_finite),
        engine="vllm",
    )


_T = TypeVar("_T")


def _replica_order(labels: SeriesLabels) -> tuple[tuple[int, int | str], ...]:
    found = dict(labels)
    return tuple(
        (0, int(v)) if v.isdigit() else (1, v)
        for v in (found.get(k, "") for k in _SGLANG_REPLICA_LABELS)
    )


def _one_per_scheduler(series: Mapping[SeriesLabels, _T]) -> dict[SeriesLabels, _T]:
    """Of series that differ only in TP/PP/EP rank (copies of one scheduler), the lowest rank's.

    SGLang records scheduler metrics on TP rank 0 of each DP group, on every PP stage, and on
    every TP rank with ``--enable-metrics-for-all-schedulers``: adding those up would count
    each request once per copy. Series of different ``dp_rank`` are different schedulers.
    """
    kept: dict[SeriesLabels, SeriesLabels] = {}
    for labels in sorted(series, key=_replica_order):
        key = tuple((k, v) for k, v in labels if k not in _SGLANG_REPLICA_LABELS)
        kept.setdefault(key, labels)
    return {labels: series[labels] for labels in kept.values()}


def _sglang_gauge(samples: list[Sample], name: str) -> list[float]:
    """One value per scheduler (DP group) of an SGLang scheduler gauge."""
    series = {
        _labels(s): s.value
        for s in samples
        # With priority scheduling the total is the priority="" series; the rest break it down.
        if s.name == name and not s.labels.get("priority")
    }
    return list(_one_per_scheduler(series).values())


def _sglang_stats(
    node: str,
    samples: list[Sample],
    counters: dict[str, dict[SeriesLabels, float]],
    histograms: dict[str, dict[SeriesLabels, Histogram]],
    skipped: list[str],
    non_finite: list[str],
) -> EngineStats:
    for family, vllm_family in SGLANG_COUNTERS.items():
        if family in counters:
            counters[vllm_family] = _one_per_scheduler(counters[family])
    for family, vllm_family in SGLANG_HISTOGRAMS.items():
        if family in histograms:
            histograms[vllm_family] = _one_per_scheduler(histograms[family])
    running = _sglang_gauge(samples, "sglang:num_running_reqs")
    waiting = _sglang_gauge(samples, "sglang:num_queue_reqs")
    # Used KV tokens over the pool (evictable prefix cache counts as free, as in vLLM), 0..1.
    usage = _sglang_gauge(samples, "sglang:token_usage")
    model = next(
        (
            s.labels["model_name"]
            for s in samples
            if s.name.startswith("sglang:") and s.labels.get("model_name")
        ),
        None,
    )
    return EngineStats(
        node=node,
        model_name=model,
        running=sum(running) if running else None,
        waiting=sum(waiting) if waiting else None,
        kv_cache_usage=sum(usage) / len(usage) if usage else None,
        counters=counters,
        histograms=histograms,
        skipped_lines=tuple(skipped),
        non_finite=tuple(non_finite),
        engine="sglang",
    )


def _tgi_outcomes(counters: dict[str, dict[SeriesLabels, float]]) -> dict[SeriesLabels, float]:
    """TGI's success and failure counters as vLLM's ``request_success_total`` series."""
    outcomes: dict[SeriesLabels, float] = {}
    for labels, value in counters.get("tgi_request_success_total", {}).items():
        outcomes[tuple(sorted((*labels, ("finished_reason", "success"))))] = value
    for labels, value in counters.get("tgi_request_failure_total", {}).items():
        err = dict(labels).get("err", "")
        if err in TGI_REFUSED:
            continue
        reason = TGI_FAILURE_REASONS.get(err, "error")
        outcomes[tuple(sorted((*labels, ("finished_reason", reason))))] = value
    return outcomes


def _tgi_stats(
    node: str,
    samples: list[Sample],
    counters: dict[str, dict[SeriesLabels, float]],
    histograms: dict[str, dict[SeriesLabels, Histogram]],
    skipped: list[str],
    non_finite: list[str],
) -> EngineStats:
    for family, vllm_family in TGI_HISTOGRAMS.items():
        if family in histograms:
            histograms[vllm_family] = dict(histograms[family])
    if "tgi_request_success_total" in counters or "tgi_request_failure_total" in counters:
        counters[SUCCESS] = _tgi_outcomes(counters)
    # Tokens per request, summed: TGI has no token counters, its histograms' sums count them.
    for family, vllm_family in (
        ("tgi_request_input_length", PROMPT_TOKENS),
        ("tgi_request_generated_tokens", GENERATION_TOKENS),
    ):
        if family in histograms:
            counters[vllm_family] = {k: h.sum for k, h in histograms[family].items()}
    # KV blocks held by the running batch over all KV blocks (both in tokens: blocks x block
    # size); tgi_batch_max_total_tokens is set by the v3 backend after warm-up only.
    held = _sum(samples, "tgi_batch_current_max_tokens")
    capacity = _sum(samples, "tgi_batch_max_total_tokens")
    return EngineStats(
        node=node,
        model_name=None,  # TGI's metrics carry no model label (its /info has the model id)
        running=_sum(samples, "tgi_batch_current_size"),
        waiting=_sum(samples, "tgi_queue_size"),
        kv_cache_usage=held / capacity if held is not None and capacity else None,
        counters=counters,
        histograms=histograms,
        skipped_lines=tuple(skipped),
        non_finite=tuple(non_finite),
        engine="tgi",
    )


def metrics_url(base_url: str, names: Sequence[str] = ()) -> httpx.URL:
    """``{base_url}/metrics``; with ``names``, asking for only those samples (``?name[]=``)."""
    params = httpx.QueryParams({"name[]": list(names)}) if names else None
    return httpx.URL(f"{base_url.rstrip('/')}/metrics", params=params)


async def fetch_metrics(
    client: httpx.AsyncClient,
    node: str,
    base_url: str,
    *,
    url: httpx.URL | None = None,
    max_bytes: int = MAX_METRICS_BYTES,
) -> str:
    """GET ``{base_url}/metrics`` (or ``url``, made by :func:`metrics_url`); the text is
    parsed by :func:`engine_stats_from_text`.

    The body is read only up to ``max_bytes``: a runaway exporter (label explosion) must not
    take the console's memory with it. Errors name the path, not the query.
    """
    shown = f"{base_url.rstrip('/')}/metrics"
    try:
        async with client.stream("GET", url or shown) as response:
            if response.status_code != 200:
                raise EngineError(f"{node}: GET {shown}: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise EngineError(f"{node}: GET {shown}: body over the {max_bytes}-byte limit")
            return body.decode(response.encoding or "utf-8", errors="replace")
    except httpx.HTTPError as exc:
        raise EngineError(f"{node}: GET {shown}: {describe_http_error(exc)}") from exc
    except httpx.InvalidURL as exc:  # not an HTTPError: raised before any connection
        raise EngineError(f"{node}: GET {shown}: invalid URL: {exc}") from exc


class MetricsScraper:
    """Scrapes one engine's ``/metrics``: the first scrape asks for everything and tells which
    engine it is; later ones ask for only the samples the console reads of that engine (about
    a quarter of vLLM's text, and of the parsing). A scrape that fails to parse asks for
    everything again next time: another engine may answer at that address now.

    Each engine has an HTTP client of its own: a pool shared by hundreds of engines checks
    every idle connection on each request (httpcore), a cost that grows with the square of
    the fleet.
    """

    def __init__(self, node: str, base_url: str, timeout: httpx.Timeout) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=2, max_keepalive_connections=1)
        )
        self.node = node
        self.base_url = base_url
        self.engine: str | None = None
        # Made once per engine kind and address (a forward's port changes on reconnect).
        self._url: httpx.URL | None = None
        self._url_for: tuple[str | None, str] | None = None

    async def scrape(self) -> EngineStats:
        if self._url is None or self._url_for != (self.engine, self.base_url):
            self._url = metrics_url(self.base_url, SAMPLE_NAMES.get(self.engine or "", ()))
            self._url_for = (self.engine, self.base_url)
        text = await fetch_metrics(self._client, self.node, self.base_url, url=self._url)
        try:
            # Parsing a large scrape is CPU work: keep it off the event loop the UI runs on.
            stats = await asyncio.to_thread(engine_stats_from_text, self.node, text)
        except EngineError:
            self.engine = None
            raise
        self.engine = stats.engine
        return stats

    async def aclose(self) -> None:
        await self._client.aclose()


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
