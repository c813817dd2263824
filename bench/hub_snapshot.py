"""Benchmark: the hub's snapshot (aggregation of a full window) on a 64-node demo fleet.

Starts the embedded demo fleet with 64 nodes x 8 GPUs, lets the hub poll it for a full minute
so every engine window holds a minute of scrapes, then times ``Hub.snapshot()``, the pure
aggregation the app runs once a second, against a baseline measured in the same run: the
method the hub used before (the first and the last scrape of each engine compared, ranks
summed first), whose figures were wrong after an outage or a rank restart but which did the
least work possible.

    python bench/hub_snapshot.py [--seconds 65] [--nodes 64]
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

from console.config import load_config  # noqa: E402
from console.demo import DemoFleet  # noqa: E402
from console.hub import Hub  # noqa: E402
from console.models import EngineStats  # noqa: E402
from console.windows import E2E, TTFT  # noqa: E402


def first_and_last(first: EngineStats, last: EngineStats) -> dict[str, dict[float, float]]:
    """The old method: per family, buckets summed over ranks, last minus first."""
    out: dict[str, dict[float, float]] = {}
    for family in (E2E, TTFT):
        buckets: dict[float, float] = {}
        for stats, sign in ((last, 1.0), (first, -1.0)):
            for hist in stats.histograms.get(family, {}).values():
                for le, count in hist.buckets:
                    buckets[le] = buckets.get(le, 0.0) + sign * count
        out[family] = buckets
    return out


async def measure(config_path: Path, seconds: float) -> tuple[float, float, int]:
    hub = Hub(load_config(config_path))
    hub.start()
    try:
        await asyncio.sleep(seconds)
        snapshots, lifetimes = [], []
        for _ in range(20):
            started = time.perf_counter()
            hub.snapshot()
            snapshots.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            for endpoint in hub.config.endpoints:
                for node in endpoint.nodes:
                    scrapes = hub.readings.engines[node]._scrapes
                    first_and_last(scrapes[0].stats, scrapes[-1].stats)
            lifetimes.append((time.perf_counter() - started) * 1000)
        scrapes = sum(len(w._scrapes) for w in hub.readings.engines.values())
    finally:
        await hub.stop()
    return statistics.median(snapshots), statistics.median(lifetimes), scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=65.0)
    parser.add_argument("--nodes", type=int, default=64)
    args = parser.parse_args()
    with DemoFleet(Path(tempfile.mkdtemp()), nodes=args.nodes, seed=0) as fleet:
        fleet.start()
        snapshot_ms, lifetime_ms, scrapes = asyncio.run(measure(fleet.config_path, args.seconds))
    print(f"demo fleet: {args.nodes} nodes x 8 GPUs, {scrapes} engine scrapes in the windows")
    print(f"  Hub.snapshot(), windows of {args.seconds:g}s: median {snapshot_ms:6.2f} ms of 20")
    print(f"  first and last scrape (old method):   median {lifetime_ms:6.2f} ms of 20")
    print(f"  ratio: {snapshot_ms / lifetime_ms:.1f}")


if __name__ == "__main__":
    main()
