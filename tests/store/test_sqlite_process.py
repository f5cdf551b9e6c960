"""The SQLite writer in its own process (store/sqlite_process.py): what a process adds to the
writer thread's contract. The store's behaviour itself is tested through the default (this
process) in test_sqlite.py and test_stores.py."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.heap import rss_bytes
from celeriac.store.sqlite import SqliteStore
from celeriac.store.sqlite_process import NICE
from tests.store.test_sqlite import make


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is gone for our purpose
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def stored_uuids(path: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT uuid FROM tasks")}


def written(path: str, n: int) -> SqliteStore:
    """A started store whose writer process has written tasks 0 to n - 1."""
    store = SqliteStore(path, flush_interval=0.01)
    store.start()
    for i in range(n):
        store.put(make(i))
    assert store.flush(timeout=10)
    return store


def test_the_writer_runs_in_another_process_and_the_store_reads_what_it_wrote(tmp_path: Path):
    path = str(tmp_path / "t.sqlite3")
    store = written(path, 300)
    pid = store._writer.pid
    assert pid is not None and pid != os.getpid() and alive(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"celeriac.store.sqlite_process" in f.read()
    # below the event reader's priority: on a busy machine events are read first
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, mine + NICE)
    assert store.count() == 300 and len(stored_uuids(path)) == 300
    assert store.get("task-00042") == {**make(42), "children": []}
    assert sum(store.count_by_state().values()) == 300  # the tallies came back from the child
    store.close()
    assert wait_gone(pid)  # close() ends it


def test_a_killed_writer_process_is_restarted_and_loses_nothing(tmp_path: Path, caplog):
    path = str(tmp_path / "t.sqlite3")
    store = written(path, 100)
    first = store._writer.pid
    assert first is not None
    with caplog.at_level(logging.ERROR, logger="celeriac.store.sqlite"):
        os.kill(first, signal.SIGKILL)
        assert wait_gone(first)
        for i in range(100, 250):  # put while no writer runs
            store.put(make(i, state="STARTED"))
        for i in range(50):  # and later events of tasks already written
            store.put(make(i, state="SUCCESS", result="done"))
        assert store.flush(timeout=10)  # a new writer took over and wrote them all
    second = store._writer.pid
    assert second is not None and second != first
    assert store.stats()["write_errors"] == {"WriterExited": 1}
    assert any("writer process exited" in r.getMessage() for r in caplog.records)
    assert store.count() == 250 and len(stored_uuids(path)) == 250
    assert store.get("task-00010")["result"] == "done"
    assert store.count_by_state()["SUCCESS"] >= 50
    store.close()


def test_ctrl_c_and_sigterm_leave_the_writer_to_finish_what_the_store_closes_with(
    tmp_path: Path,
):
    # A terminal's Ctrl-C or a service manager's SIGTERM reaches every process of the group;
    # the writer must still be there to write what the closing store flushes.
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path, flush_interval=3600)  # only close() flushes
    store.start()
    store.put(make(0))
    store.flush(timeout=10)
    pid = store._writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert alive(pid)
    for i in range(1, 80):
        store.put(make(i))
    store.close()
    assert wait_gone(pid)
    assert len(stored_uuids(path)) == 80


def test_the_writer_process_exits_when_its_parent_dies(tmp_path: Path):
    path = str(tmp_path / "t.sqlite3")
    root = str(Path(__file__).resolve().parents[2])
    parent = "\n".join([
        "import os, sys",
        f"sys.path.insert(0, {root!r})",
        "from celeriac.store.sqlite import SqliteStore",
        "from tests.store.test_sqlite import make",
        f"store = SqliteStore({path!r})",
        "store.put(make(1))",
        "assert store.flush()",
        "print(store._writer.pid, flush=True)",
        "os.kill(os.getpid(), 9)",
    ])  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout.split()[0])
    assert wait_gone(child)  # not left behind, holding the database
    assert stored_uuids(path) == {"task-00001"}


@pytest.mark.parametrize("bad", [b"\xff\xfe", 10**30, {"a": object}, lambda: 1])
def test_values_pickle_or_sqlite_cannot_take_are_stored_as_text(tmp_path: Path, bad):
    store = SqliteStore(str(tmp_path / "t.sqlite3"))
    store.put(make(1, args=bad))
    assert store.flush()
    got = store.get("task-00001")
    assert got is not None and got["args"] == str(bad)
    assert store.stats()["write_errors"] == {}
    store.close()


def tallies_in(path: str) -> dict[str, dict[object, int]]:
    with sqlite3.connect(path) as conn:
        return {
            c: dict(conn.execute(f"SELECT {c}, count(*) FROM tasks GROUP BY {c}"))
            for c in ("state", "name", "worker")
        }


def assert_tallies_match_the_file(store: SqliteStore, path: str) -> None:
    """The store's counts per state, name and worker are the file's, as counted by a scan."""
    stored = tallies_in(path)
    assert {c: {v: n for v, n in t.items() if n} for c, t in store._tally.items()} == stored
    assert store.count_by_state() == {s or "PENDING": n for s, n in stored["state"].items()}


def test_the_tallies_stay_exact_when_a_new_writer_process_writes_the_next_batch(
    tmp_path: Path,
):
    # The store reads the tallies again after a restart (the dead writer may have committed
    # a batch it never confirmed); the first batch of the new writer is in what it reads, and
    # must not be counted a second time on top.
    path = str(tmp_path / "t.sqlite3")
    store = written(path, 100)
    os.kill(store._writer.pid, signal.SIGKILL)
    for i in range(100, 150):
        store.put(make(i))
    assert store.flush(timeout=10)
    assert store._writer.starts == 2
    assert store.count() == 150
    assert sum(store.count_by_state().values()) == 150
    assert_tallies_match_the_file(store, path)
    store.close()


def test_the_tallies_are_read_again_when_retention_starts_the_new_writer_process(
    tmp_path: Path,
):
    # A writer killed while pruning may have committed deletions it never reported; when the
    # next call is retention's (nothing to write), the counts must come from the file too.
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path, max_tasks=10_000, flush_interval=3600)  # cycles when flushed
    store.start()
    for i in range(100):
        store.put(make(i, state="SUCCESS"))
    assert store.flush(timeout=10)
    os.kill(store._writer.pid, signal.SIGKILL)
    assert wait_gone(store._writer.pid)
    with sqlite3.connect(path) as conn:  # what the killed writer committed unconfirmed
        conn.execute("DELETE FROM tasks WHERE uuid < 'task-00030'")  # (its text index: unused)
        conn.execute("UPDATE meta SET value = value - 30 WHERE key = 'task_count'")
    # Nothing pending: only retention calls the writer; the first call finds it dead, the
    # next one starts another, and then writing works again.
    assert store.flush(timeout=10)
    assert store._writer.starts == 2
    assert store.stats()["write_errors"] == {"WriterExited": 1}
    assert not store.stats()["failing"]
    assert store.count() == 70
    assert store.count_by_state() == {"SUCCESS": 70}
    store.close()


@pytest.fixture
def parent_only_class():
    """A class pickle finds in this process, in a module no other process can import."""
    module = types.ModuleType("celeriac_test_parent_only")

    class Opaque:
        def __repr__(self) -> str:
            return "Opaque()"

    Opaque.__module__, Opaque.__qualname__ = module.__name__, "Opaque"
    module.Opaque = Opaque  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield Opaque
    del sys.modules[module.__name__]


def test_a_value_the_writer_process_cannot_unpickle_is_stored_as_text(
    tmp_path: Path, parent_only_class
):
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path, flush_interval=0.01)
    store.start()
    store.put(make(1, args=parent_only_class()))
    store.put(make(2))
    assert store.flush(timeout=20)  # not a writer that dies on the batch, again and again
    assert store.get("task-00001")["args"] == "Opaque()"
    assert stored_uuids(path) == {"task-00001", "task-00002"}
    assert store.stats()["write_errors"] == {}
    assert store._writer.starts == 1
    store.close()


@pytest.mark.parametrize("bad", [lambda: 1, "parent-only"])
def test_workers_stay_objects_when_their_batch_is_sent_plain(
    tmp_path: Path, bad, parent_only_class
):
    value = parent_only_class() if bad == "parent-only" else bad
    store = SqliteStore(str(tmp_path / "t.sqlite3"))
    store.put_worker("w1@h", {"hostname": "w1@h", "active": 2, "odd": parent_only_class()})
    store.put(make(1, args=value))
    assert store.flush()
    assert store.workers() == {"w1@h": {"hostname": "w1@h", "active": 2, "odd": "Opaque()"}}
    store.close()


def test_the_writer_process_imports_nothing_from_the_working_directory(tmp_path: Path, monkeypatch):
    # `celeriac` (a console script) never has its working directory on sys.path; its writer
    # must not either: a json.py there, or another celeriac checkout, is not what it runs.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "json.py").write_text("raise ImportError('json.py from the working directory')\n")
    monkeypatch.chdir(cwd)
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path)
    store.put(make(1))
    assert store.flush(), store.stats()["last_error"]
    assert stored_uuids(path) == {"task-00001"}
    store.close()


def test_a_closed_store_starts_no_writer_process_again(tmp_path: Path):
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path)  # never started: flush() writes on the caller's thread
    store.put(make(1))
    assert store.flush()
    first = store._writer.pid
    assert first is not None
    store.close()
    assert wait_gone(first)
    store.put(make(2))  # too late: nothing may outlive close(), nor write after it
    assert not store.flush()
    assert store._writer.pid is None and store._writer.starts == 1
    assert stored_uuids(path) == {"task-00001"}


def test_a_writer_process_that_cannot_start_is_retried_with_pauses_and_creates_no_file(
    tmp_path: Path, caplog
):
    # The database deleted under the running monitor: each start costs ~0.1 s of CPU, and a
    # new empty file would be what the readers then open.
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path, flush_interval=0.01)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    store.start()
    store.put(make(1))
    with caplog.at_level(logging.ERROR, logger="celeriac.store.sqlite"):
        time.sleep(4)  # ~400 flushes
    assert 3 <= store._writer.starts <= 6  # at 0, twice at once, then 0.5 s, 1 s, 2 s later
    assert not os.path.exists(path)
    assert store.stats()["failing"]
    assert any("could not start" in r.getMessage() for r in caplog.records)
    store.close()


def test_a_store_dropped_without_close_does_not_leave_its_writer_process_running(
    tmp_path: Path,
):
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path)
    store.put(make(1))
    assert store.flush()
    pid = store._writer.pid
    assert pid is not None
    del store
    gc.collect()
    assert wait_gone(pid)  # its pipes closed: it saw EOF and exited
    assert stored_uuids(path) == {"task-00001"}


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The writer process stopped (SIGSTOP: as a hung disk, it answers nothing); killed on the
    way out if the store under test left it so, so that no test leaves it behind."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_close_returns_even_when_the_writer_process_is_stopped(tmp_path: Path, caplog):
    path = str(tmp_path / "t.sqlite3")
    store = written(path, 50)
    store.close_timeout = 1.0  # CLOSE_TIMEOUT (10 s) in production
    pid = store._writer.pid
    assert pid is not None
    with stopped(pid), caplog.at_level(logging.ERROR):
        for i in range(50, 80):
            store.put(make(i))
        time.sleep(0.2)  # the writer thread sends them and waits for the stopped child
        closer = threading.Thread(target=store.close, daemon=True)
        closer.start()
        closer.join(30)  # bounded: about close_timeout plus a few seconds
        assert not closer.is_alive(), "close() blocked on a stopped writer process"
        assert wait_gone(pid)  # killed, not left stopped holding the database
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"writer process {pid}" in m and "killed" in m for m in messages), messages
    assert any("30 tasks could not be written" in m for m in messages), messages
    assert not any("will retry" in m for m in messages), messages  # closing: nothing will
    assert stored_uuids(path) == {f"task-{i:05d}" for i in range(50)}  # the file is intact


def test_a_writer_process_stopped_for_long_is_killed_and_replaced_and_loses_nothing(
    tmp_path: Path, caplog
):
    path = str(tmp_path / "t.sqlite3")
    store = written(path, 100)
    store._writer.request_timeout = 1.0  # REQUEST_TIMEOUT (60 s) in production
    first = store._writer.pid
    assert first is not None
    with stopped(first), caplog.at_level(logging.ERROR):
        for i in range(100, 200):  # new tasks, and later events of tasks already written
            store.put(make(i, state="STARTED"))
        for i in range(50):
            store.put(make(i, state="SUCCESS", result="done"))
        assert store.flush(timeout=30)  # the batch the stopped child held, written again
        assert wait_gone(first)  # killed, not left stopped
    second = store._writer.pid
    assert second is not None and second != first and store._writer.starts == 2
    assert store.stats()["write_errors"] == {"WriterHung": 1}
    assert not store.stats()["failing"]
    assert any(
        f"writer process {first}" in r.getMessage() and "used no CPU" in r.getMessage()
        for r in caplog.records
    )
    assert store.count() == 200 and len(stored_uuids(path)) == 200
    assert store.get("task-00010")["result"] == "done"
    assert_tallies_match_the_file(store, path)
    store.close()
    assert wait_gone(second)


def test_a_busy_writer_process_is_not_taken_for_hung(tmp_path: Path):
    # A big batch keeps the child working longer than the timeout: it uses CPU all along,
    # so it is waited for, not killed (and killed again at every retry of the same batch).
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path)  # never started: flush() writes on this thread
    store._writer.request_timeout = 0.3
    for i in range(20_000):
        store.put(make(i))
    started = time.monotonic()
    assert store.flush()
    took = time.monotonic() - started
    assert took > 2 * store._writer.request_timeout, f"{took:.2f} s: too quick to tell"
    assert store._writer.starts == 1 and store.stats()["write_errors"] == {}
    assert len(stored_uuids(path)) == 20_000
    store.close()


def child_rss(pid: int) -> int:
    rss = rss_bytes(pid)
    assert rss is not None
    return rss


def test_after_a_burst_the_writer_process_gives_its_caches_back_and_loses_nothing(
    tmp_path: Path,
):
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path, flush_interval=0.05)
    store.start()
    store.put(make(0))
    assert store.flush(timeout=10)
    pid = store._writer.pid
    assert pid is not None
    idle = peak = child_rss(pid)
    for i in range(30_000):  # flushes of thousands of tasks: a burst
        store.put(make(i))
        if i % 1000 == 0:
            peak = max(peak, child_rss(pid))
    assert store.flush(timeout=60)
    peak = max(peak, child_rss(pid))
    assert peak - idle > 20e6, f"the burst took only {(peak - idle) / 1e6:.1f} MB"
    # The flushes after it are empty: the burst is over, the child rests (a fresh connection:
    # no page cache, no statements; the freed heap trimmed).
    deadline = time.monotonic() + 10
    while child_rss(pid) - idle > (peak - idle) / 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    rest = child_rss(pid)
    assert rest - idle <= (peak - idle) / 2, (idle, peak, rest)
    assert store._writer.pid == pid and store.stats()["write_errors"] == {}
    # Later events of tasks written in the burst (the rows it remembered are gone): each
    # updates its row, and the tallies stay exact.
    for i in range(0, 30_000, 7):
        store.put(make(i, state="SUCCESS", result="late"))
    assert store.flush(timeout=30)
    assert store.count() == 30_000 and len(stored_uuids(path)) == 30_000
    assert store.get("task-00700")["result"] == "late"
    assert_tallies_match_the_file(store, path)
    store.close()
    assert wait_gone(pid)
