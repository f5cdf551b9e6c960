"""The Redis event reader: its own socket, hiredis, and nothing between the wire and the sink.

Celery publishes events on Redis with PUBLISH; nothing is stored. Redis drops a subscriber whose
output buffer passes ``client-output-buffer-limit pubsub`` (32 MB by default), and every event
published until it resubscribes is lost. Celery's receiver (kombu + redis-py) reads about 17,000
events a second, so a busy cluster outruns it and is dropped. This reader keeps the buffer empty:

- a net thread owns one plain socket (PSUBSCRIBE ``/{db}.celeryev/*``) and does nothing but
  copy what arrives into an in-process backlog, so it needs almost no CPU to keep up;
- a decode thread feeds the bytes to hiredis in slices of at most 16 KiB (hiredis slows down
  on bigger feeds), decodes the envelopes of each chunk together (:mod:`.decode`) and hands
  the sink one list per chunk.

A batch the sink cannot take (the state's store unreachable) is held and given to it again,
for up to ``SINK_RETRY_S``, while the net thread keeps the socket drained; only then is it
dropped (counted in ``sink_failures``, logged): pub/sub cannot deliver it again.

When the connection drops the net thread reconnects at once (backing off only while refused),
resubscribes, counts the gap and the time it was blind, logs one line, and calls ``wake`` (the
caller's heartbeat broadcast) so that the workers announce themselves again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from celeriac.constants import REDIS_CLIENT_NAME, REDIS_EVENT_CHANNEL
from celeriac.events.base import EventSink, IngestCounters
from celeriac.events.decode import Decoded, redis_messages
from celeriac.settings import redact_url

log = logging.getLogger("celeriac.events")

FEED_SLICE = 16 * 1024  # hiredis is quadratic on big feeds
RECV_SIZE = 1024 * 1024  # the most one read copies off the socket
MAX_BACKLOG_BYTES = 512 * 1024 * 1024  # read but not decoded: past this, stop reading
POLL_S = 0.5  # socket timeout: how often the loop looks at close() and liveness
PING_AFTER_S = 10.0  # idle this long: send a PING to prove the connection is alive
DEAD_AFTER_S = 30.0  # idle this long (PING unanswered): the connection is dead
CONNECT_TIMEOUT_S = 5.0
BACKOFF_MAX_S = 1.0  # every second blind may be events lost: never wait longer to retry
SINK_RETRY_S = 30.0  # how long a batch the state cannot take is tried again before it is dropped


class RedisProtocolError(ConnectionError):
    """Redis answered something a subscriber cannot go on from (auth refused, error reply)."""


@dataclass(frozen=True)
class RedisAddress:
    """Where and how to connect, parsed from a kombu / redis-py style URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    unix_path: str | None = None
    tls: bool = False
    tls_verify: bool = True
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """``redis://[[user]:pass@]host[:port][/db]``, ``rediss://``, ``unix:///path?db=N``
        (also kombu's ``redis+socket://`` and ``socket://``); ``virtual_host`` works as ``db``.
        """
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        scheme = parts.scheme.lower()
        db_text = query.get("db") or query.get("virtual_host") or ""
        unix_path = None
        if scheme in ("unix", "socket", "redis+socket"):
            unix_path = unquote(parts.path)
        elif scheme in ("redis", "rediss"):
            db_text = db_text or parts.path
        else:
            raise ValueError(f"not a Redis URL: {redact_url(url)}")
        db_text = db_text.strip("/") or "0"
        if not db_text.isdigit():
            raise ValueError(f"Redis database must be a number, got {db_text!r}")
        reqs = query.get("ssl_cert_reqs", "required").lower()
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(db_text),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            unix_path=unix_path,
            tls=scheme == "rediss",
            tls_verify=reqs not in ("none", "cert_none"),
            tls_ca=query.get("ssl_ca_certs"),
            tls_cert=query.get("ssl_certfile"),
            tls_key=query.get("ssl_keyfile"),
        )

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> socket.socket:
        if self.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.unix_path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if not self.tls:
            return sock
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if not self.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        try:
            return ctx.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def resp_command(*args: str | bytes) -> bytes:
    """One command in the Redis protocol (RESP2)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def glob_escape(text: str) -> str:
    """Escape PSUBSCRIBE's glob characters in a literal channel prefix."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisEventSource:
    """Reads Celery's events from Redis pub/sub and feeds them to ``sink`` in batches.

    Two threads: ``celeriac-redis-net`` owns the socket and only copies bytes off it into an
    in-process backlog, so Redis' output buffer stays empty even when the process is short of
    CPU (with the publishers on the same cores, the decoding falls behind for a while: that
    costs our memory, not Redis' 32 MB limit and our subscription). ``celeriac-redis-decode``
    parses, decodes and calls the sink. The backlog is bounded by ``max_backlog_bytes``; past it
    the reader stops reading, and if Redis then drops it the gap is counted like any other.

    ``wake`` is called (on a thread of its own) after every confirmed PSUBSCRIBE, the first
    included, so that workers announce themselves at once. ``key_prefix`` is kombu's
    ``global_keyprefix`` transport option, if the cluster uses one.
    """

    def __init__(
        self,
        url: str,
        sink: EventSink,
        *,
        wake: Callable[[], None] | None = None,
        key_prefix: str = "",
        max_backlog_bytes: int = MAX_BACKLOG_BYTES,
    ) -> None:
        self.address = RedisAddress.from_url(url)
        self.url = redact_url(url)
        self.channel_prefix = key_prefix + REDIS_EVENT_CHANNEL.format(db=self.address.db)
        self.pattern = glob_escape(self.channel_prefix) + "*"
        self.max_backlog_bytes = max_backlog_bytes
        self.counters = IngestCounters()
        self._sink = sink
        self._wake = wake
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        # chunks of the stream (bytearray), the hiredis.Reader that starts a new connection,
        # or None: close() was called
        self._queue: queue.SimpleQueue[bytearray | hiredis.Reader | None] = queue.SimpleQueue()
        self._bytes_read = 0  # written by the net thread only
        self._bytes_done = 0  # written by the decode thread only
        self._backlog_logged = 0.0

    @property
    def backlog_bytes(self) -> int:
        """Bytes read off the socket and not decoded yet."""
        return self._bytes_read - self._bytes_done

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("RedisEventSource already started")
        for name, target in (("net", self._run_net), ("decode", self._run_decode)):
            thread = threading.Thread(target=target, name=f"celeriac-redis-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        """Stop reading and decoding; returns within about a second. The backlog is dropped."""
        self._stop.set()
        self._shutdown_socket()
        self._queue.put(None)  # wakes the decode thread at once
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2 * POLL_S + 0.5)
        self.counters.connected = False

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the first PSUBSCRIBE is confirmed (for tests, benchmarks and startup)."""
        return self._subscribed.wait(timeout)

    def _shutdown_socket(self) -> None:
        """Wake the net thread out of ``recv``; it then reconnects, or exits if closing."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- the net thread: connection, subscription, bytes -----------------------------------

    def _run_net(self) -> None:
        lost_at: float | None = None  # monotonic time the stream was lost; None while fine
        backoff = 0.0
        while not self._stop.is_set():
            sock = None
            try:
                sock = self._subscribe()
                backoff = 0.0
                self.counters.connected = True
                if lost_at is not None:
                    self._record_gap(time.monotonic() - lost_at)
                    lost_at = None
                self._subscribed.set()
                self._call_wake()
                self._read(sock)
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.counters.last_error = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, (OSError, RedisProtocolError)):
                    log.exception("redis events: unexpected error; reconnecting")
                if self.counters.connected:
                    self.counters.connected = False
                    lost_at = time.monotonic()
                    log.warning("redis events: lost %s (%s)", self.url, self.counters.last_error)
                if sock is None:  # could not connect or subscribe: back off, never for long
                    self._stop.wait(backoff)
                    backoff = min(BACKOFF_MAX_S, backoff * 2 or 0.05)
            finally:
                self._sock = None
                if sock is not None:
                    sock.close()
        self.counters.connected = False

    def _subscribe(self) -> socket.socket:
        """Connect, authenticate, PSUBSCRIBE; return once Redis has confirmed the pattern."""
        sock = self.address.connect()
        self._sock = sock
        try:
            self._handshake(sock)
        except BaseException:
            self._sock = None
            sock.close()
            raise
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        if self._stop.is_set():  # close() ran while we were connecting
            raise OSError("closing")
        a = self.address
        commands = []
        if a.password is not None:
            auth = (a.username, a.password) if a.username else (a.password,)
            commands.append(resp_command("AUTH", *auth))
        commands.append(resp_command("CLIENT", "SETNAME", REDIS_CLIENT_NAME))
        commands.append(resp_command("PSUBSCRIBE", self.pattern))
        sock.sendall(b"".join(commands))
        reader = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = sock.recv(FEED_SLICE)
            if not data:
                raise ConnectionError("connection closed while subscribing")
            reader.feed(data)
            while len(replies) < len(commands) and (reply := reader.gets()) is not False:
                replies.append(reply)
        if a.password is not None and isinstance(replies[0], hiredis.ReplyError):
            raise RedisProtocolError(f"AUTH refused: {replies[0]}")
        confirm = replies[-1]
        if not (isinstance(confirm, list) and confirm[:1] == [b"psubscribe"]):
            raise RedisProtocolError(f"PSUBSCRIBE refused: {confirm!r}")
        sock.settimeout(POLL_S)
        # The reader may already hold the first events: the decode thread carries on with it.
        self._queue.put(reader)

    def _read(self, sock: socket.socket) -> None:
        """Copy bytes off the socket into the backlog until the connection fails or close()."""
        buf = bytearray(RECV_SIZE)
        recv_into = sock.recv_into
        put = self._queue.put
        stop = self._stop.is_set
        last_data = time.monotonic()
        pinged = False
        while not stop():
            if self._bytes_read - self._bytes_done > self.max_backlog_bytes:
                self._backlog_full()
                last_data = time.monotonic()
                continue
            try:
                n = recv_into(buf)
            except TimeoutError:
                idle = time.monotonic() - last_data
                if idle > DEAD_AFTER_S:
                    raise ConnectionError(f"no answer from Redis for {idle:.0f} s") from None
                if idle > PING_AFTER_S and not pinged:
                    sock.sendall(resp_command("PING"))
                    pinged = True
                continue
            if n == 0:
                raise ConnectionError("connection closed by Redis")
            put(buf[:n])
            self._bytes_read += n
            last_data = time.monotonic()
            pinged = False

    def _backlog_full(self) -> None:
        now = time.monotonic()
        if now - self._backlog_logged > 60.0:
            self._backlog_logged = now
            log.warning(
                "redis events: %d MB read and not yet decoded; pausing the socket (Redis may "
                "drop the subscription, which is then counted as a gap)",
                self.backlog_bytes >> 20,
            )
        self._stop.wait(0.01)

    def _record_gap(self, blind: float) -> None:
        c = self.counters
        c.reconnects += 1
        c.gaps += 1
        c.blind_seconds += blind
        log.warning(
            "redis events: resubscribed to %s after %.3f s blind (gap %d); events published "
            "meanwhile are lost; asking workers for a heartbeat",
            self.url,
            blind,
            c.gaps,
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
                log.info("redis events: could not wake workers: %s", exc)

        threading.Thread(target=run, name="celeriac-wake", daemon=True).start()

    # -- the decode thread: replies, envelopes, sink ---------------------------------------

    def _run_decode(self) -> None:
        get = self._queue.get
        stop = self._stop.is_set
        reader: Any = None
        while not stop():
            try:
                item = get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is None:
                break
            try:
                if type(item) is bytearray:
                    self._bytes_done += len(item)
                    if reader is not None:
                        self._deliver(self._parse(reader, item))
                else:
                    reader = item  # a new connection: its reader may hold events already
                    self._deliver(self._parse(reader, bytearray()))
            except (hiredis.ProtocolError, RedisProtocolError) as exc:
                # The stream is corrupt: drop this connection, skip its bytes, resubscribe.
                self.counters.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("redis events: %s; reconnecting", self.counters.last_error)
                reader = None
                self._shutdown_socket()

    @staticmethod
    def _parse(reader: Any, chunk: bytearray) -> list[bytes]:
        """Feed one chunk to hiredis in small slices; return the payloads of the pmessages."""
        datas: list[bytes] = []
        feed, gets = reader.feed, reader.gets
        n = len(chunk)
        off = 0
        while True:
            while (reply := gets()) is not False:
                if type(reply) is list and reply[0] == b"pmessage":
                    datas.append(reply[3])
                elif isinstance(reply, hiredis.ReplyError):
                    raise RedisProtocolError(f"error reply: {reply}")
                # anything else: a PONG or a subscribe confirmation
            if off >= n:
                return datas
            step = n - off if n - off < FEED_SLICE else FEED_SLICE
            feed(chunk, off, step)
            off += step

    def _deliver(self, datas: list[bytes]) -> None:
        if not datas:
            return
        out = Decoded()
        redis_messages(datas, out)
        counters = self.counters
        counters.messages += out.messages
        counters.malformed += out.malformed
        if not out.events:
            return
        counters.received += len(out.events)
        # The state may fail to take a batch for a while (its store unreachable): try again
        # while the net thread keeps the socket drained, and give the batch up only after
        # SINK_RETRY_S (pub/sub cannot deliver it again) or at close.
        deadline = time.monotonic() + SINK_RETRY_S
        pause = 0.05
        while True:
            try:
                self._sink(out.events)
                return
            except Exception as exc:  # the sink's bug must not cost us the stream
                if counters.sink_failed(exc):
                    log.exception("redis events: the sink failed on a batch (logged once per 10 s)")
                # The log says which of the two gave it up: an operator told "for 30 s"
                # looks for a state stuck that long, not for a shutdown.
                if time.monotonic() >= deadline:
                    why = f"the state could not take them for {SINK_RETRY_S:g} s"
                elif self._stop.wait(pause):
                    why = "the state had not taken them when the reader closed"
                else:
                    pause = min(1.0, pause * 2)
                    continue
                log.error("redis events: %d events dropped: %s", len(out.events), why)
                return
