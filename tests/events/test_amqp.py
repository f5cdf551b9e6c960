"""AmqpEventSource against a real RabbitMQ node, fed by Celery's own event dispatcher.

The node and this module's vhost come from the shared fixtures (``rabbitmq_server``,
``amqp_url``); every test tags its events with a run id, since all queues here bind ``#``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import amqp
import pytest
from celery import Celery
from kombu import Connection, Producer

from celeriac.events.amqp import AmqpEventSource
from tests.fixtures import RabbitMQServer


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Collector:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.wakes = 0

    def __call__(self, events: list[dict[str, Any]]) -> None:
        self.batches.append(events)

    def wake(self) -> None:
        self.wakes += 1

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b]

    def of(self, run: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("run") == run]


@pytest.fixture
def source() -> Iterator[Callable[..., tuple[AmqpEventSource, Collector]]]:
    started: list[AmqpEventSource] = []

    def make(
        url: str, sink: Collector | None = None, **kw: Any
    ) -> tuple[AmqpEventSource, Collector]:
        sink = sink or Collector()
        src = AmqpEventSource(url, sink, wake=sink.wake, **kw)
        src.start()
        started.append(src)
        assert src.wait_subscribed(15), src.counters.last_error
        return src, sink

    yield make
    for src in started:
        src.close()


def dispatch(url: str, run: str, n: int, *, batch: int = 0, kind: str = "task-succeeded") -> None:
    app = Celery("evtest", broker=url, set_as_current=False)
    with app.connection_for_write() as conn:
        kw: dict[str, Any] = {"buffer_group": ["task"], "buffer_limit": batch} if batch else {}
        d = app.events.Dispatcher(conn, hostname="celery@amqp", enabled=True, **kw)
        for i in range(n):
            d.send(kind, run=run, uuid=f"{run}-{i}")
        d.flush()
        d.close()


def publish_raw(url: str, body: bytes, content_type: str | None, routing_key: str) -> None:
    """Straight to the exchange, bypassing every serializer (py-amqp's Message)."""
    with Connection(url) as conn:
        conn.connect()
        props: dict[str, Any] = {"content_encoding": "utf-8"}
        if content_type is not None:
            props["content_type"] = content_type
        conn.default_channel.basic_publish(
            amqp.Message(body, **props), exchange="celeryev", routing_key=routing_key
        )


def queue_info(server: RabbitMQServer, vhost: str, name: str) -> dict[str, Any]:
    out = server.ctl(
        "list_queues",
        "-p",
        vhost,
        "--formatter",
        "json",
        "name",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "messages",
    )
    for row in json.loads(out):
        if row["name"] == name:
            # arguments come as [name, type, value] triples
            row["arguments"] = {a[0]: a[-1] for a in row["arguments"] or ()}
            return dict(row)
    raise AssertionError(f"queue {name!r} not found in {out}")


def vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1].replace("%2F", "/")


# -- events from Celery's dispatcher ---------------------------------------------------------


def test_dispatcher_events_arrive_decoded(amqp_url: str, source: Any) -> None:
    src, sink = source(amqp_url)
    dispatch(amqp_url, "single", 200)
    wait_until(lambda: len(sink.of("single")) == 200, what="200 events")
    ev = sink.of("single")[0]
    assert ev["type"] == "task-succeeded" and ev["uuid"] == "single-0"
    assert ev["hostname"] == "celery@amqp"
    assert {"timestamp", "clock", "pid", "utcoffset"} <= ev.keys()
    assert src.counters.malformed == 0
    assert sink.wakes == 1


def test_task_multi_lists_are_flattened(amqp_url: str, source: Any) -> None:
    _, sink = source(amqp_url)
    dispatch(amqp_url, "multi", 25, batch=10, kind="task-started")
    with Connection(amqp_url) as conn:
        producer = Producer(conn.default_channel)
        body = [{"type": "task-succeeded", "uuid": f"p{i}", "run": "multi"} for i in range(5)]
        producer.publish(body, exchange="celeryev", routing_key="task.multi", serializer="json")
    wait_until(lambda: len(sink.of("multi")) == 30, what="30 events")
    uuids = [e["uuid"] for e in sink.of("multi")]
    assert uuids == [f"multi-{i}" for i in range(25)] + [f"p{i}" for i in range(5)]


def test_malformed_payloads_are_counted_and_the_reader_goes_on(amqp_url: str, source: Any) -> None:
    src, sink = source(amqp_url)
    for body, ctype in [
        (b"{not json", "application/json"),
        (b"12", "application/json"),
        (b'{"uuid": "no type"}', "application/json"),
        (b"", "application/json"),
        (b"\x80\x04K\x01.", "application/x-python-serialize"),  # pickle is never accepted
        (b"\xff\xfe", None),
    ]:
        publish_raw(amqp_url, body, ctype, "task.succeeded")
    publish_raw(amqp_url, b'{"type": "custom-thing", "run": "bad"}', "application/json", "c.t")
    publish_raw(amqp_url, b'{"type": "task-started", "run": "bad"}', "application/json", "t.s")
    wait_until(lambda: len(sink.of("bad")) == 2, what="the good events after the bad ones")
    assert [e["type"] for e in sink.of("bad")] == ["custom-thing", "task-started"]
    assert src.counters.malformed == 6
    assert src.counters.messages == 8
    assert src.counters.connected and src.counters.gaps == 0


def test_big_event_spanning_several_frames(amqp_url: str, source: Any) -> None:
    _, sink = source(amqp_url)
    big = "x" * 400_000  # frame_max is 128 KiB: the body comes in four frames
    body = json.dumps({"type": "task-received", "run": "big", "args": big}).encode()
    publish_raw(amqp_url, body, "application/json", "task.received")
    publish_raw(amqp_url, b'{"type": "task-started", "run": "big"}', "application/json", "t.s")
    wait_until(lambda: len(sink.of("big")) == 2, what="the big event")
    assert sink.of("big")[0]["args"] == big


# -- the queue -------------------------------------------------------------------------------


def test_per_run_queue_has_no_ttl(
    amqp_url: str, rabbitmq_server: RabbitMQServer, source: Any
) -> None:
    src, _ = source(amqp_url)
    assert src.current_queue is not None
    assert src.current_queue.startswith("celeriac.events.")
    info = queue_info(rabbitmq_server, vhost_of(amqp_url), src.current_queue)
    args = info["arguments"]
    assert "x-message-ttl" not in args
    assert 60_000 <= args["x-expires"] <= 3_600_000
    assert info["auto_delete"] and info["exclusive"] and not info["durable"]


def test_stable_queue_keeps_what_was_published_while_closed(
    amqp_url: str, rabbitmq_server: RabbitMQServer, source: Any
) -> None:
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    src, _ = source(amqp_url, queue_name=name)
    src.close()
    dispatch(amqp_url, "offline", 300)
    dispatch(amqp_url, "offline-multi", 50, batch=10)
    info = queue_info(rabbitmq_server, vhost_of(amqp_url), name)
    assert info["durable"] and not info["auto_delete"] and not info["exclusive"]
    assert info["arguments"] == {}  # no TTL, no expiry, no length limit
    assert info["messages"] == 305  # 300 single + 5 lists of 10
    src, sink = source(amqp_url, queue_name=name)
    wait_until(lambda: len(sink.of("offline")) == 300, what="the events kept while closed")
    wait_until(lambda: len(sink.of("offline-multi")) == 50, what="the batched ones too")
    src.close()  # acks what it took
    assert queue_info(rabbitmq_server, vhost_of(amqp_url), name)["messages"] == 0


# -- connection: reconnect, close ------------------------------------------------------------


def test_reconnect_after_the_broker_drops_us(
    amqp_url: str, rabbitmq_server: RabbitMQServer, source: Any, caplog: Any
) -> None:
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    src, sink = source(amqp_url, queue_name=name)
    dispatch(amqp_url, "before", 20)
    wait_until(lambda: len(sink.of("before")) == 20, what="events before the drop")
    with caplog.at_level("WARNING", logger="celeriac.events"):
        rabbitmq_server.ctl("close_all_connections", "-p", vhost_of(amqp_url), "test drop")
        dispatch(amqp_url, "during", 20)  # may land while we reconnect: the queue keeps them
        wait_until(lambda: src.counters.reconnects == 1, what="the reconnect")
        wait_until(lambda: sink.wakes == 2, what="the wake after the reconnect")
    assert src.counters.gaps == 1
    assert src.counters.connected
    assert any("blind" in r.getMessage() for r in caplog.records)
    dispatch(amqp_url, "after", 20)
    wait_until(lambda: len(sink.of("after")) == 20, what="events after the reconnect")
    wait_until(lambda: len({e["uuid"] for e in sink.of("during")}) == 20, what="kept events")


def test_close_is_prompt(amqp_url: str) -> None:
    src = AmqpEventSource(amqp_url, lambda evs: None)
    src.start()
    assert src.wait_subscribed(15)
    t = time.monotonic()
    src.close()
    assert time.monotonic() - t < 1.5
    assert not src.counters.connected
    assert not [th for th in threading.enumerate() if th.name.startswith("celeriac-amqp")]


def test_not_amqp_is_refused() -> None:
    with pytest.raises(ValueError, match="py-amqp"):
        AmqpEventSource("redis://127.0.0.1:1/0", lambda evs: None)


def test_accepts_a_celery_app(amqp_url: str, source: Any) -> None:
    app = Celery("evtest", broker=amqp_url, set_as_current=False)
    _, sink = source(app)
    dispatch(amqp_url, "app", 3)
    wait_until(lambda: len(sink.of("app")) == 3, what="events via the app's connection")


def test_heartbeats_keep_an_idle_connection(amqp_url: str, source: Any) -> None:
    # RabbitMQ closes a connection silent for two heartbeats: only ours keep this one open.
    src, sink = source(amqp_url, heartbeat=1)
    assert src._conn is not None and src._conn.connection.heartbeat == 1
    time.sleep(4.0)
    assert src.counters.reconnects == 0 and src.counters.connected
    dispatch(amqp_url, "heartbeat", 3)
    wait_until(lambda: len(sink.of("heartbeat")) == 3, what="events after the idle spell")
    assert src.counters.reconnects == 0


def dispatch_through_drops(url: str, run: str, n: int) -> None:
    """Like :func:`dispatch`, but every event confirmed by the broker, resent if it was not.

    The drop closes the publisher's connection too: without confirms an event written to a
    dying socket is gone without an error, and Celery's dispatcher would buffer failed sends
    for ever. At-least-once here, so that only the reader can lose anything.
    """
    app = Celery("evtest", broker=url, set_as_current=False)
    app.conf.broker_transport_options = {"confirm_publish": True}
    i = 0
    deadline = time.monotonic() + 60
    while i < n and time.monotonic() < deadline:
        try:
            with app.connection_for_write() as conn:
                d = app.events.Dispatcher(
                    conn, hostname="celery@amqp", enabled=True, buffer_while_offline=False
                )
                while i < n:
                    d.send("task-succeeded", run=run, uuid=f"{run}-{i}")
                    i += 1
        except Exception:
            time.sleep(0.1)


def test_drop_mid_stream_on_a_stable_queue_loses_nothing(
    amqp_url: str, rabbitmq_server: RabbitMQServer, source: Any
) -> None:
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    src, sink = source(amqp_url, queue_name=name)
    publisher = threading.Thread(target=dispatch_through_drops, args=(amqp_url, "stream", 5000))
    publisher.start()
    wait_until(lambda: len(sink.of("stream")) > 500, what="the stream to flow")
    rabbitmq_server.ctl("close_all_connections", "-p", vhost_of(amqp_url), "mid-stream drop")
    publisher.join(60)
    wait_until(lambda: len({e["uuid"] for e in sink.of("stream")}) == 5000, what="all 5000")
    time.sleep(0.5)
    assert src.counters.reconnects >= 1  # unacked deliveries came again on the new channel
    assert src.counters.connected
    assert "PRECONDITION" not in (src.counters.last_error or "")

    def settled() -> bool:  # every delivery acked on the channel it came on: nothing left over
        columns = ["name", "messages_ready", "messages_unacknowledged"]
        rows = rabbitmq_server.ctl(
            "list_queues", "-q", "--no-table-headers", "-p", vhost_of(amqp_url), *columns
        )
        return any(line.split() == [name, "0", "0"] for line in rows.splitlines())

    wait_until(settled, what="the stable queue to be drained and acked")
