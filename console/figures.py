"""The figures the console computes for a subject: the vocabulary runbook conditions and alert
rules share (console/facts.py reads them; the config and runbook schemas check names with it).
Imports nothing, so that the config schema can use it."""

# figure -> (the subjects it exists for, its unit: "s", "pct", "per_s", "per_min", "count")
FIGURES: dict[str, tuple[frozenset[str], str]] = {
    "e2e_p50": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "e2e_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "e2e_p99": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "ttft_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "itl_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "queue_p95": (frozenset({"node", "endpoint", "upstream"}), "s"),
    "error_pct": (frozenset({"node", "endpoint", "upstream"}), "pct"),
    "requests_per_s": (frozenset({"node", "endpoint", "upstream"}), "per_s"),
    "kv_cache_pct": (frozenset({"node"}), "pct"),
    "running": (frozenset({"node"}), "count"),
    "waiting": (frozenset({"node"}), "count"),
    "preemptions_per_min": (frozenset({"node"}), "per_min"),
    "gpu_temp_max_c": (frozenset({"node"}), "c"),
    # Uncorrected ECC errors since the driver loaded, summed over the node's GPUs.
    "gpu_ecc_uncorrected": (frozenset({"node"}), "count"),
    # 1 while the endpoint answers with another model than when the console started, else 0.
    "model_changed": (frozenset({"endpoint"}), "count"),
}
