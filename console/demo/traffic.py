"""Simulated clients of one endpoint: request arrivals spread over the engines serving it.

Arrivals are accounted in the engine simulators, not sent over HTTP. Each arrival goes to one
of the engines serving now, in proportion to its weight (the router's weights for the group
behind the gateway, equal weights for the others), by smooth weighted round robin so the split
is exact. The endpoint's total rate is kept when a node is down, restarting or weighted out, so
the others take its share (what a load balancer's failover does); when no engine has a weight
above 0 the arrivals have nowhere to go and :meth:`TrafficGenerator.tick` returns how many
were dropped. With an RNG, arrivals are a Poisson process whose rate drifts on a five-minute
wave and request sizes are log-normal; without one (deterministic mode), arrivals are evenly
spaced and every request has the mean size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from console.demo.engine_sim import EngineSim, SimRequest
from console.demo.faults import (
    LONG_PROMPT_ANSWER_TOKENS,
    LONG_PROMPT_FACTOR,
    LONG_PROMPT_SHARE,
    ActiveFaults,
    every_share,
)
from console.demo.weighted import WeightedPicker

_DRIFT_PERIOD_S = 300.0
_DRIFT_AMPLITUDE = 0.3
_PROMPT_SIGMA = 0.6
_OUTPUT_SIGMA = 0.5
# A long document varies less than a chat prompt: it is the document that is long.
_DOCUMENT_SIGMA = 0.3


@dataclass(frozen=True)
class TrafficProfile:
    requests_per_s_per_node: float
    prompt_tokens: int  # mean
    output_tokens: int  # mean, before max_tokens
    max_tokens: int
    cached_fraction: float  # of each prompt served from the prefix cache (a shared system prompt)


@dataclass(frozen=True)
class TrafficTarget:
    """An engine serving now, with its node's faults and its share of the endpoint's traffic."""

    name: str
    engine: EngineSim
    faults: ActiveFaults
    weight: float = 1.0


class TrafficGenerator:
    def __init__(self, profile: TrafficProfile, nodes: int, rng: random.Random | None) -> None:
        self.profile = profile
        self._rate = profile.requests_per_s_per_node * nodes
        self._rng = rng
        self._now = 0.0
        self._next_arrival = 0.0
        self._split = WeightedPicker(None)
        self._received: dict[str, int] = {}  # deterministic long-prompts: requests per node

    def tick(self, dt_s: float, targets: Sequence[TrafficTarget]) -> int:
        """Submit the arrivals of the next ``dt_s`` seconds to ``targets`` (those serving now);
        returns how many arrivals no target took."""
        by_name = {t.name: t for t in targets}
        options = [(t.name, t.weight) for t in targets]
        end = self._now + dt_s
        dropped = 0
        while self._next_arrival < end:
            name = self._split.pick(options)
            if name is None:
                dropped += 1
            else:
                target = by_name[name]
                target.engine.submit(self._next_arrival - self._now, self._request(target))
            self._next_arrival += self._gap()
        self._now = end
        return dropped

    def _gap(self) -> float:
        if self._rng is None:
            return 1 / self._rate
        wave = 1 + _DRIFT_AMPLITUDE * math.sin(2 * math.pi * self._next_arrival / _DRIFT_PERIOD_S)
        return self._rng.expovariate(self._rate * wave)

    def _request(self, target: TrafficTarget) -> SimRequest:
        p = self.profile
        faults = target.faults
        prompt = self._size(p.prompt_tokens, _PROMPT_SIGMA)
        output = min(self._size(p.output_tokens, _OUTPUT_SIGMA), p.max_tokens)
        cached = int(prompt * p.cached_fraction) // 16 * 16  # whole 16-token KV blocks
        if faults.long_prompts and self._document(target.name):
            # The shared system prompt is still cached; the document behind it is new.
            prompt = self._size(p.prompt_tokens * LONG_PROMPT_FACTOR, _DOCUMENT_SIGMA)
            output = self._size(LONG_PROMPT_ANSWER_TOKENS, _OUTPUT_SIGMA)
        if faults.token_blowup:
            output = p.max_tokens
        return SimRequest(prompt, output, p.max_tokens, cached_tokens=cached)

    def _document(self, node: str) -> bool:
        """Whether this request to ``node`` carries a long document (long-prompts)."""
        if self._rng is not None:
            return self._rng.random() < LONG_PROMPT_SHARE
        received = self._received[node] = self._received.get(node, 0) + 1
        return every_share(received, LONG_PROMPT_SHARE)

    def _size(self, mean: int, sigma: float) -> int:
        if self._rng is None:
            return mean
        # A log-normal with this mean: mu = ln(mean) - sigma^2 / 2.
        return max(1, round(self._rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)))
