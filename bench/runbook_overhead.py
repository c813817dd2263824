"""Benchmark: the step engine's own cost per step, and each shipped runbook's drill on the demo.

1. Overhead. A runbook of 200 steps whose action is ``incident.note`` (the cheapest action
   there is) runs against a real SQLite file; the time spent inside the registry (plan and
   execute) is measured and taken out, so what is left is the engine's own work per step:
   rendering, the committed ``step.started`` and ``step.finished`` events, the listener.
   The baseline, measured in the same run, is one committed event append on the same store:
   the ratio says how many bare log writes a step costs. Goal: under 5 ms per step.
2. Drills. For each shipped runbook: a fresh demo fleet, the fault that runbook answers, then
   the runbook non-interactively (``--yes``), and the time from the fault to the verified
   recovery. Full-length windows by default (as shipped); ``--quick`` passes short windows.

    python bench/runbook_overhead.py [--steps 200] [--quick] [--skip-drills]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.cli_runbooks import CliController, Printer, warm_up  # noqa: E402
from console.config import load_config  # noqa: E402
from console.demo import DemoFleet  # noqa: E402
from console.hub import Hub  # noqa: E402
from console.runbook import load_runbook  # noqa: E402
from console.session import make_session, open_session  # noqa: E402
from console.store import Store  # noqa: E402
from console.yamlconf import parse_duration  # noqa: E402


def note_runbook(steps: int) -> str:
    lines = [
        "id: overhead",
        "title: Many cheap steps",
        "params:",
        "  node: {type: node, default: gpu-a1}",
        "steps:",
    ]
    for i in range(steps):
        lines += [
            f"  - id: s{i}",
            "    kind: mutate",
            "    action: incident.note",
            '    with: {text: "step on {{ node }}"}',
        ]
    return "\n".join(lines) + "\n"


class Spent:
    """Time spent inside the registry (plan and execute), added up."""

    s = 0.0


def timed(method):  # type: ignore[no-untyped-def]
    async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            Spent.s += time.perf_counter() - started

    return wrapper


async def overhead(config_path: Path, folder: Path, steps: int) -> None:
    config = load_config(config_path)
    store = Store(folder / "overhead.db")
    hub = Hub(config, store)  # not started: the steps read no figures
    session = make_session(config, hub, store, read_only=False)
    path = folder / "overhead.yaml"
    path.write_text(note_runbook(steps))
    runbook = load_runbook(path)
    controller = CliController(
        yes=True, confirm_targets=(), operator_name=session.operator, interactive=False
    )
    values, _ = await session.values(runbook, {})
    run = session.start(runbook, values, controller, mode="live", listener=lambda update: None)
    run.registry.plan = timed(run.registry.plan)  # type: ignore[method-assign]
    run.registry.execute = timed(run.registry.execute)  # type: ignore[method-assign]
    started = time.perf_counter()
    outcome = await run.execute()
    total_s = time.perf_counter() - started
    assert outcome == "verified", run.summary
    engine_ms = (total_s - Spent.s) / steps * 1000
    appends = []
    for i in range(200):
        t = time.perf_counter()
        store.append_event("bench", f"append {i}")
        appends.append((time.perf_counter() - t) * 1000)
    baseline_ms = statistics.median(appends)
    print(f"steps: {steps} (incident.note), total {total_s:.3f} s")
    print(f"engine's own cost per step: {engine_ms:.2f} ms (goal < 5 ms)")
    print(f"  of which in the registry (the action): {Spent.s / steps * 1000:.2f} ms")
    print(f"baseline, one committed event append: {baseline_ms:.2f} ms (median of 200)")
    print(f"ratio: a step costs {engine_ms / baseline_ms:.1f} appends")
    await hub.stop()
    store.close()


# runbook, its fault (name, target) and the parameters of a quick drill.
DRILLS: tuple[tuple[str, tuple[str, str] | None, dict[str, str], dict[str, str]], ...] = (
    ("latency-spike", ("long-prompts", "gpu-a1"), {}, {"window": "5s"}),
    ("provider-failover", ("provider-5xx", "primary-api"), {}, {"window": "15s"}),
    # After a failover, once the primary is healthy again (the fault healed).
    ("provider-failback", ("provider-429", "primary-api"), {}, {"window": "15s"}),
    ("model-rollback", ("bad-revision", "gpu-a1"), {}, {"window": "5s"}),
    (
        "canary-ramp",
        None,
        {"canary_node": "gpu-a2", "canary": "gpu-a2", "stable": "gpu-a1", "revision": "r2"},
        {"soak": "5s", "window": "5s"},
    ),
    ("blue-green", None, {"blue": "gpu-a1", "green": "gpu-a2"}, {"soak": "5s", "window": "5s"}),
)
FAULT_SHOWS_S = 5.0  # the fault shows in the figures before anyone acts


async def run_to_end(session, runbook: str, params: dict[str, str]) -> str:
    controller = CliController(
        yes=True, confirm_targets=(), operator_name=session.operator, interactive=False
    )
    values, _ = await session.values(session.runbooks[runbook], params)
    run = session.start(
        session.runbooks[runbook], values, controller, mode="live", listener=Printer(io.StringIO())
    )
    return await run.execute()


async def drill(
    folder: Path, runbook: str, fault, params: dict[str, str], quick: dict[str, str]
) -> tuple[str, float]:
    with DemoFleet(folder / runbook, deterministic=True) as fleet:
        config = load_config(fleet.config_path)
        store = Store(folder / f"{runbook}.db")
        async with open_session(config, store, read_only=False) as session:
            await warm_up(session.hub)
            if runbook == "provider-failback":
                # The state failback starts from: failed over, then the provider recovered.
                assert fault is not None
                fleet.inject(*fault)
                await asyncio.sleep(FAULT_SHOWS_S)
                before = await run_to_end(session, "provider-failover", quick)
                if before != "verified":
                    return f"failover {before}", 0.0
                fleet.heal()
                started = time.perf_counter()
                # The engineer fails back once the primary answers cleanly again.
                window = parse_duration(quick.get("window", "30s"))
                while session.figures.figure(
                    "upstream", "primary-api", "error_pct", window
                ).value not in (0.0,):
                    await asyncio.sleep(0.5)
            else:
                started = time.perf_counter()
                if fault is not None:
                    fleet.inject(*fault)
                    await asyncio.sleep(FAULT_SHOWS_S)
            outcome = await run_to_end(session, runbook, params)
            took = time.perf_counter() - started
        store.close()
    return outcome, took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="short windows, as the tests use")
    parser.add_argument("--skip-drills", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with DemoFleet(folder / "overhead-demo", nodes=1, traffic=False, deterministic=True) as f:
            await overhead(f.config_path, folder, args.steps)
        if args.skip_drills:
            return
        print()
        print(f"drills ({'short windows' if args.quick else 'shipped windows'}):")
        for runbook, fault, params, quick in DRILLS:
            outcome, took = await drill(
                folder,
                runbook,
                fault,
                {**params, **(quick if args.quick else {})},
                quick if args.quick else {},
            )
            what = f"{fault[0]} on {fault[1]}" if fault else "planned change"
            if runbook == "provider-failback":
                what = f"{fault[0]} healed" if fault else what
            print(f"  {runbook:<18} {what:<28} {outcome:<10} {took:6.1f} s from fault to verified")


if __name__ == "__main__":
    asyncio.run(main())
