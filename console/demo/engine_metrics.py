"""The ``/metrics`` of one simulated vLLM 0.33 engine process, built with prometheus_client.

Names, types, labels, HELP texts and bucket boundaries follow vLLM 0.33.0
(``vllm/v1/metrics/loggers.py``; see tests/fixtures/vllm/metric-catalogue-v0.33.0-derived.tsv).
One registry per engine process: a restart makes a new one, so counters reset and ``_created``
moves, as they do on a real node. This module only records what the simulator reports; it
never decides a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector

# The format generate_latest writes; what a vLLM server sends as its content type.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Declared first: each is built in two statements, and mypy would fix the first one's length.
TTFT_BUCKETS: tuple[float, ...]
TOKEN_LATENCY_BUCKETS: tuple[float, ...]
REQUEST_LATENCY_BUCKETS: tuple[float, ...]
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0)
TTFT_BUCKETS += (2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
TOKEN_LATENCY_BUCKETS += (2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0)
REQUEST_LATENCY_BUCKETS += (40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHE_TIERS = ("device", "host", "disk", "p2p", "external_unspecified")


def one_two_five_buckets(max_value: int) -> tuple[int, ...]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``max_value``."""
    buckets: list[int] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return tuple(buckets)
            buckets.append(mantissa * scale)
        scale *= 10


@dataclass(frozen=True)
class FinishedRequest:
    """What vLLM records when a request leaves the engine."""

    finished_reason: str
    prompt_tokens: int
    generation_tokens: int
    max_tokens: int
    computed_prompt_tokens: int  # prompt tokens not served from the prefix cache
    e2e_s: float
    queue_s: float
    prefill_s: float
    decode_s: float
    preemptions: int


class EngineMetrics:
    """The Prometheus families of one engine (data-parallel rank 0)."""

    def __init__(self, served_model_name: str, max_model_len: int, cache_info: dict[str, str]):
        self.registry = CollectorRegistry()
        # A real vLLM process exposes these beside its own families.
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        labels = ("model_name", "engine")
        values = (served_model_name, "0")
        reg = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=reg).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(*values)

        token_buckets = one_two_five_buckets(max_model_len)
        self.running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV "
            "transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            (*labels, "reason"),
            registry=reg,
        )
        self.waiting_capacity = waiting_by_reason.labels(*values, "capacity")
        waiting_by_reason.labels(*values, "deferred")
        sleep_state = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine "
            "is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
            "level 2.",
            (*labels, "sleep_state"),
            registry=reg,
        )
        sleep_state.labels(*values, "awake").set(1)
        sleep_state.labels(*values, "weights_offloaded")
        sleep_state.labels(*values, "discard_all")
        self.kv_cache_usage = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            (*labels, "source"),
            registry=reg,
        )
        self.prompt_by_source = {s: by_source.labels(*values, s) for s in PROMPT_SOURCES}
        self.prompt_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        cached_by_source = Counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), "
            "host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
            "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
            "vllm:external_prefix_cache_hits.",
            (*labels, "source"),
            registry=reg,
        )
        self.cached_by_tier = {t: cached_by_source.labels(*values, t) for t in CACHE_TIERS}
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*labels, "finished_reason"),
            registry=reg,
        )
        self.success = {r: success.labels(*values, r) for r in FINISHED_REASONS}
        # No queue limit is configured, so vLLM never rejects: the family has no samples.
        Counter(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            ("model_name", "reason"),
            registry=reg,
        )
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        )
        self.max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        )
        self.params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", (1, 2, 5, 10, 20)
        )
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            token_buckets,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.inter_token = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            PREEMPTION_BUCKETS,
        )
        self.prefill_kv_computed = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets,
        )
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            (*cache_info, "engine"),
            registry=reg,
        )
        info.labels(*cache_info.values(), "0").set(1)

    def render(self, names: Sequence[str] = ()) -> bytes:
        """The exposition; with ``names``, only those samples (vLLM's ``?name[]=`` filter)."""
        registry = self.registry.restricted_registry(names) if names else self.registry
        return generate_latest(registry)

    def set_scheduler_state(self, running: int, waiting: int, kv_usage: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.waiting_capacity.set(waiting)
        self.kv_cache_usage.set(kv_usage)

    def admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        """A request's prompt was looked up in the prefix cache when it was first scheduled."""
        self.prefix_queries.inc(prompt_tokens)
        self.prefix_hits.inc(cached_tokens)
        self.prompt_cached.inc(cached_tokens)
        self.cached_by_tier["device"].inc(cached_tokens)
        self.prompt_by_source["local_cache_hit"].inc(cached_tokens)
        self.prompt_by_source["local_compute"].inc(prompt_tokens - cached_tokens)

    def first_token(self, prompt_tokens: int, ttft_s: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc()
        self.ttft.observe(ttft_s)

    def next_tokens(self, inter_token_s: float, count: int) -> None:
        """``count`` requests each produced one more token, ``inter_token_s`` after their last."""
        self.generation_tokens.inc(count)
        for _ in range(count):
            self.inter_token.observe(inter_token_s)

    def finished(self, request: FinishedRequest) -> None:
        self.success[request.finished_reason].inc()
        self.e2e.observe(request.e2e_s)
        self.queue_time.observe(request.queue_s)
        self.inference_time.observe(request.prefill_s + request.decode_s)
        self.prefill_time.observe(request.prefill_s)
        self.decode_time.observe(request.decode_s)
        self.request_prompt_tokens.observe(request.prompt_tokens)
        self.request_generation_tokens.observe(request.generation_tokens)
        self.max_generation_tokens.observe(request.max_tokens)
        self.params_n.observe(1)
        self.params_max_tokens.observe(request.max_tokens)
        self.prefill_kv_computed.observe(request.computed_prompt_tokens)
        self.request_preemptions.observe(request.preemptions)
        if request.generation_tokens > 1:
            tpot = request.decode_s / (request.generation_tokens - 1)
            self.time_per_output_token.observe(tpot)

    def step(self, tokens: int, preempted: int) -> None:
        self.iteration_tokens.observe(tokens)
        self.preemptions.inc(preempted)
