"""Benchmark: the demo fleet's own memory (RSS) over a run, while a console-like client polls it.

The fleet runs alone in a child process (no hub, no TUI), so the figures are the fleet's own.
This process plays the console: per node one SSH connection running the GPU query and
``systemctl is-active`` and one ``/metrics`` scrape every 2 s, and a streamed chat probe per
endpoint every 5 s (the intervals the demo's config.yaml asks for). The traffic generator runs
inside the fleet as in ``llmops demo``. Prints the child's RSS each minute and the growth per
hour, a least-squares slope over the samples after the first minute (start-up settles there),
and the fleet process's allocated blocks (cyclic garbage waiting for a collection shows there).

    python bench/demo_memory.py [--minutes 10] [--nodes 16] [--no-poll] [--trace 10]
                                [--ballast 1000000] [--collect-every inf]

``--trace N`` also prints the N allocation sites that grew most in the fleet between the end
of minute one and the end of the run (tracemalloc; it slows the fleet down).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402

from console.demo.config_file import BACKUP_KEY_ENV  # noqa: E402

GPU_QUERY = (
    "nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,"
    "temperature.gpu,power.draw,power.limit,clocks_event_reasons.active --format=csv,nounits"
)
NODE_EVERY_S = 2.0
PROBE_EVERY_S = 5.0
MIB = 1 << 20


def serve(args: argparse.Namespace) -> None:
    """The child: run the fleet, answer "sample" with its allocated block count until stdin
    closes; with ``--trace``, report what grew since "mark"."""
    import tracemalloc

    from console.demo import DemoFleet, fleet

    trace = args.trace
    if args.collect_every is not None:
        fleet.COLLECT_EVERY_S = args.collect_every
    # Long-lived objects, as the console's process holds: CPython's full collections come
    # later the more there are.
    ballast = [[i] for i in range(args.ballast)]
    with DemoFleet(args.serve, nodes=args.nodes):
        print("ready", flush=True)
        if trace:
            tracemalloc.start(8)
        first = None
        for line in sys.stdin:
            if line.strip() == "sample":
                print(sys.getallocatedblocks(), flush=True)
            elif line.strip() == "mark" and trace:
                first = tracemalloc.take_snapshot()
        if first is not None:
            stats = tracemalloc.take_snapshot().compare_to(first, "traceback")
            for stat in stats[:trace]:
                print(f"{stat.size_diff / 1024:+.0f} KiB in {stat.count_diff:+d} blocks")
                for frame in stat.traceback.format()[-8:]:
                    print("   ", frame)
    del ballast


def blocks(child: subprocess.Popen[str]) -> int:
    """The child's allocated memory blocks now: cyclic garbage waiting for a collection counts.

    (Cheap to read, unlike a count of gc-tracked objects, which builds a list of them all.)
    """
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("sample\n")
    child.stdin.flush()
    return int(child.stdout.readline())


async def poll_node(node: dict, known_hosts: str, key: str, user: str) -> None:
    async with (
        asyncssh.connect(
            node["host"],
            port=node["port"],
            username=user,
            known_hosts=known_hosts,
            client_keys=[key],
            agent_path=None,
            config=None,
        ) as conn,
        httpx.AsyncClient(base_url=node["engine"]["url"], timeout=10) as client,
    ):
        while True:
            await conn.run(GPU_QUERY)
            await conn.run("systemctl is-active vllm.service")
            await client.get("/metrics")
            await asyncio.sleep(NODE_EVERY_S)


async def probe_endpoint(endpoint: dict) -> None:
    key_env = endpoint.get("api_key_env")
    headers = {"authorization": f"Bearer {os.environ[key_env]}"} if key_env else {}
    body = {
        "model": endpoint["model"],
        "messages": [{"role": "user", "content": endpoint["probe"]["prompt"]}],
        "max_tokens": endpoint["probe"]["max_tokens"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(base_url=endpoint["base_url"], timeout=10) as client:
        while True:
            async with client.stream(
                "POST", "/chat/completions", json=body, headers=headers
            ) as response:
                async for _ in response.aiter_lines():
                    pass
            await asyncio.sleep(PROBE_EVERY_S)


async def run(config_path: Path, child: subprocess.Popen[str], minutes: int, poll: bool) -> None:
    config = yaml.safe_load(config_path.read_text())
    ssh = config["ssh"]
    tasks = []
    if poll:
        tasks = [
            asyncio.create_task(
                poll_node(n, ssh["known_hosts"], ssh["identity_files"][0], ssh["user"])
            )
            for n in config["nodes"]
        ]
        tasks += [asyncio.create_task(probe_endpoint(e)) for e in config["endpoints"]]
    process = psutil.Process(child.pid)
    start = time.monotonic()
    samples: list[tuple[float, float]] = [(0.0, process.memory_info().rss / MIB)]
    print(f"minute  0: {samples[0][1]:7.1f} MiB RSS, {blocks(child):8d} blocks", flush=True)
    for minute in range(1, minutes + 1):
        await asyncio.sleep(start + 60 * minute - time.monotonic())
        for task in tasks:
            if task.done():
                raise RuntimeError(f"a poller stopped: {task.exception()!r}")
        samples.append((minute / 60, process.memory_info().rss / MIB))
        line = f"minute {minute:2d}: {samples[-1][1]:7.1f} MiB RSS, {blocks(child):8d} blocks"
        print(line, flush=True)
        if minute == 1:
            assert child.stdin is not None
            child.stdin.write("mark\n")
            child.stdin.flush()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    settled = samples[1:]
    if len(settled) >= 2:
        hours, rss = zip(*settled, strict=True)
        slope = statistics.linear_regression(hours, rss).slope
        print(f"growth: {slope:+.1f} MiB/hour (least squares over minutes 1-{minutes})")
    print(f"RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MiB over {minutes} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10, help="length of the run (default 10)")
    parser.add_argument("--nodes", type=int, default=16, help="demo nodes (default 16)")
    parser.add_argument("--no-poll", action="store_true", help="no console-like client")
    parser.add_argument("--trace", type=int, default=0, metavar="N", help="top N growth sites")
    parser.add_argument(
        "--ballast",
        type=int,
        default=0,
        metavar="N",
        help="hold N long-lived objects beside the fleet, as the console's process does",
    )
    parser.add_argument(
        "--collect-every",
        type=float,
        metavar="S",
        help="the fleet's collection period in seconds (default: its own; inf: never)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child's role
    args = parser.parse_args()
    if args.serve is not None:
        serve(args)
        return
    if args.minutes < 1:
        parser.error("--minutes must be 1 or more")
    # The child inherits the backup provider's key, so this process can probe it too.
    os.environ.setdefault(BACKUP_KEY_ENV, f"sk-demo-{secrets.token_hex(16)}")
    with tempfile.TemporaryDirectory(prefix="llmops-demo-memory-") as workdir:
        command = [sys.executable, __file__, "--serve", workdir, "--nodes", str(args.nodes)]
        command += ["--trace", str(args.trace), "--ballast", str(args.ballast)]
        if args.collect_every is not None:
            command += ["--collect-every", str(args.collect_every)]
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdin is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("the demo fleet did not start")
            polling = "no polling" if args.no_poll else "console-like polling"
            collect = args.collect_every if args.collect_every is not None else "default"
            print(
                f"demo fleet alone in pid {child.pid}: {args.nodes} nodes, traffic on, {polling}, "
                f"ballast {args.ballast} objects, collection every {collect} s"
            )
            asyncio.run(run(Path(workdir) / "config.yaml", child, args.minutes, not args.no_poll))
            child.stdin.close()
            print(child.stdout.read(), end="")
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            child.wait()


if __name__ == "__main__":
    main()
