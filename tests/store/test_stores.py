"""What both persistent stores do alike, on each backend: the batching writer (``put`` visible at
once, coalescing, flush on close, throttling), unwritten tasks merged into answers, retention,
exact values, and readers alongside the writer.

Each test runs on SQLite (a file in the test's temp dir) and on PostgreSQL (a database of the
test's own on the private server of ``tests/fixtures/postgres.py``). What only one engine does
is tested in ``test_sqlite.py`` / ``test_postgres.py``.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celeriac.constants import ALL_STATES
from celeriac.state import State
from celeriac.store import aggregates, pg_migrations
from celeriac.store import migrations as sqlite_migrations
from celeriac.store.base import TaskQuery
from celeriac.store.memory import MemoryStore
from celeriac.store.postgres import PostgresStore
from celeriac.store.sqlite import SqliteStore
from celeriac.store.writer import SWITCH_INTERVAL
from tests.store.test_sqlite import NAMES, REPO, SORTS, T0, make, reference
from tests.test_state import ev, lifecycle, new_id


@dataclass
class Backend:
    """A persistent store class and the one place its tests keep their history, so that a
    test can open the store again on what an earlier instance wrote."""

    name: str
    cls: type[SqliteStore] | type[PostgresStore]
    where: str  # a file path or a database URL

    def open(self, **options: Any) -> Any:
        return self.cls(self.where, **options)

    @property
    def migrations(self) -> tuple[Any, ...]:
        module = sqlite_migrations if self.cls is SqliteStore else pg_migrations
        return tuple(module.MIGRATIONS)

    def schema_version(self, where: str) -> int:
        if self.cls is SqliteStore:
            conn = sqlite3.connect(where)
            try:
                return sqlite_migrations.schema_version(conn)
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(where) as pg:
            return pg_migrations.schema_version(pg)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend | None:
    """The backend; None for "memory", which a test may ask for as well (see ``store``)."""
    if request.param == "sqlite":
        return Backend("sqlite", SqliteStore, str(tmp_path / "sub" / "tasks.db"))
    if request.param == "postgres":
        return Backend("postgres", PostgresStore, request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
def fresh_place(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path
) -> Any:
    """``fresh_place(label)``: another empty file or database for the backend."""
    if backend.cls is SqliteStore:
        return lambda label: str(tmp_path / f"{label}.db")
    server = request.getfixturevalue("postgres_server")
    return server.new_url


@pytest.fixture
def store(backend: Backend | None) -> Iterator[Any]:
    s = MemoryStore(100) if backend is None else backend.open(flush_interval=0.02)
    s.start()
    yield s
    s.close()


def test_values_come_back_exactly(store):
    odd = make(1, result=7, eta="2024-01-01T00:00:00+00:00", retries=2**70, runtime=0.1 + 0.2)
    odd.update(kwargs={"not": "a string"}, args=b"bytes", exchange=True, clock=-(2**63))
    odd.update(traceback="nul\x00inside", sent=5, received="soon")
    store.put(odd)
    assert store.flush()
    got = store.get("task-00001")
    assert got is not None
    assert got["result"] == 7 and got["runtime"] == 0.1 + 0.2
    assert got["timestamp"] == odd["timestamp"]
    assert got["retries"] == str(2**70) and got["kwargs"] == "{'not': 'a string'}"
    assert got["args"] == "b'bytes'" and got["exchange"] == 1 and got["clock"] == -(2**63)
    assert got["traceback"] == "nul\x00inside" and got["received"] == "soon"
    assert got["sent"] == 5 and type(got["sent"]) is int
    assert [r["uuid"] for r in store.query(TaskQuery(search="not': 'a str"))] == ["task-00001"]
    assert store.stats()["write_errors"] == {}


def test_search_follows_a_task_through_its_flushes(store):
    # Each event of the task in its own flush: searches find it by what it has at each step
    # (SQLite's writer re-indexes a row's text from the table when it changes).
    record = make(1, state="RECEIVED", args="('lemon', 1)", result=None, exception=None)
    for step, expected in [
        ({}, {"lemon": True, "papaya": False}),
        ({"state": "STARTED"}, {"lemon": True, "papaya": False}),
        ({"state": "SUCCESS", "result": "'papaya'"}, {"lemon": True, "papaya": True}),
        ({"result": "'mango'"}, {"papaya": False, "mango": True, "result:mango": True}),
    ]:
        record.update(step)
        store.put(dict(record))
        assert store.flush()
        for text, found in expected.items():
            got = [r["uuid"] for r in store.query(TaskQuery(search=text))]
            assert got == (["task-00001"] if found else []), (step, text)


def test_a_running_writer_lowers_the_gil_switch_interval_never_raises_it(backend):
    before = sys.getswitchinterval()
    try:
        for start_with, expected in [(0.005, SWITCH_INTERVAL), (SWITCH_INTERVAL / 2,) * 2]:
            sys.setswitchinterval(start_with)
            store = backend.open()
            store.start()
            try:
                assert sys.getswitchinterval() == pytest.approx(expected)
            finally:
                store.close()
    finally:
        sys.setswitchinterval(before)


def test_put_is_visible_at_once_and_coalesced(backend):
    store = backend.open()  # no writer thread: nothing is written until flush()
    record = make(1, state="RECEIVED")
    store.put(record)
    record.update(state="STARTED", started=T0 + 2)
    store.put(record)
    record.update(state="SUCCESS", result="'done'")
    store.put(record)
    got = store.get("task-00001")
    assert got is not None and got["state"] == "SUCCESS" and got["children"] == []
    assert store.query(TaskQuery()) == [record]  # listed before it is written
    assert store.count() == 1
    assert store.flush()
    assert store.stats()["written"] == 1  # three puts, one row
    assert store.query(TaskQuery()) == [dict(record)]
    assert store.count_by_state() == {"SUCCESS": 1}
    record.update(state="FAILURE")  # an update moves the count, it does not add one
    store.put(record)
    assert store.flush()
    assert store.count_by_state() == {"FAILURE": 1} and store.count() == 1
    store.close()


def test_a_flush_waiting_while_the_store_closes_returns_once_it_is_written(backend):
    # The leader flushes on its way out while the server closes the store: the flush must
    # return with the close's final write, not wait out its whole timeout.
    store = backend.open(flush_interval=10)  # no cycle of its own meanwhile
    store.start()
    for i in range(50):
        store.put(make(i))
    answer: list[bool] = []
    waiter = threading.Thread(target=lambda: answer.append(store.flush(timeout=60)))
    store._stopping.set()  # as close() does first, so the flush waits for the final drain
    started = time.monotonic()
    waiter.start()
    time.sleep(0.5)  # the flush is waiting
    store.close()
    waiter.join(30)
    assert answer == [True] and time.monotonic() - started < 20
    again = backend.open()
    try:
        assert again.count() == 50
    finally:
        again.close()


def test_close_flushes_and_reopen_keeps_everything(backend):
    store = backend.open(flush_interval=10)  # the interval never elapses: close must flush
    store.start()
    records = [make(i) for i in range(300)]
    for r in records:
        store.put(r)
    store.put_worker("celery@w1", {"hostname": "celery@w1", "loadavg": [0.1, 0.2, 0.3]})
    store.close()
    again = backend.open()
    try:
        assert again.count() == 300
        assert again.task_types() == sorted({r["name"] for r in records if r["name"]})
        for r in records:
            assert again.get(r["uuid"]) == {**r, "children": []}
        assert again.workers() == {
            "celery@w1": {"hostname": "celery@w1", "loadavg": [0.1, 0.2, 0.3]}
        }
        assert again.count_by_state() == {
            s: n for s in ALL_STATES if (n := sum(r["state"] == s for r in records))
        }
    finally:
        again.close()


def test_children_from_the_index_and_from_pending(backend):
    store = backend.open()
    parent = make(1)
    store.put(parent)
    store.put(make(2, parent_id=parent["uuid"], root_id=parent["uuid"]))
    store.put(make(3, parent_id=parent["uuid"], root_id=parent["uuid"]))
    assert store.flush()
    store.put(make(4, parent_id=parent["uuid"]))  # not written yet
    store.put(make(5, parent_id="task-00005"))  # its own parent: not a child
    assert store.children(parent["uuid"]) == ["task-00002", "task-00003", "task-00004"]
    got = store.get(parent["uuid"])
    assert got is not None and got["children"] == ["task-00002", "task-00003", "task-00004"]
    assert store.flush()
    late = make(6)
    store.put(late)
    assert store.flush()
    late["parent_id"] = parent["uuid"]  # parent_id known only from a late event
    store.put(late)
    assert store.flush()
    assert store.children(parent["uuid"])[-1] == "task-00006"
    assert store.get("task-00002")["root_id"] == parent["uuid"]
    assert store.children("task-00005") == []
    store.close()


def test_retention_prunes_oldest_finished_only(backend):
    store = backend.open(max_tasks=50, flush_interval=0.01)
    store.start()
    running = [make(i, state="STARTED") for i in range(10)]  # the oldest of all
    done = [make(i, state="SUCCESS", args=f"(arg{i},)") for i in range(10, 110)]
    for r in running + done:
        store.put(r)
    assert store.flush()
    assert store.flush()
    kept = {r["uuid"] for r in store.query(TaskQuery())}
    assert kept == {r["uuid"] for r in running + done[-40:]}
    assert store.count() == 50 and store.stats()["pruned"] == 60
    assert store.count_by_state() == {"STARTED": 10, "SUCCESS": 40}
    assert store.query(TaskQuery(search="arg10,")) == []  # the text index forgot them too
    assert [r["uuid"] for r in store.query(TaskQuery(search="arg109"))] == ["task-00109"]
    store.close()
    if backend.name == "sqlite":  # the full-text index's own check of what pruning left
        conn = sqlite3.connect(backend.where)
        conn.execute("INSERT INTO tasks_fts (tasks_fts) VALUES ('integrity-check')")
        conn.close()


def test_retention_by_age(backend):
    store = backend.open(max_age=3600, flush_interval=0.01)
    store.start()
    now = time.time()
    old_done = make(1, state="FAILURE", timestamp=now - 7200)
    old_running = make(2, state="RECEIVED", timestamp=now - 7200)
    fresh = make(3, state="SUCCESS", timestamp=now - 60)
    for r in (old_done, old_running, fresh):
        store.put(r)
    assert store.flush() and store.flush()
    assert {r["uuid"] for r in store.query(TaskQuery())} == {"task-00002", "task-00003"}
    store.close()


def test_concurrent_readers_while_writing(store):
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                page = store.query(TaskQuery(limit=20, state="SUCCESS"))
                assert all(r["state"] == "SUCCESS" for r in page)
                store.query(TaskQuery(limit=5, search="user3"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(3000):
        store.put(make(i))
    assert store.flush()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert store.count() == 3000


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "memory"], indirect=True)
def test_odd_names_and_hosts_are_kept_but_never_break_the_store(backend, store):
    # Events are untrusted: a name may come as a number and a hostname as a list.
    store.put(make(1, name=5, worker=["w@h"]))
    store.put(make(2, name="tasks.ok", worker="w@h"))
    assert store.flush()
    assert store.task_types() == ["tasks.ok"]
    assert [r["uuid"] for r in store.query(TaskQuery(taskname="TASKS.OK"))] == ["task-00002"]
    assert [r["uuid"] for r in store.query(TaskQuery(workername="w@h"))] == ["task-00002"]
    assert store.count() == 2
    if backend is not None:  # kept as the database can hold them
        odd = store.get("task-00001")
        assert odd is not None and odd["name"] == 5 and odd["worker"] == "['w@h']"


@pytest.mark.parametrize("sort", SORTS)
def test_unwritten_tasks_are_merged_into_every_page(backend, sort):
    # No writer thread: the first 300 tasks are written, then 60 new ones and 40 changed ones
    # wait unwritten; every page must be the reference's over what was put.
    store = backend.open()
    rng = random.Random(3)
    records = {r["uuid"]: r for r in (make(i, rng) for i in range(300))}
    for r in records.values():
        store.put(dict(r))
    assert store.flush()
    for i in range(300, 360):
        records[f"task-{i:05d}"] = make(i, rng)
    changed = rng.sample(list(records.values())[:300], 40)
    for j, r in enumerate(changed):  # later events: a new state, a later time
        r.update(state=rng.choice(ALL_STATES), name=rng.choice(NAMES), timestamp=T0 + 900 + j)
    for r in list(records.values())[300:] + changed:
        store.put(dict(r))
    everything = list(records.values())
    sort_by, desc = sort
    try:
        for filters in [{}, {"state": "SUCCESS"}, {"taskname": "tasks.add"}]:
            for search in [None, "user3", "kwargs:user=user3"]:
                for limit, offset in [(None, 0), (10, 0), (10, 5), (7, 100), (25, 330),
                                      (50, 345), (5, 2000)]:
                    q = TaskQuery(limit=limit, offset=offset, sort_by=sort_by,
                                  descending=bool(desc), search=search, **filters)
                    got = store.query(q)
                    want = reference(everything, q)
                    assert [r["uuid"] for r in got] == [r["uuid"] for r in want], q
                    assert got == want
        assert store.count() == 360
    finally:
        store.close()


def test_a_put_mark_is_reached_only_once_what_was_put_is_committed(backend):
    # What a broker reader acks by (events/amqp.py): never a mark whose tasks are not written.
    fail = [True]

    class Flaky(backend.cls):  # type: ignore[misc,name-defined]
        def _write_batch(self, batch, workers):
            if fail[0]:
                raise OSError("disk full")
            super()._write_batch(batch, workers)

    store = Flaky(backend.where)  # no writer thread: flush() writes
    try:
        assert store.flush() and store.committed_mark() >= store.put_mark() - 1  # idle
        store.put(make(1, state="STARTED"))
        first = store.put_mark()
        assert store.committed_mark() < first
        assert not store.flush()  # the write failed: the batch waits for the next one
        store.put(make(2, state="SUCCESS"))
        second = store.put_mark()
        assert store.committed_mark() < first < second
        fail[0] = False
        assert store.flush()
        assert store.committed_mark() >= second
        assert store.count() == 2 and store.get("task-00001") is not None
        assert store.flush() and store.committed_mark() >= store.put_mark() - 1
    finally:
        store.close()


def test_a_writer_far_behind_slows_the_puts_down_and_loses_nothing(backend):
    class Slow(backend.cls):  # type: ignore[misc,name-defined]
        def _write_batch(self, batch, workers):
            time.sleep(0.05)  # a disk or database much slower than the events
            super()._write_batch(batch, workers)

    store = Slow(backend.where, flush_interval=0.01, max_pending=100)
    store.start()
    most = 0
    for i in range(2000):
        store.put(make(i))
        most = max(most, store.stats()["pending"])
    assert store.flush(timeout=30)
    assert most <= 2 * 100  # at most a batch being written and a full one waiting
    assert store.stats()["throttled"] > 0
    assert store.count() == 2000
    store.close()


@pytest.mark.parametrize("written", [False, True], ids=["pending", "written"])
def test_evicted_final_task_is_never_undone(backend, written):
    """The batched lookup (``get_many``) finds evicted tasks whether or not the writer has
    written them yet; a late batch mixing them with new tasks undoes nothing."""
    store = backend.open()
    try:
        state = State(store, cache_size=2)
        done = [new_id() for _ in range(5)]
        for u in done:
            state.apply(lifecycle(u))
        if written:
            store.start()
            assert store.flush(10)
        late = [ev("task-received", u, 1, name="tests.late") for u in done]
        late += [ev("task-started", u, 2) for u in done]
        fresh = new_id()
        state.apply([*late, *lifecycle(fresh)])
        for u in done:
            rec = state.task(u)
            assert rec is not None and rec["state"] == "SUCCESS", rec
            assert rec["result"] == "3" and rec["runtime"] == 0.01  # the stored record, merged
        assert state.task(fresh)["state"] == "SUCCESS"
        assert state.applied == 3 * 5 + 10 + 3
        got = store.get_many([*done, "nope"])
        assert set(got) == set(done) and all(r["children"] == [] for r in got.values())
    finally:
        store.close()


SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from celeriac.constants import TASK_FIELDS
from {module} import {cls}
store = {cls}(sys.argv[1], flush_interval=0.01)
store.start()
i = 0
while True:
    for _ in range(100):
        record = dict.fromkeys(f for f in TASK_FIELDS if f != "children")
        record.update(uuid="k%06d" % i, name="tasks.kill", state="SUCCESS", timestamp=float(i),
                      args="(%d,)" % i, result="'r%d'" % i)
        store.put(record)
        i += 1
    if store.flush():
        print(i, flush=True)
"""


def test_sigkill_keeps_what_was_flushed(backend):
    script = SCRIPT.format(repo=str(REPO), module=backend.cls.__module__, cls=backend.cls.__name__)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, backend.where], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    written = 0
    for line in proc.stdout:
        written = int(line)
        if written >= 3000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert written >= 3000
    if backend.name == "sqlite":  # the file and its text index are intact
        conn = sqlite3.connect(backend.where)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.execute("INSERT INTO tasks_fts (tasks_fts) VALUES ('integrity-check')")
        conn.close()
    store = backend.open()
    try:
        assert store.count() >= written
        assert store.count() == store.count_by_state()["SUCCESS"]
        last = store.get(f"k{written - 1:06d}")
        assert last is not None and last["result"] == f"'r{written - 1}'"
        assert [r["uuid"] for r in store.query(TaskQuery(search="r2999"))] == ["k002999"]
    finally:
        store.close()


def test_every_older_schema_version_is_upgraded_with_its_tasks(backend, fresh_place):
    # A database made by each released version in turn, with tasks written by that version.
    migrations = backend.migrations
    records = [make(i) for i in range(40)]
    for version in range(1, len(migrations)):
        where = fresh_place(f"v{version}")
        old = backend.cls(where, migrations=migrations[:version])
        for r in records:
            old.put(dict(r))
        old.close()
        store = backend.cls(where)
        try:
            for q in [TaskQuery(), TaskQuery(sort_by="name", limit=15, offset=3),
                      TaskQuery(sort_by="state", descending=True), TaskQuery(search="bad 11")]:
                assert store.query(q) == reference(records, q), (version, q)
            assert store.count() == 40 and store.task_types() == sorted(
                {r["name"] for r in records if r["name"]})
            # The charts read the indexes of the newest version (PostgreSQL v3: state, time).
            assert store.throughput(T0, 6) == aggregates.throughput(records, T0, 6)
            assert store.task_type_stats(T0, 6) == aggregates.type_buckets(records, T0, 6)
        finally:
            store.close()
        assert backend.schema_version(where) == len(migrations)
        if backend.name == "postgres":
            import psycopg

            with psycopg.connect(where) as pg:
                assert pg.execute("SELECT to_regclass('tasks_state_time')").fetchone()[0]
