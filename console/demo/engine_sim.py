"""A step-level model of one vLLM V1 engine: scheduler, KV cache, latency, and its metrics.

Latency model. vLLM works in engine steps; one step's duration is

    step_s = (overhead_s + per_token_s * step_tokens + kv_read_s * kv_tokens)
             * (8 / tensor-parallel-size) * slowdown * (bad revision ? 2.5 : 1)

Each step first gives every running request its next token (one decode token, or the next
chunk of a prompt still in prefill), then admits waiting requests with what is left of the
``max-num-batched-tokens`` budget (chunked prefill). Hence, under load:

* inter-token latency is the step time, and steps that carry prefill chunks are long: a smaller
  ``max-num-batched-tokens`` caps them, so ITL falls;
* a new prompt waits behind the prefill backlog; a smaller budget moves that backlog in more
  steps, each paying ``overhead_s`` again, so TTFT rises.

KV cache: a running request holds the KV of the tokens it computed; when a step does not fit,
the newest running request is preempted (KV freed, recomputed later), as in vLLM V1. Requests
that wait longer than their clients do (60 s) are aborted. Capacities are scaled down from a
real H100 node's so that a drill can fill the cache.

A revision the node's faults call bad is slower and ends a share of its requests with
finished_reason ``error``; which requests is decided by a running tally, so the share is exact
and the same on every run.

This module never touches the network or the wall clock: the caller advances simulated time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from console.demo.engine_args import EngineArgs
from console.demo.engine_metrics import EngineMetrics, FinishedRequest
from console.demo.faults import (
    BAD_REVISION_ERROR_SHARE,
    BAD_REVISION_SLOWDOWN,
    ActiveFaults,
    every_share,
)
from console.demo.h100 import MEMORY_TOTAL_MIB

_CUDA_CONTEXT_MIB = 520
_ACTIVATIONS_MIB = 1024
CLIENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ModelProfile:
    """Costs of one model at tensor parallel 8 on H100s, the constants of the latency model."""

    overhead_s: float  # per step: weight reads, scheduling, kernel launches
    per_token_s: float  # each token scheduled in a step
    kv_read_s: float  # each KV-cache token the step's attention reads
    kv_tokens: int  # KV capacity at gpu-memory-utilization 0.9 (scaled down for drills)
    weights_gib: float  # bf16 weights, all GPUs together
    max_model_len: int
    attention_heads: int


PROFILES: dict[str, ModelProfile] = {
    "meta-llama/Llama-3.1-8B-Instruct": ModelProfile(
        overhead_s=0.006,
        per_token_s=1.5e-5,
        kv_read_s=3.0e-8,
        kv_tokens=200_000,
        weights_gib=15.0,
        max_model_len=131072,
        attention_heads=32,
    ),
    "meta-llama/Llama-3.1-70B-Instruct": ModelProfile(
        overhead_s=0.014,
        per_token_s=8.0e-5,
        kv_read_s=8.0e-8,
        kv_tokens=80_000,
        weights_gib=131.5,
        max_model_len=131072,
        attention_heads=64,
    ),
}
# Any other model behaves like the 8B one.
DEFAULT_PROFILE = PROFILES["meta-llama/Llama-3.1-8B-Instruct"]


class EngineStartError(Exception):
    """The engine would exit during start-up; the message is the line vLLM would log."""


@dataclass
class SimRequest:
    prompt_tokens: int
    output_tokens: int  # tokens it generates before it stops
    max_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    arrival_s: float = 0.0  # on the engine's clock, set by submit()
    prefill_target: int = 0  # tokens to compute before the next output token
    computed: int = 0  # tokens computed (and held in the KV cache) since last scheduled
    generated: int = 0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float = 0.0
    preemptions: int = 0

    def __post_init__(self) -> None:
        self.prefill_target = self.prompt_tokens - self.cached_tokens

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_target

    def next_chunk(self, budget: int, chunked_prefill: bool) -> int:
        """Tokens this request would compute in a step with ``budget`` tokens left (0: none)."""
        if not self.prefilling:
            return 1
        remaining = self.prefill_target - self.computed
        if chunked_prefill:
            return min(remaining, budget)
        return remaining if remaining <= budget else 0


class EngineSim:
    """One engine process, from a successful start until it is stopped or restarted."""

    def __init__(self, args: EngineArgs, faults: ActiveFaults) -> None:
        profile = PROFILES.get(args.model, DEFAULT_PROFILE)
        self.args = args
        self.faults = faults
        self.max_model_len = args.max_model_len or profile.max_model_len
        tp = args.tensor_parallel_size
        if profile.attention_heads % tp:
            raise EngineStartError(
                f"ValueError: Total number of attention heads ({profile.attention_heads}) "
                f"must be divisible by tensor parallel size ({tp})."
            )
        if not args.enable_chunked_prefill and args.max_num_batched_tokens < self.max_model_len:
            raise EngineStartError(
                f"ValueError: max_num_batched_tokens ({args.max_num_batched_tokens}) is smaller "
                f"than max_model_len ({self.max_model_len}). Please increase "
                "max_num_batched_tokens or decrease max_model_len."
            )
        weights_mib = profile.weights_gib * 1024 / tp
        if weights_mib + _ACTIVATIONS_MIB > MEMORY_TOTAL_MIB:
            raise EngineStartError(
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                f"{weights_mib / 1024:.2f} GiB."
            )
        # Per GPU: what the process holds whatever the load, and the KV pool it fills.
        self.static_mib_per_gpu = _CUDA_CONTEXT_MIB + weights_mib + _ACTIVATIONS_MIB
        budget_mib = args.gpu_memory_utilization * MEMORY_TOTAL_MIB
        self.kv_pool_mib_per_gpu = budget_mib - weights_mib - _ACTIVATIONS_MIB
        if self.kv_pool_mib_per_gpu <= 0:
            raise EngineStartError(
                "ValueError: No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine."
            )
        reference_pool = 0.9 * MEMORY_TOTAL_MIB - profile.weights_gib * 1024 / 8 - _ACTIVATIONS_MIB
        pool_ratio = self.kv_pool_mib_per_gpu * tp / (reference_pool * 8)
        self.kv_capacity = max(1, int(profile.kv_tokens * pool_ratio))
        self._profile = profile
        self._speed = 8 / tp  # fewer GPUs per step: each step takes longer
        self.metrics = EngineMetrics(
            args.served_model_name,
            self.max_model_len,
            {
                "block_size": "16",
                "cache_dtype": "auto",
                "enable_prefix_caching": "True",
                "gpu_memory_utilization": str(args.gpu_memory_utilization),
                "num_gpu_blocks": str(self.kv_capacity // 16),
            },
        )
        self.now = 0.0
        self._horizon = 0.0
        self._arrivals: deque[SimRequest] = deque()
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.kv_used = 0
        self.external_running = 0  # real HTTP requests in flight, shown in the running gauge
        self.busy_fraction = 0.0  # of the last advance(): share of time spent in steps
        self.tokens_per_step = 0.0
        self._finishing = 0  # requests finished on a bad revision, for its error share
        self.mean_step_s = self.step_time(1)

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_used / self.kv_capacity)

    @property
    def bad_revision(self) -> bool:
        """Whether the revision this engine runs is a bad one (its faults decide, any time)."""
        return self.faults.revision_is_bad(self.args.revision)

    def step_time(self, tokens: int) -> float:
        p = self._profile
        cost = p.overhead_s + p.per_token_s * tokens + p.kv_read_s * self.kv_used
        bad = BAD_REVISION_SLOWDOWN if self.bad_revision else 1.0
        return cost * self._speed * self.faults.slowdown * bad

    def fails_next(self) -> bool:
        """Whether the request finishing now fails: a bad revision fails its share of them."""
        if not self.bad_revision:
            return False
        self._finishing += 1
        return every_share(self._finishing, BAD_REVISION_ERROR_SHARE)

    def submit(self, offset_s: float, request: SimRequest) -> None:
        """Queue a request arriving ``offset_s`` into the next advance(), in arrival order."""
        request.arrival_s = self._horizon + offset_s
        self._arrivals.append(request)

    def advance(self, dt_s: float) -> None:
        """Run engine steps until simulated time has moved ``dt_s`` further."""
        self._horizon += dt_s
        busy_s = 0.0
        steps = tokens = 0
        self._abort_stale()
        while self.now < self._horizon:
            while self._arrivals and self._arrivals[0].arrival_s <= self.now:
                self.waiting.append(self._arrivals.popleft())
            if not self.running and not self.waiting:
                next_arrival = self._arrivals[0].arrival_s if self._arrivals else self._horizon
                self.now = min(next_arrival, self._horizon)
                if not self._arrivals:
                    break
                continue
            duration, step_tokens = self._step()
            if not step_tokens:  # nothing fits until something finishes: wait for arrivals
                self.now = self._horizon
                break
            busy_s += duration
            steps += 1
            tokens += step_tokens
        self.busy_fraction = min(1.0, busy_s / dt_s) if dt_s > 0 else 0.0
        self.tokens_per_step = tokens / steps if steps else 0.0
        self.mean_step_s = busy_s / steps if steps else self.step_time(1)
        self.metrics.set_scheduler_state(
            len(self.running) + self.external_running, len(self.waiting), self.kv_usage
        )

    def estimate_ttft_s(self, prompt_tokens: int) -> float:
        """TTFT a new prompt would see now: the prefill backlog ahead of it, in steps."""
        budget_total = self.args.max_num_batched_tokens
        decodes = sum(1 for r in self.running if not r.prefilling)
        budget = max(1, budget_total - decodes)
        backlog = prompt_tokens + sum(
            r.prefill_target - r.computed for r in (*self.running, *self.waiting) if r.prefilling
        )
        steps = math.ceil(backlog / budget)
        return steps * self.step_time(min(budget_total, decodes + backlog))

    def estimate_itl_s(self) -> float:
        """Inter-token latency a request decoding now would see: the recent mean step time."""
        return self.mean_step_s

    def record_external(
        self,
        prompt_tokens: int,
        ttft_s: float,
        inter_token_s: list[float],
        finished_reason: str,
        max_tokens: int,
    ) -> None:
        """Account a real HTTP request, served outside the step loop, in the metrics."""
        m = self.metrics
        m.admitted(prompt_tokens, 0)
        m.first_token(prompt_tokens, ttft_s)
        for itl in inter_token_s:
            m.next_tokens(itl, 1)
        m.step(prompt_tokens, 0)
        decode_s = sum(inter_token_s)
        m.finished(
            FinishedRequest(
                finished_reason=finished_reason,
                prompt_tokens=prompt_tokens,
                generation_tokens=len(inter_token_s) + 1,
                max_tokens=max_tokens,
                computed_prompt_tokens=prompt_tokens,
                e2e_s=ttft_s + decode_s,
                queue_s=0.0,
                prefill_s=ttft_s,
                decode_s=decode_s,
                preemptions=0,
            )
        )

    def record_external_error(self, prompt_tokens: int, max_tokens: int) -> None:
        """Account a real HTTP request the engine failed before its first token."""
        self.metrics.admitted(prompt_tokens, 0)
        self.metrics.finished(
            FinishedRequest(
                finished_reason="error",
                prompt_tokens=prompt_tokens,
                generation_tokens=0,
                max_tokens=max_tokens,
                computed_prompt_tokens=prompt_tokens,
                e2e_s=0.0,
                queue_s=0.0,
                prefill_s=0.0,
                decode_s=0.0,
                preemptions=0,
            )
        )

    def _step(self) -> tuple[float, int]:
        args = self.args
        budget = args.max_num_batched_tokens
        chunked = args.enable_chunked_prefill
        scheduled: list[tuple[SimRequest, int]] = []
        preempted = 0
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            need = request.next_chunk(budget, chunked)
            if need == 0:
                i += 1
                continue
            while self.kv_used + need > self.kv_capacity and len(self.running) > i + 1:
                self._preempt(self.running.pop())
                preempted += 1
            if self.kv_used + need > self.kv_capacity:
                self._preempt(self.running.pop(i))
                preempted += 1
                continue
            self.kv_used += need
            budget -= need
            scheduled.append((request, need))
            i += 1
        while self.waiting and budget > 0 and len(self.running) < args.max_num_seqs:
            request = self.waiting[0]
            need = request.next_chunk(budget, chunked)
            if need == 0 or self.kv_used + need > self.kv_capacity:
                break
            self.waiting.popleft()
            self.running.append(request)
            if request.first_scheduled_s is None:
                request.first_scheduled_s = self.now
                self.metrics.admitted(request.prompt_tokens, request.cached_tokens)
            self.kv_used += need
            budget -= need
            scheduled.append((request, need))
        tokens = args.max_num_batched_tokens - budget
        if not tokens:
            return 0.0, 0
        previous_end = self.now
        duration = self.step_time(tokens)
        self.now += duration
        self.metrics.step(tokens, preempted)
        steady = 0  # requests whose last token came at the end of the previous step
        finished = False
        for request, need in scheduled:
            request.computed += need
            if request.prefilling:
                continue
            request.generated += 1
            if request.first_token_s is None:
                request.first_token_s = self.now
                self.metrics.first_token(request.prompt_tokens, self.now - request.arrival_s)
            elif request.last_token_s == previous_end:
                steady += 1
            else:
                self.metrics.next_tokens(self.now - request.last_token_s, 1)
            request.last_token_s = self.now
            finished |= request.generated >= request.output_tokens
        if steady:
            self.metrics.next_tokens(duration, steady)
        if finished:
            self._finish_done()
        return duration, tokens

    def _finish_done(self) -> None:
        still_running = []
        for request in self.running:
            if request.generated < request.output_tokens:
                still_running.append(request)
                continue
            self.kv_used -= request.computed
            if self.fails_next():
                reason = "error"
            else:
                reason = "length" if request.generated >= request.max_tokens else "stop"
            self._record_finished(request, reason)
        self.running = still_running

    def _preempt(self, request: SimRequest) -> None:
        """Free the request's KV; it recomputes its prompt and output so far when rescheduled."""
        self.kv_used -= request.computed
        request.computed = 0
        request.prefill_target = request.prompt_tokens - request.cached_tokens + request.generated
        request.preemptions += 1
        self.waiting.appendleft(request)

    def _abort_stale(self) -> None:
        while self.waiting and self.now - self.waiting[0].arrival_s > CLIENT_TIMEOUT_S:
            request = self.waiting.popleft()
            self.kv_used -= request.computed
            self._record_finished(request, "abort")

    def _record_finished(self, request: SimRequest, reason: str) -> None:
        scheduled = request.first_scheduled_s if request.first_scheduled_s is not None else self.now
        first_token = request.first_token_s if request.first_token_s is not None else self.now
        self.metrics.finished(
            FinishedRequest(
                finished_reason=reason,
                prompt_tokens=request.prompt_tokens,
                generation_tokens=request.generated,
                max_tokens=request.max_tokens,
                computed_prompt_tokens=request.prompt_tokens - request.cached_tokens,
                e2e_s=self.now - request.arrival_s,
                queue_s=scheduled - request.arrival_s,
                prefill_s=first_token - scheduled,
                decode_s=self.now - first_token,
                preemptions=request.preemptions,
            )
        )
