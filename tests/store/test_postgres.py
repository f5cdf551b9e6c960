"""PostgresStore against a real PostgreSQL server: the SQLite store's answers, durability,
retention, migrations, errors, and no password in any message.

The answers are held to the same references as the SQLite store's tests (``reference`` there:
MemoryStore's filters, the search predicate, the documented order), on the same data.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from celeriac.store.base import StoreError, TaskQuery
from celeriac.store.pg_migrations import MIGRATIONS, migrate, schema_version
from celeriac.store.pg_schema import ensure_schema, schema_name, with_schema
from celeriac.store.postgres import PostgresStore
from celeriac.store.search import SearchError, compile_search
from celeriac.store.sqlite import SqliteStore
from tests.fixtures import wait_for
from tests.fixtures.postgres import PostgresServer
from tests.store.test_persistence import (
    STOPPED,
    all_listed_final,
    info,
    listed,
    run_history,
)
from tests.store.test_search import QUERIES, corpus
from tests.store.test_sqlite import (
    FILTERS,
    SLICES,
    SORTS,
    T0,
    make,
    reference,
)


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(postgres_url, flush_interval=0.02)
    s.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def loaded(postgres_server: PostgresServer) -> Iterator[tuple[PostgresStore, list]]:
    rng = random.Random(1)
    records = [make(i, rng) for i in range(600)]
    s = PostgresStore(postgres_server.new_url("loaded"))
    for r in records:
        s.put(dict(r))
    assert s.flush()
    yield s, records
    s.close()


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "all")
def test_query_matches_reference(loaded, filters):
    store, records = loaded
    for (sort_by, desc), (limit, offset) in [(s, sl) for s in SORTS for sl in SLICES]:
        q = TaskQuery(limit=limit, offset=offset, sort_by=sort_by, descending=bool(desc), **filters)
        got, want = store.query(q), reference(records, q)
        assert [r["uuid"] for r in got] == [r["uuid"] for r in want], q
        assert got == want


def test_same_answers_as_the_sqlite_store(loaded, tmp_path):
    store, records = loaded
    lite = SqliteStore(str(tmp_path / "tasks.db"))
    try:
        for r in records:
            lite.put(dict(r))
        assert lite.flush()
        for filters in FILTERS:
            for sort_by, desc in SORTS:
                q = TaskQuery(limit=30, offset=3, sort_by=sort_by, descending=bool(desc), **filters)
                assert store.query(q) == lite.query(q), q
        for search in ("user3", '"bad 55"', "kwargs:user=user2 state:success", "app"):
            q = TaskQuery(limit=50, search=search)
            assert store.query(q) == lite.query(q), q
        assert store.task_types() == lite.task_types()
        assert store.count() == lite.count() == len(records)
        assert store.count_by_state() == lite.count_by_state()
        for r in records[:50]:
            assert store.get(r["uuid"]) == lite.get(r["uuid"])
    finally:
        lite.close()


@pytest.fixture(scope="module")
def searched(postgres_server: PostgresServer) -> Iterator[tuple[PostgresStore, list]]:
    records = corpus(900)
    store = PostgresStore(postgres_server.new_url("searched"))
    for r in records:
        store.put(dict(r))
    assert store.flush()
    yield store, records
    store.close()


@pytest.mark.parametrize("query", QUERIES)
def test_search_agrees_with_the_predicate(searched, query):
    store, records = searched
    match = compile_search(query)
    expected = sorted((r for r in records if match(r)), key=lambda r: r["timestamp"], reverse=True)
    assert store.query(TaskQuery(search=query)) == expected
    for limit, offset in [(10, 0), (5, 7)]:
        page = store.query(TaskQuery(search=query, limit=limit, offset=offset))
        assert page == expected[offset : offset + limit], query
    filtered = store.query(TaskQuery(search=query, state="SUCCESS", limit=20, sort_by="name"))
    assert [r["uuid"] for r in filtered] == [
        r["uuid"]
        for r in sorted(
            (r for r in expected if r["state"] == "SUCCESS"),
            key=lambda r: (r["name"].casefold(), r["timestamp"]),
        )[:20]
    ]


def test_search_uses_the_trigram_index(searched):
    store, _ = searched
    with psycopg.connect(store._url) as conn:
        conn.execute("SET enable_seqscan = off")  # a tiny table: make the planner show its hand
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM tasks WHERE " + _search_sql("args:alpha")[0],
                _search_sql("args:alpha")[1],
            )
        )
    assert "tasks_search" in plan, plan


def _search_sql(text: str) -> tuple[str, tuple[str, ...]]:
    from celeriac.store.pg_search import search_condition
    from celeriac.store.search import parse_search

    node = parse_search(text)
    assert node is not None
    found = search_condition(node)
    return found.sql, found.params


def test_like_wildcards_are_literal(store):
    store.put(make(1, args="('100%_done',)"))
    store.put(make(2, args="('100 done',)"))
    store.put(make(3, args="('a\\\\b',)"))
    assert store.flush()
    assert [r["uuid"] for r in store.query(TaskQuery(search="100%_"))] == ["task-00001"]
    assert [r["uuid"] for r in store.query(TaskQuery(search="a\\\\b"))] == ["task-00003"]
    assert store.query(TaskQuery(search="0%d")) == []
    # A qualified term is a regular expression on its field: its metacharacters are literal.
    store.put(make(4, args="('a.b[c]+(d)|e',)", kwargs="{}"))
    store.put(make(5, args="('axb[c]+(d)|e',)", kwargs="{'a.b': 1}"))
    assert store.flush()
    assert [r["uuid"] for r in store.query(TaskQuery(search="args:a.b[c]+(d)|e"))] == [
        "task-00004"
    ]
    assert [r["uuid"] for r in store.query(TaskQuery(search="kwargs:a.b=1"))] == ["task-00005"]
    assert [r["uuid"] for r in store.query(TaskQuery(search="kwargs:a.b"))] == ["task-00005"]


def test_malformed_search_raises(store):
    with pytest.raises(SearchError):
        store.query(TaskQuery(search='"open'))


def test_a_follower_does_not_write_or_prune(postgres_url, monkeypatch):
    leader = PostgresStore(postgres_url, flush_interval=0.01)
    leader.start()
    follower = PostgresStore(postgres_url, max_tasks=1, flush_interval=0.01)
    follower.set_writing(False)
    follower.start()
    try:
        for i in range(5):
            leader.put(make(i, state="SUCCESS"))
        follower.put(make(99))  # dropped: the leader writes
        assert leader.flush() and follower.flush()
        assert follower.count() == 5 and follower.get("task-00003") is not None
        assert follower.get("task-00099") is None
        monkeypatch.setattr(follower, "_names_read", 0.0)  # its copy of the names is stale
        assert follower.task_types() == leader.task_types() != []
        follower.set_writing(True)  # now it prunes to its max_tasks
        assert follower.flush() and follower.flush()
        assert leader.count() == 1
    finally:
        follower.close()
        leader.close()


def _v_next(conn: Any) -> None:
    conn.execute('ALTER TABLE tasks ADD COLUMN queue text COLLATE "C"')
    conn.execute("UPDATE tasks SET queue = routing_key")
    conn.execute("CREATE INDEX tasks_queue ON tasks (queue, timestamp, id)")


def test_a_database_is_upgraded_by_a_further_migration_without_losing_data(postgres_url):
    store = PostgresStore(postgres_url)
    records = [make(i) for i in range(20)]
    for r in records:
        store.put(r)
    store.close()
    with psycopg.connect(postgres_url) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
    upgraded = PostgresStore(postgres_url, migrations=(*MIGRATIONS, _v_next))
    try:
        assert upgraded.count() == 20
        assert upgraded.get("task-00003") == {**records[3], "children": []}
        assert upgraded.query(TaskQuery(search="bad 11"))[0]["uuid"] == "task-00011"
    finally:
        upgraded.close()
    with psycopg.connect(postgres_url) as conn:
        assert schema_version(conn) == len(MIGRATIONS) + 1
        count = conn.execute("SELECT count(*) FROM tasks WHERE queue = 'celery'").fetchone()
        assert count == (20,)


def test_a_failed_migration_leaves_the_previous_version(postgres_url):
    PostgresStore(postgres_url).close()

    def broken(conn: Any) -> None:
        conn.execute("ALTER TABLE tasks ADD COLUMN half_done text")
        conn.execute("THIS IS NOT SQL")

    with pytest.raises(StoreError, match="syntax error"):
        PostgresStore(postgres_url, migrations=(*MIGRATIONS, broken))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'"
        ).fetchall()
        assert ("half_done",) not in columns
        assert migrate(conn) == len(MIGRATIONS)


def test_instances_starting_together_migrate_once(postgres_url):
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == [] and len(stores) == 4
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT count(*) FROM schema_version").fetchone()
        assert versions == (len(MIGRATIONS),)


def test_a_newer_database_is_refused(postgres_url):
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(StoreError, match="schema version 99, newer than this celeriac knows"):
        PostgresStore(postgres_url)


def test_errors_never_show_the_password(postgres_server, caplog):
    wrong = postgres_server.url().replace(postgres_server.password, "s3cret-wrong")
    with pytest.raises(StoreError) as caught:
        PostgresStore(wrong)
    assert "s3cret-wrong" not in str(caught.value) and "password" in str(caught.value)
    gone = f"postgresql://celeriac:s3cret-gone@127.0.0.1:{postgres_server.port}/no_such_db"
    with pytest.raises(StoreError) as caught:
        PostgresStore(gone)
    assert "s3cret-gone" not in str(caught.value) and "no_such_db" in str(caught.value)
    store = PostgresStore(postgres_server.new_url("secret"))
    assert postgres_server.password not in repr(store)
    assert postgres_server.password not in store.where
    store.close()


def test_a_lost_connection_is_reopened_and_loses_nothing(store, caplog):
    store.put(make(1))
    assert store.flush()
    with psycopg.connect(store._url, autocommit=True) as admin:
        pid = store._conn.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with caplog.at_level(logging.ERROR, logger="celeriac.store.postgres"):
        for i in range(2, 50):
            store.put(make(i))
        assert store.flush(timeout=10) or store.flush(timeout=10)
    assert store.count() == 49
    assert store.stats()["write_errors"]  # counted
    for record in caplog.records:
        assert store._url.split(":")[2].split("@")[0] not in record.getMessage()


def test_a_real_celeriac_on_postgres_keeps_every_task_across_restarts(
    redis_broker, celery_worker, celeriac_server, postgres_url
):
    # SIGTERM writes everything; SIGKILL loses at most the last flush; the links survive.
    worker = celery_worker(redis_broker)
    monitor = celeriac_server(redis_broker, "--db", postgres_url)
    ids = run_history(redis_broker)
    wait_for(lambda: all_listed_final(monitor, list(ids.values())), 30, 0.1, "every task listed")
    assert monitor.client.get("/api/celeriac/status").json()["role"] == "leader"
    worker.stop()
    time.sleep(0.5)
    before = listed(monitor)
    infos = {i: info(monitor, i) for i in ids.values()}
    assert infos[ids["chain1"]]["children"] == [ids["chain2"]]
    assert infos[ids["chain3"]]["root_id"] == ids["chain1"]
    assert monitor.stop(signal.SIGTERM) in STOPPED
    password = postgres_url.split(":")[2].split("@")[0]
    assert password not in monitor.log_text() and "celeriac:***@" in monitor.log_text()

    again = celeriac_server(redis_broker, "--db", postgres_url)
    wait_for(lambda: again.client.get("/api/celeriac/status").json()["role"] == "leader", 10)
    assert listed(again) == before
    for task_id, shown in infos.items():
        assert info(again, task_id) == shown
    os.killpg(again.pid, signal.SIGKILL)
    again.proc.wait(timeout=10)
    third = celeriac_server(redis_broker, "--db", postgres_url)
    assert listed(third) == before


@pytest.mark.parametrize("sort", SORTS)
def test_deep_unfiltered_pages_are_found_in_the_index_first(postgres_url, sort):
    store = PostgresStore(postgres_url)
    try:
        rng = random.Random(5)
        records = [make(i, rng) for i in range(1300)]
        for r in records:
            store.put(dict(r))
        assert store.flush()
        sort_by, desc = sort
        for limit, offset in [(100, 1000), (7, 1293), (10, 1299), (10, 1300), (None, 1250)]:
            q = TaskQuery(limit=limit, offset=offset, sort_by=sort_by, descending=bool(desc))
            assert store.query(q) == reference(records, q), q
    finally:
        store.close()


def test_a_follower_hears_each_committed_batch_and_listens_again_after_a_drop(postgres_url):
    writer = PostgresStore(postgres_url, flush_interval=3600)  # flushed by hand below
    reader = PostgresStore(postgres_url)
    reader.set_writing(False)
    heard: list[dict[str, Any]] = []
    own: list[dict[str, Any]] = []
    try:
        assert writer.channel == reader.channel == "celeriac.public"
        reader.watch(heard.append)
        writer.watch(own.append)  # the writer hears its own batches but passes them on never
        wait_for(lambda: reader.listening and writer.listening, 10, message="listening")
        wait_for(lambda: heard == [{}], 5, message="the catch-up call on connecting")
        for i in range(30):  # one batch: one NOTIFY, not one per task
            writer.put(make(i, state="SUCCESS", timestamp=T0 + i))
        writer.put_worker("w1@h", {"hostname": "w1@h"})
        assert writer.flush()
        wait_for(lambda: len(heard) == 2, 10, message="the batch's NOTIFY")
        assert heard[1] == {"tasks": 30, "workers": 1, "newest": T0 + 29}
        assert reader.count() == 30  # written when heard of

        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'celeriac-listen' AND datname = current_database()"
            )
        # Back within the backoff (0.2 s first); a catch-up call says "look, you may have missed
        # something", then batches are heard again.
        wait_for(lambda: len(heard) >= 3 and reader.listening, 10, message="listening again")
        assert heard[2] == {}
        # Another cluster's store in its own schema of the same database: its own channel.
        other_url = with_schema(postgres_url, schema_name("other"))
        ensure_schema(other_url)
        other = PostgresStore(other_url)
        other.set_writing(False)
        elsewhere: list[dict[str, Any]] = []
        other.watch(elsewhere.append)
        wait_for(lambda: other.listening, 10, message="the other cluster's listener")
        assert other.channel == "celeriac.celeriac_other"
        writer.put(make(99, state="FAILURE", timestamp=T0 + 99))
        assert writer.flush()
        wait_for(lambda: heard[-1].get("tasks") == 1, 10, message="a batch after the drop")
        assert own == [] and elsewhere == [{}]  # never woken by this cluster's writes
        assert reader.stats()["listening"] is True
        other.close()
    finally:
        reader.close()
        writer.close()
    assert not reader.listening
