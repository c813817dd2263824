"""Benchmark: one overview refresh for 64 nodes x 8 GPUs (512 GPU rows) and 50 endpoints.

Prints the median milliseconds of one refresh applied to the screen (update by row key, then
the frame painted), the same for the baseline that clears and refills the tables, their ratio,
the time from process start to the first frame with synthetic data, and the same for the demo
fleet's real readings (what `llmops demo` does). Goals: under 50 ms per refresh, under 1.5 s to
the first frame.

    python bench/overview_refresh.py [--refreshes N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.text import Text  # noqa: E402

from bench.synthetic_fleet import StaticSource, make_snapshot  # noqa: E402
from console.app import LlmopsApp  # noqa: E402
from console.models import FleetSnapshot  # noqa: E402
from screens.tables import LiveTable  # noqa: E402
from screens.views import FleetView  # noqa: E402

SHAPE = {"nodes": 64, "gpus_per_node": 8, "endpoints": 50}
SIZE = (160, 48)


def clear_and_refill(view: FleetView, snapshot: FleetSnapshot) -> None:
    """The baseline: what a naive table does on every tick."""
    with view.app.batch_update():
        for table in view.query(LiveTable):
            table.clear()
            for key, cells in table.rows_for(snapshot, view.row_filter):
                table.add_row(*map(Text, cells), key=key)


def update_by_key(view: FleetView, snapshot: FleetSnapshot) -> None:
    view.apply(snapshot)


async def measure(
    refresh: Callable[[FleetView, FleetSnapshot], None], count: int
) -> tuple[list[float], list[float]]:
    """CPU and wall milliseconds per refresh: apply the snapshot, then paint the frame."""
    snapshots = [make_snapshot(tick=t, **SHAPE) for t in range(count + 1)]  # type: ignore[arg-type]
    app = LlmopsApp(StaticSource(**SHAPE), environment="bench", refresh_s=3600)
    cpu, wall = [], []
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        view = app.screen
        assert isinstance(view, FleetView)
        for snapshot in snapshots[1:]:
            start, start_cpu = time.perf_counter(), time.process_time()
            refresh(view, snapshot)
            # Process what the update queued, then paint the frame now: what pilot.pause()
            # does, minus its wait for the whole process to go idle.
            await pilot._wait_for_screen()
            app.screen._on_timer_update()
            wall.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
        rows = sum(table.row_count for table in view.query(LiveTable))
        assert rows == 64 * 9 + 50, rows
    return cpu, wall


STARTUP_PROBE = """
import asyncio, sys
sys.path.insert(0, {root!r})
from bench.synthetic_fleet import StaticSource
from console.app import LlmopsApp
from screens.tables import LiveTable

async def main():
    app = LlmopsApp(StaticSource(nodes=64, gpus_per_node=8, endpoints=50), environment="bench")
    async with app.run_test(size=(160, 48)) as pilot:
        while not app.screen.query(LiveTable) or not app.screen.query(LiveTable).first().row_count:
            await pilot.pause(0.005)
        await pilot.pause()
        print("first frame", flush=True)

asyncio.run(main())
"""

# What `llmops demo` does, up to the first frame showing real readings from the demo fleet:
# GPU figures of every node over SSH and engine figures over HTTP.
DEMO_STARTUP_PROBE = """
import asyncio, sys, tempfile
from pathlib import Path
sys.path.insert(0, {root!r})
from console.app import LlmopsApp
from console.config import load_config
from console.demo import DemoFleet
from console.hub import Hub
from screens.tables import NodeTable

async def main(fleet):
    config = load_config(fleet.config_path)
    app = LlmopsApp(Hub(config), environment=config.environment, faults=fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        def ready():
            table = app.screen.query(NodeTable)
            if not table or not table.first().row_count:
                return False
            rows = table.first()._rows
            nodes = [cells for key, cells in rows.items() if key.startswith("node:")]
            return nodes and all(c[2] != "N/A" and c[6] != "N/A" for c in nodes)
        while not ready():
            await pilot.pause(0.005)
        await pilot.pause()
        print("first frame", flush=True)

with DemoFleet(Path(tempfile.mkdtemp()), seed=0) as fleet:
    fleet.start()
    asyncio.run(main(fleet))
"""


def startup_seconds(probe: str = STARTUP_PROBE) -> float:
    """Seconds from spawning the process to its first frame, timed by this process.

    (psutil's create_time, used before, counts from a boot time rounded to the second.)
    """
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-c", probe.format(root=str(ROOT))],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.monotonic() - started
        proc.wait()
    assert line.strip() == "first frame", line
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=30)
    n = parser.parse_args().refreshes
    keyed_cpu, keyed_wall = map(statistics.median, asyncio.run(measure(update_by_key, n)))
    refill_cpu, refill_wall = map(statistics.median, asyncio.run(measure(clear_and_refill, n)))
    startups = sorted(startup_seconds() for _ in range(3))
    demo_startups = sorted(startup_seconds(DEMO_STARTUP_PROBE) for _ in range(3))
    print(f"fleet: 64 nodes x 8 GPUs (512 GPU rows) + 50 endpoints, screen {SIZE[0]}x{SIZE[1]}")
    print(f"{n} refreshes, every value changing; median per refresh (apply + paint):")
    print(f"  update by row key:  {keyed_cpu:6.1f} ms CPU  {keyed_wall:6.1f} ms wall  (goal < 50)")
    print(f"  clear and refill:   {refill_cpu:6.1f} ms CPU  {refill_wall:6.1f} ms wall  (baseline)")
    cpu_ratio, wall_ratio = keyed_cpu / refill_cpu, keyed_wall / refill_wall
    print(f"  ratio update/refill: {cpu_ratio:.2f} CPU, {wall_ratio:.2f} wall")
    print(f"startup to first frame, synthetic data: median {startups[1]:.2f} s of 3 (goal < 1.5)")
    print(
        "startup of the demo fleet and the console to the first frame with real readings "
        f"(every node's GPUs and engine): median {demo_startups[1]:.2f} s of 3 (goal < 1.5)"
    )


if __name__ == "__main__":
    main()
