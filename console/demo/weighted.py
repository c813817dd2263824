"""Choosing among weighted options: the router's upstreams, the traffic generator's nodes.

With an RNG each choice is a weighted random draw (what a LiteLLM router's simple-shuffle
does); without one, nginx's smooth weighted round robin, which spreads the choices evenly and
gives every option exactly its share over a cycle, so a deterministic run stays repeatable.
It only picks; what the options are is the caller's business.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class WeightedPicker:
    def __init__(self, rng: random.Random | None) -> None:
        self._rng = rng
        self._current: dict[str, float] = {}  # smooth round robin: each option's running credit

    def pick(self, options: Sequence[tuple[str, float]]) -> str | None:
        """One of ``options`` (name, weight); None when no weight is above 0."""
        live = [(name, weight) for name, weight in options if weight > 0]
        total = sum(weight for _, weight in live)
        if not live:
            return None
        if self._rng is not None:
            point = self._rng.random() * total
            for name, weight in live:
                point -= weight
                if point < 0:
                    return name
            return live[-1][0]  # float rounding left a sliver past the last one
        current = {name: self._current.get(name, 0.0) + weight for name, weight in live}
        chosen = max(current, key=lambda name: current[name])
        current[chosen] -= total
        self._current = current  # options that left take their credit with them
        return chosen
