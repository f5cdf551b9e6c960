"""RedisEventSource against a real redis-server, fed by Celery's own event dispatcher."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from celery import Celery
from kombu import Producer

from celeriac.events import redis as redis_events
from celeriac.events.redis import RedisAddress, RedisEventSource, glob_escape

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class PrivateRedis:
    """A private redis-server: its own port, folder and process group."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.unix = str(folder / "redis.sock")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        args += ["--unixsocket", self.unix, "--unixsocketperm", "700", *self.extra]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._answers, 10, "redis-server to start")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def url(self, db: int = 0, auth: str = "") -> str:
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    srv = PrivateRedis(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.stop()


class Collector:
    """A sink that keeps every batch; thread-safe enough for one reader thread."""

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
def source() -> Iterator[Callable[..., tuple[RedisEventSource, Collector]]]:
    started: list[RedisEventSource] = []

    def make(
        url: str, *, sink: Callable[[list[dict[str, Any]]], None] | None = None, **kw: Any
    ) -> tuple[RedisEventSource, Collector]:
        """A started source feeding a Collector, or ``sink`` (the Collector then only counts
        wake-ups)."""
        collector = Collector()
        src = RedisEventSource(url, sink or collector, wake=collector.wake, **kw)
        src.start()
        started.append(src)
        assert src.wait_subscribed(10), src.counters.last_error
        return src, collector

    yield make
    for src in started:
        src.close()


def celery_app(url: str) -> Celery:
    return Celery("evtest", broker=url, set_as_current=False)


def publish_raw(url: str, db: int, routing_key: str, data: bytes) -> None:
    r = redis_py.Redis.from_url(url)
    r.publish(f"/{db}.celeryev/{routing_key}", data)
    r.close()


def envelope(body: bytes, routing_key: str = "task.succeeded") -> bytes:
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"hostname": "celery@t"},
            "properties": {
                "delivery_mode": 1,
                "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("redis://localhost", dict(host="localhost", port=6379, db=0)),
        ("redis://h:6390/3", dict(host="h", port=6390, db=3)),
        ("redis://:s%40cret@h/1", dict(password="s@cret", username=None, db=1)),
        ("redis://bob:pw@h:1/2", dict(username="bob", password="pw", db=2)),
        ("rediss://h:6380/0?ssl_cert_reqs=none", dict(tls=True, tls_verify=False)),
        ("unix:///run/redis.sock?db=4", dict(unix_path="/run/redis.sock", db=4)),
        ("redis+socket:///tmp/r.sock?virtual_host=5", dict(unix_path="/tmp/r.sock", db=5)),
    ],
)
def test_address_from_url(url: str, expect: dict[str, Any]) -> None:
    addr = RedisAddress.from_url(url)
    for key, value in expect.items():
        assert getattr(addr, key) == value


@pytest.mark.parametrize("url", ["amqp://h//", "redis://h/notanumber"])
def test_address_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        RedisAddress.from_url(url)


def test_glob_escape_in_pattern() -> None:
    assert glob_escape("app*[1]/0.celeryev/") == "app\\*\\[1\\]/0.celeryev/"


# -- events from Celery's dispatcher ---------------------------------------------------------


def test_dispatcher_events_arrive_decoded(server: PrivateRedis, source: Any) -> None:
    src, sink = source(server.url(0))
    app = celery_app(server.url(0))
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="celery@t1", enabled=True)
        d.send("worker-online", run="single", freq=2.0)
        for i in range(50):
            d.send("task-received", run="single", uuid=f"t{i}", name="tasks.add", args="(1,)")
            d.send("task-succeeded", run="single", uuid=f"t{i}", result="2", runtime=0.1)
        d.close()
    wait_until(lambda: len(sink.of("single")) == 101, what="101 events")
    evs = sink.of("single")
    assert evs[0]["type"] == "worker-online"
    assert evs[0]["hostname"] == "celery@t1"
    assert evs[1]["type"] == "task-received" and evs[1]["uuid"] == "t0"
    assert {"timestamp", "clock", "pid", "utcoffset"} <= evs[1].keys()
    assert src.counters.malformed == 0
    assert src.counters.connected


def test_dispatcher_task_multi_batches_are_flattened(server: PrivateRedis, source: Any) -> None:
    src, sink = source(server.url(0))
    app = celery_app(server.url(0))
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(
            conn, hostname="celery@t2", enabled=True, buffer_group=["task"], buffer_limit=10
        )
        for i in range(25):
            d.send("task-started", run="multi", uuid=f"m{i}")
        d.flush()
        d.close()
        # and a list body published by hand, as a worker's hub does, on routing key task.multi
        producer = Producer(conn.default_channel)
        body = [{"type": "task-succeeded", "uuid": f"p{i}", "run": "multi"} for i in range(5)]
        producer.publish(body, exchange="celeryev", routing_key="task.multi", serializer="json")
    wait_until(lambda: len(sink.of("multi")) == 30, what="30 events")
    uuids = [e["uuid"] for e in sink.of("multi")]
    assert uuids == [f"m{i}" for i in range(25)] + [f"p{i}" for i in range(5)]
    assert src.counters.messages >= 4  # 10 + 10 + 5 batched, then the hand-made list


def test_db_number_is_part_of_the_channel(server: PrivateRedis, source: Any) -> None:
    _, sink3 = source(server.url(3))
    _, sink0 = source(server.url(0))
    app = celery_app(server.url(3))
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="celery@db3", enabled=True)
        d.send("task-started", run="db3", uuid="x")
        d.close()
    wait_until(lambda: len(sink3.of("db3")) == 1, what="the db 3 event")
    time.sleep(0.2)
    assert sink0.of("db3") == []


# -- malformed input -------------------------------------------------------------------------


def test_malformed_payloads_are_counted_and_the_reader_goes_on(
    server: PrivateRedis, source: Any
) -> None:
    src, sink = source(server.url(0))
    bad = [
        envelope(b"{not json"),
        envelope(b"[1, 2]"),  # a list of non-events: two malformed events
        envelope(b"12"),
        envelope(b'{"uuid": "no type"}'),
        b'{"body": "%%%% not base64", "properties": {"body_encoding": "base64"}}',
        b"plain garbage",
    ]
    for data in bad:
        publish_raw(server.url(0), 0, "task.succeeded", data)
    publish_raw(server.url(0), 0, "custom.thing", envelope(b'{"type": "custom-thing"}'))
    good = json.dumps({"type": "task-started", "uuid": "ok", "run": "bad"}).encode()
    publish_raw(server.url(0), 0, "task.started", envelope(good))
    wait_until(lambda: len(sink.of("bad")) == 1, what="the good event after the bad ones")
    assert src.counters.malformed == 7
    assert src.counters.messages == 8
    assert [e["type"] for e in sink.events] == ["custom-thing", "task-started"]
    assert src.counters.connected and src.counters.gaps == 0


def publish_started(server: PrivateRedis, uuid: str) -> None:
    event = json.dumps({"type": "task-started", "uuid": uuid}).encode()
    publish_raw(server.url(0), 0, "task.started", envelope(event))


def test_a_batch_the_sink_refuses_for_a_while_is_given_to_it_again(
    server: PrivateRedis, source: Any
) -> None:
    # The state's store unreachable for a moment: pub/sub cannot deliver the batch again,
    # so the reader holds it and tries again (the net thread keeps the socket drained).
    taken: list[str] = []
    refusals = [2]

    def sink(events: list[dict[str, Any]]) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise RuntimeError("store unreachable")
        taken.extend(e["uuid"] for e in events)

    src, _ = source(server.url(0), sink=sink)
    publish_started(server, "a")
    wait_until(lambda: taken == ["a"], what="the refused batch, taken at last")
    assert src.counters.sink_failures == 2
    assert "store unreachable" in (src.counters.last_error or "")
    publish_started(server, "b")
    wait_until(lambda: taken == ["a", "b"], what="the next batch")
    assert src.counters.gaps == 0


def dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "events dropped" in r.getMessage()]


def test_a_batch_the_sink_never_takes_is_dropped_and_the_reader_goes_on(
    server: PrivateRedis,
    source: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redis_events, "SINK_RETRY_S", 0.3)
    taken: list[str] = []

    def sink(events: list[dict[str, Any]]) -> None:
        if any(e["uuid"] == "poison" for e in events):
            raise RuntimeError("sink bug")
        taken.extend(e["uuid"] for e in events)

    with caplog.at_level("ERROR", logger="celeriac.events"):
        src, _ = source(server.url(0), sink=sink)
        publish_started(server, "poison")
        wait_until(lambda: src.counters.sink_failures >= 2, what="the retries")
        time.sleep(0.4)  # given up by now
        publish_started(server, "next")
        wait_until(lambda: taken == ["next"], what="the stream after the dropped batch")
    assert "sink bug" in (src.counters.last_error or "")
    assert dropped(caplog) == [
        "redis events: 1 events dropped: the state could not take them for 0.3 s"
    ]


def test_a_batch_refused_when_the_reader_closes_is_dropped_as_such(
    server: PrivateRedis, source: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given up at close, long before SINK_RETRY_S: the log must not say it was tried 30 s.
    def sink(events: list[dict[str, Any]]) -> None:
        raise RuntimeError("store unreachable")

    with caplog.at_level("ERROR", logger="celeriac.events"):
        src, _ = source(server.url(0), sink=sink)
        publish_started(server, "refused")
        wait_until(lambda: src.counters.sink_failures >= 1, what="the first refusal")
        src.close()
    assert dropped(caplog) == [
        "redis events: 1 events dropped: the state had not taken them when the reader closed"
    ]


# -- volume ----------------------------------------------------------------------------------


def test_a_fast_burst_loses_nothing(server: PrivateRedis, source: Any) -> None:
    src, sink = source(server.url(0))
    n = 30_000
    r = redis_py.Redis(port=server.port)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        body = json.dumps({"type": "task-succeeded", "uuid": f"b{i}", "run": "burst"}).encode()
        pipe.publish("/0.celeryev/task.succeeded", envelope(body))
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    r.close()
    wait_until(lambda: src.counters.received >= n, timeout=60, what=f"{n} events")
    assert len({e["uuid"] for e in sink.of("burst")}) == n
    assert src.counters.gaps == 0
    assert len(sink.batches) < n  # delivered in batches, not one call per event


# -- connection: auth, unix socket, restart, close -------------------------------------------


def test_password_and_acl_user(tmp_path: Path, source: Any) -> None:
    srv = PrivateRedis(
        tmp_path, "--requirepass", "s3cret", "--user", "ev", "on", ">evpw", "~*", "&*", "+@all"
    )
    srv.start()
    try:
        for auth in (":s3cret@", "ev:evpw@"):
            src, sink = source(srv.url(0, auth))
            r = redis_py.Redis(port=srv.port, password="s3cret")
            r.publish("/0.celeryev/task.started", envelope(b'{"type": "task-started"}'))
            r.close()
            wait_until(lambda: len(sink.events) == 1, what="an authenticated event")  # noqa: B023
            src.close()
        refused = RedisEventSource(srv.url(0, ":wrong@"), lambda evs: None)
        refused.start()
        try:
            assert not refused.wait_subscribed(1.0)
            assert "AUTH" in (refused.counters.last_error or "")
        finally:
            refused.close()
    finally:
        srv.stop()


def test_unix_socket(server: PrivateRedis, source: Any) -> None:
    _, sink = source(f"unix://{server.unix}?db=0")
    publish_raw(server.url(0), 0, "task.started", envelope(b'{"type": "task-started"}'))
    wait_until(lambda: len(sink.events) == 1, what="an event over the unix socket")


def test_restart_of_redis_mid_stream(tmp_path: Path, source: Any, caplog: Any) -> None:
    srv = PrivateRedis(tmp_path)
    srv.start()
    try:
        src, sink = source(srv.url(0))
        wait_until(lambda: sink.wakes == 1, what="the first wake")
        app = celery_app(srv.url(0))
        with app.connection_for_write() as conn:
            d = app.events.Dispatcher(conn, hostname="celery@r", enabled=True)
            for i in range(10):
                d.send("task-succeeded", run="before", uuid=f"a{i}")
            d.close()
        wait_until(lambda: len(sink.of("before")) == 10, what="events before the restart")
        with caplog.at_level("WARNING", logger="celeriac.events"):
            srv.stop()
            wait_until(lambda: not src.counters.connected, what="the loss to be noticed")
            time.sleep(0.3)
            srv.start()
            wait_until(lambda: src.counters.connected, what="the reconnect")
            wait_until(lambda: sink.wakes == 2, what="the wake after the reconnect")
        assert src.counters.gaps == 1
        assert src.counters.reconnects == 1
        assert src.counters.blind_seconds >= 0.3
        assert any("blind" in r.getMessage() for r in caplog.records)
        app = celery_app(srv.url(0))
        with app.connection_for_write() as conn:
            d = app.events.Dispatcher(conn, hostname="celery@r", enabled=True)
            for i in range(10):
                d.send("task-succeeded", run="after", uuid=f"b{i}")
            d.close()
        wait_until(lambda: len(sink.of("after")) == 10, what="events after the restart")
    finally:
        srv.stop()


def test_close_is_prompt_even_when_the_server_is_gone(tmp_path: Path) -> None:
    srv = PrivateRedis(tmp_path)
    srv.start()
    src = RedisEventSource(srv.url(0), lambda evs: None)
    src.start()
    assert src.wait_subscribed(10)
    t = time.monotonic()
    src.close()
    assert time.monotonic() - t < 1.0
    srv.stop()
    src = RedisEventSource(srv.url(0), lambda evs: None)  # nothing listening: retrying
    src.start()
    time.sleep(0.3)
    t = time.monotonic()
    src.close()
    assert time.monotonic() - t < 1.5
    assert not src.counters.connected
    assert not [th for th in threading.enumerate() if th.name.startswith("celeriac-redis")]


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(
    tmp_path: Path, source: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import celeriac.events.redis as module

    monkeypatch.setattr(module, "PING_AFTER_S", 0.3)
    monkeypatch.setattr(module, "DEAD_AFTER_S", 2.0)
    srv = PrivateRedis(tmp_path)
    srv.start()
    try:
        src, sink = source(srv.url(0))
        time.sleep(3.0)  # idle: PINGed, PONG answered, still the same connection
        assert src.counters.gaps == 0 and src.counters.connected
        r = redis_py.Redis(port=srv.port)
        r.execute_command("CLIENT", "PAUSE", "4000", "ALL")  # a server that stops answering
        wait_until(lambda: src.counters.gaps == 1, timeout=15, what="the dead connection replaced")
        assert "no answer" in (src.counters.last_error or "")
        r.publish("/0.celeryev/task.started", envelope(b'{"type": "task-started"}'))
        r.close()
        wait_until(lambda: len(sink.events) == 1, what="an event on the new connection")
    finally:
        srv.stop()


def test_tls(tmp_path: Path, source: Any) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    srv = PrivateRedis(
        tmp_path, "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    )  # fmt: skip
    srv.start()
    try:
        for query in ("ssl_cert_reqs=none", f"ssl_ca_certs={cert}"):
            src, sink = source(f"rediss://localhost:{tls_port}/0?{query}")
            publish_raw(srv.url(0), 0, "task.started", envelope(b'{"type": "task-started"}'))
            wait_until(lambda: len(sink.events) == 1, what="an event over TLS")  # noqa: B023
            src.close()
        unverified = RedisEventSource(f"rediss://localhost:{tls_port}/0", lambda evs: None)
        unverified.start()
        try:
            assert not unverified.wait_subscribed(1.0)
            assert "CERTIFICATE_VERIFY_FAILED" in (unverified.counters.last_error or "")
        finally:
            unverified.close()
    finally:
        srv.stop()


def test_a_full_backlog_pauses_reading_without_losing(
    server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[dict[str, Any]] = []

    def slow_sink(events: list[dict[str, Any]]) -> None:
        time.sleep(0.05)
        got.extend(events)

    src = RedisEventSource(server.url(0), slow_sink, max_backlog_bytes=1)
    src.start()
    try:
        assert src.wait_subscribed(10)
        with caplog.at_level("WARNING", logger="celeriac.events"):
            r = redis_py.Redis(port=server.port)
            for i in range(200):
                r.publish("/0.celeryev/task.started", envelope(b'{"type": "task-started"}'))
                if i % 20 == 0:
                    time.sleep(0.01)
            r.close()
            wait_until(lambda: len(got) == 200, what="every event through a full backlog")
        assert any("pausing the socket" in rec.getMessage() for rec in caplog.records)
        assert src.counters.gaps == 0 and src.backlog_bytes == 0
    finally:
        src.close()
