"""Ingestion end to end (issue 5): a real celeriac process, a real broker restarted in the middle
of a stream of task events.

What must hold on both brokers: the process survives, no final state is undone (not even by late
duplicates sent after the restart), it reconnects without help, and ``/api/celeriac/status``
tells what happened: messages read, events decoded, malformed dropped, events applied or
ignored, gaps. After a dropped connection it wakes the workers: a ``heartbeat`` broadcast, seen
on the broker itself where workers listen (a restart would take the spy's binding with it, so
that is checked with a connection closed by the server).

RabbitMQ is restarted with ``rabbitmqctl stop_app`` / ``start_app`` (every connection and every
non-durable queue goes, the node keeps its vhosts); Redis by stopping and starting its process.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp
import httpx
import pytest
import redis as redis_py
from celery import Celery

from tests.fixtures import BrokerInfo, MonitorFactory, RabbitMQServer, RedisServer, wait_for


class Stream(threading.Thread):
    """Whole tasks (received, started, succeeded) through Celery's dispatcher until stopped.

    A send that fails (broker away) reconnects and goes on with the next task; ``whole`` lists
    the tasks whose three events were all handed to the broker.
    """

    def __init__(self, url: str, run: str) -> None:
        super().__init__(name=f"stream-{run}", daemon=True)
        self.url, self.run_id = url, run
        self.whole: list[str] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        app = Celery("stream", broker=self.url, set_as_current=False)
        app.conf.broker_connection_timeout = 1
        i = 0
        while not self.stopping.is_set():
            try:
                with app.connection_for_write() as conn:
                    d = app.events.Dispatcher(
                        conn, hostname="celery@stream", enabled=True, buffer_while_offline=False
                    )  # else a send on a dead connection is buffered, silently, for ever
                    while not self.stopping.is_set():
                        u = f"{self.run_id}-{i}"
                        i += 1
                        d.send("task-received", uuid=u, name="tests.stream", args="()",
                               kwargs="{}")
                        d.send("task-started", uuid=u)
                        d.send("task-succeeded", uuid=u, result="'ok'", runtime=0.001)
                        self.whole.append(u)
                        time.sleep(0.003)
            except Exception:
                self.failures += 1
                self.stopping.wait(0.1)

    def stop(self) -> None:
        self.stopping.set()
        self.join(20)


def send_events(url: str, *events: tuple[str, dict[str, Any]]) -> None:
    app = Celery("late", broker=url, set_as_current=False)
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="celery@late", enabled=True)
        for kind, fields in events:
            d.send(kind, **fields)
        d.close()


# -- the brokers, each with a way to restart it, to send raw bytes and to spy on broadcasts ----


class RedisSide:
    def __init__(self, server: RedisServer, backend_url: str) -> None:
        self.server = server
        self.info = BrokerInfo("redis", server.db_url(0), backend_url)
        self.spied: list[bytes] = []
        self._spy: Any = None

    def restart(self) -> None:
        self.server.stop()
        time.sleep(0.5)
        self.server.start()

    def publish_garbage(self, n: int) -> None:
        with self.server.client() as r:
            for i in range(n):
                r.publish("/0.celeryev/task.succeeded", b"not json %d" % i)

    def spy_on_broadcasts(self) -> None:
        """Listen where workers listen for control commands (kombu's fanout channel)."""
        r = redis_py.Redis(host=self.server.host, port=self.server.port)
        self._spy = r.pubsub()
        self._spy.psubscribe("/0.celery.pidbox*")

    def broadcasts(self) -> list[str]:
        while (msg := self._spy.get_message(timeout=0.1)) is not None:
            if msg["type"] == "pmessage":
                self.spied.append(msg["data"])
        methods = []
        for data in self.spied:
            env = json.loads(data)
            methods.append(json.loads(base64.b64decode(env["body"]))["method"])
        return methods

    def kick(self) -> None:
        """Close celeriac's event connection from the server side (CLIENT KILL)."""
        with self.server.client() as r:
            for client in r.client_list():
                if client.get("name") == "celeriac-events":
                    r.client_kill_filter(_id=client["id"])

    def close(self) -> None:
        if self._spy is not None:
            self._spy.close()


class AmqpSide:
    def __init__(self, server: RabbitMQServer, url: str, backend_url: str) -> None:
        self.server = server
        self.vhost = url.rsplit("/", 1)[1].replace("%2F", "/")
        self.info = BrokerInfo("amqp", url, backend_url)
        self.spy_queue = f"spy-{uuid.uuid4().hex[:8]}"

    def _channel(self) -> tuple[amqp.Connection, Any]:
        conn = amqp.Connection(f"127.0.0.1:{self.server.port}", virtual_host=self.vhost)
        conn.connect()
        return conn, conn.channel()

    def restart(self) -> None:
        self.server.ctl("stop_app")
        self.server.ctl("start_app")

    def publish_garbage(self, n: int) -> None:
        conn, ch = self._channel()
        try:
            ch.exchange_declare("celeryev", "topic", durable=True, auto_delete=False)
            for i in range(n):
                msg = amqp.Message(b"not json %d" % i, content_type="application/json")
                ch.basic_publish(msg, exchange="celeryev", routing_key="task.succeeded")
        finally:
            conn.close()

    def spy_on_broadcasts(self) -> None:
        """A queue of our own on Celery's pidbox exchange, where workers get their commands."""
        conn, ch = self._channel()
        try:
            ch.exchange_declare("celery.pidbox", "fanout", durable=False, auto_delete=False)
            ch.queue_declare(self.spy_queue, durable=False, auto_delete=False)
            ch.queue_bind(self.spy_queue, "celery.pidbox")
        finally:
            conn.close()

    def broadcasts(self) -> list[str]:
        try:
            conn, ch = self._channel()
        except Exception:
            return []
        methods = []
        try:
            while (msg := ch.basic_get(self.spy_queue, no_ack=True)) is not None:
                methods.append(json.loads(msg.body)["method"])
        finally:
            conn.close()
        return methods

    def kick(self) -> None:
        self.server.ctl("close_all_connections", "-p", self.vhost, "kicked by a test")

    def close(self) -> None:
        pass


@pytest.fixture(params=["redis", "amqp"])
def side(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> Iterator[RedisSide | AmqpSide]:
    backend = redis_server.new_url()
    made: RedisSide | AmqpSide
    if request.param == "redis":
        private = RedisServer(tmp_path / "redis")
        private.workdir.mkdir()
        private.start()
        made = RedisSide(private, backend)
    else:
        rabbit: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        made = AmqpSide(rabbit, rabbit.new_url("ingest"), backend)
    yield made
    made.close()
    if isinstance(made, RedisSide):
        made.server.stop()


def status(mon: Any) -> dict[str, Any]:
    events: dict[str, Any] = mon.client.get("/api/celeriac/status").json()["events"]
    return events


def state_of(mon: Any, task_id: str) -> str | None:
    r = mon.client.get(f"/api/task/info/{task_id}")
    return r.json().get("state") if r.status_code == 200 else None


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_for(check, timeout, 0.1, what, ignore=(httpx.TransportError,))


def test_broker_restart_mid_stream(
    side: RedisSide | AmqpSide, celeriac_server: MonitorFactory
) -> None:
    mon = celeriac_server(side.info, app=None)
    run = uuid.uuid4().hex[:8]
    until(lambda: status(mon)["connected"], 20, "celeriac to subscribe")
    side.spy_on_broadcasts()
    side.publish_garbage(7)
    send_events(side.info.url, ("custom-thing", {"x": 1}))  # not a task or worker event
    stream = Stream(side.info.url, run)
    stream.start()
    try:
        until(lambda: len(stream.whole) >= 300, 60, "the stream to flow")
        before = list(stream.whole[:200])
        until(lambda: state_of(mon, before[-1]) == "SUCCESS", 30, "the first tasks to be final")
        assert all(state_of(mon, u) == "SUCCESS" for u in before[::10])

        side.restart()  # the stream goes on; its sends fail while the broker is away
        until(lambda: status(mon)["reconnects"] >= 1 and status(mon)["connected"], 60,
              "celeriac to reconnect")
        sent_at_reconnect = len(stream.whole)
        until(lambda: len(stream.whole) >= sent_at_reconnect + 200, 60, "the stream to go on")
    finally:
        stream.stop()
    last = stream.whole[-1]
    until(lambda: state_of(mon, last) == "SUCCESS", 60,
          f"a task sent after the restart ({stream.failures} failed sends; {status(mon)})")

    # Late and duplicate events after the restart never undo a final state.
    send_events(
        side.info.url,
        *[("task-received", {"uuid": u, "name": "tests.stream"}) for u in before[:20]],
        *[("task-started", {"uuid": u}) for u in before[:20]],
    )
    send_events(side.info.url, ("task-succeeded", {"uuid": "marker-" + run}))
    until(lambda: state_of(mon, "marker-" + run) == "SUCCESS", 30, "the late events to be in")
    assert [state_of(mon, u) for u in before] == ["SUCCESS"] * len(before)
    assert mon.alive()

    # The counters say what happened, and add up once the stream is over.
    ev = status(mon)
    assert ev["connected"] is True
    assert ev["reconnects"] >= 1 and ev["gaps"] >= 1 and ev["blind_seconds"] > 0
    assert ev["malformed"] == 7
    assert ev["ignored"] >= 1  # the custom-thing event
    assert ev["received"] == ev["applied"] + ev["ignored"]
    assert ev["messages"] == ev["received"] + ev["malformed"]  # one event a message here
    assert ev["applied"] >= 3 * (len(before) + 200)
    assert "s blind" in mon.log_text()


def test_a_dropped_connection_wakes_the_workers(
    side: RedisSide | AmqpSide, celeriac_server: MonitorFactory
) -> None:
    mon = celeriac_server(side.info, app=None)
    until(lambda: status(mon)["connected"], 20, "celeriac to subscribe")
    side.spy_on_broadcasts()
    time.sleep(0.5)
    side.broadcasts()  # forget the wake of the first connect, if the spy saw it
    side.kick()
    until(lambda: status(mon)["gaps"] >= 1 and status(mon)["connected"], 30, "a reconnect")
    until(lambda: "heartbeat" in side.broadcasts(), 20, "the heartbeat broadcast")
    send_events(side.info.url, ("task-succeeded", {"uuid": "after-kick"}))
    until(lambda: state_of(mon, "after-kick") == "SUCCESS", 30, "events after the reconnect")


def test_a_restarted_celeriac_reads_what_was_published_meanwhile(
    rabbitmq_server: RabbitMQServer,
    redis_server: RedisServer,
    celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:
    """``--event-queue NAME``: the queue outlives celeriac, so a restart loses nothing."""
    info = BrokerInfo("amqp", rabbitmq_server.new_url("requeue"), redis_server.new_url())
    args = ("--event-queue", f"celeriac-e2e-{uuid.uuid4().hex[:8]}")
    env = {"CELERIAC_DB": str(tmp_path / "kept.sqlite3")}
    mon = celeriac_server(info, *args, app=None, env=env)
    until(lambda: status(mon)["connected"], 20, "celeriac to consume")
    send_events(info.url, ("task-received", {"uuid": "before", "name": "tests.x"}),
                ("task-succeeded", {"uuid": "before", "result": "1"}))
    until(lambda: state_of(mon, "before") == "SUCCESS", 30, "the first task")
    mon.stop()

    meanwhile = [f"meanwhile-{i}" for i in range(50)]
    send_events(info.url, *[("task-received", {"uuid": u, "name": "tests.x"}) for u in meanwhile],
                *[("task-succeeded", {"uuid": u, "result": "2"}) for u in meanwhile])
    mon = celeriac_server(info, *args, app=None, env=env)
    until(lambda: all(state_of(mon, u) == "SUCCESS" for u in meanwhile), 30,
          "the tasks published while celeriac was stopped")
    assert state_of(mon, "before") == "SUCCESS"  # from the store
    assert status(mon)["gaps"] == 0
