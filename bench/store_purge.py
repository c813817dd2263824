"""Benchmark: the retention purge of GPU samples, and how long it holds SQLite's write lock.

Fills a store with an hour of samples of a 512-GPU fleet polled every 2 s (921,600 rows; a
day is 24 times that), the oldest half past retention, then purges it twice over identical
copies: the baseline as it was (one DELETE scanning the table), and the store's purge (short
batches found through the ``ts`` index). Prints both totals and the longest the write lock was
held, with their ratio.

    python bench/store_purge.py [--gpus 512] [--minutes 60]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.store import RETENTION_S, Store  # noqa: E402

DATA = '{"util_pct": 87, "memory_used_mib": 61234, "temperature_c": 64, "power_w": 512.3}'


def fill(path: Path, gpus: int, minutes: int, now: float) -> int:
    store = Store(path)
    start = now - RETENTION_S["samples"] - minutes * 30  # half of the rows past retention
    rows = [
        (start + tick * 2.0, "gpu", f"gpu-a{g // 8}", str(g % 8), DATA)
        for tick in range(minutes * 30)
        for g in range(gpus)
    ]
    with store.conn:
        store.conn.execute("BEGIN")
        store.conn.executemany(
            "INSERT INTO samples (ts, kind, node, subject, data) VALUES (?, ?, ?, ?, ?)", rows
        )
        store.conn.execute("COMMIT")
    store.close()
    return len(rows)


def baseline(path: Path, now: float) -> tuple[float, float]:
    """One DELETE over the table, as before the ts index: the lock is held throughout."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP INDEX samples_ts")
    started = time.perf_counter()
    conn.execute("DELETE FROM samples WHERE ts < ?", (now - RETENTION_S["samples"],))
    total = time.perf_counter() - started
    conn.close()
    return total, total


def batched(path: Path, now: float) -> tuple[float, float]:
    """The store's own purge; each batch is one short autocommitted DELETE."""
    store = Store(path)
    starts: list[float] = []
    # The trace callback fires as each statement starts: consecutive starts bound a batch.
    store.conn.set_trace_callback(
        lambda sql: starts.append(time.perf_counter()) if sql.startswith("DELETE") else None
    )
    started = time.perf_counter()
    store.purge(now)
    ended = time.perf_counter()
    store.close()
    bounds = [*starts, ended]
    longest = max(b - a for a, b in itertools.pairwise(bounds))
    return ended - started, longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=512)
    parser.add_argument("--minutes", type=int, default=60)
    args = parser.parse_args()
    now = time.time()
    folder = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    try:
        first = folder / "baseline.db"
        rows = fill(first, args.gpus, args.minutes, now)
        second = folder / "batched.db"
        shutil.copy(first, second)
        old_total, old_lock = baseline(first, now)
        new_total, new_lock = batched(second, now)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{rows} samples ({args.gpus} GPUs, {args.minutes} min at 2 s), half past retention")
    print(f"  one DELETE, full scan (baseline): {old_total:6.2f} s, lock held {old_lock:6.2f} s")
    print(f"  batches through the ts index:     {new_total:6.2f} s, lock held {new_lock:6.3f} s")
    print(f"  ratio of the longest lock hold: {new_lock / old_lock:.3f}")


if __name__ == "__main__":
    main()
