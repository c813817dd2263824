"""The SQLite store: migrations, append-only events, and two processes on one file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from backends.gpu import parse_query_csv
from console.models import ProbeResult
from console.store import MIGRATIONS, PURGE_BATCH_ROWS, Store
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
    (sample,) = store.db["samples"].rows
    assert sample["node"] == "gpu-a1"
    assert '"util_pct": 100' in sample["data"]


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
    store.add_gpu_samples((now - 2 * day, r) for r in readings)
    store.add_gpu_samples((now - 3600, r) for r in readings)
    store.append_event("source.failed", "old news", ts=now - 30 * day)
    assert store.purge(now) == {"samples": len(readings), "probes": 1}
    assert [row["ts"] for row in store.db["probes"].rows] == [now - 6 * day]
    assert {row["ts"] for row in store.db["samples"].rows} == {now - 3600}
    assert [e["message"] for e in store.events()] == ["old news"]


def test_purge_finds_old_rows_through_the_ts_index_in_short_batches(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    readings = parse_query_csv(
        "gpu-a1", (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    )
    old = [(float(i), readings[0]) for i in range(2 * PURGE_BATCH_ROWS + 10)]
    store.add_gpu_samples(old)
    store.add_gpu_samples([(10 * 24 * 3600.0, readings[0])])
    for table in ("samples", "probes"):
        plan = " ".join(
            str(row[-1])
            for row in store.conn.execute(
                f"EXPLAIN QUERY PLAN SELECT rowid FROM {table} WHERE ts < 5 LIMIT 10"
            )
        )
        assert f"USING COVERING INDEX {table}_ts" in plan  # not a scan of the whole table
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    assert store.purge(10 * 24 * 3600.0)["samples"] == len(old)
    deletes = [s for s in statements if s.startswith("DELETE FROM samples")]
    assert len(deletes) == 3  # two full batches and the rest: the write lock is held briefly
    assert store.db["samples"].count == 1


def test_a_write_that_sqlite_rolled_back_itself_keeps_its_reason(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    # RAISE(ROLLBACK) ends the transaction inside SQLite, as a full disk does.
    store.conn.execute(
        "CREATE TRIGGER no_room BEFORE INSERT ON probes "
        "BEGIN SELECT RAISE(ROLLBACK, 'no room'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="no room"):
        store.add_probes([ProbeResult("chat", 1.0, True, 200, 0.1, 0.5)])
