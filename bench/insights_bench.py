"""The UI's aggregates and exports over a big SQLite history, against a baseline side by side.

    python bench/insights_bench.py --tasks 1000000 --out bench/results/insights.md

Fills a SQLite store (in process, ``SqliteStore.put``) with ``--tasks`` finished tasks spread
over 48 hours (20 task types, ~6 % failures of 4 exception types, runtimes), then times, each
``--repeat`` times (medians quoted):

- the store's SQL answers (``store/sqlite_aggregates.py``): throughput, per-type statistics
  with percentiles and failure groups, for the 15 min, 1 h and 24 h windows;
- the baseline: the same answers computed in Python (``store/aggregates.py``) over the window's
  tasks read through the store's ``query`` (what a store without aggregates of its own does);
- a full CSV export through the keyset pages, with the process's RSS sampled per page: the
  export must not grow memory with the number of rows.

The machine is shared (2 cores): the load average is written with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celeriac.api.export import csv_lines  # noqa: E402
from celeriac.store import aggregates  # noqa: E402
from celeriac.store.base import TaskQuery  # noqa: E402
from celeriac.store.sqlite import SqliteStore  # noqa: E402

NAMES = [f"proj.tasks.t{i:02d}" for i in range(20)]
EXCEPTIONS = ["TaskError('no customer')", "KeyError('id')", "TimeoutError()",
              "ValueError('bad amount 12')"]
WINDOWS = {"15m": (30, 30), "1h": (60, 60), "24h": (900, 96)}


def fill(store: SqliteStore, n: int, now: float) -> None:
    rng = random.Random(11)
    for i in range(n):
        ts = now - (n - i) * (48 * 3600 / n)  # oldest first, as a live store fills
        failed = rng.random() < 0.06
        store.put({
            "uuid": f"{i:08d}-bench", "name": NAMES[i % len(NAMES)],
            "state": "FAILURE" if failed else "SUCCESS", "timestamp": ts,
            "received": ts - 0.5, "started": ts - 0.2, "worker": f"w{i % 8}@bench",
            "args": f"({i}, 'x')", "kwargs": "{}", "runtime": None if failed else rng.random(),
            "exception": rng.choice(EXCEPTIONS) if failed else None,
            "result": None if failed else str(i),
        })
        if i % 50_000 == 0:
            store.flush()
    store.flush()


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


class QueryOnly:
    """The store seen through ``query`` only: the baseline path of store/aggregates.py."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def query(self, q: TaskQuery) -> list[Any]:
        return self.store.query(q)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    proc = psutil.Process()
    load_before = os.getloadavg()
    lines = [f"# UI aggregates and export at {args.tasks:,} tasks (SQLite)", "",
             f"Python {platform.python_version()}, SQLite "
             f"{__import__('sqlite3').sqlite_version}, {os.cpu_count()} CPUs, load before "
             f"{load_before[0]:.2f}. Medians of {args.repeat} runs.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(str(Path(tmp) / "bench.db"))
        store.start()
        now = time.time()
        started = time.perf_counter()
        fill(store, args.tasks, now)
        lines.append(f"Filled in {time.perf_counter() - started:.1f} s.")
        lines += ["", "| question | window | SQL (store) | Python over query (baseline) "
                      "| ratio |", "|---|---|---|---|---|"]
        plain: Any = QueryOnly(store)
        for window, (bucket, count) in WINDOWS.items():
            since = (now // bucket) * bucket - (count - 1) * bucket
            cases = [
                ("throughput", aggregates.store_throughput),
                ("per type + percentiles", aggregates.store_type_stats),
                ("failure groups", aggregates.store_failure_groups),
            ]
            for label, fn in cases:
                sql_t, sql_r = timed(partial(fn, store, since, bucket), args.repeat)
                base_repeat = 1 if window == "24h" else args.repeat
                base_t, base_r = timed(partial(fn, plain, since, bucket), base_repeat)
                same = "" if sql_r == base_r else " (answers differ!)"
                lines.append(f"| {label} | {window} | {sql_t * 1000:.1f} ms | "
                             f"{base_t * 1000:.0f} ms | {base_t / sql_t:.0f}x{same} |")
                print(lines[-1], flush=True)
        # Export: every row, CSV, RSS sampled per page.
        rss0 = proc.memory_info().rss
        peak = rss0
        rows = 0
        start = time.perf_counter()
        for chunk in csv_lines(aggregates.store_matching(store, TaskQuery(), 1000), None):
            rows += chunk.count("\n")
            peak = max(peak, proc.memory_info().rss)
        export_s = time.perf_counter() - start
        lines += ["", f"Full CSV export: {rows - 1:,} rows in {export_s:.1f} s "
                      f"({(rows - 1) / export_s:,.0f} rows/s); RSS {rss0 / 2**20:.0f} MB before, "
                      f"peak {peak / 2**20:.0f} MB during (+{(peak - rss0) / 2**20:.1f} MB).",
                  "", f"Load after: {os.getloadavg()[0]:.2f}."]
        store.close()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
