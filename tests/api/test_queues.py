"""GET /api/queues/length against the broker's own counts, on Redis and RabbitMQ.

One worker consumes ``slowq`` with one process and a prefetch of one; a long task keeps it busy
while more tasks pile up in the queue, so the count is stable while the test compares it with
what the broker itself says (Redis: LLEN of the list and of its priority sub-lists; RabbitMQ:
``rabbitmqctl list_queues messages_ready``).
"""

from __future__ import annotations

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
    RabbitMQServer,
    RedisServer,
    WorkerFactory,
    wait_for,
)

SLOWQ = "slowq"
#: kombu's Redis transport keeps priorities 0-9 in four lists: ``q``, ``q\x06\x163``, ...
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
REDIS_PRIORITY_SEP = "\x06\x16"


@pytest.fixture(scope="module")
def shared(
    broker: BrokerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CeleryWorker, MonitorProcess]]:
    """The slow worker and celeriac, started side by side.

    The worker has one process, a prefetch of one and fair scheduling: it holds at most one
    message it is not running. (``--prefetch-multiplier``, not ``worker.prefetch_multiplier=1``:
    Celery reads that option's default from the config before it applies ``key=value``
    arguments.)
    """
    workers = WorkerFactory(tmp_path_factory.mktemp(f"workers-{broker.kind}"))
    monitors = MonitorFactory(tmp_path_factory.mktemp(f"monitor-{broker.kind}"))
    try:
        with ThreadPoolExecutor(2) as pool:
            w = pool.submit(workers, broker, hostname="slow@%h", concurrency=1, queues=[SLOWQ],
                            extra_args=["-O", "fair", "--prefetch-multiplier=1"])
            m = pool.submit(monitors, broker, "--inspect-timeout", "5000")
        worker, monitor = w.result(), m.result()

        def online() -> bool:
            r = monitor.client.get("/api/workers", params={"status": "true"})
            return r.json().get(worker.hostname) is True

        wait_for(online, 30, 0.1, f"{worker.hostname} online in celeriac")
        yield worker, monitor
    finally:
        monitors.close()
        workers.close()


@pytest.fixture(scope="module")
def slow_worker(shared: tuple[CeleryWorker, MonitorProcess]) -> CeleryWorker:
    return shared[0]


@pytest.fixture(scope="module")
def monitor(shared: tuple[CeleryWorker, MonitorProcess]) -> MonitorProcess:
    return shared[1]


@pytest.fixture(scope="module")
def broker_count(broker: BrokerInfo, request: pytest.FixtureRequest) -> Any:
    """``broker_count(queue)``: the ready messages of ``queue``, asked of the broker directly."""
    if broker.kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        db = int(broker.url.rsplit("/", 1)[1])

        def redis_count(queue: str) -> int:
            with server.client(db) as r:
                return sum(int(r.llen(key)) for key in redis_keys(queue))

        return redis_count

    rabbit: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
    vhost = broker.url.rsplit("/", 1)[1]

    def amqp_count(queue: str) -> int:
        out = rabbit.ctl("list_queues", "-p", vhost, "--no-table-headers", "name",
                         "messages_ready")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return 0

    return amqp_count


def redis_keys(queue: str) -> list[str]:
    return [queue if p == 0 else f"{queue}{REDIS_PRIORITY_SEP}{p}" for p in REDIS_PRIORITY_STEPS]


def lengths(m: MonitorProcess) -> list[dict[str, Any]]:
    r: httpx.Response = m.client.get("/api/queues/length")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["active_queues"]
    return list(body["active_queues"])


def length_of(m: MonitorProcess, queue: str) -> int | None:
    for q in lengths(m):
        if q["name"] == queue:
            return int(q["messages"])
    return None


def purge(broker: BrokerInfo, queue: str) -> None:
    with broker.app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def test_lists_only_the_queues_workers_consume(
    monitor: MonitorProcess, broker: BrokerInfo
) -> None:
    # a queue with messages that no worker consumes is not listed
    broker.tasks.add.apply_async((1, 2), queue="nobody-q")
    assert lengths(monitor) == [{"name": SLOWQ, "messages": 0}]


def test_counts_the_messages_waiting_in_every_priority(
    monitor: MonitorProcess,
    broker: BrokerInfo,
    slow_worker: CeleryWorker,
    broker_count: Any,
    request: pytest.FixtureRequest,
) -> None:
    tasks = broker.tasks
    blocker = tasks.sleep.apply_async((120,), queue=SLOWQ)
    request.addfinalizer(lambda: blocker.revoke(terminate=True))
    wait_for(lambda: blocker.state == "STARTED", 20, 0.1, "the long task to start")

    n = 7
    for i in range(n):
        tasks.add.apply_async((i, i), queue=SLOWQ, priority=(i * 3) % 10)
    request.addfinalizer(lambda: purge(broker, SLOWQ))

    if broker.kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        with server.client(int(broker.url.rsplit("/", 1)[1])) as r:
            filled = [k for k in redis_keys(SLOWQ) if r.llen(k)]
        assert len(filled) > 1, "the tasks should be spread over the priority lists"

    def agreed() -> int | None:
        # The worker may take one more message (its prefetch) at any moment: compare only
        # when the broker's own count is the same before and after asking celeriac.
        before = broker_count(SLOWQ)
        ours = length_of(monitor, SLOWQ)
        after = broker_count(SLOWQ)
        return ours if before == ours == after and n - 1 <= ours <= n else None

    count = wait_for(agreed, 30, 0.3, f"celeriac's count of {SLOWQ} to match the broker's")
    assert n - 1 <= count <= n
    assert blocker.state == "STARTED"  # nothing of it ran yet: the count was of waiting tasks

    purge(broker, SLOWQ)
    wait_for(lambda: length_of(monitor, SLOWQ) == 0, 20, 0.3, f"{SLOWQ} to be empty")


def test_a_queue_added_to_a_worker_is_listed_until_cancelled(
    monitor: MonitorProcess, broker: BrokerInfo, slow_worker: CeleryWorker
) -> None:
    name, queue = slow_worker.hostname, "added-q"
    r = monitor.client.post(f"/api/worker/queue/add-consumer/{name}", params={"queue": queue})
    assert r.status_code == 200 and r.json() == {"message": f"add consumer {queue}"}
    wait_for(lambda: length_of(monitor, queue) == 0, 15, 0.2, f"{queue} to be listed")
    assert [q["name"] for q in lengths(monitor)] == sorted([SLOWQ, queue])

    r = monitor.client.post(f"/api/worker/queue/cancel-consumer/{name}", params={"queue": queue})
    assert r.status_code == 200
    wait_for(lambda: length_of(monitor, queue) is None, 15, 0.2, f"{queue} to be gone")
    assert [q["name"] for q in lengths(monitor)] == [SLOWQ]
