"""The task history of a real celeriac process, with real workers on a real Redis broker:
restarts (SIGTERM and SIGKILL), retention, search over HTTP, upgrades, and disks that fail.

Every celeriac here gets ``--db`` in the test's temp dir (or ``memory``), never the user's data
directory. What ``/api/tasks`` lists is read from the database, so a task listed there is
written; ``/api/task/info`` also sees tasks not written yet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain

from celeriac.store.location import default_db_file
from celeriac.store.migrations import MIGRATIONS, migrate, schema_version
from celeriac.store.sqlite import SqliteStore
from tests.fixtures import BrokerInfo, MonitorFactory, MonitorProcess, WorkerFactory, wait_for

FINAL = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED"}
#: Exit statuses of a clean stop: uvicorn shuts down, then re-raises the signal it caught.
STOPPED = (0, -signal.SIGTERM)


def listed(monitor: MonitorProcess, **params: Any) -> dict[str, dict[str, Any]]:
    r = monitor.client.get("/api/tasks", params=params)
    assert r.status_code == 200, r.text
    tasks: dict[str, dict[str, Any]] = r.json()
    return tasks


def info(monitor: MonitorProcess, task_id: str) -> dict[str, Any]:
    r = monitor.client.get(f"/api/task/info/{task_id}")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def state_of(monitor: MonitorProcess, task_id: str) -> str | None:
    """The task's state as celeriac shows it, None before its first event arrives."""
    r = monitor.client.get(f"/api/task/info/{task_id}")
    return str(r.json()["state"]) if r.status_code == 200 else None


def all_listed_final(monitor: MonitorProcess, ids: list[str]) -> bool:
    tasks = listed(monitor)
    return all(tasks.get(i, {}).get("state") in FINAL for i in ids)


def run_history(broker: BrokerInfo) -> dict[str, str]:
    """A few tasks of every kind: plain, failing, echoing, and a chain (parent and root)."""
    t = broker.tasks
    ids = {f"add{i}": t.add.delay(i, i).id for i in range(6)}
    ids["fail"] = t.fail.delay("kaboom-xyz").id
    ids["echo"] = t.echo.delay("findme-result").id
    ids["big"] = t.add.delay(424242, 1).id
    workflow = chain(t.add.s(1, 2), t.add.s(3), t.add.s(4)).apply_async()
    ids["chain3"] = workflow.id
    ids["chain2"] = workflow.parent.id
    ids["chain1"] = workflow.parent.parent.id
    return ids


def start(factory: MonitorFactory, broker: BrokerInfo, db: Path | str, *extra: str) -> Any:
    return factory(broker, "--db", str(db), *extra)


def check_database(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.execute("INSERT INTO tasks_fts (tasks_fts) VALUES ('integrity-check')")
    finally:
        conn.close()


# Restarts ---------------------------------------------------------------------------------


def test_sigterm_restart_keeps_every_task_its_links_and_the_workers(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    db = tmp_path / "history.sqlite3"
    worker = celery_worker(redis_broker)
    monitor = start(celeriac_server, redis_broker, db)
    ids = run_history(redis_broker)
    wait_for(lambda: all_listed_final(monitor, list(ids.values())), 30, 0.1, "every task listed")
    wait_for(lambda: worker.hostname in monitor.client.get("/api/celeriac/status").json()[
        "workers"], 10, 0.1, "the worker known")  # fmt: skip
    worker.stop()  # no more events: what is shown now is what must come back
    time.sleep(0.5)
    before = listed(monitor)
    infos = {i: info(monitor, i) for i in ids.values()}
    types = monitor.client.get("/api/task/types").json()
    assert infos[ids["chain1"]]["children"] == [ids["chain2"]]
    assert infos[ids["chain3"]]["parent_id"] == ids["chain2"]
    assert infos[ids["chain3"]]["root_id"] == ids["chain1"]
    assert monitor.stop(signal.SIGTERM) in STOPPED
    assert "Application shutdown complete" in monitor.log_text()  # the lifespan ran: flushed

    again = start(celeriac_server, redis_broker, db)
    assert listed(again) == before  # every task, every field
    for task_id, shown in infos.items():
        assert info(again, task_id) == shown
    assert again.client.get("/api/task/types").json() == types
    assert "task history in" in again.log_text() and str(db) in again.log_text()
    status = again.client.get("/api/celeriac/status").json()
    assert status["tasks_stored"] == len(before)
    assert status["workers"] == {worker.hostname: False}  # known again, offline until heard


def test_sigkill_loses_at_most_the_last_flush_and_the_database_opens(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    db = tmp_path / "history.sqlite3"
    celery_worker(redis_broker, concurrency=4)
    monitor = start(celeriac_server, redis_broker, db)
    ids = list(run_history(redis_broker).values())
    wait_for(lambda: all(state_of(monitor, i) in FINAL for i in ids), 30, 0.1, "all final")
    time.sleep(1.0)  # five flush intervals: all of it is on disk now
    before = listed(monitor)
    burst = [redis_broker.tasks.add.delay(i, i).id for i in range(200)]  # in flight at the kill
    wait_for(lambda: len(listed(monitor)) > len(before), 10, 0.02, "part of the burst written")
    os.killpg(monitor.pid, signal.SIGKILL)
    monitor.proc.wait(timeout=10)

    check_database(db)
    again = start(celeriac_server, redis_broker, db)
    after = listed(again)
    for task_id, shown in before.items():
        assert after[task_id] == shown
    assert set(after) - set(before) <= set(burst)
    assert len(after) > len(before)  # what was written of the burst is there too


# Retention --------------------------------------------------------------------------------


def test_max_tasks_prunes_the_oldest_finished_tasks(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    celery_worker(redis_broker)
    monitor = start(celeriac_server, redis_broker, tmp_path / "h.sqlite3", "--max-tasks", "5")
    first = [redis_broker.tasks.add.delay(i, 0).id for i in range(8)]
    wait_for(lambda: all(state_of(monitor, i) in FINAL for i in first), 30, 0.1)
    time.sleep(0.1)
    last = [redis_broker.tasks.add.delay(i, 1).id for i in range(4)]

    def pruned() -> bool:
        tasks = listed(monitor)
        return len(tasks) == 5 and set(last) <= set(tasks)

    wait_for(pruned, 30, 0.1, "five tasks kept, the newest")
    assert len(set(listed(monitor)) & set(first)) == 1


def test_max_age_prunes_old_finished_tasks_but_not_running_ones(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    celery_worker(redis_broker)
    monitor = start(celeriac_server, redis_broker, tmp_path / "h.sqlite3", "--max-age", "2s")
    running = redis_broker.tasks.sleep.delay(8).id
    done = [redis_broker.tasks.add.delay(i, 0).id for i in range(3)]
    wait_for(lambda: set(done) | {running} <= set(listed(monitor)), 30, 0.1, "all listed")
    wait_for(lambda: not set(done) & set(listed(monitor)), 15, 0.1, "the finished ones pruned")
    assert listed(monitor)[running]["state"] == "STARTED"  # older than 2 s, but running


# Search over HTTP -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def searchable(
    request: pytest.FixtureRequest, redis_broker: BrokerInfo, celery_worker: WorkerFactory,
    celeriac_server: MonitorFactory, tmp_path: Path,
) -> Iterator[tuple[MonitorProcess, dict[str, str]]]:  # fmt: skip
    db: Path | str = tmp_path / "h.sqlite3" if request.param == "sqlite" else "memory"
    if request.param == "postgres":
        db = request.getfixturevalue("postgres_url")
    celery_worker(redis_broker)
    monitor = start(celeriac_server, redis_broker, db)
    ids = run_history(redis_broker)
    wait_for(lambda: all_listed_final(monitor, list(ids.values())), 30, 0.1, "every task listed")
    yield monitor, ids


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("424242", {"big"}),  # args
        ("args:424242", {"big"}),
        ("result:424243", {"big"}),  # result
        ("findme", {"echo"}),
        ("result:findme", {"echo"}),
        ("args:findme", {"echo"}),
        ("kaboom", {"fail"}),  # args and exception
        ("TaskError", {"fail"}),  # exception only
        ('"kaboom-xyz"', {"fail"}),
        ("kaboom OR findme", {"fail", "echo"}),
        ("state:failure kaboom", {"fail"}),
        ("state:success kaboom", set()),
        ("name:tests.fail", {"fail"}),
        ("name:fail OR (result:findme AND name:echo)", {"fail", "echo"}),
        ("nothing-has-this", set()),
    ],
)
def test_search_finds_by_args_result_and_exception(
    searchable: tuple[MonitorProcess, dict[str, str]], search: str, expected: set[str]
) -> None:
    monitor, ids = searchable
    names = {v: k for k, v in ids.items()}
    assert {names[i] for i in listed(monitor, search=search)} == expected
    page = listed(monitor, search="kaboom OR findme", limit=1, offset=1)
    assert len(page) == 1 and names[next(iter(page))] in {"fail", "echo"}


@pytest.mark.parametrize("search", ['"unclosed', "(a-term", "ab", "name:", "AND kaboom"])
def test_a_malformed_search_is_a_400_with_a_json_error(
    searchable: tuple[MonitorProcess, dict[str, str]], search: str
) -> None:
    monitor, _ = searchable
    r = monitor.client.get("/api/tasks", params={"search": search})
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error"} and body["error"]


# Upgrades ---------------------------------------------------------------------------------


def test_a_database_of_the_previous_schema_version_opens(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    db = tmp_path / "old.sqlite3"
    previous = len(MIGRATIONS) - 1
    conn = sqlite3.connect(db, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:previous]) == previous
    if previous >= 1:  # a task as that version stored it (v1's columns are kept by every later)
        conn.execute(
            "INSERT INTO tasks (uuid, name, state, args, timestamp) VALUES "
            "('old-task', 'tests.old', 'SUCCESS', '(1, 2)', 1700000000.0)"
        )
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'task_count'")
        conn.execute("INSERT INTO task_names (name) VALUES ('tests.old')")
    conn.close()

    celery_worker(redis_broker)
    monitor = start(celeriac_server, redis_broker, db)
    new = redis_broker.tasks.add.delay(5, 5).id
    wait_for(lambda: new in listed(monitor), 30, 0.1, "a new task stored in the upgraded file")
    if previous >= 1:
        assert info(monitor, "old-task")["args"] == "(1, 2)"
        assert set(listed(monitor)) == {"old-task", new}
    monitor.stop()
    conn = sqlite3.connect(db)
    assert schema_version(conn) == len(MIGRATIONS)
    conn.close()


# Disks that fail --------------------------------------------------------------------------


def run_celeriac(broker: BrokerInfo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", "--broker", broker.url, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_database_that_cannot_be_opened_is_one_line_and_exit_1(
    redis_broker: BrokerInfo, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all " * 200)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for path, reason in [
        (garbage, "not a database"),
        (blocker / "tasks.sqlite3", "cannot create its folder"),
        (tmp_path, "cannot open it"),  # a directory
    ]:
        done = run_celeriac(redis_broker, "--db", str(path))
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("celeriac: task database ") and reason in lines[0]
        assert str(path) in lines[0] and "Traceback" not in done.stderr
    assert garbage.read_bytes() == b"not a database at all " * 200  # never overwritten


def test_a_read_only_database_at_start_is_one_line_and_exit_1(
    redis_broker: BrokerInfo, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "mnt", "4m") as mnt:
        db = mnt / "tasks.sqlite3"
        SqliteStore(str(db)).close()  # a database celeriac made, then the disk went read-only
        remount(mnt, "ro")
        done = run_celeriac(redis_broker, "--db", str(db))
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"celeriac: task database '{db}'"), lines
        assert "read" in lines[0] and "Traceback" not in done.stderr


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``where``: a disk that fills up, or can be made read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def store_stats(monitor: MonitorProcess) -> dict[str, Any]:
    stats: dict[str, Any] = monitor.client.get("/api/celeriac/status").json()["store"]
    return stats


def test_a_full_disk_is_reported_and_celeriac_keeps_serving(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    # (A file that turns read-only while open cannot be staged: Linux refuses to remount a
    # file system read-only under files open for writing. Write errors of every kind take
    # the same path: test_sqlite.py's test_writer_thread_survives_errors_and_recovers.)
    celery_worker(redis_broker)
    with small_filesystem(tmp_path / "mnt", "1m") as mnt:
        db = mnt / "tasks.sqlite3"
        monitor = start(celeriac_server, redis_broker, db)
        early = [redis_broker.tasks.add.delay(i, i).id for i in range(5)]
        wait_for(lambda: set(early) <= set(listed(monitor)), 30, 0.1, "the first tasks stored")
        # Events carry reprs of at most ~1 kB: a thousand tasks fill the 1 MB left.
        late = [redis_broker.tasks.echo.delay(f"late-{i}-" + "x" * 2000).id for i in range(1000)]
        wait_for(lambda: store_stats(monitor)["failing"], 30, 0.1, "the write failure reported")
        wait_for(lambda: all(state_of(monitor, i) == "SUCCESS" for i in late), 60, 0.2,
                 "the late tasks followed live")
        assert monitor.alive()
        assert set(early) <= set(listed(monitor))  # what it holds is still served
        stats = store_stats(monitor)
        assert stats["pending"] > 0 and stats["last_error"]
        errors = [line for line in monitor.log_text().splitlines()
                  if "cannot write to the task database" in line]
        assert len(errors) == 1, errors  # once, not once per retry
        assert str(db) in errors[0] and "full" in errors[0]
        assert "Traceback" not in monitor.log_text()

        remount(mnt, "size=64m")  # space again
        wait_for(lambda: not store_stats(monitor)["failing"], 30, 0.1, "writes to resume")
        wait_for(lambda: set(early + late) <= set(listed(monitor)), 30, 0.1, "nothing lost")
        assert "works again" in monitor.log_text()
        assert monitor.stop() in STOPPED
        check_database(db)


def test_without_db_the_history_is_a_file_of_the_cluster_in_the_data_directory(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    data = tmp_path / "data"
    env = {"CELERIAC_DB": "", "XDG_DATA_HOME": str(data)}  # "" : as if not set at all
    celery_worker(redis_broker)
    monitor = celeriac_server(redis_broker, env=env)
    task = redis_broker.tasks.add.delay(1, 1).id
    wait_for(lambda: task in listed(monitor), 30, 0.1, "the task stored")
    expected = data / "celeriac" / default_db_file(redis_broker.url)
    assert expected.exists() and str(expected) in monitor.log_text()
    assert monitor.stop() in STOPPED
    again = celeriac_server(redis_broker, env=env)  # a restart finds its own history again
    assert task in listed(again)
