"""POST /api/task/{apply,async-apply,send-task,abort,revoke,timeout,rate-limit}, against real
workers on Redis and RabbitMQ (the result backend is Redis either way).

Every action is checked by its effect: the task ran (or never did: ``tests.touch`` writes a
file, so a revoked one leaves none), the running task was killed and the worker lives on, the
rate limit held tasks back, the worker reports the limits it was given. One worker (``w1``) and
one celeriac are shared by the module per broker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.apps import proj
from tests.fixtures import (
    BrokerInfo,
    CeleryWorker,
    MonitorFactory,
    MonitorProcess,
    WorkerFactory,
    wait_for,
)

NOPE_WORKER = "celery@nope"
RESULT_WAIT = 30.0


# A task with a side effect the test can see: it creates ``path``. The module's worker imports
# this module (``-I``) to get it; celeriac does not know it (send-task needs no sources).
@proj.app.task(shared=False, name="tests.touch")
def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


# Fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers(
    broker: BrokerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path_factory.mktemp(f"action-workers-{broker.kind}"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def w1(workers: WorkerFactory, broker: BrokerInfo) -> CeleryWorker:
    return workers(broker, hostname="w1@%h", concurrency=2, extra_args=["-I", __name__])


@pytest.fixture(scope="module")
def monitor(
    broker: BrokerInfo, w1: CeleryWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MonitorProcess]:
    factory = MonitorFactory(tmp_path_factory.mktemp(f"action-monitor-{broker.kind}"))
    m = factory(broker)

    def online() -> bool:
        status = m.client.get("/api/workers", params={"status": "true"}).json()
        return status.get(w1.hostname) is True

    wait_for(online, 30, 0.1, f"{w1.hostname} online in celeriac")
    yield m
    factory.close()


@pytest.fixture
def side_effects(tmp_path: Path) -> Path:
    tmp_path.chmod(0o777)
    return tmp_path


# Helpers ----------------------------------------------------------------------------------------


def post_json(m: MonitorProcess, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return post_json_on(m.client, path, body, **kw)


def post_json_on(c: httpx.Client, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    return c.post(path, content=content, headers={"Content-Type": "application/json"}, **kw)


def ok_json(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    body = r.json()
    assert isinstance(body, dict)
    return body


def assert_message(r: httpx.Response, message: str) -> None:
    assert ok_json(r) == {"message": message}


def assert_error(r: httpx.Response, status: int, text: str) -> None:
    assert (r.status_code, r.text) == (status, text)
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"


def backend_state(broker: BrokerInfo, task_id: str) -> str:
    return str(broker.app.AsyncResult(task_id).state)


def info(m: MonitorProcess, task_id: str) -> dict[str, Any] | None:
    r = m.client.get(f"/api/task/info/{task_id}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, dict)
    return body


def info_state(m: MonitorProcess, task_id: str) -> str | None:
    body = info(m, task_id)
    return None if body is None else body["state"]


def wait_info_state(m: MonitorProcess, task_id: str, state: str, timeout: float = 20) -> None:
    wait_for(lambda: info_state(m, task_id) == state, timeout, 0.1,
             f"celeriac to show {task_id} {state}")


def registered_options(broker: BrokerInfo, worker: CeleryWorker, *items: str) -> dict[str, str]:
    """``{task name: "[k=v ...]"}`` as the worker reports its tasks right now."""
    replies = broker.app.control.inspect(destination=[worker.hostname], timeout=5,
                                         limit=1).registered(*items)
    assert replies, "the worker did not answer inspect registered"
    out = {}
    for line in replies[worker.hostname]:
        name, _, rest = line.partition(" ")
        out[name] = rest
    return out


# POST /api/task/apply/<name> --------------------------------------------------------------------


def test_apply_runs_the_task_and_waits_for_the_result(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    body = ok_json(post_json(monitor, "/api/task/apply/tests.add", {"args": [1, 2]}))
    assert set(body) == {"task-id", "state", "result"}
    assert body["state"] == "SUCCESS"
    assert body["result"] == 3
    # it really ran on the worker, and celeriac saw it
    assert broker.app.AsyncResult(body["task-id"]).get(timeout=5) == 3
    wait_info_state(monitor, body["task-id"], "SUCCESS")
    assert info(monitor, body["task-id"])["worker"] == w1.hostname  # type: ignore[index]
    kw = ok_json(post_json(monitor, "/api/task/apply/tests.add",
                           {"kwargs": {"x": "a", "y": "b"}}))
    assert (kw["state"], kw["result"]) == ("SUCCESS", "ab")
    # no body at all: no arguments
    r = ok_json(monitor.client.post("/api/task/apply/tests.fail"))
    assert r["state"] == "FAILURE"


def test_apply_of_a_failing_task(monitor: MonitorProcess, w1: CeleryWorker) -> None:
    body = ok_json(post_json(monitor, "/api/task/apply/tests.fail", {"args": ["nope"]}))
    assert set(body) == {"task-id", "state", "result", "traceback"}
    assert body["state"] == "FAILURE"
    assert body["result"] == "TaskError('nope')"
    assert body["traceback"].startswith("Traceback (most recent call last)")
    assert "TaskError: nope" in body["traceback"]


def test_apply_with_a_timeout_returns_early_without_result(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    started = time.monotonic()
    body = ok_json(post_json(monitor, "/api/task/apply/tests.sleep",
                             {"args": [3], "timeout": 0.5}))
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"apply took {elapsed:.2f} s"
    assert set(body) == {"task-id", "state"}
    assert body["state"] in {"PENDING", "RECEIVED", "STARTED"}
    # the task goes on and finishes
    assert broker.app.AsyncResult(body["task-id"]).get(timeout=RESULT_WAIT) == 3
    # a timeout long enough gives the result
    body = ok_json(post_json(monitor, "/api/task/apply/tests.add",
                             {"args": [2, 2], "timeout": "20"}))
    assert (body["state"], body["result"]) == ("SUCCESS", 4)


def test_concurrent_applies_each_get_their_own_result(
    monitor: MonitorProcess, w1: CeleryWorker
) -> None:
    def apply(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=monitor.url, timeout=60) as c:
            return ok_json(post_json_on(c, "/api/task/apply/tests.echo",
                                        {"args": [f"v{i}"], "countdown": 1}))

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(apply, range(8)))
    assert [(b["state"], b["result"]) for b in bodies] == [("SUCCESS", f"v{i}")
                                                          for i in range(8)]
    assert len({b["task-id"] for b in bodies}) == 8


def test_concurrent_result_waits_each_get_their_own_result(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    sent = [broker.tasks.echo.apply_async((f"r{i}",), countdown=1) for i in range(8)]

    def wait(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=monitor.url, timeout=60) as c:
            return ok_json(c.get(f"/api/task/result/{sent[i].id}", params={"timeout": "30"}))

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(wait, range(8)))
    assert bodies == [{"task-id": r.id, "state": "SUCCESS", "result": f"r{i}"}
                      for i, r in enumerate(sent)]


def test_many_waiting_applies_do_not_starve_remote_control(
    monitor: MonitorProcess, w1: CeleryWorker
) -> None:
    """Waiting for results holds threads; remote control and reads must still answer."""
    waiters = 24
    countdown = 8

    def apply(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=monitor.url, timeout=60) as c:
            return ok_json(post_json_on(c, "/api/task/apply/tests.echo",
                                        {"args": [i], "countdown": countdown}))

    with ThreadPoolExecutor(waiters) as pool:
        started = time.monotonic()
        futures = [pool.submit(apply, i) for i in range(waiters)]
        # every apply is in: the tasks are on the worker, waiting for their countdown
        wait_for(lambda: len(monitor.client.get("/api/tasks", params={
            "taskname": "tests.echo", "state": "RECEIVED"}).json()) >= waiters, 20, 0.1,
            "every apply to be received")
        t0 = time.monotonic()
        r = monitor.client.get("/api/workers", params={"refresh": "true",
                                                       "workername": w1.hostname})
        assert r.status_code == 200
        rl = monitor.client.post("/api/task/rate-limit/tests.echo",
                                 data={"ratelimit": "0", "workername": w1.hostname})
        assert rl.status_code == 200
        elapsed = time.monotonic() - t0
        assert time.monotonic() - started < countdown, "the applies finished first: no test"
        assert elapsed < 3, f"remote control took {elapsed:.1f} s behind waiting applies"
        assert sorted(f.result()["result"] for f in futures) == list(range(waiters))


def backend_connections(broker: BrokerInfo) -> int:
    url = broker.backend_url
    db = int(url.rsplit("/", 1)[1])
    with redis.Redis.from_url(url) as r:
        return sum(1 for c in r.client_list() if int(c["db"]) == db) - 1  # less this one


def test_waits_keep_the_backend_connections_bounded(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    # Celery's result backends are per thread: a new thread per wait would open new
    # connections every time.
    for i in range(5):
        monitor.client.get(f"/api/task/result/warm-{i}", params={"timeout": "0.05"})
    before = backend_connections(broker)
    for i in range(30):
        started = time.monotonic()
        body = ok_json(monitor.client.get(f"/api/task/result/nothing-{i}",
                                          params={"timeout": "0.05"}))
        assert body == {"task-id": f"nothing-{i}", "state": "PENDING"}
        # a short timeout is kept (the Redis backend alone would wait a whole second)
        assert time.monotonic() - started < 0.9
    assert backend_connections(broker) - before <= 1


def test_result_timeout_zero_does_not_wait(monitor: MonitorProcess) -> None:
    started = time.monotonic()
    r = monitor.client.get("/api/task/result/never-sent", params={"timeout": "0"}, timeout=10)
    assert ok_json(r) == {"task-id": "never-sent", "state": "PENDING"}
    assert time.monotonic() - started < 5


def test_apply_errors(monitor: MonitorProcess) -> None:
    apply = "/api/task/apply/tests.add"
    assert_error(post_json(monitor, "/api/task/apply/tests.nope", {"args": [1]}), 404,
                 "Unknown task 'tests.nope'")
    # Flower's order: the body is read first, then the task looked up, then the options.
    assert_error(post_json(monitor, "/api/task/apply/tests.nope", {"timeout": "x"}), 404,
                 "Unknown task 'tests.nope'")
    assert_error(post_json(monitor, "/api/task/apply/tests.nope", {"countdown": "x"}), 404,
                 "Unknown task 'tests.nope'")
    assert_error(post_json(monitor, "/api/task/apply/tests.nope", {"args": 1}), 400,
                 "args must be an array")
    assert_error(post_json(monitor, apply, {"args": [1, 2], "timeout": "abc"}), 400,
                 "Invalid timeout")
    assert_error(post_json(monitor, apply, {"args": [1, 2], "timeout": [1]}), 400,
                 "Invalid timeout")
    for bad in ("{bad", "[1, 2", "{\"args\": [1, 2],}"):
        try:
            json.loads(bad)
        except ValueError as exc:
            message = str(exc)
        r = monitor.client.post(apply, content=bad.encode(),
                                headers={"Content-Type": "application/json"})
        assert_error(r, 400, message)
    for not_object in ([1, 2], "args", 3, None):
        assert_error(post_json(monitor, apply, not_object) if not_object is not None
                     else monitor.client.post(apply, content=b"null"), 400, "invalid options")
    for args in ({"x": 1}, "1, 2", 3):
        assert_error(post_json(monitor, apply, {"args": args}), 400, "args must be an array")
    for option in ({"countdown": "soon"}, {"eta": "tomorrow"}, {"eta": 12},
                   {"expires": "later"}, {"expires": [1]}):
        assert_error(post_json(monitor, apply, {"args": [1, 2], **option}), 400,
                     "Invalid option")


# POST /api/task/async-apply/<name> and send-task ------------------------------------------------


def test_async_apply_publishes_and_answers_at_once(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    body = ok_json(post_json(monitor, "/api/task/async-apply/tests.add", {"args": [5, 6]}))
    assert set(body) == {"task-id", "state"}
    assert body["state"] in {"PENDING", "RECEIVED", "STARTED", "SUCCESS"}
    assert broker.app.AsyncResult(body["task-id"]).get(timeout=RESULT_WAIT) == 11
    wait_info_state(monitor, body["task-id"], "SUCCESS")


def test_async_apply_with_countdown_and_eta(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    sent_at = time.time()
    by_countdown = ok_json(post_json(monitor, "/api/task/async-apply/tests.echo",
                                     {"args": ["cd"], "countdown": 2}))
    eta = datetime.now(timezone.utc) + timedelta(seconds=2)
    by_eta = ok_json(post_json(monitor, "/api/task/async-apply/tests.echo",
                               {"args": ["eta"], "eta": eta.isoformat()}))
    # Flower's own eta format (naive, UTC) is accepted too.
    naive = (datetime.now(timezone.utc) + timedelta(seconds=2)).replace(tzinfo=None)
    by_naive = ok_json(post_json(monitor, "/api/task/async-apply/tests.echo",
                                 {"args": ["naive"],
                                  "eta": naive.strftime("%Y-%m-%d %H:%M:%S.%f")}))
    for body in (by_countdown, by_eta, by_naive):
        assert body["state"] == "PENDING"
    for body, value in ((by_countdown, "cd"), (by_eta, "eta"), (by_naive, "naive")):
        assert broker.app.AsyncResult(body["task-id"]).get(timeout=RESULT_WAIT) == value
        wait_info_state(monitor, body["task-id"], "SUCCESS")
        task = info(monitor, body["task-id"])
        assert task is not None
        assert task["eta"] is not None
        assert task["started"] >= sent_at + 1.5, "ran before its countdown/eta"


def test_async_apply_with_expires(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    # Expired before it can run: a countdown past its expiry.
    expired = ok_json(post_json(monitor, "/api/task/async-apply/tests.echo",
                                {"args": ["x"], "countdown": 1, "expires": 0.5}))
    wait_for(lambda: backend_state(broker, expired["task-id"]) == "REVOKED", 20, 0.1,
             "the expired task to be revoked")
    wait_info_state(monitor, expired["task-id"], "REVOKED")
    # Far in the future, as a number of seconds in a string and as a datetime: it runs.
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    for expires in ("3600", future):
        body = ok_json(post_json(monitor, "/api/task/async-apply/tests.echo",
                                 {"args": ["y"], "expires": expires}))
        assert broker.app.AsyncResult(body["task-id"]).get(timeout=RESULT_WAIT) == "y"
        wait_info_state(monitor, body["task-id"], "SUCCESS")
        task = info(monitor, body["task-id"])
        assert task is not None and task["expires"] is not None


def test_async_apply_errors(monitor: MonitorProcess) -> None:
    url = "/api/task/async-apply/tests.add"
    assert_error(post_json(monitor, "/api/task/async-apply/tests.nope", {}), 404,
                 "Unknown task 'tests.nope'")
    assert_error(post_json(monitor, url, [1]), 400, "invalid options")
    assert_error(post_json(monitor, url, {"args": "x"}), 400, "args must be an array")
    assert_error(post_json(monitor, url, {"countdown": "x"}), 400, "Invalid option")
    assert_error(post_json(monitor, url, {"eta": "x"}), 400, "Invalid option")
    assert_error(post_json(monitor, url, {"expires": "x"}), 400, "Invalid option")


def test_send_task_runs_a_task_celeriac_has_no_source_for(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker, side_effects: Path
) -> None:
    target = side_effects / "sent"
    body = ok_json(post_json(monitor, "/api/task/send-task/tests.touch",
                             {"args": [str(target)]}))
    assert set(body) == {"task-id", "state"}
    assert broker.app.AsyncResult(body["task-id"]).get(timeout=RESULT_WAIT) == str(target)
    assert target.read_text() == "ran"
    wait_info_state(monitor, body["task-id"], "SUCCESS")
    # async-apply needs the task in celeriac's app; send-task does not
    assert_error(post_json(monitor, "/api/task/async-apply/tests.touch",
                           {"args": [str(target)]}), 404, "Unknown task 'tests.touch'")


def test_send_task_of_an_unregistered_name(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    body = ok_json(post_json(monitor, "/api/task/send-task/tests.unregistered",
                             {"args": [1]}))
    assert set(body) == {"task-id", "state"}
    assert isinstance(body["task-id"], str) and body["task-id"]
    # read right after publishing: the worker may have failed it already
    assert body["state"] in {"PENDING", "FAILURE"}
    wait_for(lambda: "tests.unregistered" in monitor.client.get("/api/task/types")
             .json()["task-types"], 20, 0.1, "the name to show in /api/task/types")
    # The worker fails it: in the result backend and in the event stream.
    task_id = body["task-id"]
    wait_for(lambda: backend_state(broker, task_id) == "FAILURE", 20, 0.1,
             "the worker to fail the unregistered task")
    result = ok_json(monitor.client.get(f"/api/task/result/{task_id}"))
    assert result["state"] == "FAILURE"
    assert "'tests.unregistered' never registered" in result["result"]
    wait_info_state(monitor, task_id, "FAILURE")
    task = info(monitor, task_id)
    assert task is not None
    assert "NotRegistered" in task["exception"]
    assert task["name"] == "tests.unregistered"
    listed = monitor.client.get("/api/tasks", params={"taskname": "tests.unregistered"}).json()
    assert list(listed) == [task_id]
    assert w1.alive()


def test_send_task_errors(monitor: MonitorProcess) -> None:
    url = "/api/task/send-task/tests.add"
    assert_error(post_json(monitor, url, [1]), 400, "invalid options")
    assert_error(post_json(monitor, url, {"args": {}}), 400, "args must be an array")
    assert_error(post_json(monitor, url, {"countdown": "x"}), 400, "Invalid option")
    r = monitor.client.post(url, content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


# POST /api/task/revoke/<id> ---------------------------------------------------------------------


def test_revoked_countdown_task_never_runs(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker, side_effects: Path
) -> None:
    revoked_file, control_file = side_effects / "revoked", side_effects / "control"
    victim = ok_json(post_json(monitor, "/api/task/send-task/tests.touch",
                               {"args": [str(revoked_file)], "countdown": 4}))
    control = ok_json(post_json(monitor, "/api/task/send-task/tests.touch",
                                {"args": [str(control_file)], "countdown": 4}))
    # The worker has it (received, waiting for its ETA) before we revoke.
    wait_info_state(monitor, victim["task-id"], "RECEIVED")
    assert_message(monitor.client.post(f"/api/task/revoke/{victim['task-id']}"),
                   f"Revoked '{victim['task-id']}'")
    # The control task, sent at the same time with the same countdown, runs...
    wait_for(control_file.exists, 20, 0.05, "the control task to run")
    assert broker.app.AsyncResult(control["task-id"]).get(timeout=RESULT_WAIT)
    # ...and the revoked one does not: REVOKED everywhere, no side effect.
    wait_for(lambda: backend_state(broker, victim["task-id"]) == "REVOKED", 20, 0.1,
             "the result backend to say REVOKED")
    wait_info_state(monitor, victim["task-id"], "REVOKED")
    result = ok_json(monitor.client.get(f"/api/task/result/{victim['task-id']}"))
    assert result["state"] == "REVOKED"
    time.sleep(0.5)
    assert not revoked_file.exists()
    task = info(monitor, victim["task-id"])
    assert task is not None
    assert task["started"] is None and task["succeeded"] is None
    assert isinstance(task["revoked"], float)


def test_revoke_with_terminate_kills_the_running_task(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    sent = broker.tasks.sleep.apply_async((60,))
    wait_for(lambda: backend_state(broker, sent.id) == "STARTED", 20, 0.05,
             "the sleep task to start")
    started = time.monotonic()
    for bad in ("maybe", "2"):
        assert_error(monitor.client.post(f"/api/task/revoke/{sent.id}",
                                         params={"terminate": bad}), 400,
                     f"Invalid argument '{bad}' of type 'bool'")
    assert_message(monitor.client.post(f"/api/task/revoke/{sent.id}",
                                       params={"terminate": "true", "signal": "SIGKILL"}),
                   f"Revoked '{sent.id}'")
    wait_for(lambda: backend_state(broker, sent.id) == "REVOKED", 20, 0.05,
             "the killed task to be REVOKED")
    wait_info_state(monitor, sent.id, "REVOKED")
    assert time.monotonic() - started < 30  # killed, not finished
    # The worker lives on and runs the next task.
    assert w1.alive()
    assert broker.tasks.add.apply_async((1, 1)).get(timeout=RESULT_WAIT) == 2


def test_revoke_terminate_as_form_with_default_signal(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    sent = broker.tasks.sleep.apply_async((60,))
    wait_for(lambda: backend_state(broker, sent.id) == "STARTED", 20, 0.05,
             "the sleep task to start")
    assert_message(monitor.client.post(f"/api/task/revoke/{sent.id}",
                                       data={"terminate": "yes"}),
                   f"Revoked '{sent.id}'")
    wait_info_state(monitor, sent.id, "REVOKED")
    assert w1.alive()


def test_revoke_of_an_unknown_id(monitor: MonitorProcess) -> None:
    task_id = str(uuid.uuid4())
    assert_message(monitor.client.post(f"/api/task/revoke/{task_id}"), f"Revoked '{task_id}'")
    assert_message(monitor.client.post("/api/task/revoke/whatever"), "Revoked 'whatever'")


# POST /api/task/abort/<id> ----------------------------------------------------------------------


def test_abort_a_running_abortable_task(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    sent = broker.tasks.abortable.apply_async((60,), {"keep_aborted": True})
    wait_for(lambda: backend_state(broker, sent.id) == "STARTED", 20, 0.05,
             "the abortable task to start")
    assert_message(monitor.client.post(f"/api/task/abort/{sent.id}"), f"Aborted '{sent.id}'")
    assert backend_state(broker, sent.id) == "ABORTED"
    # The task notices (within its 0.1 s poll), stops, and the state stays ABORTED.
    def stopped() -> bool:
        active = broker.app.control.inspect(destination=[w1.hostname], timeout=5,
                                            limit=1).active()
        return active is not None and not any(
            t["id"] == sent.id for t in active.get(w1.hostname, []))

    wait_for(stopped, 20, 0.2, "the aborted task to stop running")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert backend_state(broker, sent.id) == "ABORTED"
        result = ok_json(monitor.client.get(f"/api/task/result/{sent.id}"))
        assert result["state"] == "ABORTED"
        time.sleep(0.2)


def test_abort_of_an_unknown_id(monitor: MonitorProcess) -> None:
    task_id = str(uuid.uuid4())
    assert_message(monitor.client.post(f"/api/task/abort/{task_id}"), f"Aborted '{task_id}'")


# POST /api/task/rate-limit/<name> ---------------------------------------------------------------


def rate_limit(m: MonitorProcess, name: str, **form: str) -> httpx.Response:
    return m.client.post(f"/api/task/rate-limit/{name}", data=form)


def test_rate_limit_takes_effect(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    # tests.mul is used by no other test here: the limit would hold them back too.
    assert_message(rate_limit(monitor, "tests.mul", ratelimit="1/m", workername=w1.hostname),
                   "new rate limit set successfully")
    assert registered_options(broker, w1, "rate_limit")["tests.mul"] == "[rate_limit=1/m]"
    try:
        held = [broker.tasks.mul.apply_async((i, 10)) for i in range(3)]
        # One token: exactly one runs, the others wait for the next minute.
        wait_for(lambda: sum(r.state == "SUCCESS" for r in held) >= 1, 20, 0.05,
                 "the first rate-limited task to run")
        time.sleep(2.0)
        assert sum(r.state == "SUCCESS" for r in held) == 1
        # ratelimit=0 removes the limit: new tasks run at once (the ones already held wait
        # for the timer of the bucket they sit in: Celery's behaviour).
        assert_message(rate_limit(monitor, "tests.mul", ratelimit="0",
                                  workername=w1.hostname),
                       "new rate limit set successfully")
        assert "rate_limit=1/m" not in registered_options(broker, w1, "rate_limit")["tests.mul"]
        free = [broker.tasks.mul.apply_async((i, 100)) for i in range(3)]
        assert [r.get(timeout=10) for r in free] == [0, 100, 200]
    finally:
        rate_limit(monitor, "tests.mul", ratelimit="0", workername=w1.hostname)


def test_rate_limit_in_the_query_string(monitor: MonitorProcess, w1: CeleryWorker) -> None:
    r = monitor.client.post("/api/task/rate-limit/tests.echo",
                            params={"ratelimit": "1000/s", "workername": w1.hostname})
    assert_message(r, "new rate limit set successfully")
    assert_message(rate_limit(monitor, "tests.echo", ratelimit="0", workername=w1.hostname),
                   "new rate limit set successfully")


def test_rate_limit_errors_in_order(monitor: MonitorProcess, w1: CeleryWorker) -> None:
    w = w1.hostname
    assert_error(rate_limit(monitor, "tests.nope", ratelimit="x"), 400,
                 "Missing argument workername")
    assert_error(rate_limit(monitor, "tests.nope", ratelimit="x", workername=""), 400,
                 "Missing argument workername")
    assert_error(rate_limit(monitor, "tests.nope", workername=NOPE_WORKER), 400,
                 "Missing argument ratelimit")
    assert_error(rate_limit(monitor, "tests.nope", workername=NOPE_WORKER, ratelimit=""), 400,
                 "Missing argument ratelimit")
    assert_error(rate_limit(monitor, "tests.nope", ratelimit="1/s", workername=NOPE_WORKER),
                 404, "Unknown task 'tests.nope'")
    assert_error(rate_limit(monitor, "tests.add", ratelimit="1/s", workername=NOPE_WORKER),
                 404, f"Unknown worker '{NOPE_WORKER}'")
    assert_error(rate_limit(monitor, "tests.add", ratelimit="abc", workername=w), 403,
                 "Failed to set rate limit: 'Invalid rate limit string: "
                 "ValueError(\"could not convert string to float: 'abc'\")'")


# POST /api/task/timeout/<name> ------------------------------------------------------------------


def test_timeout_sets_the_limits_on_the_worker(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    r = monitor.client.post("/api/task/timeout/tests.sleep",
                            data={"soft": "30", "hard": "100", "workername": w1.hostname})
    assert_message(r, "time limits set successfully")
    options = registered_options(broker, w1, "soft_time_limit", "time_limit")["tests.sleep"]
    assert options == "[soft_time_limit=30.0 time_limit=100.0]"
    # In the query string, and only one of them.
    r = monitor.client.post("/api/task/timeout/tests.sleep",
                            params={"soft": "45.5", "workername": w1.hostname})
    assert_message(r, "time limits set successfully")
    options = registered_options(broker, w1, "soft_time_limit", "time_limit")["tests.sleep"]
    assert options == "[soft_time_limit=45.5]"  # the hard limit is unset (None)
    r = monitor.client.post("/api/task/timeout/tests.sleep", data={"workername": w1.hostname})
    assert_message(r, "time limits set successfully")


def test_timeout_errors_in_order(monitor: MonitorProcess, w1: CeleryWorker) -> None:
    def timeout(name: str, **form: str) -> httpx.Response:
        return monitor.client.post(f"/api/task/timeout/{name}", data=form)

    assert_error(timeout("tests.nope", soft="1"), 400, "Missing argument workername")
    assert_error(timeout("tests.nope", soft="abc", workername=NOPE_WORKER), 400,
                 "Invalid argument 'abc' of type 'float'")
    assert_error(timeout("tests.nope", hard="abc", workername=w1.hostname), 400,
                 "Invalid argument 'abc' of type 'float'")
    assert_error(timeout("tests.nope", soft="1", workername=NOPE_WORKER), 404,
                 "Unknown task 'tests.nope'")
    assert_error(timeout("tests.sleep", soft="1", workername=NOPE_WORKER), 404,
                 f"Unknown worker '{NOPE_WORKER}'")
