"""The per-type statistics and throughput chart's SQL over a big window, one source tree at a time.

    python bench/insights_sql_bench.py --tasks 1000000 --backend sqlite --db /tmp/x.db
    python bench/insights_sql_bench.py --tasks 1000000 --backend postgresql
    python bench/insights_sql_bench.py ... --src /tmp/old   # a `git archive` of another commit

Unlike ``insights_bench.py`` (which fills through ``SqliteStore.put``, ~1 h at a million tasks on
this machine) the rows are inserted straight into the schema of the tree under test (its
migrations), so a before/after pair reads the same data: ``--tasks`` finished tasks, all in the
last hour (the worst case for the 1 h and 24 h windows), 20 task types, ~6 % failures. A SQLite
file given with ``--db`` is kept and reused when it exists; PostgreSQL is a private server with
durable defaults (``tests/fixtures/postgres.py``), VACUUM ANALYZEd after the load as autovacuum
would. Each question is timed ``--repeat`` times through the store's aggregate module on one
reader connection; medians are printed with the load average and a
CRC of each answer (equal CRCs: the same answer, to compare two trees).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAMES = [f"proj.tasks.t{i:02d}" for i in range(20)]
EXC = ["TaskError('no customer')", "KeyError('id')", "TimeoutError()", "ValueError('x 12')"]
COLS = ("uuid", "name", "state", "timestamp", "received", "started", "worker", "args",
        "kwargs", "runtime", "exception", "result")  # fmt: skip
NOW = 1_790_000_000.0
WINDOWS = {"1h": (60, 60), "24h": (900, 96)}


def rows(n: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(11)
    for i in range(n):
        ts = NOW - (n - i) * (3600 / n)
        failed = rng.random() < 0.06
        yield (f"{i:08d}-bench", NAMES[i % 20], "FAILURE" if failed else "SUCCESS", ts,
               ts - 0.5, ts - 0.2, f"w{i % 8}@bench", f"({i}, 'x')", "{}",
               None if failed else rng.random(), rng.choice(EXC) if failed else None,
               None if failed else str(i))  # fmt: skip


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def run(label: str, mod: Any, conn: Any, repeat: int) -> None:
    for window, (bucket, count) in WINDOWS.items():
        since = (NOW // bucket) * bucket - (count - 1) * bucket
        for what, fn in (
            ("throughput", partial(mod.throughput, conn, since, bucket)),
            ("per type + percentiles", partial(mod.task_type_stats, conn, since, bucket, None)),
            ("one type", partial(mod.task_type_stats, conn, since, bucket, NAMES[3])),
        ):
            med, times, result = timed(fn, repeat)
            print(f"| {label} | {what} | {window} | {med * 1000:,.0f} ms | "
                  f"{', '.join(f'{t * 1000:.0f}' for t in times)} | {len(result)} rows "
                  f"| {zlib.crc32(repr(result).encode()):08x} |", flush=True)  # fmt: skip


def sqlite(args: argparse.Namespace) -> None:
    from celeriac.store import sqlite_aggregates
    from celeriac.store.migrations import migrate
    from celeriac.store.sqlite import READER_CACHE_KB

    path = Path(args.db)
    if not path.exists():
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
        conn.execute("BEGIN")
        marks = ", ".join("?" * len(COLS))
        conn.executemany(f"INSERT INTO tasks ({', '.join(COLS)}) VALUES ({marks})",
                         rows(args.tasks))  # fmt: skip
        conn.execute("COMMIT")
        conn.close()
    conn = sqlite3.connect(path, isolation_level=None)  # as SqliteStore's readers are set
    conn.execute("PRAGMA query_only = 1")
    conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KB:d}")
    run("sqlite", sqlite_aggregates, conn, args.repeat)


def postgresql(args: argparse.Namespace) -> None:
    import psycopg

    from celeriac.store import pg_aggregates
    from celeriac.store.pg_migrations import migrate
    from tests.fixtures.postgres import PostgresServer

    server = PostgresServer(durable=True).start()
    try:
        url = server.new_url("insights")
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            start = time.perf_counter()
            with conn.cursor() as cur, cur.copy(f"COPY tasks ({', '.join(COLS)}) FROM STDIN") as cp:
                for row in rows(args.tasks):
                    cp.write_row(row)
            conn.execute("VACUUM ANALYZE tasks")
            print(f"loaded and vacuumed in {time.perf_counter() - start:.0f} s", flush=True)

            @contextmanager
            def reader() -> Iterator[Any]:
                yield conn

            run("postgresql", pg_aggregates, reader, args.repeat)
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=300_000)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--db", default="/tmp/insights-sql-bench.db")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--src", default=str(ROOT), help="the celeriac tree to time")
    args = ap.parse_args()
    sys.path[:0] = [args.src, str(ROOT)]  # the tree under test; tests/fixtures from this one
    print(f"{args.backend}, {args.tasks:,} tasks, tree {args.src}, load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    (sqlite if args.backend == "sqlite" else postgresql)(args)
    print(f"load after {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
