"""The SQLite writer in its own process (store/sqlite_process.py): what a process adds to the
writer thread's contract. The store's behaviour itself is tested through the default (this
process) in test_sqlite.py and test_stores.py."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_the_writer_runs_in_another_process_and_the_store_reads_what_it_wrote(tmp_path: Path):
    path = str(tmp_path / "t.sqlite3")
    store = SqliteStore(path, flush_interval=0.01)
    store.start()
    for i in range(300):
        store.put(make(i))
    assert store.flush(timeout=10)
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
    store = SqliteStore(path, flush_interval=0.01)
    store.start()
    for i in range(100):
        store.put(make(i))
    assert store.flush(timeout=10)
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
