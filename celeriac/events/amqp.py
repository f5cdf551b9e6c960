"""The RabbitMQ event reader: its own queue, no silent TTL, raw bodies, acks in batches.

Celery's receiver declares ``celeryev.<uuid>`` with ``x-message-ttl`` 5 s and consumes with
``no_ack``: a monitor more than five seconds behind loses events without a trace. This reader
declares a queue of its own on the ``celeryev`` topic exchange (bound to ``#``):

- with ``queue_name``: durable, not auto-deleted, no TTL, no expiry. A restarted celeriac finds
  the events published while it was down waiting in it (until the broker itself restarts:
  Celery publishes events as transient messages);
- without: ``celeriac.events.<uuid>``, exclusive and auto-deleted with the connection, no
  message TTL, and an ``x-expires`` backstop in case it is ever orphaned.

It consumes with a prefetch window and acknowledges with ``multiple=True`` after the sink has
taken a batch (every ``ack_every`` messages or ``ack_interval`` seconds), so a crash can only
redeliver, never lose, what was in flight. With a store that writes in batches (``ack_when``:
SQLite, PostgreSQL) a message is acknowledged only once the store has committed what its
events changed: a celeriac killed between reading an event and writing it gets it again from
a stable queue (or, several instances on one PostgreSQL, the next leader does). The prefetch
window then covers the store's flush interval at full rate (:func:`prefetch_for`). If the
state cannot take a batch from a stable queue (its store unreachable, say), the batch is not
acked: the channel is dropped and the broker delivers it again after a pause that grows to
5 s while the failure lasts. On a per-run queue the batch is counted and skipped, as on Redis.

Bodies are raw JSON (no envelope): they go straight from py-amqp's message to orjson, skipping
kombu's Message wrapper, which would cost more than the decode itself.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from amqp.exceptions import UnexpectedFrame
from kombu import Connection

from celeriac.constants import EVENT_EXCHANGE, EVENT_QUEUE_PREFIX
from celeriac.events.base import EventSink, IngestCounters
from celeriac.events.decode import Decoded, amqp_messages
from celeriac.settings import redact_url

log = logging.getLogger("celeriac.events")

PREFETCH = 2000
ACK_EVERY = 500  # a quarter of the prefetch window: the broker never waits on our acks
ACK_INTERVAL_S = 0.1  # and no event waits longer than this for its batch
POLL_S = 0.25  # how often an idle loop looks at close()
HEARTBEAT_S = 20.0  # AMQP heartbeat: a silent broker is known dead after two of these
HEARTBEAT_CHECK_S = 1.0
BACKOFF_MAX_S = 1.0
# After the sink failed on a batch of a stable queue (left unacked): the first pause before
# the broker delivers it again, doubled on each failure in a row up to the last.
SINK_BACKOFF_S = 0.1
SINK_BACKOFF_MAX_S = 5.0
ANON_QUEUE_EXPIRES_S = 300.0  # x-expires of the per-run queue: deleted 5 min after it is unused
RECV_SIZE = 64 * 1024
FRAME_END = 0xCE
_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, size
_LONGLONG = struct.Struct(">Q")
_SHORT = struct.Struct(">H")
_DELIVER = b"\x00\x3c\x00\x3c"  # basic (60) . deliver (60)
#: Acking after the store commits: how often a reader waiting on a commit looks again, the
#: longest a closing reader waits for the last commit, and the rate the prefetch window is
#: sized for (the most messages a second this reader takes on one core, measured ~15-20k).
COMMIT_CHECK_S = 0.05
CLOSE_COMMIT_WAIT_S = 1.0
RATE_FOR_PREFETCH = 20_000
PREFETCH_MAX = 65_535  # basic.qos's prefetch-count is a short


@runtime_checkable
class Committed(Protocol):
    """A store that tells when what was put is committed (``store/writer.py``)."""

    flush_interval: float

    def put_mark(self) -> int: ...

    def committed_mark(self) -> int: ...


def committing(store: object) -> Committed | None:
    """``store`` if it tells what is committed (SQLite, PostgreSQL); None for one in memory,
    whose events are acked once applied: nothing survives it to wait for."""
    return store if isinstance(store, Committed) else None


def prefetch_for(flush_interval: float) -> int:
    """The prefetch window when acking after the store commits: unacked messages wait a flush
    interval, the write, and the next ack batch; a window smaller than rate x that wait would
    stall the broker's deliveries (throughput capped at window / wait)."""
    wait = 2 * flush_interval + 0.5
    return min(PREFETCH_MAX, max(PREFETCH, int(RATE_FOR_PREFETCH * wait)))


class SinkFailed(Exception):
    """The sink refused a batch read from a stable queue: it is left to the broker."""


class AmqpEventSource:
    """Reads Celery's events from RabbitMQ (py-amqp) on its own thread and feeds them to ``sink``.

    ``app_or_url`` is a Celery app (its broker settings are used: SSL, login method,
    transport options) or a broker URL. ``wake`` is called (on a thread of its own) each time
    consuming starts, the first time included. Heartbeats are always on (``heartbeat`` s;
    Celery itself only turns ``broker_heartbeat`` on for a worker's consumer), so a dead
    connection is noticed even when no event flows. ``ack_when``: a store whose commits the
    acks wait for (see the module docstring); the prefetch window is then sized for it.
    """

    def __init__(
        self,
        app_or_url: Any,
        sink: EventSink,
        *,
        queue_name: str | None = None,
        wake: Callable[[], None] | None = None,
        prefetch: int | None = None,
        ack_every: int = ACK_EVERY,
        ack_interval: float = ACK_INTERVAL_S,
        heartbeat: float = HEARTBEAT_S,
        ack_when: Committed | None = None,
    ) -> None:
        if isinstance(app_or_url, str):
            self._base = Connection(app_or_url, heartbeat=heartbeat)
        else:
            self._base = app_or_url.connection_for_read(heartbeat=heartbeat)
        if self._base.transport.driver_name != "py-amqp":
            raise ValueError(
                f"AmqpEventSource needs py-amqp, not {self._base.transport.driver_name!r} "
                f"({redact_url(self._base.as_uri())})"
            )
        self.url = redact_url(self._base.as_uri())
        self.queue_name = queue_name
        self.counters = IngestCounters()
        if prefetch is None:  # unacked messages wait for the store's commit, if told to
            prefetch = PREFETCH if ack_when is None else prefetch_for(ack_when.flush_interval)
        self.prefetch = prefetch
        self.ack_every = min(ack_every, max(1, prefetch // 2))
        self.ack_interval = ack_interval
        self._sink = sink
        self._wake = wake
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._pending: list[tuple[Any, str | None, str | None]] = []
        self._last_tag = 0
        # Acking after the store commits: (the store's put mark, the last delivery tag) of
        # each batch handed to the sink and not acked yet, oldest first.
        self._ack_when = ack_when
        self._unacked: deque[tuple[int, int]] = deque()
        self.current_queue: str | None = None  # the queue consumed now (per-run ones change)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("AmqpEventSource already started")
        self._thread = threading.Thread(target=self._run, name="celeriac-amqp-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop consuming; returns within about a second. What was delivered is acked first."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * POLL_S + 1.0)
        self.counters.connected = False

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the queue is bound and consumed (for tests, benchmarks and startup)."""
        return self._subscribed.wait(timeout)

    # -- the connection loop ---------------------------------------------------------------

    def _run(self) -> None:
        lost_at: float | None = None
        backoff = 0.0
        sink_backoff = SINK_BACKOFF_S
        while not self._stop.is_set():
            conn = self._base.clone()
            self._conn = conn
            consuming = False
            try:
                conn.connect()
                channel = self._declare(conn)
                consuming = True
                backoff = 0.0
                self.counters.connected = True
                if lost_at is not None:
                    self._record_gap(time.monotonic() - lost_at)
                    lost_at = None
                self._subscribed.set()
                self._call_wake()
                self._consume(conn, channel)
            except SinkFailed:  # logged by _flush; the broker keeps the batch meanwhile
                self._stop.wait(sink_backoff)
                sink_backoff = min(SINK_BACKOFF_MAX_S, sink_backoff * 2)
            except Exception as exc:
                if not self._stop.is_set():
                    self._failed(exc)
                    if self.counters.connected:
                        self.counters.connected = False
                        lost_at = time.monotonic()
                    if not consuming:
                        self._stop.wait(backoff)
                        backoff = min(BACKOFF_MAX_S, backoff * 2 or 0.05)
            else:
                sink_backoff = SINK_BACKOFF_S
            finally:
                # Whatever arrived is handed on even if it cannot be acked any more: on a
                # stable queue it comes again (the state takes duplicates), on a per-run queue
                # it would otherwise be lost with the queue. py-amqp may take more deliveries
                # while it closes; and delivery tags belong to the channel, so none may be
                # acked on the next one.
                self._flush(None)
                self._conn = None
                self._release(conn)
                self._flush(None)
                self._last_tag = 0
                self._unacked.clear()  # unacked on a lost channel: the broker redelivers them
        self.counters.connected = False

    def _declare(self, conn: Connection) -> Any:
        """Exchange as Celery declares it, our queue, the ``#`` binding, QoS, the consumer."""
        channel: Any = conn.default_channel
        channel.exchange_declare(EVENT_EXCHANGE, "topic", durable=True, auto_delete=False)
        if self.queue_name:
            name = self.queue_name
            channel.queue_declare(name, durable=True, exclusive=False, auto_delete=False)
        else:
            name = f"{EVENT_QUEUE_PREFIX}{uuid.uuid4()}"
            expires = {"x-expires": int(ANON_QUEUE_EXPIRES_S * 1000)}
            channel.queue_declare(
                name, durable=False, exclusive=True, auto_delete=True, arguments=expires
            )
        channel.queue_bind(name, EVENT_EXCHANGE, "#")
        channel.basic_qos(0, self.prefetch, False)
        channel.basic_consume(name, "", callback=self._on_message, no_ack=False)
        self.current_queue = name
        return channel

    def _on_message(self, message: Any) -> None:
        """py-amqp's own delivery path; unused while :class:`FrameReader` reads the socket."""
        props = message.properties
        self._on_delivery(
            message.delivery_tag,
            message.body,
            props.get("content_type"),
            props.get("content_encoding"),
        )

    def _consume(self, conn: Connection, channel: Any) -> None:
        """Read deliveries, flushing a batch to the sink (then acking it) when it is due."""
        raw = conn.connection
        frames = FrameReader(raw, channel.channel_id, self._on_delivery)
        pending = self._pending
        unacked = self._unacked
        stop = self._stop.is_set
        ack_every = self.ack_every
        ack_interval = self.ack_interval
        monotonic = time.monotonic
        batch_started = 0.0
        next_heartbeat = monotonic() + HEARTBEAT_CHECK_S
        try:
            while not stop():
                if pending:
                    timeout = max(0.001, batch_started + ack_interval - monotonic())
                else:
                    timeout = COMMIT_CHECK_S if unacked else POLL_S
                had = len(pending)
                frames.read(timeout)
                now = monotonic()
                if not had and pending:
                    batch_started = now
                if pending and (len(pending) >= ack_every or now - batch_started >= ack_interval):
                    self._flush(channel)
                elif unacked:
                    self._ack_committed(channel)
                if now >= next_heartbeat:
                    conn.heartbeat_check()
                    next_heartbeat = now + HEARTBEAT_CHECK_S
            self._flush(channel)  # closing: ack what the sink has taken (and the store wrote)
            deadline = monotonic() + CLOSE_COMMIT_WAIT_S
            while unacked and monotonic() < deadline:
                time.sleep(COMMIT_CHECK_S)
                self._ack_committed(channel)
        finally:
            frames.give_back()

    def _on_delivery(self, tag: int, body: bytes, ctype: str | None, cenc: str | None) -> None:
        self._pending.append((body, ctype, cenc))
        self._last_tag = tag

    def _flush(self, channel: Any) -> None:
        """Decode the pending bodies, hand them to the sink, then ack them all (if we can)."""
        pending = self._pending
        if not pending:
            return
        out = Decoded()
        amqp_messages(pending, out)
        pending.clear()
        counters = self.counters
        counters.messages += out.messages
        counters.malformed += out.malformed
        if out.events:
            counters.received += len(out.events)
            try:
                self._sink(out.events)
            except Exception as exc:  # the sink's bug must not cost us the stream
                if counters.sink_failed(exc):
                    log.exception("amqp events: the sink failed on a batch (logged once per 10 s)")
                if channel is not None and self._ack_when is not None:
                    # A stable queue promises that nothing is lost: leave the batch unacked and
                    # drop the channel, so the broker delivers it again after a pause.
                    raise SinkFailed(str(exc)) from exc
        if channel is None:
            return
        if self._ack_when is None:
            channel.basic_ack(self._last_tag, multiple=True)
        else:  # once the store has committed what these events changed
            self._unacked.append((self._ack_when.put_mark(), self._last_tag))
            self._ack_committed(channel)

    def _ack_committed(self, channel: Any) -> None:
        """Ack (one ``multiple`` ack) every batch whose events the store has committed."""
        unacked = self._unacked
        assert self._ack_when is not None
        committed = self._ack_when.committed_mark()
        tag = 0
        while unacked and unacked[0][0] <= committed:
            tag = unacked.popleft()[1]
        if tag:
            channel.basic_ack(tag, multiple=True)

    # -- failures --------------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if error != self.counters.last_error or self.counters.connected:
            # Once per distinct error: a queue declared elsewhere with other arguments fails
            # the same way on every retry and must not flood the log.
            log.warning("amqp events: %s: %s", self.url, error)
        self.counters.last_error = error

    def _record_gap(self, blind: float) -> None:
        c = self.counters
        c.reconnects += 1
        c.gaps += 1
        c.blind_seconds += blind
        if self.queue_name:
            meanwhile = f"queue {self.queue_name!r} kept what the broker did not lose"
        else:
            meanwhile = "events published meanwhile are lost"
        log.warning(
            "amqp events: consuming again from %s after %.3f s blind (gap %d); %s; "
            "asking workers for a heartbeat",
            self.url,
            blind,
            c.gaps,
            meanwhile,
        )

    def _call_wake(self) -> None:
        """Run ``wake`` on a thread of its own: a slow broadcast must not stall the reader."""
        wake = self._wake
        if wake is None:
            return

        def run() -> None:
            try:
                wake()
            except Exception as exc:
                log.info("amqp events: could not wake workers: %s", exc)

        threading.Thread(target=run, name="celeriac-wake", daemon=True).start()

    @staticmethod
    def _release(conn: Connection) -> None:
        try:
            conn.release()
        except Exception:  # the connection is already broken: drop it without a close
            conn.collect()


class FrameReader:
    """Reads AMQP frames off py-amqp's socket, 64 KiB per ``recv``, and parses deliveries itself.

    py-amqp reads every frame in three exact-size ``recv`` calls and sets the socket timeout
    twice per frame: nine system calls and a few dozen Python calls per event message, which
    caps a consumer at a few thousand events a second. Here one ``recv`` brings hundreds of
    frames; ``basic.deliver`` with its header and body frames is parsed in place (only the
    delivery tag, content type and encoding are needed), and every other frame (heartbeats,
    channel or connection close, cancel notifications) goes to py-amqp's own handler, which
    raises its usual errors.
    """

    def __init__(
        self,
        connection: Any,
        channel_id: int,
        on_delivery: Callable[[int, bytes, str | None, str | None], None],
    ) -> None:
        self.connection = connection
        self.transport = connection.transport
        self.sock = self.transport.sock
        self.timeout_before = self.sock.gettimeout()
        self.channel_id = channel_id
        self.on_delivery = on_delivery
        # py-amqp may already hold bytes it read past the consume-ok: start from them.
        self.buf = bytearray(self.transport._read_buffer)
        self.transport._read_buffer = b""
        self.pos = 0
        self.state = 0  # 0: expect a method, 2: a content header, 3: body frames
        self.tag = 0
        self.ctype: str | None = None
        self.cenc: str | None = None
        self.size = 0
        self.parts: list[bytes] = []

    def read(self, timeout: float) -> None:
        """Wait up to ``timeout`` for bytes, then dispatch every complete frame."""
        sock = self.sock
        sock.settimeout(timeout)
        try:
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            return
        if not data:
            raise ConnectionResetError("server closed the connection")
        buf = self.buf
        if self.pos:
            del buf[: self.pos]
            self.pos = 0
        buf += data
        self._dispatch()

    def _dispatch(self) -> None:
        buf, pos, n = self.buf, self.pos, len(self.buf)
        frames = 0
        try:
            while n - pos >= 8:
                ftype, channel, size = _FRAME_HEAD.unpack_from(buf, pos)
                end = pos + 7 + size
                if end >= n:
                    break
                if buf[end] != FRAME_END:
                    raise UnexpectedFrame(f"bad frame end byte {buf[end]!r}")
                payload = bytes(buf[pos + 7 : end])
                pos = end + 1
                frames += 1
                if channel == self.channel_id and (
                    self.state or (ftype == 1 and payload[:4] == _DELIVER)
                ):
                    self._content(ftype, payload)
                else:
                    self.connection.on_inbound_frame((ftype, channel, payload))
        finally:
            self.pos = pos
            self.connection.bytes_recv += frames  # py-amqp's heartbeat check counts frames

    def _content(self, ftype: int, payload: bytes) -> None:
        """One frame of a delivery: basic.deliver, its content header, its body frames."""
        if ftype == 1 and self.state == 0:
            off = 5 + payload[4]  # past the class, method and consumer-tag
            self.tag = _LONGLONG.unpack_from(payload, off)[0]
            self.state = 2
        elif ftype == 2 and self.state == 2:
            self.size = _LONGLONG.unpack_from(payload, 4)[0]
            flags = _SHORT.unpack_from(payload, 12)[0]
            off = 14
            self.ctype = self.cenc = None
            if flags & 0x8000:
                off, self.ctype = _shortstr(payload, off)
            if flags & 0x4000:
                off, self.cenc = _shortstr(payload, off)
            self.parts = []
            self.state = 3
            if not self.size:
                self._done(b"")
        elif ftype == 3 and self.state == 3:
            parts = self.parts
            parts.append(payload)
            if len(payload) >= self.size or sum(map(len, parts)) >= self.size:
                self._done(payload if len(parts) == 1 else b"".join(parts))
        else:
            raise UnexpectedFrame(f"frame type {ftype} out of place in a delivery")

    def _done(self, body: bytes) -> None:
        self.state = 0
        self.parts = []
        self.on_delivery(self.tag, body, self.ctype, self.cenc)

    def give_back(self) -> None:
        """Return unread bytes to py-amqp, which reads the socket again to close cleanly."""
        if self.transport.sock is self.sock:
            self.sock.settimeout(self.timeout_before)
        rest = bytes(self.buf[self.pos :])
        self.buf = bytearray()
        self.pos = 0
        if rest and self.transport is not None:
            self.transport._read_buffer = rest + self.transport._read_buffer


def _shortstr(payload: bytes, off: int) -> tuple[int, str]:
    end = off + 1 + payload[off]
    return end, payload[off + 1 : end].decode()
