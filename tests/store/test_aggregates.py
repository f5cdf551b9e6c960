"""The aggregates behind the UI's charts, failure groups and exports: SQLite and PostgreSQL
answer in SQL what the memory store answers in Python, and all give the same numbers on the
same tasks. Each test of a persistent store runs on both backends (``db``), as in
``test_stores.py``."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac.store import aggregates
from celeriac.store.aggregates import (
    exception_type,
    percentiles,
    store_failure_groups,
    store_matching,
    store_throughput,
    store_type_stats,
)
from celeriac.store.base import TaskQuery, TaskRecord
from celeriac.store.memory import MemoryStore
from celeriac.store.postgres import PostgresStore
from celeriac.store.sqlite import SqliteStore
from tests.fixtures.postgres import PostgresServer

NOW = 1_800_000_000.0
STATES = ("SUCCESS", "SUCCESS", "SUCCESS", "FAILURE", "STARTED", "PENDING", "REVOKED")


def records(n: int, seed: int = 3) -> list[TaskRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        state = rng.choice(STATES)
        ts = None if i % 97 == 0 else NOW - rng.random() * rng.choice((600, 7200, 100_000))
        if i % 50 == 1:
            ts = NOW - 300.0  # ties: the same timestamp on several tasks
        out.append({
            "uuid": f"task-{i:05d}", "name": rng.choice(("a.add", "b.fail", "A.ADD", None)),
            "state": state, "timestamp": ts, "args": f"({i},)",
            "runtime": rng.choice((None, rng.random(), rng.randint(1, 3))),
            "exception": rng.choice(("KeyError('k')", "Boom", None, "ValueError()", "E(1)"))
            if state == "FAILURE" else None,
            "worker": rng.choice(("w1@h", "w2@h")),
        })
    return out


Db = SqliteStore | PostgresStore


@pytest.fixture(scope="module")
def memory() -> MemoryStore:
    store = MemoryStore(100_000)
    for r in records(2500):
        store.put(dict(r))
    return store


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Db]:
    """The same tasks in a persistent store, loaded once per module and backend (the tests
    only read)."""
    if request.param == "sqlite":
        store: Db = SqliteStore(str(tmp_path_factory.mktemp("agg") / "t.db"))
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        store = PostgresStore(server.new_url("aggregates"))
    for r in records(2500):
        store.put(dict(r))
    assert store.flush()
    yield store
    store.close()


@pytest.fixture
def stores(memory: MemoryStore, db: Db) -> tuple[MemoryStore, Db]:
    return memory, db


@pytest.mark.parametrize(("since", "bucket"), [(NOW - 900, 30), (NOW - 3600, 60),
                                               (NOW - 86400, 900), (0.0, 1e9)])
def test_both_stores_give_the_same_numbers(
    stores: tuple[MemoryStore, Db], since: float, bucket: float
) -> None:
    memory, db = stores
    assert db.throughput(since, bucket) == aggregates.throughput(
        memory.query(TaskQuery()), since, bucket)
    assert store_throughput(db, since, bucket) == store_throughput(memory, since, bucket)
    assert store_type_stats(db, since, bucket) == store_type_stats(memory, since, bucket)
    assert store_type_stats(db, since, bucket, "a.ADD") == store_type_stats(
        memory, since, bucket, "a.ADD")
    assert store_failure_groups(db, since, bucket) == store_failure_groups(
        memory, since, bucket)


def test_counts_are_right(stores: tuple[MemoryStore, Db]) -> None:
    _, db = stores
    rows = records(2500)
    since = NOW - 3600
    recent = [r for r in rows if r["timestamp"] is not None and r["timestamp"] >= since]
    buckets = db.throughput(since, 60)
    assert sum(b.succeeded for b in buckets) == sum(r["state"] == "SUCCESS" for r in recent)
    assert sum(b.failed for b in buckets) == sum(r["state"] == "FAILURE" for r in recent)
    groups = db.failure_groups(since, 60)
    assert sum(g.count for g in groups) == sum(r["state"] == "FAILURE" for r in rows)
    assert {g.exception_type for g in groups} == {"KeyError", "Boom", "", "ValueError", "E"}
    for g in groups:
        assert g.first is not None and g.last is not None and g.first <= g.last
        assert sum(g.series.values()) <= g.count
    whole = db.task_type_stats(since, 3600.0)
    assert {t.index for t in whole} == {0}


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles([]) == (None, None, None)
    assert percentiles([5.0]) == (5.0, 5.0, 5.0)
    values = [float(v) for v in range(1, 101)]
    random.Random(1).shuffle(values)
    assert percentiles(values) == (50.0, 90.0, 99.0)
    assert exception_type("TaskError('a (b)')") == "TaskError"
    assert exception_type(None) == "" and exception_type("Boom") == "Boom"


@pytest.mark.parametrize("batch", [1, 7, 1000])
@pytest.mark.parametrize("query", [TaskQuery(), TaskQuery(state="failure"),
                                   TaskQuery(taskname="a.add", workername="w1@h"),
                                   TaskQuery(search="12"  " AND a.add"),
                                   TaskQuery(received_start=NOW - 10)])
def test_matching_pages_hold_every_match_once_newest_first(
    stores: tuple[MemoryStore, Db], query: TaskQuery, batch: int
) -> None:
    memory, db = stores
    pages = list(store_matching(db, query, batch))
    assert all(len(p) == batch for p in pages[:-1])
    got = [r["uuid"] for p in pages for r in p]
    assert len(got) == len(set(got))
    expected = db.query(query)  # the table's own answer, newest first
    assert got == [r["uuid"] for r in expected]
    assert sorted(got) == sorted(r["uuid"] for p in store_matching(memory, query) for r in p)
    assert got[-1:] == [] or db.get(got[-1]) is not None


def test_a_malformed_search_raises_before_any_page(
    stores: tuple[MemoryStore, Db]
) -> None:
    for store in stores:
        with pytest.raises(ValueError, match="missing"):
            store_matching(store, TaskQuery(search="(a.add"))


def test_throughput_reads_only_the_state_index(stores: tuple[MemoryStore, Db]) -> None:
    _, sqlite = stores
    if not isinstance(sqlite, SqliteStore):
        pytest.skip("SQLite's plan")
    conn = sqlite3.connect(sqlite.path)
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT CAST((timestamp - 0) / 60 AS INTEGER) AS b, "
        "sum(state = 'SUCCESS') FROM tasks WHERE state IN ('SUCCESS', 'FAILURE') "
        "AND timestamp >= 0 GROUP BY b"))
    conn.close()
    assert "COVERING INDEX tasks_state" in plan, plan


def test_postgresql_throughput_can_read_only_the_state_time_index(
    stores: tuple[MemoryStore, Db]
) -> None:
    # v3's plain (state, timestamp) index holds every column the chart's statement reads.
    _, pg = stores
    if not isinstance(pg, PostgresStore):
        pytest.skip("PostgreSQL's plan")
    with pg._reader() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = " ".join(str(r[0]) for r in conn.execute(
            "EXPLAIN SELECT trunc((timestamp - 0) / 60)::bigint AS b, "
            "count(*) FILTER (WHERE state = 'SUCCESS') FROM tasks "
            "WHERE state IN ('SUCCESS', 'FAILURE') AND timestamp >= 0 GROUP BY b"))
    assert "Index Only Scan using tasks_state_time" in plan, plan


class PlainStore:
    """A store with nothing but ``query``: read through pages."""

    def __init__(self, inner: Db) -> None:
        self.inner = inner
        self.calls: list[TaskQuery] = []

    def query(self, q: TaskQuery) -> list[TaskRecord]:
        self.calls.append(q)
        return self.inner.query(q)


def test_a_store_without_aggregates_is_read_in_pages(
    stores: tuple[MemoryStore, Db], monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, db = stores
    plain: Any = PlainStore(db)
    monkeypatch.setattr(aggregates, "FALLBACK_PAGE", 100)
    since = NOW - 900
    assert store_throughput(plain, since, 30) == store_throughput(memory, since, 30)
    assert all(q.limit == 100 for q in plain.calls)
    assert len(plain.calls) < 2500 / 100  # stopped at the window's oldest task
    assert store_type_stats(plain, since, 30) == store_type_stats(memory, since, 30)
    assert store_failure_groups(plain, since, 30) == store_failure_groups(memory, since, 30)
    got = [r["uuid"] for p in store_matching(plain, TaskQuery(state="FAILURE"), 33) for r in p]
    assert got == [r["uuid"] for r in db.query(TaskQuery(state="FAILURE"))]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize(("since", "bucket"), [(NOW - 900, 30), (NOW - 0.3, 0.1), (7.0, 3)])
def test_throughput_counts_each_bucket_to_the_last_double(
    tmp_path: Any, since: float, bucket: float, kind: str, request: pytest.FixtureRequest
) -> None:
    # Tasks on, just before and just after every bucket edge, int timestamps, and a clock far
    # ahead (past the buckets counted as index ranges): the same numbers as in memory.
    import math

    from celeriac.store.aggregates import MAX_RANGES

    stamps: list[float] = [since + 2.5 * bucket, since + 1e9 * bucket, since + MAX_RANGES * bucket]
    for i in range(12):
        edge = since + i * bucket
        stamps += [edge, math.nextafter(edge, -math.inf), math.nextafter(edge, math.inf)]
        stamps += [float(int(edge)), int(edge) + 1]
    store: Db
    if kind == "sqlite":
        store = SqliteStore(str(tmp_path / "edges.db"))
    else:
        store = PostgresStore(request.getfixturevalue("postgres_server").new_url("edges"))
    tasks = [{"uuid": f"e{n}", "name": "a.add", "state": ("SUCCESS", "FAILURE")[n % 2],
              "timestamp": ts} for n, ts in enumerate(stamps)]  # fmt: skip
    try:
        for t in tasks:
            store.put(dict(t))
        assert store.flush()
        got = store.throughput(since, bucket)
        assert got == aggregates.throughput(tasks, since, bucket)
        assert sum(b.succeeded + b.failed for b in got) == sum(ts >= since for ts in stamps)
    finally:
        store.close()
