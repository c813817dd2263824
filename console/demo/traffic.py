"""Simulated clients of one endpoint: request arrivals spread over the engines serving it.

Arrivals are accounted in the engine simulators, not sent over HTTP. The endpoint's total rate
is kept when a node is down or restarting, so the healthy nodes take its share (what a
load balancer's failover does). With an RNG, arrivals are a Poisson process whose rate drifts
on a five-minute wave and request sizes are log-normal; without one (deterministic mode),
arrivals are evenly spaced and every request has the mean size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from console.demo.engine_sim import EngineSim, SimRequest
from console.demo.faults import ActiveFaults

_DRIFT_PERIOD_S = 300.0
_DRIFT_AMPLITUDE = 0.3


@dataclass(frozen=True)
class TrafficProfile:
    requests_per_s_per_node: float
    prompt_tokens: int  # mean
    output_tokens: int  # mean, before max_tokens
    max_tokens: int
    cached_fraction: float  # of each prompt served from the prefix cache (a shared system prompt)


class TrafficGenerator:
    def __init__(self, profile: TrafficProfile, nodes: int, rng: random.Random | None) -> None:
        self.profile = profile
        self._rate = profile.requests_per_s_per_node * nodes
        self._rng = rng
        self._now = 0.0
        self._next_arrival = 0.0
        self._turn = 0

    def tick(self, dt_s: float, engines: Sequence[tuple[EngineSim, ActiveFaults]]) -> None:
        """Submit the arrivals of the next ``dt_s`` seconds to ``engines`` (those serving now)."""
        end = self._now + dt_s
        while self._next_arrival < end:
            if engines:
                engine, faults = engines[self._turn % len(engines)]
                self._turn += 1
                engine.submit(self._next_arrival - self._now, self._request(faults))
            self._next_arrival += self._gap()
        self._now = end

    def _gap(self) -> float:
        if self._rng is None:
            return 1 / self._rate
        wave = 1 + _DRIFT_AMPLITUDE * math.sin(2 * math.pi * self._next_arrival / _DRIFT_PERIOD_S)
        return self._rng.expovariate(self._rate * wave)

    def _request(self, faults: ActiveFaults) -> SimRequest:
        p = self.profile
        prompt = self._size(p.prompt_tokens, 0.6)
        output = (
            p.max_tokens
            if faults.token_blowup
            else min(self._size(p.output_tokens, 0.5), p.max_tokens)
        )
        cached = int(prompt * p.cached_fraction) // 16 * 16  # whole 16-token KV blocks
        return SimRequest(prompt, output, p.max_tokens, cached_tokens=cached)

    def _size(self, mean: int, sigma: float) -> int:
        if self._rng is None:
            return mean
        # A log-normal with this mean: mu = ln(mean) - sigma^2 / 2.
        return max(1, round(self._rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)))
