"""The generic event source: Celery's own ``EventReceiver``, for any kombu transport.

Slower than the dedicated Redis and AMQP readers, but it speaks every transport kombu knows
(filesystem, SQS, ...), so it is the fallback and the demo's reader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from celeriac.events.base import Event, EventSink, IngestCounters

log = logging.getLogger("celeriac.events")


class KombuEventSource:
    def __init__(
        self,
        app: Celery,
        sink: EventSink,
        *,
        wake: Callable[[], None] | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self._app = app
        self._sink = sink
        self._wake = wake
        self._retry = retry_interval
        self.counters = IngestCounters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="celeriac-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _on_event(self, event: Event) -> None:
        self.counters.messages += 1
        self.counters.received += 1
        self._sink([event])

    def _run(self) -> None:
        lost_at: float | None = None
        while not self._stop.is_set():
            try:
                with self._app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1)
                    receiver = self._app.events.Receiver(conn, handlers={"*": self._on_event})
                    self._receiver = receiver
                    self.counters.connected = True
                    if lost_at is not None:
                        blind = time.monotonic() - lost_at
                        self.counters.blind_seconds += blind
                        self.counters.gaps += 1
                        self.counters.reconnects += 1
                        log.warning("event stream reconnected after %.1f s blind", blind)
                        lost_at = None
                    if self._wake is not None:
                        self._safe_wake()
                    receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # every transport raises its own errors
                if self._stop.is_set():
                    break
                self.counters.last_error = f"{type(exc).__name__}: {exc}"
                if self.counters.connected:
                    log.warning("event stream lost (%s); reconnecting", self.counters.last_error)
                    lost_at = time.monotonic()
                self.counters.connected = False
                self._stop.wait(self._retry)
            else:
                if not self._stop.is_set():
                    self.counters.connected = False
                    lost_at = lost_at or time.monotonic()
        self.counters.connected = False

    def _safe_wake(self) -> None:
        try:
            assert self._wake is not None
            self._wake()
        except Exception as exc:
            log.info("could not wake workers: %s", exc)
