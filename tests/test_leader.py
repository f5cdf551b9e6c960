"""Several celeriac instances on one PostgreSQL database: one ingests, every one serves.

The election alone (two Leadership objects on one key), then real celeriac processes with
``--db postgresql://...`` and a real worker: tasks show in the API of each, the follower serves
them from the store, and when the leader is SIGKILLed mid-stream the follower takes over and
every task sent after the hand-over arrives.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid

import httpx
import psycopg
import pytest

from celeriac.cluster import Cluster
from celeriac.leader import FOLLOWER, LEADER, Leadership, is_database_url, lock_key
from celeriac.settings import Settings
from celeriac.store.postgres import PostgresStore
from tests.events.test_ingest import Stream
from tests.fixtures import BrokerInfo, wait_for
from tests.store.test_sqlite import make


def test_lock_key_is_stable_and_signed_64_bit():
    key = lock_key("redis://localhost:6379/0")
    assert key == lock_key("redis://localhost:6379/0") != lock_key("redis://localhost:6379/1")
    assert -(2**63) <= key < 2**63
    assert is_database_url("postgresql://u:p@h/db") and is_database_url("POSTGRES://h/db")
    assert not is_database_url("/var/lib/celeriac/tasks.db") and not is_database_url(None)


class Candidate:
    def __init__(self, url: str, identity: str = "redis://localhost:6379/0") -> None:
        self.events: list[str] = []
        self.follows = 0
        self.leadership = Leadership(
            url, identity, lambda: self.events.append("elected"),
            lambda graceful: self.events.append("left" if graceful else "deposed"),
            self._follow, interval=0.1,
        )  # fmt: skip

    def _follow(self) -> None:
        self.follows += 1


def test_one_leader_and_a_takeover_when_it_goes(postgres_url):
    a, b = Candidate(postgres_url), Candidate(postgres_url)
    a.leadership.start()
    wait_for(lambda: a.leadership.leading, 10, message="a to lead")
    b.leadership.start()
    wait_for(lambda: b.follows >= 3, 10, message="b to follow")
    assert b.leadership.role == FOLLOWER and b.events == []
    other = Candidate(postgres_url, identity="redis://elsewhere:6379/0")  # another cluster
    other.leadership.start()
    wait_for(lambda: other.leadership.leading, 10, message="another cluster's leader")
    other.leadership.close()

    a.leadership.close()  # releases the lock
    assert a.events == ["elected", "left"]
    wait_for(lambda: b.leadership.leading, 5, message="b to take over")
    assert b.leadership.role == LEADER and b.events == ["elected"]
    b.leadership.close()


def test_a_leader_that_loses_its_connection_stops_leading(postgres_url):
    a, b = Candidate(postgres_url), Candidate(postgres_url)
    a.leadership.start()
    wait_for(lambda: a.leadership.leading, 10, message="a to lead")
    b.leadership.start()
    wait_for(lambda: b.follows >= 1, 10, message="b to follow")
    assert a.leadership._conn is not None
    pid = a.leadership._conn.info.backend_pid
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: "deposed" in a.events, 5, message="a to notice")
    wait_for(lambda: b.leadership.leading or a.leadership.leading, 5, message="a new leader")
    leaders = [c for c in (a, b) if c.leadership.leading]
    assert len(leaders) == 1
    a.leadership.close()
    b.leadership.close()


def test_an_instance_that_cannot_start_ingesting_lets_another_lead(postgres_url, caplog):
    def broken() -> None:
        raise RuntimeError("no broker today")

    sick = Leadership(postgres_url, "redis://localhost:6379/0", broken, lambda g: None,
                      interval=0.1)  # fmt: skip
    well = Candidate(postgres_url)
    with caplog.at_level("WARNING", logger="celeriac"):
        sick.start()
        time.sleep(0.5)  # it wins, fails and lets go, round after round
        well.leadership.start()
        wait_for(lambda: well.leadership.leading, 10, message="the other to lead")
        sick.close()
    well.leadership.close()
    complaints = [r for r in caplog.records if "no broker today" in r.getMessage()]
    assert len(complaints) == 1  # logged once, not once per round


# Real processes ------------------------------------------------------------------------------


def role(monitor) -> str:
    try:
        return monitor.client.get("/healthcheck", timeout=2).headers.get("X-Celeriac-Role", "")
    except httpx.TransportError:
        return ""


def task_states(monitor) -> dict[str, str]:
    reply = monitor.client.get("/api/tasks", params={"limit": 100000})
    assert reply.status_code == 200, reply.text
    return {uuid: task["state"] for uuid, task in reply.json().items()}


def all_done(monitor, ids) -> bool:
    states = task_states(monitor)
    return all(states.get(i) == "SUCCESS" for i in ids)


@pytest.fixture
def shared(celeriac_server, celery_worker, redis_broker, postgres_url):
    celery_worker(redis_broker)
    first = celeriac_server(redis_broker, env={"CELERIAC_DB": postgres_url})
    wait_for(lambda: role(first) == LEADER, 15, message="the first instance to lead")
    # The follower polls the store once an hour only: what it shows live, it heard of
    # (LISTEN/NOTIFY, celeriac/store/pg_notify.py).
    second = celeriac_server(
        redis_broker, env={"CELERIAC_DB": postgres_url, "CELERIAC_FOLLOWER_POLL": "1h"}
    )
    return first, second


def listeners(url: str) -> set[int]:
    """Backend pids of the instances' LISTEN connections on the database."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'celeriac-listen' "
            "AND datname = current_database()"
        ).fetchall()
    return {r[0] for r in rows}


def test_two_instances_on_one_database_both_show_every_task(shared, redis_broker, postgres_url):
    leader, follower = shared
    time.sleep(1.5)  # a few election rounds: the follower must stay a follower
    assert role(follower) == FOLLOWER and role(leader) == LEADER
    assert follower.client.get("/healthcheck").text == "OK"  # Flower's body, unchanged
    status = follower.client.get("/api/celeriac/status").json()
    assert status["role"] == FOLLOWER
    sent = [redis_broker.tasks.add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=20) for r in sent] == [2 * i for i in range(20)]
    ids = [r.id for r in sent]
    for monitor in (leader, follower):
        wait_for(lambda m=monitor: all_done(m, ids), 20, message=f"{monitor.url} to show all")
    info = follower.client.get(f"/api/task/info/{ids[3]}").json()
    assert info["state"] == "SUCCESS" and info["result"] == "6" and info["args"] == "(3, 3)"

    def add_listed() -> bool:  # a follower re-reads the stored names every few seconds
        types = follower.client.get("/api/task/types").json()["task-types"]
        return any(t.endswith(".add") for t in types)

    wait_for(add_listed, 10, 0.2, "the follower to list the task type")
    workers = wait_for(lambda: follower.client.get("/api/workers?status=true").json(), 10)
    assert any(up for up in workers.values()), workers  # from the stored heartbeats
    # Remote control from the follower: inspect and a pool change reach the worker.
    (name,) = workers

    def processes() -> int:
        reply = follower.client.get("/api/workers", params={"refresh": "true"}).json()
        return len(reply[name]["stats"]["pool"]["processes"])

    assert processes() == 2
    grown = follower.client.post(f"/api/worker/pool/grow/{name}", params={"n": 1})
    assert grown.status_code == 200, grown.text
    wait_for(lambda: processes() == 3, 30, 0.2, "the pool to grow")
    # Nothing was written twice: one row per task.
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (20,)
        assert conn.execute("SELECT sum(n) FROM task_counts").fetchone() == (20,)
    # The follower's live stream shows what the leader writes, as it hears of it: also after
    # its listening connection was cut (it polls meanwhile, then listens again).
    wait_for(lambda: follower.client.get("/api/celeriac/status").json()["store"]["listening"],
             10, message="the follower to listen")  # fmt: skip
    cut = listeners(postgres_url)
    assert len(cut) == 2  # one per instance (the leader ignores its own writes)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                      (sorted(cut),))  # fmt: skip
    wait_for(lambda: len(listeners(postgres_url) - cut) == 2, 15, message="listening again")
    with follower.client.stream("GET", "/ui/stream", timeout=30) as r:
        assert r.status_code == 200
        stream = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
        assert next(stream)["hello"] is True
        task_id = redis_broker.tasks.add.delay(100, 1).id
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 20
        for message in stream:
            seen.update((t["uuid"], t["state"]) for t in message["tasks"])
            if seen.get(task_id) == "SUCCESS" or time.monotonic() > deadline:
                break
        assert seen.get(task_id) == "SUCCESS"
    password = postgres_url.split(":")[2].split("@")[0]
    for monitor in (leader, follower):
        assert password not in monitor.log_text()
        assert password not in follower.client.get("/api/celeriac/status").text


def written(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM tasks").fetchone()
    return int(row[0]) if row else 0


def test_sigkill_the_leader_mid_stream_and_the_follower_takes_over(
    shared, redis_broker, postgres_url
):
    leader, follower = shared
    stop = threading.Event()
    before: list[str] = []

    def stream() -> None:
        while not stop.is_set():
            before.append(redis_broker.tasks.add.delay(1, 1).id)
            time.sleep(0.02)

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        wait_for(lambda: written(postgres_url) >= 30, 20, message="the stream to be written")
        leader.process.send_signal(signal.SIGKILL)
        # About a second (one election round) on a quiet machine; the bound is generous.
        wait_for(lambda: role(follower) == LEADER, 20, message="the follower to take over")
    finally:
        stop.set()
        sender.join()
    after = [redis_broker.tasks.add.delay(i, 1) for i in range(40)]
    assert [r.get(timeout=30) for r in after] == [i + 1 for i in range(40)]
    ids = [r.id for r in after]
    wait_for(lambda: all_done(follower, ids), 20, message="every task sent after the hand-over")
    log = follower.log_text()
    assert "took over ingest" in log, log[-3000:]  # the gap is on record
    assert "Traceback" not in log, log[-3000:]
    # What the old leader had written before it died is still there.
    states = task_states(follower)
    assert sum(1 for i in before if i in states) >= 30


def test_a_database_that_cannot_be_used_is_one_line_without_the_password(
    celeriac_server, redis_broker, postgres_server
):
    url = postgres_server.url().replace(postgres_server.password, "s3cret-wrong")
    monitor = celeriac_server(redis_broker, env={"CELERIAC_DB": url}, wait=False)
    assert monitor.process.proc.wait(timeout=30) == 1
    text = monitor.log_text()
    assert "s3cret-wrong" not in text and "password authentication failed" in text
    assert "Traceback" not in text


def test_a_leader_stopped_with_sigterm_writes_what_it_ingested_before_letting_go(
    shared, redis_broker
):
    leader, follower = shared
    sent = [redis_broker.tasks.add.delay(i, 2) for i in range(30)]
    assert [r.get(timeout=20) for r in sent] == [i + 2 for i in range(30)]
    ids = [r.id for r in sent]
    # Shown by the leader, written or not yet (the last flush interval's are not): stop it.
    wait_for(lambda: all_done(leader, ids), 20, 0.01, "the leader to show them")
    leader.process.send_signal(signal.SIGTERM)
    assert leader.process.proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises
    wait_for(lambda: role(follower) == LEADER, 20, message="the follower to take over")
    assert all_done(follower, ids)  # every one was written before the lock was let go
    assert "unwritten tasks dropped" not in leader.log_text()


def test_a_leader_that_stops_writes_everything_before_letting_go(redis_broker, postgres_url):
    # In-process, with a flush interval that never elapses: only the hand-over can write.
    leader = Cluster(Settings(broker=redis_broker.url, db=postgres_url))
    follower = Cluster(Settings(broker=redis_broker.url, db=postgres_url))
    store = leader.store
    assert isinstance(store, PostgresStore)
    store.flush_interval = 3600
    leader.start()
    try:
        wait_for(lambda: leader.role == LEADER, 10, message="the leader")
        follower.start()
        wait_for(lambda: follower.role == FOLLOWER, 10, message="the follower")
        for i in range(50):
            store.put(make(i, state="SUCCESS"))
        assert follower.store.count() == 0  # nothing written yet
    finally:
        leader.close()
    try:
        assert follower.store.count() == 50
        wait_for(lambda: follower.role == LEADER, 10, message="the follower to take over")
    finally:
        follower.close()


def stored_states(url: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT uuid, state FROM tasks WHERE uuid = ANY(%s)", (ids,))
        return {u: s for u, s in rows}


def ingest_status(monitor) -> dict:
    """The instance's event reader counters (``connected``: its queue is declared, bound to
    the events exchange and consumed); {} while it does not answer."""
    try:
        reply = monitor.client.get("/api/celeriac/status", timeout=5)
    except httpx.TransportError:
        return {}
    return reply.json().get("events", {}) if reply.status_code == 200 else {}


def test_with_a_stable_event_queue_a_sigkilled_leader_loses_nothing(
    celeriac_server, rabbitmq_server, redis_server, postgres_url
):
    # Messages are acked once the leader has committed their events (events/amqp.py): what the
    # killed leader read but did not write goes back to the queue, and the next leader reads it.
    # Every wait below is on the condition itself, with bounds meant for a loaded machine:
    # only correctness is checked here, never speed.
    info = BrokerInfo("amqp", rabbitmq_server.new_url("handover"), redis_server.new_url())
    args = ("--event-queue", f"celeriac-handover-{uuid.uuid4().hex[:8]}")
    env = {"CELERIAC_DB": postgres_url}
    leader = celeriac_server(info, *args, app=None, env=env, timeout=60)
    wait_for(lambda: role(leader) == LEADER, 30, message="the first instance to lead")
    # The queue exists once the leader consumes it; an event published before is routed
    # nowhere (the leader's role is set before its reader has even connected).
    wait_for(lambda: ingest_status(leader).get("connected"), 30, 0.05,
             "the leader to consume the event queue")  # fmt: skip
    follower = celeriac_server(info, *args, app=None, env=env, timeout=60)
    stream = Stream(info.url, uuid.uuid4().hex[:8])
    stream.start()

    def more_sent(n: int, what: str) -> None:
        sent = len(stream.whole)
        wait_for(lambda: len(stream.whole) >= sent + n, 60, message=what)

    try:
        wait_for(lambda: written(postgres_url) >= 100, 60, message="the stream to be written")
        more_sent(77, "more tasks sent")  # a moment unrelated to the leader's flushes
        sent_before_kill = len(stream.whole)
        leader.process.send_signal(signal.SIGKILL)
        wait_for(lambda: role(follower) == LEADER, 60, message="the follower to take over")
        more_sent(100, "tasks sent after the hand-over")
    finally:
        stream.stop()
    whole = list(stream.whole)
    assert stream.failures == 0  # the broker stayed up: every send went through

    def unfinished() -> dict[str, str | None]:
        states = stored_states(postgres_url, whole)
        return {u: states.get(u) for u in whole if states.get(u) != "SUCCESS"}

    left = unfinished()
    deadline = time.monotonic() + 120
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = unfinished()
    if left:  # what it takes to tell a lost event from a slow reader, if this ever fails
        where = sorted(whole.index(u) for u in left)
        pytest.fail(
            f"{len(left)} of {len(whole)} tasks not stored SUCCESS (states "
            f"{sorted(set(map(str, left.values())))}), at positions {where[:20]} of the "
            f"stream; {sent_before_kill} were sent before the kill. The new leader's "
            f"reader: {ingest_status(follower)}\n{follower.log_text()[-3000:]}"
        )
    log = follower.log_text()
    assert "took over ingest" in log and "Traceback" not in log, log[-3000:]
    # The first instance was elected at start: no take-over, no gap to report.
    assert "took over ingest" not in leader.log_text()


def test_a_follower_that_cannot_listen_polls_the_store(redis_broker, postgres_url):
    # In process: the follower polls once an hour while it hears the leader's NOTIFYs, and
    # every election round (a second) while it cannot listen.
    settings = Settings(broker=redis_broker.url, db=postgres_url, follower_poll=3600)
    leader = Cluster(Settings(broker=redis_broker.url, db=postgres_url))
    follower = Cluster(settings)
    leader.start()
    try:
        wait_for(lambda: leader.role == LEADER, 10, message="the leader")
        follower.start()
        store = follower.store
        assert isinstance(store, PostgresStore) and follower.role == FOLLOWER
        wait_for(lambda: store.listening, 10, message="the follower to listen")
        seen = follower.store_changes
        leader.store.put(make(1, state="SUCCESS"))
        assert leader.store.flush()
        wait_for(lambda: follower.store_changes > seen, 10, message="the NOTIFY heard")
        assert store._listener is not None
        store._listener.close()  # as if its connection were gone for good
        assert not store.listening
        seen = follower.store_changes
        leader.store.put(make(2, state="SUCCESS"))
        assert leader.store.flush()
        wait_for(lambda: follower.store_changes > seen, 10, message="the change polled")
    finally:
        follower.close()
        leader.close()
