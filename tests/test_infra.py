"""The fixtures themselves: real servers answer, real workers run tasks, and all of it stops."""

from __future__ import annotations

import signal

import kombu
import pytest
from celery import chain, chord, group
from celery.contrib.abortable import AbortableAsyncResult

from tests.apps.proj import TaskError
from tests.fixtures import (
    BrokerInfo,
    CeleryWorker,
    MonitorFactory,
    RabbitMQServer,
    RedisServer,
    WorkerFactory,
    wait_for,
)


def test_redis_answers_ping(redis_server: RedisServer, redis_url: str) -> None:
    with redis_server.client() as r:
        assert r.ping()
    assert redis_url.startswith(f"redis://127.0.0.1:{redis_server.port}/")
    assert not redis_url.endswith("/0")


def test_rabbitmq_accepts_a_connection_on_the_module_vhost(amqp_url: str) -> None:
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        conn.connect()
        assert conn.connected
        with conn.SimpleQueue("infra-probe") as q:
            q.put({"hello": "world"})
            message = q.get(timeout=5)
            assert message.payload == {"hello": "world"}
            message.ack()


def test_rabbitmq_node_runs_privately(rabbitmq_server: RabbitMQServer, amqp_url: str) -> None:
    assert rabbitmq_server.port != 5672
    vhost = amqp_url.rsplit("/", 1)[1]
    assert vhost in rabbitmq_server.ctl("list_vhosts").split()


def test_broker_and_backend_are_isolated(broker: BrokerInfo) -> None:
    assert broker.kind in ("redis", "amqp")
    assert broker.backend_url != broker.url
    assert broker.backend_url.startswith("redis://127.0.0.1:")


def test_worker_runs_a_task(broker: BrokerInfo, worker: CeleryWorker) -> None:
    assert worker.alive()
    assert worker.hostname.startswith("w1@") and "%" not in worker.hostname
    assert broker.tasks.add.delay(2, 3).get(timeout=10) == 5


def test_failures_retries_and_workflows(broker: BrokerInfo, worker: CeleryWorker) -> None:
    t = broker.tasks
    with pytest.raises(TaskError, match="no luck"):
        t.fail.delay("no luck").get(timeout=10)
    assert t.retry.delay(2, countdown=0).get(timeout=10) == 2
    assert chain(t.add.s(1, 2), t.mul.s(10)).delay().get(timeout=10) == 30
    assert group(t.echo.s(i) for i in range(3)).delay().get(timeout=10) == [0, 1, 2]
    assert chord(t.add.s(i, i) for i in range(3))(t.tsum.s()).get(timeout=10) == 6


def test_abortable_task_stops_when_aborted(broker: BrokerInfo, worker: CeleryWorker) -> None:
    result = broker.tasks.abortable.delay(30)
    wait_for(lambda: result.state == "STARTED", 10, message="the task to start")
    AbortableAsyncResult(result.id, app=broker.app).abort()
    assert result.get(timeout=10) == "aborted"

    kept = AbortableAsyncResult(broker.tasks.abortable.delay(30, keep_aborted=True).id,
                                app=broker.app)
    wait_for(lambda: kept.state == "STARTED", 10, message="the second task to start")
    kept.abort()
    wait_for(lambda: f"{kept.id}] ignored" in worker.log_text(), 10, 0.05, "the task to stop")
    assert kept.state == "ABORTED"


def test_function_scoped_worker_with_options(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory
) -> None:
    w = celery_worker(redis_broker, hostname="opts@%h", concurrency=1, autoscale=(3, 1),
                      pool_restarts=True, queues=["infra", "other"])
    control = redis_broker.app.control
    stats = control.inspect(destination=[w.hostname], timeout=5, limit=1).stats()[w.hostname]
    assert stats["autoscaler"]["max"] == 3 and stats["autoscaler"]["min"] == 1
    queues = control.inspect(destination=[w.hostname], timeout=5, limit=1).active_queues()
    assert sorted(q["name"] for q in queues[w.hostname]) == ["infra", "other"]
    reply = control.pool_restart(destination=[w.hostname], reply=True, timeout=5, limit=1)
    assert reply == [{w.hostname: {"ok": "reload started"}}]
    assert redis_broker.tasks.add.apply_async((1, 1), queue="infra").get(timeout=10) == 2
    assert w.stop(signal.SIGTERM) == 0
    assert not w.alive()


@pytest.mark.parametrize("kind", ["celeriac", "flower"])
def test_monitor_sees_the_worker(
    kind: str, redis_broker: BrokerInfo, celeriac_server: MonitorFactory,
    module_celery_worker: WorkerFactory,
) -> None:
    w = module_celery_worker(redis_broker, hostname=f"mon-{kind}@%h")
    monitor = celeriac_server(redis_broker) if kind == "celeriac" else (
        celeriac_server.flower(redis_broker))
    assert monitor.client.get("/healthcheck").text == "OK"
    wait_for(lambda: monitor.client.get("/api/workers", params={"status": "true"})
             .json().get(w.hostname), 15, 0.2, f"{kind} to list {w.hostname} as online")
    assert monitor.stop() is not None
    assert not monitor.alive()
