"""Acking after the store commits (``--event-queue NAME`` and a store on disk): a celeriac killed
between reading an event and writing it finds the event again in its stable queue.

In process: a message stays unacked (and goes back to the queue when the reader stops) until the
store has committed its events. Then a real celeriac on SQLite, SIGKILLed in the middle of a
stream of task events and started again on the same queue: every task sent, before, during and
after, is in the database in its final state. (Two instances on one PostgreSQL, the leader
SIGKILLed: ``tests/test_leader.py``.)
"""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid
from pathlib import Path

from kombu import Connection

from celeriac.events.amqp import PREFETCH, AmqpEventSource, committing, prefetch_for
from celeriac.state import State
from celeriac.store.memory import MemoryStore
from celeriac.store.sqlite import SqliteStore
from tests.events.test_ingest import Stream, send_events, status, until
from tests.fixtures import BrokerInfo, MonitorFactory, RabbitMQServer, RedisServer, wait_for


def ready_messages(url: str, queue: str) -> int:
    """Messages waiting in ``queue`` (not delivered, or given back unacked)."""
    with Connection(url) as conn:
        _, count, _ = conn.default_channel.queue_declare(queue, passive=True)
    return int(count)


def test_a_message_is_acked_only_once_the_store_has_committed_its_events(
    amqp_url: str, tmp_path: Path
) -> None:
    assert committing(MemoryStore(100)) is None  # in memory: acked once applied, as before
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"), flush_interval=3600)  # flush by hand
    store.start()
    state = State(store)
    queue = f"ack-{uuid.uuid4().hex[:8]}"
    try:
        src = AmqpEventSource(amqp_url, state.apply, queue_name=queue, ack_when=committing(store))
        assert src.prefetch == prefetch_for(store.flush_interval) > PREFETCH
        src.start()
        assert src.wait_subscribed(20)
        events = [("task-received", {"uuid": f"t{i}", "name": "tests.x"}) for i in range(20)]
        send_events(amqp_url, *events)
        wait_for(lambda: state.applied >= 20, 20, message="the events applied")
        src.close()  # applied, not committed: not acked, so the broker has them again
        wait_for(lambda: ready_messages(amqp_url, queue) == 20, 20, message="the requeue")

        src = AmqpEventSource(amqp_url, state.apply, queue_name=queue, ack_when=committing(store))
        src.start()
        wait_for(lambda: state.applied >= 40, 20, message="the redelivered events")
        assert store.flush()  # committed: acked within a few checks
        wait_for(lambda: not src._unacked, 10, message="the acks")
        src.close()
        assert ready_messages(amqp_url, queue) == 0
        assert store.count() == 20
    finally:
        store.close()


def test_a_batch_the_state_cannot_take_from_a_stable_queue_comes_again(
    amqp_url: str, tmp_path: Path
) -> None:
    # The state's store unreachable for a while (a PostgreSQL restart, say): the batches read
    # meanwhile must not be acked, or a stable queue would lose them.
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"), flush_interval=0.05)
    store.start()
    state = State(store)
    refusals = 3

    def sink(events: list[dict]) -> None:
        nonlocal refusals
        if refusals > 0:
            refusals -= 1
            raise ConnectionError("the store is unreachable")
        state.apply(events)

    queue = f"refused-{uuid.uuid4().hex[:8]}"
    src = AmqpEventSource(amqp_url, sink, queue_name=queue, ack_when=committing(store))
    try:
        src.start()
        assert src.wait_subscribed(20)
        sent = [f"r{i}" for i in range(30)]
        send_events(amqp_url, *[("task-succeeded", {"uuid": u, "result": "1"}) for u in sent])
        wait_for(lambda: store.count() == 30, 30, message="every task, once the state takes them")
        assert refusals == 0 and src.counters.sink_failures == 3
        assert src.counters.gaps == 0  # nothing was missed: the broker kept the batches
        assert {u: store.get(u)["state"] for u in sent} == dict.fromkeys(sent, "SUCCESS")
        wait_for(lambda: not src._unacked, 10, message="the acks")
    finally:
        src.close()
        store.close()
    assert ready_messages(amqp_url, queue) == 0


def test_without_a_stable_queue_a_refused_batch_is_counted_and_the_stream_goes_on(
    amqp_url: str,
) -> None:
    state = State(MemoryStore(100))
    refused = []

    def sink(events: list[dict]) -> None:
        if not refused:
            refused.append(len(events))
            raise ConnectionError("the store is unreachable")
        state.apply(events)

    src = AmqpEventSource(amqp_url, sink)
    try:
        src.start()
        assert src.wait_subscribed(20)
        send_events(amqp_url, ("task-succeeded", {"uuid": "first", "result": "1"}))
        wait_for(lambda: src.counters.sink_failures == 1, 20, message="the refusal")
        send_events(amqp_url, ("task-succeeded", {"uuid": "second", "result": "2"}))
        wait_for(lambda: state.task("second") is not None, 20, message="the next batch")
        assert src.counters.sink_failures == 1 and src.counters.reconnects == 0
    finally:
        src.close()


def final_states(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT uuid, state FROM tasks"))
    finally:
        conn.close()


def test_sigkill_then_a_restart_on_the_same_event_queue_loses_nothing(
    rabbitmq_server: RabbitMQServer,
    redis_server: RedisServer,
    celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:
    info = BrokerInfo("amqp", rabbitmq_server.new_url("ackwrite"), redis_server.new_url())
    args = ("--event-queue", f"celeriac-ack-{uuid.uuid4().hex[:8]}")
    db = tmp_path / "tasks.sqlite3"
    env = {"CELERIAC_DB": str(db)}
    mon = celeriac_server(info, *args, app=None, env=env)
    until(lambda: status(mon)["connected"], 20, "celeriac to consume")
    stream = Stream(info.url, uuid.uuid4().hex[:8])
    stream.start()

    def more_sent(n: int, what: str) -> None:
        sent = len(stream.whole)
        until(lambda: len(stream.whole) >= sent + n, 30, what)

    try:
        until(lambda: len(final_states(db)) >= 100, 30, "the stream to be written")
        # Twice: a kill between an ack and the next commit loses events when acks do not
        # wait for the commit, and a kill at one moment may fall where none was pending.
        for _ in range(2):
            more_sent(77, "more tasks sent")  # a moment unrelated to the store's flushes
            os.killpg(mon.pid, signal.SIGKILL)  # events read, applied, maybe not yet written
            mon.proc.wait(timeout=10)
            more_sent(60, "tasks sent while it is down")
            mon = celeriac_server(info, *args, app=None, env=env)
        more_sent(100, "tasks sent after the restart")
    finally:
        stream.stop()
    whole = list(stream.whole)
    assert stream.failures == 0

    def all_final() -> bool:
        states = final_states(db)
        return all(states.get(u) == "SUCCESS" for u in whole)

    until(all_final, 60, "every task sent, in its final state")
    assert "Traceback" not in mon.log_text()
