"""Benchmark: bytes on disk per stored sample, the compact rows against the JSON rows before.

Writes ``--minutes`` of a synthetic fleet (``--gpus``, 8 a node, one vLLM engine a node),
polled at the config's default intervals, through the real Store in the batches the hub's
writer flushes once a second; and the same readings the old way (JSON text in ``samples``,
with its two indexes) into a second file. The GPUs start from the H100 capture in
tests/fixtures/gpu and wander (utilisation, memory, temperature, power to 2 decimals, clocks,
throttle reasons); each engine's counters and histogram buckets grow by a few requests a
scrape from a real vLLM 0.33 exposition (the demo's). Sizes are pages as SQLite holds them
(``dbstat``), no VACUUM: what a live database takes, indexes and the key dictionary included.

Prints bytes per GPU sample and per engine sample, bytes a day and a week at 512 GPUs, the
ratio against the JSON rows measured in the same run, and how long replaying one moment of
the fleet takes (printed, never asserted).

    python bench/sample_storage.py [--gpus 512] [--minutes 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.engines import SAMPLE_NAMES, VLLM, engine_stats_from_text  # noqa: E402
from bench.synthetic_fleet import _base_gpu  # noqa: E402
from console.config import PollConfig, load_config  # noqa: E402
from console.demo.engine_metrics import EngineMetrics, FinishedRequest  # noqa: E402
from console.models import EngineStats, GpuReading, Histogram  # noqa: E402
from console.replay import fleet_at  # noqa: E402
from console.store import Store, json_sample_rows  # noqa: E402

GPUS_PER_NODE = 8
DAY_S = 24 * 3600.0
START = 1_795_830_000.0


def _template_engine() -> EngineStats:
    """A vLLM 0.33 scrape after a busy hour: large cumulative counts, every bucket used."""
    metrics = EngineMetrics("meta-llama/Llama-3.1-8B-Instruct", 8192, {"block_size": "16"})
    rng = random.Random(7)
    for _ in range(3000):
        prompt = rng.randint(50, 3000)
        metrics.admitted(prompt, prompt // 3)
        metrics.first_token(prompt, rng.lognormvariate(-2.5, 0.8))
        metrics.next_tokens(rng.lognormvariate(-3.7, 0.3), 1)
        e2e = rng.lognormvariate(0.5, 0.7)
        reason = rng.choice(("stop", "stop", "stop", "length", "abort"))
        request = FinishedRequest(
            reason, prompt, 200, 512, prompt - prompt // 3, e2e, 0.02, 0.1, e2e, 0
        )
        metrics.finished(request)
    metrics.set_scheduler_state(running=24, waiting=3, kv_usage=0.61)
    return engine_stats_from_text("template", metrics.render(SAMPLE_NAMES[VLLM]).decode())


class _Engine:
    """One node's engine: a few requests finish between scrapes, spread over the buckets."""

    def __init__(self, node: str, template: EngineStats, rng: random.Random) -> None:
        self.node = node
        self.rng = rng
        scale = rng.uniform(50, 500)  # engines up for different times
        self.counters = {
            f: {labels: round(v * scale) for labels, v in s.items()}
            for f, s in template.counters.items()
        }
        self.histograms = {
            f: {
                labels: [[le, round(c * scale)] for le, c in h.buckets] + [[h.sum * scale, 0]]
                for labels, h in s.items()
            }
            for f, s in template.histograms.items()
        }
        self.model = template.model_name

    def scrape(self) -> EngineStats:
        rng = self.rng
        finished = rng.randint(5, 40)
        for series in self.counters.values():
            for labels in series:
                series[labels] += rng.randint(0, finished * 50)
        histograms: dict[str, dict[tuple[tuple[str, str], ...], Histogram]] = {}
        for family, series in self.histograms.items():
            out = histograms[family] = {}
            for labels, buckets in series.items():
                *bounds, total = buckets
                for _ in range(finished):  # each observation lands in one bucket and above
                    first = min(int(rng.expovariate(0.25)), len(bounds) - 1)
                    for bucket in bounds[len(bounds) // 3 + first :]:
                        bucket[1] += 1
                    total[0] += rng.lognormvariate(0.0, 0.5)
                out[labels] = Histogram(
                    tuple((le, float(c)) for le, c in bounds), total[0], float(bounds[-1][1])
                )
        return EngineStats(
            node=self.node,
            model_name=self.model,
            running=float(rng.randint(0, 64)),
            waiting=float(rng.randint(0, 8)),
            kv_cache_usage=rng.random(),
            counters={f: {k: float(v) for k, v in s.items()} for f, s in self.counters.items()},
            histograms=histograms,
            engine="vllm",
        )


def _gpu_wander(base: GpuReading, rng: random.Random, reading: GpuReading) -> GpuReading:
    util = min(100.0, max(0.0, (reading.util_pct or 0) + rng.choice((-7, -3, 0, 0, 2, 5))))
    memory = min(81559.0, max(1000.0, (reading.memory_used_mib or 0) + rng.randint(-64, 64)))
    power = round(120 + 5.7 * util + rng.uniform(-15, 15), 2)
    temp = round(40 + 0.35 * util + rng.uniform(-1, 1))
    throttle = 0x4 if power > 650 else 0x1 if util < 5 else 0x0
    return replace(
        reading,
        util_pct=util,
        memory_util_pct=float(round(util * 0.4)),
        memory_used_mib=memory,
        temperature_c=float(temp),
        power_w=power,
        sm_clock_mhz=float(rng.choice((1980, 1755, 1425))) if util > 5 else 345.0,
        throttle_reasons=throttle,
        clock_events=("power cap",) if throttle == 0x4 else ("idle",) if throttle else (),
        pstate="P0" if util > 5 else "P8",
    )


def _fleet(
    gpus: int, minutes: float, poll: PollConfig, seed: int
) -> Iterator[tuple[float, list[tuple[float, GpuReading]], list[tuple[float, EngineStats]]]]:
    """Second by second, the polls finished in it: what the hub's writer flushes."""
    rng = random.Random(seed)
    base = _base_gpu()
    template = _template_engine()
    nodes = [f"gpu-a{n + 1}" for n in range(max(1, gpus // GPUS_PER_NODE))]
    readings = {
        node: [
            replace(
                base,
                node=node,
                index=g,
                uuid=f"GPU-5e1ec7ed-0000-4000-8000-{n:06x}{g:06x}",
                util_pct=float(rng.randint(0, 100)),
            )
            for g in range(GPUS_PER_NODE)
        ]
        for n, node in enumerate(nodes)
    }
    engines = {node: _Engine(node, template, rng) for node in nodes}
    phase = {node: rng.uniform(0, poll.gpus_s) for node in nodes}  # polls do not line up
    next_gpu = {node: START + phase[node] for node in nodes}
    next_engine = {node: START + phase[node] / 2 for node in nodes}
    for second in range(int(minutes * 60)):
        end = START + second + 1
        gpu_rows, engine_rows = [], []
        for node in nodes:
            while next_gpu[node] < end:
                ts = next_gpu[node]
                readings[node] = [_gpu_wander(base, rng, r) for r in readings[node]]
                gpu_rows += [(ts, r) for r in readings[node]]
                next_gpu[node] += poll.gpus_s + rng.uniform(0, 0.05)  # a poll takes a while
            while next_engine[node] < end:
                engine_rows.append((next_engine[node], engines[node].scrape()))
                next_engine[node] += poll.engine_s + rng.uniform(0, 0.02)
        yield end, gpu_rows, engine_rows


def _table_bytes(conn: sqlite3.Connection) -> dict[str, int]:
    """Bytes of pages per table and index, as they lie in the file."""
    return dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())


def _config(folder: Path, nodes: int, poll: PollConfig) -> Path:
    """A config naming the synthetic nodes, two endpoints over them, for the replay."""
    names = [f"gpu-a{n + 1}" for n in range(nodes)]
    half = max(1, nodes // 2)
    text = {
        "environment": "bench",
        "poll": {"gpus": f"{poll.gpus_s}s", "engine": f"{poll.engine_s}s"},
        "nodes": [
            {
                "name": n,
                "host": "127.0.0.1",
                "gpus": GPUS_PER_NODE,
                "engine": {"kind": "vllm", "url": "http://127.0.0.1:9"},
            }
            for n in names
        ],
        "endpoints": [
            {
                "name": f"chat-{i}",
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "m",
                "nodes": part,
            }
            for i, part in enumerate((names[:half], names[half:]))
            if part
        ],
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return path


def measure(gpus: int = 512, minutes: float = 10.0, seed: int = 0) -> dict[str, float | int | str]:
    """Write ``minutes`` of ``gpus`` both ways and measure; the figures, by name."""
    poll = PollConfig()  # the defaults a config gets
    nodes = max(1, gpus // GPUS_PER_NODE)
    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        folder = Path(tmp)
        compact = Store(folder / "compact.db")
        # The JSON rows of GPUs and engines in files of their own: each one's bytes exactly.
        old_gpus, old_engines = Store(folder / "json-gpus.db"), Store(folder / "json-engines.db")
        gpu_samples = engine_samples = 0
        write_s = 0.0
        for _, gpu_rows, engine_rows in _fleet(gpus, minutes, poll, seed):
            started = time.perf_counter()
            compact.write_batch(gpus=gpu_rows, engines=engine_rows)
            write_s += time.perf_counter() - started
            for old, rows in (
                (old_gpus, json_sample_rows(gpus=gpu_rows)),
                (old_engines, json_sample_rows(engines=engine_rows)),
            ):
                with old.conn:
                    old.db["samples"].insert_all(rows)  # type: ignore[union-attr]
            gpu_samples += len(gpu_rows)
            engine_samples += len(engine_rows)
        sizes = _table_bytes(compact.conn)
        # The key dictionary grows with what is new (a GPU's state, an engine's series), not
        # with time: it is counted once, beside the rows.
        key_count = compact.db["sample_keys"].count  # type: ignore[union-attr]
        key_bytes = sum(v for k, v in sizes.items() if "sample_keys" in k)
        gpu_bytes = sizes["gpu_samples"]
        engine_bytes = sizes["engine_samples"]
        old_gpu_bytes, old_engine_bytes = (
            sum(_table_bytes(old.conn)[t] for t in ("samples", "samples_node_ts", "samples_ts"))
            for old in (old_gpus, old_engines)
        )

        config = load_config(_config(folder, nodes, poll))
        span = compact.sample_span()
        assert span is not None
        started = time.perf_counter()
        replay = fleet_at(compact, config, span[1])
        replay_s = time.perf_counter() - started
        shown = sum(len(n.gpus) for n in replay.snapshot.nodes)
        for store in (compact, old_gpus, old_engines):
            store.close()

    per_gpu = gpu_bytes / gpu_samples
    per_engine = engine_bytes / engine_samples
    old_per_gpu = old_gpu_bytes / gpu_samples
    old_per_engine = old_engine_bytes / engine_samples
    # At 512 GPUs (64 nodes, one engine each), polled at the default intervals.
    gpu_polls_a_day = 512 * DAY_S / poll.gpus_s
    scrapes_a_day = 512 / GPUS_PER_NODE * DAY_S / poll.engine_s
    day = per_gpu * gpu_polls_a_day + per_engine * scrapes_a_day
    old_day = old_per_gpu * gpu_polls_a_day + old_per_engine * scrapes_a_day
    return {
        "GPU samples written": gpu_samples,
        "engine samples written": engine_samples,
        "bytes per GPU sample": round(per_gpu, 1),
        "bytes per engine sample (every bucket)": round(per_engine, 1),
        "bytes per GPU sample, JSON rows": round(old_per_gpu, 1),
        "bytes per engine sample, JSON rows (no histograms)": round(old_per_engine, 1),
        "key dictionary, written once (keys, MB)": f"{key_count}, {key_bytes / 1e6:.2f}",
        "GB per day at 512 GPUs": round(day / 1e9, 3),
        "GB per week at 512 GPUs": round(7 * day / 1e9, 2),
        "GB per day at 512 GPUs, JSON rows": round(old_day / 1e9, 2),
        "ratio JSON / compact, GPU samples": round(old_per_gpu / per_gpu, 1),
        "ratio JSON / compact, all samples": round(old_day / day, 1),
        "write ms per second of fleet": round(1000 * write_s / (minutes * 60), 2),
        "replay of one moment, s": round(replay_s, 3),
        "GPUs in the replayed snapshot": shown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=512)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="two minutes of the fleet")
    args = parser.parse_args()
    minutes = 2.0 if args.quick else args.minutes
    poll = PollConfig()
    print(
        f"{args.gpus} GPUs ({args.gpus // GPUS_PER_NODE} nodes, one engine each) for "
        f"{minutes:g} min, polled every {poll.gpus_s:g} s (GPUs) and {poll.engine_s:g} s "
        "(engines)"
    )
    for name, value in measure(args.gpus, minutes).items():
        print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
