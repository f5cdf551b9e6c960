"""Load N synthetic tasks (3 events each) into SqliteStore and time the queries the API makes.

    python bench/store_bench.py --tasks 1000000 --out bench/results/store.md

Events go through ``put()`` as the ingest thread would send them: task-received, then
task-started and task-succeeded (or task-failed) a little later, interleaved with other tasks
so that a task's events do not always land in the same flush. The feeder backs off while more
than ``--max-pending`` tasks wait for the writer, as a broker reader would be paced by the
broker, so the rate reported is what the writer sustains, not how fast a dict fills.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celeriac.constants import TASK_FIELDS
from celeriac.store.base import TaskQuery, TaskRecord
from celeriac.store.sqlite import SqliteStore

WORKERS = [f"celery@fakeworker-{w:02d}" for w in range(8)]
NAMES = ["tasks.add"] * 14 + ["tasks.echo"] * 3 + ["tasks.sleep"] * 2 + ["tasks.error"]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/site-packages/celery/app/trace.py", line 453, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    '  File "/srv/app/tasks.py", line 38, in error\n'
    "    raise BenchError(msg)\n"
    "tasks.BenchError: boom {i}\n"
)


def received(i: int, ts: float) -> TaskRecord:
    u = str(uuid.UUID(int=random.getrandbits(128), version=4))
    name = NAMES[i % len(NAMES)]
    if name == "tasks.add":
        args, kwargs = f"({i}, {2 * i})", "{}"
    elif name == "tasks.echo":
        args, kwargs = f"('payload-{u[:8]}-{'x' * 40}',)", "{}"
    elif name == "tasks.sleep":
        args, kwargs = "()", f"{{'seconds': 0, 'user': {i % 1000}}}"
    else:
        args, kwargs = f"('boom {i}',)", "{}"
    record: TaskRecord = dict.fromkeys(f for f in TASK_FIELDS if f != "children")
    record.update(
        uuid=u, name=name, state="RECEIVED", args=args, kwargs=kwargs, received=ts, timestamp=ts,
        retries=0, clock=3 * i, worker=WORKERS[i % len(WORKERS)], root_id=u,
        exchange="", routing_key="celery",
    )  # fmt: skip
    return record


def started(record: TaskRecord, ts: float) -> None:
    record.update(state="STARTED", started=ts, timestamp=ts, clock=record["clock"] + 1)


def finished(record: TaskRecord, i: int, ts: float) -> None:
    record.update(timestamp=ts, clock=record["clock"] + 1)
    if record["name"] == "tasks.error":
        record.update(
            state="FAILURE", failed=ts, exception=f"BenchError('boom {i}')",
            traceback=TRACEBACK.format(i=i),
        )  # fmt: skip
    else:
        a = i if record["name"] != "tasks.echo" else record["args"][1:-2]
        result = repr(3 * i) if record["name"] == "tasks.add" else repr(a)
        record.update(state="SUCCESS", succeeded=ts, result=result, runtime=0.0005 + (i % 7) / 1e4)


def ingest(store: SqliteStore, n: int, lag: int, max_pending: int) -> tuple[float, list[str]]:
    """Feed 3n events; return the seconds until the last one is written, and a uuid sample."""
    t0 = time.perf_counter()
    base = time.time() - n / 1000  # a simulated 1000 tasks/s, ending now
    running: deque[tuple[int, TaskRecord]] = deque()
    starting: deque[tuple[int, TaskRecord]] = deque()
    sample: list[str] = []
    for i in range(n + 2 * lag):
        ts = base + i / 1000
        if i < n:
            record = received(i, ts)
            store.put(record)
            starting.append((i, record))
            if i % 997 == 0:
                sample.append(record["uuid"])
        if len(starting) > lag or (i >= n and starting):
            j, record = starting.popleft()
            started(record, ts)
            store.put(record)
            running.append((j, record))
        if len(running) > lag or (i >= n and running):
            j, record = running.popleft()
            finished(record, j, ts)
            store.put(record)
        if i % 1000 == 0:
            while store.stats()["pending"] > max_pending:
                time.sleep(0.005)
    store.flush()
    return time.perf_counter() - t0, sample


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    fn()  # warm the caches of this reader connection
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--db", default="/tmp/celeriac-store-bench/tasks.db")
    ap.add_argument("--lag", type=int, default=2000, help="tasks between a task's events")
    ap.add_argument("--max-pending", type=int, default=50_000)
    ap.add_argument("--flush-interval", type=float, default=0.2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", default=None, help="markdown results file")
    a = ap.parse_args()
    random.seed(42)
    shutil.rmtree(os.path.dirname(a.db), ignore_errors=True)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss

    store = SqliteStore(a.db, flush_interval=a.flush_interval)
    store.start()
    during: list[float] = []
    done = threading.Event()

    def poll() -> None:  # what an API client sees while the store ingests at full speed
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
    rss_ingest = proc.memory_info().rss
    size = sum(os.path.getsize(a.db + s) for s in ("", "-wal") if os.path.exists(a.db + s))

    rng = random.Random(7)
    probes: list[tuple[str, Callable[[], Any]]] = [
        ("latest 100 (`/api/tasks?limit=100`)", lambda: store.query(TaskQuery(limit=100))),
        ("state=FAILURE, 100", lambda: store.query(TaskQuery(state="FAILURE", limit=100))),
        ("state=SUCCESS, 100", lambda: store.query(TaskQuery(state="SUCCESS", limit=100))),
        (
            "taskname=tasks.echo, offset 5000, 100",
            lambda: store.query(TaskQuery(taskname="tasks.echo", offset=5000, limit=100)),
        ),
        (
            "sort_by=-received, 100",
            lambda: store.query(TaskQuery(sort_by="received", descending=True, limit=100)),
        ),
        ("sort_by=name, 100", lambda: store.query(TaskQuery(sort_by="name", limit=100))),
        (
            "search `boom 4259` (1 hit: args and exception)",
            lambda: store.query(TaskQuery(search="boom 4259", limit=100)),
        ),
        (
            "search `args:payload` (15% of tasks)",
            lambda: store.query(TaskQuery(search="args:payload", limit=100)),
        ),
        (
            "search `kwargs:user=123 OR result:12345`",
            lambda: store.query(TaskQuery(search="kwargs:user=123 OR result:12345", limit=100)),
        ),
        ("get(uuid)", lambda: store.get(rng.choice(sample))),
    ]
    rows = [(label, *timed(fn, a.runs)) for label, fn in probes]
    rss_end = proc.memory_info().rss
    store.close()

    events = 3 * a.tasks
    lines = [
        "# SqliteStore benchmark",
        "",
        f"Command: `python bench/store_bench.py --tasks {a.tasks} --lag {a.lag} "
        f"--flush-interval {a.flush_interval}`",
        "",
        f"Machine: {platform.machine()}, {psutil.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}. Date: "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| tasks / events put | {a.tasks:,} / {events:,} |",
        f"| ingest, until the last event is written | {seconds:.1f} s, "
        f"**{events / seconds:,.0f} events/s** ({a.tasks / seconds:,.0f} tasks/s) |",
        f"| rows written (after coalescing) | {stats['written']:,} in {stats['flushes']:,} "
        f"flushes |",
        f"| database size (file + WAL) | {size / 1e6:,.0f} MB |",
        f"| RSS: start / after ingest / after queries | {rss0 / 1e6:.0f} / "
        f"{rss_ingest / 1e6:.0f} / {rss_end / 1e6:.0f} MB |",
        "",
        f"Query latencies over {a.runs} runs each, in-process (no HTTP), reader connection warm:",
        "",
        "| query | p50 ms | p95 ms |",
        "|---|---|---|",
        *[f"| {label} | {p50:.2f} | {p95:.2f} |" for label, p50, p95 in rows],
        "",
        f"While ingesting at full speed, `latest 100` took p50 {statistics.median(during):.1f} ms"
        f", p95 {during[int(len(during) * 0.95) - 1]:.1f} ms (a reader thread, every 50 ms; "
        f"{len(during)} samples).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
