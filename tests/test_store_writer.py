"""The store writer while the store refuses writes: bounded rows, samples dropped first."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from backends.gpu import parse_query_csv
from console import store_writer
from console.models import ProbeResult
from console.store import Store
from console.store_writer import StoreWriter
from tests.conftest import FIXTURES


class Record:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.oks = 0
        self.warning: str | None = None


def writer_on(store: Store, record: Record) -> StoreWriter:
    return StoreWriter(
        store,
        clock=lambda: 1000.0,
        record_ok=lambda: setattr(record, "oks", record.oks + 1),
        record_failure=record.failures.append,
        warn=lambda text: setattr(record, "warning", text),
    )


def make_read_only(store: Store, read_only: bool) -> None:
    # A real SQLite refusal ("attempt to write a readonly database"), as on a remounted disk.
    store.conn.execute(f"PRAGMA query_only = {int(read_only)}")


async def test_a_failing_store_keeps_bounded_rows_and_says_what_it_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_writer, "MAX_PENDING_SAMPLES", 16)
    monkeypatch.setattr(store_writer, "MAX_PENDING_PROBES", 5)
    store = Store(tmp_path / "store.db")
    record = Record()
    writer = writer_on(store, record)
    (reading,) = parse_query_csv(
        "gpu-a1", (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    )
    readings = [replace(reading, index=i) for i in range(8)]  # one capture, eight GPUs
    make_read_only(store, True)
    for poll in range(4):  # four polls of 8 GPUs while the disk is full: 32 rows for 16 places
        writer.add_gpus(readings, ts=float(poll))
        writer.add_probe(ProbeResult("chat", float(poll), True, 200, 0.1, 0.5, 10, 2))
        writer.add_probe(ProbeResult("chat", poll + 0.5, True, 200, 0.1, 0.5, 10, 2))
        writer.add_event("source.failed", "gpus:gpu-a2", f"down {poll}")
        await writer.flush()
    assert len(record.failures) == 4 and "readonly" in record.failures[0]
    assert record.warning == "dropped while the store failed: 16 samples, 3 probe results"
    make_read_only(store, False)
    await writer.flush()
    assert record.oks == 1
    assert [p.ts for p in store.read_samples(0, 10).gpus] == [2.0, 3.0]  # the newest two polls
    assert [r["ts"] for r in store.db["probes"].rows] == [1.5, 2.0, 2.5, 3.0, 3.5]
    # The incident log lost nothing.
    assert [e["message"] for e in store.events()][::-1] == [f"down {i}" for i in range(4)]
    assert writer.pending == 0


async def test_a_flush_that_fails_half_way_writes_nothing_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db")
    record = Record()
    writer = writer_on(store, record)
    (reading,) = parse_query_csv(
        "gpu-a1", (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    )
    # A real SQLite failure after the probe rows went in: the samples insert is refused.
    store.conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON gpu_samples "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    writer.add_probe(ProbeResult("chat", 1.0, True, 200, 0.1, 0.5, 10, 2))
    writer.add_gpus([reading])
    writer.add_event("source.failed", "gpus:gpu-a2", "down")
    await writer.flush()
    assert record.failures == [f"{store.path}: refused"]
    store.conn.execute("DROP TRIGGER refuse")
    await writer.flush()
    assert store.db["probes"].count == 1  # not written once in the failed flush and again now
    assert store.db["gpu_samples"].count == 1
    assert [e["message"] for e in store.events()] == ["down"]
