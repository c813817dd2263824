"""Benchmark: the console's CPU per node-poll against a fleet, and the naive way's.

The demo fleet runs alone in a child process (its traffic generator too), so its CPU is not
counted. This process is the console's hub, not started: once a second it polls every
node's GPUs (over the shared SSH pool: NVML tried once, then nvidia-smi's query and process
list) and then every engine's ``/metrics`` (fetched, parsed, windowed), and measures its own
CPU time (``time.process_time``: every thread, so the parsing threads count) around each
part. The naive way, measured in the same run on a sample of the same nodes: a new
``ssh HOST nvidia-smi --query-gpu=...`` process and a new ``curl URL/metrics`` per poll, the
children's CPU from ``getrusage(RUSAGE_CHILDREN)`` plus this process's, parsing included.

    python bench/poll_fleet.py [--nodes 64] [--rounds 20] [--naive-polls 16]

64 nodes is the demo's maximum (every node is two servers in one process). The fleet-scale
figure is extrapolated from the measured cost per node-poll: 256 nodes x 8 GPUs at a 2 s
interval, in cores; the goal is a quarter of one.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.engines import engine_stats_from_text  # noqa: E402
from backends.gpu import parse_query_csv, query_command  # noqa: E402
from console.config import Config, load_config  # noqa: E402
from console.hub import Hub  # noqa: E402

FLEET_NODES, FLEET_INTERVAL_S, GOAL_CORES, GOAL_RATIO = 256, 2.0, 0.25, 20.0


def serve(workdir: Path, nodes: int) -> None:
    """The child: the demo fleet, until stdin closes."""
    from console.demo import DemoFleet

    with DemoFleet(workdir, nodes=nodes) as fleet:
        fleet.start()
        print(fleet.config_path, flush=True)
        sys.stdin.read()


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def console_polls(config: Config, rounds: int) -> tuple[list[float], list[float]]:
    """CPU seconds per round: GPUs of every node, engines of every node."""
    hub = Hub(config)
    gpu_s, engine_s = [], []
    try:
        # A warm-up round: connections are opened once, NVML is tried once, and the first
        # scrape of a window holds nothing to subtract from; none of that recurs per poll.
        await hub.poll_once("gpus:")
        await hub.poll_once("engine:")
        for _ in range(rounds):
            started = time.monotonic()
            t0 = time.process_time()
            await hub.poll_once("gpus:")
            t1 = time.process_time()
            await hub.poll_once("engine:")
            t2 = time.process_time()
            gpu_s.append(t1 - t0)
            engine_s.append(t2 - t1)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        failed = [s for s in hub.scheduler.statuses() if s.consecutive_failures]
        if failed:
            raise SystemExit(f"poll_fleet: {failed[0].name} failed: {failed[0].last_error}")
    finally:
        await hub.stop()
    return gpu_s, engine_s


def naive_polls(config: Config, polls: int) -> tuple[float, float]:
    """CPU seconds per node-poll the naive way: (GPU part, engine part)."""
    ssh = config.ssh
    key = ssh.identity_files[0]
    nodes = [n for n in config.nodes if n.engine is not None]
    gpu_total = engine_total = 0.0
    for i in range(polls):
        node = nodes[i % len(nodes)]
        assert node.engine is not None
        before_self, before_children = time.process_time(), children_cpu_s()
        ssh_argv = [
            "ssh",
            *("-i", str(key), "-p", str(node.port), "-l", ssh.user),
            *("-o", f"UserKnownHostsFile={ssh.known_hosts}", "-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=yes", "-F", "none", node.host),
            query_command(),
        ]
        csv = subprocess.run(ssh_argv, capture_output=True, text=True, check=True).stdout
        parse_query_csv(node.name, csv)
        middle_self, middle_children = time.process_time(), children_cpu_s()
        url = f"{node.engine.url}/metrics"
        text = subprocess.run(["curl", "-sf", url], capture_output=True, text=True, check=True)
        engine_stats_from_text(node.name, text.stdout)
        after_self, after_children = time.process_time(), children_cpu_s()
        gpu_total += (middle_self - before_self) + (middle_children - before_children)
        engine_total += (after_self - middle_self) + (after_children - middle_children)
    return gpu_total / polls, engine_total / polls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20, help="polls of the whole fleet")
    parser.add_argument("--naive-polls", type=int, default=16, help="ssh + curl node-polls")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.nodes)
        return
    with tempfile.TemporaryDirectory(prefix="poll-fleet-") as tmp:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", tmp, "--nodes", str(args.nodes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdin is not None
        try:
            config = load_config(child.stdout.readline().strip())
            gpus = sum(n.gpus or 8 for n in config.nodes)
            print(f"fleet: {args.nodes} demo nodes, {gpus} GPUs, in a child process")
            gpu_s, engine_s = asyncio.run(console_polls(config, args.rounds))
            naive_gpu_s, naive_engine_s = naive_polls(config, args.naive_polls)
        finally:
            child.stdin.close()
            child.wait(timeout=60)

    per_poll = 1000 / args.nodes
    gpu_ms = sorted(x * per_poll for x in gpu_s)[len(gpu_s) // 2]
    engine_ms = sorted(x * per_poll for x in engine_s)[len(engine_s) // 2]
    total_ms = gpu_ms + engine_ms
    naive_ms = (naive_gpu_s + naive_engine_s) * 1000
    cores = total_ms * FLEET_NODES / (FLEET_INTERVAL_S * 1000)
    print(f"console, CPU per node-poll (median of {args.rounds} rounds, {args.nodes} nodes):")
    print(f"  GPUs over the SSH pool:  {gpu_ms:6.2f} ms")
    print(f"  engine /metrics:         {engine_ms:6.2f} ms")
    print(f"  together:                {total_ms:6.2f} ms")
    print(f"naive, CPU per node-poll ({args.naive_polls} polls: an ssh and a curl process each):")
    print(f"  ssh nvidia-smi:          {naive_gpu_s * 1000:6.2f} ms")
    print(f"  curl /metrics:           {naive_engine_s * 1000:6.2f} ms")
    print(f"  together:                {naive_ms:6.2f} ms")
    ratio = naive_ms / total_ms if total_ms else float("inf")
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(f"ratio naive / console:     {ratio:6.1f}x (goal at least {GOAL_RATIO:g}x: {verdict})")
    verdict = "met" if cores <= GOAL_CORES else "NOT met"
    print(
        f"extrapolated, {FLEET_NODES} nodes x 8 GPUs every {FLEET_INTERVAL_S:g} s: "
        f"{cores:.2f} cores (goal at most {GOAL_CORES:g}: {verdict})"
    )
    print(f"  (from {total_ms:.2f} ms x {FLEET_NODES} / {FLEET_INTERVAL_S * 1000:g} ms)")


if __name__ == "__main__":
    main()
