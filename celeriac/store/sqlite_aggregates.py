"""The aggregate questions of :mod:`celeriac.store.aggregates`, answered in SQL for SqliteStore.

Each statement is bounded by the indexes the schema has (see ``migrations.py``):

- throughput reads only the ``tasks_state (state, timestamp)`` index: both columns it needs are
  in it, so a day of a million tasks is counted without touching the table, one range count
  per bucket (no sort);
- per-type statistics and failure groups range over the same index (or ``tasks_name`` when one
  type is asked for) and read the rows of that window only, in one pass; the per-type
  percentiles are then picked in Python from each group's runtimes (SQLite's window functions
  sorted every row three times: 6-20 s at a million tasks, this 1.9 s; bench/results/insights.md);
- exports page with a keyset on ``(timestamp, rowid)``, the order of ``tasks_timestamp``, so the
  millionth row costs what the first did and no read transaction stays open between pages.
"""

from __future__ import annotations

import math
import sqlite3
from array import array
from collections.abc import Callable, Iterator
from typing import Any

from celeriac.constants import FAILURE, SUCCESS
from celeriac.store.aggregates import (
    PERCENTILES,
    Bucket,
    FailureGroup,
    TypeBucket,
    bucket_edges,
    percentiles,
    sort_groups,
)
from celeriac.store.base import TaskRecord
from celeriac.store.migrations import TASK_COLUMNS

Cond = tuple[str, tuple[Any, ...]]

_BUCKET = "CAST((timestamp - :since) / :bucket AS INTEGER)"
_ETYPE = (
    "CASE WHEN instr(exception, '(') > 0 THEN substr(exception, 1, instr(exception, '(') - 1) "
    "ELSE coalesce(exception, '') END"
)


def throughput(conn: sqlite3.Connection, since: float, bucket: float) -> list[Bucket]:
    # A bucket is a range of timestamps (the bucket number never decreases as the timestamp
    # grows), so each bucket's count is a range count on ``tasks_state (state, timestamp)``:
    # no sort. Grouping a million rows by their bucket number sorted them all (5x slower,
    # bench/results/insights.md). Edges are exact: the first double in each bucket.
    since, bucket = float(since), float(bucket)
    if not (math.isfinite(since) and math.isfinite(bucket) and bucket > 0):
        return _grouped(conn, since, bucket, since)
    top_sql = "SELECT max(timestamp) FROM tasks WHERE state = ? AND timestamp < 1e308"
    count_sql = (
        "SELECT (SELECT count(*) FROM tasks WHERE state = :ok AND timestamp >= :lo "
        "AND timestamp < :hi), (SELECT count(*) FROM tasks WHERE state = :bad "
        "AND timestamp >= :lo AND timestamp < :hi)"
    )
    out: list[Bucket] = []
    conn.execute("BEGIN")  # one snapshot for every statement
    try:
        tops = [conn.execute(top_sql, (state,)).fetchone()[0] for state in (SUCCESS, FAILURE)]
        tops = [float(t) for t in tops if isinstance(t, int | float)]
        edges = bucket_edges(since, bucket, max(tops) if tops else None)
        for i in range(len(edges) - 1):
            args = {"ok": SUCCESS, "bad": FAILURE, "lo": edges[i], "hi": edges[i + 1]}
            ok, bad = conn.execute(count_sql, args).fetchone()
            if ok or bad:
                out.append(Bucket(i, int(ok), int(bad)))
        out += _grouped(conn, since, bucket, edges[-1])
    finally:
        conn.execute("COMMIT")
    return out


def _grouped(conn: sqlite3.Connection, since: float, bucket: float, start: float) -> list[Bucket]:
    """The buckets of the tasks from ``start`` on (and any timestamp that is not a number),
    grouped by the bucket number."""
    sql = (
        f"SELECT {_BUCKET} AS b, sum(state = :ok), sum(state = :bad) FROM tasks "
        "WHERE state IN (:ok, :bad) AND timestamp >= :start GROUP BY b ORDER BY b"
    )
    args = {"since": since, "bucket": bucket, "ok": SUCCESS, "bad": FAILURE, "start": start}
    return [Bucket(int(b), int(ok), int(bad)) for b, ok, bad in conn.execute(sql, args)]


def task_type_stats(
    conn: sqlite3.Connection, since: float, bucket: float, name: str | None
) -> list[TypeBucket]:
    # SQLite gives the window's rows off an index (counted where they arrive); the
    # nearest-rank percentiles are picked in Python from each group's sorted runtimes.
    # Window functions (row_number, count OVER a partition) did it in SQL, three sorts that
    # spill: 6-20 s for a million tasks, 3.4x this. Runtimes are held as C doubles, 8 bytes
    # each, and sorted one group at a time (see bench/results/insights.md).
    by_name = "AND name = :name COLLATE NOCASE" if name else "AND +name IS NOT NULL"
    sql = (
        f"SELECT name, {_BUCKET}, state = :ok, "
        "CASE WHEN state = :ok AND typeof(runtime) IN ('integer', 'real') THEN runtime END "
        f"FROM tasks WHERE state IN (:ok, :bad) AND timestamp >= :since {by_name}"
    )
    args = {"since": since, "bucket": bucket, "ok": SUCCESS, "bad": FAILURE, "name": name}
    counts: dict[tuple[Any, int], list[int]] = {}
    runtimes: dict[tuple[Any, int], array[float]] = {}
    for task, b, ok, runtime in conn.execute(sql, args):
        key = (task, b)
        c = counts.get(key)
        if c is None:
            c = counts[key] = [0, 0]
        c[0 if ok else 1] += 1
        if runtime is not None:
            r = runtimes.get(key)
            if r is None:
                r = runtimes[key] = array("d")
            r.append(runtime)
    out = []
    for key in sorted(counts, key=_sqlite_order):
        ok, bad = counts[key]
        r = runtimes.get(key)
        pct = percentiles(r.tolist()) if r else (None,) * len(PERCENTILES)
        out.append(TypeBucket(str(key[0]), int(key[1]), ok, bad, len(r or ()), *pct))
    return out


def _sqlite_order(key: tuple[Any, int]) -> tuple[int, Any, int]:
    """SQLite's ORDER BY name, b: numbers, then text (by code point, as BINARY), then blobs."""
    value = key[0]
    kind = 0 if isinstance(value, int | float) else 1 if isinstance(value, str) else 2
    return (kind, value, key[1])


def failure_groups(conn: sqlite3.Connection, since: float, bucket: float) -> list[FailureGroup]:
    # A bare column beside max() comes from the row holding the max: the latest exception text.
    groups_sql = (
        f"SELECT coalesce(name, ''), {_ETYPE} AS et, count(*), min(timestamp), max(timestamp), "
        "exception FROM tasks WHERE state = :bad GROUP BY 1, 2"
    )
    series_sql = (
        f"SELECT coalesce(name, ''), {_ETYPE} AS et, {_BUCKET} AS b, count(*) FROM tasks "
        "WHERE state = :bad AND timestamp >= :since GROUP BY 1, 2, 3"
    )
    args = {"since": since, "bucket": bucket, "bad": FAILURE}
    conn.execute("BEGIN")
    try:
        groups = {
            (str(n), str(et)): FailureGroup(str(n), str(et), int(c), first, last, example)
            for n, et, c, first, last, example in conn.execute(groups_sql, args)
        }
        for n, et, b, c in conn.execute(series_sql, args):
            g = groups.get((str(n), str(et)))
            if g is not None:
                g.series[int(b)] = int(c)
    finally:
        conn.execute("COMMIT")
    return sort_groups(groups.values())


def keyset_pages(
    reader: Callable[[], sqlite3.Connection],
    where: list[Cond],
    check: Callable[[TaskRecord], bool],
    batch: int,
) -> Iterator[list[TaskRecord]]:
    """Matching tasks newest first (by timestamp, then last stored first), ``batch`` at a time.

    Each page is one short statement on the calling thread's reader: a generator driven from
    several threads (as a streaming response is) never leaves a cursor open between pages.
    Tasks without a timestamp come last. ``check`` is applied in Python (a text search).
    """
    cols = ", ".join(f"t.{c}" for c in TASK_COLUMNS)
    ts_at = 1 + TASK_COLUMNS.index("timestamp")
    base = [(sql, params) for sql, params in where]
    out: list[TaskRecord] = []
    for with_time in (True, False):
        last: tuple[Any, int] | None = None
        while True:
            conds = list(base)
            conds.append(("t.timestamp IS NOT NULL" if with_time else "t.timestamp IS NULL", ()))
            if last is not None and with_time:
                conds.append(("(t.timestamp, t.id) < (?, ?)", last))
            elif last is not None:
                conds.append(("t.id < ?", (last[1],)))
            order = "t.timestamp DESC, t.id DESC" if with_time else "t.id DESC"
            sql = (
                f"SELECT t.id, {cols} FROM tasks AS t WHERE "
                + " AND ".join(f"({c})" for c, _ in conds)
                + f" ORDER BY {order} LIMIT ?"
            )
            params = [p for _, ps in conds for p in ps]
            rows = reader().execute(sql, [*params, batch]).fetchall()
            for row in rows:
                record = dict(zip(TASK_COLUMNS, row[1:], strict=True))
                if check(record):
                    out.append(record)
            while len(out) >= batch:
                yield out[:batch]
                out = out[batch:]
            if len(rows) < batch:
                break
            last = (rows[-1][ts_at], rows[-1][0])
    if out:
        yield out
