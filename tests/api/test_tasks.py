"""GET /api/tasks, /api/task/types, /api/task/info/<id> and /api/task/result/<id>, against real
workers on Redis and RabbitMQ (the result backend is Redis either way).

One celeriac and two workers per broker are shared by the module: ``w1`` consumes ``celery``
and ``q-w1``, ``w2`` only ``q-w2``, so where a task runs is known. A module-scoped history runs
a known set of tasks one after the other (so their order is known too) before the read tests
look at what celeriac made of the events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from celery import chain

from tests.apps import proj
from tests.fixtures import (
    BrokerInfo,
    CeleryWorker,
    MonitorFactory,
    MonitorProcess,
    WorkerFactory,
    wait_for,
)

#: Every key of a task in the seed's ``/api/tasks`` example.
SEED_TASK_KEYS = {
    "args", "client", "clock", "eta", "exception", "exchange", "expires", "failed", "kwargs",
    "name", "received", "result", "retried", "retries", "revoked", "routing_key", "runtime",
    "sent", "started", "state", "succeeded", "timestamp", "traceback", "uuid", "worker",
}
#: Every key of the seed's ``/api/task/info`` example (``task-id`` instead of ``uuid``).
SEED_INFO_KEYS = (SEED_TASK_KEYS - {"uuid"}) | {"task-id"}
FINAL = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED"}
RESULT_WAIT = 30.0


# A task that spawns children. Workers of this module import this module (``-I``) to get it.
@proj.app.task(shared=False, name="tests.spawn")
def spawn(n: int) -> list[str]:
    return [proj.tasks.add.delay(i, i).id for i in range(n)]


# Fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers(
    broker: BrokerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path_factory.mktemp(f"task-workers-{broker.kind}"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def w1(workers: WorkerFactory, broker: BrokerInfo) -> CeleryWorker:
    return workers(broker, hostname="w1@%h", queues=["celery", "q-w1"], extra_args=["-I", __name__])


@pytest.fixture(scope="module")
def w2(workers: WorkerFactory, broker: BrokerInfo) -> CeleryWorker:
    return workers(broker, hostname="w2@%h", concurrency=1, queues=["q-w2"])


@pytest.fixture(scope="module")
def monitor(
    broker: BrokerInfo, w1: CeleryWorker, w2: CeleryWorker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MonitorProcess]:
    factory = MonitorFactory(tmp_path_factory.mktemp(f"task-monitor-{broker.kind}"))
    m = factory(broker)

    def online() -> bool:
        status = m.client.get("/api/workers", params={"status": "true"}).json()
        return status.get(w1.hostname) is True and status.get(w2.hostname) is True

    wait_for(online, 30, 0.1, "both workers online in celeriac")
    yield m
    factory.close()


@dataclass
class History:
    """Ids of the tasks run for the module, in the order they ran."""

    order: list[str] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # label -> id
    chain: list[str] = field(default_factory=list)
    spawned: list[str] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0


@pytest.fixture(scope="module")
def history(monitor: MonitorProcess, broker: BrokerInfo) -> History:
    t = broker.tasks
    h = History(started_at=time.time())

    def seen_final(task_id: str) -> None:
        # Until celeriac has the final event: the worker stamps it after storing the result,
        # so only then is the next task surely newer.
        wait_for(lambda: (info_or_none(monitor, task_id) or {}).get("state") in FINAL, 30, 0.02,
                 f"celeriac to see {task_id} finish")

    def run(label: str, result: Any) -> Any:
        result.get(timeout=RESULT_WAIT, propagate=False)
        seen_final(result.id)
        h.ids[label] = result.id
        h.order.append(result.id)
        return result

    run("add", t.add.apply_async((1, 2)))
    run("mul", t.mul.apply_async((2, 3), queue="q-w2"))
    run("echo", t.echo.apply_async(("hi",), queue="q-w1"))
    run("fail", t.fail.apply_async(("boom",)))
    run("retry", t.retry.apply_async((2,), {"countdown": 0.05}))
    run("add_w2", t.add.apply_async((10, 20), queue="q-w2"))
    # Sent to a queue nobody consumes: celeriac knows it only from task-sent (no worker, not
    # received, not started).
    unconsumed = t.echo.apply_async(("nobody",), queue="q-nobody")
    h.ids["unconsumed"] = unconsumed.id
    h.order.append(unconsumed.id)
    last = chain(t.add.s(1, 2), t.add.s(3), t.mul.s(2)).apply_async()
    last.get(timeout=RESULT_WAIT)
    h.chain = [last.parent.parent.id, last.parent.id, last.id]
    for task_id in h.chain:
        seen_final(task_id)
    h.order.extend(h.chain)
    spawner = broker.app.send_task("tests.spawn", args=[2])
    h.spawned = spawner.get(timeout=RESULT_WAIT)
    h.ids["spawn"] = spawner.id
    for child in h.spawned:
        broker.app.AsyncResult(child).get(timeout=RESULT_WAIT)
    h.finished_at = time.time()

    every = [*h.order, spawner.id, *h.spawned]

    def all_final() -> bool:
        tasks = get_tasks(monitor)
        return all(tasks.get(i, {}).get("state") in FINAL for i in every if i != unconsumed.id)

    wait_for(lambda: unconsumed.id in get_tasks(monitor), 30, 0.1,
             "celeriac to see the task-sent of the unconsumed task")

    wait_for(all_final, 30, 0.1, "celeriac to see every task of the history finish")
    return h


# Helpers ----------------------------------------------------------------------------------------


def get_tasks(m: MonitorProcess, **params: Any) -> dict[str, dict[str, Any]]:
    r = m.client.get("/api/tasks", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    body = r.json()
    assert isinstance(body, dict)
    return body


def info_or_none(m: MonitorProcess, task_id: str) -> dict[str, Any] | None:
    r = m.client.get(f"/api/task/info/{task_id}")
    return None if r.status_code == 404 else info(m, task_id)


def info(m: MonitorProcess, task_id: str) -> dict[str, Any]:
    r = m.client.get(f"/api/task/info/{task_id}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, dict)
    return body


def assert_error(r: httpx.Response, status: int, text: str) -> None:
    assert (r.status_code, r.text) == (status, text)
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"


def minute(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


# GET /api/tasks ---------------------------------------------------------------------------------


def test_every_task_has_every_key_of_the_seed(monitor: MonitorProcess, history: History) -> None:
    tasks = get_tasks(monitor)
    assert set(history.order) <= set(tasks)
    for task_id, task in tasks.items():
        assert set(task) >= SEED_TASK_KEYS, task_id
        assert task["uuid"] == task_id
    add = tasks[history.ids["add"]]
    assert add["name"] == "tests.add"
    assert add["state"] == "SUCCESS"
    assert add["args"] == "(1, 2)" or add["args"] == "[1, 2]"
    assert add["kwargs"] == "{}"
    assert add["result"] == "3"  # the repr string, as the worker sent it
    assert isinstance(add["received"], float)
    assert isinstance(add["started"], float)
    assert isinstance(add["succeeded"], float)
    assert add["received"] <= add["started"] <= add["succeeded"]
    assert add["timestamp"] == add["succeeded"]
    assert isinstance(add["runtime"], float) and add["runtime"] >= 0
    assert isinstance(add["clock"], int)
    assert add["retries"] == 0
    assert tasks[history.ids["echo"]]["result"] == "'hi'"


def test_newest_first_by_default(monitor: MonitorProcess, history: History) -> None:
    tasks = get_tasks(monitor)
    # The links of a chain are run one after the other, but the worker may stamp one's
    # task-succeeded after the next one's: only tasks run one at a time have a known order.
    one_by_one = [i for i in history.order if i not in history.chain]
    listed = [i for i in tasks if i in set(one_by_one)]
    assert listed == list(reversed(one_by_one))
    assert set(history.chain) <= set(list(tasks)[:len(history.chain) + 3])
    stamps = [t["timestamp"] for t in tasks.values()]
    assert stamps == sorted(stamps, reverse=True)


def test_filter_by_state(monitor: MonitorProcess, history: History) -> None:
    failed = get_tasks(monitor, state="FAILURE")
    assert list(failed) == [history.ids["fail"]]
    succeeded = get_tasks(monitor, state="SUCCESS")
    assert history.ids["fail"] not in succeeded
    assert {history.ids["add"], history.ids["retry"], *history.chain} <= set(succeeded)
    assert all(t["state"] == "SUCCESS" for t in succeeded.values())
    assert get_tasks(monitor, state="REVOKED") == {}
    assert list(get_tasks(monitor, state="failure")) == [history.ids["fail"]]
    assert list(get_tasks(monitor, state="PENDING")) == [history.ids["unconsumed"]]


def test_a_task_only_sent_is_listed_pending_without_worker(
    monitor: MonitorProcess, history: History
) -> None:
    task = get_tasks(monitor)[history.ids["unconsumed"]]
    assert task["state"] == "PENDING"
    assert task["name"] == "tests.echo"
    assert isinstance(task["sent"], float)
    assert task["timestamp"] == task["sent"]
    assert task["received"] is None and task["started"] is None and task["worker"] is None
    assert task["client"]  # the hostname of the process that sent it
    assert task["routing_key"] == "q-nobody"


def test_filter_by_taskname(monitor: MonitorProcess, history: History) -> None:
    adds = get_tasks(monitor, taskname="tests.add")
    expected = {history.ids["add"], history.ids["add_w2"], *history.chain[:2], *history.spawned}
    assert set(adds) == expected
    assert get_tasks(monitor, taskname="TESTS.ADD").keys() == expected
    assert get_tasks(monitor, taskname="tests.mul").keys() == {history.ids["mul"],
                                                              history.chain[2]}
    assert get_tasks(monitor, taskname="tests.nope") == {}
    # Flower's "All" means no filter.
    assert len(get_tasks(monitor, taskname="All")) == len(get_tasks(monitor))


def test_filter_by_workername_case_insensitive(
    monitor: MonitorProcess, history: History, w1: CeleryWorker, w2: CeleryWorker
) -> None:
    on_w2 = get_tasks(monitor, workername=w2.hostname)
    assert set(on_w2) == {history.ids["mul"], history.ids["add_w2"]}
    assert all(t["worker"] == w2.hostname for t in on_w2.values())
    assert set(get_tasks(monitor, workername=w2.hostname.upper())) == set(on_w2)
    on_w1 = get_tasks(monitor, workername=w1.hostname)
    assert history.ids["add"] in on_w1 and history.ids["mul"] not in on_w1
    assert get_tasks(monitor, workername="celery@nope") == {}


def test_filters_combine(monitor: MonitorProcess, history: History, w2: CeleryWorker) -> None:
    both = get_tasks(monitor, workername=w2.hostname, taskname="tests.add", state="SUCCESS")
    assert list(both) == [history.ids["add_w2"]]


def test_filter_by_received_range(monitor: MonitorProcess, history: History) -> None:
    everything = get_tasks(monitor)
    before = minute(history.started_at - 60)
    after = minute(history.finished_at + 120)
    assert get_tasks(monitor, received_start=before).keys() == everything.keys()
    assert get_tasks(monitor, received_end=after).keys() == everything.keys()
    assert get_tasks(monitor, received_start=before, received_end=after).keys() == \
        everything.keys()
    # As Flower: the bounds are inclusive, and a task not received yet is never filtered out.
    unreceived = {history.ids["unconsumed"]}
    assert set(get_tasks(monitor, received_start=after)) == unreceived
    assert set(get_tasks(monitor, received_end=before)) == unreceived
    assert set(get_tasks(monitor, received_end=before, state="SUCCESS")) == set()


@pytest.mark.parametrize("key", ["name", "state", "received", "started"])
def test_sort_by(monitor: MonitorProcess, history: History, key: str) -> None:
    everything = get_tasks(monitor)
    missing = {i for i, t in everything.items() if t[key] is None}
    if key in ("received", "started"):
        assert history.ids["unconsumed"] in missing
    for descending in (False, True):
        tasks = get_tasks(monitor, sort_by=f"-{key}" if descending else key)
        assert set(tasks) == set(everything)
        # As Flower: tasks without the value come first ascending, last descending; ties go
        # by task id.
        keyed = [(t[key] is not None, str(t[key]).casefold() if key in ("name", "state")
                  else t[key] or 0.0, i) for i, t in tasks.items()]
        assert keyed == sorted(keyed, reverse=descending), (key, descending)
        ids = list(tasks)
        if descending:
            assert set(ids[len(ids) - len(missing):]) == missing
        else:
            assert set(ids[: len(missing)]) == missing


def test_limit_and_offset_slice_the_sorted_list(
    monitor: MonitorProcess, history: History
) -> None:
    for sort in (None, "name", "-received", "state"):
        params = {"sort_by": sort} if sort else {}
        full = list(get_tasks(monitor, **params))
        assert len(full) >= 10
        assert list(get_tasks(monitor, limit=3, **params)) == full[:3]
        assert list(get_tasks(monitor, limit=4, offset=2, **params)) == full[2:6]
        assert list(get_tasks(monitor, offset=5, **params)) == full[5:]
        assert list(get_tasks(monitor, limit=3, offset=len(full) - 1, **params)) == full[-1:]
        assert get_tasks(monitor, offset=len(full) + 5, **params) == {}
        assert get_tasks(monitor, limit=0, **params) == {}
    newest = get_tasks(monitor, limit=1)
    assert list(newest) == [next(iter(get_tasks(monitor)))]
    # A filter then a slice: the slice is of the filtered list.
    adds = list(get_tasks(monitor, taskname="tests.add"))
    assert list(get_tasks(monitor, taskname="tests.add", limit=2, offset=1)) == adds[1:3]


def test_list_argument_errors(monitor: MonitorProcess, history: History) -> None:
    c = monitor.client
    assert_error(c.get("/api/tasks", params={"sort_by": "bogus"}), 400,
                 "Invalid sort_by 'bogus', expected one of name, received, started, state")
    assert_error(c.get("/api/tasks", params={"sort_by": "-uuid"}), 400,
                 "Invalid sort_by '-uuid', expected one of name, received, started, state")
    bad_date = ("Invalid received_start or received_end, expected format "
                "'YYYY-MM-DD HH:MM'")
    for params in ({"received_start": "yesterday"}, {"received_end": "2024-01-01"},
                   {"received_start": "2024-13-01 10:00"}):
        assert_error(c.get("/api/tasks", params=params), 400, bad_date)
    assert_error(c.get("/api/tasks", params={"limit": "abc"}), 400,
                 "Invalid argument 'abc' of type 'int'")
    assert_error(c.get("/api/tasks", params={"offset": "abc"}), 400,
                 "Invalid argument 'abc' of type 'int'")
    assert_error(c.get("/api/tasks", params={"limit": "1.5"}), 400,
                 "Invalid argument '1.5' of type 'int'")


def test_negative_limit_and_offset_as_flower(monitor: MonitorProcess, history: History) -> None:
    assert list(get_tasks(monitor, offset=-3)) == list(get_tasks(monitor))
    assert get_tasks(monitor, limit=-1) == {}


# GET /api/task/types ----------------------------------------------------------------------------


def test_task_types_lists_every_name_seen_once(monitor: MonitorProcess, history: History) -> None:
    r = monitor.client.get("/api/task/types")
    assert r.status_code == 200
    types = r.json()["task-types"]
    assert list(r.json()) == ["task-types"]
    assert len(types) == len(set(types))
    assert {"tests.add", "tests.mul", "tests.echo", "tests.fail", "tests.retry",
            "tests.spawn"} <= set(types)
    assert set(types) == {t["name"] for t in get_tasks(monitor).values()}
    assert types == sorted(types)


# GET /api/task/info/<id> ------------------------------------------------------------------------


def test_info_has_every_seed_key_and_task_id(monitor: MonitorProcess, history: History) -> None:
    task_id = history.ids["add"]
    body = info(monitor, task_id)
    assert set(body) >= SEED_INFO_KEYS
    assert body["task-id"] == task_id
    assert body["uuid"] == task_id  # what Flower 2.2.0 gives; we give both
    assert body["state"] == "SUCCESS"
    assert body["name"] == "tests.add"
    assert body["result"] == "3"
    assert body["retries"] == 0
    assert body["exception"] is None and body["traceback"] is None
    assert {"parent_id", "root_id", "children"} <= set(body)
    assert body["parent_id"] is None
    assert body["root_id"] == task_id
    assert body["children"] == []
    listed = get_tasks(monitor)[task_id]
    assert {k: body[k] for k in SEED_TASK_KEYS} == {k: listed[k] for k in SEED_TASK_KEYS}


def test_info_of_a_failure_has_exception_and_traceback(
    monitor: MonitorProcess, history: History, w1: CeleryWorker
) -> None:
    body = info(monitor, history.ids["fail"])
    assert body["state"] == "FAILURE"
    assert body["exception"] == "TaskError('boom')"
    assert body["traceback"].startswith("Traceback (most recent call last)")
    assert "TaskError: boom" in body["traceback"]
    assert isinstance(body["failed"], float)
    assert body["worker"] == w1.hostname
    assert body["result"] is None


def test_info_of_a_retried_task(monitor: MonitorProcess, history: History) -> None:
    body = info(monitor, history.ids["retry"])
    assert body["state"] == "SUCCESS"
    assert body["retries"] == 2
    assert body["result"] == "2"
    assert isinstance(body["retried"], float)
    # The worker's main process announces a retry after the pool process re-sent the task, so
    # the last task-retried can come after the task already succeeded: SUCCESS stays.
    assert isinstance(body["succeeded"], float)


def test_info_of_a_chain_links_parent_root_and_children(
    monitor: MonitorProcess, history: History
) -> None:
    a, b, c = (info(monitor, i) for i in history.chain)
    assert (a["parent_id"], a["root_id"], a["children"]) == (None, a["task-id"], [b["task-id"]])
    assert (b["parent_id"], b["root_id"], b["children"]) == (a["task-id"], a["task-id"],
                                                             [c["task-id"]])
    assert (c["parent_id"], c["root_id"], c["children"]) == (b["task-id"], a["task-id"], [])
    assert [x["result"] for x in (a, b, c)] == ["3", "6", "12"]


def test_info_of_a_task_that_spawns_children(monitor: MonitorProcess, history: History) -> None:
    parent_id = history.ids["spawn"]
    parent = info(monitor, parent_id)
    assert parent["name"] == "tests.spawn"
    assert sorted(parent["children"]) == sorted(history.spawned)
    for child_id in history.spawned:
        child = info(monitor, child_id)
        assert child["parent_id"] == parent_id
        assert child["root_id"] == parent_id
        assert child["children"] == []


def test_info_of_an_unknown_task(monitor: MonitorProcess, history: History) -> None:
    c = monitor.client
    assert_error(c.get("/api/task/info/no-such-id"), 404, "Unknown task 'no-such-id'")
    assert_error(c.get("/api/task/info/"), 404, "Unknown task ''")


# GET /api/task/result/<id> ----------------------------------------------------------------------


def get_result(m: MonitorProcess, task_id: str, **params: Any) -> dict[str, Any]:
    r = m.client.get(f"/api/task/result/{task_id}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    body = r.json()
    assert isinstance(body, dict)
    return body


def test_result_of_a_success(monitor: MonitorProcess, history: History) -> None:
    task_id = history.ids["add"]
    assert get_result(monitor, task_id) == {"task-id": task_id, "state": "SUCCESS", "result": 3}
    echo = history.ids["echo"]
    assert get_result(monitor, echo) == {"task-id": echo, "state": "SUCCESS", "result": "hi"}


def test_result_of_a_failure_is_the_repr_and_a_traceback(
    monitor: MonitorProcess, history: History
) -> None:
    task_id = history.ids["fail"]
    body = get_result(monitor, task_id)
    assert set(body) == {"task-id", "state", "result", "traceback"}
    assert body["state"] == "FAILURE"
    assert body["result"] == "TaskError('boom')"
    assert "TaskError: boom" in body["traceback"]


def test_result_of_an_unknown_id_is_pending_without_result(monitor: MonitorProcess) -> None:
    assert get_result(monitor, "no-such-id") == {"task-id": "no-such-id", "state": "PENDING"}
    started = time.monotonic()
    # A wait on a task that never comes ends at the timeout, still PENDING.
    assert get_result(monitor, "no-such-id", timeout="0.5") == {
        "task-id": "no-such-id", "state": "PENDING"}
    assert 0.45 < time.monotonic() - started < 3


def test_result_timeout_reports_the_final_state(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    """The fix: Flower answers {"state": "PENDING", "result": ...} after waiting."""
    sent = broker.tasks.sleep.apply_async((1.0,), queue="q-w1")
    started = time.monotonic()
    body = get_result(monitor, sent.id, timeout="20")
    elapsed = time.monotonic() - started
    assert body == {"task-id": sent.id, "state": "SUCCESS", "result": 1.0}
    assert elapsed < 15  # returned when the task finished, not at the timeout


def test_result_timeout_on_a_failure(monitor: MonitorProcess, broker: BrokerInfo) -> None:
    sent = broker.tasks.fail.apply_async(("late",), countdown=0.5)
    body = get_result(monitor, sent.id, timeout="20")
    assert body["state"] == "FAILURE"
    assert body["result"] == "TaskError('late')"
    assert "TaskError: late" in body["traceback"]


def test_result_timeout_that_expires_gives_the_state_so_far(
    monitor: MonitorProcess, broker: BrokerInfo
) -> None:
    sent = broker.tasks.sleep.apply_async((3.0,), queue="q-w1")
    wait_for(lambda: sent.state == "STARTED", 20, 0.05, "the sleep task to start")
    started = time.monotonic()
    body = get_result(monitor, sent.id, timeout="0.5")
    assert 0.45 < time.monotonic() - started < 2.0
    assert body == {"task-id": sent.id, "state": "STARTED"}
    sent.get(timeout=RESULT_WAIT)


def test_result_bad_timeout(monitor: MonitorProcess) -> None:
    assert_error(monitor.client.get("/api/task/result/x", params={"timeout": "abc"}), 400,
                 "Invalid argument 'abc' of type 'float'")
