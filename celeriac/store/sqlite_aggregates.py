"""The aggregate questions of :mod:`celeriac.store.aggregates`, answered in SQL for SqliteStore.

Each statement is bounded by the indexes the schema has (see ``migrations.py``):

- throughput reads only the ``tasks_state (state, timestamp)`` index: both columns it needs are
  in it, so a day of a million tasks is counted without touching the table;
- per-type statistics and failure groups range over the same index (or ``tasks_name`` when one
  type is asked for) and read the rows of that window only; percentiles are computed by SQLite's
  window functions, not in Python;
- exports page with a keyset on ``(timestamp, rowid)``, the order of ``tasks_timestamp``, so the
  millionth row costs what the first did and no read transaction stays open between pages.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from celeriac.constants import FAILURE, SUCCESS
from celeriac.store.aggregates import PERCENTILES, Bucket, FailureGroup, TypeBucket, sort_groups
from celeriac.store.base import TaskRecord
from celeriac.store.migrations import TASK_COLUMNS

Cond = tuple[str, tuple[Any, ...]]

_BUCKET = "CAST((timestamp - :since) / :bucket AS INTEGER)"
_ETYPE = (
    "CASE WHEN instr(exception, '(') > 0 THEN substr(exception, 1, instr(exception, '(') - 1) "
    "ELSE coalesce(exception, '') END"
)


def throughput(conn: sqlite3.Connection, since: float, bucket: float) -> list[Bucket]:
    sql = (
        f"SELECT {_BUCKET} AS b, sum(state = :ok), sum(state = :bad) FROM tasks "
        "WHERE state IN (:ok, :bad) AND timestamp >= :since GROUP BY b ORDER BY b"
    )
    args = {"since": since, "bucket": bucket, "ok": SUCCESS, "bad": FAILURE}
    return [Bucket(int(b), int(ok), int(bad)) for b, ok, bad in conn.execute(sql, args)]


def task_type_stats(
    conn: sqlite3.Connection, since: float, bucket: float, name: str | None
) -> list[TypeBucket]:
    # One pass over the window's rows: counts, and the nearest-rank percentiles of the
    # succeeded runtimes from their row numbers within (name, bucket), all in SQLite.
    by_name = "AND name = :name COLLATE NOCASE" if name else "AND +name IS NOT NULL"
    timed = "(state = :ok AND typeof(runtime) IN ('integer', 'real'))"
    ranks = ", ".join(
        f"max(CASE WHEN timed AND rn = (n * {p} + 99) / 100 THEN runtime END)"
        for p in PERCENTILES
    )
    sql = (
        f"WITH f AS (SELECT name, {_BUCKET} AS b, state, runtime, {timed} AS timed FROM tasks "
        f"WHERE state IN (:ok, :bad) AND timestamp >= :since {by_name}), "
        "r AS (SELECT *, row_number() OVER (PARTITION BY name, b, timed ORDER BY runtime) AS rn, "
        "count(*) OVER (PARTITION BY name, b, timed) AS n FROM f) "
        "SELECT name, b, sum(state = :ok), sum(state = :bad), "
        f"coalesce(max(CASE WHEN timed THEN n END), 0), {ranks} "
        "FROM r GROUP BY name, b ORDER BY name, b"
    )
    args = {"since": since, "bucket": bucket, "ok": SUCCESS, "bad": FAILURE, "name": name}
    return [
        TypeBucket(str(task), int(b), int(ok), int(bad), int(n), *pct)
        for task, b, ok, bad, n, *pct in conn.execute(sql, args)
    ]


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
