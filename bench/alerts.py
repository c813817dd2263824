"""Benchmark: evaluating 1,000 alert rules on a 512-GPU fleet (64 demo nodes x 8 GPUs).

The embedded demo fleet runs in this process; the hub polls it for ``--seconds`` so that the
engine windows hold scrapes, then 1,000 rules (every figure, cycling over the nodes and the
endpoints, each naming one subject) are evaluated ``--rounds`` times. Printed: the median
cost of one evaluation, and beside it the baseline measured in the same run: one
``Hub.snapshot()``, the aggregation the screens already pay once a second, which an
evaluation needs at least once. Goal: under 5 ms for the 1,000 rules.

    python bench/alerts.py [--nodes 64] [--rules 1000] [--seconds 20] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.alerts import AlertEngine  # noqa: E402
from console.config import AlertRule, Config, load_config  # noqa: E402
from console.demo import DemoFleet  # noqa: E402
from console.facts import FigureReader  # noqa: E402
from console.figures import FIGURES  # noqa: E402
from console.hub import Hub  # noqa: E402

GOAL_MS = 5.0


def make_rules(config: Config, count: int) -> list[AlertRule]:
    nodes = [n.name for n in config.nodes]
    endpoints = [e.name for e in config.endpoints]
    figures = sorted(FIGURES)
    rules = []
    for i in range(count):
        figure = figures[i % len(figures)]
        kinds = FIGURES[figure][0]
        kind = "node" if "node" in kinds else "endpoint"
        subjects = nodes if kind == "node" else endpoints
        unit = FIGURES[figure][1]
        rules.append(
            AlertRule.model_validate(
                {
                    "name": f"r{i}",
                    "figure": figure,
                    kind: subjects[(i // len(figures)) % len(subjects)],
                    "above": 10.0 if unit == "s" else 1e9,  # never fires: the cost is the reading
                    "for": 60,
                }
            )
        )
    return rules


async def measure(config: Config, rule_count: int, seconds: float, rounds: int) -> None:
    hub = Hub(config)
    hub.start()
    try:
        await asyncio.sleep(seconds)
        engine = AlertEngine(
            config, FigureReader(hub), hub.clock, rules=make_rules(config, rule_count)
        )
        evaluations, snapshots = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            engine.evaluate()
            evaluations.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            hub.snapshot()
            snapshots.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.2)
        pairs = len(engine.states)
    finally:
        await hub.stop()
    evaluation, snapshot = statistics.median(evaluations), statistics.median(snapshots)
    gpus = sum(n.gpus or 8 for n in config.nodes)
    print(f"fleet: {len(config.nodes)} nodes, {gpus} GPUs, {len(config.endpoints)} endpoints")
    print(f"{rule_count} rules ({pairs} rule-subject pairs), median of {rounds} evaluations:")
    print(f"  one evaluation:                 {evaluation:8.2f} ms")
    print(f"  baseline, one Hub.snapshot():   {snapshot:8.2f} ms")
    print(f"  ratio evaluation / snapshot:    {evaluation / snapshot:8.2f}x")
    verdict = "met" if evaluation < GOAL_MS else "NOT met"
    print(f"  goal under {GOAL_MS:g} ms: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp,
        DemoFleet(Path(tmp) / "demo", nodes=args.nodes, traffic=True) as fleet,
    ):
        fleet.start()
        config = load_config(fleet.config_path)
        asyncio.run(measure(config, args.rules, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
