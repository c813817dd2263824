"""The local SQLite store: incident log (append-only events), probe results and samples.

Opened through sqlite-utils in WAL mode with a busy timeout, so several console processes can
share one database file (two engineers on one bastion). Schema changes are numbered
migrations recorded in ``schema_migrations``; each runs in an IMMEDIATE transaction so two
processes starting together apply it once. ``events`` rejects UPDATE and DELETE: the incident
log is a trail, not a table to edit. Nothing secret is ever passed in here.

Samples (schema 5) are kept compact enough for a week of a 512-GPU fleet, for the replay
(console/replay.py): one row per node per poll in ``gpu_samples`` and per engine scrape in
``engine_samples``, keyed by time. What changes from poll to poll (utilisation, memory, power,
each counter and histogram bucket) is a list of numbers packed as varints (an integer of the
value times a scale where that is exact, else the double itself) and deflated; what rarely
changes (a GPU's name, uuid, limits, MIG and processes; an engine's series and their labels;
node names) is written once to ``sample_keys`` and referred to by id. Older consoles wrote
JSON text to ``samples``: those rows are read back as they are and age out under the same
retention; nothing writes them any more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import socket
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from console.models import (
    EngineStats,
    GpuProcess,
    GpuReading,
    Histogram,
    MigDevice,
    ProbeResult,
    SeriesLabels,
)

BUSY_TIMEOUT_MS = 10_000
# How long readings are kept: a week of samples and of probe results, for the replay of an
# incident and for "was it slow before?". A 512-GPU fleet's samples take about 1.5 GB a day
# (0.5 of it GPUs at 24 bytes a sample, 1.0 engines with every histogram bucket), 10 GB a
# week; the JSON rows before schema 5 took 16 GB a day (bench/sample_storage.py).
RETENTION_S = {"samples": 7 * 24 * 3600.0, "probes": 7 * 24 * 3600.0}
# What an incident needs is kept past retention: from an hour before it opened until ten
# minutes after it was resolved (its last update), everything since for one still open.
INCIDENT_BEFORE_S = 3600.0
INCIDENT_AFTER_S = 600.0
# A sample key's last use is written at most this often (in sample time) per key and
# process, so that keeping keys alive costs no write per poll; the purge allows for it.
KEY_TOUCH_S = 600.0

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
    (
        "compact samples: one row per node per poll, keyed by time, with a key dictionary",
        # WITHOUT ROWID on (ts, node): the rows are stored in time order, so the replay's
        # window and the purge's old rows are one range each, with no second index to pay
        # for. AUTOINCREMENT: a purged key's id is never given to another key, so an id read
        # once means one key for good (readers cache them). The old `samples` stays as is.
        """
        CREATE TABLE sample_keys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            first_ts REAL NOT NULL,
            last_ts REAL NOT NULL
        );
        CREATE TABLE gpu_samples (
            ts REAL NOT NULL,
            node INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (ts, node)
        ) WITHOUT ROWID;
        CREATE TABLE engine_samples (
            ts REAL NOT NULL,
            node INTEGER NOT NULL,
            layout INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (ts, node)
        ) WITHOUT ROWID;
        """,
    ),
    (
        "one recorder of samples per database",
        # A TUI and `llmops watch` on one database poll the same fleet: only one of them
        # (the holder, while its heartbeat is fresh) writes samples and probe results, so a
        # week of them is not stored twice; events are written by every process.
        """
        CREATE TABLE recorder (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            heartbeat REAL NOT NULL
        );
        """,
    ),
)

# A recorder whose last write is older than this is gone: another process takes over.
RECORDER_STALE_S = 15.0

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
        # Sample keys this process wrote: key -> (id, earliest ts known written, last touch).
        self._key_ids: dict[str, tuple[int, float, float]] = {}
        # Sample keys read back, decoded: ids are never reused, so these never go stale.
        self._key_values: dict[int, tuple[str, Any]] = {}
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

    def _insert(
        self,
        tables: dict[str, list[dict[str, Any]]],
        gpus: Iterable[tuple[float, GpuReading]] = (),
        engines: Iterable[tuple[float, EngineStats]] = (),
    ) -> None:
        """Insert rows into several tables, and samples, in one transaction: all, or none."""
        tables = {table: rows for table, rows in tables.items() if rows}
        # In time order: appended to the last pages of the tables, which stay full.
        polls = dict(sorted(_polls(gpus).items()))
        scrapes = sorted(engines, key=lambda scrape: (scrape[0], scrape[1].node))
        if not (tables or polls or scrapes):
            return
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                if (polls or scrapes or "probes" in tables) and not self._records():
                    # Another console records this fleet's samples: ours would double them.
                    tables.pop("probes", None)
                    polls, scrapes = {}, []
                for table, rows in tables.items():
                    self.db.table(table).insert_all(rows)
                keys = _KeyWriter(self.conn, self._key_ids)
                # OR REPLACE: a second poll of a node at the same instant (a frozen clock)
                # stands for the first, as the engine windows take it.
                self.conn.executemany(
                    "INSERT OR REPLACE INTO gpu_samples (ts, node, data) VALUES (?, ?, ?)",
                    [
                        (ts, keys.id(_node_key(node), ts), _pack_gpus(readings, keys, ts))
                        for (ts, node), readings in polls.items()
                    ],
                )
                self.conn.executemany(
                    "INSERT OR REPLACE INTO engine_samples (ts, node, layout, data) "
                    "VALUES (?, ?, ?, ?)",
                    [_engine_row(ts, stats, keys) for ts, stats in scrapes],
                )
                self.conn.execute("COMMIT")
                keys.commit()  # only now: ids from a rolled-back write would not exist
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): a second ROLLBACK
                # would replace the real reason with "no transaction is active".
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _records(self) -> bool:
        """Whether this process is the database's recorder of samples, taking the place when
        it is free or its holder is gone (no write for RECORDER_STALE_S); inside the write
        transaction, so two processes never both take it."""
        me = (socket.gethostname(), os.getpid())
        now = time.time()
        row = self.conn.execute("SELECT host, pid, heartbeat FROM recorder WHERE id = 1").fetchone()
        if row is not None and (row[0], row[1]) != me and row[2] > now - RECORDER_STALE_S:
            return False
        self.conn.execute(
            "INSERT OR REPLACE INTO recorder (id, host, pid, heartbeat) VALUES (1, ?, ?, ?)",
            (*me, now),
        )
        return True

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
            {"probes": _probe_rows(probes), "events": [_event_row(**e) for e in events]},
            gpus,
            engines,
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
        self._insert({}, gpus=readings)

    def add_engine_samples(self, scrapes: Iterable[tuple[float, EngineStats]]) -> None:
        self._insert({}, engines=scrapes)

    # -- reading samples back (the replay)

    def read_samples(
        self,
        start: float,
        end: float,
        node: str | None = None,
        kinds: Collection[str] = ("gpus", "engine"),
    ) -> StoredSamples:
        """The GPU polls and engine scrapes (``kinds``) taken in ``[start, end]``, of one node
        or all, oldest first: the compact rows and any JSON rows an older console wrote."""
        with self._lock:
            where, params = "ts >= ? AND ts <= ?", [start, end]
            if node is not None:
                row = self.conn.execute(
                    "SELECT id FROM sample_keys WHERE key = ?", (_node_key(node),)
                ).fetchone()
                where, params = where + " AND node = ?", [start, end, row[0] if row else -1]
            gpu_rows = engine_rows = legacy = []
            if "gpus" in kinds:
                gpu_rows = self.conn.execute(
                    f"SELECT ts, node, data FROM gpu_samples WHERE {where} ORDER BY ts, node",
                    params,
                ).fetchall()
            if "engine" in kinds:
                engine_rows = self.conn.execute(
                    f"SELECT ts, node, layout, data FROM engine_samples WHERE {where} "
                    "ORDER BY ts, node",
                    params,
                ).fetchall()
            # The JSON rows name their kind "gpu" where the source is "gpus".
            old_kinds = [
                old for kind, old in (("gpus", "gpu"), ("engine", "engine")) if kind in kinds
            ]
            if old_kinds:
                legacy = self.conn.execute(
                    "SELECT ts, kind, node, subject, data FROM samples WHERE ts >= ? AND ts <= ? "
                    f"AND kind IN ({','.join('?' * len(old_kinds))})"
                    + (" AND node = ?" if node is not None else "")
                    + " ORDER BY ts, id",
                    [start, end, *old_kinds, *([node] if node is not None else [])],
                ).fetchall()
            self._load_keys({r[1] for r in gpu_rows} | {r[1] for r in engine_rows})
            self._load_keys({r[2] for r in engine_rows})
            if gpu_rows:  # the GPUs' keys are inside the rows: those in use at the time
                self._load_keys_in_use(gpu_rows[0][0], gpu_rows[-1][0])
        key = self._key
        gpus, engines = [], []
        # A row whose key is gone (a purge that raced a write) is left out, not the replay.
        for ts, node_id, data in gpu_rows:
            with contextlib.suppress(KeyError):
                name = key(node_id)[1]
                gpus.append(GpuPoll(ts, name, _unpack_gpus(name, _unpack(data), key)))
        for ts, node_id, layout, data in engine_rows:
            with contextlib.suppress(KeyError):
                stats = _unpack_engine(key(node_id)[1], key(layout)[1], data)
                engines.append(EngineScrape(ts, stats))
        old_gpus, old_engines = _legacy_samples(legacy)
        return StoredSamples(
            gpus=sorted([*gpus, *old_gpus], key=lambda p: p.ts),
            engines=sorted([*engines, *old_engines], key=lambda e: e.ts),
        )

    def _key(self, key_id: int) -> tuple[str, Any]:
        """One sample key, decoded: from the cache, or read now (without the lock held)."""
        value = self._key_values.get(key_id)
        if value is None:
            with self._lock:
                self._load_keys({key_id})
            value = self._key_values[key_id]
        return value

    def _load_keys_in_use(self, start: float, end: float) -> None:
        """Decode, in one query, the GPU keys rows of ``[start, end]`` may refer to: those
        first used before its end and last touched after its start (the lock is held)."""
        rows = self.conn.execute(
            "SELECT id, key FROM sample_keys WHERE first_ts <= ? AND last_ts >= ? "
            "AND key LIKE '[\"gpu\"%'",
            (end, start - KEY_TOUCH_S),
        ).fetchall()
        self._decode_keys(
            [(key_id, text) for key_id, text in rows if key_id not in self._key_values]
        )

    def _load_keys(self, ids: set[Any]) -> None:
        """Decode the sample keys not read yet (the caller holds the lock)."""
        missing = [i for i in ids if i not in self._key_values]
        for chunk in range(0, len(missing), 500):
            part = missing[chunk : chunk + 500]
            rows = self.conn.execute(
                f"SELECT id, key FROM sample_keys WHERE id IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            self._decode_keys(rows)

    def _decode_keys(self, rows: Iterable[tuple[int, str]]) -> None:
        for key_id, text in rows:
            kind, value = json.loads(text)
            # What a key stands for, made once: GpuReading fields, an engine's layout.
            if kind == "gpu":
                value = _gpu_fields(value, _GPU_KEY_FIELDS)
            elif kind == "engine":
                value = _engine_layout(value)
            self._key_values[key_id] = (kind, value)

    def sample_times(self, start: float, end: float) -> dict[tuple[str, str], float]:
        """The latest sample in ``[start, end]`` of each source, by ``(kind, node)``, where kind
        is ``gpus`` or ``engine`` (the hub's names for the sources)."""
        found: dict[tuple[str, str], float] = {}
        with self._lock:
            for kind, table in (("gpus", "gpu_samples"), ("engine", "engine_samples")):
                rows = self.conn.execute(
                    f"SELECT node, max(ts) FROM {table} WHERE ts >= ? AND ts <= ? GROUP BY node",
                    (start, end),
                ).fetchall()
                self._load_keys({r[0] for r in rows})
                for node_id, ts in rows:
                    found[(kind, self._key_values[node_id][1])] = ts
            legacy = self.conn.execute(
                "SELECT kind, node, max(ts) FROM samples WHERE ts >= ? AND ts <= ? "
                "GROUP BY kind, node",
                (start, end),
            ).fetchall()
        for kind, node, ts in legacy:
            source = ("gpus" if kind == "gpu" else "engine", node)
            found[source] = max(ts, found.get(source, ts))
        return found

    def sample_span(self) -> tuple[float, float] | None:
        """The first and last stored sample's time; None when there is none."""
        firsts, lasts = [], []
        with self._lock:
            for table in ("gpu_samples", "engine_samples", "samples"):
                first, last = self.conn.execute(f"SELECT min(ts), max(ts) FROM {table}").fetchone()
                if first is not None:
                    firsts.append(first)
                    lasts.append(last)
        return (min(firsts), max(lasts)) if firsts else None

    def read_probes(self, start: float, end: float) -> list[ProbeResult]:
        """The probe results started in ``[start, end]``, oldest first."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT endpoint, ts, ok, status, ttft_s, latency_s, prompt_tokens, "
                "completion_tokens, model, error FROM probes WHERE ts >= ? AND ts <= ? "
                "ORDER BY ts, id",
                (start, end),
            ).fetchall()
        return [
            ProbeResult(e, ts, bool(ok), status, ttft, latency, prompt, completion, model, error)
            for e, ts, ok, status, ttft, latency, prompt, completion, model, error in rows
        ]

    # -- retention

    def kept_spans(self) -> list[tuple[float, float]]:
        """The spans of time incidents need, merged, oldest first (closed; an open incident's
        ends at infinity): the purge keeps every sample and probe result inside them."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT opened_at, state, updated_at FROM incidents"
            ).fetchall()
        spans = sorted(
            (
                opened_at - INCIDENT_BEFORE_S,
                updated_at + INCIDENT_AFTER_S if state == "resolved" else math.inf,
            )
            for opened_at, state, updated_at in rows
        )
        merged: list[tuple[float, float]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def purge(self, now: float) -> dict[str, int]:
        """Drop samples and probe results past their retention, but for what an incident
        needs (:meth:`kept_spans`), and the sample keys no row left refers to; events are
        never purged. Returns how many rows went, per table.

        Rows go in batches of a time range (the ``ts`` index, or the key of the sample
        tables), one short transaction each, so the write lock is never held for long.
        """
        kept = self.kept_spans()
        removed: dict[str, int] = {}
        samples_cutoff = now - RETENTION_S["samples"]
        for table, cutoff, key in (
            ("gpu_samples", samples_cutoff, "ts, node"),
            ("engine_samples", samples_cutoff, "ts, node"),
            ("samples", samples_cutoff, "rowid"),
            ("probes", now - RETENTION_S["probes"], "rowid"),
        ):
            removed[table] = 0
            for after, before in _gaps(cutoff, kept):
                while True:
                    with self._lock:
                        cursor = self.conn.execute(
                            f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
                            "WHERE ts > ? AND ts < ? LIMIT ?)",
                            (after, before, PURGE_BATCH_ROWS),
                        )
                    removed[table] += cursor.rowcount
                    if cursor.rowcount < PURGE_BATCH_ROWS:
                        break
        removed["sample_keys"] = self._purge_keys(samples_cutoff, kept)
        return removed

    def _purge_keys(self, cutoff: float, kept: list[tuple[float, float]]) -> int:
        """Delete the sample keys last used before ``cutoff`` outside every kept span: no row
        refers to them (a row's key was last touched at most KEY_TOUCH_S before the row)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, first_ts, last_ts FROM sample_keys WHERE last_ts < ?",
                (cutoff - KEY_TOUCH_S,),
            ).fetchall()
        unused = [
            key_id
            for key_id, first, last in rows
            if not any(start <= last + KEY_TOUCH_S and first <= end for start, end in kept)
        ]
        removed = 0
        for chunk in range(0, len(unused), 500):
            part = unused[chunk : chunk + 500]
            with self._lock:
                # Unless a write touched it since it was read above: it is in use again.
                removed += self.conn.execute(
                    f"DELETE FROM sample_keys WHERE id IN ({','.join('?' * len(part))}) "
                    "AND last_ts < ?",
                    [*part, cutoff - KEY_TOUCH_S],
                ).rowcount
                # This process may hold one of them: the next write asks again.
                self._key_ids.clear()
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


@dataclass(frozen=True)
class GpuPoll:
    """One poll of one node's GPUs, as stored."""

    ts: float
    node: str
    gpus: tuple[GpuReading, ...]


@dataclass(frozen=True)
class EngineScrape:
    """One scrape of one node's engine, as stored."""

    ts: float
    stats: EngineStats


@dataclass(frozen=True)
class StoredSamples:
    gpus: list[GpuPoll]  # oldest first
    engines: list[EngineScrape]  # oldest first


# -- the packed numbers of a sample row

# Each value is one varint whose low two bits say what it is: None, an integer (zigzag in the
# other bits), or a double in the eight bytes that follow.
_NONE, _INT, _DOUBLE = 0, 1, 2
_F64 = struct.Struct("<d")


def _pack(values: Iterable[tuple[float | int | bool | None, int]]) -> bytes:
    """``(value, scale)`` pairs, deflated. A value is kept as ``round(value * scale)`` when
    that gives the value back exactly (2 decimals of watts at scale 1000), else as itself."""
    out = bytearray()
    for value, scale in values:
        if value is None:
            out.append(_NONE)
            continue
        code = _DOUBLE
        scaled = value * scale
        if math.isfinite(scaled) and abs(n := round(scaled)) < 2**63 and n / scale == value:
            zigzag = n << 1 if n >= 0 else ((-n) << 1) - 1
            code = (zigzag << 2) | _INT
        if code == _DOUBLE:
            out.append(_DOUBLE)
            out += _F64.pack(value)
            continue
        while code > 0x7F:
            out.append((code & 0x7F) | 0x80)
            code >>= 7
        out.append(code)
    # Raw deflate (no zlib header): rows are small, and the same codes repeat GPU after GPU.
    return zlib.compress(bytes(out), 6, wbits=-15)


def _unpack(data: bytes) -> list[int | float | None]:
    """The values :func:`_pack` wrote: scaled integers as int, doubles as float."""
    raw = zlib.decompress(data, wbits=-15)
    values: list[int | float | None] = []
    i, size = 0, len(raw)
    while i < size:
        code = shift = 0
        while True:
            byte = raw[i]
            i += 1
            code |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        kind = code & 3
        if kind == _NONE:
            values.append(None)
        elif kind == _INT:
            z = code >> 2
            values.append(z >> 1 if not z & 1 else -((z + 1) >> 1))
        else:
            values.append(_F64.unpack_from(raw, i)[0])
            i += 8
    return values


def _scaled(value: int | float | None, scale: int) -> float | None:
    return value / scale if isinstance(value, int) else value


# -- sample keys: what rarely changes, written once


def _key_text(kind: str, value: Any) -> str:
    return json.dumps([kind, value], sort_keys=True, separators=(",", ":"))


def _node_key(node: str) -> str:
    return _key_text("node", node)


class _KeyWriter:
    """The ids of the sample keys one write refers to, inserted or touched as needed."""

    def __init__(self, conn: sqlite3.Connection, known: dict[str, tuple[int, float, float]]):
        self._conn = conn
        self._known = known
        self._new: dict[str, tuple[int, float, float]] = {}

    def id(self, key: str, ts: float) -> int:
        entry = self._new.get(key) or self._known.get(key)
        if entry is not None:
            key_id, first, touched = entry
            if first <= ts < touched + KEY_TOUCH_S:
                return key_id
        row = self._conn.execute(
            "INSERT INTO sample_keys (key, first_ts, last_ts) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET first_ts = min(first_ts, excluded.first_ts), "
            "last_ts = max(last_ts, excluded.last_ts) RETURNING id",
            (key, ts, ts),
        ).fetchone()
        first = ts if entry is None else min(entry[1], ts)
        self._new[key] = (int(row[0]), first, max(ts, entry[2]) if entry else ts)
        return int(row[0])

    def commit(self) -> None:
        self._known.update(self._new)


# -- GPU polls

# A GPU's figures that change from poll to poll, in the order they are packed, with their
# scale. Every other field of GpuReading (but the node) is the GPU's key, written once; the
# memory its processes and MIG instances use changes too, and follows the figures.
_GPU_FIGURES: tuple[tuple[str, int], ...] = (
    ("util_pct", 1),
    ("memory_util_pct", 1),
    ("memory_used_mib", 256),  # NVML reads bytes: any multiple of 4 KiB is exact
    ("temperature_c", 1),
    ("power_w", 1000),  # NVML reads milliwatts, nvidia-smi prints 2 decimals
    ("sm_clock_mhz", 1),
    ("memory_clock_mhz", 1),
    ("fan_pct", 1),
    ("memory_temperature_c", 1),
    ("memory_reserved_mib", 256),
    ("throttle_reasons", 1),
    ("ecc_uncorrected", 1),
    ("ecc_corrected", 1),
    ("lost", 1),
)
_MIB_SCALE = 256
_GPU_INTS = frozenset({"throttle_reasons", "ecc_uncorrected", "ecc_corrected"})
_GPU_FIELDS = {f.name: f for f in dataclasses.fields(GpuReading)}
_GPU_READ_FIELDS = tuple(name for name in _GPU_FIELDS if name != "node")
_GPU_KEY_FIELDS = tuple(name for name in _GPU_READ_FIELDS if name not in dict(_GPU_FIGURES))


def _polls(
    readings: Iterable[tuple[float, GpuReading]],
) -> dict[tuple[float, str], list[GpuReading]]:
    """Readings grouped into polls: the writer stamps one poll's readings with one time."""
    polls: dict[tuple[float, str], list[GpuReading]] = {}
    for ts, reading in readings:
        polls.setdefault((ts, reading.node), []).append(reading)
    return polls


def _gpu_key(reading: GpuReading) -> str:
    key = {name: _jsonable(getattr(reading, name)) for name in _GPU_KEY_FIELDS}
    for name in ("processes", "mig_devices"):  # their memory is a figure
        for item in key[name] or ():
            del item["memory_used_mib"]
    return _key_text("gpu", key)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _pack_gpus(readings: Sequence[GpuReading], keys: _KeyWriter, ts: float) -> bytes:
    """Per GPU: its key's id, its figures, then the memory of each process and MIG instance
    its key lists (the key says how many)."""
    values: list[tuple[float | int | bool | None, int]] = []
    for r in readings:
        values.append((keys.id(_gpu_key(r), ts), 1))
        values.extend((getattr(r, name), scale) for name, scale in _GPU_FIGURES)
        values.extend((p.memory_used_mib, _MIB_SCALE) for p in r.processes or ())
        values.extend((m.memory_used_mib, _MIB_SCALE) for m in r.mig_devices)
    return _pack(values)


def _unpack_gpus(
    node: str, values: list[int | float | None], key: Callable[[int], Any]
) -> tuple[GpuReading, ...]:
    readings = []
    at = 0
    while at < len(values):
        key_id = values[at]
        assert isinstance(key_id, int)
        fields = dict(key(key_id)[1])
        at += 1
        for name, scale in _GPU_FIGURES:
            value = values[at]
            at += 1
            if name == "lost":
                fields[name] = bool(value)
            elif name in _GPU_INTS:
                fields[name] = value
            else:
                fields[name] = _scaled(value, scale)
        for name in ("processes", "mig_devices"):
            items = fields[name] or ()
            if items:
                memory = [_scaled(v, _MIB_SCALE) for v in values[at : at + len(items)]]
                at += len(items)
                fields[name] = tuple(
                    dataclasses.replace(item, memory_used_mib=m)
                    for item, m in zip(items, memory, strict=True)
                )
        readings.append(GpuReading(node=node, **fields))
    return tuple(readings)


def gpu_reading(node: str, fields: dict[str, Any]) -> GpuReading:
    """A GpuReading from stored fields (a key and figures, or an old JSON row)."""
    return GpuReading(node=node, **_gpu_fields(fields, _GPU_READ_FIELDS))


def _gpu_fields(fields: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The GpuReading fields ``names`` from stored JSON: lists back to tuples and records,
    a field not stored to its default (None where it has none; a key's process and MIG
    memory, which follow as figures)."""
    values: dict[str, Any] = {}
    for name in names:
        f = _GPU_FIELDS[name]
        if name not in fields:
            if f.default is not dataclasses.MISSING:
                values[name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[name] = f.default_factory()
            else:  # the old JSON rows left out the name and uuid, and every None
                values[name] = "" if name in ("uuid", "name") else None
            continue
        value = fields[name]
        if name == "mig_devices":
            value = tuple(MigDevice(**{"memory_used_mib": None, **d}) for d in value)
        elif name == "processes" and value is not None:
            value = tuple(GpuProcess(**{"memory_used_mib": None, **p}) for p in value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return values


# -- engine scrapes


def _engine_row(ts: float, e: EngineStats, keys: _KeyWriter) -> tuple[float, int, int, bytes]:
    """``(ts, node, layout, data)``: the layout key names the engine's series (family and
    labels, and a histogram's bounds) in the order their values are packed."""
    counters = [(family, labels) for family, series in e.counters.items() for labels in series]
    histograms = [
        (family, labels, [le for le, _ in hist.buckets])
        for family, series in e.histograms.items()
        for labels, hist in series.items()
    ]
    layout = {
        "engine": e.engine,
        "model_name": e.model_name,
        "counters": counters,
        "histograms": histograms,
    }
    values: list[tuple[float | int | bool | None, int]] = [
        (e.running, 1),
        (e.waiting, 1),
        (e.kv_cache_usage, 1),
    ]
    values += [(e.counters[family][labels], 1) for family, labels in counters]
    for family, labels, _ in histograms:
        values += _histogram_values(e.histograms[family][labels])
    return (
        ts,
        keys.id(_node_key(e.node), ts),
        keys.id(_key_text("engine", layout), ts),
        _pack(values),
    )


# How a histogram's counts are packed: each bucket less the one below it (most buckets of a
# latency histogram hold the same cumulative count, a difference of 0, one byte), or as they
# are where adding the differences back would not give them exactly (counts not integral).
_BY_DIFFERENCE, _AS_IS = 0, 1


def _histogram_values(hist: Histogram) -> list[tuple[float | int | bool | None, int]]:
    counts = [count for _, count in hist.buckets] + [hist.count]
    differences, below, total = [], 0.0, 0.0
    for count in counts:
        differences.append(count - below)
        total += count - below
        below = count
        if total != count:
            return [(_AS_IS, 1), *((c, 1) for c in counts), (hist.sum, 1)]
    return [(_BY_DIFFERENCE, 1), *((d, 1) for d in differences), (hist.sum, 1)]


def _number(value: int | float | None) -> float:
    assert value is not None  # counters and buckets are always written
    return float(value)


def _engine_layout(layout: dict[str, Any]) -> dict[str, Any]:
    """A layout key read back: labels as tuples, bounds as floats (``Infinity`` too)."""

    def labels(pairs: list[list[str]]) -> SeriesLabels:
        return tuple((k, v) for k, v in pairs)

    return {
        **layout,
        "counters": [(family, labels(pairs)) for family, pairs in layout["counters"]],
        "histograms": [
            (family, labels(pairs), tuple(float(le) for le in bounds))
            for family, pairs, bounds in layout["histograms"]
        ],
    }


def _unpack_engine(node: str, layout: dict[str, Any], data: bytes) -> EngineStats:
    values = iter(_unpack(data))
    running, waiting, kv = (_scaled(next(values), 1) for _ in range(3))
    counters: dict[str, dict[SeriesLabels, float]] = {}
    for family, labels in layout["counters"]:
        counters.setdefault(family, {})[labels] = _number(next(values))
    histograms: dict[str, dict[SeriesLabels, Histogram]] = {}
    for family, labels, bounds in layout["histograms"]:
        mode = next(values)
        counts, total = [], 0.0
        for _ in range(len(bounds) + 1):  # each bucket, then the count
            value = _number(next(values))
            total = total + value if mode == _BY_DIFFERENCE else value
            counts.append(total)
        buckets = tuple(zip(bounds, counts[:-1], strict=True))
        hist = Histogram(buckets, _number(next(values)), counts[-1])
        histograms.setdefault(family, {})[labels] = hist
    return EngineStats(
        node=node,
        model_name=layout["model_name"],
        running=running,
        waiting=waiting,
        kv_cache_usage=kv,
        counters=counters,
        histograms=histograms,
        engine=layout["engine"],
    )


# -- the JSON rows of schema 1 to 4


def json_sample_rows(
    gpus: Iterable[tuple[float, GpuReading]] = (),
    engines: Iterable[tuple[float, EngineStats]] = (),
) -> list[dict[str, Any]]:
    """``samples`` rows as consoles before schema 5 wrote them: to test that they are still
    read, and as the baseline the bench measures the compact rows against."""
    rows = [
        {
            "ts": ts,
            "kind": "gpu",
            "node": g.node,
            "subject": str(g.index),
            "data": json.dumps(
                {
                    k: v
                    for k, v in asdict(g).items()
                    if k not in ("node", "index", "name", "uuid") and v is not None
                }
            ),
        }
        for ts, g in gpus
    ]
    rows += [
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
        for ts, e in engines
    ]
    return rows


def _labels_text(labels: SeriesLabels) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels)


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _legacy_samples(
    rows: Iterable[tuple[float, str, str, str, str]],
) -> tuple[list[GpuPoll], list[EngineScrape]]:
    """Old JSON rows read back: a GPU's name and uuid were not kept, nor an engine's
    histograms (its latency percentiles are not known; its gauges and rates are)."""
    polls: dict[tuple[float, str], list[GpuReading]] = {}
    engines = []
    for ts, kind, node, subject, data in rows:
        values = json.loads(data)
        if kind == "gpu":
            values["index"] = int(subject)
            polls.setdefault((ts, node), []).append(gpu_reading(node, values))
        elif kind == "engine":
            counters = {
                family: {tuple(_LABEL.findall(text)): float(v) for text, v in series.items()}
                for family, series in values.get("counters", {}).items()
            }
            stats = EngineStats(
                node=node,
                model_name=subject or None,
                running=values.get("running"),
                waiting=values.get("waiting"),
                kv_cache_usage=values.get("kv_cache_usage"),
                counters=counters,
            )
            engines.append(EngineScrape(ts, stats))
    gpus = [GpuPoll(ts, node, tuple(r)) for (ts, node), r in polls.items()]
    return gpus, engines


def _gaps(cutoff: float, kept: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The open time ranges before ``cutoff`` outside the (closed, merged) kept spans."""
    gaps, after = [], -math.inf
    for start, end in kept:
        if start >= cutoff:
            break
        if start > after:
            gaps.append((after, start))
        after = max(after, end)
    if after < cutoff:
        gaps.append((after, cutoff))
    return gaps
