"""GET /api/workers and the /api/worker/* commands, against real workers on Redis and RabbitMQ.

Every command is checked by its effect, seen through the API itself: the pool really has one
more process in a later ``?refresh=true``, the queue really shows in ``active_queues``, the
worker process really exits. Two workers (``w1``, ``w2``) and one celeriac are shared by the
module per broker; tests that shut down or reconfigure a worker start their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fixtures import (
    BrokerInfo,
    CeleryWorker,
    MonitorFactory,
    MonitorProcess,
    WorkerFactory,
    wait_for,
)

#: celeriac's --inspect-timeout for this module, in seconds: a refresh that waited for it
#: instead of for the replies would take at least this long.
INSPECT_TIMEOUT = 5.0
#: A queue only w1 consumes, so a task sent there runs on w1 and nowhere else.
ONLY_W1 = "only-w1"
NOPE = "celery@nope"
UNKNOWN = f"Unknown worker '{NOPE}'"


# Fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(
    broker: BrokerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CeleryWorker, CeleryWorker, MonitorProcess]]:
    """w1, w2 and celeriac on ``broker``, started side by side; stopped when the module is done
    with ``broker``."""
    workers = WorkerFactory(tmp_path_factory.mktemp(f"workers-{broker.kind}"))
    monitors = MonitorFactory(tmp_path_factory.mktemp(f"monitor-{broker.kind}"))
    try:
        with ThreadPoolExecutor(3) as pool:
            w1 = pool.submit(workers, broker, hostname="w1@%h", concurrency=2,
                             queues=["celery", ONLY_W1])
            w2 = pool.submit(workers, broker, hostname="w2@%h", concurrency=2)
            m = pool.submit(monitors, broker, "--inspect-timeout", str(int(INSPECT_TIMEOUT * 1000)))
        started = (w1.result(), w2.result(), m.result())
        wait_known(started[2], started[0].hostname, started[1].hostname)
        yield started
    finally:
        monitors.close()
        workers.close()


@pytest.fixture(scope="module")
def w1(shared: tuple[CeleryWorker, CeleryWorker, MonitorProcess]) -> CeleryWorker:
    """Consumes ``celery`` and ``only-w1``; prefork, 2 processes."""
    return shared[0]


@pytest.fixture(scope="module")
def w2(shared: tuple[CeleryWorker, CeleryWorker, MonitorProcess]) -> CeleryWorker:
    """Consumes ``celery``; prefork, 2 processes."""
    return shared[1]


@pytest.fixture(scope="module")
def monitor(shared: tuple[CeleryWorker, CeleryWorker, MonitorProcess]) -> MonitorProcess:
    """celeriac with a 5 s inspect timeout, once both shared workers are online in it."""
    return shared[2]


# Helpers ----------------------------------------------------------------------------------------


def get_workers(m: MonitorProcess, **params: str) -> dict[str, Any]:
    r = m.client.get("/api/workers", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body, dict)
    return body


def refreshed(m: MonitorProcess, name: str) -> dict[str, Any]:
    """What ``name`` says about itself right now."""
    return get_workers(m, refresh="true", workername=name)[name]


def pool_processes(m: MonitorProcess, name: str) -> list[int]:
    return list(refreshed(m, name)["stats"]["pool"]["processes"])


def queue_names(info: dict[str, Any]) -> set[str]:
    return {q["name"] for q in info["active_queues"]}


def post(m: MonitorProcess, path: str, **params: str) -> httpx.Response:
    return m.client.post(path, params=params)


def assert_message(r: httpx.Response, message: str) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"message": message}


def assert_error(r: httpx.Response, status: int, text: str) -> None:
    assert (r.status_code, r.text) == (status, text)
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"


def wait_known(m: MonitorProcess, *names: str, timeout: float = 30.0) -> None:
    """Until every worker is online in the event stream and listed by /api/workers."""

    def known() -> bool:
        status = get_workers(m, status="true")
        return all(status.get(n) is True for n in names) and set(names) <= set(get_workers(m))

    wait_for(known, timeout, 0.1, f"{', '.join(names)} online in celeriac")


# GET /api/workers ---------------------------------------------------------------------------------


def test_lists_every_worker_with_what_it_says_about_itself(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker, w2: CeleryWorker
) -> None:
    workers = get_workers(monitor)
    assert {w1.hostname, w2.hostname} <= set(workers)
    for w in (w1, w2):
        info = workers[w.hostname]
        assert {"registered", "stats", "active_queues", "conf", "timestamp"} <= set(info)
        assert {"tests.add", "tests.sleep", "tests.abortable"} <= set(info["registered"])
        stats = info["stats"]
        assert stats["pid"] == w.pid
        assert stats["broker"]["transport"] == broker.kind
        assert len(stats["pool"]["processes"]) == 2
        assert stats["pool"]["max-concurrency"] == 2
        assert stats["prefetch_count"] > 0
        assert "rusage" in stats
        assert "autoscaler" not in stats
        assert isinstance(info["conf"], dict) and info["conf"]
        assert isinstance(info["timestamp"], float)
        assert abs(info["timestamp"] - time.time()) < 600
    assert queue_names(workers[w1.hostname]) == {"celery", ONLY_W1}
    assert queue_names(workers[w2.hostname]) == {"celery"}


def test_status_gives_booleans_from_the_event_stream(
    monitor: MonitorProcess, w1: CeleryWorker, w2: CeleryWorker
) -> None:
    for value in ("true", "1", "Yes"):
        status = get_workers(monitor, status=value)
        assert status[w1.hostname] is True and status[w2.hostname] is True
        assert all(isinstance(v, bool) for v in status.values())
    assert_error(monitor.client.get("/api/workers", params={"status": "maybe"}), 400,
                 "Invalid argument 'maybe' of type 'bool'")
    assert_error(monitor.client.get("/api/workers", params={"refresh": "abc"}), 400,
                 "Invalid argument 'abc' of type 'bool'")


def test_workername_gives_only_that_worker(
    monitor: MonitorProcess, w1: CeleryWorker, w2: CeleryWorker
) -> None:
    only = get_workers(monitor, workername=w2.hostname)
    assert list(only) == [w2.hostname]
    assert only[w2.hostname]["stats"]["pid"] == w2.pid
    for params in ({"workername": NOPE}, {"workername": NOPE, "refresh": "true"}):
        assert_error(monitor.client.get("/api/workers", params=params), 404, UNKNOWN)


def test_refresh_stamps_every_worker_anew_without_waiting_out_the_timeout(
    monitor: MonitorProcess, w1: CeleryWorker, w2: CeleryWorker
) -> None:
    before = get_workers(monitor)
    # Several in a row: a reply left over from one inspect must not cost the next one a worker.
    for _ in range(4):
        started = time.monotonic()
        after = get_workers(monitor, refresh="true")
        elapsed = time.monotonic() - started
        # Waiting for every known worker's reply, not for the inspect timeout (limit=).
        assert elapsed < INSPECT_TIMEOUT - 1, f"refresh took {elapsed:.2f} s"
        for w in (w1, w2):
            assert after[w.hostname]["timestamp"] > before[w.hostname]["timestamp"]
            assert after[w.hostname]["stats"]["pid"] == w.pid
        before = after
    # Only that one is asked (and stamped) when a workername is given.
    one = get_workers(monitor, refresh="true", workername=w1.hostname)
    assert list(one) == [w1.hostname]
    assert one[w1.hostname]["timestamp"] > before[w1.hostname]["timestamp"]
    assert get_workers(monitor)[w2.hostname]["timestamp"] == before[w2.hostname]["timestamp"]


def test_many_requests_at_once_are_all_answered(
    monitor: MonitorProcess, w1: CeleryWorker, w2: CeleryWorker
) -> None:
    """More concurrent control calls than half of Celery's connection pool (10 by default).

    Each broadcast holds two pooled connections at once; when every one of celeriac's control
    threads holds one and waits for a second, nothing is ever answered again.
    """

    def ask(i: int) -> set[str]:
        if i % 2:
            r = monitor.client.get("/api/workers", params={"refresh": "true"})
        else:
            r = monitor.client.get("/api/workers",
                                   params={"refresh": "true", "workername": w1.hostname})
        assert r.status_code == 200, r.text
        return set(r.json())

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, range(48)))
    assert all(w1.hostname in a for a in answers)
    assert all(w2.hostname in a for i, a in enumerate(answers) if i % 2)


def test_a_worker_the_events_do_not_show_does_not_disturb_refreshes(
    monitor: MonitorProcess,
    broker: BrokerInfo,
    celery_worker: WorkerFactory,
    w1: CeleryWorker,
    w2: CeleryWorker,
) -> None:
    """A worker without heartbeats answers broadcasts but is never counted as online.

    A refresh waits for as many replies as workers it knows online; a reply beyond that would
    stay in the reply queue of the thread that asked (RabbitMQ keeps it for 10 s), and the next
    inspect on that thread would count it against its own limit and come back a worker short.
    """
    quiet = celery_worker(broker, hostname="quiet@%h", concurrency=1, queues=["quiet-q"],
                          extra_args=["--without-heartbeat"])
    assert broker.ping(quiet.hostname)
    for _ in range(8):
        asked_at = time.time()
        workers = get_workers(monitor, refresh="true")
        for w in (w1, w2):
            assert workers[w.hostname]["timestamp"] >= asked_at
    assert get_workers(monitor, status="true").get(quiet.hostname) is not True


def test_refresh_of_one_worker_fills_its_task_lists(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    running = broker.tasks.sleep.apply_async((4,), queue=ONLY_W1)
    later = broker.tasks.add.apply_async((1, 2), queue=ONLY_W1, countdown=300)

    def both_seen() -> dict[str, Any] | None:
        info = refreshed(monitor, w1.hostname)
        active = {t["id"] for t in info["active"]}
        scheduled = {s["request"]["id"] for s in info["scheduled"]}
        return info if running.id in active and later.id in scheduled else None

    info = wait_for(both_seen, 20, 0.2, "the running and the scheduled task in w1's lists")
    assert isinstance(info["reserved"], list) and isinstance(info["revoked"], list)
    assert later.id not in info["revoked"]
    later.revoke()
    wait_for(lambda: later.id in refreshed(monitor, w1.hostname)["revoked"], 15, 0.2,
             "the revoked id in w1's revoked list")
    assert running.get(timeout=20) == 4
    # What a refresh learnt stays in the plain listing.
    assert "active" in get_workers(monitor)[w1.hostname]


# Commands -----------------------------------------------------------------------------------------


def test_pool_grow_and_shrink_change_the_number_of_processes(
    monitor: MonitorProcess, w2: CeleryWorker
) -> None:
    # The prefork pool adds and removes processes in its maintenance pass, every 5 s.
    name = w2.hostname
    before = refreshed(monitor, name)["stats"]
    size = len(before["pool"]["processes"])

    # n defaults to 1
    assert_message(post(monitor, f"/api/worker/pool/grow/{name}"),
                   f"Growing '{name}' worker's pool by 1")
    wait_for(lambda: len(pool_processes(monitor, name)) == size + 1, 30, 0.2,
             f"{name}'s pool to have {size + 1} processes")
    assert refreshed(monitor, name)["stats"]["prefetch_count"] > before["prefetch_count"]

    assert_message(post(monitor, f"/api/worker/pool/shrink/{name}", n="1"),
                   f"Shrinking '{name}' worker's pool by 1")
    wait_for(lambda: len(pool_processes(monitor, name)) == size, 30, 0.2,
             f"{name}'s pool to be back to {size} processes")
    assert refreshed(monitor, name)["stats"]["prefetch_count"] == before["prefetch_count"]
    # n is echoed as given
    assert_message(post(monitor, f"/api/worker/pool/grow/{name}", n="2"),
                   f"Growing '{name}' worker's pool by 2")
    assert_message(post(monitor, f"/api/worker/pool/shrink/{name}", n="2"),
                   f"Shrinking '{name}' worker's pool by 2")


def test_pool_restart_needs_pool_restarts_enabled(
    monitor: MonitorProcess, w1: CeleryWorker
) -> None:
    name = w1.hostname
    assert_error(post(monitor, f"/api/worker/pool/restart/{name}"), 403,
                 f"Failed to restart the '{name}' pool: ValueError('Pool restarts not enabled')")


def test_autoscale_needs_an_autoscaler(monitor: MonitorProcess, w1: CeleryWorker) -> None:
    name = w1.hostname
    size = len(pool_processes(monitor, name))
    assert_error(post(monitor, f"/api/worker/pool/autoscale/{name}", min="1", max="4"), 403,
                 f"Failed to autoscale '{name}' worker: ValueError('Autoscale not enabled')")
    assert "autoscaler" not in refreshed(monitor, name)["stats"]
    assert len(pool_processes(monitor, name)) == size


def test_add_and_cancel_consumer(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    name, queue = w1.hostname, "extra-q"
    assert queue not in queue_names(refreshed(monitor, name))
    assert_message(post(monitor, f"/api/worker/queue/add-consumer/{name}", queue=queue),
                   f"add consumer {queue}")
    wait_for(lambda: queue in queue_names(refreshed(monitor, name)), 15, 0.2,
             f"{queue} in {name}'s active_queues")
    # and w1 really consumes it: nobody else could run this task
    assert broker.tasks.add.apply_async((20, 22), queue=queue).get(timeout=20) == 42

    r = monitor.client.post(f"/api/worker/queue/cancel-consumer/{name}", data={"queue": queue})
    assert_message(r, f"no longer consuming from {queue}")
    wait_for(lambda: queue not in queue_names(refreshed(monitor, name)), 15, 0.2,
             f"{queue} gone from {name}'s active_queues")
    assert queue_names(refreshed(monitor, name)) == {"celery", ONLY_W1}


def test_argument_errors(monitor: MonitorProcess, w1: CeleryWorker) -> None:
    name = w1.hostname
    bad_int = "Invalid argument 'abc' of type 'int'"
    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("pool/grow", {"n": "abc"}, 400, bad_int),
        ("pool/shrink", {"n": "abc"}, 400, bad_int),
        ("pool/autoscale", {"min": "abc", "max": "3"}, 400, bad_int),
        ("pool/autoscale", {"min": "1", "max": "abc"}, 400, bad_int),
        ("pool/autoscale", {"max": "3"}, 400, "Missing argument min"),
        ("pool/autoscale", {"min": "", "max": "3"}, 400, "Missing argument min"),
        ("pool/autoscale", {"min": "1"}, 400, "Missing argument max"),
        ("queue/add-consumer", {}, 400, "Missing argument queue"),
        ("queue/add-consumer", {"queue": ""}, 400, "Missing argument queue"),
        ("queue/cancel-consumer", {}, 400, "Missing argument queue"),
    ]
    for path, params, status, text in cases:
        assert_error(post(monitor, f"/api/worker/{path}/{name}", **params), status, text)
        # an unknown worker is reported before its arguments are looked at
        assert_error(post(monitor, f"/api/worker/{path}/{NOPE}", **params), 404, UNKNOWN)
    for path in ("shutdown", "pool/restart", "pool/grow", "pool/shrink"):
        assert_error(post(monitor, f"/api/worker/{path}/{NOPE}"), 404, UNKNOWN)
    assert_error(post(monitor, f"/api/worker/pool/autoscale/{NOPE}", min="1", max="2"), 404,
                 UNKNOWN)
    # none of that reached w1
    info = refreshed(monitor, name)
    assert len(info["stats"]["pool"]["processes"]) == 2
    assert queue_names(info) == {"celery", ONLY_W1}
    assert w1.alive()


def test_arguments_in_a_form_body(monitor: MonitorProcess, w2: CeleryWorker) -> None:
    """Flower's own examples send the form content type, with the arguments in the body or not."""
    name = w2.hostname
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    r = monitor.client.post(f"/api/worker/pool/grow/{name}?n=1", headers=form)
    assert_message(r, f"Growing '{name}' worker's pool by 1")
    r = monitor.client.post(f"/api/worker/pool/shrink/{name}", data={"n": "1"})
    assert_message(r, f"Shrinking '{name}' worker's pool by 1")
    r = monitor.client.post(f"/api/worker/queue/add-consumer/{name}", data={"queue": ""})
    assert_error(r, 400, "Missing argument queue")


# Workers of their own: autoscaling, pool restarts, shutdown --------------------------------------


def test_autoscaling_worker(
    monitor: MonitorProcess, broker: BrokerInfo, celery_worker: WorkerFactory
) -> None:
    w = celery_worker(broker, hostname="auto@%h", autoscale=(3, 1), queues=["auto-q"])
    name = w.hostname
    wait_known(monitor, name)
    scaler = refreshed(monitor, name)["stats"]["autoscaler"]
    assert (scaler["max"], scaler["min"]) == (3, 1)

    reason = "is not supported with autoscale. Adjust autoscale range instead."
    assert_error(post(monitor, f"/api/worker/pool/grow/{name}"), 403,
                 f"Failed to grow '{name}' worker's pool: pool_grow {reason}")
    assert_error(post(monitor, f"/api/worker/pool/shrink/{name}", n="1"), 403,
                 f"Failed to shrink '{name}' worker's pool: pool_shrink {reason}")

    # min and max in a form body, as in Flower's example
    r = monitor.client.post(f"/api/worker/pool/autoscale/{name}", data={"min": "2", "max": "5"})
    assert_message(r, f"Autoscaling '{name}' worker (min=2, max=5)")

    def scaled() -> bool:
        s = refreshed(monitor, name)["stats"]["autoscaler"]
        return (s["max"], s["min"]) == (5, 2)

    wait_for(scaled, 15, 0.2, f"{name}'s autoscaler to say max=5 min=2")
    # the new minimum is kept: the pool grows to 2 processes
    wait_for(lambda: len(pool_processes(monitor, name)) >= 2, 30, 0.3,
             f"{name}'s pool to grow to its new minimum")


def test_pool_restart_replaces_the_processes(
    monitor: MonitorProcess, broker: BrokerInfo, celery_worker: WorkerFactory
) -> None:
    w = celery_worker(broker, hostname="restart@%h", concurrency=1, pool_restarts=True,
                      queues=["restart-q"])
    name = w.hostname
    wait_known(monitor, name)
    old = set(pool_processes(monitor, name))
    assert len(old) == 1
    assert_message(post(monitor, f"/api/worker/pool/restart/{name}"),
                   f"Restarting '{name}' worker's pool")

    def replaced() -> bool:
        # a pool process is replaced once it has run its next task
        broker.tasks.add.apply_async((1, 1), queue="restart-q").get(timeout=20)
        now = set(pool_processes(monitor, name))
        return bool(now) and not now & old

    wait_for(replaced, 60, 0.5, f"{name}'s pool processes to be replaced")
    assert w.alive()


def test_shutdown_stops_the_worker_which_stays_listed_as_offline(
    monitor: MonitorProcess,
    broker: BrokerInfo,
    celery_worker: WorkerFactory,
    w1: CeleryWorker,
    w2: CeleryWorker,
) -> None:
    w = celery_worker(broker, hostname="victim@%h", concurrency=1, queues=["victim-q"])
    name = w.hostname
    wait_known(monitor, name)
    assert_message(post(monitor, f"/api/worker/shutdown/{name}"), "Shutting down!")
    assert w.proc.wait(timeout=30) == 0
    wait_for(lambda: get_workers(monitor, status="true")[name] is False, 15, 0.2,
             f"{name} to show offline")
    assert w1.alive() and w2.alive()

    listed = get_workers(monitor)
    assert name in listed and listed[name]["stats"]["pid"] == w.pid
    # A refresh asks only the workers that are alive: the dead one costs no timeout.
    started = time.monotonic()
    again = get_workers(monitor, refresh="true")
    assert time.monotonic() - started < INSPECT_TIMEOUT - 1
    assert name in again
    assert again[w1.hostname]["timestamp"] > listed[w1.hostname]["timestamp"]
    status = get_workers(monitor, status="true")
    assert status[name] is False and status[w1.hostname] is True and status[w2.hostname] is True
    # Commands to it are still sent (it is a known worker), and time out.
    started = time.monotonic()
    assert_error(post(monitor, f"/api/worker/pool/grow/{name}"), 504,
                 f"Failed to grow '{name}' worker's pool: no reply from the worker")
    assert time.monotonic() - started > INSPECT_TIMEOUT - 0.5
