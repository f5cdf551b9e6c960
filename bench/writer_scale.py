"""The SQLite writer's CPU per task as the database grows, and per statement.

Flushes of ``-F`` finished tasks (their 3 events in one flush, the harness' case) into one
growing database, on this thread (``writer_process=False``, so that its statements can be
timed), with the thread CPU of each flush and of its main statements. ``--pragma`` tries a
writer setting (``--pragma cache_size=-131072``); ``--drop`` an index, to see what it costs.

    python bench/writer_scale.py -k 100000 -F 5000
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest_cpu import TimedConnection, events

from celeriac.state import State
from celeriac.store.sqlite import SqliteStore


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("-k", type=int, default=100_000, help="tasks (3 events each)")
    ap.add_argument("-F", type=int, default=5_000, help="tasks per flush")
    ap.add_argument("--pragma", action="append", default=[], help="PRAGMA for the writer")
    ap.add_argument("--drop", action="append", default=[], help="an index to drop first")
    a = ap.parse_args()
    evs = events(a.k)
    print(f"load average before {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.sqlite3")
        store = SqliteStore(path, max_tasks=10**7, max_pending=10**7, writer_process=False)
        writer = store._writer
        for index in a.drop:
            writer._conn.execute(f"DROP INDEX {index}")  # type: ignore[union-attr]
        for pragma in a.pragma:
            writer._conn.execute(f"PRAGMA {pragma}")  # type: ignore[union-attr]
        timed: collections.defaultdict[str, float] = collections.defaultdict(float)
        writer._conn = TimedConnection(writer._conn, timed)  # type: ignore[union-attr]
        state = State(store)
        flushes = []
        for i in range(0, len(evs), 3 * a.F):
            state.apply(evs[i : i + 3 * a.F])
            timed.clear()
            c0 = time.thread_time()
            store._flush_once()
            flushes.append(((time.thread_time() - c0) / a.F * 1e6, dict(timed)))
        n = len(flushes)
        size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
        for j in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):
            cpu, parts = flushes[j]
            top = sorted(parts.items(), key=lambda kv: -kv[1])[:4]
            detail = "  ".join(f"{k[:24]} {v / a.F * 1e6:.1f}" for k, v in top)
            print(f"flush {j:3d} ({(j + 1) * a.F:,} tasks): {cpu:6.1f} µs CPU per task  {detail}")
        print(
            f"mean {sum(f[0] for f in flushes) / n:.1f} µs per task, last quarter "
            f"{sum(f[0] for f in flushes[3 * n // 4 :]) / (n - 3 * n // 4):.1f}; database "
            f"{size / 1e6:.0f} MB with its WAL (k={a.k}, F={a.F}, pragmas {a.pragma}, "
            f"dropped {a.drop})"
        )
        store.close()
    print(f"load average after {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
