"""The SQLite store: migrations, append-only events, and two processes on one file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from backends.engines import SAMPLE_NAMES, VLLM, engine_stats_from_text
from backends.gpu import parse_nvml_json, parse_query_csv
from console import store as store_module
from console.demo.engine_metrics import EngineMetrics, FinishedRequest
from console.models import EngineStats, GpuProcess, GpuReading, MigDevice, ProbeResult
from console.store import (
    MIGRATIONS,
    PURGE_BATCH_ROWS,
    RETENTION_S,
    EngineScrape,
    GpuPoll,
    Store,
    StoredSamples,
    json_sample_rows,
)
from tests.conftest import FIXTURES


def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "a" / "llmops.db"
    Store(path).close()
    store = Store(path)
    rows = store.conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(i + 1, name) for i, (name, _) in enumerate(MIGRATIONS)]
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_events_are_append_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    store.append_event("source.failed", "gpu-a1 down", source="gpus:gpu-a1", data={"n": 1})
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("UPDATE events SET message = 'nothing happened'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("DELETE FROM events")
    (event,) = store.events()
    assert event["message"] == "gpu-a1 down"


def test_probes_and_samples_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    store.add_probes([ProbeResult("chat", 1.0, True, 200, 0.1, 0.5, 10, 3, "m", None, None)])
    readings = parse_query_csv(
        "gpu-a1", (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    )
    store.add_gpu_samples((2.0, r) for r in readings)
    probe = store.db["probes"].get(1)
    assert (probe["endpoint"], probe["ok"], probe["ttft_s"]) == ("chat", 1, 0.1)
    assert store.read_probes(0, 10) == [
        ProbeResult("chat", 1.0, True, 200, 0.1, 0.5, 10, 3, "m", None, None)
    ]
    (poll,) = store.read_samples(0, 10).gpus
    assert (poll.ts, poll.node, poll.gpus) == (2.0, "gpu-a1", tuple(readings))
    assert store.db["gpu_samples"].count == 1  # one row per node per poll


WRITER = """
import sys, time
from pathlib import Path
from console.store import Store
store = Store(Path(sys.argv[1]))
for i in range(200):
    store.append_event("test", f"{sys.argv[2]} {i}")
"""


def test_two_processes_share_one_database(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name],
            stderr=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        for name in ("first", "second")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    store = Store(path)
    counts = dict(
        store.conn.execute(
            "SELECT substr(message, 1, instr(message, ' ') - 1), count(*) FROM events GROUP BY 1"
        ).fetchall()
    )
    assert counts == {"first": 200, "second": 200}
    assert store.schema_version == len(MIGRATIONS)


def test_purge_keeps_events_and_recent_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    day = 24 * 3600.0
    now = 10 * day
    store.add_probes(
        [
            ProbeResult("chat", now - 8 * day, True, 200, 0.1, 0.5),
            ProbeResult("chat", now - 6 * day, True, 200, 0.1, 0.5),
        ]
    )
    readings = parse_query_csv(
        "gpu-a1", (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    )
    store.add_gpu_samples((now - 8 * day, r) for r in readings)
    store.add_gpu_samples((now - 6 * day, r) for r in readings)
    store.append_event("source.failed", "old news", ts=now - 30 * day)
    removed = store.purge(now)
    assert (removed["gpu_samples"], removed["probes"]) == (1, 1)
    assert [row["ts"] for row in store.db["probes"].rows] == [now - 6 * day]
    assert [p.ts for p in store.read_samples(0, now).gpus] == [now - 6 * day]
    assert [e["message"] for e in store.events()] == ["old news"]


def test_purge_finds_old_rows_through_the_ts_index_in_short_batches(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    readings = parse_query_csv(
        "gpu-a1", (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    )
    old = [(float(i), readings[0]) for i in range(2 * PURGE_BATCH_ROWS + 10)]
    store.add_gpu_samples(old)
    store.add_gpu_samples([(10 * 24 * 3600.0, readings[0])])
    for table, index in (
        ("samples", "COVERING INDEX samples_ts"),
        ("probes", "COVERING INDEX probes_ts"),
        ("gpu_samples", "PRIMARY KEY"),
        ("engine_samples", "PRIMARY KEY"),
    ):
        plan = " ".join(
            str(row[-1])
            for row in store.conn.execute(
                f"EXPLAIN QUERY PLAN SELECT ts FROM {table} WHERE ts > 1 AND ts < 5 LIMIT 10"
            )
        )
        assert f"USING {index}" in plan, plan  # not a scan of the whole table
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    assert store.purge(10 * 24 * 3600.0)["gpu_samples"] == len(old)
    deletes = [s for s in statements if s.startswith("DELETE FROM gpu_samples")]
    assert len(deletes) == 3  # two full batches and the rest: the write lock is held briefly
    assert store.db["gpu_samples"].count == 1


def test_a_write_that_sqlite_rolled_back_itself_keeps_its_reason(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    # RAISE(ROLLBACK) ends the transaction inside SQLite, as a full disk does.
    store.conn.execute(
        "CREATE TRIGGER no_room BEFORE INSERT ON probes "
        "BEGIN SELECT RAISE(ROLLBACK, 'no room'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="no room"):
        store.add_probes([ProbeResult("chat", 1.0, True, 200, 0.1, 0.5)])


# -- compact samples, retention for incidents, and the JSON rows of older consoles


def rich_reading() -> GpuReading:
    """An NVML reading (fractional MiB, milliwatts, processes) with every optional field set."""
    (reading,) = parse_nvml_json("gpu-a1", (FIXTURES / "gpu" / "nvml-load.json").read_text()).gpus
    return replace(
        reading,
        memory_reserved_mib=512.25,
        memory_temperature_c=61.0,
        fan_pct=None,
        ecc_uncorrected=2,
        ecc_corrected_aggregate=17,
        retired_pages_single_bit=1,
        retired_pages_pending=False,
        remapped_rows_corrected=3,
        remapped_rows_pending=True,
        remapped_rows_failed=False,
        mig_mode="Enabled",
        mig_devices=(MigDevice(0, "MIG-1", "1g.10gb", 7, 0, 9984.0, 1024.5),),
        processes=(GpuProcess(4242, "python3", "vllm", None, 7, 0),),
        errors=("fan speed: NVMLError_Unknown: Unknown Error",),
        power_w=512.3456789,  # not exact in milliwatts: kept as the double itself
    )


def vllm_scrape(node: str, requests: int) -> EngineStats:
    """A scrape of the demo's vLLM 0.33 exposition after ``requests`` requests."""
    metrics = EngineMetrics("meta-llama/Llama-3.1-8B-Instruct", 8192, {"block_size": "16"})
    for i in range(requests):
        metrics.admitted(1000 + i, 300)
        metrics.first_token(1000 + i, 0.05 + i / 1000)
        metrics.next_tokens(0.02, 3)
        reason = "abort" if i % 17 == 0 else "stop"
        metrics.finished(
            FinishedRequest(reason, 1000, 40, 512, 700, 1.5 + i / 100, 0.01, 0.1, 1.4, 0)
        )
    metrics.set_scheduler_state(running=12, waiting=3, kv_usage=0.4213)
    text = metrics.render(SAMPLE_NAMES[VLLM]).decode()
    return engine_stats_from_text(node, text)


def test_compact_samples_give_back_every_field_exactly(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    gpu = rich_reading()
    second = replace(gpu, index=1, uuid="GPU-2", processes=None, mig_devices=(), lost=True)
    engine = vllm_scrape("gpu-a1", 60)
    assert engine.histograms and engine.counters and engine.kv_cache_usage is not None
    store.write_batch(gpus=[(5.0, gpu), (5.0, second)], engines=[(5.5, engine)])
    stored = store.read_samples(0, 10)
    assert stored.gpus == [GpuPoll(5.0, "gpu-a1", (gpu, second))]
    assert stored.engines == [EngineScrape(5.5, engine)]
    # A second poll of the same GPUs costs a row of figures: the rest is a key, written once
    # (a process's memory is a figure too: a growing process makes no new key).
    (process,) = gpu.processes or ()
    busier = replace(gpu, util_pct=50.0, processes=(replace(process, memory_used_mib=31000.5),))
    store.write_batch(gpus=[(7.0, busier), (7.0, second)])
    assert store.db["sample_keys"].count == 4  # the node, two GPUs, the engine's series
    polls = store.read_samples(0, 10, node="gpu-a1").gpus
    assert [p.gpus for p in polls] == [(gpu, second), (busier, second)]
    assert store.read_samples(0, 10, node="gpu-a9") == StoredSamples([], [])


def test_a_compact_sample_is_a_fraction_of_its_json_row(tmp_path: Path) -> None:
    """Sizes, not timings: bench/sample_storage.py prints the figures for a 512-GPU fleet."""
    store = Store(tmp_path / "x.db")
    gpus = [(1.0, replace(rich_reading(), index=i, processes=None)) for i in range(8)]
    engine = (1.0, vllm_scrape("gpu-a1", 200))
    store.write_batch(gpus=gpus, engines=[engine])
    json_gpus = sum(len(r["data"]) for r in json_sample_rows(gpus=gpus))
    (gpu_row,) = store.conn.execute("SELECT length(data) FROM gpu_samples").fetchone()
    (engine_row,) = store.conn.execute("SELECT length(data) FROM engine_samples").fetchone()
    assert gpu_row * 10 < json_gpus
    # The JSON row kept no histograms; the compact one keeps every bucket and is still small.
    assert engine_row < 400


def test_samples_an_incident_needs_outlive_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    hour, day = 3600.0, 24 * 3600.0
    reading = rich_reading()
    times = [t * 600.0 for t in range(int(12 * day / 600) + 1)]  # every 10 min for 12 days
    for ts in times:
        # Until day 0.9 the GPU idles in P8, a key of its own that nothing needs afterwards.
        gpu = replace(reading, pstate="P8" if ts < 0.9 * day else "P0", util_pct=ts % 97)
        store.write_batch(
            probes=[ProbeResult("chat", ts, True, 200, 0.1, 0.5)],
            gpus=[(ts, gpu)],
            engines=[(ts, EngineStats("gpu-a1", "m", 1.0, 0.0, 0.5))],
        )
    incident = {"title": "slow", "opened_by": "sre@bastion", "severity": "page"}
    store.db["incidents"].insert_all(
        [
            {**incident, "opened_at": 1 * day, "state": "resolved", "updated_at": day + 2 * hour},
            {**incident, "opened_at": 3 * day, "state": "acknowledged", "updated_at": 3 * day},
        ]
    )
    keys_before = store.db["sample_keys"].count
    removed = store.purge(12 * day)

    def kept(ts: float) -> bool:
        return (
            day - hour <= ts <= day + 2 * hour + 600  # resolved: until 10 minutes after
            or ts >= 3 * day - hour  # still open: everything since an hour before it opened
        )

    expected = [ts for ts in times if kept(ts)]
    assert expected != times and expected
    stored = store.read_samples(0, 12 * day)
    assert [p.ts for p in stored.gpus] == expected
    assert [e.ts for e in stored.engines] == expected
    assert [p.started_at for p in store.read_probes(0, 12 * day)] == expected
    assert removed["gpu_samples"] == removed["engine_samples"] == len(times) - len(expected)
    # The P8 key went with the samples that used it; the rows left read back whole.
    assert removed["sample_keys"] == 1 and store.db["sample_keys"].count == keys_before - 1
    assert stored.gpus[0].gpus[0] == replace(reading, pstate="P0", util_pct=(day - hour) % 97)


def test_an_old_database_with_json_samples_opens_and_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 4 with JSON rows: the migration leaves them where they are, the replay reads
    them beside the compact rows, and the purge ages them out like the rest."""
    path = tmp_path / "old.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:4])
    old = Store(path)
    gpu = rich_reading()
    engine = vllm_scrape("gpu-a1", 30)
    old.db["samples"].insert_all(json_sample_rows(gpus=[(10.0, gpu)], engines=[(10.0, engine)]))
    old.close()
    monkeypatch.undo()

    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    store.write_batch(gpus=[(12.0, gpu)])
    first, second = store.read_samples(0, 20).gpus
    # The JSON rows never kept a GPU's name and uuid, nor an engine's histograms.
    assert first == GpuPoll(10.0, "gpu-a1", (replace(gpu, name="", uuid=""),))
    assert second == GpuPoll(12.0, "gpu-a1", (gpu,))
    (scrape,) = store.read_samples(0, 20).engines
    assert scrape.stats.counters == engine.counters and scrape.stats.histograms == {}
    assert (scrape.stats.running, scrape.stats.kv_cache_usage) == (12.0, 0.4213)
    assert store.sample_times(0, 20) == {("gpus", "gpu-a1"): 12.0, ("engine", "gpu-a1"): 10.0}
    assert store.sample_span() == (10.0, 12.0)
    assert store.purge(11.0 + RETENTION_S["samples"])["samples"] == 2
    assert store.sample_span() == (12.0, 12.0)


RECORDER = """
import sys
from pathlib import Path
from console.models import ProbeResult
from console.store import Store
store = Store(Path(sys.argv[1]))
store.write_batch([ProbeResult("chat", 1.0, True, 200, 0.1, 0.5, 10, 3)])
print("recorded", flush=True)
sys.stdin.read()  # holds the place while it lives (its heartbeat is its last write)
"""


def test_one_console_records_samples_while_another_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `llmops watch` records the fleet's samples; a TUI opened on the same database writes
    its events but not a second copy of every sample, until the recorder is gone."""
    path = tmp_path / "shared.db"
    Store(path).close()
    watch = subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert watch.stdout is not None and watch.stdout.readline() == "recorded\n"
    store = Store(path)
    store.write_batch(
        [ProbeResult("chat", 2.0, True, 200, 0.1, 0.5, 10, 3)],
        [(2.0, rich_reading())],
        events=[{"kind": "console.started", "message": "tui started"}],
    )
    assert [p.started_at for p in store.read_probes(0, 10)] == [1.0]
    assert store.read_samples(0, 10).gpus == []
    assert [e["message"] for e in store.events()] == ["tui started"]  # events always
    watch.communicate("", timeout=30)
    # The recorder's heartbeat goes stale (shortened here): this console takes its place.
    monkeypatch.setattr(store_module, "RECORDER_STALE_S", 0.0)
    store.write_batch(
        [ProbeResult("chat", 3.0, True, 200, 0.1, 0.5, 10, 3)], [(3.0, rich_reading())]
    )
    assert [p.started_at for p in store.read_probes(0, 10)] == [1.0, 3.0]
    assert [poll.ts for poll in store.read_samples(0, 10).gpus] == [3.0]
    store.close()
