"""The aggregate questions of :mod:`celeriac.store.aggregates`, answered in SQL for PostgresStore.

Same definitions as the memory and SQLite stores (the shared tests hold all three to the same
numbers), each one statement bounded by the indexes of ``pg_migrations.py``:

- a state condition is spelled twice, ``lower(state) IN (...) AND state IN (...)``: the first
  walks the ``tasks_state (lower(state), timestamp, id)`` index over the window, the second
  keeps the exact (case-sensitive) states the other stores count;
- except in the throughput chart, which needs only the states and timestamps: each bucket
  is a range count on ``tasks_state_time (state, timestamp)``, index only;
- a bucket is ``trunc((timestamp - since) / bucket)``, as Python's ``int()`` of a non-negative
  quotient; percentiles are ``percentile_disc``, which is the nearest rank (PostgreSQL takes
  row ``ceil(fraction * n)``: the same row for 50, 90 and 99 at every n, checked to 2 M);
- a failure group is counted in one pass grouped by (name, exception type, bucket), the
  buckets before ``since`` folded into one row: the group is their sum, its example the
  exception text of the row with the latest timestamp;
- exports page with a keyset on ``(timestamp, id)`` newest first, the order of
  ``tasks_timestamp`` read backwards, one short statement per page on a pooled reader, so
  no cursor or transaction stays open between pages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from celeriac.constants import FAILURE, SUCCESS
from celeriac.store.aggregates import (
    PERCENTILES,
    Bucket,
    FailureGroup,
    TypeBucket,
    bucket_edges,
    sort_groups,
)
from celeriac.store.base import TaskRecord

Reader = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]

_BUCKET = "trunc((timestamp - %(since)s) / %(bucket)s)::bigint"
_FINISHED = (
    "lower(state) IN (%(ok_l)s, %(bad_l)s) AND state IN (%(ok)s, %(bad)s) "
    "AND timestamp >= %(since)s"
)
#: Memory for one aggregate's sort or hash table (this transaction only). The planner cannot
#: tell how few buckets an expression over the timestamp makes, expects one group per row, and
#: with the default 4 MB sorts a window of a million rows on disk instead of hashing ~100
#: groups (measured: a sort to disk on 300 k rows took twice the scan).
_WORK_MEM = "64MB"


def _rows(reader: Reader, sql: str, args: dict[str, Any]) -> list[Any]:
    with reader() as conn, conn.transaction():
        conn.execute(f"SET LOCAL work_mem = '{_WORK_MEM}'")
        return conn.execute(sql, args).fetchall()
_ETYPE = "split_part(coalesce(exception, ''), '(', 1)"


def _args(since: float, bucket: float, **more: Any) -> dict[str, Any]:
    return {
        "since": float(since), "bucket": float(bucket), "ok": SUCCESS, "bad": FAILURE,
        "ok_l": SUCCESS.lower(), "bad_l": FAILURE.lower(), **more,
    }  # fmt: skip


def throughput(reader: Reader, since: float, bucket: float) -> list[Bucket]:
    # Each bucket is a range of ``tasks_state_time (state, timestamp)`` (v3), counted index
    # only, between exact edges (see sqlite_aggregates.throughput): grouping a million rows by
    # their bucket number sorted them all, on disk. Later buckets (a clock far ahead) are
    # grouped as before.
    since, bucket = float(since), float(bucket)
    if not (math.isfinite(since) and math.isfinite(bucket) and bucket > 0):
        return _grouped(reader, since, bucket, since)
    top_sql = (
        "SELECT max(timestamp) FROM tasks WHERE state = %(state)s AND timestamp >= %(since)s "
        "AND timestamp < 'infinity'"
    )
    count_sql = (
        "SELECT e.i, (SELECT count(*) FROM tasks WHERE state = %(ok)s AND timestamp >= e.lo "
        "AND timestamp < e.hi), (SELECT count(*) FROM tasks WHERE state = %(bad)s "
        "AND timestamp >= e.lo AND timestamp < e.hi) "
        "FROM unnest(%(lo)s::float8[], %(hi)s::float8[]) WITH ORDINALITY AS e(lo, hi, i) "
        "ORDER BY e.i"
    )
    with reader() as conn:
        tops = [
            (conn.execute(top_sql, {"state": state, "since": since}).fetchone() or (None,))[0]
            for state in (SUCCESS, FAILURE)
        ]
    finite = [float(t) for t in tops if t is not None]
    edges = bucket_edges(since, bucket, max(finite) if finite else None)
    out: list[Bucket] = []
    if len(edges) > 1:
        args = {"ok": SUCCESS, "bad": FAILURE, "lo": edges[:-1], "hi": edges[1:]}
        with reader() as conn:
            for i, ok, bad in conn.execute(count_sql, args).fetchall():
                if ok or bad:
                    out.append(Bucket(int(i) - 1, int(ok), int(bad)))
    return out + _grouped(reader, since, bucket, edges[-1])


def _grouped(reader: Reader, since: float, bucket: float, start: float) -> list[Bucket]:
    sql = (
        f"SELECT {_BUCKET} AS b, count(*) FILTER (WHERE state = %(ok)s), "
        f"count(*) FILTER (WHERE state = %(bad)s) FROM tasks WHERE state IN (%(ok)s, %(bad)s) "
        "AND timestamp >= %(start)s GROUP BY b ORDER BY b"
    )
    rows = _rows(reader, sql, _args(since, bucket, start=float(start)))
    return [Bucket(int(b), int(ok), int(bad)) for b, ok, bad in rows]


def task_type_stats(
    reader: Reader, since: float, bucket: float, name: str | None
) -> list[TypeBucket]:
    by_name = "AND lower(name) = lower(%(name)s)" if name else "AND name <> ''"
    timed = "state = %(ok)s AND runtime IS NOT NULL"
    sql = (
        f"SELECT name, {_BUCKET} AS b, count(*) FILTER (WHERE state = %(ok)s), "
        f"count(*) FILTER (WHERE state = %(bad)s), count(*) FILTER (WHERE {timed}), "
        f"percentile_disc(%(fractions)s::float8[]) WITHIN GROUP (ORDER BY runtime) "
        f"FILTER (WHERE {timed}) "
        f"FROM tasks WHERE {_FINISHED} {by_name} GROUP BY name, b ORDER BY name, b"
    )
    fractions = [p / 100 for p in PERCENTILES]
    rows = _rows(reader, sql, _args(since, bucket, name=name, fractions=fractions))
    none = (None,) * len(PERCENTILES)
    return [
        TypeBucket(str(task), int(b), int(ok), int(bad), int(n), *(pct or none))
        for task, b, ok, bad, n, pct in rows
    ]


def failure_groups(reader: Reader, since: float, bucket: float) -> list[FailureGroup]:
    # One pass: per (name, type, bucket), the rows before the window (or without a time) in a
    # bucket of NULL; the group is the sum of its rows.
    sql = (
        f"SELECT coalesce(name, ''), {_ETYPE}, "
        f"CASE WHEN timestamp >= %(since)s THEN {_BUCKET} END AS b, count(*), "
        "min(timestamp), max(timestamp), "
        "(array_agg(exception ORDER BY timestamp DESC NULLS LAST, id DESC))[1] "
        "FROM tasks WHERE lower(state) = %(bad_l)s AND state = %(bad)s GROUP BY 1, 2, 3"
    )
    rows = _rows(reader, sql, _args(since, bucket))
    groups: dict[tuple[str, str], FailureGroup] = {}
    for task, etype, b, count, first, last, example in rows:
        key = (str(task), str(etype))
        g = groups.get(key)
        if g is None:
            g = groups[key] = FailureGroup(key[0], key[1], 0, first, last, example)
        else:
            if first is not None and (g.first is None or first < g.first):
                g.first = first
            if last is not None and (g.last is None or last > g.last):
                g.last, g.example = last, example
        g.count += int(count)
        if b is not None:
            g.series[int(b)] = int(count)
    return sort_groups(groups.values())


def keyset_pages(
    reader: Reader,
    select: str,
    where: list[str],
    params: list[Any],
    record: Callable[[Any], TaskRecord],
    check: Callable[[TaskRecord], bool] | None,
    batch: int,
) -> Iterator[list[TaskRecord]]:
    """Matching tasks newest first (by timestamp, then last stored first), ``batch`` at a time;
    the tasks without a timestamp come last, as ``query`` orders them. ``select`` names
    ``id`` and ``timestamp`` first, then what ``record`` makes a task of; ``check``, when
    given, is a search applied in Python to the candidates ``where`` narrowed to."""
    out: list[TaskRecord] = []
    for with_time in (True, False):
        last: tuple[Any, int] | None = None
        while True:
            conds = [*where, "timestamp IS NOT NULL" if with_time else "timestamp IS NULL"]
            args = list(params)
            if last is not None and with_time:
                conds.append("(timestamp, id) < (%s, %s)")
                args.extend(last)
            elif last is not None:
                conds.append("id < %s")
                args.append(last[1])
            # NULLS LAST: the order of the (timestamp NULLS FIRST, id) indexes read backwards,
            # so a page is the next ``batch`` entries of an index, not a sort of all the rest.
            order = "timestamp DESC NULLS LAST, id DESC" if with_time else "id DESC"
            sql = (
                f"{select} WHERE " + " AND ".join(f"({c})" for c in conds)
                + f" ORDER BY {order} LIMIT %s"
            )  # fmt: skip
            with reader() as conn:
                rows = conn.execute(sql, [*args, batch]).fetchall()
            for row in rows:
                task = record(row[2:])
                if check is None or check(task):
                    out.append(task)
            while len(out) >= batch:
                yield out[:batch]
                out = out[batch:]
            if len(rows) < batch:
                break
            last = (rows[-1][1], rows[-1][0])
    if out:
        yield out
