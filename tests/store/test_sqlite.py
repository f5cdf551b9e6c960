"""SqliteStore against real database files: answers, durability, retention, migrations, errors.

Query answers must be :func:`reference`'s for every filter, sort and page, whichever plan the
store picks to answer them, and whether the tasks are written yet or not: MemoryStore's
filters (``store/query.py``) and order (ties by task id), except that the default order (newest
first) breaks its rare ties by insertion.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.constants import ALL_STATES, TASK_FIELDS
from celeriac.store.base import TaskQuery, TaskRecord
from celeriac.store.memory import MemoryStore
from celeriac.store.migrations import MIGRATIONS, migrate, schema_version
from celeriac.store.query import matcher
from celeriac.store.search import compile_search
from celeriac.store.sqlite import SqliteStore, StoreError
from celeriac.store.sqlite_write import SqliteWriter

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
NAMES = ["tasks.add", "tasks.Echo", "app.B", "app.a", None]
WORKERS = ["celery@w1", "celery@W2", "celery@w3", None]
FIELDS = [f for f in TASK_FIELDS if f != "children"]


def make(i: int, rng: random.Random | None = None, **fields: Any) -> TaskRecord:
    """Task ``i``; timestamps grow with ``i``, so insertion order is timestamp order."""
    rng = rng or random.Random(i)
    ts = T0 + i * 1.5 + rng.random()
    record: TaskRecord = dict.fromkeys(FIELDS)
    record.update(
        uuid=f"task-{i:05d}",
        name=rng.choice(NAMES),
        state=rng.choice(ALL_STATES),
        args=repr((i, rng.randint(0, 9))),
        kwargs=repr({"k": i % 7, "user": f"user{i % 5}"}),
        result=repr(i * 3) if i % 3 else None,
        exception=f"ValueError('bad {i}')" if i % 11 == 0 else None,
        received=None if i % 10 == 0 else ts - 1 - rng.random(),
        started=None if i % 4 == 0 else ts - 0.5,
        timestamp=ts,
        retries=i % 3,
        clock=i,
        worker=rng.choice(WORKERS),
        routing_key="celery",
    )
    record.update(fields)
    return record


def order_key(key: str | None, records: list[TaskRecord]) -> Any:
    """The documented order: by the key (text case-insensitively, a missing value lowest),
    ties by task id as Flower; newest first by default, ties by insertion."""
    inserted = {r["uuid"]: i for i, r in enumerate(records)}

    def value(r: TaskRecord) -> tuple:
        if key is None:
            return (r.get("timestamp") or 0.0, inserted[r["uuid"]])
        v = r.get(key)
        if v is None:
            return (False, "", r["uuid"])
        return (True, v.casefold() if isinstance(v, str) else v, r["uuid"])

    return value


def reference(records: list[TaskRecord], q: TaskQuery) -> list[TaskRecord]:
    """The answer computed the slow and obvious way: MemoryStore's filters, the search
    predicate, the documented order."""
    match, found = matcher(q), compile_search(q.search)
    rows = sorted(
        (r for r in records if match(r) and found(r)),
        key=order_key(q.sort_by, records),
        reverse=q.descending or q.sort_by is None,
    )
    end = None if q.limit is None else q.offset + q.limit
    return [dict(r) for r in rows[q.offset : end]]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sub" / "tasks.db")


@pytest.fixture
def store(db: str) -> Iterator[SqliteStore]:
    s = SqliteStore(db, flush_interval=0.02)
    s.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqliteStore, list]]:
    rng = random.Random(1)
    records = [make(i, rng) for i in range(600)]
    s = SqliteStore(str(tmp_path_factory.mktemp("loaded") / "tasks.db"))
    for r in records:
        s.put(dict(r))
    assert s.flush()
    yield s, records
    s.close()


FILTERS: list[dict[str, Any]] = [
    {},
    {"state": "SUCCESS"},
    {"state": "failure"},
    {"taskname": "TASKS.ECHO"},
    {"taskname": "app.b"},
    {"taskname": "nope"},
    {"workername": "CELERY@w2"},
    {"received_start": T0 + 200, "received_end": T0 + 600},
    {"received_start": T0 + 200.5, "received_end": T0 + 200.5},
    {"state": "STARTED", "taskname": "tasks.add"},
    {"taskname": "tasks.add", "received_start": T0 + 300},
    {"state": "RETRY", "workername": "celery@w1", "received_end": T0 + 700},
]
SORTS = [(None, False), *[(k, d) for k in ("name", "state", "received", "started") for d in (0, 1)]]
SLICES = [(None, 0), (10, 0), (10, 5), (7, 230), (25, 590), (5, 2000), (0, 0)]


@pytest.mark.parametrize("plan", [None, "order", "filters", 0, 1])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "all")
def test_query_matches_reference(loaded, filters, plan, monkeypatch):
    # Every plan the planner may pick must give the same answer; force each in turn.
    store, records = loaded
    monkeypatch.setattr(store, "_force_plan", plan)
    for (sort_by, desc), (limit, offset) in [(s, sl) for s in SORTS for sl in SLICES]:
        q = TaskQuery(limit=limit, offset=offset, sort_by=sort_by, descending=bool(desc), **filters)
        got, want = store.query(q), reference(records, q)
        assert [r["uuid"] for r in got] == [r["uuid"] for r in want], q
        assert got == want


def test_query_matches_memory_store(loaded):
    store, records = loaded
    memory = MemoryStore(10_000)
    for r in records:
        memory.put(dict(r))
    for filters in FILTERS:
        for limit, offset in SLICES:  # newest first: the orders agree to the last tie
            q = TaskQuery(limit=limit, offset=offset, **filters)
            assert store.query(q) == memory.query(q), q
    assert store.task_types() == memory.task_types()
    assert store.count() == memory.count() == len(records)
    for r in records[:50]:
        assert store.get(r["uuid"]) == memory.get(r["uuid"])


def test_the_planner_uses_every_plan(loaded):
    store, _ = loaded
    plans = set()
    for q in [
        TaskQuery(limit=10),
        TaskQuery(limit=10, taskname="nope"),
        TaskQuery(limit=10, state="SUCCESS"),
        TaskQuery(limit=10, search='"bad 55"'),
        TaskQuery(limit=10, search="user"),
    ]:
        store.query(q)
        plans.add(store.last_plan)
    assert plans == {"index", "0", "search", "order"}


def indexed_ids(db: str) -> set[int]:
    """Rowids whose text is in the full-text index (one docsize row per indexed document)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("INSERT INTO tasks_fts (tasks_fts) VALUES ('integrity-check')")
        return {r[0] for r in conn.execute("SELECT id FROM tasks_fts_docsize")}
    finally:
        conn.close()


def text_ids(db: str) -> set[int]:
    """Rowids of the tasks with text: those the index must hold, and only those."""
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT id FROM tasks WHERE coalesce(args, kwargs, result, exception, traceback)"
        return {r[0] for r in conn.execute(sql + " IS NOT NULL")}
    finally:
        conn.close()


def test_the_index_follows_a_tasks_text_through_its_flushes(db):
    store = SqliteStore(db)
    record = make(1, state="RECEIVED", args="('lemon', 1)", result=None, exception=None)
    steps = [
        {},
        {"state": "STARTED"},
        {"state": "SUCCESS", "result": "'papaya'"},
        {"result": "'mango'"},  # changed after the end (a late or repeated event)
    ]
    for step in steps:
        record.update(step)
        store.put(dict(record))
        assert store.flush()
        for text, found in [
            ("lemon", True),  # args, in every state
            ("papaya", record["result"] == "'papaya'"),
            ("mango", record["result"] == "'mango'"),
            ("args:lemon", True),
            ("lemon OR name:nothing", True),  # the index asked inside the SQL filter
            ("result:papaya state:SUCCESS", record["result"] == "'papaya'"),
        ]:
            got = [r["uuid"] for r in store.query(TaskQuery(search=text))]
            assert got == (["task-00001"] if found else []), (step, text)
        assert indexed_ids(db) == text_ids(db) == {1}
    store.close()


def test_the_index_holds_the_tasks_with_text_through_flushes_and_pruning(db):
    rng = random.Random(7)
    store = SqliteStore(db, max_tasks=150, flush_interval=0.01)
    store.start()
    records = [make(i, rng, state="RECEIVED") for i in range(200)]
    for r in records:
        store.put(dict(r))
    assert store.flush()
    for _ in range(3):  # random steps, each in its own flush
        for r in rng.sample(records, 80):
            r["state"] = rng.choice(ALL_STATES)
            r["result"] = rng.choice([None, repr(rng.random())])
            store.put(dict(r))
        assert store.flush()
        assert indexed_ids(db) == text_ids(db)
        for r in records[:40]:  # the index has each task's current text, not an older one
            kept = store.get(r["uuid"]) is not None  # (retention may have pruned it)
            if kept and r["result"] is not None and len(r["result"]) > 12:  # a random float
                found = store.query(TaskQuery(search=f"result:{r['result'][2:12]}"))
                assert [t["uuid"] for t in found] == [r["uuid"]]
    for r in records:  # every task finishes: retention keeps the newest 150
        r["state"] = "SUCCESS"
        store.put(dict(r))
    assert store.flush() and store.flush()
    assert store.count() == 150
    assert indexed_ids(db) == text_ids(db)
    # A task pruned, then heard of again, is stored again (not an update of a deleted row).
    gone = records[0]
    assert store.get(gone["uuid"]) is None
    gone.update(result="'back again'", timestamp=T0 + 10_000)  # the newest now: kept
    store.put(dict(gone))
    assert store.flush()
    store.close()
    store = SqliteStore(db)
    try:
        got = store.get(gone["uuid"])
        assert got is not None and got["result"] == "'back again'"
        assert [r["uuid"] for r in store.query(TaskQuery(search="back again"))] == [gone["uuid"]]
    finally:
        store.close()


def _v_next(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE tasks ADD COLUMN queue")
    conn.execute("UPDATE tasks SET queue = routing_key")
    conn.execute("CREATE INDEX tasks_queue ON tasks (queue, timestamp)")


def test_a_database_is_upgraded_by_a_further_migration_without_losing_data(db):
    store = SqliteStore(db)
    records = [make(i) for i in range(20)]
    for r in records:
        store.put(r)
    store.close()
    conn = sqlite3.connect(db)
    assert schema_version(conn) == len(MIGRATIONS)
    conn.close()

    upgraded = SqliteStore(db, migrations=(*MIGRATIONS, _v_next))
    try:
        assert upgraded.count() == 20
        assert upgraded.get("task-00003") == {**records[3], "children": []}
        assert upgraded.query(TaskQuery(search="bad 11"))[0]["uuid"] == "task-00011"
    finally:
        upgraded.close()
    conn = sqlite3.connect(db)
    assert schema_version(conn) == len(MIGRATIONS) + 1
    assert conn.execute("SELECT count(*) FROM tasks WHERE queue = 'celery'").fetchone() == (20,)
    conn.close()


def test_a_failed_migration_leaves_the_previous_version(db):
    SqliteStore(db).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE tasks ADD COLUMN half_done")
        conn.execute("THIS IS NOT SQL")

    with pytest.raises(StoreError, match="syntax error"):
        SqliteStore(db, migrations=(*MIGRATIONS, broken))
    conn = sqlite3.connect(db, isolation_level=None)
    assert schema_version(conn) == len(MIGRATIONS)
    assert "half_done" not in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
    assert migrate(conn) == len(MIGRATIONS)
    conn.close()


def test_a_newer_database_is_refused(db):
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this celeriac knows"):
        SqliteStore(db)


def test_unusable_paths_raise_store_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create its folder"):
        SqliteStore(str(blocker / "tasks.db"))
    with pytest.raises(StoreError, match="cannot open it"):
        SqliteStore(str(tmp_path))  # a directory
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SqliteStore(str(garbage))


def test_a_read_only_database_raises_store_error():
    # Root ignores file modes, so the check runs in a child that drops to nobody first.
    folder = tempfile.mkdtemp(prefix="celeriac-ro-")
    path = os.path.join(folder, "tasks.db")
    try:
        SqliteStore(path).close()
        os.chmod(path, 0o444)
        os.chmod(folder, 0o555)
        if os.geteuid() != 0:
            with pytest.raises(StoreError, match=r"readonly|unable to open"):
                SqliteStore(path)
            return
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                SqliteStore(path)
                message = "opened"
            except StoreError as exc:
                message = f"StoreError: {exc}"
            except BaseException as exc:
                message = f"{type(exc).__name__}: {exc}"
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            message = pipe.read()
        os.waitpid(pid, 0)
        assert message.startswith("StoreError: "), message
        assert path in message and ("readonly" in message or "unable to open" in message)
    finally:
        os.chmod(folder, stat.S_IRWXU)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def test_full_disk_is_logged_once_and_loses_nothing(db, caplog):
    store = SqliteStore(db, writer_process=False)  # to reach the writer's connection
    store.put(make(0))
    assert store.flush()
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
    big = [make(i, args="x" * 5000) for i in range(1, 200)]
    with caplog.at_level(logging.ERROR, logger="celeriac.store.sqlite"):
        for r in big:
            store.put(r)
        for _ in range(3):
            assert not store.flush()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "full" in errors[0].getMessage()
    stats = store.stats()
    assert stats["failing"] and stats["write_errors"] == {"SQLITE_FULL": 3}
    assert stats["pending"] == 199
    pending = store.get("task-00150")
    assert pending is not None and pending["args"] == "x" * 5000  # served from pending
    store._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert store.flush()
    assert store.count() == 200 and not store.stats()["failing"]
    store.close()


def test_writer_thread_survives_errors_and_recovers(db):
    class Flaky(SqliteStore):
        fail = threading.Event()

        def _write_batch(self, batch, workers):
            if self.fail.is_set():
                raise sqlite3.OperationalError("disk I/O error")
            super()._write_batch(batch, workers)

    store = Flaky(db, flush_interval=0.01)
    store.start()
    Flaky.fail.set()
    for i in range(50):
        store.put(make(i))
    assert not store.flush(timeout=5)
    assert store.stats()["write_errors"]["OperationalError"] >= 1
    Flaky.fail.clear()
    assert store.flush(timeout=5)
    assert store.count() == 50
    store.close()


def test_close_returns_when_the_writer_thread_is_stuck_inside_sqlite(db, caplog):
    # A hung disk blocks the writer thread inside SQLite, where nothing can stop it: close()
    # leaves it behind after its bound rather than hang the monitor's shutdown.
    store = SqliteStore(db, flush_interval=0.01, writer_process=False)
    store.close_timeout = 0.5  # CLOSE_TIMEOUT (10 s) in production
    store.start()
    store.put(make(0))
    assert store.flush(timeout=10)
    release = threading.Event()
    # Every statement now waits inside SQLite, holding its connection, as on a hung disk.
    store._conn.set_progress_handler(lambda: release.wait() and 0, 100)
    try:
        with caplog.at_level(logging.ERROR, logger="celeriac.store.sqlite"):
            for i in range(1, 31):
                store.put(make(i))
            time.sleep(0.2)  # the writer thread is stuck in the batch by now
            closer = threading.Thread(target=store.close, daemon=True)
            closer.start()
            closer.join(30)  # bounded: about close_timeout + CLOSE_GRACE
            assert not closer.is_alive(), "close() blocked on a stuck writer thread"
        assert any(
            "did not finish" in r.getMessage() and "30 tasks not written" in r.getMessage()
            for r in caplog.records
        )
    finally:
        release.set()  # the "disk" answers again: the thread finishes, and writes the batch
        assert store._thread is not None
        store._thread.join(10)
        store._conn.set_progress_handler(None, 0)
        store._close_connections()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 31


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread", "process"])
def test_flushes_from_two_threads_of_a_store_never_started_both_write(db, writer_process):
    # Never started, flush() writes on the caller's thread: two callers at once must not
    # share the writer's connection (one transaction inside the other), nor return before
    # their tasks are committed (the other caller's batch may hold them, still being written).
    store = SqliteStore(db, writer_process=writer_process)
    failures: list[str] = []
    unwritten: list[int] = []
    start = threading.Barrier(2)

    def flusher(first: int) -> None:
        with sqlite3.connect(db) as conn:  # what is committed, not what the store holds
            start.wait()
            for round_ in range(40):
                end = first + round_ * 25 + 25
                for i in range(end - 25, end):
                    store.put(make(i))
                time.sleep(0.002)  # the taker may take them meanwhile
                if not store.flush():
                    failures.append(str(store.stats()["last_error"]))
                    continue
                sql = "SELECT count(*) FROM tasks WHERE uuid BETWEEN ? AND ?"
                got = conn.execute(sql, (make(first)["uuid"], make(end - 1)["uuid"])).fetchone()
                if got[0] != end - first:
                    unwritten.append(end - first - got[0])

    done = threading.Event()

    def taker() -> None:  # flushes only: its batches hold the other threads' tasks
        while not done.is_set():
            if not store.flush():
                failures.append(str(store.stats()["last_error"]))
            time.sleep(0.0005)

    threads = [threading.Thread(target=flusher, args=(n,)) for n in (0, 10_000)]
    helper = threading.Thread(target=taker)
    helper.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    helper.join(60)
    assert failures == [] and store.stats()["write_errors"] == {}
    assert unwritten == []
    assert store.count() == 2000
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 2000
    store.close()


def test_the_writer_keeps_its_caches_under_a_steady_trickle_and_empties_them_after_a_burst(
    db: str,
):
    # In this process (writer_process=False) the writer's recent rows can be looked at: they
    # and the page cache are what a burst needs, kept while tasks keep coming in small
    # flushes, given back once a burst's flushes are followed by a small one.
    store = SqliteStore(db, flush_interval=0.02, writer_process=False)
    writer = store._writer
    assert isinstance(writer, SqliteWriter)
    store.start()
    for round_ in range(10):
        for i in range(round_ * 50, round_ * 50 + 50):
            store.put(make(i))
        assert store.flush(timeout=10)
        time.sleep(0.03)
    assert len(writer._recent) == 500  # never rested: no flush reached a burst's size
    for i in range(500, 5_000):
        store.put(make(i))
    assert store.flush(timeout=30)
    deadline = time.monotonic() + 10
    while writer._recent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not writer._recent
    store.put(make(42, state="REVOKED"))
    assert store.flush(timeout=10)
    assert store.get("task-00042")["state"] == "REVOKED"
    assert store.count() == 5_000
    assert store.count_by_state()["REVOKED"] == sum(
        1 for i in range(5_000) if (i == 42 or make(i)["state"] == "REVOKED")
    )
    store.close()


def test_a_failure_to_give_back_the_caches_is_logged_and_the_writer_goes_on(db: str, caplog):
    store = SqliteStore(db, flush_interval=0.02, writer_process=False)

    def broken() -> None:
        raise RuntimeError("no rest for the wicked")

    store._rest = broken  # type: ignore[method-assign]
    store.start()
    with caplog.at_level(logging.ERROR, logger="celeriac"):
        for i in range(1_000):  # a burst, then empty flushes: the rest is tried
            store.put(make(i))
        assert store.flush(timeout=10)
        deadline = time.monotonic() + 10
        while not any("caches failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the rest was never tried"
            time.sleep(0.01)
    store.put(make(1_000))  # the writer thread is still there
    assert store.flush(timeout=10)
    assert store.count() == 1_001
    store.close()
