"""The local SQLite store: incident log (append-only events), probe results and samples.

Opened through sqlite-utils in WAL mode with a busy timeout, so several console processes can
share one database file (two engineers on one bastion). Schema changes are numbered
migrations recorded in ``schema_migrations``; each runs in an IMMEDIATE transaction so two
processes starting together apply it once. ``events`` rejects UPDATE and DELETE: the incident
log is a trail, not a table to edit. Nothing secret is ever passed in here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from console.models import EngineStats, GpuReading, ProbeResult

BUSY_TIMEOUT_MS = 10_000
# How long readings are kept: a day of samples is enough for a postmortem's graphs, a week
# of probe results for "was it slow before?"; a 512-GPU fleet writes ~6 GB of samples a day.
RETENTION_S = {"samples": 24 * 3600.0, "probes": 7 * 24 * 3600.0}

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "events, probes, samples",
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            source TEXT,
            message TEXT NOT NULL,
            data TEXT,
            pid INTEGER NOT NULL,
            operator TEXT
        );
        CREATE INDEX events_ts ON events (ts);
        CREATE TRIGGER events_no_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;
        CREATE TABLE probes (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            endpoint TEXT NOT NULL,
            ok INTEGER NOT NULL,
            status INTEGER,
            ttft_s REAL,
            latency_s REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            model TEXT,
            error TEXT
        );
        CREATE INDEX probes_endpoint_ts ON probes (endpoint, ts);
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            node TEXT NOT NULL,
            subject TEXT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX samples_node_ts ON samples (node, ts);
        """,
    ),
    (
        "indexes on ts for the retention purge",
        """
        CREATE INDEX samples_ts ON samples (ts);
        CREATE INDEX probes_ts ON probes (ts);
        """,
    ),
    (
        "incidents and runbook runs",
        """
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            opened_at REAL NOT NULL,
            title TEXT NOT NULL,
            state TEXT NOT NULL,
            severity TEXT,
            target TEXT,
            opened_by TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE runbook_runs (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            runbook TEXT NOT NULL,
            title TEXT NOT NULL,
            params TEXT NOT NULL,
            operator TEXT NOT NULL,
            mode TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            outcome TEXT,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            pid_started_at REAL
        );
        CREATE INDEX runbook_runs_incident ON runbook_runs (incident_id);
        ALTER TABLE events ADD COLUMN incident_id INTEGER;
        ALTER TABLE events ADD COLUMN run_id INTEGER;
        ALTER TABLE events ADD COLUMN step TEXT;
        CREATE INDEX events_incident ON events (incident_id, id);
        CREATE INDEX events_run ON events (run_id, id);
        """,
    ),
    (
        "incident lifecycle: the alert that opened it, what it affects, its runbook",
        """
        ALTER TABLE incidents ADD COLUMN alert_key TEXT;
        ALTER TABLE incidents ADD COLUMN affected TEXT;
        ALTER TABLE incidents ADD COLUMN runbook TEXT;
        CREATE UNIQUE INDEX incidents_open_alert ON incidents (alert_key)
            WHERE alert_key IS NOT NULL AND state != 'resolved';
        CREATE INDEX incidents_state ON incidents (state);
        """,
    ),
)

# The purge deletes this many rows per transaction, so that it never holds the write lock
# for long: the hub's writes and a second console wait for one batch at most.
PURGE_BATCH_ROWS = 5_000


class Store:
    """Thread-safe handle on the database (the hub writes from a worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def _migrate(self) -> None:
        with self._lock:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            for version, (name, sql) in enumerate(MIGRATIONS, start=1):
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    done = self.conn.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                    ).fetchone()
                    if not done:
                        for statement in _statements(sql):
                            self.conn.execute(statement)
                        self.conn.execute(
                            "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                            (version, name, time.time()),
                        )
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        row = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def _insert(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        """Insert rows into several tables in one transaction: all of them, or none."""
        tables = {table: rows for table, rows in tables.items() if rows}
        if not tables:
            return
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for table, rows in tables.items():
                    self.db.table(table).insert_all(rows)
                self.conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): a second ROLLBACK
                # would replace the real reason with "no transaction is active".
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def write_batch(
        self,
        probes: Iterable[ProbeResult] = (),
        gpus: Iterable[tuple[float, GpuReading]] = (),
        engines: Iterable[tuple[float, EngineStats]] = (),
        events: Iterable[dict[str, Any]] = (),
    ) -> None:
        """One flush of the hub's rows, in one transaction, so a failure never half-writes it.

        ``events`` are keyword arguments of :meth:`append_event`.
        """
        self._insert(
            {
                "probes": _probe_rows(probes),
                "samples": _gpu_rows(gpus) + _engine_rows(engines),
                "events": [_event_row(**e) for e in events],
            }
        )

    def append_event(
        self,
        kind: str,
        message: str,
        *,
        source: str | None = None,
        data: dict[str, Any] | None = None,
        operator: str | None = None,
        ts: float | None = None,
        incident_id: int | None = None,
        run_id: int | None = None,
        step: str | None = None,
    ) -> None:
        """Append one event, committed when this returns (a crash after it keeps it)."""
        row = _event_row(kind, message, source, data, operator, ts)
        row.update(incident_id=incident_id, run_id=run_id, step=step)
        self._insert({"events": [row]})

    def insert_row(self, table: str, row: dict[str, Any], event: dict[str, Any]) -> int:
        """Insert ``row`` and the event that records it in one transaction; the row's id.

        ``event`` holds :meth:`append_event`'s arguments; its ``incident_id`` or ``run_id``
        may be the string ``"new"``, meaning the id of the row inserted here.
        """
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                row_id = self.db.table(table).insert(row).last_rowid
                assert row_id is not None
                event = {k: (row_id if v == "new" else v) for k, v in event.items()}
                self.db.table("events").insert(_linked_event_row(event))
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        return int(row_id)

    def update_row(
        self, table: str, row_id: int, values: dict[str, Any], event: dict[str, Any] | None
    ) -> None:
        """Update one row of incidents or runbook_runs (and log why) in one transaction."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.db.table(table).update(row_id, values)
                if event is not None:
                    self.db.table("events").insert(_linked_event_row(event))
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def claim_row(
        self,
        table: str,
        row_id: int,
        expected: dict[str, Any],
        values: dict[str, Any],
        event: dict[str, Any] | None,
    ) -> bool:
        """Update the row only if it still holds ``expected`` (and log why), in one write
        transaction: of two processes claiming it at once, one does and the other is told."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                row = next(iter(self.db.query(f"SELECT * FROM {table} WHERE id = ?", [row_id])))
                if any(row.get(k) != v for k, v in expected.items()):
                    self.conn.execute("ROLLBACK")
                    return False
                self.db.table(table).update(row_id, values)
                if event is not None:
                    self.db.table("events").insert(_linked_event_row(event))
                self.conn.execute("COMMIT")
                return True
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction (BEGIN IMMEDIATE) for a read-then-write that another
        process must not interleave: committed when the block ends, rolled back if it raises."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self.db)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(sql, params))

    def add_probes(self, results: Iterable[ProbeResult]) -> None:
        self._insert({"probes": _probe_rows(results)})

    def add_gpu_samples(self, readings: Iterable[tuple[float, GpuReading]]) -> None:
        self._insert({"samples": _gpu_rows(readings)})

    def purge(self, now: float) -> dict[str, int]:
        """Drop samples and probe results past their retention; events are never purged.

        Rows go in batches found through the ``ts`` index, one short transaction each.
        """
        removed = {}
        for table, keep_s in RETENTION_S.items():
            removed[table] = 0
            while True:
                with self._lock:
                    cursor = self.conn.execute(
                        f"DELETE FROM {table} WHERE rowid IN "
                        f"(SELECT rowid FROM {table} WHERE ts < ? LIMIT ?)",
                        (now - keep_s, PURGE_BATCH_ROWS),
                    )
                removed[table] += cursor.rowcount
                if cursor.rowcount < PURGE_BATCH_ROWS:
                    break
        return removed

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", [limit]))

    def close(self) -> None:
        with self._lock:
            self.conn.close()


@dataclass(frozen=True)
class Transaction:
    """What a :meth:`Store.transaction` block may do: read, insert a row, log an event."""

    db: sqlite_utils.Database

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def insert(self, table: str, row: dict[str, Any]) -> int:
        row_id = self.db.table(table).insert(row).last_rowid
        assert row_id is not None
        return int(row_id)

    def update(self, table: str, row_id: int, values: dict[str, Any]) -> None:
        self.db.table(table).update(row_id, values)

    def event(self, event: dict[str, Any]) -> None:
        """An event given as :meth:`Store.append_event`'s keyword arguments."""
        self.db.table("events").insert(_linked_event_row(event))


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting out a second process that is creating the same file.

    SQLite does not call the busy handler for this pragma, so the wait is done here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _statements(sql: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements, current = [], []
    for line in sql.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    return statements


def _event_row(
    kind: str,
    message: str,
    source: str | None = None,
    data: dict[str, Any] | None = None,
    operator: str | None = None,
    ts: float | None = None,
) -> dict[str, Any]:
    return {
        "ts": time.time() if ts is None else ts,
        "kind": kind,
        "source": source,
        "message": message,
        "data": json.dumps(data, sort_keys=True) if data else None,
        "pid": os.getpid(),
        "operator": operator,
    }


def _linked_event_row(event: dict[str, Any]) -> dict[str, Any]:
    """An events row from append_event's arguments, with its incident, run and step."""
    event = dict(event)
    ids = {k: event.pop(k, None) for k in ("incident_id", "run_id", "step")}
    row = _event_row(**event)
    row.update(ids)
    return row


def _probe_rows(results: Iterable[ProbeResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = asdict(r)
        row.pop("retry_after_s")
        row["ts"] = row.pop("started_at")
        row["ok"] = int(r.ok)
        rows.append(row)
    return rows


def _gpu_rows(readings: Iterable[tuple[float, GpuReading]]) -> list[dict[str, Any]]:
    return [
        {
            "ts": ts,
            "kind": "gpu",
            "node": g.node,
            "subject": str(g.index),
            "data": json.dumps(_compact(asdict(g), ("node", "index", "name", "uuid"))),
        }
        for ts, g in readings
    ]


def _engine_rows(scrapes: Iterable[tuple[float, EngineStats]]) -> list[dict[str, Any]]:
    return [
        {
            "ts": ts,
            "kind": "engine",
            "node": e.node,
            "subject": e.model_name or "",
            "data": json.dumps(
                {
                    "running": e.running,
                    "waiting": e.waiting,
                    "kv_cache_usage": e.kv_cache_usage,
                    # Counters per series, labels written as Prometheus writes them.
                    "counters": {
                        family: {_labels_text(labels): v for labels, v in series.items()}
                        for family, series in e.counters.items()
                    },
                }
            ),
        }
        for ts, e in scrapes
    ]


def _labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels)


def _compact(row: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in drop and v is not None}
