"""PostgresStore and SqliteStore side by side: the same N tasks (3 events each), the same queries.

    python bench/pg_store_bench.py --tasks 1000000 --out bench/results/postgres.md

The workload, the pacing and the probes are ``bench/store_bench.py``'s (imported from there), so
the two stores' numbers compare directly. PostgreSQL is a private server started for the run
(``tests/fixtures/postgres.py``) with its durable defaults (fsync and synchronous_commit on)
and 128 MB of shared buffers, on the same machine, reached over TCP on 127.0.0.1. The stores
are loaded one after the other, never at the same time, so they do not share the 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import random
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
import store_bench  # noqa: E402

from celeriac.constants import TASK_FIELDS  # noqa: E402
from celeriac.store.base import TaskQuery, TaskRecord  # noqa: E402
from celeriac.store.postgres import PostgresStore  # noqa: E402
from celeriac.store.sqlite import SqliteStore  # noqa: E402
from tests.fixtures.postgres import PostgresServer  # noqa: E402

PROBES: list[tuple[str, Callable[[Any, list[str], random.Random], Any]]] = [
    ("latest 100 (`/api/tasks?limit=100`)", lambda s, _, __: s.query(TaskQuery(limit=100))),
    ("state=FAILURE, 100", lambda s, _, __: s.query(TaskQuery(state="FAILURE", limit=100))),
    ("state=SUCCESS, 100", lambda s, _, __: s.query(TaskQuery(state="SUCCESS", limit=100))),
    (
        "taskname=tasks.echo, offset 5000, 100",
        lambda s, _, __: s.query(TaskQuery(taskname="tasks.echo", offset=5000, limit=100)),
    ),
    (
        "sort_by=-received, 100",
        lambda s, _, __: s.query(TaskQuery(sort_by="received", descending=True, limit=100)),
    ),
    ("sort_by=name, 100", lambda s, _, __: s.query(TaskQuery(sort_by="name", limit=100))),
    (
        "search `boom 4259` (1 hit: args and exception)",
        lambda s, _, __: s.query(TaskQuery(search="boom 4259", limit=100)),
    ),
    (
        "search `args:payload` (15% of tasks)",
        lambda s, _, __: s.query(TaskQuery(search="args:payload", limit=100)),
    ),
    (
        "search `kwargs:user=123 OR result:12345`",
        lambda s, _, __: s.query(TaskQuery(search="kwargs:user=123 OR result:12345", limit=100)),
    ),
    ("get(uuid)", lambda s, sample, rng: s.get(rng.choice(sample))),
    ("count_by_state()", lambda s, _, __: s.count_by_state()),
]


def ingest(store: Any, n: int, lag: int, max_pending: int) -> tuple[float, list[str]]:
    """Feed store_bench's 3n events as the state would put them; return the seconds until the
    last one is written, and a sample of uuids. The feeder waits while more than
    ``max_pending`` tasks are unwritten, as a broker reader is paced by the broker."""
    t0 = time.perf_counter()
    live: dict[str, TaskRecord] = {}
    sample: list[str] = []
    states = {"task-received": "RECEIVED", "task-started": "STARTED",
              "task-succeeded": "SUCCESS", "task-failed": "FAILURE"}  # fmt: skip
    for count, (kind, fields) in enumerate(store_bench.events(n, lag)):
        u = fields["uuid"]
        record = live.get(u)
        if record is None:
            record = live[u] = dict.fromkeys(f for f in TASK_FIELDS if f != "children")
            record.update(uuid=u, state="PENDING")
            if len(sample) < 2000 and count % 97 == 0:
                sample.append(u)
        record.update({k: v for k, v in fields.items() if k in record and v is not None})
        record.update(worker=fields["hostname"], state=states[kind])
        record[{"task-received": "received", "task-started": "started",
                "task-succeeded": "succeeded", "task-failed": "failed"}[kind]] = fields[
            "timestamp"]  # fmt: skip
        store.put(record)
        if kind in ("task-succeeded", "task-failed"):
            live.pop(u, None)
        if count % 3000 == 0:
            while store.stats()["pending"] > max_pending:
                time.sleep(0.005)
    store.flush()
    return time.perf_counter() - t0, sample


def run(
    store: Any, a: argparse.Namespace, settle: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Load the tasks into ``store``, ``settle``, and time the probes; the store is closed
    after."""
    proc = psutil.Process()
    store.start()
    during: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.05):
            t = time.perf_counter()
            store.query(TaskQuery(limit=100))
            during.append((time.perf_counter() - t) * 1000)

    poller = threading.Thread(target=poll)
    poller.start()
    seconds, sample = ingest(store, a.tasks, a.lag, a.max_pending)
    done.set()
    poller.join()
    during.sort()
    stats = store.stats()
    rss = proc.memory_info().rss
    settled = time.perf_counter()
    if settle is not None:
        settle()
    settled = time.perf_counter() - settled
    rng = random.Random(7)
    rows = [
        (label, *store_bench.timed(functools.partial(fn, store, sample, rng), a.runs))
        for label, fn in PROBES
    ]
    store.close()
    return {
        "seconds": seconds, "written": stats["written"], "flushes": stats["flushes"],
        "rss": rss, "rows": rows, "during": during, "settle": settled,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--lag", type=int, default=2000, help="tasks between a task's events")
    ap.add_argument("--max-pending", type=int, default=50_000)
    ap.add_argument("--flush-interval", type=float, default=0.2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--sqlite-db", default="/tmp/celeriac-pg-bench/tasks.db")
    ap.add_argument("--out", default=None, help="markdown results file")
    ap.add_argument("--http", action="store_true",
                    help="instead: a real celeriac over HTTP on each store, fed through Redis "
                         "(bench/store_bench.py's run), PostgreSQL then SQLite")  # fmt: skip
    ap.add_argument("--backlog", type=int, default=10_000, help="--http: events ahead")
    ap.add_argument("--rounds", type=int, default=1, help="--http: times the probes are run")
    ap.add_argument("--stores", default="postgresql,sqlite",
                    help="--http: which stores, in order (postgresql, sqlite)")  # fmt: skip
    a = ap.parse_args()
    if a.http:
        return http(a)

    server = PostgresServer(durable=True).start()
    try:
        url = server.new_url("bench")

        def vacuum() -> None:  # what autovacuum does after a load, at once
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE tasks")

        pg = run(PostgresStore(url, flush_interval=a.flush_interval), a, vacuum)
        print(f"PostgreSQL: {pg['seconds']:.1f} s, {pg['rows']}", file=sys.stderr, flush=True)
        with psycopg.connect(url) as conn:
            size_row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            version_row = conn.execute("SHOW server_version").fetchone()
        pg_size = size_row[0] if size_row else 0
        version = version_row[0] if version_row else "?"
        pg_server_rss = _tree_rss(server.process.pid if server.process else None)
    finally:
        server.stop()

    shutil.rmtree(os.path.dirname(a.sqlite_db), ignore_errors=True)
    lite = run(SqliteStore(a.sqlite_db, flush_interval=a.flush_interval), a)
    print(f"SQLite: {lite['seconds']:.1f} s, {lite['rows']}", file=sys.stderr, flush=True)
    lite_size = sum(
        os.path.getsize(a.sqlite_db + s) for s in ("", "-wal") if os.path.exists(a.sqlite_db + s)
    )
    shutil.rmtree(os.path.dirname(a.sqlite_db), ignore_errors=True)

    events = 3 * a.tasks

    def rate(r: dict[str, Any]) -> str:
        return f"{r['seconds']:.1f} s, **{events / r['seconds']:,.0f} events/s**"

    def during(r: dict[str, Any]) -> str:
        d = r["during"]
        return f"{statistics.median(d):.1f} / {d[int(len(d) * 0.95) - 1]:.1f}" if d else "-"

    lines = [
        "# PostgresStore vs SqliteStore",
        "",
        f"Command: `python bench/pg_store_bench.py --tasks {a.tasks} --lag {a.lag} "
        f"--flush-interval {a.flush_interval} --runs {a.runs}`",
        "",
        f"Machine: {platform.machine()}, {psutil.cpu_count()} CPUs (shared with other work), "
        f"Python {platform.python_version()}, PostgreSQL {version} (private server on "
        f"127.0.0.1, fsync and synchronous_commit on, shared_buffers 128 MB), psycopg "
        f"{psycopg.__version__}. Date: {time.strftime('%Y-%m-%d')}. Same tasks, same order, "
        "one store after the other.",
        "",
        "| measure | PostgreSQL | SQLite |",
        "|---|---|---|",
        f"| tasks / events put | {a.tasks:,} / {events:,} | same |",
        f"| ingest, until the last event is written | {rate(pg)} | {rate(lite)} |",
        f"| rows written (after coalescing) / flushes | {pg['written']:,} / {pg['flushes']:,} "
        f"| {lite['written']:,} / {lite['flushes']:,} |",
        f"| database size | {pg_size / 1e6:,.0f} MB (after VACUUM ANALYZE, which took "
        f"{pg['settle']:.1f} s) | {lite_size / 1e6:,.0f} MB |",
        f"| RSS of the celeriac process after ingest | {pg['rss'] / 1e6:.0f} MB | "
        f"{lite['rss'] / 1e6:.0f} MB |",
        f"| RSS of the PostgreSQL server processes at the end | {pg_server_rss / 1e6:.0f} MB "
        "(shared memory counted in every process that touched it) | - |",
        f"| `latest 100` while ingesting, p50 / p95 ms | {during(pg)} | {during(lite)} |",
        "",
        f"Query latencies over {a.runs} runs each, in-process (no HTTP), reader connection warm:",
        "",
        "| query | PostgreSQL p50 / p95 ms | SQLite p50 / p95 ms | ratio of p50s (PG/SQLite) |",
        "|---|---|---|---|",
    ]
    for (label, p50, p95), (_, l50, l95) in zip(pg["rows"], lite["rows"], strict=True):
        lines.append(
            f"| {label} | {p50:.2f} / {p95:.2f} | {l50:.2f} / {l95:.2f} | "
            f"{p50 / l50 if l50 else float('nan'):.1f}x |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


def http(a: argparse.Namespace) -> None:
    """store_bench.py's HTTP run on both stores, one after the other, into one file."""
    workdir = Path("/tmp/celeriac-pg-http-bench")
    server = PostgresServer(durable=True).start()
    try:
        sections = []
        wanted = [x.strip() for x in a.stores.split(",") if x.strip()]
        for db in [server.new_url("http") if x == "postgresql" else None for x in wanted]:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            run = argparse.Namespace(**{**vars(a), "db": db, "reuse": False})
            sections.append(store_bench.run_http(run, workdir))
            print("\n".join(sections[-1]), file=sys.stderr, flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(
        [
            "# A real celeriac over HTTP: PostgreSQL and SQLite stores",
            "",
            f"Command: `python bench/pg_store_bench.py --http --tasks {a.tasks} --lag {a.lag} "
            f"--backlog {a.backlog} --runs {a.runs} --rounds {a.rounds} --stores {a.stores}`: "
            "bench/store_bench.py's HTTP run on a "
            "private PostgreSQL server (durable defaults, shared_buffers 128 MB), then on "
            "SQLite, one after the other on the same machine.",
            "",
            *[
                "#" + line.replace("at a million tasks", f"at {a.tasks:,} tasks")
                if line.startswith("# ") else line
                for part in sections for line in part
            ],
        ]
    )
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


def _tree_rss(pid: int | None) -> int:
    """RSS of a process and its descendants (processes that exit meanwhile count 0)."""
    if pid is None:
        return 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


if __name__ == "__main__":
    main()
